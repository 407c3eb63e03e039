//! A store wrapper that records when every append batch ran, to check that
//! group commit never runs two batches of one `EventStore` at once.
//!
//! A batch is a transaction that writes the head key. Each transaction gets
//! a start and an end tick from one counter (the end when it commits or is
//! dropped); two batches overlapped if one started before the other ended.
//! An optional delay before each commit widens the window a second batch
//! could slip into.

use async_trait::async_trait;
use eskv_core::{
    layout, Capabilities, KeyRange, KvPair, KvResult, KvStore, KvTransaction, ReadMany, ScanOptions,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Record {
    tick: AtomicU64,
    batches: Mutex<Vec<(u64, u64)>>,
}

/// Records the lifetime of every head-writing transaction.
pub struct BatchRecorder {
    inner: Arc<dyn KvStore>,
    record: Arc<Record>,
    commit_delay: Duration,
}

impl BatchRecorder {
    /// Wraps `inner`; every commit first sleeps `commit_delay`.
    pub fn new(inner: Arc<dyn KvStore>, commit_delay: Duration) -> Self {
        BatchRecorder {
            inner,
            record: Arc::new(Record::default()),
            commit_delay,
        }
    }

    /// Pairs of batches whose lifetimes overlapped, as `(start, end)` ticks.
    pub fn overlaps(&self) -> Vec<((u64, u64), (u64, u64))> {
        let mut b = self
            .record
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        b.sort();
        b.windows(2)
            .filter(|w| w[1].0 < w[0].1)
            .map(|w| (w[0], w[1]))
            .collect()
    }

    /// How many batches ran (committed or not).
    pub fn batches(&self) -> usize {
        self.record
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[async_trait]
impl KvStore for BatchRecorder {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_watch()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        let start = self.record.tick.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(RecordedTxn {
            inner: Some(self.inner.begin().await?),
            record: self.record.clone(),
            start,
            writes_head: false,
            delay: self.commit_delay,
        }))
    }
}

struct RecordedTxn {
    inner: Option<Box<dyn KvTransaction>>,
    record: Arc<Record>,
    start: u64,
    writes_head: bool,
    delay: Duration,
}

impl RecordedTxn {
    fn txn(&mut self) -> &mut Box<dyn KvTransaction> {
        self.inner.as_mut().expect("transaction used after commit")
    }

    fn finish(&mut self) {
        if std::mem::take(&mut self.writes_head) {
            let end = self.record.tick.fetch_add(1, Ordering::SeqCst);
            self.record
                .batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.start, end));
        }
    }
}

impl Drop for RecordedTxn {
    fn drop(&mut self) {
        self.finish();
    }
}

#[async_trait]
impl KvTransaction for RecordedTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.txn().get(key).await
    }
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.txn().get_many(keys).await
    }
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        self.txn().scan(range, opts).await
    }
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut eskv_core::kv::VisitRow<'_>,
    ) -> KvResult<()> {
        self.txn().scan_each(range, opts, visit).await
    }
    async fn read_many(
        &mut self,
        keys: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany> {
        self.txn().read_many(keys, scans).await
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key == layout::head_key() {
            self.writes_head = true;
        }
        self.txn().put(key, value)
    }
    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key == layout::head_key() {
            self.writes_head = true;
        }
        self.txn().put_new(key, value)
    }
    fn delete(&mut self, key: Vec<u8>) {
        self.txn().delete(key)
    }
    fn validate(&mut self, key: Vec<u8>) {
        self.txn().validate(key)
    }
    async fn commit(mut self: Box<Self>) -> KvResult<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let inner = self.inner.take().expect("committed twice");
        let r = inner.commit().await;
        self.finish();
        r
    }
}
