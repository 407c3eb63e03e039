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
//!    the validation set. Commit must fail with [`KvError::Conflict`] if any
//!    key in the validation set was changed (put or deleted, including
//!    created when it was absent) by another transaction that committed after
//!    this transaction's snapshot.
//! 5. **Write-write conflicts.** Every written key is implicitly in the
//!    validation set: two transactions with overlapping snapshots that write
//!    the same key can never both commit.
//! 6. **Atomic commit.** [`commit`](KvTransaction::commit) applies all
//!    buffered writes or none. It returns `Ok(())`, a retryable
//!    [`KvError::Conflict`], [`KvError::CommitOutcomeUnknown`] when the backend
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

use async_trait::async_trait;
use std::collections::BTreeMap;

mod buffer;
mod error;
mod namespaced;
mod range;
pub mod remote;
mod snapshot;
mod trace;

pub use buffer::WriteBuffer;
pub use error::{KvError, KvResult, SharedSource};
pub use namespaced::Namespaced;
pub use range::{KeyRange, ScanOptions};
pub use snapshot::{BufferedTxn, KvSnapshot};
pub use trace::{begin_span, scan_span, traced_commit};

/// A key-value pair returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// What [`KvTransaction::read_many`] returns: the values of the gets, and
/// the rows of each scan.
pub type ReadMany = (Vec<Option<Vec<u8>>>, Vec<Vec<KvPair>>);

/// What [`KvTransaction::get_each`] hands each value to: the value of
/// the next key (in input order), lent for the call only.
pub type VisitValue<'a> = dyn FnMut(Option<&[u8]>) + Send + 'a;

/// What [`KvTransaction::scan_each`] hands each row to: the key and the
/// value of the next row (in scan order), lent for the call only. It
/// returns `false` to end the scan there.
pub type VisitRow<'a> = dyn FnMut(&[u8], &[u8]) -> bool + Send + 'a;

/// Hands copied values to `visit` in order: the [`VisitValue`] side of a
/// `get_each` that has nothing to lend (a default, or a fallback).
pub fn visit_values(values: Vec<Option<Vec<u8>>>, visit: &mut VisitValue<'_>) {
    for v in values {
        visit(v.as_deref());
    }
}

/// Hands copied rows to `visit` in order until it returns `false`: the
/// [`VisitRow`] side of a `scan_each` that has nothing to lend.
pub fn visit_rows(rows: Vec<KvPair>, visit: &mut VisitRow<'_>) {
    for (k, v) in rows {
        if !visit(&k, &v) {
            break;
        }
    }
}

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

/// A transactional, ordered key-value store. See the [module docs](self) for
/// the full contract. Object-safe: the event layer holds `Arc<dyn KvStore>`.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> &Capabilities;

    /// Starts a transaction.
    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>>;

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
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>>;

    /// Reads several keys at one snapshot; the result is in input order.
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>>;

    /// Reads the pairs of `range` in key order (descending if
    /// `opts.reverse`), at most `opts.limit` of them.
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>>;

    /// Like [`get_many`](Self::get_many), handing each value to `visit`
    /// (in input order) instead of returning it: a backend that can lend
    /// its stored bytes saves a copy and an allocation per value (reads
    /// decode events straight from them). The default calls `get_many`.
    async fn get_each(&mut self, keys: &[Vec<u8>], visit: &mut VisitValue<'_>) -> KvResult<()> {
        visit_values(self.get_many(keys).await?, visit);
        Ok(())
    }

    /// Like [`scan`](Self::scan), handing each row to `visit` (in scan
    /// order) instead of returning it, until `visit` returns `false`: a
    /// backend that can lend its stored bytes saves two copies and two
    /// allocations per row (the log read decodes events straight from
    /// them). The default calls `scan`.
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        visit_rows(self.scan(range, opts).await?, visit);
        Ok(())
    }

    /// Several independent reads at the snapshot in one call: the values
    /// of `gets` (as [`get_many`](Self::get_many)) and the rows of each
    /// scan (as [`scan`](Self::scan)). [`BufferedTxn`] does them in one
    /// call to the backend when the backend's [`KvSnapshot`] can.
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany>;

    /// Buffers a write of `value` at `key`.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);

    /// Buffers a write of `value` at `key`, a key the caller knows from
    /// this transaction's own reads was absent at its snapshot (say, a
    /// position above a head it read). The write is validated like any
    /// other (rule 5): a transaction that created `key` after the snapshot
    /// makes the commit fail with [`KvError::Conflict`]. A backend that
    /// would otherwise read the state of written keys before its commit
    /// (etcd) takes the caller's word instead and saves that read. Putting
    /// a key that was present is a caller bug: such a commit may fail
    /// with a conflict on every attempt. The default calls
    /// [`put`](Self::put).
    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put(key, value)
    }

    /// Buffers a deletion of `key`.
    fn delete(&mut self, key: Vec<u8>);

    /// Adds `key` to the validation set.
    fn validate(&mut self, key: Vec<u8>);

    /// Commits atomically.
    async fn commit(self: Box<Self>) -> KvResult<()>;
}

/// Convenience methods on every store.
#[async_trait]
pub trait KvStoreExt: KvStore {
    /// Reads one key at a fresh snapshot.
    async fn get_latest(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let mut txn = self.begin().await?;
        txn.get(key).await
    }

    /// Scans `range` at a fresh snapshot.
    async fn scan_latest(&self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let mut txn = self.begin().await?;
        txn.scan(range, opts).await
    }

    /// Writes one key in its own transaction.
    async fn put_one(&self, key: Vec<u8>, value: Vec<u8>) -> KvResult<()> {
        let mut txn = self.begin().await?;
        txn.put(key, value);
        Ok(txn.commit().await?)
    }
}

impl<T: KvStore + ?Sized> KvStoreExt for T {}
