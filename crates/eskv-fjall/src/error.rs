//! The one place where fjall errors (and panics) become eskv errors.

use crate::store::Shared;
use eskv_core::KvError;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(crate) const BACKEND: &str = "fjall";

/// True for the I/O errors of a full disk or an exhausted quota.
pub(crate) fn is_storage_full(io: &std::io::Error) -> bool {
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

/// The I/O error inside a fjall error, if that is what it is.
fn io_error(e: &fjall::Error) -> Option<&std::io::Error> {
    match e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    }
}

impl Shared {
    /// Runs `f` (a fjall call, or several) and maps a panic inside fjall
    /// (it trusts some on-disk structures and asserts on them) to
    /// [`KvError::Corrupt`] naming the store's directory.
    pub(crate) fn call<T>(
        &self,
        f: impl FnOnce() -> eskv_core::KvResult<T>,
    ) -> eskv_core::KvResult<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(KvError::corrupt(
                None,
                format!(
                    "{}: fjall failed on damaged data ({}); nothing was written. \
                     Where the damage still lets the store open, `eskv check` shows what is \
                     damaged and `eskv export` saves what still reads; otherwise, or after \
                     that, restore the store from a backup",
                    self.path.display(),
                    panic_message(p.as_ref())
                ),
            )),
        }
    }

    /// Maps one fjall error of a read or of opening.
    pub(crate) fn map_err(&self, e: fjall::Error) -> KvError {
        let path = self.path.display();
        if let Some(io) = io_error(&e) {
            return if is_storage_full(io) {
                KvError::StorageFull {
                    backend: BACKEND,
                    path: path.to_string(),
                    message: io.to_string(),
                    outcome_unknown: false,
                }
            } else {
                KvError::backend(BACKEND, format!("I/O error on {path}: {io}"))
            };
        }
        let damaged = |what: String| {
            KvError::corrupt(
                None,
                format!(
                    "fjall store {path} is damaged: {what}. Run `eskv check`, export what \
                     still reads, or restore the directory from a backup"
                ),
            )
        };
        match e {
            fjall::Error::Locked => KvError::StoreLocked {
                path: self.path.clone(),
            },
            fjall::Error::Poisoned => match self.failure() {
                Some(first) => first,
                None => KvError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "an earlier I/O error on {path} stopped fjall; the store reopens on \
                         the next operation, retry"
                    ),
                },
            },
            fjall::Error::InvalidVersion(v) => KvError::corrupt(
                None,
                format!(
                    "{path} has fjall format {v:?}; this version reads fjall format 3 \
                     (migrate the store with a tool for that fjall version first)"
                ),
            ),
            fjall::Error::JournalRecovery(r) => {
                damaged(format!("its journal does not replay ({r})"))
            }
            fjall::Error::Storage(s) => damaged(format!("a table does not read ({s:?})")),
            fjall::Error::Decompress(c) => {
                damaged(format!("a journal entry does not decompress ({c:?})"))
            }
            fjall::Error::InvalidTrailer | fjall::Error::InvalidTag(_) => damaged(format!("{e:?}")),
            fjall::Error::Unrecoverable => damaged("fjall cannot recover it (see its log)".into()),
            other => KvError::backend(BACKEND, format!("{path}: {other}")),
        }
    }

    /// Maps a failed commit. Any failure once fjall started writing leaves
    /// the outcome unknown (the batch may be in the journal and replay on
    /// the next open) and stops fjall: the first such failure is recorded
    /// (later calls report it instead of fjall's "poisoned") and makes the
    /// next operation reopen the store.
    pub(crate) fn map_commit_err(&self, e: fjall::Error) -> KvError {
        if matches!(e, fjall::Error::Poisoned) {
            // Refused before writing anything.
            let e = self.map_err(e);
            self.slot.record_failure(&e);
            return e;
        }
        let mapped = self.map_err(e);
        self.slot.record_failure(&mapped);
        match mapped {
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
                message: format!("fjall commit failed: {e}"),
            },
        }
    }

    /// Maps an error of opening the database. A path that cannot be
    /// opened at all (not permitted, not a directory) is a backend error
    /// naming it: the caller's to fix, not damage.
    pub(crate) fn open_error(&self, e: fjall::Error) -> KvError {
        if let Some(io) = io_error(&e) {
            if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ) {
                return KvError::backend(
                    BACKEND,
                    format!("cannot open {}: {io}", self.path.display()),
                );
            }
        }
        self.map_err(e)
    }
}
