//! Connection settings and the server limits they declare.
use crate::{BACKEND, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS};
use eskv_core::kv::remote::RemoteOptions;
use eskv_core::Capabilities;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Connection settings for [`EtcdStore::connect`](crate::EtcdStore::connect):
/// what every cluster connection takes ([`RemoteOptions`]: endpoints, TLS,
/// timeouts, key prefix), plus etcd's authentication and server limits.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Client endpoints, `host:port` (or `http://`/`https://` URLs): the
    /// client balances over all of them and fails over when one is down.
    /// TLS: a CA alone, or with a client certificate and key (mutual TLS).
    /// Timeouts default to 5 s (connect) and 10 s (per call).
    pub remote: RemoteOptions,
    /// User name for etcd authentication.
    pub user: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
    /// The server's `--max-txn-ops`. Default: 128.
    pub max_txn_ops: usize,
    /// The server's `--max-request-bytes`. Default: 1.5 MiB.
    pub max_request_bytes: usize,
}

/// Shows the password as `***`.
impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("remote", &self.remote)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for `endpoints` with etcd's default limits, default
    /// timeouts, no TLS, no auth and no key prefix.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdOptions {
            remote: RemoteOptions::new(endpoints, Duration::from_secs(5), Duration::from_secs(10)),
            user: None,
            password: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Options from a comma-separated endpoint list such as
    /// `ETCD_ENDPOINTS`. Blank entries are ignored.
    pub fn from_endpoints(list: &str) -> Self {
        Self::new(RemoteOptions::split_endpoints(list))
    }

    /// Authenticates as `user`.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Enables TLS, trusting `ca`.
    pub fn tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.remote.tls.ca = Some(ca.into());
        self
    }

    /// Presents a client certificate (mutual TLS).
    pub fn tls_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.remote.tls.cert = Some(cert.into());
        self.remote.tls.key = Some(key.into());
        self
    }

    eskv_core::remote_option_setters!();

    /// Declares the server's `--max-txn-ops` and `--max-request-bytes`.
    pub fn server_limits(mut self, max_txn_ops: usize, max_request_bytes: usize) -> Self {
        self.max_txn_ops = max_txn_ops;
        self.max_request_bytes = max_request_bytes;
        self
    }

    /// The capabilities a store with these options declares.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::unlimited(BACKEND)
            // Leave room in the request for keys, compares and framing:
            // 1 MiB values and 1.3 MiB per transaction at etcd's defaults.
            .with_max_value_size(self.max_request_bytes / 3 * 2)
            .with_max_txn_bytes(self.max_request_bytes / 8 * 7)
            // Written keys plus validated keys: etcd checks compares and
            // puts separately, so this is conservative.
            .with_max_ops_per_txn(self.max_txn_ops)
            // etcd answers a descending range by loading and sorting all of
            // it, whatever the limit.
            .with_cheap_reverse_scans(false)
        // A commit compares every written key's revision at the pin,
        // read first for the keys the transaction did not read.
    }

    pub(crate) fn endpoint_list(&self) -> String {
        self.remote.endpoint_list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_server_limits() {
        let c = EtcdOptions::new(["127.0.0.1:2379"]).capabilities();
        assert_eq!(c.max_ops_per_txn, Some(128));
        assert!(
            !c.cheap_reverse_scans,
            "etcd sorts a whole range to read it backwards"
        );
        let v = c.max_value_size.unwrap();
        assert!((1 << 20..DEFAULT_MAX_REQUEST_BYTES).contains(&v), "{v}");
        assert!(c.max_txn_bytes.unwrap() < DEFAULT_MAX_REQUEST_BYTES);
        let c = EtcdOptions::new(["127.0.0.1:2379"])
            .server_limits(1024, 10 << 20)
            .capabilities();
        assert_eq!(c.max_ops_per_txn, Some(1024));
        assert!(c.max_value_size.unwrap() > 6 << 20);
    }

    #[test]
    fn debug_hides_the_password() {
        let o = EtcdOptions::new(["127.0.0.1:2379"]).auth("root", "s3cret");
        let shown = format!("{o:?}");
        assert!(
            shown.contains("root") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
