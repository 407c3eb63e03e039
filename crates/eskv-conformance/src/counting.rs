//! A pass-through [`KvStore`] wrapper that counts the calls reaching it, per
//! method. Put under another wrapper (the fault injector, a namespace), it
//! shows which methods that wrapper forwards: a wrapper that falls back to
//! a trait default shows up as `read_many == 0` with `get_many` and `scans`
//! counted instead.
//!
//! Like every wrapper of the suite it forwards every method, enforced by
//! `clippy::missing_trait_methods` on its impls.

use async_trait::async_trait;
use eskv_core::{
    Capabilities, KeyRange, KvPair, KvResult, KvStore, KvTransaction, ReadMany, ScanOptions,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many calls of each method reached a [`CountingStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `KvStore::begin`.
    pub begins: u64,
    /// `KvStore::commit_watch`.
    pub commit_watches: u64,
    /// `KvTransaction::get`.
    pub gets: u64,
    /// `KvTransaction::get_many`.
    pub get_manys: u64,
    /// `KvTransaction::scan`.
    pub scans: u64,
    /// `KvTransaction::read_many`.
    pub read_manys: u64,
    /// `KvTransaction::commit`.
    pub commits: u64,
}

impl fmt::Display for CallCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} begins, {} commit_watch, {} get, {} get_many, {} scan, {} read_many, {} commits",
            self.begins,
            self.commit_watches,
            self.gets,
            self.get_manys,
            self.scans,
            self.read_manys,
            self.commits
        )
    }
}

#[derive(Default)]
struct Counters {
    begins: AtomicU64,
    commit_watches: AtomicU64,
    gets: AtomicU64,
    get_manys: AtomicU64,
    scans: AtomicU64,
    read_manys: AtomicU64,
    commits: AtomicU64,
    largest_read: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// The wrapper. Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct CountingStore {
    inner: Arc<dyn KvStore>,
    counters: Arc<Counters>,
}

impl fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStore")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KvStore>) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }

    /// The most rows (scanned pairs plus values got) one call returned
    /// since the store was made: what a bounded-memory reader may hold.
    pub fn largest_read(&self) -> u64 {
        self.counters.largest_read.load(Ordering::SeqCst)
    }

    /// Calls counted so far.
    pub fn counts(&self) -> CallCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        CallCounts {
            begins: l(&c.begins),
            commit_watches: l(&c.commit_watches),
            gets: l(&c.gets),
            get_manys: l(&c.get_manys),
            scans: l(&c.scans),
            read_manys: l(&c.read_manys),
            commits: l(&c.commits),
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for CountingStore {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        bump(&self.counters.begins);
        Ok(Box::new(CountingTxn {
            inner: self.inner.begin().await?,
            counters: self.counters.clone(),
        }))
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        bump(&self.counters.commit_watches);
        self.inner.commit_watch()
    }
}

struct CountingTxn {
    inner: Box<dyn KvTransaction>,
    counters: Arc<Counters>,
}

impl CountingTxn {
    fn saw(&self, rows: usize) {
        self.counters
            .largest_read
            .fetch_max(rows as u64, Ordering::SeqCst);
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvTransaction for CountingTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        bump(&self.counters.gets);
        self.inner.get(key).await
    }

    async fn get_each(
        &mut self,
        keys: &[Vec<u8>],
        visit: &mut eskv_core::kv::VisitValue<'_>,
    ) -> KvResult<()> {
        bump(&self.counters.get_manys);
        self.inner.get_each(keys, visit).await?;
        self.saw(keys.len());
        Ok(())
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        bump(&self.counters.get_manys);
        let vals = self.inner.get_many(keys).await?;
        self.saw(vals.len());
        Ok(vals)
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        bump(&self.counters.scans);
        let rows = self.inner.scan(range, opts).await?;
        self.saw(rows.len());
        Ok(rows)
    }

    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut eskv_core::kv::VisitRow<'_>,
    ) -> KvResult<()> {
        bump(&self.counters.scans);
        let mut rows = 0;
        self.inner
            .scan_each(range, opts, &mut |k, v| {
                rows += 1;
                visit(k, v)
            })
            .await?;
        self.saw(rows);
        Ok(())
    }

    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany> {
        bump(&self.counters.read_manys);
        let (vals, pages) = self.inner.read_many(gets, scans).await?;
        self.saw(vals.len() + pages.iter().map(Vec::len).sum::<usize>());
        Ok((vals, pages))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.inner.put(key, value)
    }

    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.inner.put_new(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.inner.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.inner.validate(key)
    }

    async fn commit(self: Box<Self>) -> KvResult<()> {
        bump(&self.counters.commits);
        self.inner.commit().await
    }
}
