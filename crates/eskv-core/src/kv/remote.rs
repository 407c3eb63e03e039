//! What the networked backends (etcd, TiKV) share: the phase a call failed
//! in, which decides how a lost connection is reported; deadlines; and the
//! namespace chosen at connect.
//!
//! Invariant: a failure while committing never reads as "nothing happened".
//! A lost answer during [`Phase::Commit`] is
//! [`KvError::CommitOutcomeUnknown`]; in any other phase nothing was written,
//! and it is [`KvError::Unavailable`].

use super::{KvStore, Namespaced};
use crate::kv::{KvError, KvResult};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Where a call to a cluster failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and probing: every network failure means "unreachable".
    Connect,
    /// Beginning a transaction or reading: nothing was written.
    Read,
    /// Committing: a lost answer leaves the outcome unknown.
    Commit,
}

impl Phase {
    /// The error for a connection lost or a call unanswered in this phase.
    pub fn lost(self, backend: &'static str, message: String) -> KvError {
        match self {
            Phase::Commit => KvError::CommitOutcomeUnknown { backend, message },
            Phase::Connect | Phase::Read => KvError::Unavailable { backend, message },
        }
    }
}

/// The error for `what` (for example "a commit") that got no answer within
/// `timeout` from `cluster` (the endpoints, as the user gave them).
pub fn timeout_error(
    backend: &'static str,
    what: &str,
    phase: Phase,
    timeout: Duration,
    cluster: &str,
) -> KvError {
    phase.lost(
        backend,
        format!(
            "{what} got no answer within {timeout:?} from the {backend} cluster at {cluster}; \
             check that it is running, reachable and has a leader"
        ),
    )
}

/// Runs `call` under `timeout`, with the timeout reported by
/// [`timeout_error`]. Errors of `call` itself are already eskv errors.
pub async fn with_deadline<T>(
    backend: &'static str,
    what: &str,
    phase: Phase,
    timeout: Duration,
    cluster: &str,
    call: impl Future<Output = KvResult<T>>,
) -> KvResult<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error(backend, what, phase, timeout, cluster)),
    }
}

/// A cluster's store as the application sees it: the whole keyspace, or
/// one namespace of it (a [`Namespaced`] view) when a key prefix was
/// configured at connect.
#[derive(Clone)]
pub struct ClusterView {
    view: Arc<dyn KvStore>,
    namespace: Option<Namespaced>,
}

impl ClusterView {
    /// `raw` scoped to `key_prefix`, if one is given.
    pub fn new(raw: Arc<dyn KvStore>, key_prefix: Option<&str>) -> Self {
        match key_prefix {
            Some(p) => {
                let ns = Namespaced::new(raw, p);
                ClusterView {
                    view: Arc::new(ns.clone()),
                    namespace: Some(ns),
                }
            }
            None => ClusterView {
                view: raw,
                namespace: None,
            },
        }
    }

    /// The store to run transactions on.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.view
    }

    /// The raw key prefix of the namespace, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        self.namespace.as_ref().map(Namespaced::prefix)
    }

    /// The namespace, or the error that refuses to clear a whole cluster.
    pub fn namespace_to_clear(&self) -> KvResult<&Namespaced> {
        self.namespace.as_ref().ok_or_else(|| {
            KvError::invalid(
                "clearing needs a key prefix (a namespace); refusing to delete every key of the cluster",
            )
        })
    }
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("backend", &self.view.capabilities().backend)
            .field("prefix", &self.prefix())
            .finish()
    }
}
