//! Exactly-once projections and snapshots.
//!
//! A [`Projection`] writes its read model into the same store, in the same
//! KV transaction that advances its checkpoint. The transaction also
//! validates the checkpoint key, so a batch is applied exactly once: a
//! crash before commit applies nothing, a commit applies everything, and a
//! second runner of the same projection conflicts instead of applying the
//! batch twice. A lost commit acknowledgement is resolved the same way: the
//! retry re-reads the checkpoint and skips what was applied.
//!
//! This file holds the public types: the [`Projection`] trait, the
//! transaction-scoped [`ProjectionState`], the committed [`ReadModel`] and
//! [`ProjectionOptions`]. Their mechanics live beside it:
//! `runner` applies batches (once, to the head, or live), `rebuild`
//! rebuilds a read model into a fresh generation and deletes old ones, and
//! `snapshot` stores folded state.

mod rebuild;
mod runner;
mod snapshot;

pub use snapshot::{Snapshot, SnapshotKey};

use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout;
use crate::store::EventStore;
use crate::subscription::{HandlerOptions, SubscriptionFilter};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;

/// Applies `events` to the read model through `state`, in order: what
/// every batch runs (catch-up, live, rebuild). A store error keeps its
/// kind (the retry loop tells a passing one from a lasting one, and
/// halves a batch too large); any other failure is the projection's own,
/// and becomes [`Error::Handler`] naming the event it failed on.
async fn apply_events<P: Projection + ?Sized>(
    p: &P,
    events: &[RecordedEvent],
    state: &mut ProjectionState<'_>,
) -> Result<()> {
    for e in events {
        p.apply(e, state).await.map_err(|err| match err {
            Error::Handler { .. }
            | Error::LimitExceeded { .. }
            | Error::Corrupt { .. }
            | Error::WrongStoreKey { .. }
            | Error::StoreLocked { .. }
            | Error::ReadOnly { .. }
            | Error::StorageFull { .. }
            | Error::IncompatibleFormat { .. }
            | Error::Backend { .. } => err,
            err if err.is_retryable() => err,
            err => Error::handler(Some(e.position), err.to_string()),
        })?;
    }
    Ok(())
}

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
    /// aborts the batch (nothing of it is applied) and is retried; once
    /// the retries are spent the runner stops with
    /// [`Error::Handler`] naming the event's
    /// position (a retryable store error keeps its own kind).
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
    /// Retries of a failing batch before the runner stops with the error:
    /// `max_attempts` and the backoff apply. A projection applies every
    /// event in order, so `on_failure` does not: nothing is parked or
    /// skipped, and an event that keeps failing stops the runner with
    /// [`Error::Handler`] naming its position; the
    /// checkpoint stays before it.
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
}
