//! The store: opening, recovering and checking the file, and `KvStore`.
use super::*;

/// A redb file as a [`KvStore`]. Cheap to clone; clones share the file.
#[derive(Clone)]
pub struct RedbStore {
    pub(crate) inner: Arc<Inner>,
}

/// The open file: for writing, read-only, or a recovered private copy.
pub(crate) enum Db {
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
    pub(crate) fn begin_read(
        &self,
    ) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Write(db) => db.begin_read(),
            Db::Read(db) => db.begin_read(),
            Db::Recovered { db, .. } => db.begin_read(),
        }
    }
}

/// A temporary file, removed on drop.
pub(crate) struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) oracle: Arc<CommitOracle>,
    pub(crate) writer: Option<CommitSender>,
    pub(crate) writer_thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
    pub(crate) caps: Capabilities,
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

/// Opens the store's database (again), mapping its errors through the
/// [`Shared`] it is called with.
pub(crate) type Opener = Box<dyn Fn(&Shared) -> KvResult<Db> + Send + Sync + 'static>;

/// The open database and what is needed to reopen it after an I/O failure.
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    /// Opens the file again (a fresh redb database on the same storage, in
    /// the same mode: a read-only store reopens read-only).
    pub(crate) opener: Opener,
    /// Opened read-only: never written, no writer thread.
    pub(crate) read_only: bool,
    /// The open database, and the first I/O failure since it was opened:
    /// redb answers every later call with "previous I/O error"; that
    /// failure is reported instead, and makes the next operation reopen
    /// the file. Read transactions hold a clone of the database, so it is
    /// reopened only once none uses it (a new database may reuse pages an
    /// old snapshot reads).
    pub(crate) slot: ReopenSlot<Db>,
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

    pub(crate) fn open_blocking(
        path: PathBuf,
        options: RedbOptions,
        opener: Opener,
    ) -> KvResult<Self> {
        let shared = Arc::new(Shared {
            slot: ReopenSlot::new(BACKEND, path.display().to_string(), true),
            path,
            opener,
            read_only: options.read_only,
        });
        shared.slot.engine(|| {
            let db = shared.reopen()?;
            shared.call(|| match &db {
                Db::Write(w) => init_format(&shared, w),
                ro => check_format(&shared, ro),
            })?;
            Ok(db)
        })?;
        let oracle = CommitOracle::new();
        let commits = tokio::sync::watch::channel(0).0;
        // A read-only store has no writer thread: its commits that write
        // fail before they would reach one.
        let (tx, writer_thread) = if shared.read_only {
            (None, None)
        } else {
            let (tx, t) = GroupWriter {
                commits: commits.clone(),
                oracle: oracle.clone(),
                max_batch: options.max_batch,
                engine: RedbBatch {
                    shared: shared.clone(),
                    durability: options.durability,
                    quick_repair: options.quick_repair,
                },
            }
            .spawn("eskv-redb-writer")?;
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
pub(crate) fn open_read_only_file(
    shared: &Shared,
    path: &Path,
    options: &RedbOptions,
) -> KvResult<Db> {
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
pub(crate) fn recover_copy(
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
pub(crate) fn check_format(shared: &Shared, db: &Db) -> KvResult<()> {
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
pub(crate) fn init_format(shared: &Shared, db: &Database) -> KvResult<()> {
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
            let (snapshot, db, table) = shared.slot.snapshot(
                &self.inner.oracle,
                || shared.reopen(),
                |db| {
                    shared.call(|| {
                        let r = db.begin_read().map_err(|e| shared.map_err(e))?;
                        r.open_table(DATA).map_err(|e| shared.map_err(e))
                    })
                },
            )?;
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
