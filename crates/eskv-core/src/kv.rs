//! The `KvStore` contract: what a backend must provide for eskv to run on it.
//!
//! # The contract
//!
//! A backend is a transactional, ordered key-value store. Keys and values are
//! byte strings, ordered by unsigned byte-wise comparison. [`KvStore::begin`]
//! starts a [`KvTransaction`] with these guarantees:
//!
//! 1. **Snapshot reads.** Every read ([`get`](KvTransaction::get),
//!    [`get_many`](KvTransaction::get_many), [`scan`](KvTransaction::scan))
//!    sees one consistent snapshot: all transactions committed before the
//!    snapshot was fixed, and nothing else from other transactions. The
//!    snapshot is fixed no later than the first read.
//! 2. **Read your own writes.** Reads see this transaction's own buffered
//!    [`put`](KvTransaction::put)s and [`delete`](KvTransaction::delete)s,
//!    merged over the snapshot, scans included.
//! 3. **Buffered writes.** `put` and `delete` are buffered locally and sent
//!    only at commit. They never fail on their own; limits are checked at
//!    commit (see [`Capabilities`]).
//! 4. **Validation set.** [`validate`](KvTransaction::validate) adds a key to
//!    the validation set. Commit must fail with [`Error::Conflict`] if any
//!    key in the validation set was changed (put or deleted, including
//!    created when it was absent) by another transaction that committed after
//!    this transaction's snapshot.
//! 5. **Write-write conflicts.** Every written key is implicitly in the
//!    validation set: two transactions with overlapping snapshots that write
//!    the same key can never both commit.
//! 6. **Atomic commit.** [`commit`](KvTransaction::commit) applies all
//!    buffered writes or none. It returns `Ok(())`, a retryable
//!    [`Error::Conflict`], [`Error::CommitOutcomeUnknown`] when the backend
//!    lost the answer (the writes may or may not be applied), or another
//!    typed error (nothing applied). A transaction with no writes and an
//!    empty validation set commits trivially.
//! 7. **Durability.** Once `commit` returns `Ok`, the writes survive a crash
//!    of the process (subject to the backend's documented durability option).
//! 8. **Drop is rollback.** Dropping a transaction without committing
//!    discards it and must never panic.
//!
//! Keys must not be empty (`InvalidInput` at the write); empty values are
//! allowed and are distinct from an absent key. Backends declare their size
//! limits in [`Capabilities`] instead of failing unpredictably.
//!
//! These rules map onto the backends as follows (see `docs/DESIGN.md`):
//! TiKV optimistic transactions (snapshot isolation; `lock_keys` for the
//! validation set), redb (MVCC read snapshot plus one serialized writer that
//! checks a commit-sequence oracle), and compare-and-swap stores such as etcd
//! (reads at a pinned revision; one `Txn` comparing `mod_revision`s).

use crate::error::{Error, Result};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// A key-value pair returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// What [`KvTransaction::read_many`] returns: the values of the gets, and
/// the rows of each scan.
pub type ReadMany = (Vec<Option<Vec<u8>>>, Vec<Vec<KvPair>>);

/// Buffered writes in key order; `None` marks a deletion.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a backend can and cannot do. The event layer sizes its work from
/// these values instead of `cfg`s; the conformance suite reads them instead of
/// skipping cases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Short backend name used in errors and logs.
    pub backend: &'static str,
    /// Largest value the backend accepts, in bytes.
    pub max_value_size: Option<usize>,
    /// Most writes plus validations one transaction may carry.
    pub max_ops_per_txn: Option<usize>,
    /// Most bytes (keys plus values) one transaction may write.
    pub max_txn_bytes: Option<usize>,
    /// True when every writer goes through this process, so in-process
    /// notification sees every commit (embedded backends). False for shared
    /// servers, where other processes append and readers must poll.
    pub single_process: bool,
    /// True when a reverse scan with a limit costs O(limit). False where it
    /// costs O(range) (etcd sorts the whole range to answer a descending
    /// read): the event layer then reads "the last N" as forward scans of
    /// position windows below the top, so it still costs O(N).
    pub cheap_reverse_scans: bool,
}

impl Capabilities {
    /// Capabilities with no limits, for `backend`.
    pub fn unlimited(backend: &'static str) -> Self {
        Capabilities {
            backend,
            max_value_size: None,
            max_ops_per_txn: None,
            max_txn_bytes: None,
            single_process: false,
            cheap_reverse_scans: true,
        }
    }

    /// Sets the largest accepted value.
    pub fn with_max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = Some(n);
        self
    }

    /// Sets the most operations per transaction.
    pub fn with_max_ops_per_txn(mut self, n: usize) -> Self {
        self.max_ops_per_txn = Some(n);
        self
    }

    /// Sets the most bytes per transaction.
    pub fn with_max_txn_bytes(mut self, n: usize) -> Self {
        self.max_txn_bytes = Some(n);
        self
    }

    /// Marks the backend as single-process (embedded).
    pub fn with_single_process(mut self, yes: bool) -> Self {
        self.single_process = yes;
        self
    }

    /// Declares whether reverse scans with a limit cost O(limit).
    pub fn with_cheap_reverse_scans(mut self, yes: bool) -> Self {
        self.cheap_reverse_scans = yes;
        self
    }
}

/// An ordered key range for scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// `[start, end)`.
    pub fn new(start: Vec<u8>, end: Vec<u8>) -> Self {
        KeyRange {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let (start, end) = crate::tuple::prefix_range(prefix);
        KeyRange {
            start: Bound::Included(start),
            end: end.map_or(Bound::Unbounded, Bound::Excluded),
        }
    }

    /// Every key of a tuple that extends the packed tuple `packed` (see
    /// [`crate::tuple::children_range`]).
    pub fn children(packed: &[u8]) -> Self {
        let (start, end) = crate::tuple::children_range(packed);
        KeyRange::new(start, end)
    }

    /// True when `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let lower = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let upper = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        lower && upper
    }

    /// True when no key can lie inside the range.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        }
    }

    /// The range as a pair of borrowed bounds, for `BTreeMap::range`.
    pub fn as_bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        fn b(x: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match x {
                Bound::Included(v) => Bound::Included(v.as_slice()),
                Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        (b(&self.start), b(&self.end))
    }
}

/// Options for [`KvTransaction::scan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Return at most this many pairs (`None`: all).
    pub limit: Option<usize>,
    /// Return pairs in descending key order.
    pub reverse: bool,
}

impl ScanOptions {
    /// Ascending, at most `limit`.
    pub fn forward(limit: Option<usize>) -> Self {
        ScanOptions {
            limit,
            reverse: false,
        }
    }

    /// Descending, at most `limit`.
    pub fn backward(limit: Option<usize>) -> Self {
        ScanOptions {
            limit,
            reverse: true,
        }
    }
}

/// A transactional, ordered key-value store. See the [module docs](self) for
/// the full contract. Object-safe: the event layer holds `Arc<dyn KvStore>`.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> &Capabilities;

    /// Starts a transaction.
    async fn begin(&self) -> Result<Box<dyn KvTransaction>>;

    /// A receiver that changes after every commit with writes made through
    /// this store object (any handle or clone of it), if the backend can
    /// tell. Embedded backends implement it so subscribers on any
    /// `EventStore` over them wake at once; the default is `None` (readers
    /// then poll).
    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// One transaction. See the [module docs](self) for the contract.
#[async_trait]
pub trait KvTransaction: Send {
    /// Reads one key.
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Reads several keys at one snapshot; the result is in input order.
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Reads the pairs of `range` in key order (descending if
    /// `opts.reverse`), at most `opts.limit` of them.
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>>;

    /// Several independent reads at the snapshot in one call: the values
    /// of `gets` (as [`get_many`](Self::get_many)) and the rows of each
    /// scan (as [`scan`](Self::scan)). The default runs them one after
    /// another; backends that pay per call (a thread hand-off, a network
    /// round trip) override it to do them together.
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<ReadMany> {
        let values = if gets.is_empty() {
            Vec::new()
        } else {
            self.get_many(gets).await?
        };
        let mut rows = Vec::with_capacity(scans.len());
        for (r, o) in scans {
            rows.push(self.scan(r.clone(), *o).await?);
        }
        Ok((values, rows))
    }

    /// Buffers a write of `value` at `key`.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);

    /// Buffers a deletion of `key`.
    fn delete(&mut self, key: Vec<u8>);

    /// Adds `key` to the validation set.
    fn validate(&mut self, key: Vec<u8>);

    /// Commits atomically.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Convenience methods on every store.
#[async_trait]
pub trait KvStoreExt: KvStore {
    /// Reads one key at a fresh snapshot.
    async fn get_latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut txn = self.begin().await?;
        txn.get(key).await
    }

    /// Scans `range` at a fresh snapshot.
    async fn scan_latest(&self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        let mut txn = self.begin().await?;
        txn.scan(range, opts).await
    }

    /// Writes one key in its own transaction.
    async fn put_one(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut txn = self.begin().await?;
        txn.put(key, value);
        txn.commit().await
    }
}

impl<T: KvStore + ?Sized> KvStoreExt for T {}

/// The buffered writes of a transaction, with the read-your-own-writes merge
/// that backends share. `None` marks a deletion.
#[derive(Debug, Default, Clone)]
pub struct WriteBuffer {
    writes: WriteSet,
    validated: Vec<Vec<u8>>,
    error: Option<String>,
}

impl WriteBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers a put. An empty key poisons the buffer: commit will fail.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.is_empty() {
            self.error = Some("empty key".into());
            return;
        }
        self.writes.insert(key, Some(value));
    }

    /// Buffers a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        if key.is_empty() {
            self.error = Some("empty key".into());
            return;
        }
        self.writes.insert(key, None);
    }

    /// Adds a key to the validation set.
    pub fn validate(&mut self, key: Vec<u8>) {
        self.validated.push(key);
    }

    /// The buffered state of `key`: `Some(Some(v))` put, `Some(None)`
    /// deleted, `None` untouched.
    pub fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|v| v.as_deref())
    }

    /// True when nothing was written or validated.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.validated.is_empty()
    }

    /// The buffered writes in key order.
    pub fn writes(&self) -> &WriteSet {
        &self.writes
    }

    /// The validation set (may repeat keys; may overlap the writes).
    pub fn validated(&self) -> &[Vec<u8>] {
        &self.validated
    }

    /// Splits into writes and validation set, failing if an invalid write
    /// was buffered.
    pub fn into_parts(self) -> Result<(WriteSet, Vec<Vec<u8>>)> {
        if let Some(e) = self.error {
            return Err(Error::invalid(format!(
                "transaction buffered an invalid write: {e}"
            )));
        }
        Ok((self.writes, self.validated))
    }

    /// Checks the buffered writes against `caps`, so a backend rejects an
    /// oversized transaction before sending anything.
    pub fn check_limits(&self, caps: &Capabilities) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(Error::invalid(format!(
                "transaction buffered an invalid write: {e}"
            )));
        }
        if let Some(max) = caps.max_value_size {
            if let Some(v) = self
                .writes
                .values()
                .flatten()
                .map(|v| v.len())
                .find(|&n| n > max)
            {
                return Err(Error::limit(
                    format!("a value for the {} backend (bytes)", caps.backend),
                    max,
                    v,
                ));
            }
        }
        if let Some(max) = caps.max_ops_per_txn {
            let ops = self.writes.len() + self.validated.len();
            if ops > max {
                return Err(Error::limit(
                    format!("operations in one {} transaction", caps.backend),
                    max,
                    ops,
                ));
            }
        }
        if let Some(max) = caps.max_txn_bytes {
            let bytes: usize = self
                .writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
                .sum();
            if bytes > max {
                return Err(Error::limit(
                    format!("bytes written by one {} transaction", caps.backend),
                    max,
                    bytes,
                ));
            }
        }
        Ok(())
    }

    /// How many extra rows a snapshot scan of `range` must fetch so that,
    /// after buffered deletes hide some, `limit` rows remain.
    pub fn overfetch(&self, range: &KeyRange, limit: Option<usize>) -> Option<usize> {
        limit.map(|l| {
            l + self
                .writes
                .range::<[u8], _>(range.as_bounds())
                .filter(|(_, v)| v.is_none())
                .count()
        })
    }

    /// Merges buffered writes over a snapshot scan result. `snapshot` must be
    /// the snapshot's rows of `range` in scan order, fetched with at least
    /// [`overfetch`](Self::overfetch) rows (or all rows).
    pub fn merge_scan(
        &self,
        range: &KeyRange,
        opts: ScanOptions,
        snapshot: Vec<KvPair>,
    ) -> Vec<KvPair> {
        let mut local = self.writes.range::<[u8], _>(range.as_bounds()).peekable();
        if local.peek().is_none() {
            let mut rows = snapshot;
            if let Some(l) = opts.limit {
                rows.truncate(l);
            }
            return rows;
        }
        // Was the snapshot cut short by the limit? Then buffered keys beyond
        // its last row must not be merged in (the snapshot may hold smaller
        // keys that were not fetched).
        let cutoff = match opts.limit {
            Some(l) if snapshot.len() >= self.overfetch(range, Some(l)).unwrap_or(l) => {
                snapshot.last().map(|(k, _)| k.clone())
            }
            _ => None,
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = snapshot.into_iter().collect();
        for (k, v) in local {
            if let Some(c) = &cutoff {
                let beyond = if opts.reverse { k < c } else { k > c };
                if beyond {
                    continue;
                }
            }
            match v {
                Some(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        let iter: Box<dyn Iterator<Item = KvPair>> = if opts.reverse {
            Box::new(merged.into_iter().rev())
        } else {
            Box::new(merged.into_iter())
        };
        match opts.limit {
            Some(l) => iter.take(l).collect(),
            None => iter.collect(),
        }
    }
}

/// A view of a store under a key prefix (a tenant or namespace). Two
/// namespaces never see each other's keys (see [`Namespaced::new`]).
#[derive(Clone)]
pub struct Namespaced {
    inner: Arc<dyn KvStore>,
    prefix: Arc<[u8]>,
    caps: Capabilities,
}

impl fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaced")
            .field("prefix", &self.prefix)
            .field("backend", &self.caps.backend)
            .finish()
    }
}

impl Namespaced {
    /// Scopes `inner` to `namespace`. Nesting namespaces nests prefixes.
    ///
    /// The prefix is `"n"`, the namespace's byte length (packed integer),
    /// then its bytes. That makes prefixes prefix-free: no key of one
    /// namespace, however crafted, starts with another namespace's prefix.
    pub fn new(inner: Arc<dyn KvStore>, namespace: &str) -> Self {
        let mut prefix = crate::tuple::KeyBuilder::with_raw(b"n")
            .u64(namespace.len() as u64)
            .finish();
        prefix.extend_from_slice(namespace.as_bytes());
        let caps = inner.capabilities().clone();
        Namespaced {
            inner,
            prefix: prefix.into(),
            caps,
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// `range` inside this namespace.
    fn range(&self, range: KeyRange) -> KeyRange {
        let p = &self.prefix;
        let map = |b: Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(self.key(&k)),
            Bound::Excluded(k) => Bound::Excluded(self.key(&k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let start = match range.start {
            Bound::Unbounded => Bound::Included(p.to_vec()),
            b => map(b),
        };
        let end = match range.end {
            Bound::Unbounded => {
                crate::tuple::prefix_successor(p).map_or(Bound::Unbounded, Bound::Excluded)
            }
            b => map(b),
        };
        KeyRange { start, end }
    }

    /// Rows with this namespace's prefix removed.
    fn strip(&self, rows: Vec<KvPair>) -> Vec<KvPair> {
        let n = self.prefix.len();
        rows.into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect()
    }

    /// The raw prefix this namespace puts in front of every key.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

// A wrapper forwards every method, defaults included (`commit_watch`,
// `read_many`), so the wrapped backend's own versions run; the lint makes a
// method added to the traits later a compile error here until it is.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for Namespaced {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_watch()
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        Ok(Box::new(NamespacedTxn {
            inner: self.inner.begin().await?,
            ns: self.clone(),
        }))
    }
}

struct NamespacedTxn {
    inner: Box<dyn KvTransaction>,
    ns: Namespaced,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvTransaction for NamespacedTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if key.is_empty() {
            return Ok(None);
        }
        self.inner.get(&self.ns.key(key)).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.ns.key(k)).collect();
        self.inner.get_many(&keys).await
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        let rows = self.inner.scan(self.ns.range(range), opts).await?;
        Ok(self.ns.strip(rows))
    }

    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<ReadMany> {
        let gets: Vec<Vec<u8>> = gets.iter().map(|k| self.ns.key(k)).collect();
        let scans: Vec<(KeyRange, ScanOptions)> = scans
            .iter()
            .map(|(r, o)| (self.ns.range(r.clone()), *o))
            .collect();
        let (values, rows) = self.inner.read_many(&gets, &scans).await?;
        Ok((values, rows.into_iter().map(|r| self.ns.strip(r)).collect()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.is_empty() {
            // Let the backend's buffer see and reject the empty key.
            self.inner.put(Vec::new(), value);
            return;
        }
        let k = self.ns.key(&key);
        self.inner.put(k, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        if key.is_empty() {
            self.inner.delete(Vec::new());
            return;
        }
        let k = self.ns.key(&key);
        self.inner.delete(k)
    }

    fn validate(&mut self, key: Vec<u8>) {
        let k = self.ns.key(&key);
        self.inner.validate(k)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }
}

/// The span every backend opens for a scan.
pub fn scan_span(backend: &'static str, opts: ScanOptions) -> tracing::Span {
    tracing::trace_span!(
        "kv.scan",
        backend,
        limit = opts.limit,
        reverse = opts.reverse
    )
}

/// The span every backend opens while a transaction begins.
pub fn begin_span(backend: &'static str) -> tracing::Span {
    tracing::trace_span!("kv.begin", backend)
}

/// Records a commit's outcome on the current span and in a trace event.
/// Every backend routes its commit through this, so the "commit" span and
/// its `outcome` field look the same everywhere.
pub async fn traced_commit<F>(backend: &'static str, writes: usize, fut: F) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "kv.commit",
        backend,
        writes,
        outcome = tracing::field::Empty
    );
    let res = fut.instrument(span.clone()).await;
    let outcome = match &res {
        Ok(()) => "ok",
        Err(Error::Conflict { .. }) => "conflict",
        Err(Error::CommitOutcomeUnknown { .. }) => "unknown",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    tracing::trace!(parent: &span, outcome, "commit finished");
    res
}
