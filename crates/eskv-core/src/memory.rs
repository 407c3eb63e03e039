//! In-memory backend: a real implementation of the [`KvStore`] contract.
//!
//! Data lives in a persistent ordered map (`imbl::OrdMap`), so a snapshot is
//! an O(1) clone and readers never block writers. Commits are serialized by
//! one mutex and checked against a [`CommitOracle`].

use crate::kv::{
    BufferedTxn, Capabilities, KeyRange, KvPair, KvSnapshot, KvStore, KvTransaction, ScanOptions,
    VisitRow, VisitValue, WriteSet,
};
use crate::kv::{KvError, KvResult};
use crate::oracle::{CommitOracle, Snapshot};
use async_trait::async_trait;
use imbl::OrdMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

type Map = OrdMap<Vec<u8>, Vec<u8>>;

/// The in-memory store. Cheap to clone; clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    data: RwLock<Map>,
    commit_lock: Mutex<()>,
    oracle: Arc<CommitOracle>,
    caps: Capabilities,
    commits: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                data: RwLock::new(Map::new()),
                commit_lock: Mutex::new(()),
                oracle: CommitOracle::new(),
                caps: Capabilities::unlimited("memory").with_single_process(true),
                commits: tokio::sync::watch::channel(0).0,
            }),
        }
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.commits.subscribe())
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        BufferedTxn::begin(&self.inner.caps, async {
            let (snapshot, view) = self.inner.oracle.snapshot(|| {
                self.inner
                    .data
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            });
            Ok(MemorySnapshot {
                store: self.inner.clone(),
                snapshot,
                view,
            })
        })
        .await
    }
}

/// A transaction's snapshot: an O(1) clone of the map.
struct MemorySnapshot {
    store: Arc<Inner>,
    snapshot: Snapshot,
    view: Map,
}

#[async_trait]
impl KvSnapshot for MemorySnapshot {
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        Ok(keys.iter().map(|k| self.view.get(k).cloned()).collect())
    }

    /// Lends the map's values: no copy.
    async fn get_each(&mut self, keys: Vec<Vec<u8>>, visit: &mut VisitValue<'_>) -> KvResult<()> {
        for k in &keys {
            visit(self.view.get(k).map(Vec::as_slice));
        }
        Ok(())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let iter = self.view.range::<_, [u8]>(range.as_bounds());
        let limit = opts.limit.unwrap_or(usize::MAX);
        let rows = if opts.reverse {
            iter.rev()
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            iter.take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Ok(rows)
    }

    /// Lends the map's rows: no copy.
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        let iter = self.view.range::<_, [u8]>(range.as_bounds());
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut rows: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if opts.reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        for (k, v) in rows.by_ref().take(limit) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let MemorySnapshot {
            store, snapshot, ..
        } = self;
        let _guard = store.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let keys = writes
            .keys()
            .map(Vec::as_slice)
            .chain(validated.iter().map(Vec::as_slice));
        if let Some(k) = store
            .oracle
            .first_conflict(snapshot.seq(), keys, &HashSet::new())
        {
            return Err(KvError::conflict(format!(
                "key {} was changed by a transaction that committed after this one's snapshot",
                crate::display_key(&k)
            )));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let mut next = store.data.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut keys = Vec::with_capacity(writes.len());
        for (k, v) in writes {
            match v {
                Some(v) => {
                    next.insert(k.clone(), v);
                }
                None => {
                    next.remove(&k);
                }
            }
            keys.push(k);
        }
        // `snapshot`, this transaction's, is live until the end.
        let seq = store.oracle.publish(keys, 1, || {
            *store.data.write().unwrap_or_else(|p| p.into_inner()) = next;
        });
        store.commits.send_replace(seq);
        Ok(())
    }
}
