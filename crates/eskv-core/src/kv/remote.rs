//! What the networked backends (etcd, TiKV) share: the connection options
//! every cluster takes ([`RemoteOptions`], [`TlsFiles`]); the phase a call
//! failed in, which decides how a lost connection is reported; deadlines;
//! and the namespace chosen at connect.
//!
//! Invariant: a failure while committing never reads as "nothing happened".
//! A lost answer during [`Phase::Commit`] is
//! [`KvError::CommitOutcomeUnknown`]; in any other phase nothing was written,
//! and it is [`KvError::Unavailable`].

use super::{KvStore, Namespaced};
use crate::kv::{KvError, KvResult};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// PEM files for TLS to a cluster. Which combinations a backend accepts is
/// its own rule (etcd: a CA alone, or with a client certificate and key;
/// TiKV: all three); it checks them at connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate that signed the servers' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate, for mutual TLS; goes with `key`.
    pub cert: Option<PathBuf>,
    /// Client key, for mutual TLS; goes with `cert`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// True when any file is set: the connection is to use TLS.
    pub fn is_enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// What every connection to a cluster is configured with. Each networked
/// backend's options embed it as their `remote` field, next to what only
/// that backend has, and take its setters from
/// [`remote_option_setters!`](crate::remote_option_setters).
///
/// Its `Debug` names the endpoints, timeouts and prefix, and only whether
/// TLS is on.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// The cluster's client endpoints, `host:port`. Several may be given;
    /// the client uses any of them.
    pub endpoints: Vec<String>,
    /// TLS files; none means plain TCP.
    pub tls: TlsFiles,
    /// Longest wait for a connection, and for the probe at connect.
    pub connect_timeout: Duration,
    /// Longest wait for any one call (a read, a begin, a commit).
    pub request_timeout: Duration,
    /// Scope every key under this namespace (see [`Namespaced`]), so
    /// several applications or tenants can share one cluster.
    pub key_prefix: Option<String>,
}

impl RemoteOptions {
    /// Options for `endpoints` with these timeouts, no TLS and no prefix.
    pub fn new<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        RemoteOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: TlsFiles::default(),
            connect_timeout,
            request_timeout,
            key_prefix: None,
        }
    }

    /// The endpoints of a comma-separated list such as an environment
    /// variable's (`host:port,host:port`); blank entries are ignored.
    pub fn split_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// The endpoints joined with commas, for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_enabled())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// The setters of the [`RemoteOptions`] a backend's options embed as their
/// `remote` field: `connect_timeout`, `request_timeout` and `key_prefix`,
/// as inherent builder methods of the backend's own options type. Expand it
/// inside that type's `impl` block.
#[doc(hidden)] // For eskv's networked backends.
#[macro_export]
macro_rules! remote_option_setters {
    () => {
        /// Sets the connect timeout: the longest wait for a connection,
        /// and for the probe at connect.
        pub fn connect_timeout(mut self, t: ::std::time::Duration) -> Self {
            self.remote.connect_timeout = t;
            self
        }

        /// Sets the per-call timeout.
        pub fn request_timeout(mut self, t: ::std::time::Duration) -> Self {
            self.remote.request_timeout = t;
            self
        }

        /// Scopes the store to a namespace (see [`Namespaced`](eskv_core::Namespaced)).
        pub fn key_prefix(
            mut self,
            prefix: impl ::std::convert::Into<::std::string::String>,
        ) -> Self {
            self.remote.key_prefix = ::std::option::Option::Some(prefix.into());
            self
        }
    };
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_split_trim_and_drop_blanks() {
        let o = RemoteOptions::new(
            RemoteOptions::split_endpoints(" a:1, ,b:2,"),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(o.endpoints, ["a:1", "b:2"]);
        assert_eq!(o.endpoint_list(), "a:1,b:2");
        assert!(RemoteOptions::split_endpoints(" , ").is_empty());
    }

    #[test]
    fn tls_is_on_when_any_file_is_set_and_debug_shows_only_that() {
        let mut o = RemoteOptions::new(["a:1"], Duration::from_secs(1), Duration::from_secs(2));
        assert!(!o.tls.is_enabled());
        o.tls.key = Some("/secret/dir/client.key".into());
        assert!(o.tls.is_enabled());
        let shown = format!("{o:?}");
        assert!(
            shown.contains("tls: true") && !shown.contains("client.key"),
            "{shown}"
        );
    }
}
