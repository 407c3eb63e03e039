//! Connection settings.

use eskv_core::kv::remote::{RemoteOptions, TlsFiles};
use std::path::PathBuf;
use std::time::Duration;

/// Connection settings for [`TikvStore::connect`](crate::TikvStore::connect):
/// what every cluster connection takes ([`RemoteOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TikvOptions {
    /// PD endpoints, `host:port`: the client finds the PD leader through
    /// any of them. TLS needs all three files. Timeouts default to 10 s
    /// (connecting to PD) and 20 s (per call).
    pub remote: RemoteOptions,
}

impl TikvOptions {
    /// Options for the PD endpoints `pd_endpoints`, with default timeouts,
    /// no TLS and no key prefix.
    pub fn new<S: Into<String>>(pd_endpoints: impl IntoIterator<Item = S>) -> Self {
        TikvOptions {
            remote: RemoteOptions::new(
                pd_endpoints,
                Duration::from_secs(10),
                Duration::from_secs(20),
            ),
        }
    }

    /// Options from a comma-separated endpoint list such as the `PD_ADDRS`
    /// environment variable (`host:port,host:port`). Blank entries are
    /// ignored.
    pub fn from_addrs(addrs: &str) -> Self {
        Self::new(RemoteOptions::split_endpoints(addrs))
    }

    /// Enables TLS with a CA certificate, a client certificate and its key.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.remote.tls = TlsFiles {
            ca: Some(ca.into()),
            cert: Some(cert.into()),
            key: Some(key.into()),
        };
        self
    }

    eskv_core::remote_option_setters!();

    pub(crate) fn endpoints(&self) -> String {
        self.remote.endpoint_list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_pd_addrs() {
        let o = TikvOptions::from_addrs(" 10.0.0.1:2379,10.0.0.2:2379 ");
        assert_eq!(o.remote.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(o.endpoints(), "10.0.0.1:2379,10.0.0.2:2379");
    }
}
