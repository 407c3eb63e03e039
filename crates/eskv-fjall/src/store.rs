//! Opening, reopening and the store handle.

use crate::error::BACKEND;
use crate::options::FjallOptions;
use crate::txn::{FjallSnapshot, View};
use crate::writer::FjallBatch;
use async_trait::async_trait;
use eskv_core::kv::BufferedTxn;
use eskv_core::oracle::reopen::ReopenSlot;
use eskv_core::oracle::writer::{CommitSender, GroupWriter};
use eskv_core::oracle::CommitOracle;
use eskv_core::{Capabilities, KvError, KvResult, KvStore, KvTransaction};
use fjall::{KeyspaceCreateOptions, Readable};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DATA: &str = "eskv_data";
const META: &str = "eskv_meta";
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"eskv-kv/1";
/// The file fjall writes first into every database directory.
const FJALL_MARKER: &str = "version";
/// fjall's lock file; read-only handles hold a shared lock on it.
const FJALL_LOCK: &str = "lock";
/// fjall's largest key.
pub(crate) const MAX_KEY: usize = u16::MAX as usize;

/// A fjall database directory as a [`KvStore`]. Cheap to clone; clones
/// share the database.
#[derive(Clone)]
pub struct FjallStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

/// The open database: its data keyspace, and for a read-only store the
/// private copy it reads (field order: the database closes before the
/// copy is removed and the shared lock released).
pub(crate) struct Db {
    pub(crate) db: fjall::Database,
    pub(crate) data: fjall::Keyspace,
    _copy: Option<ReadOnlyCopy>,
}

/// A read-only store's private copy of the directory, and the shared lock
/// on the original that keeps writers out while it is in use.
struct ReadOnlyCopy {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Drop for ReadOnlyCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) oracle: Arc<CommitOracle>,
    pub(crate) writer: Option<CommitSender>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
    pub(crate) caps: Capabilities,
}

impl Drop for Inner {
    /// Closing: stop the writer and wait for it, so the directory is
    /// released when the last handle goes and can be reopened at once.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// The open database and what is needed to reopen it after an I/O failure.
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    options: FjallOptions,
    /// The open database, and the first I/O failure since it was opened:
    /// fjall refuses every write after one ("poisoned"); that failure is
    /// reported instead, and makes the next operation reopen the directory
    /// (the journal replays every batch that reached it).
    pub(crate) slot: ReopenSlot<Db>,
}

impl Shared {
    pub(crate) fn read_only(&self) -> bool {
        self.options.read_only
    }

    /// The first I/O failure since the last open, if any.
    pub(crate) fn failure(&self) -> Option<KvError> {
        self.slot.failure()
    }

    /// The open database, reopened first if an I/O failure stopped it.
    pub(crate) fn db(&self) -> KvResult<Arc<Db>> {
        self.slot.engine(|| self.reopen())
    }

    /// Opens the directory again: the journal replays every batch that
    /// reached it.
    fn reopen(&self) -> KvResult<Db> {
        self.call(|| self.open_db())
    }

    /// Opens the directory (or, read-only, a private copy of it) and
    /// checks (or, on a new store, writes) the format marker.
    fn open_db(&self) -> KvResult<Db> {
        let path = &self.path;
        refuse_foreign_directory(path)?;
        let (dir, copy) = if self.options.read_only {
            let copy = read_only_copy(path)?;
            (copy.dir.clone(), Some(copy))
        } else {
            (path.clone(), None)
        };
        let db = fjall::Database::builder(&dir)
            .cache_size(self.options.cache_size)
            // A public field can bypass the setter's clamp; fjall panics
            // below its minimum.
            .max_journaling_size(
                self.options
                    .max_journal_size
                    .max(crate::options::DEFAULT_MAX_JOURNAL_SIZE),
            )
            .temporary(self.options.temporary && !self.options.read_only)
            .open()
            .map_err(|e| self.open_error(e))?;
        let known = |name: &str| db.keyspace_exists(name);
        let fresh = !known(META) && !known(DATA);
        if fresh && db.list_keyspace_names().iter().any(|n| &**n != "default") {
            return Err(not_eskv(path));
        }
        if fresh && self.options.read_only {
            return Err(not_eskv(path));
        }
        let options = self.options.clone();
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(|e| self.open_error(e))?;
        let data = db
            .keyspace(DATA, || {
                KeyspaceCreateOptions::default().max_memtable_size(options.max_memtable_size)
            })
            .map_err(|e| self.open_error(e))?;
        let format = db
            .snapshot()
            .get(&meta, FORMAT_KEY)
            .map_err(|e| self.open_error(e))?;
        match format {
            Some(f) if &*f == FORMAT => {}
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
            None if !fresh => {
                return Err(KvError::corrupt(
                    None,
                    format!(
                        "{} is an eskv store without its format marker",
                        path.display()
                    ),
                ))
            }
            None => {
                let mut b = db.batch().durability(Some(fjall::PersistMode::SyncAll));
                b.insert(&meta, FORMAT_KEY, FORMAT);
                b.commit().map_err(|e| self.open_error(e))?;
            }
        }
        Ok(Db {
            db,
            data,
            _copy: copy,
        })
    }
}

fn not_eskv(path: &Path) -> KvError {
    KvError::corrupt(
        None,
        format!(
            "{} is a fjall database but not an eskv store",
            path.display()
        ),
    )
}

/// Refuses a directory that holds files but no fjall database (so that
/// opening never litters a directory that is something else), and a path
/// that is not a directory.
fn refuse_foreign_directory(path: &Path) -> KvResult<()> {
    let io = |e: std::io::Error| {
        KvError::backend(BACKEND, format!("cannot open {}: {e}", path.display()))
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(m) if !m.is_dir() => {
            return Err(KvError::invalid(format!(
                "{} is a file; a fjall store is a directory (give a path that does not exist yet, or an empty directory)",
                path.display()
            )))
        }
        Ok(_) => {}
    }
    if path.join(FJALL_MARKER).exists() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path).map_err(io)?;
    if entries.next().is_some() {
        return Err(KvError::corrupt(
            None,
            format!(
                "{} is neither empty nor a fjall database (its `{FJALL_MARKER}` file is missing); \
                 eskv does not create a store among other files",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Copies the directory at `path` to a private temporary directory while
/// holding a shared lock on fjall's lock file, so that fjall's recovery
/// (which writes) runs on the copy and the original is never written.
fn read_only_copy(path: &Path) -> KvResult<ReadOnlyCopy> {
    let io = |e: std::io::Error| {
        KvError::backend(BACKEND, format!("cannot read {}: {e}", path.display()))
    };
    if !path.join(FJALL_MARKER).exists() {
        return Err(KvError::backend(
            BACKEND,
            format!("cannot open {} read-only: no store there", path.display()),
        ));
    }
    let lock = std::fs::File::open(path.join(FJALL_LOCK)).map_err(io)?;
    match lock.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(KvError::StoreLocked {
                path: path.to_path_buf(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "eskv-fjall-read-only-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let copy = ReadOnlyCopy { dir, _lock: lock };
    copy_dir(path, &copy.dir).map_err(|e| {
        KvError::backend(
            BACKEND,
            format!(
                "reading {} without writing to it needs a private copy in {}, which failed: {e}",
                path.display(),
                copy.dir.display()
            ),
        )
    })?;
    Ok(copy)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl FjallStore {
    /// Opens (or creates) the store in the directory `path` with default
    /// options.
    pub async fn open(path: impl AsRef<Path>) -> KvResult<Self> {
        Self::open_with(path, FjallOptions::default()).await
    }

    /// Opens the existing store at `path` read-only: nothing is ever
    /// written to its directory (see the crate docs). Fails with
    /// [`KvError::StoreLocked`] while a writer holds it, and with
    /// [`KvError::Corrupt`] when it is not an eskv store.
    pub async fn open_read_only(path: impl AsRef<Path>) -> KvResult<Self> {
        Self::open_with(path, FjallOptions::default().read_only(true)).await
    }

    /// Opens (or creates) the store in the directory `path`; with
    /// [`FjallOptions::read_only`], opens the existing store without
    /// writing to it.
    ///
    /// Fails with [`KvError::Corrupt`] when the directory holds other files,
    /// a damaged database, or a fjall database that eskv did not create,
    /// and with [`KvError::StoreLocked`] while another handle holds it
    /// (after waiting up to [`FjallOptions::lock_wait`]).
    pub async fn open_with(path: impl AsRef<Path>, options: FjallOptions) -> KvResult<Self> {
        let path = path.as_ref().to_path_buf();
        let wait = options.lock_wait;
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let (path, options) = (path.clone(), options.clone());
            let opened = tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
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

    fn open_blocking(path: PathBuf, options: FjallOptions) -> KvResult<Self> {
        let shared = Arc::new(Shared {
            slot: ReopenSlot::new(BACKEND, path.display().to_string(), !options.temporary),
            path,
            options: options.clone(),
        });
        shared.db()?;
        let oracle = CommitOracle::new();
        let commits = tokio::sync::watch::channel(0).0;
        // A read-only store has no writer thread: its commits that write
        // fail before they would reach one.
        let (tx, writer_thread) = if options.read_only {
            (None, None)
        } else {
            let (tx, t) = GroupWriter {
                commits: commits.clone(),
                oracle: oracle.clone(),
                max_batch: options.max_batch,
                engine: FjallBatch {
                    shared: shared.clone(),
                    durability: options.durability,
                },
            }
            .spawn("eskv-fjall-writer")?;
            (Some(tx), Some(t))
        };
        Ok(FjallStore {
            inner: Arc::new(Inner {
                shared,
                oracle,
                writer: tx,
                writer_thread,
                commits,
                // fjall stores values below 4 GiB; stay well below.
                caps: Capabilities::unlimited(BACKEND)
                    .with_max_value_size(1 << 30)
                    .with_single_process(true),
            }),
        })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// True when the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.shared.read_only()
    }

    /// Bytes the store occupies on disk (tables and journals), as fjall
    /// counts them.
    pub fn disk_space(&self) -> KvResult<u64> {
        let shared = &self.inner.shared;
        let db = shared.db()?;
        shared.call(|| db.db.disk_space().map_err(|e| shared.map_err(e)))
    }
}

#[async_trait]
impl KvStore for FjallStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.commits.subscribe())
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        BufferedTxn::begin(&self.inner.caps, async {
            let shared = &self.inner.shared;
            let (snapshot, db, snap) = shared.slot.snapshot(
                &self.inner.oracle,
                || shared.reopen(),
                |db| db.db.snapshot(),
            )?;
            Ok(FjallSnapshot {
                store: self.inner.clone(),
                snapshot,
                view: Arc::new(View { snap, db }),
            })
        })
        .await
    }
}
