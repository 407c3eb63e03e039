//! The one place where etcd client errors become eskv errors, and the
//! timeouts and resending that decide which error a caller sees.
use crate::client::ClientError;
use crate::BACKEND;
use eskv_core::kv::remote::timeout_error;
pub(crate) use eskv_core::kv::remote::Phase;
use eskv_core::{KvError, KvResult};
use std::future::Future;
use std::time::Duration;

/// etcd's answer to a write once its database reached `--quota-backend-bytes`
/// (`ErrGRPCNoSpace`, code `ResourceExhausted`; the NOSPACE alarm is raised).
const NO_SPACE: &str = "database space exceeded";

/// gRPC's answer to a request above the server's receive limit
/// (`--max-request-bytes` plus etcd's 512 KiB of gRPC overhead), code
/// `ResourceExhausted`: "grpc: received message larger than max (N vs. M)".
const LARGER_THAN_MAX: &str = "larger than max";

/// etcd's `ErrGRPCAuthOldRevision` (code `InvalidArgument`): the token was
/// issued before the last change to users, roles or permissions.
const AUTH_OLD_REVISION: &str = "revision of auth store is old";

/// Whether a call refused with `s` should be sent again once with a fresh
/// authentication token, as etcd's Go client does: the token is invalid or
/// expired (`Unauthenticated`, "invalid auth token"), predates a change to
/// the auth store ("revision of auth store is old"), or the server saw no
/// user in it ("user name is empty"). Only asked when the client has
/// credentials. Each of these is refused before anything is applied, so a
/// commit is safe to send again.
pub(crate) fn needs_new_token(s: &tonic::Status) -> bool {
    let msg = s.message();
    s.code() == tonic::Code::Unauthenticated
        || msg.contains("invalid auth token")
        || (s.code() == tonic::Code::InvalidArgument
            && (msg.contains(AUTH_OLD_REVISION) || msg.contains("user name is empty")))
}

/// The one place where etcd client errors become eskv errors.
///
/// Besides timeouts and lost connections (`Unavailable`, or
/// `CommitOutcomeUnknown` for a commit):
/// - a full database (etcd's NOSPACE alarm at `--quota-backend-bytes`) is
///   [`KvError::StorageFull`], not retryable, saying how to free space; for
///   a commit with `outcome_unknown` (etcd may have applied the `Txn` before
///   it checked the quota and answered NOSPACE);
/// - a request over the server's size or operation limits, whether etcd
///   ("request is too large", "too many operations") or gRPC ("received
///   message larger than max") refuses it, is [`KvError::InvalidInput`]
///   pointing at [`EtcdOptions::server_limits`](crate::EtcdOptions::server_limits);
/// - a token older than the auth store, still refused after the client
///   fetched a new one, is a retryable `Unavailable`.
pub(crate) fn map_err(e: ClientError, phase: Phase, endpoints: &str) -> KvError {
    use tonic::Code;
    use ClientError as E;
    let unavailable = |what: String| KvError::Unavailable {
        backend: BACKEND,
        message: format!("etcd at {endpoints}: {what}"),
    };
    let unknown = |what: String| KvError::CommitOutcomeUnknown {
        backend: BACKEND,
        message: format!("etcd at {endpoints}: {what}"),
    };
    let too_large = |msg: &str| {
        KvError::invalid(format!(
            "etcd rejected the request as too large ({msg}); set EtcdOptions::server_limits \
             to the server's --max-txn-ops and --max-request-bytes"
        ))
    };
    if phase == Phase::Commit && never_sent(&e) {
        // Nothing reached the server: a plain, retryable unavailability.
        return unavailable(format!("the commit was not sent: {e}"));
    }
    match e {
        E::Status(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::OutOfRange if msg.contains("compacted") => KvError::conflict(format!(
                    "the transaction's snapshot revision was compacted away ({msg}); \
                     retry with a fresh transaction, and compact less eagerly if this repeats"
                )),
                Code::InvalidArgument
                    if msg.contains("too many operations") || msg.contains("too large") =>
                {
                    too_large(&msg)
                }
                // Over the gRPC receive limit: refused before etcd sees it.
                Code::ResourceExhausted if msg.contains(LARGER_THAN_MAX) => too_large(&msg),
                // etcd refuses a write over the quota before proposing it,
                // or at apply once the alarm is raised (nothing written);
                // but the apply-time quota check applies the Txn first and
                // answers NOSPACE after. So a refused commit may have been
                // applied; a refused read changed nothing.
                Code::ResourceExhausted if msg.contains(NO_SPACE) => KvError::storage_full(
                    BACKEND,
                    format!("the etcd cluster at {endpoints}"),
                    format!(
                        "{msg}: the database reached --quota-backend-bytes and etcd raised its \
                         NOSPACE alarm, so it refuses writes until an operator acts. Compact old \
                         revisions (etcdctl compact, or --auto-compaction-mode and \
                         --auto-compaction-retention) and defragment every member (etcdctl \
                         defrag), or raise --quota-backend-bytes on every member; then disarm the \
                         alarm (etcdctl alarm disarm)"
                    ),
                    phase == Phase::Commit,
                ),
                Code::InvalidArgument if msg.contains(AUTH_OLD_REVISION) => unavailable(format!(
                    "the users, roles or permissions changed while this request was under way \
                     ({msg}); retry"
                )),
                Code::Unauthenticated | Code::PermissionDenied => KvError::invalid(format!(
                    "etcd refused the request for this user ({msg}); check EtcdOptions user, \
                     password and the user's roles"
                )),
                Code::InvalidArgument if msg.contains("authentication failed") => {
                    KvError::invalid(format!(
                        "etcd refused the credentials ({msg}); check EtcdOptions user and password"
                    ))
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                    if phase == Phase::Commit =>
                {
                    unknown(format!("the commit got no definite answer: {s}"))
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted => unavailable(s.to_string()),
                Code::OutOfRange if msg.contains("future revision") => unavailable(s.to_string()),
                _ => KvError::backend(BACKEND, E::Status(s)),
            }
        }
        E::Transport(t) if phase == Phase::Commit => {
            unknown(format!("connection failed during commit: {t}"))
        }
        E::Transport(t) => unavailable(t.to_string()),
        E::InvalidOptions(m) => KvError::invalid(format!("etcd options: {m}")),
    }
}

/// True when the request never left this process: the TCP connection to
/// the endpoint the client picked was refused. Such a call is safe to send
/// again, even a commit; the client's balancer then picks another endpoint.
fn never_sent(e: &ClientError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Most times one call is sent again after its connection was refused.
const REFUSED_RETRIES: u32 = 6;

/// Runs `call` under `timeout`, sending it again (to whichever endpoint the
/// client picks next) while a node is refusing connections.
pub(crate) async fn timed<T, F, Fut>(
    what: &str,
    phase: Phase,
    timeout: Duration,
    endpoints: &str,
    mut call: F,
) -> KvResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if attempt < REFUSED_RETRIES && never_sent(&e) => {
                attempt += 1;
                let pause = Duration::from_millis(5 << attempt);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(map_err(e, phase, endpoints));
                }
                tracing::debug!(attempt, error = %e, "etcd endpoint refused the connection; retrying");
                tokio::time::sleep(pause).await;
            }
            Ok(Err(e)) => return Err(map_err(e, phase, endpoints)),
            Err(_) => return Err(timeout_error(BACKEND, what, phase, timeout, endpoints)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientError as E;

    const EP: &str = "127.0.0.1:2379";

    fn status(code: tonic::Code, msg: &str) -> E {
        E::Status(tonic::Status::new(code, msg))
    }

    #[test]
    fn compacted_reads_are_retryable_conflicts() {
        let e = map_err(
            status(
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            Phase::Read,
            EP,
        );
        assert!(matches!(&e, KvError::Conflict { message } if message.contains("compacted")));
        assert!(e.is_retryable());
    }

    #[test]
    fn lost_commit_answers_are_unknown_outcomes() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Unknown,
        ] {
            let e = map_err(
                status(code, "etcdserver: request timed out"),
                Phase::Commit,
                EP,
            );
            assert!(
                matches!(
                    e,
                    KvError::CommitOutcomeUnknown {
                        backend: "etcd",
                        ..
                    }
                ),
                "{code:?}: {e:?}"
            );
            let e = map_err(
                status(code, "etcdserver: request timed out"),
                Phase::Read,
                EP,
            );
            assert!(matches!(e, KvError::Unavailable { .. }), "{code:?}: {e:?}");
        }
        let io = || {
            E::Status(tonic::Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "gone",
            ))))
        };
        assert!(matches!(
            map_err(io(), Phase::Commit, EP),
            KvError::CommitOutcomeUnknown { .. }
        ));
        assert!(matches!(
            map_err(io(), Phase::Read, EP),
            KvError::Unavailable { .. }
        ));
        assert!(matches!(
            timeout_error(
                BACKEND,
                "a commit",
                Phase::Commit,
                Duration::from_secs(1),
                EP
            ),
            KvError::CommitOutcomeUnknown { .. }
        ));
    }

    #[test]
    fn refused_connections_were_never_sent_so_commits_are_not_ambiguous() {
        let refused = || {
            E::Status(tonic::Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))))
        };
        assert!(never_sent(&refused()));
        let e = map_err(refused(), Phase::Commit, EP);
        assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
        let reset = E::Status(tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))));
        assert!(!never_sent(&reset));
        let e = map_err(reset, Phase::Commit, EP);
        assert!(matches!(e, KvError::CommitOutcomeUnknown { .. }), "{e:?}");
    }

    #[test]
    fn oversized_requests_and_bad_options_are_invalid_input() {
        let e = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            Phase::Commit,
            EP,
        );
        assert!(
            matches!(&e, KvError::InvalidInput { message } if message.contains("server_limits"))
        );
        assert!(matches!(
            map_err(
                E::InvalidOptions("empty endpoints".into()),
                Phase::Connect,
                EP
            ),
            KvError::InvalidInput { .. }
        ));
    }

    #[test]
    fn a_full_database_is_storage_full_and_not_retryable() {
        for (phase, unknown) in [(Phase::Read, false), (Phase::Commit, true)] {
            let e = map_err(
                status(
                    tonic::Code::ResourceExhausted,
                    "etcdserver: mvcc: database space exceeded",
                ),
                phase,
                EP,
            );
            match &e {
                KvError::StorageFull {
                    backend: "etcd",
                    path,
                    message,
                    outcome_unknown,
                } => {
                    assert_eq!(*outcome_unknown, unknown, "{phase:?}");
                    assert!(path.contains(EP), "{path}");
                    for advice in ["--quota-backend-bytes", "compact", "defrag", "alarm disarm"] {
                        assert!(message.contains(advice), "{advice}: {message}");
                    }
                }
                other => panic!("{phase:?}: expected StorageFull, got {other:?}"),
            }
            assert!(!e.is_retryable());
        }
        // etcd's other ResourceExhausted: a busy server, worth a retry.
        let e = map_err(
            status(
                tonic::Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            Phase::Commit,
            EP,
        );
        assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
    }

    #[test]
    fn requests_over_the_grpc_limit_are_invalid_input_like_etcds_own() {
        let advice = |e: &KvError| match e {
            KvError::InvalidInput { message } => {
                assert!(message.contains("server_limits"), "{message}");
                message
                    .split_once("); ")
                    .map(|(_, advice)| advice.to_string())
                    .unwrap()
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        let etcd = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            Phase::Commit,
            EP,
        );
        let grpc = map_err(
            status(
                tonic::Code::ResourceExhausted,
                "grpc: received message larger than max (3146000 vs. 2097152)",
            ),
            Phase::Commit,
            EP,
        );
        assert_eq!(advice(&etcd), advice(&grpc));
        assert!(!grpc.is_retryable());
    }

    #[test]
    fn stale_tokens_are_refreshed() {
        for (code, msg) in [
            (
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
        ] {
            assert!(
                needs_new_token(&tonic::Status::new(code, msg)),
                "{code:?} {msg}"
            );
        }
        for (code, msg) in [
            (
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
        ] {
            assert!(
                !needs_new_token(&tonic::Status::new(code, msg)),
                "{code:?} {msg}"
            );
        }
        // Still refused after a fresh token: the auth store changed again
        // meanwhile; nothing was applied, so a retry is safe.
        let e = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            Phase::Commit,
            EP,
        );
        assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
    }

    #[test]
    fn the_rest_is_a_backend_error_except_at_connect() {
        let e = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            Phase::Connect,
            EP,
        );
        assert!(matches!(e, KvError::InvalidInput { .. }), "{e:?}");
        let e = map_err(status(tonic::Code::PermissionDenied, "no"), Phase::Read, EP);
        assert!(matches!(e, KvError::InvalidInput { .. }), "{e:?}");
        let e = map_err(status(tonic::Code::DataLoss, "no"), Phase::Read, EP);
        assert!(
            matches!(
                e,
                KvError::Backend {
                    backend: "etcd",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = map_err(status(tonic::Code::Unavailable, "down"), Phase::Connect, EP);
        assert!(matches!(&e, KvError::Unavailable { message, .. } if message.contains(EP)));
    }
}
