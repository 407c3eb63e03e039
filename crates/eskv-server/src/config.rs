//! What a server needs to know: where to listen, TLS, who may connect (and
//! which tenant each credential belongs to), and the limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Server configuration. [`ServerConfig::new`] listens on
/// `127.0.0.1:50051` without TLS and without authentication.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS certificate and key; `None` serves plain HTTP/2.
    pub tls: Option<TlsConfig>,
    /// Accepted credentials. Empty: no authentication, every request uses
    /// the whole store.
    pub credentials: Vec<Credential>,
    /// Limits per request and per connection.
    pub limits: ServerLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: None,
            credentials: Vec::new(),
            limits: ServerLimits::default(),
        }
    }
}

impl ServerConfig {
    /// Listens on `listen`, with the defaults otherwise.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            ..Self::default()
        }
    }

    /// Serves TLS with this certificate chain and private key (PEM files).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Accepts `credential` (and, once any credential is configured,
    /// rejects requests without a valid one).
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Certificate chain and private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsConfig {
    /// Reads both files and checks that they hold a certificate chain and
    /// a private key that belongs to its first certificate, with an error
    /// that names the file and what is wrong. [`Server::bind`] does this
    /// before it listens; call it earlier to refuse a bad configuration
    /// before anything else happens.
    ///
    /// [`Server::bind`]: crate::Server::bind
    pub fn check(&self) -> Result<(), crate::ServerError> {
        self.load().map(|_| ())
    }

    /// The checked PEM bytes of the certificate chain and the key.
    pub(crate) fn load(&self) -> Result<(Vec<u8>, Vec<u8>), crate::ServerError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = |m: String| crate::ServerError::Tls(m);
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| tls(format!("cannot read {}: {e}", p.display())))
        };
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                tls(format!(
                    "{} is not a PEM certificate chain: {e}",
                    self.cert.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(tls(format!(
                "{} holds no certificate (expected PEM blocks '-----BEGIN CERTIFICATE-----', leaf first)",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            tls(format!(
                "{} holds no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}",
                self.key.display()
            ))
        })?;
        // The provider tonic will use: the process's, else ring (which
        // Server::serve_until installs when none is).
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| {
                tls(format!(
                    "the key {} does not go with the certificate {}: {e}",
                    self.key.display(),
                    self.cert.display()
                ))
            })?;
        Ok((cert_pem, key_pem))
    }
}

/// One accepted credential, and the tenant it opens.
///
/// UmaDB clients send an API key as `authorization: Bearer KEY`;
/// KurrentDB clients send `authorization: Basic base64(user:password)`.
/// Either kind is accepted on both protocols.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token (UmaDB's API key).
    Token {
        /// The token.
        token: String,
        /// The tenant's namespace; `None` is the whole store.
        tenant: Option<String>,
    },
    /// A user name and password (HTTP basic authentication).
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// The tenant's namespace; `None` is the whole store.
        tenant: Option<String>,
    },
}

impl std::fmt::Debug for Credential {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token { tenant, .. } => f
                .debug_struct("Token")
                .field("tenant", tenant)
                .finish_non_exhaustive(),
            Credential::Basic { user, tenant, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("tenant", tenant)
                .finish_non_exhaustive(),
        }
    }
}

impl Credential {
    /// A bearer token for `tenant` (`None`: the whole store).
    pub fn token(token: impl Into<String>, tenant: Option<&str>) -> Self {
        Credential::Token {
            token: token.into(),
            tenant: tenant.map(str::to_owned),
        }
    }

    /// A user and password for `tenant` (`None`: the whole store).
    pub fn basic(
        user: impl Into<String>,
        password: impl Into<String>,
        tenant: Option<&str>,
    ) -> Self {
        Credential::Basic {
            user: user.into(),
            password: password.into(),
            tenant: tenant.map(str::to_owned),
        }
    }

    /// The `authorization` header value this credential matches.
    pub(crate) fn header(&self) -> String {
        use base64::Engine as _;
        match self {
            Credential::Token { token, .. } => format!("Bearer {token}"),
            Credential::Basic { user, password, .. } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        }
    }

    pub(crate) fn tenant(&self) -> Option<&str> {
        match self {
            Credential::Token { tenant, .. } | Credential::Basic { tenant, .. } => {
                tenant.as_deref()
            }
        }
    }

    /// Parses one line of an auth file: `token TOKEN [TENANT]` or
    /// `basic USER PASSWORD [TENANT]`. Blank lines and `#` comments give
    /// `Ok(None)`.
    pub fn parse_line(line: &str) -> Result<Option<Self>, String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["token", token] => Ok(Some(Credential::token(*token, None))),
            ["token", token, tenant] => Ok(Some(Credential::token(*token, Some(tenant)))),
            ["basic", user, password] => Ok(Some(Credential::basic(*user, *password, None))),
            ["basic", user, password, tenant] => {
                Ok(Some(Credential::basic(*user, *password, Some(tenant))))
            }
            _ => Err(format!(
                "expected `token TOKEN [TENANT]` or `basic USER PASSWORD [TENANT]`, found {:?}",
                words.first().copied().unwrap_or_default()
            )),
        }
    }
}

/// Limits per request and per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Largest gRPC message accepted or sent, in bytes. Default 4 MiB
    /// (gRPC's usual default). Read results are split to stay below it.
    pub max_message_bytes: usize,
    /// Most subscriptions (UmaDB `Subscribe` and subscribing reads,
    /// KurrentDB catch-up subscriptions) open at once on one connection.
    /// Default 128.
    pub max_subscriptions_per_connection: usize,
    /// Most concurrent HTTP/2 streams (requests) per connection. Default
    /// 1024.
    pub max_concurrent_streams: u32,
    /// Messages a subscription or read may have queued for a client
    /// before it stops reading the store and waits (back-pressure).
    /// Default 16.
    pub stream_buffer: usize,
    /// Most events in one read response message. Default 1000.
    pub max_batch: u32,
    /// How long shutdown waits for connections to finish their requests
    /// before it closes them. Clients that keep reading see their calls end
    /// (subscriptions and BatchAppend with `UNAVAILABLE`) well before; this
    /// bounds shutdown for clients that stopped reading. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: 4 << 20,
            max_subscriptions_per_connection: 128,
            max_concurrent_streams: 1024,
            stream_buffer: 16,
            max_batch: 1000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl ServerLimits {
    /// Sets the largest message.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n.max(64 << 10);
        self
    }

    /// Sets the subscriptions allowed per connection.
    pub fn max_subscriptions_per_connection(mut self, n: usize) -> Self {
        self.max_subscriptions_per_connection = n;
        self
    }

    /// Sets the concurrent requests allowed per connection.
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = n.max(1);
        self
    }

    /// Sets the queue length per subscription.
    pub fn stream_buffer(mut self, n: usize) -> Self {
        self.stream_buffer = n.max(1);
        self
    }

    /// Sets how long shutdown waits for open connections before closing
    /// them.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// The `authorization` header values accepted, and the tenant each opens.
pub(crate) fn credential_table(creds: &[Credential]) -> HashMap<String, Option<String>> {
    creds
        .iter()
        .map(|c| (c.header(), c.tenant().map(str::to_owned)))
        .collect()
}
