//! Embedded [redb] backend for eskv.
//!
//! ```
//! use eskv_core::{KvStore, KvStoreExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::KvResult<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = eskv_redb::RedbStore::open(dir.path().join("kv.redb")).await?;
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots** are redb read transactions (MVCC, never blocked by the
//!   writer), registered with a [`CommitOracle`] under the commit number
//!   they see.
//! - **Writes** are buffered by the core's [`BufferedTxn`] (which also
//!   answers reads of this transaction's own writes) and sent at commit to
//!   one dedicated writer thread.
//! - **Group commit.** The writer thread drains every commit request that
//!   is waiting, checks each against the oracle (and against the requests
//!   admitted before it in the same batch), applies the admitted ones in one
//!   redb write transaction and makes it durable with one fsync. Each request
//!   keeps its own outcome: a conflict fails only that request.
//! - **Never blocks the runtime.** Reads run in place under
//!   `block_in_place` on a multi-threaded runtime (its other tasks move to
//!   another thread; no hop to the blocking pool and back), else on
//!   `spawn_blocking`; commits on the writer thread.
//!
//! The file is opened in redb's exclusive-writer mode, so this process is the
//! only writer and the in-process oracle sees every commit.
//!
//! # Read-only
//!
//! [`RedbStore::open_read_only`] (or [`RedbOptions::read_only`]) opens an
//! existing store without ever writing to its file: the file may be
//! read-only, any number of read-only handles (in any processes) may share
//! it, no writer thread is started, and commits that write fail with
//! [`KvError::ReadOnly`]. A file that was not closed cleanly needs recovery,
//! which writes; a read-only open then recovers a private temporary copy
//! and reads that, leaving the file as it is. A file held by a writer, or
//! a writer meeting read-only handles, fails with [`KvError::StoreLocked`]
//! naming the file.
//!
//! # Damage, full disks and crashes
//!
//! - **A panic inside redb** (redb trusts page contents and can panic on a
//!   damaged page) is caught at the backend's one error-mapping site and
//!   becomes [`KvError::Corrupt`] naming the file; nothing is written.
//! - **Quick repair** ([`RedbOptions::quick_repair`], on by default): every
//!   commit records redb's allocator state with a two-phase commit, so
//!   reopening after a crash or a kill loads that state instead of walking
//!   and checksumming the whole file. A file with a damaged page that a
//!   crash left open therefore still opens, and reopening takes a few
//!   milliseconds instead of a walk of the file.
//! - **I/O failures** (a full disk) are reported with their first cause:
//!   [`KvError::StorageFull`] with the file's path, or a backend error naming
//!   it. redb refuses every operation after an I/O failure ("previous I/O
//!   error"); this backend then reopens the file on the next operation, so
//!   the store recovers without a restart once the cause is gone. A
//!   read-only store reopens the same way, read-only again (a file that
//!   needs recovery is copied and recovered afresh): it never writes.
//! - **Memory**: redb's page cache is [`DEFAULT_CACHE_SIZE`] (64 MiB) unless
//!   [`RedbOptions::cache_size`] says otherwise; redb's own default is 1 GiB.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compact_file;
pub use compact_file::{compact_file, FileCompaction};

use async_trait::async_trait;
use eskv_core::kv::{BufferedTxn, KvSnapshot, ReadMany, WriteSet};
use eskv_core::oracle::{CommitOracle, Snapshot};
use eskv_core::{
    Capabilities, KeyRange, KvError, KvPair, KvResult, KvStore, KvTransaction, ScanOptions,
};
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;

/// The redb crate this backend is built on, for implementing
/// [`redb::StorageBackend`] for [`RedbStore::open_with_backend`].
pub use redb;

const BACKEND: &str = "redb";
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("eskv_data");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("eskv_meta");
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"eskv-kv/1";

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync before a commit returns (the default): an acknowledged commit
    /// survives power loss.
    #[default]
    Immediate,
    /// No fsync: an acknowledged commit survives a process crash only once a
    /// later `Immediate` commit (or a clean close) has flushed it. For tests
    /// and throwaway data.
    None,
}

/// The default size of redb's page cache: 64 MiB.
///
/// redb's own default is 1 GiB, which a long-running process fills (it sat
/// at 1.1 GB resident) and a full `check` of a large store fills too. The
/// cache sits above the operating system's page cache, which keeps the
/// file's hot pages anyway: a miss in redb's cache costs a `pread` and a
/// copy, not a disk read. 64 MiB holds the upper levels of every b-tree
/// and the tail of the log (where appends and live subscriptions work) for
/// stores of many gigabytes; a process that scans large stores repeatedly
/// and has memory to spare can raise it with [`RedbOptions::cache_size`].
pub const DEFAULT_CACHE_SIZE: usize = 64 << 20;

/// Options for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedbOptions {
    /// Commit durability. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// redb page cache size in bytes. Default: [`DEFAULT_CACHE_SIZE`]
    /// (64 MiB).
    pub cache_size: usize,
    /// Most commit requests one group commit may carry. Default: 1024.
    pub max_batch: usize,
    /// Record redb's allocator state with every commit (redb's
    /// quick-repair mode, a two-phase commit), so that reopening after a
    /// crash does not walk and checksum the whole file. Default: `true`.
    ///
    /// Without it, reopening after an unclean exit rebuilds the allocator
    /// state from every page, which takes time proportional to the file
    /// and fails outright ("all roots are corrupted") on a file with one
    /// damaged page, even a page that nothing needs to read.
    ///
    /// The cost is a slower commit (two fsyncs instead of one): measured
    /// at 13–15 ms against 3.4–5.9 ms for one durable append on its own;
    /// group commit spreads it over every append of a batch.
    pub quick_repair: bool,
    /// Open an existing store without writing to it (see the crate docs).
    /// Default: false.
    pub read_only: bool,
    /// How long opening waits for a file held by another handle before it
    /// fails with [`KvError::StoreLocked`]. Default: 2 s, which covers a
    /// handle of this process that is still closing (a group commit's
    /// task finishing after its appends were answered); `Duration::ZERO`
    /// fails at once.
    pub lock_wait: std::time::Duration,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Durability::Immediate,
            cache_size: DEFAULT_CACHE_SIZE,
            max_batch: 1024,
            quick_repair: true,
            lock_wait: std::time::Duration::from_secs(2),
            read_only: false,
        }
    }
}

impl RedbOptions {
    /// Sets the durability.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the page cache size in bytes.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Turns redb's quick-repair mode on or off (see
    /// [`RedbOptions::quick_repair`]).
    pub fn quick_repair(mut self, on: bool) -> Self {
        self.quick_repair = on;
        self
    }

    /// Sets how long opening waits for a file held by another handle.
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Opens read-only (see the crate docs).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the largest group-commit batch.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
}

/// A redb file as a [`KvStore`]. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

/// The open file: for writing, read-only, or a recovered private copy.
enum Db {
    Write(Database),
    Read(redb::ReadOnlyDatabase),
    /// A file that needed recovery, recovered in a temporary copy (field
    /// order: the database closes before its copy is removed).
    Recovered {
        db: Database,
        _copy: TempCopy,
    },
}

impl Db {
    fn begin_read(&self) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Write(db) => db.begin_read(),
            Db::Read(db) => db.begin_read(),
            Db::Recovered { db, .. } => db.begin_read(),
        }
    }
}

/// A temporary file, removed on drop.
struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Inner {
    shared: Arc<Shared>,
    oracle: Arc<CommitOracle>,
    writer: Option<mpsc::Sender<CommitRequest>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    commits: tokio::sync::watch::Sender<u64>,
    caps: Capabilities,
}

impl Drop for Inner {
    /// Closing: stop the writer and wait for it, so the file is released
    /// when the last handle goes and can be reopened at once.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

struct CommitRequest {
    /// Kept registered until the writer has checked the request, even if
    /// the committing future is cancelled meanwhile: otherwise pruning could
    /// forget a write this request conflicts with.
    snapshot: Snapshot,
    writes: WriteSet,
    validated: Vec<Vec<u8>>,
    reply: oneshot::Sender<KvResult<()>>,
}

/// Opens the store's database (again), mapping its errors through the
/// [`Shared`] it is called with.
type Opener = Box<dyn Fn(&Shared) -> KvResult<Db> + Send + Sync + 'static>;

/// The open database and what is needed to reopen it after an I/O failure.
struct Shared {
    path: PathBuf,
    /// Opens the file again (a fresh redb database on the same storage, in
    /// the same mode: a read-only store reopens read-only).
    opener: Opener,
    /// Opened read-only: never written, no writer thread.
    read_only: bool,
    /// The open database; `None` while a reopen after a failure has not
    /// succeeded yet. Read transactions hold a clone, so the count says
    /// whether the old database is still in use.
    db: RwLock<Option<Arc<Db>>>,
    /// The first I/O failure since the database was last opened. redb
    /// answers every later call with "previous I/O error"; this is what is
    /// reported instead, and its presence makes the next operation reopen
    /// the file.
    failure: Mutex<Option<KvError>>,
}

/// True for the I/O errors of a full disk or an exhausted quota.
fn is_storage_full(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(io.raw_os_error(), Some(28 | 122)) // ENOSPC, EDQUOT
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl Shared {
    /// The one place where redb errors become eskv errors. Runs `f` (a
    /// redb call, or several) and maps what it returns; a panic inside
    /// redb (which trusts page contents, so a damaged page can make it
    /// index out of bounds) becomes [`KvError::Corrupt`] naming the file.
    fn call<T>(&self, f: impl FnOnce() -> KvResult<T>) -> KvResult<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(KvError::corrupt(
                None,
                format!(
                    "{}: redb failed on a damaged page ({}); nothing was written. \
                     Run `eskv check` to see what is damaged, export what still reads, \
                     or restore the file from a backup",
                    self.path.display(),
                    panic_message(p.as_ref())
                ),
            )),
        }
    }

    /// Maps one redb error; records the first I/O failure.
    fn map_err(&self, e: impl Into<redb::Error>) -> KvError {
        let path = self.path.display();
        let e = match e.into() {
            redb::Error::Corrupted(msg) => {
                return KvError::corrupt(None, format!("redb file {path} is corrupt: {msg}"))
            }
            redb::Error::UpgradeRequired(v) => return KvError::corrupt(
                None,
                format!("redb file {path} has format {v}, which needs an upgrade with a newer redb before eskv can open it"),
            ),
            redb::Error::DatabaseAlreadyOpen => return KvError::StoreLocked {
                path: self.path.clone(),
            },
            redb::Error::ValueTooLarge(n) => return KvError::LimitExceeded {
                what: "a redb value (bytes)".into(),
                limit: u32::MAX as u64,
                actual: n as u64,
            },
            e @ redb::Error::TableTypeMismatch { .. } => {
                return KvError::corrupt(None, format!("{path} is not an eskv store: {e}"))
            }
            redb::Error::PreviousIo => {
                return match self.failure() {
                    Some(first) => first,
                    None => KvError::Unavailable {
                        backend: BACKEND,
                        message: format!("an earlier I/O error on {path} stopped redb; the store reopens the file on the next operation, retry"),
                    },
                }
            }
            redb::Error::Io(io) if is_storage_full(&io) => KvError::StorageFull {
                backend: BACKEND,
                path: self.path.display().to_string(),
                message: io.to_string(),
                outcome_unknown: false,
            },
            redb::Error::Io(io) => {
                KvError::backend(BACKEND, format!("I/O error on {path}: {io}"))
            }
            other => return KvError::backend(BACKEND, other),
        };
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::warn!(error = %e, "redb I/O failure; the file is reopened on the next operation");
            *first = Some(e.clone());
        }
        e
    }

    /// The first I/O failure since the last open, if any.
    fn failure(&self) -> Option<KvError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .cloned()
    }

    /// The open database, reopened first if an I/O failure stopped it.
    fn db(&self) -> KvResult<Arc<Db>> {
        if self.failure().is_none() {
            if let Some(db) = &*self.db.read().unwrap_or_else(|p| p.into_inner()) {
                return Ok(db.clone());
            }
        }
        self.reopen()
    }

    /// Closes the stopped database and opens the file again. Only when no
    /// read transaction still uses the old one: a new database may reuse
    /// pages an old snapshot is reading.
    fn reopen(&self) -> KvResult<Arc<Db>> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let failure = self.failure();
        if let (None, Some(db)) = (&failure, &*slot) {
            return Ok(db.clone()); // another caller reopened it meanwhile
        }
        if let Some(db) = &*slot {
            if Arc::strong_count(db) > 1 {
                return Err(KvError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "{} is being reopened after an I/O error ({}), but read transactions still use it; retry",
                        self.path.display(),
                        failure.map_or_else(String::new, |e| e.to_string())
                    ),
                });
            }
        }
        // Dropping the stopped database closes it; redb writes nothing
        // after an I/O failure, the next open recovers the last commit (a
        // read-only store recovers a private copy instead: see
        // `recover_copy`).
        slot.take();
        let db = Arc::new(self.call(|| (self.opener)(self))?);
        *slot = Some(db.clone());
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(path = %self.path.display(), "redb file reopened after an I/O failure");
        Ok(db)
    }
}

impl Shared {
    /// Maps an error of opening the database. A path that cannot be opened
    /// at all (missing, not permitted, a directory) is a backend error
    /// naming it: the caller's to fix, not a damaged file. Content redb
    /// cannot read (a short or unrecognised file, a damaged page) is
    /// [`KvError::Corrupt`] naming the file.
    fn open_error(&self, e: redb::DatabaseError) -> KvError {
        let path = self.path.display();
        match e {
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::IsADirectory
                ) =>
            {
                KvError::backend(BACKEND, format!("cannot open {path}: {io}"))
            }
            e => match self.map_err(e) {
                KvError::Backend { source, .. } => {
                    KvError::corrupt(None, format!("cannot open {path} as a redb file: {source}"))
                }
                other => other,
            },
        }
    }
}

/// A redb builder for `options`.
fn builder(options: &RedbOptions) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(options.cache_size);
    b
}

impl RedbStore {
    /// Opens (or creates) the store at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> KvResult<Self> {
        Self::open_with(path, RedbOptions::default()).await
    }

    /// Opens (or creates) the store at `path`; with
    /// [`RedbOptions::read_only`], opens the existing store without writing
    /// to it (see [`open_read_only`](Self::open_read_only)).
    ///
    /// Fails with [`KvError::Corrupt`] when the file is not a redb database,
    /// is damaged, or is a redb database that eskv did not create, and with
    /// [`KvError::StoreLocked`] while another handle holds the file.
    pub async fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> KvResult<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let o = options.clone();
        let opener: Opener = if options.read_only {
            Box::new(move |s: &Shared| open_read_only_file(s, &p, &o))
        } else {
            Box::new(move |s: &Shared| {
                builder(&o)
                    .create(&p)
                    .map(Db::Write)
                    .map_err(|e| s.open_error(e))
            })
        };
        let wait = options.lock_wait;
        let opener: Arc<Opener> = Arc::new(opener);
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let (path, options, opener) = (path.clone(), options.clone(), opener.clone());
            let opened = tokio::task::spawn_blocking(move || {
                Self::open_blocking(path, options, Box::new(move |s: &Shared| opener(s)))
            })
            .await
            .map_err(|e| KvError::backend(BACKEND, e))?;
            match opened {
                Err(KvError::StoreLocked { .. }) if started.elapsed() + pause < wait => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Opens the existing store at `path` read-only: nothing is ever
    /// written to the file (see the crate docs). Fails with
    /// [`KvError::StoreLocked`] while a writer holds the file, and with
    /// [`KvError::Corrupt`] when the file is not an eskv store.
    pub async fn open_read_only(path: impl AsRef<Path>) -> KvResult<Self> {
        Self::open_with(path, RedbOptions::default().read_only(true)).await
    }

    /// Opens (or creates) a store on a custom redb
    /// [`StorageBackend`](redb::StorageBackend): in-memory storage, or a
    /// wrapper that injects I/O failures to test crash consistency. Use the
    /// re-exported [`redb`] crate to implement it. [`path`](Self::path)
    /// returns `<custom redb backend>`.
    ///
    /// Clones must share one storage: after an I/O failure the store
    /// reopens the database on a clone of `backend`.
    ///
    /// With [`RedbOptions::read_only`] the storage must hold an eskv store
    /// that needs no recovery (there is no file to copy).
    pub async fn open_with_backend<B: redb::StorageBackend + Clone>(
        backend: B,
        options: RedbOptions,
    ) -> KvResult<Self> {
        let path = PathBuf::from("<custom redb backend>");
        let o = options.clone();
        let opener: Opener = if options.read_only {
            Box::new(move |s: &Shared| {
                builder(&o)
                    .open_read_only_with_backend(backend.clone())
                    .map(Db::Read)
                    .map_err(|e| s.open_error(e))
            })
        } else {
            Box::new(move |s: &Shared| {
                builder(&o)
                    .create_with_backend(backend.clone())
                    .map(Db::Write)
                    .map_err(|e| s.open_error(e))
            })
        };
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options, opener))
            .await
            .map_err(|e| KvError::backend(BACKEND, e))?
    }

    fn open_blocking(path: PathBuf, options: RedbOptions, opener: Opener) -> KvResult<Self> {
        let shared = Arc::new(Shared {
            path,
            opener,
            read_only: options.read_only,
            db: RwLock::new(None),
            failure: Mutex::new(None),
        });
        let db = shared.call(|| (shared.opener)(&shared))?;
        shared.call(|| match &db {
            Db::Write(w) => init_format(&shared, w),
            ro => check_format(&shared, ro),
        })?;
        *shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        let oracle = CommitOracle::new();
        let commits = tokio::sync::watch::channel(0).0;
        // A read-only store has no writer thread: its commits that write
        // fail before they would reach one.
        let (tx, writer_thread) = if shared.read_only {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel();
            let writer = Writer {
                commits: commits.clone(),
                shared: shared.clone(),
                oracle: oracle.clone(),
                durability: options.durability,
                quick_repair: options.quick_repair,
                max_batch: options.max_batch,
            };
            let t = std::thread::Builder::new()
                .name("eskv-redb-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| KvError::backend(BACKEND, e))?;
            (Some(tx), Some(t))
        };
        Ok(RedbStore {
            inner: Arc::new(Inner {
                shared,
                oracle,
                writer: tx,
                writer_thread,
                commits,
                // redb stores values up to u32::MAX bytes; stay well below.
                caps: Capabilities::unlimited(BACKEND)
                    .with_max_value_size(1 << 30)
                    .with_single_process(true),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// True when the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.shared.read_only
    }
}

/// Opens the file at `path` read-only; a file that needs recovery is
/// recovered in a private temporary copy.
fn open_read_only_file(shared: &Shared, path: &Path, options: &RedbOptions) -> KvResult<Db> {
    let builder = builder(options);
    match builder.open_read_only(path) {
        Ok(db) => Ok(Db::Read(db)),
        Err(redb::DatabaseError::RepairAborted) => {
            let (db, copy) = recover_copy(shared, path, &builder)?;
            Ok(Db::Recovered { db, _copy: copy })
        }
        Err(e) => Err(shared.open_error(e)),
    }
}

/// Copies a file that needs recovery to a private temporary file and
/// recovers the copy, so that the original is never written. Fails with
/// [`KvError::StoreLocked`] if the file changed while it was copied.
fn recover_copy(
    shared: &Shared,
    path: &Path,
    builder: &redb::Builder,
) -> KvResult<(Database, TempCopy)> {
    let io = |e: std::io::Error| {
        KvError::backend(BACKEND, format!("cannot read {}: {e}", path.display()))
    };
    let stamp = |m: std::fs::Metadata| (m.len(), m.modified().ok());
    let before = stamp(std::fs::metadata(path).map_err(io)?);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = std::env::temp_dir().join(format!(
        "eskv-recovered-{}-{}.redb",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let copy = TempCopy(tmp);
    std::fs::copy(path, &copy.0).map_err(|e| {
        KvError::backend(
            BACKEND,
            format!(
                "{} was not closed cleanly and needs recovery; reading it without writing to it needs a copy in {}, which failed: {e}",
                path.display(),
                copy.0.display()
            ),
        )
    })?;
    if stamp(std::fs::metadata(path).map_err(io)?) != before {
        return Err(KvError::StoreLocked {
            path: path.to_path_buf(),
        });
    }
    let db = builder.create(&copy.0).map_err(|e| shared.open_error(e))?;
    Ok((db, copy))
}

/// Checks, without writing, that `db` holds an eskv store of this format.
fn check_format(shared: &Shared, db: &Db) -> KvResult<()> {
    let path = &shared.path;
    let not_eskv = || {
        KvError::corrupt(
            None,
            format!(
                "{} is a redb database but not an eskv store",
                path.display()
            ),
        )
    };
    let r = db.begin_read().map_err(|e| shared.map_err(e))?;
    let meta = match r.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(not_eskv()),
        Err(e) => return Err(shared.map_err(e)),
    };
    match meta.get(FORMAT_KEY).map_err(|e| shared.map_err(e))? {
        Some(f) if f.value() == FORMAT => {}
        Some(f) => {
            return Err(KvError::corrupt(
                None,
                format!(
                    "{} has eskv format {:?}, this version reads {:?}",
                    path.display(),
                    String::from_utf8_lossy(f.value()),
                    String::from_utf8_lossy(FORMAT)
                ),
            ))
        }
        None => return Err(not_eskv()),
    }
    match r.open_table(DATA) {
        Ok(_) => Ok(()),
        Err(redb::TableError::TableDoesNotExist(_)) => Err(KvError::corrupt(
            None,
            format!("{} is an eskv store without its data table", path.display()),
        )),
        Err(e) => Err(shared.map_err(e)),
    }
}

/// Checks (or, on a new file, writes) the KV format marker. Commits only
/// when it wrote: opening an existing store changes nothing in the file, so
/// a crash of a process that only read leaves the file as it found it.
fn init_format(shared: &Shared, db: &Database) -> KvResult<()> {
    let path = &shared.path;
    let map_err = |e: redb::Error| shared.map_err(e);
    {
        let r = db.begin_read().map_err(|e| map_err(e.into()))?;
        let format = match r.open_table(META) {
            Ok(meta) => meta
                .get(FORMAT_KEY)
                .map_err(|e| map_err(e.into()))?
                .map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(map_err(e.into())),
        };
        match format {
            Some(f) if f == FORMAT => match r.open_table(DATA) {
                Ok(_) => return Ok(()),
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(map_err(e.into())),
            },
            Some(f) => {
                return Err(KvError::corrupt(
                    None,
                    format!(
                        "{} has eskv format {:?}, this version reads {:?}",
                        path.display(),
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    ),
                ))
            }
            None => {}
        }
    }
    let w = db.begin_write().map_err(|e| map_err(e.into()))?;
    let has_other_tables = w
        .list_tables()
        .map_err(|e| map_err(e.into()))?
        .any(|t| t.name() != "eskv_data" && t.name() != "eskv_meta");
    {
        let mut meta = w.open_table(META).map_err(|e| map_err(e.into()))?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(|e| map_err(e.into()))?
            .map(|v| v.value().to_vec());
        match format {
            Some(f) if f == FORMAT => {}
            Some(_) => {
                return Err(KvError::corrupt(
                    None,
                    format!("{} changed while it was opened", path.display()),
                ))
            }
            None if has_other_tables => {
                return Err(KvError::corrupt(
                    None,
                    format!(
                        "{} is a redb database but not an eskv store",
                        path.display()
                    ),
                ))
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT)
                    .map_err(|e| map_err(e.into()))?;
            }
        }
        w.open_table(DATA).map_err(|e| map_err(e.into()))?;
    }
    w.commit().map_err(|e| map_err(e.into()))
}

#[async_trait]
impl KvStore for RedbStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.commits.subscribe())
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        BufferedTxn::begin(&self.inner.caps, async {
            let shared = &self.inner.shared;
            let db = shared.db()?;
            let (snapshot, table) = self.inner.oracle.snapshot(|| {
                shared.call(|| {
                    let r = db.begin_read().map_err(|e| shared.map_err(e))?;
                    r.open_table(DATA).map_err(|e| shared.map_err(e))
                })
            });
            Ok(RedbSnapshot {
                store: self.inner.clone(),
                snapshot,
                view: Arc::new(View {
                    table: table?,
                    _db: db,
                }),
            })
        })
        .await
    }
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A snapshot's table, and the database it was read from (kept so that a
/// reopen after an I/O failure waits until no snapshot uses the old one).
struct View {
    table: Table,
    _db: Arc<Db>,
}

/// A transaction's snapshot: a redb read transaction's table, read on the
/// blocking pool, and the oracle's snapshot its commit is checked against.
struct RedbSnapshot {
    store: Arc<Inner>,
    snapshot: Snapshot,
    view: Arc<View>,
}

impl RedbSnapshot {
    /// Runs a read against the snapshot without blocking the runtime: on a
    /// multi-threaded runtime in place, after telling the runtime this
    /// thread blocks (`block_in_place` hands its other tasks to another
    /// thread, and the caller saves the hop to the blocking pool and back),
    /// else on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &Table) -> KvResult<R> + Send + 'static,
    ) -> KvResult<R> {
        let view = self.view.clone();
        let shared = self.store.shared.clone();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            return tokio::task::block_in_place(|| shared.call(|| f(&shared, &view.table)));
        }
        tokio::task::spawn_blocking(move || shared.call(|| f(&shared, &view.table)))
            .await
            .map_err(|e| KvError::backend(BACKEND, e))?
    }
}

/// Up to `limit` rows of `range` from the snapshot, in scan order.
fn scan_rows(
    s: &Shared,
    t: &Table,
    range: &KeyRange,
    reverse: bool,
    limit: Option<usize>,
) -> KvResult<Vec<KvPair>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let iter = t
        .range::<&[u8]>(range.as_bounds())
        .map_err(|e| s.map_err(e))?;
    let mut push = |item: std::result::Result<_, redb::StorageError>| -> KvResult<bool> {
        let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
            item.map_err(|e| s.map_err(e))?;
        out.push((k.value().to_vec(), v.value().to_vec()));
        Ok(out.len() < limit)
    };
    if reverse {
        for item in iter.rev() {
            if !push(item)? {
                break;
            }
        }
    } else {
        for item in iter {
            if !push(item)? {
                break;
            }
        }
    }
    Ok(out)
}

fn get_one(s: &Shared, t: &Table, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
    Ok(t.get(key)
        .map_err(|e| s.map_err(e))?
        .map(|v| v.value().to_vec()))
}

#[async_trait]
impl KvSnapshot for RedbSnapshot {
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.read(move |s, t| keys.iter().map(|k| get_one(s, t, k)).collect())
            .await
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let span = tracing::Span::current();
        self.read(move |s, t| {
            let _g = span.entered();
            scan_rows(s, t, &range, opts.reverse, opts.limit)
        })
        .await
    }

    /// All gets and scans in one hop to the blocking pool.
    async fn read_many(
        &mut self,
        gets: Vec<Vec<u8>>,
        scans: Vec<(KeyRange, ScanOptions)>,
    ) -> KvResult<ReadMany> {
        self.read(move |s, t| {
            let values = gets
                .iter()
                .map(|k| get_one(s, t, k))
                .collect::<KvResult<Vec<_>>>()?;
            let rows = scans
                .iter()
                .map(|(r, o)| scan_rows(s, t, r, o.reverse, o.limit))
                .collect::<KvResult<Vec<_>>>()?;
            Ok((values, rows))
        })
        .await
    }

    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let RedbSnapshot {
            store,
            snapshot,
            view,
        } = self;
        drop(view);
        if store.shared.read_only {
            return Err(KvError::ReadOnly { backend: BACKEND });
        }
        let (reply, rx) = oneshot::channel();
        store
            .writer
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(CommitRequest {
                snapshot,
                writes,
                validated,
                reply,
            })
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> KvError {
    KvError::Unavailable {
        backend: BACKEND,
        message: "the redb writer thread stopped; reopen the store".into(),
    }
}

struct Writer {
    commits: tokio::sync::watch::Sender<u64>,
    shared: Arc<Shared>,
    oracle: Arc<CommitOracle>,
    durability: Durability,
    quick_repair: bool,
    max_batch: usize,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    /// One group commit: admit conflict-free requests in arrival order,
    /// write them in one redb transaction, answer each.
    fn commit_batch(&self, batch: Vec<CommitRequest>) {
        let mut pending: HashSet<Vec<u8>> = HashSet::new();
        let mut admitted = Vec::with_capacity(batch.len());
        for req in batch {
            let keys = req
                .writes
                .keys()
                .map(Vec::as_slice)
                .chain(req.validated.iter().map(Vec::as_slice));
            let conflict = self
                .oracle
                .first_conflict(req.snapshot.seq(), keys, &pending);
            if let Some(k) = conflict {
                let _ = req.reply.send(Err(KvError::conflict(format!(
                    "key {} was changed by a transaction that committed after this one's snapshot",
                    eskv_core::display_key(&k)
                ))));
                continue;
            }
            if req.writes.is_empty() {
                let _ = req.reply.send(Ok(()));
                continue;
            }
            pending.extend(req.writes.keys().cloned());
            admitted.push(req);
        }
        if admitted.is_empty() {
            return;
        }
        tracing::trace!(requests = admitted.len(), "redb group commit");
        let outcome = self
            .shared
            .db()
            .and_then(|db| self.shared.call(|| self.write(&db, &admitted)));
        // Published whatever the outcome: after a failed commit the writes
        // may be on disk (and are, once the file is reopened), so every
        // snapshot taken before must conflict on these keys. For a commit
        // that did not happen this only causes a retry.
        let seq = self.oracle.publish(pending, || ());
        match outcome {
            Ok(()) => {
                self.commits.send_replace(seq);
                for req in admitted {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of the batch was applied, or (a failed redb commit)
                // the outcome is unknown: everyone gets the same answer.
                for req in admitted {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn write(&self, db: &Db, admitted: &[CommitRequest]) -> KvResult<()> {
        let s = &self.shared;
        // Only a writable store has a writer thread.
        let Db::Write(db) = db else {
            return Err(KvError::ReadOnly { backend: BACKEND });
        };
        let mut w = db.begin_write().map_err(|e| s.map_err(e))?;
        if self.durability == Durability::None {
            w.set_durability(redb::Durability::None)
                .map_err(|e| KvError::backend(BACKEND, e))?;
        }
        w.set_quick_repair(self.quick_repair);
        {
            let mut t = w.open_table(DATA).map_err(|e| s.map_err(e))?;
            for req in admitted {
                for (k, v) in &req.writes {
                    match v {
                        Some(v) => {
                            t.insert(k.as_slice(), v.as_slice())
                                .map_err(|e| s.map_err(e))?;
                        }
                        None => {
                            t.remove(k.as_slice()).map_err(|e| s.map_err(e))?;
                        }
                    }
                }
            }
        }
        // Past this point the outcome is unknown: redb may or may not have
        // made the new root durable before failing.
        w.commit().map_err(|e| match s.map_err(e) {
            KvError::StorageFull {
                backend,
                path,
                message,
                ..
            } => KvError::StorageFull {
                backend,
                path,
                message,
                outcome_unknown: true,
            },
            e => KvError::CommitOutcomeUnknown {
                backend: BACKEND,
                message: format!("redb commit failed: {e}"),
            },
        })
    }
}
