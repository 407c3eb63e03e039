//! Exactly-once projections and snapshots.
//!
//! A [`Projection`] writes its read model into the same store, in the same
//! KV transaction that advances its checkpoint. The transaction also
//! validates the checkpoint key, so a batch is applied exactly once: a
//! crash before commit applies nothing, a commit applies everything, and a
//! second runner of the same projection conflicts instead of applying the
//! batch twice. A lost commit acknowledgement is resolved the same way: the
//! retry re-reads the checkpoint and skips what was applied.

use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout;
use crate::query::Query;
use crate::retry::retry;
use crate::store::{EventStore, ReadOptions, ReadStreamOptions};
use crate::subscription::{HandlerOptions, SubscriptionFilter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use tracing::Instrument;

/// A read model maintained from the log.
///
/// Implement `apply` as a plain `async fn` (no attribute needed; its
/// future must be `Send`, since runners drive it on the tokio runtime):
///
/// ```
/// use eskv_core::{EventStore, MemoryStore, NewEvent, Projection, ProjectionState, RecordedEvent};
///
/// /// Counts events per type.
/// struct TypeCounts;
///
/// impl Projection for TypeCounts {
///     fn name(&self) -> &str {
///         "type-counts"
///     }
///     async fn apply(&self, e: &RecordedEvent, state: &mut ProjectionState<'_>) -> eskv_core::Result<()> {
///         let n: u64 = state.get_json(e.event_type.as_bytes()).await?.unwrap_or(0);
///         state.put_json(e.event_type.as_bytes(), &(n + 1))
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv_core::Result<()> {
/// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
/// store.append(vec![NewEvent::new("Ping", vec![]), NewEvent::new("Ping", vec![])], None).await?;
/// store.catch_up_projection(&TypeCounts, &eskv_core::ProjectionOptions::default()).await?;
/// assert_eq!(store.read_model("type-counts").get_json::<u64>(b"Ping").await?, Some(2));
/// # Ok(()) }
/// ```
pub trait Projection: Send + Sync {
    /// Unique name; keys its checkpoint and its read-model namespace.
    fn name(&self) -> &str;

    /// Which events it consumes. Default: all.
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::All
    }

    /// Applies one event to the read model through `state`. An error
    /// aborts the batch (nothing of it is applied) and is retried.
    fn apply(
        &self,
        event: &RecordedEvent,
        state: &mut ProjectionState<'_>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The projection's view of its read model inside the batch transaction.
/// Keys are scoped to the projection's namespace.
pub struct ProjectionState<'a> {
    txn: &'a mut dyn KvTransaction,
    prefix: Vec<u8>,
}

impl ProjectionState<'_> {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// Reads a value.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = self.key(key);
        Ok(self.txn.get(&k).await?)
    }

    /// Writes a value.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let k = self.key(key);
        self.txn.put(k, value)
    }

    /// Deletes a value.
    pub fn delete(&mut self, key: &[u8]) {
        let k = self.key(key);
        self.txn.delete(k)
    }

    /// Reads a JSON value.
    pub async fn get_json<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>> {
        self.get(key)
            .await?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    Error::corrupt(None, format!("read-model value does not decode: {e}"))
                })
            })
            .transpose()
    }

    /// Writes a JSON value.
    pub fn put_json<T: Serialize + ?Sized>(&mut self, key: &[u8], value: &T) -> Result<()> {
        let v = serde_json::to_vec(value).map_err(|e| Error::encode("read-model value", e))?;
        self.put(key, v);
        Ok(())
    }

    /// Values whose key starts with `prefix`, in key order, keys without
    /// the namespace.
    pub async fn scan_prefix(
        &mut self,
        prefix: &[u8],
        limit: Option<usize>,
    ) -> Result<Vec<KvPair>> {
        let p = self.key(prefix);
        let n = self.prefix.len();
        Ok(self
            .txn
            .scan(KeyRange::prefix(&p), ScanOptions::forward(limit))
            .await?
            .into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect())
    }
}

/// The read model of generation `gen`. Readers and the live runner use
/// the generation named by the projection's checkpoint; a rebuild fills a
/// fresh generation beside it and switches the checkpoint to it once it has
/// caught up (see [`EventStore::rebuild_projection`]).
fn model_prefix(name: &str, gen: u64) -> Vec<u8> {
    layout::read_model_prefix(name, gen)
}

fn projection_checkpoint_key(name: &str) -> Vec<u8> {
    layout::projection_checkpoint_key(name)
}

/// Reads a projection's rebuild record, if a rebuild is in progress.
async fn read_rebuild(
    txn: &mut dyn KvTransaction,
    name: &str,
) -> Result<Option<layout::ProjectionRebuild>> {
    txn.get(&layout::projection_rebuild_key(name))
        .await?
        .map(|v| layout::ProjectionRebuild::decode(&v))
        .transpose()
}

/// What one rebuild batch did.
enum RebuildStep {
    /// Applied events up to this position to the new generation.
    Applied(Position),
    /// Caught up with the live generation and switched readers and the
    /// live runner to the new one, at this position.
    Switched(Position),
}

/// Reads a projection's checkpoint: `(generation, position)`.
async fn read_checkpoint(txn: &mut dyn KvTransaction, name: &str) -> Result<(u64, Position)> {
    match txn.get(&projection_checkpoint_key(name)).await? {
        None => Ok((0, 0)),
        Some(v) => layout::parse_projection_checkpoint(&v),
    }
}

/// Committed read-model values of a projection, for queries.
#[derive(Clone)]
pub struct ReadModel {
    store: EventStore,
    name: String,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel").finish_non_exhaustive()
    }
}

impl ReadModel {
    /// Reads a value.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        crate::subscription::validate_name(&self.name)?;
        let mut txn = self.store.kv().begin().await?;
        let (gen, _) = read_checkpoint(&mut *txn, &self.name).await?;
        Ok(txn
            .get(&[model_prefix(&self.name, gen).as_slice(), key].concat())
            .await?)
    }

    /// Reads a JSON value.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.get(key)
            .await?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    Error::corrupt(None, format!("read-model value does not decode: {e}"))
                })
            })
            .transpose()
    }

    /// Values whose key starts with `prefix`.
    pub async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>> {
        crate::subscription::validate_name(&self.name)?;
        let mut txn = self.store.kv().begin().await?;
        let (gen, _) = read_checkpoint(&mut *txn, &self.name).await?;
        let model = model_prefix(&self.name, gen);
        let p = [model.as_slice(), prefix].concat();
        let n = model.len();
        Ok(txn
            .scan(KeyRange::prefix(&p), ScanOptions::default())
            .await?
            .into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect())
    }
}

/// Options for running a projection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectionOptions {
    /// Events per transaction. Default 256 (lower it for backends with small
    /// transactions, such as etcd).
    pub batch_size: usize,
    /// Retries of a failing batch before the runner stops with the error.
    pub handler: HandlerOptions,
    /// Poll interval bounds while idle (see subscriptions).
    pub poll_min: Duration,
    /// Longest idle poll interval.
    pub poll_max: Duration,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch_size: 256,
            handler: HandlerOptions::default(),
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_secs(1),
        }
    }
}

impl ProjectionOptions {
    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the retry policy.
    pub fn handler(mut self, h: HandlerOptions) -> Self {
        self.handler = h;
        self
    }
}

impl EventStore {
    /// The committed read model of projection `name`.
    pub fn read_model(&self, name: &str) -> ReadModel {
        ReadModel {
            store: self.clone(),
            name: name.to_owned(),
        }
    }

    /// The position up to which projection `name` has applied the log.
    pub async fn projection_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        crate::subscription::validate_name(name)?;
        let mut txn = self.kv().begin().await?;
        txn.get(&projection_checkpoint_key(name))
            .await?
            .map(|v| layout::parse_projection_checkpoint(&v).map(|(_, p)| p))
            .transpose()
    }

    /// Applies one batch after the projection's checkpoint, exactly once.
    /// Returns the new checkpoint, or `None` if there was nothing to apply.
    ///
    /// A batch the backend refuses as too large
    /// ([`Error::LimitExceeded`], for example more than etcd's 128
    /// operations) is retried with half as many events, down to one.
    pub async fn project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
    ) -> Result<Option<Position>> {
        let mut limit = opts.batch_size.max(1);
        self.with_batch_retries(p.name(), opts, &mut limit, |l| self.try_project_batch(p, l))
            .await
    }

    /// Runs one batch attempt `f(limit)` with the store's retry policy for
    /// transient errors, the handler policy for failing batches, and
    /// halving of `limit` for batches too large for the backend.
    async fn with_batch_retries<T, F, Fut>(
        &self,
        name: &str,
        opts: &ProjectionOptions,
        limit: &mut usize,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delay = opts.handler.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let l = *limit;
            match retry(self.options().max_retries, || f(l)).await {
                Ok(r) => return Ok(r),
                Err(Error::LimitExceeded { .. }) if l > 1 => {
                    *limit = l / 2;
                    attempt -= 1;
                    tracing::debug!(
                        projection = name,
                        batch = *limit,
                        "projection batch too large for one transaction; halving it"
                    );
                }
                Err(e)
                    if attempt < opts.handler.max_attempts
                        && !matches!(e, Error::Corrupt { .. }) =>
                {
                    tracing::debug!(projection = name, attempt, error = %e, "projection batch failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(opts.handler.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The events of `filter` after `cp`, at most `limit`, and the position
    /// up to which they cover the log.
    async fn projection_page(
        &self,
        filter: SubscriptionFilter,
        cp: Position,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, Position)> {
        let opts = ReadOptions::after(cp).limit(limit);
        let (events, head) = match filter {
            SubscriptionFilter::All => {
                let r = self.read_all(opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Query(q) => {
                let r = self.read(&q, opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Category(c) => {
                let r = self.read_category(&c, opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Stream(s) => {
                // Head first: every event at or below it is in the later read.
                let head = self.head().await?;
                let from = self.stream_version_after(&s, cp).await?;
                let evs: Vec<RecordedEvent> = self
                    .read_stream(&s, ReadStreamOptions::new().from_version(from).limit(limit))
                    .await?
                    .into_iter()
                    .filter(|e| e.position <= head)
                    .collect();
                let head = if evs.len() == limit {
                    evs.last().map_or(cp, |e| e.position)
                } else {
                    head
                };
                (evs, head)
            }
        };
        let next = if events.len() < limit {
            head.max(cp)
        } else {
            events.last().map_or(cp, |e| e.position)
        };
        Ok((events, next))
    }

    async fn try_project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
    ) -> Result<Option<Position>> {
        let span = tracing::info_span!(
            "eskv.projection",
            name = p.name(),
            batch = tracing::field::Empty,
            checkpoint = tracing::field::Empty,
        );
        let applied = self
            .apply_projection_page(p, limit)
            .instrument(span.clone())
            .await?;
        Ok(applied.map(|(batch, next)| {
            span.record("batch", batch);
            span.record("checkpoint", next);
            next
        }))
    }

    /// Applies the next page and commits it with the checkpoint: the
    /// number of events applied and the new checkpoint.
    async fn apply_projection_page<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
    ) -> Result<Option<(usize, Position)>> {
        let cp_key = projection_checkpoint_key(p.name());
        let mut txn = self.kv().begin().await?;
        let (gen, cp) = read_checkpoint(&mut *txn, p.name()).await?;
        let (events, next) = self.projection_page(p.filter(), cp, limit).await?;
        if next == cp {
            return Ok(None);
        }
        let mut state = ProjectionState {
            txn: &mut *txn,
            prefix: model_prefix(p.name(), gen),
        };
        for e in &events {
            p.apply(e, &mut state).await?;
        }
        txn.validate(cp_key.clone());
        txn.put(cp_key, layout::projection_checkpoint_value(gen, next));
        txn.commit().await?;
        Ok(Some((events.len(), next)))
    }

    /// Applies batches until the projection has caught up with the head
    /// seen at the call. Returns its checkpoint.
    pub async fn catch_up_projection<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
    ) -> Result<Position> {
        let target = self.head().await?;
        self.catch_up_to(p, opts, target, &mut |_, _| {}).await
    }

    async fn catch_up_to<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
        target: Position,
        progress: &mut (dyn FnMut(Position, Position) + Send),
    ) -> Result<Position> {
        let mut cp = self.projection_checkpoint(p.name()).await?.unwrap_or(0);
        while cp < target {
            match self.project_batch(p, opts).await? {
                Some(n) => {
                    cp = n;
                    progress(cp.min(target), target);
                }
                None => break,
            }
        }
        Ok(cp)
    }

    /// Runs the projection live until `shutdown` completes: catches up,
    /// then applies new events as they are appended.
    pub async fn run_projection<P, S>(
        &self,
        p: &P,
        opts: ProjectionOptions,
        shutdown: S,
    ) -> Result<()>
    where
        P: Projection + ?Sized,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut head_rx = self.watch_head();
        crate::subscription::relay_commits(self);
        let mut idle = opts.poll_min;
        loop {
            let step = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.project_batch(p, &opts) => r?,
            };
            if step.is_some() {
                idle = opts.poll_min;
                continue;
            }
            let single = self.kv().capabilities().single_process;
            let wait = if single { opts.poll_max } else { idle };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = head_rx.changed() => {}
                _ = tokio::time::sleep(wait) => { idle = idle.saturating_mul(2).min(opts.poll_max); }
            }
        }
    }

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
        for e in &events {
            p.apply(e, &mut state).await?;
        }
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

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SnapshotKey {
    /// The state folded from one stream.
    Stream(String),
    /// The decision state folded from a DCB query.
    Query(Query),
    /// Anything else, by name.
    Named(String),
}

impl SnapshotKey {
    fn key(&self) -> Result<Vec<u8>> {
        Ok(match self {
            SnapshotKey::Stream(s) => layout::snapshot_key(layout::SnapshotOf::Stream(s)),
            SnapshotKey::Named(n) => layout::snapshot_key(layout::SnapshotOf::Named(n)),
            SnapshotKey::Query(q) => {
                let q = postcard::to_allocvec(q).map_err(|e| Error::encode("snapshot query", e))?;
                layout::snapshot_key(layout::SnapshotOf::Query(&q))
            }
        })
    }
}

/// A stored snapshot: state folded up to and including `position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last position the state covers.
    pub position: Position,
    /// The user's schema version of `data`.
    pub schema_version: u32,
    /// The state.
    pub data: Vec<u8>,
}

impl EventStore {
    /// Stores a snapshot of the state at `position`. Snapshots are an
    /// optimisation only: loading state never requires one.
    pub async fn save_snapshot(&self, key: &SnapshotKey, snapshot: &Snapshot) -> Result<()> {
        let k = key.key()?;
        let v = postcard::to_allocvec(snapshot).map_err(|e| Error::encode("snapshot", e))?;
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let head = txn
                .get(&layout::head_key())
                .await?
                .map_or(Ok(0), |h| layout::parse_u64(&h, "head"))?;
            if snapshot.position > head {
                return Err(Error::invalid(format!(
                    "snapshot position {} is past the head ({head})",
                    snapshot.position
                )));
            }
            txn.put(k.clone(), v.clone());
            Ok(txn.commit().await?)
        })
        .await
    }

    /// Loads the snapshot for `key` if it has `schema_version`; a snapshot
    /// of another schema version (or one that does not decode) is ignored.
    pub async fn load_snapshot(
        &self,
        key: &SnapshotKey,
        schema_version: u32,
    ) -> Result<Option<Snapshot>> {
        let mut txn = self.kv().begin().await?;
        let Some(v) = txn.get(&key.key()?).await? else {
            return Ok(None);
        };
        Ok(postcard::from_bytes::<Snapshot>(&v)
            .ok()
            .filter(|s| s.schema_version == schema_version))
    }

    /// The snapshot (if any usable one exists) and the events after it: fold
    /// the events over the snapshot's state to get the current state.
    pub async fn load_with_snapshot(
        &self,
        key: &SnapshotKey,
        schema_version: u32,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>)> {
        let snap = self.load_snapshot(key, schema_version).await?;
        let after = snap.as_ref().map_or(0, |s| s.position);
        let events = match key {
            SnapshotKey::Stream(s) => {
                let from = self.stream_version_after(s, after).await?;
                self.read_stream(s, ReadStreamOptions::new().from_version(from))
                    .await?
                    .events
            }
            SnapshotKey::Query(q) => self.read(q, ReadOptions::after(after)).await?.events,
            SnapshotKey::Named(_) => Vec::new(),
        };
        Ok((snap, events))
    }
}
