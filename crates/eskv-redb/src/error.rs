//! The one place where redb errors become eskv errors, and reopening
//! the file after an I/O failure.
use super::*;

/// True for the I/O errors of a full disk or an exhausted quota.
pub(crate) fn is_storage_full(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(io.raw_os_error(), Some(28 | 122)) // ENOSPC, EDQUOT
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
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
    pub(crate) fn call<T>(&self, f: impl FnOnce() -> KvResult<T>) -> KvResult<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(KvError::corrupt(
                None,
                format!(
                    "{}: redb failed on a damaged page ({}); nothing was written. \
                     Where the damage still lets the file open, `eskv check` shows what is \
                     damaged and `eskv export` saves what still reads; otherwise, or after \
                     that, restore the file from a backup",
                    self.path.display(),
                    panic_message(p.as_ref())
                ),
            )),
        }
    }

    /// Maps one redb error; records the first I/O failure.
    pub(crate) fn map_err(&self, e: impl Into<redb::Error>) -> KvError {
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
        self.slot.record_failure(&e);
        e
    }

    /// The first I/O failure since the last open, if any.
    pub(crate) fn failure(&self) -> Option<KvError> {
        self.slot.failure()
    }

    /// The open database, reopened first if an I/O failure stopped it.
    /// Dropping the stopped database closes it; redb writes nothing after
    /// an I/O failure, and the next open recovers the last commit (a
    /// read-only store recovers a private copy instead: see
    /// `recover_copy`).
    pub(crate) fn db(&self) -> KvResult<Arc<Db>> {
        self.slot.engine(|| self.reopen())
    }

    /// Opens the file again with the store's opener.
    pub(crate) fn reopen(&self) -> KvResult<Db> {
        self.call(|| (self.opener)(self))
    }
}

impl Shared {
    /// Maps an error of opening the database. A path that cannot be opened
    /// at all (missing, not permitted, a directory) is a backend error
    /// naming it: the caller's to fix, not a damaged file. Content redb
    /// cannot read (a short or unrecognised file, a damaged page) is
    /// [`KvError::Corrupt`] naming the file.
    pub(crate) fn open_error(&self, e: redb::DatabaseError) -> KvError {
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
