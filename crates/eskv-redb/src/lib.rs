//! Embedded [redb] backend for eskv.
//!
//! ```
//! use eskv_core::{KvStore, KvStoreExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
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
//! - **Writes** are buffered in a [`WriteBuffer`] and sent at commit to one
//!   dedicated writer thread.
//! - **Group commit.** The writer thread drains every commit request that
//!   is waiting, checks each against the oracle (and against the requests
//!   admitted before it in the same batch), applies the admitted ones in one
//!   redb write transaction and makes it durable with one fsync. Each request
//!   keeps its own outcome: a conflict fails only that request.
//! - **Never blocks the runtime.** Reads run on `spawn_blocking`; commits on
//!   the writer thread.
//!
//! The file is opened in redb's exclusive-writer mode, so this process is the
//! only writer and the in-process oracle sees every commit.
//!
//! # Read-only
//!
//! [`RedbStore::open_read_only`] (or [`RedbOptions::read_only`]) opens an
//! existing store without ever writing to its file: the file may be
//! read-only, any number of read-only handles (in any processes) may share
//! it, and commits that write fail with [`Error::ReadOnly`]. A file that was
//! not closed cleanly needs recovery, which writes; a read-only open then
//! recovers a private temporary copy and reads that, leaving the file as it
//! is. A file held by a writer, or a writer meeting read-only handles, fails
//! with [`Error::StoreLocked`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use async_trait::async_trait;
use eskv_core::kv::{begin_span, scan_span, traced_commit, ReadMany, WriteSet};
use eskv_core::oracle::{CommitOracle, Snapshot};
use eskv_core::{
    Capabilities, Error, KeyRange, KvPair, KvStore, KvTransaction, Result, ScanOptions, WriteBuffer,
};
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
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

/// Options for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedbOptions {
    /// Commit durability. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// redb page cache size in bytes. Default: redb's default.
    pub cache_size: Option<usize>,
    /// Most commit requests one group commit may carry. Default: 1024.
    pub max_batch: usize,
    /// Open an existing store without writing to it (see the crate docs).
    /// Default: false.
    pub read_only: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Durability::Immediate,
            cache_size: None,
            max_batch: 1024,
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

    /// Sets the page cache size.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = Some(bytes);
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
    Write(Arc<Database>),
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
    db: Db,
    oracle: Arc<CommitOracle>,
    writer: Option<mpsc::Sender<CommitRequest>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    commits: tokio::sync::watch::Sender<u64>,
    caps: Capabilities,
    path: PathBuf,
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
            .field("path", &self.inner.path)
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
    reply: oneshot::Sender<Result<()>>,
}

/// The one place where redb errors become eskv errors.
fn map_err(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Corrupted(msg) => Error::corrupt(None, format!("redb file is corrupt: {msg}")),
        redb::Error::UpgradeRequired(v) => Error::corrupt(
            None,
            format!(
                "redb file format {v} needs an upgrade with a newer redb before eskv can open it"
            ),
        ),
        // Only opening meets this, and the open maps it with the path.
        redb::Error::DatabaseAlreadyOpen => Error::StoreLocked {
            path: PathBuf::from("the redb file"),
        },
        redb::Error::ValueTooLarge(n) => Error::LimitExceeded {
            what: "a redb value (bytes)".into(),
            limit: u32::MAX as u64,
            actual: n as u64,
        },
        e @ redb::Error::TableTypeMismatch { .. } => {
            Error::corrupt(None, format!("not an eskv store: {e}"))
        }
        other => Error::backend(BACKEND, other),
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RedbOptions::default()).await
    }

    /// Opens (or creates) the store at `path`.
    ///
    /// Fails with [`Error::Corrupt`] when the file is not a redb database,
    /// is damaged, or is a redb database that eskv did not create.
    pub async fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            if options.read_only {
                return Self::open_read_only_blocking(path, options);
            }
            Self::open_blocking(path, options, move |b| b.create(&p))
        })
        .await
        .map_err(|e| Error::backend(BACKEND, e))?
    }

    /// Opens the existing store at `path` read-only: nothing is ever
    /// written to the file (see the crate docs). Fails with
    /// [`Error::StoreLocked`] while a writer holds the file, and with
    /// [`Error::Corrupt`] when the file is not an eskv store.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RedbOptions::default().read_only(true)).await
    }

    /// Opens (or creates) a store on a custom redb
    /// [`StorageBackend`](redb::StorageBackend): in-memory storage, or a
    /// wrapper that injects I/O failures to test crash consistency. Use the
    /// re-exported [`redb`] crate to implement it. [`path`](Self::path)
    /// returns `<custom redb backend>`.
    pub async fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: RedbOptions,
    ) -> Result<Self> {
        let path = PathBuf::from("<custom redb backend>");
        tokio::task::spawn_blocking(move || {
            if options.read_only {
                let mut builder = Database::builder();
                if let Some(c) = options.cache_size {
                    builder.set_cache_size(c);
                }
                let db = builder
                    .open_read_only_with_backend(backend)
                    .map_err(map_err)?;
                let db = Db::Read(db);
                check_format(&db, &path)?;
                return Self::start(db, None, path, options);
            }
            Self::open_blocking(path, options, move |b| b.create_with_backend(backend))
        })
        .await
        .map_err(|e| Error::backend(BACKEND, e))?
    }

    fn open_blocking(
        path: PathBuf,
        options: RedbOptions,
        create: impl FnOnce(&redb::Builder) -> std::result::Result<Database, redb::DatabaseError>,
    ) -> Result<Self> {
        let mut builder = Database::builder();
        if let Some(c) = options.cache_size {
            builder.set_cache_size(c);
        }
        let db = create(&builder).map_err(|e| match e {
            // A path that cannot be opened at all is the caller's to fix,
            // not a damaged file.
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::IsADirectory
                ) =>
            {
                Error::backend(BACKEND, format!("cannot open {}: {io}", path.display()))
            }
            redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreLocked { path: path.clone() },
            e => match map_err(e) {
                Error::Backend { source, .. } => Error::corrupt(
                    None,
                    format!("cannot open {} as a redb file: {source}", path.display()),
                ),
                other => other,
            },
        })?;
        init_format(&db, &path)?;
        let db = Arc::new(db);
        Self::start(Db::Write(db.clone()), Some(db), path, options)
    }

    /// Opens read-only; a file that needs recovery is recovered in a
    /// private temporary copy.
    fn open_read_only_blocking(path: PathBuf, options: RedbOptions) -> Result<Self> {
        let mut builder = Database::builder();
        if let Some(c) = options.cache_size {
            builder.set_cache_size(c);
        }
        let cannot = |what: String| {
            Error::backend(BACKEND, format!("cannot open {}: {what}", path.display()))
        };
        let db = match builder.open_read_only(&path) {
            Ok(db) => Db::Read(db),
            Err(redb::DatabaseError::RepairAborted) => {
                let (db, copy) = recover_copy(&path, &builder)?;
                Db::Recovered { db, _copy: copy }
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::StoreLocked { path })
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(io))) => {
                return Err(cannot(io.to_string()))
            }
            Err(e) => {
                return Err(match map_err(e) {
                    Error::Backend { source, .. } => Error::corrupt(
                        None,
                        format!("cannot open {} as a redb file: {source}", path.display()),
                    ),
                    other => other,
                })
            }
        };
        check_format(&db, &path)?;
        Self::start(db, None, path, options)
    }

    /// The store around an open database; `writer` starts the writer thread.
    fn start(
        db: Db,
        writer: Option<Arc<Database>>,
        path: PathBuf,
        options: RedbOptions,
    ) -> Result<Self> {
        let oracle = CommitOracle::new();
        let commits = tokio::sync::watch::channel(0).0;
        let (tx, writer_thread) = match writer {
            Some(wdb) => {
                let (tx, rx) = mpsc::channel();
                let writer = Writer {
                    commits: commits.clone(),
                    db: wdb,
                    oracle: oracle.clone(),
                    durability: options.durability,
                    max_batch: options.max_batch,
                };
                let t = std::thread::Builder::new()
                    .name("eskv-redb-writer".into())
                    .spawn(move || writer.run(rx))
                    .map_err(|e| Error::backend(BACKEND, e))?;
                (Some(tx), Some(t))
            }
            None => (None, None),
        };
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                oracle,
                writer: tx,
                writer_thread,
                commits,
                // redb stores values up to u32::MAX bytes; stay well below.
                caps: Capabilities::unlimited(BACKEND)
                    .with_max_value_size(1 << 30)
                    .with_single_process(true),
                path,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// True when the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        !matches!(self.inner.db, Db::Write(_))
    }
}

/// Copies a file that needs recovery to a private temporary file and
/// recovers the copy, so that the original is never written. Fails with
/// [`Error::StoreLocked`] if the file changed while it was copied.
fn recover_copy(path: &Path, builder: &redb::Builder) -> Result<(Database, TempCopy)> {
    let io =
        |e: std::io::Error| Error::backend(BACKEND, format!("cannot read {}: {e}", path.display()));
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
        Error::backend(
            BACKEND,
            format!(
                "{} was not closed cleanly and needs recovery; reading it without writing to it needs a copy in {}, which failed: {e}",
                path.display(),
                copy.0.display()
            ),
        )
    })?;
    if stamp(std::fs::metadata(path).map_err(io)?) != before {
        return Err(Error::StoreLocked {
            path: path.to_path_buf(),
        });
    }
    let db = builder.create(&copy.0).map_err(|e| match map_err(e) {
        Error::Backend { source, .. } => Error::corrupt(
            None,
            format!("cannot open {} as a redb file: {source}", path.display()),
        ),
        other => other,
    })?;
    Ok((db, copy))
}

/// Checks, without writing, that `db` holds an eskv store of this format.
fn check_format(db: &Db, path: &Path) -> Result<()> {
    let r = db.begin_read().map_err(map_err)?;
    let meta = match r.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(Error::corrupt(
                None,
                format!(
                    "{} is a redb database but not an eskv store",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(map_err(e)),
    };
    match meta.get(FORMAT_KEY).map_err(map_err)? {
        Some(f) if f.value() == FORMAT => {}
        Some(f) => {
            return Err(Error::corrupt(
                None,
                format!(
                    "{} has eskv format {:?}, this version reads {:?}",
                    path.display(),
                    String::from_utf8_lossy(f.value()),
                    String::from_utf8_lossy(FORMAT)
                ),
            ))
        }
        None => {
            return Err(Error::corrupt(
                None,
                format!(
                    "{} is a redb database but not an eskv store",
                    path.display()
                ),
            ))
        }
    }
    match r.open_table(DATA) {
        Ok(_) => Ok(()),
        Err(redb::TableError::TableDoesNotExist(_)) => Err(Error::corrupt(
            None,
            format!("{} is an eskv store without its data table", path.display()),
        )),
        Err(e) => Err(map_err(e)),
    }
}

fn init_format(db: &Database, path: &Path) -> Result<()> {
    let w = db.begin_write().map_err(map_err)?;
    let has_other_tables = w
        .list_tables()
        .map_err(map_err)?
        .any(|t| t.name() != "eskv_data" && t.name() != "eskv_meta");
    {
        let mut meta = w.open_table(META).map_err(map_err)?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(map_err)?
            .map(|v| v.value().to_vec());
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(Error::corrupt(
                    None,
                    format!(
                        "{} has eskv format {:?}, this version reads {:?}",
                        path.display(),
                        String::from_utf8_lossy(&f),
                        String::from_utf8_lossy(FORMAT)
                    ),
                ))
            }
            None if has_other_tables => {
                return Err(Error::corrupt(
                    None,
                    format!(
                        "{} is a redb database but not an eskv store",
                        path.display()
                    ),
                ))
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(map_err)?;
            }
        }
        w.open_table(DATA).map_err(map_err)?;
    }
    w.commit().map_err(map_err)
}

#[async_trait]
impl KvStore for RedbStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.commits.subscribe())
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        let _span = begin_span(BACKEND).entered();
        let (snapshot, table) = self.inner.oracle.snapshot(|| {
            let r = self.inner.db.begin_read().map_err(map_err)?;
            r.open_table(DATA).map_err(map_err)
        });
        Ok(Box::new(RedbTxn {
            store: self.inner.clone(),
            snapshot,
            table: Arc::new(table?),
            buf: WriteBuffer::new(),
        }))
    }
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

struct RedbTxn {
    store: Arc<Inner>,
    snapshot: Snapshot,
    table: Arc<Table>,
    buf: WriteBuffer,
}

impl RedbTxn {
    /// Runs a read against the snapshot on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Table) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || f(&table))
            .await
            .map_err(|e| Error::backend(BACKEND, e))?
    }
}

/// Up to `limit` rows of `range` from the snapshot, in scan order.
fn scan_rows(
    t: &Table,
    range: &KeyRange,
    reverse: bool,
    limit: Option<usize>,
) -> Result<Vec<KvPair>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let iter = t.range::<&[u8]>(range.as_bounds()).map_err(map_err)?;
    let mut push = |item: std::result::Result<_, redb::StorageError>| -> Result<bool> {
        let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) = item.map_err(map_err)?;
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

fn get_one(t: &Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(map_err)?.map(|v| v.value().to_vec()))
}

#[async_trait]
impl KvTransaction for RedbTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.buf.lookup(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let key = key.to_vec();
        self.read(move |t| get_one(t, &key)).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.buf.lookup(k).is_none())
            .cloned()
            .collect();
        let mut fetched = if missing.is_empty() {
            Vec::new()
        } else {
            self.read(move |t| {
                missing
                    .iter()
                    .map(|k| get_one(t, k))
                    .collect::<Result<Vec<_>>>()
            })
            .await?
        }
        .into_iter();
        Ok(keys
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.next().flatten(),
            })
            .collect())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        let span = scan_span(BACKEND, opts);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let fetch = self.buf.overfetch(&range, opts.limit);
        let r = range.clone();
        let rows = self
            .read(move |t| {
                let _g = span.entered();
                scan_rows(t, &r, opts.reverse, fetch)
            })
            .await?;
        Ok(self.buf.merge_scan(&range, opts, rows))
    }

    /// All gets and scans in one hop to the blocking pool.
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<ReadMany> {
        let missing: Vec<Vec<u8>> = gets
            .iter()
            .filter(|k| self.buf.lookup(k).is_none())
            .cloned()
            .collect();
        let plan: Vec<(KeyRange, bool, Option<usize>)> = scans
            .iter()
            .map(|(r, o)| (r.clone(), o.reverse, self.buf.overfetch(r, o.limit)))
            .collect();
        let (fetched, rows) = self
            .read(move |t| {
                let values = missing
                    .iter()
                    .map(|k| get_one(t, k))
                    .collect::<Result<Vec<_>>>()?;
                let rows = plan
                    .iter()
                    .map(|(r, reverse, fetch)| {
                        if r.is_empty() {
                            Ok(Vec::new())
                        } else {
                            scan_rows(t, r, *reverse, *fetch)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((values, rows))
            })
            .await?;
        let mut fetched = fetched.into_iter();
        let values = gets
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.next().flatten(),
            })
            .collect();
        let rows = scans
            .iter()
            .zip(rows)
            .map(|((r, o), rows)| self.buf.merge_scan(r, *o, rows))
            .collect();
        Ok((values, rows))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.buf.put(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.buf.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.buf.validate(key)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let RedbTxn {
            store,
            snapshot,
            buf,
            table,
        } = *self;
        drop(table);
        traced_commit(BACKEND, buf.writes().len(), async move {
            buf.check_limits(&store.caps)?;
            if buf.is_empty() {
                return Ok(());
            }
            let (writes, validated) = buf.into_parts()?;
            let (reply, rx) = oneshot::channel();
            if !matches!(store.db, Db::Write(_)) {
                return Err(Error::ReadOnly { backend: BACKEND });
            }
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
        })
        .await
    }
}

fn writer_gone() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        message: "the redb writer thread stopped; reopen the store".into(),
    }
}

struct Writer {
    commits: tokio::sync::watch::Sender<u64>,
    db: Arc<Database>,
    oracle: Arc<CommitOracle>,
    durability: Durability,
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
                let _ = req.reply.send(Err(Error::conflict(format!(
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
        match self.write(&admitted) {
            Ok(()) => {
                let seq = self.oracle.publish(pending, || ());
                self.commits.send_replace(seq);
                for req in admitted {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of the batch was applied, or (a failed redb commit)
                // the outcome is unknown: everyone gets the same answer.
                for req in admitted {
                    let _ = req.reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    fn write(&self, admitted: &[CommitRequest]) -> Result<()> {
        let mut w = self.db.begin_write().map_err(map_err)?;
        if self.durability == Durability::None {
            w.set_durability(redb::Durability::None)
                .map_err(|e| Error::backend(BACKEND, e))?;
        }
        {
            let mut t = w.open_table(DATA).map_err(map_err)?;
            for req in admitted {
                for (k, v) in &req.writes {
                    match v {
                        Some(v) => {
                            t.insert(k.as_slice(), v.as_slice()).map_err(map_err)?;
                        }
                        None => {
                            t.remove(k.as_slice()).map_err(map_err)?;
                        }
                    }
                }
            }
        }
        // Past this point the outcome is unknown: redb may or may not have
        // made the new root durable before failing.
        w.commit().map_err(|e| Error::CommitOutcomeUnknown {
            backend: BACKEND,
            message: format!("redb commit failed: {e}"),
        })
    }
}
