//! Connection settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Connection settings for [`TikvStore::connect`](crate::TikvStore::connect).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TikvOptions {
    /// PD endpoints, `host:port`. Several may be given; the client finds the
    /// PD leader through any of them.
    pub pd_endpoints: Vec<String>,
    /// CA certificate (PEM) for TLS. TLS needs all three files.
    pub ca_path: Option<PathBuf>,
    /// Client certificate (PEM) for TLS.
    pub cert_path: Option<PathBuf>,
    /// Client key (PEM) for TLS.
    pub key_path: Option<PathBuf>,
    /// Longest wait for the connection to PD. Default: 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for any one call (a read, a begin, a commit). Default:
    /// 20 s.
    pub request_timeout: Duration,
    /// Scope every key under this namespace (see [`Namespaced`](eskv_core::Namespaced)), so several
    /// applications or tenants can share one cluster.
    pub key_prefix: Option<String>,
}

impl fmt::Debug for TikvOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TikvOptions")
            .field("pd_endpoints", &self.pd_endpoints)
            .field("tls", &self.ca_path.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl TikvOptions {
    /// Options for the PD endpoints `pd_endpoints`, with default timeouts,
    /// no TLS and no key prefix.
    pub fn new<S: Into<String>>(pd_endpoints: impl IntoIterator<Item = S>) -> Self {
        TikvOptions {
            pd_endpoints: pd_endpoints.into_iter().map(Into::into).collect(),
            ca_path: None,
            cert_path: None,
            key_path: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            key_prefix: None,
        }
    }

    /// Options from a comma-separated endpoint list such as the `PD_ADDRS`
    /// environment variable (`host:port,host:port`). Blank entries are
    /// ignored.
    pub fn from_addrs(addrs: &str) -> Self {
        Self::new(
            addrs
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        )
    }

    /// Enables TLS with a CA certificate, a client certificate and its key.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.ca_path = Some(ca.into());
        self.cert_path = Some(cert.into());
        self.key_path = Some(key.into());
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets the per-call timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Scopes the store to a namespace.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    pub(crate) fn endpoints(&self) -> String {
        self.pd_endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_pd_addrs() {
        let o = TikvOptions::from_addrs(" 10.0.0.1:2379,10.0.0.2:2379 ");
        assert_eq!(o.pd_endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(o.endpoints(), "10.0.0.1:2379,10.0.0.2:2379");
    }
}
