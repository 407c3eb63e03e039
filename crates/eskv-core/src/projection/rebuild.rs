//! Rebuilding a projection into a fresh read-model generation beside the
//! live one ([`EventStore::rebuild_projection`]), and deleting generations
//! that are neither live nor being built
//! ([`EventStore::clean_up_projection`]).

use super::{apply_events, model_prefix, projection_checkpoint_key, read_checkpoint, read_rebuild};
use super::{Projection, ProjectionOptions, ProjectionState};
use crate::error::{Error, Result};
use crate::event::Position;
use crate::kv::ScanOptions;
use crate::layout;
use crate::retry::retry;
use crate::store::EventStore;

/// What one rebuild batch did.
enum RebuildStep {
    /// Applied events up to this position to the new generation.
    Applied(Position),
    /// Caught up with the live generation and switched readers and the
    /// live runner to the new one, at this position.
    Switched(Position),
}

impl EventStore {
    /// Rebuilds the projection from the start of the log, reporting
    /// `(position, target)` after each batch, and returns its checkpoint
    /// once it has caught up with the head seen at the call.
    ///
    /// The new read model is built in a fresh generation beside the live
    /// one. Readers ([`read_model`](Self::read_model)) and a live runner
    /// keep using the old generation, complete and current, until the new
    /// one has caught up with it; the batch that catches up also switches
    /// the projection's checkpoint to the new generation, in one
    /// transaction, so readers never see a partial model. The old
    /// generation is then deleted (see
    /// [`clean_up_projection`](Self::clean_up_projection)).
    ///
    /// Every step is safe to retry: a lost commit acknowledgement is
    /// resolved by re-reading the rebuild's record, which carries the
    /// rebuild's id. A rebuild that is interrupted (its process killed)
    /// leaves a record and a partial generation; the next rebuild replaces
    /// it and deletes what it left. A rebuild superseded by a concurrent
    /// one fails with [`Error::InvalidInput`].
    pub async fn rebuild_projection<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
        mut progress: impl FnMut(Position, Position) + Send,
    ) -> Result<Position> {
        let name = p.name();
        crate::subscription::validate_name(name)?;
        // Leftovers of earlier rebuilds first, while nothing is being built.
        self.clean_up_projection(name).await?;
        let id = ulid::Ulid::generate();
        let gen = self.begin_rebuild(name, id).await?;
        let target = self.head().await?;
        let mut limit = opts.batch_size.max(1);
        loop {
            let step = self
                .with_batch_retries(name, opts, &mut limit, |l| {
                    self.try_rebuild_batch(p, l, gen, id)
                })
                .await?;
            match step {
                RebuildStep::Applied(pos) => progress(pos.min(target), target),
                RebuildStep::Switched(pos) => {
                    progress(pos.min(target), target);
                    break;
                }
            }
        }
        self.clean_up_projection(name).await?;
        // The new generation is live now: bring it up to the target.
        self.catch_up_to(p, opts, target, &mut progress).await
    }

    /// Starts a rebuild: records a fresh generation, above every generation
    /// the projection has (live, being rebuilt, or left over), as being
    /// built from position 0 by rebuild `id`. Returns the generation.
    async fn begin_rebuild(&self, name: &str, id: ulid::Ulid) -> Result<u64> {
        let key = layout::projection_rebuild_key(name);
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let (live, _) = read_checkpoint(&mut *txn, name).await?;
            let current = read_rebuild(&mut *txn, name).await?;
            if let Some(r) = current.filter(|r| r.id == id) {
                // Our own record: an earlier attempt committed, but its
                // acknowledgement was lost.
                return Ok(r.generation);
            }
            if let Some(r) = current {
                tracing::info!(
                    projection = name,
                    generation = r.generation,
                    position = r.position,
                    "replacing an unfinished rebuild"
                );
            }
            let highest = txn
                .scan(
                    layout::read_model_range_from(name, 0),
                    ScanOptions::backward(Some(1)),
                )
                .await?
                .first()
                .map(|(k, _)| match layout::parse_state_key(k)? {
                    layout::StateKey::ReadModel { generation, .. } => Ok(generation),
                    other => Err(Error::corrupt(
                        None,
                        format!("{other:?} found among read-model keys"),
                    )),
                })
                .transpose()?;
            let gen = live
                .max(current.map_or(0, |r| r.generation))
                .max(highest.unwrap_or(0))
                .checked_add(1)
                .ok_or_else(|| Error::corrupt(None, "read-model generations exhausted"))?;
            txn.put(
                key.clone(),
                layout::ProjectionRebuild {
                    generation: gen,
                    position: 0,
                    id,
                }
                .encode(),
            );
            txn.commit().await?;
            Ok(gen)
        })
        .await
    }

    /// One batch of rebuild `id` into generation `gen`; switches to it when
    /// it has caught up with the live generation.
    async fn try_rebuild_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
        gen: u64,
        id: ulid::Ulid,
    ) -> Result<RebuildStep> {
        let name = p.name();
        let cp_key = projection_checkpoint_key(name);
        let rebuild_key = layout::projection_rebuild_key(name);
        let mut txn = self.kv().begin().await?;
        let vals = txn.get_many(&[cp_key.clone(), rebuild_key.clone()]).await?;
        let (live_gen, live_pos) = vals[0]
            .as_deref()
            .map_or(Ok((0, 0)), layout::parse_projection_checkpoint)?;
        let record = vals[1]
            .as_deref()
            .map(layout::ProjectionRebuild::decode)
            .transpose()?;
        let pos = match record {
            Some(r) if r.id == id => r.position,
            // The switch committed, but its acknowledgement was lost.
            _ if live_gen == gen => return Ok(RebuildStep::Switched(live_pos)),
            _ => {
                return Err(Error::invalid(format!(
                    "the rebuild of projection '{name}' into generation {gen} was superseded by \
                     another rebuild; only the latest rebuild finishes"
                )))
            }
        };
        let (events, next) = self.projection_page(p.filter(), pos, limit).await?;
        let mut state = ProjectionState {
            txn: &mut *txn,
            prefix: model_prefix(name, gen),
        };
        apply_events(p, &events, &mut state).await?;
        // `next` comes from a read after this transaction's snapshot, so a
        // short page reaches at least the live checkpoint read above.
        let step = if next >= live_pos {
            txn.validate(cp_key.clone());
            txn.put(cp_key, layout::projection_checkpoint_value(gen, next));
            txn.delete(rebuild_key);
            RebuildStep::Switched(next)
        } else {
            txn.put(
                rebuild_key,
                layout::ProjectionRebuild {
                    generation: gen,
                    position: next,
                    id,
                }
                .encode(),
            );
            RebuildStep::Applied(next)
        };
        txn.commit().await?;
        Ok(step)
    }

    /// Deletes every read-model generation of projection `name` that is
    /// neither live nor being rebuilt: the old generation after a rebuild,
    /// and whatever an interrupted or superseded rebuild left. Deletes in
    /// transactions sized to the backend
    /// ([`max_ops_per_txn`](crate::Capabilities::max_ops_per_txn)), each
    /// retried on transient errors, so it works on etcd and can simply be
    /// run again after a crash. Returns how many keys it deleted.
    /// [`rebuild_projection`](Self::rebuild_projection) runs it before and
    /// after rebuilding.
    pub async fn clean_up_projection(&self, name: &str) -> Result<u64> {
        crate::subscription::validate_name(name)?;
        // Two operations go to validating the checkpoint and the rebuild
        // record: a generation that is garbage at the snapshot stays so.
        let batch = self
            .kv()
            .capabilities()
            .max_ops_per_txn
            .map_or(1024, |n| n.saturating_sub(2))
            .clamp(1, 1024);
        let cp_key = projection_checkpoint_key(name);
        let rebuild_key = layout::projection_rebuild_key(name);
        let mut from = 0;
        let mut deleted = 0;
        loop {
            let step = retry(self.options().max_retries, || async {
                let mut txn = self.kv().begin().await?;
                let (live, _) = read_checkpoint(&mut *txn, name).await?;
                let building = read_rebuild(&mut *txn, name).await?.map(|r| r.generation);
                let mut at = from;
                loop {
                    let first = txn
                        .scan(
                            layout::read_model_range_from(name, at),
                            ScanOptions::forward(Some(1)),
                        )
                        .await?;
                    let Some((k, _)) = first.first() else {
                        return Ok(None);
                    };
                    let gen = match layout::parse_state_key(k)? {
                        layout::StateKey::ReadModel { generation, .. } => generation,
                        other => {
                            return Err(Error::corrupt(
                                None,
                                format!("{other:?} found among read-model keys"),
                            ))
                        }
                    };
                    if gen == live || Some(gen) == building {
                        match gen.checked_add(1) {
                            Some(g) => at = g,
                            None => return Ok(None),
                        }
                        continue;
                    }
                    let rows = txn
                        .scan(
                            layout::read_model_generation_range(name, gen),
                            ScanOptions::forward(Some(batch)),
                        )
                        .await?;
                    let n = rows.len() as u64;
                    for (k, _) in rows {
                        txn.delete(k);
                    }
                    txn.validate(cp_key.clone());
                    txn.validate(rebuild_key.clone());
                    txn.commit().await?;
                    return Ok(Some((gen, n)));
                }
            })
            .await?;
            match step {
                None => return Ok(deleted),
                Some((gen, n)) => {
                    tracing::debug!(
                        projection = name,
                        generation = gen,
                        keys = n,
                        "deleted old read-model keys"
                    );
                    deleted += n;
                    from = gen;
                }
            }
        }
    }
}
