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
use crate::store::{retry, EventStore, ReadOptions, ReadStreamOptions};
use crate::subscription::{HandlerOptions, SubscriptionFilter};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// A read model maintained from the log.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Unique name; keys its checkpoint and its read-model namespace.
    fn name(&self) -> &str;

    /// Which events it consumes. Default: all.
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::All
    }

    /// Applies one event to the read model through `state`. An error
    /// aborts the batch (nothing of it is applied) and is retried.
    async fn apply(&self, event: &RecordedEvent, state: &mut ProjectionState<'_>) -> Result<()>;
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
        self.txn.get(&k).await
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
        let v = serde_json::to_vec(value)
            .map_err(|e| Error::invalid(format!("cannot encode read-model value: {e}")))?;
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

/// The read model of generation `gen`. A rebuild moves to a fresh
/// generation in the same transaction that resets the checkpoint, so
/// readers and runners switch atomically and the old generation is deleted
/// behind them.
fn model_prefix(name: &str, gen: u64) -> Vec<u8> {
    layout::subscription_key("projection", name)
        .u64(gen)
        .finish()
}

fn projection_checkpoint_key(name: &str) -> Vec<u8> {
    layout::subscription_key("projection-checkpoint", name).finish()
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
        txn.get(&[model_prefix(&self.name, gen).as_slice(), key].concat())
            .await
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
    pub async fn project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
    ) -> Result<Option<Position>> {
        let mut delay = opts.handler.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match retry(self.options().max_retries, || {
                self.try_project_batch(p, opts.batch_size.max(1))
            })
            .await
            {
                Ok(r) => return Ok(r),
                Err(e)
                    if attempt < opts.handler.max_attempts
                        && !matches!(e, Error::Corrupt { .. }) =>
                {
                    tracing::debug!(projection = p.name(), attempt, error = %e, "projection batch failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(opts.handler.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
    ) -> Result<Option<Position>> {
        let cp_key = projection_checkpoint_key(p.name());
        let mut txn = self.kv().begin().await?;
        let (gen, cp) = read_checkpoint(&mut *txn, p.name()).await?;
        let opts = ReadOptions::after(cp).limit(limit);
        let (events, head) = match p.filter() {
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
        Ok(Some(next))
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
    /// `(position, target)` after each batch. The switch is atomic: one
    /// transaction moves the projection to a fresh, empty read-model
    /// generation with its checkpoint at 0, so readers see the new model
    /// from then on (partly rebuilt until this returns) and a live runner
    /// either finished its batch before the switch or conflicts and
    /// continues in the new generation. The old generation is then deleted.
    pub async fn rebuild_projection<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
        mut progress: impl FnMut(Position, Position) + Send,
    ) -> Result<Position> {
        crate::subscription::validate_name(p.name())?;
        let cp_key = projection_checkpoint_key(p.name());
        let old_gen = retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let (gen, _) = read_checkpoint(&mut *txn, p.name()).await?;
            txn.validate(cp_key.clone());
            txn.put(
                cp_key.clone(),
                layout::projection_checkpoint_value(gen + 1, 0),
            );
            txn.commit().await?;
            Ok(gen)
        })
        .await?;
        let old = model_prefix(p.name(), old_gen);
        loop {
            let mut txn = self.kv().begin().await?;
            let rows = txn
                .scan(KeyRange::prefix(&old), ScanOptions::forward(Some(512)))
                .await?;
            if rows.is_empty() {
                break;
            }
            for (k, _) in rows {
                txn.delete(k);
            }
            txn.commit().await?;
        }
        let target = self.head().await?;
        self.catch_up_to(p, opts, target, &mut progress).await
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
        let b = layout::subscription_key("snapshot", "");
        Ok(match self {
            SnapshotKey::Stream(s) => b.str("stream").str(s).finish(),
            SnapshotKey::Named(n) => b.str("named").str(n).finish(),
            SnapshotKey::Query(q) => b
                .str("query")
                .bytes(
                    &postcard::to_allocvec(q)
                        .map_err(|e| Error::invalid(format!("cannot encode query: {e}")))?,
                )
                .finish(),
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
        let v = postcard::to_allocvec(snapshot)
            .map_err(|e| Error::invalid(format!("cannot encode snapshot: {e}")))?;
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
            txn.commit().await
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
            }
            SnapshotKey::Query(q) => self.read(q, ReadOptions::after(after)).await?.events,
            SnapshotKey::Named(_) => Vec::new(),
        };
        Ok((snap, events))
    }
}
