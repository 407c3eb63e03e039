//! The event layer's error: [`Error`]. It takes over every variant of the
//! KV contract's [`KvError`] unchanged (a `?` on a KV call converts) and
//! adds the event layer's own: expected versions, conditions, idempotency,
//! lifecycle, handlers, encoding.

use crate::kv::{KvError, SharedSource};
use std::fmt;

/// Boxed source error, accepted by the `backend` constructors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout eskv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a stream append expected the stream's state to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// No check at all.
    Any,
    /// The stream must not exist yet (it has no events).
    NoStream,
    /// The stream must exist (it has at least one event).
    StreamExists,
    /// The stream's current version (its last event's version, 1-based) must be exactly this.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Every failure of the event layer.
///
/// Semantic variants come first; [`Error::Backend`] is the fallback for
/// backend failures that have no better mapping. The variants that the KV
/// contract can report ([`KvError`]) have the same names and fields here;
/// `From<KvError>` maps each to its namesake. `Clone`, so every waiter of a
/// failed group-commit batch gets the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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

    /// Something that was asked for does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was missing.
        what: String,
    },

    /// The caller passed an invalid argument. Nothing was written.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A configured limit was exceeded. Nothing was written.
    #[error("limit exceeded: {what} is {actual}, the limit is {limit}")]
    LimitExceeded {
        /// Which limit.
        what: String,
        /// The limit in force.
        limit: u64,
        /// The offending size or count.
        actual: u64,
    },

    /// A stream append's expected version did not match. Nothing was written.
    #[error("wrong expected version on stream '{stream}': expected {expected}, actual {}", match .actual { Some(v) => format!("version {v}"), None => "no stream".to_string() })]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's actual version, `None` when it does not exist.
        actual: Option<u64>,
    },

    /// A DCB append condition failed: an event matching `fail_if_events_match`
    /// exists after `after`. Nothing was written.
    #[error("append condition failed: the event at position {position} matches the condition's query (after {})", match .after { Some(a) => a.to_string(), None => "the start of the log".to_string() })]
    ConditionFailed {
        /// Position of the first matching event found after `after`.
        position: u64,
        /// The condition's `after`.
        after: Option<u64>,
    },

    /// Some event ids of an append already exist, but the append is not an
    /// exact replay of an earlier one. Nothing was written.
    #[error("idempotency violation: {message}")]
    IdempotencyViolation {
        /// What did not match.
        message: String,
    },

    /// The stream was tombstoned: it can never be written again (nor its
    /// retention changed). Nothing was written.
    #[error("stream '{stream}' was tombstoned and can never be written again; write to a new stream id (a soft delete, EventStore::delete_stream, lets a stream be recreated)")]
    StreamTombstoned {
        /// The stream.
        stream: String,
    },

    /// `forget` named a data subject this store holds no personal data of.
    #[error("no personal data of data subject '{subject}' was ever stored here (check the subject id: it must be the one given to NewEvent::with_personal_data)")]
    UnknownSubject {
        /// The subject.
        subject: String,
    },

    /// Personal data cannot be read or written with the store key given
    /// (wrong key, or none given for a store that holds personal data).
    /// Nothing was written.
    #[error("store key: {message}")]
    WrongStoreKey {
        /// What is wrong, and what to do.
        message: String,
    },

    /// Strict mode rejected an event type that is not registered.
    #[error("unknown event type '{event_type}'{}; register it first or fix the name", match .nearest { Some(n) => format!(" (did you mean '{n}'?)"), None => String::new() })]
    UnknownEventType {
        /// The rejected type.
        event_type: String,
        /// The closest registered type, if any.
        nearest: Option<String>,
    },

    /// The backend cannot be reached or timed out.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What failed, for example the address and the timeout.
        message: String,
    },

    /// Stored data failed a check: a checksum mismatch, an undecodable value,
    /// or a file that is not an eskv store.
    #[error("corrupt data{}: {message}", match .position { Some(p) => format!(" at position {p}"), None => String::new() })]
    Corrupt {
        /// Global position of the damaged event, when known.
        position: Option<u64>,
        /// What is wrong.
        message: String,
    },

    /// The store is held by another user (for example a redb file that
    /// another process has open for writing). Not retryable as such: wait
    /// for the other user to finish, or close it, then open again.
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
    /// exhausted). Free space and retry; the store recovers by itself, no
    /// restart needed.
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
        /// [`Error::CommitOutcomeUnknown`]); false when nothing was written.
        outcome_unknown: bool,
    },

    /// The store holds data in an event layout this version of eskv does
    /// not read (an older or newer `eskv-events/<n>` format). Nothing was
    /// read or changed; `advice` says how to move the data.
    #[error("the store holds event layout '{found}', but this eskv reads '{supported}': {advice}")]
    IncompatibleFormat {
        /// The format marker found in the store.
        found: String,
        /// The format this eskv reads and writes.
        supported: String,
        /// What to do, for example export with the old version and import
        /// with this one.
        advice: String,
    },

    /// An upcaster failed to bring a stored event to its type's current
    /// schema version (see [`crate::upcast`]). The stored event is
    /// unchanged; fix the upcaster (or register one for this version).
    #[error("cannot upcast '{event_type}' at position {position} from schema version {from_version}: {message}")]
    Upcast {
        /// The event's type.
        event_type: String,
        /// The event's position.
        position: u64,
        /// The version the failing step upcasts from.
        from_version: u32,
        /// The upcaster's error.
        message: String,
    },

    /// An application handler (a subscription's, a projection's or a
    /// consumer-group partition's) failed for good or panicked. Its
    /// checkpoint did not move past the event.
    #[error("handler failed{}: {message}", match .position { Some(p) => format!(" on the event at position {p}"), None => String::new() })]
    Handler {
        /// The event the handler failed on, when known.
        position: Option<u64>,
        /// The handler's error, or what happened.
        message: String,
    },

    /// A value could not be encoded (a payload, a read-model value, a
    /// snapshot, one of eskv's own records), or an application payload
    /// could not be decoded into its type. Nothing was written.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded or decoded.
        what: String,
        /// The serializer's error.
        message: String,
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

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Conflict { message } => Error::Conflict { message },
            KvError::CommitOutcomeUnknown { backend, message } => {
                Error::CommitOutcomeUnknown { backend, message }
            }
            KvError::InvalidInput { message } => Error::InvalidInput { message },
            KvError::LimitExceeded {
                what,
                limit,
                actual,
            } => Error::LimitExceeded {
                what,
                limit,
                actual,
            },
            KvError::Unavailable { backend, message } => Error::Unavailable { backend, message },
            KvError::Corrupt { position, message } => Error::Corrupt { position, message },
            KvError::StoreLocked { path } => Error::StoreLocked { path },
            KvError::ReadOnly { backend } => Error::ReadOnly { backend },
            KvError::StorageFull {
                backend,
                path,
                message,
                outcome_unknown,
            } => Error::StorageFull {
                backend,
                path,
                message,
                outcome_unknown,
            },
            KvError::Backend { backend, source } => Error::Backend { backend, source },
        }
    }
}

impl Error {
    /// True when retrying the same operation may succeed: a conflict, an
    /// unknown commit outcome (retry with the same event ids), or a backend
    /// that is temporarily unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::CommitOutcomeUnknown { .. } | Error::Unavailable { .. }
        )
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Corrupt`].
    pub fn corrupt(position: Option<u64>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            position,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: std::sync::Arc::from(source.into()),
        }
    }

    /// Shorthand for [`Error::Unavailable`].
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Unavailable {
            backend,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::CommitOutcomeUnknown`].
    pub fn outcome_unknown(backend: &'static str, message: impl Into<String>) -> Self {
        Error::CommitOutcomeUnknown {
            backend,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// Shorthand for [`Error::LimitExceeded`].
    pub fn limit(what: impl Into<String>, limit: usize, actual: usize) -> Self {
        Error::LimitExceeded {
            what: what.into(),
            limit: limit as u64,
            actual: actual as u64,
        }
    }

    /// Shorthand for [`Error::WrongExpectedVersion`].
    pub fn wrong_expected_version(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        actual: Option<u64>,
    ) -> Self {
        Error::WrongExpectedVersion {
            stream: stream.into(),
            expected,
            actual,
        }
    }

    /// Shorthand for [`Error::IdempotencyViolation`].
    pub fn idempotency(message: impl Into<String>) -> Self {
        Error::IdempotencyViolation {
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Handler`].
    pub fn handler(position: Option<u64>, message: impl Into<String>) -> Self {
        Error::Handler {
            position,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Encode`]: `what` could not be encoded
    /// (or decoded) because of `e`.
    pub fn encode(what: impl Into<String>, e: impl fmt::Display) -> Self {
        Error::Encode {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_actionable() {
        let e = Error::WrongExpectedVersion {
            stream: "order-1".into(),
            expected: ExpectedVersion::Exact(3),
            actual: Some(5),
        };
        assert_eq!(
            e.to_string(),
            "wrong expected version on stream 'order-1': expected version 3, actual version 5"
        );
        let e = Error::UnknownEventType {
            event_type: "OrderPlacd".into(),
            nearest: Some("OrderPlaced".into()),
        };
        assert!(e.to_string().contains("did you mean 'OrderPlaced'"));
        assert!(Error::conflict("x").is_retryable());
        assert!(!Error::invalid("x").is_retryable());
        let locked = Error::StoreLocked {
            path: "events.redb".into(),
        };
        assert!(!locked.is_retryable());
        assert!(locked.to_string().contains("events.redb is in use"));
        assert!(!Error::ReadOnly { backend: "redb" }.is_retryable());
    }
}
