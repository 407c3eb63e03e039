//! A store wrapper that declares (and enforces) a smaller transaction limit
//! than its backend, and counts the transactions it starts.
//!
//! With [`Limited::max_ops`] set to 128 it makes the in-memory and redb
//! backends behave like etcd (`--max-txn-ops` 128) for the event layer:
//! the capability is declared, so code that sizes its transactions from
//! [`Capabilities`] can be tested, and a commit with more writes plus
//! validations than that fails with [`KvError::LimitExceeded`], as etcd
//! would. Commit notifications ([`KvStore::commit_watch`]) are passed on.
//!
//! [`KvError::LimitExceeded`]: eskv_core::Error::LimitExceeded

use async_trait::async_trait;
use eskv_core::{
    Capabilities, KeyRange, KvPair, KvResult, KvStore, KvTransaction, ScanOptions, WriteBuffer,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The wrapper. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct Limited {
    inner: Arc<dyn KvStore>,
    caps: Capabilities,
    begins: Arc<AtomicU64>,
    reverse_scans: Arc<AtomicU64>,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("caps", &self.caps)
            .field("begins", &self.begins())
            .finish()
    }
}

impl Limited {
    /// Wraps `inner` unchanged (only counting transactions).
    pub fn new(inner: Arc<dyn KvStore>) -> Self {
        let caps = inner.capabilities().clone();
        Limited {
            inner,
            caps,
            begins: Arc::default(),
            reverse_scans: Arc::default(),
        }
    }

    /// Declares that reverse scans cost O(range), as etcd's do, so that
    /// the event layer avoids them; [`Limited::reverse_scans`] counts the
    /// ones it still sends.
    pub fn costly_reverse_scans(mut self) -> Self {
        self.caps = self.caps.with_cheap_reverse_scans(false);
        self
    }

    /// Reverse scans with a limit sent so far.
    pub fn reverse_scans(&self) -> u64 {
        self.reverse_scans.load(Ordering::SeqCst)
    }

    /// Declares and enforces at most `n` writes plus validations per
    /// transaction (or the backend's own limit, if smaller).
    pub fn max_ops(mut self, n: usize) -> Self {
        let n = self.caps.max_ops_per_txn.map_or(n, |m| m.min(n));
        self.caps = self.caps.with_max_ops_per_txn(n);
        self
    }

    /// Transactions started so far (each read of the event layer starts
    /// one).
    pub fn begins(&self) -> u64 {
        self.begins.load(Ordering::SeqCst)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for Limited {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_watch()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        self.begins.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(LimitedTxn {
            inner: self.inner.begin().await?,
            caps: self.caps.clone(),
            shadow: WriteBuffer::new(),
            reverse_scans: self.reverse_scans.clone(),
        }))
    }
}

struct LimitedTxn {
    inner: Box<dyn KvTransaction>,
    caps: Capabilities,
    /// The same writes and validations, for counting.
    shadow: WriteBuffer,
    reverse_scans: Arc<AtomicU64>,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvTransaction for LimitedTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_each(
        &mut self,
        keys: &[Vec<u8>],
        visit: &mut eskv_core::kv::VisitValue<'_>,
    ) -> KvResult<()> {
        self.inner.get_each(keys, visit).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(keys).await
    }
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        if opts.reverse && opts.limit.is_some() {
            self.reverse_scans.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.scan(range, opts).await
    }
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut eskv_core::kv::VisitRow<'_>,
    ) -> KvResult<()> {
        if opts.reverse && opts.limit.is_some() {
            self.reverse_scans.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.scan_each(range, opts, visit).await
    }
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<eskv_core::ReadMany> {
        let reverse = scans
            .iter()
            .filter(|(_, o)| o.reverse && o.limit.is_some())
            .count();
        self.reverse_scans
            .fetch_add(reverse as u64, Ordering::SeqCst);
        self.inner.read_many(gets, scans).await
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.shadow.put(key.clone(), Vec::new());
        self.inner.put(key, value)
    }
    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.shadow.put(key.clone(), Vec::new());
        self.inner.put_new(key, value)
    }
    fn delete(&mut self, key: Vec<u8>) {
        self.shadow.delete(key.clone());
        self.inner.delete(key)
    }
    fn validate(&mut self, key: Vec<u8>) {
        self.shadow.validate(key.clone());
        self.inner.validate(key)
    }
    async fn commit(self: Box<Self>) -> KvResult<()> {
        let LimitedTxn {
            inner,
            caps,
            shadow,
            ..
        } = *self;
        // Only the operation count is this wrapper's business; the
        // backend checks its own value and byte limits.
        let ops_only = Capabilities::unlimited(caps.backend);
        let ops_only = match caps.max_ops_per_txn {
            Some(n) => ops_only.with_max_ops_per_txn(n),
            None => ops_only,
        };
        shadow.check_limits(&ops_only)?;
        inner.commit().await
    }
}
