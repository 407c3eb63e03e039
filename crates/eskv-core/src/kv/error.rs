//! What the KV contract can fail with: [`KvError`]. The event layer's
//! [`Error`](crate::Error) takes every variant over unchanged (same name,
//! same fields) and adds its own semantic ones, so a backend's signature
//! says it can never report, say, a wrong expected version.

use std::sync::Arc;

/// A source error held so that errors stay `Clone` (every waiter of a
/// failed group-commit batch gets its own copy).
pub type SharedSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a [`KvStore`](crate::KvStore) / [`KvTransaction`](crate::KvTransaction) call.
pub type KvResult<T> = std::result::Result<T, KvError>;

/// Every failure of the KV contract. Each backend maps its native errors
/// into this enum in exactly one place.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The transaction conflicted with another one that committed after its
    /// snapshot. Nothing was written; retrying the whole transaction is safe.
    #[error("transaction conflict: {message}; nothing was written, retry the transaction")]
    Conflict {
        /// What conflicted.
        message: String,
    },

    /// The backend lost the answer to a commit: it may or may not have been
    /// applied. The event layer resolves this through idempotent retries.
    #[error("{backend}: commit outcome unknown ({message}); retry with the same event ids to resolve it")]
    CommitOutcomeUnknown {
        /// Backend name.
        backend: &'static str,
        /// Details from the backend.
        message: String,
    },

    /// An invalid argument (an empty key, a bad option). Nothing was written.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A limit of the backend ([`Capabilities`](crate::Capabilities)) was
    /// exceeded. Nothing was written.
    #[error("limit exceeded: {what} is {actual}, the limit is {limit}")]
    LimitExceeded {
        /// Which limit.
        what: String,
        /// The limit in force.
        limit: u64,
        /// The offending size or count.
        actual: u64,
    },

    /// The backend cannot be reached or timed out.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What failed, for example the address and the timeout.
        message: String,
    },

    /// Stored data failed a check (a damaged file, an undecodable value).
    #[error("corrupt data{}: {message}", match .position { Some(p) => format!(" at position {p}"), None => String::new() })]
    Corrupt {
        /// Global position of the damaged event, when known.
        position: Option<u64>,
        /// What is wrong.
        message: String,
    },

    /// The store is held by another user (for example a redb file that
    /// another process has open for writing).
    #[error("{} is in use by another process (or another handle in this one); wait for it to finish or close it, then try again", .path.display())]
    StoreLocked {
        /// The store's file.
        path: std::path::PathBuf,
    },

    /// A write to a store that was opened read-only. Nothing was written.
    #[error("{backend}: the store was opened read-only; nothing was written (open it for writing to change it)")]
    ReadOnly {
        /// Backend name.
        backend: &'static str,
    },

    /// The storage is full (no space left on the device, or a quota is
    /// exhausted). Free space and retry; no restart needed.
    #[error("{backend}: no space left for {path} ({message}); make room (free space on its file system, or raise its quota), then retry{}", if *.outcome_unknown { ". The commit may or may not have been applied: retry with the same event ids to resolve it" } else { ". Nothing was written" })]
    StorageFull {
        /// Backend name.
        backend: &'static str,
        /// The file (or storage) that could not grow.
        path: String,
        /// The operating system's error.
        message: String,
        /// True when the failure came while committing, so the commit may
        /// have reached the disk (resolve it like
        /// [`KvError::CommitOutcomeUnknown`]); false when nothing was written.
        outcome_unknown: bool,
    },

    /// A backend failure with no semantic mapping.
    #[error("{backend} error: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// The native error.
        #[source]
        source: SharedSource,
    },
}

impl KvError {
    /// True when retrying may succeed: a conflict, an unknown commit
    /// outcome, or a backend that is temporarily unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::Conflict { .. }
                | KvError::CommitOutcomeUnknown { .. }
                | KvError::Unavailable { .. }
        )
    }

    /// [`KvError::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        KvError::Conflict {
            message: message.into(),
        }
    }

    /// [`KvError::CommitOutcomeUnknown`].
    pub fn outcome_unknown(backend: &'static str, message: impl Into<String>) -> Self {
        KvError::CommitOutcomeUnknown {
            backend,
            message: message.into(),
        }
    }

    /// [`KvError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        KvError::InvalidInput {
            message: message.into(),
        }
    }

    /// [`KvError::LimitExceeded`].
    pub fn limit(what: impl Into<String>, limit: usize, actual: usize) -> Self {
        KvError::LimitExceeded {
            what: what.into(),
            limit: limit as u64,
            actual: actual as u64,
        }
    }

    /// [`KvError::Unavailable`].
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        KvError::Unavailable {
            backend,
            message: message.into(),
        }
    }

    /// [`KvError::Corrupt`].
    pub fn corrupt(position: Option<u64>, message: impl Into<String>) -> Self {
        KvError::Corrupt {
            position,
            message: message.into(),
        }
    }

    /// [`KvError::StoreLocked`].
    pub fn store_locked(path: impl Into<std::path::PathBuf>) -> Self {
        KvError::StoreLocked { path: path.into() }
    }

    /// [`KvError::ReadOnly`].
    pub fn read_only(backend: &'static str) -> Self {
        KvError::ReadOnly { backend }
    }

    /// [`KvError::StorageFull`].
    pub fn storage_full(
        backend: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        outcome_unknown: bool,
    ) -> Self {
        KvError::StorageFull {
            backend,
            path: path.into(),
            message: message.into(),
            outcome_unknown,
        }
    }

    /// [`KvError::Backend`], holding `source`.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        KvError::Backend {
            backend,
            source: Arc::from(source.into()),
        }
    }
}
