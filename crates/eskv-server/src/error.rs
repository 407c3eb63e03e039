//! Every eskv error and every protocol-level refusal becomes a gRPC status
//! here, once per protocol, so both protocols' clients get the error kinds
//! they already understand.

use crate::kurrent_map::ExpectedRevision;
use crate::proto::umadb::v1::{error_response::ErrorType, ErrorResponse};
use eskv_core::Error;
use prost::Message as _;
use tonic::{Code, Status};

/// Errors of the server itself (not of a request).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The one answer to a request without valid credentials: the same for
/// every cause, naming nothing about the store.
const UNAUTHENTICATED: &str = "missing or invalid credentials";

/// The status for a UmaDB client: the gRPC code, plus UmaDB's
/// `ErrorResponse` as the status details, from which UmaDB's clients pick
/// their error kind (a failed condition is their integrity error).
fn dcb(code: Code, kind: ErrorType, message: String) -> Status {
    let details = ErrorResponse {
        message: message.clone(),
        error_type: kind as i32,
    }
    .encode_to_vec();
    Status::with_details(code, message, details.into())
}

/// Logs failures that are the server's or the store's, not the client's.
fn log_server_side(code: Code, e: &Error) {
    if matches!(code, Code::Internal | Code::DataLoss | Code::Unavailable)
        || matches!(e, Error::StorageFull { .. } | Error::ReadOnly { .. })
    {
        tracing::warn!(error = %e, code = ?code, "request failed on the server side");
    }
}

/// Logs a refused request without valid credentials (never the header).
pub(crate) fn log_unauthenticated(peer: Option<std::net::SocketAddr>, protocol: &str) {
    tracing::warn!(
        ?peer,
        protocol,
        "refused a request without valid credentials"
    );
}

/// An eskv error as UmaDB's clients expect it.
pub(crate) fn dcb_status(e: &Error) -> Status {
    let (code, kind) = match e {
        Error::ConditionFailed { .. }
        | Error::IdempotencyViolation { .. }
        | Error::WrongExpectedVersion { .. } => (Code::FailedPrecondition, ErrorType::Integrity),
        Error::InvalidInput { .. }
        | Error::LimitExceeded { .. }
        | Error::UnknownEventType { .. } => (Code::InvalidArgument, ErrorType::InvalidArgument),
        Error::Corrupt { .. } => (Code::DataLoss, ErrorType::Corruption),
        Error::Unavailable { .. } | Error::StoreLocked { .. } => (Code::Unavailable, ErrorType::Io),
        // Retryable: nothing was written, or (unknown outcome) a retry with
        // the same UUIDs is idempotent. UmaDB's clients read `Io` as a
        // transient failure, never as a failed condition.
        Error::Conflict { .. } => (Code::Aborted, ErrorType::Io),
        Error::CommitOutcomeUnknown { .. } => (Code::Unavailable, ErrorType::Io),
        Error::StorageFull { .. } => (Code::ResourceExhausted, ErrorType::Io),
        Error::ReadOnly { .. } => (Code::FailedPrecondition, ErrorType::Io),
        Error::IncompatibleFormat { .. } => (Code::Internal, ErrorType::Internal),
        _ => (Code::Internal, ErrorType::Io),
    };
    log_server_side(code, e);
    dcb(code, kind, e.to_string())
}

/// A malformed UmaDB request.
pub(crate) fn dcb_invalid(message: impl Into<String>) -> Status {
    dcb(
        Code::InvalidArgument,
        ErrorType::InvalidArgument,
        message.into(),
    )
}

/// A UmaDB request that breaks a data rule (UmaDB's integrity error).
pub(crate) fn dcb_integrity(message: impl Into<String>) -> Status {
    dcb(
        Code::FailedPrecondition,
        ErrorType::Integrity,
        message.into(),
    )
}

/// The server is shutting down or over a limit.
pub(crate) fn dcb_unavailable(message: impl Into<String>) -> Status {
    dcb(Code::Unavailable, ErrorType::Io, message.into())
}

/// Over a per-connection limit.
pub(crate) fn dcb_exhausted(message: impl Into<String>) -> Status {
    dcb(Code::ResourceExhausted, ErrorType::Io, message.into())
}

/// Unauthenticated, as UmaDB's clients recognise it.
pub(crate) fn dcb_unauthenticated() -> Status {
    dcb(
        Code::Unauthenticated,
        ErrorType::Authentication,
        UNAUTHENTICATED.into(),
    )
}

/// An eskv error as KurrentDB's clients expect it. (A wrong expected
/// version of an append is not an error status there: it is an append
/// response; a delete's or tombstone's is this status.)
pub(crate) fn kurrent_status(e: &Error) -> Status {
    let code = match e {
        Error::StreamTombstoned { stream } => return kurrent_stream_deleted(stream),
        Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            let expected = ExpectedRevision::of_version(*expected);
            return kurrent_wrong_expected_version("Write", stream, expected, *actual);
        }
        Error::InvalidInput { .. }
        | Error::LimitExceeded { .. }
        | Error::UnknownEventType { .. } => Code::InvalidArgument,
        Error::ConditionFailed { .. } | Error::IdempotencyViolation { .. } => {
            Code::FailedPrecondition
        }
        Error::NotFound { .. } => Code::NotFound,
        Error::Corrupt { .. } => Code::DataLoss,
        Error::Unavailable { .. } | Error::StoreLocked { .. } => Code::Unavailable,
        // Retryable as gRPC clients understand the codes: a conflict wrote
        // nothing; an unknown outcome resolves by retrying with the same
        // event ids (idempotent in eskv).
        Error::Conflict { .. } => Code::Aborted,
        Error::CommitOutcomeUnknown { .. } => Code::Unavailable,
        Error::StorageFull { .. } => Code::ResourceExhausted,
        Error::ReadOnly { .. } => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    log_server_side(code, e);
    Status::new(code, e.to_string())
}

/// Unauthenticated, as KurrentDB's clients recognise it (access denied).
pub(crate) fn kurrent_unauthenticated() -> Status {
    Status::unauthenticated(UNAUTHENTICATED)
}

/// KurrentDB's trailing metadata key naming an error's kind, which its
/// clients match on.
const EXCEPTION: &str = "exception";

fn with_trailers(code: Code, message: String, trailers: &[(&'static str, &str)]) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in trailers {
        // A value that is not a valid header (a stream name with control
        // characters) is left out; the message still names it.
        if let Ok(v) = v.parse() {
            md.insert(*k, v);
        }
    }
    Status::with_metadata(code, message, md)
}

/// A tombstoned stream, as KurrentDB says it: `FAILED_PRECONDITION`
/// "Event stream '...' is deleted." with trailers `exception:
/// stream-deleted` and `stream-name` (the clients' stream-deleted error).
pub(crate) fn kurrent_stream_deleted(stream: &str) -> Status {
    with_trailers(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[(EXCEPTION, "stream-deleted"), ("stream-name", stream)],
    )
}

/// A wrong expected version as a status, as KurrentDB answers a delete or
/// tombstone: the message and trailers carry KurrentDB's legacy numbers
/// (the client's own expected revision, unchanged even past `i64::MAX`;
/// -1 no stream, -2 any, -4 stream exists; an actual -1 is no stream).
pub(crate) fn kurrent_wrong_expected_version(
    operation: &str,
    stream: &str,
    expected: ExpectedRevision,
    actual: Option<u64>,
) -> Status {
    let expected = match expected {
        ExpectedRevision::Revision(r) => r.to_string(),
        ExpectedRevision::NoStream => "-1".into(),
        ExpectedRevision::Any => "-2".into(),
        ExpectedRevision::StreamExists => "-4".into(),
    };
    // Version `v` is revision `v - 1`; version 0 (or none) is no stream.
    let actual = actual
        .and_then(|v| v.checked_sub(1))
        .map_or_else(|| "-1".to_string(), |r| r.to_string());
    let (e, a) = (&expected, &actual);
    with_trailers(
        Code::FailedPrecondition,
        format!(
            "{operation} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected}, Actual version: {actual}"
        ),
        &[
            (EXCEPTION, "wrong-expected-version"),
            ("stream-name", stream),
            ("expected-version", e),
            ("actual-version", a),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retryable() -> Vec<(Error, Code, ErrorType)> {
        vec![
            (Error::conflict("x"), Code::Aborted, ErrorType::Io),
            (
                Error::outcome_unknown("redb", "lost"),
                Code::Unavailable,
                ErrorType::Io,
            ),
            (
                Error::StorageFull {
                    backend: "redb",
                    path: "events.redb".into(),
                    message: "ENOSPC".into(),
                    outcome_unknown: false,
                },
                Code::ResourceExhausted,
                ErrorType::Io,
            ),
            (
                Error::ReadOnly { backend: "redb" },
                Code::FailedPrecondition,
                ErrorType::Io,
            ),
        ]
    }

    #[test]
    fn kurrent_codes_of_store_errors_keep_the_message() {
        for (e, code, _) in retryable() {
            let s = kurrent_status(&e);
            assert_eq!((s.code(), s.message()), (code, e.to_string().as_str()));
        }
    }

    #[test]
    fn dcb_codes_and_error_types_of_store_errors_keep_the_message() {
        for (e, code, kind) in retryable() {
            let s = dcb_status(&e);
            assert_eq!((s.code(), s.message()), (code, e.to_string().as_str()));
            let details = ErrorResponse::decode(s.details()).unwrap();
            assert_eq!(details.error_type, kind as i32, "{e}");
            assert_eq!(details.message, e.to_string());
        }
    }

    #[test]
    fn wrong_expected_version_reports_huge_revisions_as_sent() {
        for rev in [i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let s = kurrent_wrong_expected_version(
                "Delete",
                "s",
                ExpectedRevision::Revision(rev),
                Some(2),
            );
            assert!(
                s.message()
                    .ends_with(&format!("Expected version: {rev}, Actual version: 1")),
                "{}",
                s.message()
            );
            assert_eq!(
                s.metadata().get("expected-version").unwrap(),
                &rev.to_string()
            );
        }
        // Without the client's revision, a saturated version reads back as
        // a revision, never as a legacy negative number.
        let s = kurrent_status(&Error::wrong_expected_version(
            "s",
            eskv_core::ExpectedVersion::Exact(u64::MAX),
            None,
        ));
        assert!(
            s.message()
                .contains("Expected version: 18446744073709551614"),
            "{}",
            s.message()
        );
    }
}
