//! `eskv serve`: one store, any backend, served over gRPC to UmaDB and
//! KurrentDB clients (see the `eskv-server` crate).

use crate::open::{self, Access};
use crate::url::StoreUrl;
use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use eskv_server::{Credential, Server, ServerConfig, ServerLimits, TlsConfig};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `eskv serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is
    /// printed on stdout as `listening on ADDR`).
    #[arg(
        long,
        env = "ESKV_LISTEN",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key, serves TLS only.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Credentials file, one per line: `token TOKEN [TENANT]` (UmaDB API
    /// keys, sent as `Bearer TOKEN`) or `basic USER PASSWORD [TENANT]`
    /// (KurrentDB users). A credential with a TENANT sees only that
    /// tenant's namespace; without, the whole store. `#` starts a comment.
    /// With any credential configured, requests without one are refused.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// A bearer token for the whole store (UmaDB's API key).
    #[arg(
        long,
        env = "ESKV_API_KEY",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Most live subscriptions open at once on one connection.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_subscriptions_per_connection: usize,
    /// Most concurrent requests on one connection.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_concurrent_streams: u32,
    /// Messages queued per subscription before it waits for its client.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub stream_buffer: usize,
    /// Log format on stderr (levels from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How `eskv serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl ServeArgs {
    /// The server configuration these options describe.
    pub fn config(&self) -> Result<ServerConfig> {
        let mut config = ServerConfig::new(self.listen).limits(
            ServerLimits::default()
                .max_message_bytes(self.max_message_bytes)
                .max_subscriptions_per_connection(self.max_subscriptions_per_connection)
                .max_concurrent_streams(self.max_concurrent_streams)
                .stream_buffer(self.stream_buffer),
        );
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.tls(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if let Some(k) = &self.api_key {
            if k.is_empty() {
                return Err(bad("--api-key must not be empty"));
            }
            config = config.credential(Credential::token(k.clone(), None));
        }
        if let Some(path) = &self.auth_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the auth file {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                match Credential::parse_line(line) {
                    Ok(Some(c)) => config = config.credential(c),
                    Ok(None) => {}
                    Err(e) => return Err(bad(format!("{}:{}: {e}", path.display(), i + 1))),
                }
            }
        }
        Ok(config)
    }
}

/// Bad input (exit code 2).
fn bad(message: impl Into<String>) -> anyhow::Error {
    eskv::Error::invalid(message.into()).into()
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens the store at `url` (creating it if needed), serves it until
/// SIGTERM or SIGINT, then shuts down gracefully and closes the store.
pub async fn serve(url: &StoreUrl, args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    // A bad certificate or key is refused before the store is opened (or
    // created) and before anything listens.
    if let Some(tls) = &config.tls {
        tls.check().map_err(|e| bad(e.to_string()))?;
    }
    init_logs(args.log_format);
    let store = open::open(url, Access::Create).await?;
    let server = Server::bind(store, config).await?;
    let addr = server.local_addr();
    // Handlers first: once "listening" is out, SIGTERM stops it cleanly.
    let stop = eskv_server::shutdown_signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    server.serve_until(stop).await?;
    Ok(())
}
