//! Snapshots: state folded up to a position, stored as an optimisation
//! for loading a stream's or a query's state.

use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::layout;
use crate::query::Query;
use crate::retry::retry;
use crate::store::{EventStore, ReadOptions, ReadStreamOptions};
use serde::{Deserialize, Serialize};

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
    ///
    /// [`delete_stream`](Self::delete_stream) and
    /// [`tombstone_stream`](Self::tombstone_stream) drop the stream's
    /// snapshot with its events: a stream appended to again after a
    /// deletion starts from nothing. Retention and truncation keep it, so
    /// a snapshot followed by `truncate_before` its version keeps the
    /// state of the events it released.
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
