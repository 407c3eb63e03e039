//! The one place where tikv-client errors become eskv errors, and the
//! deadline every call runs under.

use eskv_core::{KvError, KvResult};
use std::future::Future;
use std::time::Duration;

use crate::BACKEND;
use eskv_core::kv::remote::{timeout_error, Phase};

/// How a native error is classified, most decisive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Other,
    /// A server-side or protocol failure (gRPC `Internal`): a definite
    /// error while reading, but a lost answer while committing.
    Internal,
    Unavailable,
    AlreadyExists,
    Conflict,
    Undetermined,
}

pub(crate) fn classify_key_error(k: &tikv_client::ProtoKeyError) -> Kind {
    if k.already_exist.is_some() {
        Kind::AlreadyExists
    } else if k.conflict.is_some()
        || !k.retryable.is_empty()
        || k.deadlock.is_some()
        || k.txn_not_found.is_some()
        || k.commit_ts_expired.is_some()
    {
        Kind::Conflict
    } else {
        Kind::Other
    }
}

pub(crate) fn classify(e: &tikv_client::Error) -> Kind {
    use tikv_client::Error as T;
    match e {
        T::UndeterminedError(_) => Kind::Undetermined,
        T::KeyError(k) => classify_key_error(k),
        T::MultipleKeyErrors(v) | T::ExtractedErrors(v) => {
            v.iter().map(classify).max().unwrap_or(Kind::Other)
        }
        T::PessimisticLockError { inner, .. } => classify(inner),
        T::DuplicateKeyInsertion => Kind::AlreadyExists,
        // A lock of another transaction that could not be resolved in time,
        // or our own lock rolled back by another transaction: retryable.
        T::ResolveLockError(_) | T::TxnNotFound(_) => Kind::Conflict,
        T::Grpc(_) | T::Io(_) | T::Canceled(_) | T::Channel(_) => Kind::Unavailable,
        // tonic reports a connection lost mid-call (reset, closed by the
        // peer, an h2 error) as a status, `Unknown` or `Internal`, rather
        // than as a transport error; tikv-client only marks a commit
        // undetermined for the latter (`Committer::commit_primary`).
        T::GrpcAPI(status) => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted => Kind::Unavailable,
            tonic::Code::Internal => Kind::Internal,
            _ => Kind::Other,
        },
        // Region and leader errors are retried by the client's own backoff;
        // one that still surfaces means the cluster is not serving the range.
        T::RegionError(r) if r.raft_entry_too_large.is_none() => Kind::Unavailable,
        T::LeaderNotFound { .. }
        | T::RegionForKeyNotFound { .. }
        | T::RegionForRangeNotFound { .. }
        | T::RegionNotFoundInResponse { .. }
        | T::NoCurrentRegions
        | T::EntryNotFoundInRegionCache => Kind::Unavailable,
        _ => Kind::Other,
    }
}

/// The one place where tikv-client errors become eskv errors.
pub(crate) fn map_err(e: tikv_client::Error, phase: Phase, endpoints: &str) -> KvError {
    match (classify(&e), phase) {
        (Kind::Undetermined, _) => KvError::CommitOutcomeUnknown {
            backend: BACKEND,
            message: e.to_string(),
        },
        (Kind::Conflict, _) => KvError::conflict(format!(
            "TiKV rejected the transaction with a retryable error: {e}"
        )),
        (Kind::AlreadyExists, _) => KvError::conflict(format!(
            "TiKV reports that a key the transaction inserts already exists: {e}"
        )),
        (Kind::Unavailable | Kind::Internal, Phase::Commit) => KvError::CommitOutcomeUnknown {
            backend: BACKEND,
            message: format!(
                "connection to TiKV failed during commit ({e}); the commit may or may not \
                 have been applied; PD endpoints {endpoints}"
            ),
        },
        (Kind::Unavailable, _) | (Kind::Other | Kind::Internal, Phase::Connect) => {
            KvError::Unavailable {
                backend: BACKEND,
                message: format!(
                    "cannot reach the TiKV cluster through PD endpoints {endpoints}: {e}"
                ),
            }
        }
        (Kind::Other | Kind::Internal, _) => KvError::backend(BACKEND, e),
    }
}

pub(crate) async fn timed<T>(
    what: &str,
    phase: Phase,
    timeout: Duration,
    endpoints: &str,
    fut: impl Future<Output = tikv_client::Result<T>>,
) -> KvResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_err(e, phase, endpoints)),
        Err(_) => Err(timeout_error(BACKEND, what, phase, timeout, endpoints)),
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use tikv_client::Error as T;
    use tikv_client::ProtoKeyError;

    const EP: &str = "127.0.0.1:2379";

    fn conflict_key_error() -> T {
        let k = ProtoKeyError {
            conflict: Some(Default::default()),
            retryable: "write conflict".into(),
            ..Default::default()
        };
        T::KeyError(Box::new(k))
    }

    fn abort_key_error() -> T {
        let k = ProtoKeyError {
            abort: "assertion failed".into(),
            ..Default::default()
        };
        T::KeyError(Box::new(k))
    }

    fn map(e: T, phase: Phase) -> KvError {
        map_err(e, phase, EP)
    }

    #[test]
    fn conflicts_are_retryable_conflicts_even_nested() {
        for phase in [Phase::Read, Phase::Commit] {
            assert!(matches!(
                map(conflict_key_error(), phase),
                KvError::Conflict { .. }
            ));
        }
        let only_retryable = T::KeyError(Box::new(ProtoKeyError {
            retryable: "txn lock not found".into(),
            ..Default::default()
        }));
        assert!(matches!(
            map(only_retryable, Phase::Commit),
            KvError::Conflict { .. }
        ));
        let nested = T::ExtractedErrors(vec![
            abort_key_error(),
            T::MultipleKeyErrors(vec![conflict_key_error()]),
        ]);
        let e = map(nested, Phase::Commit);
        assert!(matches!(e, KvError::Conflict { .. }), "{e:?}");
        assert!(e.is_retryable());
        let pessimistic = T::PessimisticLockError {
            inner: Box::new(T::MultipleKeyErrors(vec![conflict_key_error()])),
            success_keys: vec![],
        };
        assert!(matches!(
            map(pessimistic, Phase::Commit),
            KvError::Conflict { .. }
        ));
        let deadlock = T::KeyError(Box::new(ProtoKeyError {
            deadlock: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(deadlock, Phase::Commit),
            KvError::Conflict { .. }
        ));
    }

    #[test]
    fn already_exists_is_a_conflict_that_says_so() {
        let k = T::KeyError(Box::new(ProtoKeyError {
            already_exist: Some(Default::default()),
            ..Default::default()
        }));
        let e = map(T::MultipleKeyErrors(vec![k]), Phase::Commit);
        match e {
            KvError::Conflict { message } => assert!(message.contains("already exists")),
            other => panic!("got {other:?}"),
        }
        let e = map(T::DuplicateKeyInsertion, Phase::Commit);
        assert!(
            matches!(e, KvError::Conflict { ref message } if message.contains("already exists"))
        );
    }

    #[test]
    fn undetermined_is_commit_outcome_unknown() {
        let e = map(
            T::UndeterminedError(Box::new(T::StringError("lost".into()))),
            Phase::Commit,
        );
        assert!(
            matches!(
                e,
                KvError::CommitOutcomeUnknown {
                    backend: "tikv",
                    ..
                }
            ),
            "{e:?}"
        );
        // Undetermined wins over a conflict in the same batch.
        let e = map(
            T::ExtractedErrors(vec![
                conflict_key_error(),
                T::UndeterminedError(Box::new(T::StringError("lost".into()))),
            ]),
            Phase::Commit,
        );
        assert!(matches!(e, KvError::CommitOutcomeUnknown { .. }), "{e:?}");
    }

    #[test]
    fn connection_trouble_is_unavailable_or_unknown_during_commit() {
        let io = || {
            T::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))
        };
        let e = map(io(), Phase::Read);
        match &e {
            KvError::Unavailable { backend, message } => {
                assert_eq!(*backend, "tikv");
                assert!(message.contains(EP), "{message}");
            }
            other => panic!("got {other:?}"),
        }
        assert!(matches!(
            map(io(), Phase::Commit),
            KvError::CommitOutcomeUnknown { .. }
        ));
        let status = T::GrpcAPI(tonic::Status::unavailable("down"));
        assert!(matches!(
            map(status, Phase::Read),
            KvError::Unavailable { .. }
        ));
        let leader = T::RegionError(Box::new(tikv_client::ProtoRegionError {
            not_leader: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(leader, Phase::Read),
            KvError::Unavailable { .. }
        ));
        // At connect time every failure means "cannot reach the cluster".
        let e = map(
            T::InternalError {
                message: "PD cluster failed to respond".into(),
            },
            Phase::Connect,
        );
        assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
    }

    /// A connection lost mid-RPC reaches tikv-client as a gRPC status with
    /// code `Unknown` or `Internal` (hyper/h2 failures inside tonic), not
    /// as a transport error, so tikv-client does not mark the commit
    /// undetermined itself. During commit the primary may have been
    /// committed: the outcome is unknown, never a definite failure.
    #[test]
    fn lost_connection_statuses_during_commit_are_unknown_outcomes() {
        for status in [
            tonic::Status::unknown("transport error: connection reset"),
            tonic::Status::internal("h2 protocol error: stream no longer needed"),
        ] {
            let code = status.code();
            let e = map(T::GrpcAPI(status.clone()), Phase::Commit);
            assert!(
                matches!(
                    e,
                    KvError::CommitOutcomeUnknown {
                        backend: "tikv",
                        ..
                    }
                ),
                "{code:?} during commit: {e:?}"
            );
            assert!(e.is_retryable());
            // Nested the way the client collects per-region results.
            let e = map(
                T::ExtractedErrors(vec![abort_key_error(), T::GrpcAPI(status.clone())]),
                Phase::Commit,
            );
            assert!(
                matches!(e, KvError::CommitOutcomeUnknown { .. }),
                "{code:?} nested during commit: {e:?}"
            );
        }
        // Outside a commit nothing was written: an unknown status is the
        // cluster being unreachable, an internal one a server error.
        let e = map(T::GrpcAPI(tonic::Status::unknown("reset")), Phase::Read);
        assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
        let e = map(T::GrpcAPI(tonic::Status::internal("bug")), Phase::Read);
        assert!(matches!(e, KvError::Backend { .. }), "{e:?}");
    }

    #[test]
    fn the_rest_is_a_backend_error() {
        let e = map(abort_key_error(), Phase::Commit);
        assert!(
            matches!(
                e,
                KvError::Backend {
                    backend: "tikv",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        let e = map(
            T::GrpcAPI(tonic::Status::invalid_argument("bad")),
            Phase::Read,
        );
        assert!(matches!(e, KvError::Backend { .. }), "{e:?}");
        let too_large = T::RegionError(Box::new(tikv_client::ProtoRegionError {
            raft_entry_too_large: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(too_large, Phase::Commit),
            KvError::Backend { .. }
        ));
    }

    #[test]
    fn timeouts_name_endpoints_and_duration() {
        let e = timeout_error(BACKEND, "a get", Phase::Read, Duration::from_secs(2), EP);
        let s = e.to_string();
        assert!(matches!(e, KvError::Unavailable { .. }));
        assert!(s.contains(EP) && s.contains("2s"), "{s}");
        assert!(matches!(
            timeout_error(
                BACKEND,
                "a commit",
                Phase::Commit,
                Duration::from_secs(2),
                EP
            ),
            KvError::CommitOutcomeUnknown { .. }
        ));
    }
}
