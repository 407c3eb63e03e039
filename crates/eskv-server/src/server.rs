//! Binding, serving, and graceful shutdown.

use crate::config::ServerConfig;
use crate::context::Shared;
use crate::dcb::DcbService;
use crate::error::ServerError;
use crate::proto::umadb::v1::dcb_server::DcbServer;
use eskv_core::EventStore;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Identity, ServerTlsConfig};

/// An eskv store served over gRPC: UmaDB's `umadb.v1.DCB`, KurrentDB's
/// streams, server-features and gossip services, and gRPC health
/// (`grpc.health.v1.Health`).
#[derive(Debug)]
pub struct Server {
    store: EventStore,
    config: ServerConfig,
    listener: TcpListener,
    /// The checked certificate chain and key (PEM), with TLS.
    tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port; see
    /// [`local_addr`](Self::local_addr)). The store stays open for as long
    /// as the server runs, and is closed when it returns, unless the
    /// caller keeps a handle.
    /// With TLS, the certificate and key are read and checked first
    /// ([`TlsConfig::check`](crate::TlsConfig::check)): a bad one is
    /// [`ServerError::Tls`] and nothing listens.
    pub async fn bind(store: EventStore, config: ServerConfig) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Server {
            store,
            config,
            listener,
            tls,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: new
    /// appends are refused (`UNAVAILABLE`, nothing written), live
    /// subscriptions and open `BatchAppend` calls end with `UNAVAILABLE`
    /// (a `BatchAppend` after answering the appends it started), health
    /// turns `NOT_SERVING`, and the call returns once the requests in
    /// flight (appends included) have finished. Connections still open
    /// [`ServerLimits::shutdown_grace`](crate::ServerLimits::shutdown_grace)
    /// after shutdown began (clients that stopped reading) are closed.
    pub async fn serve_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let addr = self.local_addr();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(self.store, &self.config, stop_rx));
        let limits = &self.config.limits;
        let max = limits.max_message_bytes;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<DcbServer<DcbService>>().await;
        crate::kurrent::set_serving(&health).await;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams);
        if let (Some(tls), Some((cert, key))) = (&self.config.tls, &self.tls) {
            // tonic's TLS uses rustls' process-wide crypto provider; when
            // the application has not installed one (and its dependencies
            // enable more than one), use ring. An installed one is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let identity = Identity::from_pem(cert, key);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| {
                    ServerError::Tls(format!(
                        "certificate {} or key {}: {e}",
                        tls.cert.display(),
                        tls.key.display()
                    ))
                })?;
        }
        let dcb = DcbServer::new(DcbService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let router = builder.add_service(health_service).add_service(dcb);
        let router = crate::kurrent::add_services(router, &shared);
        tracing::info!(%addr, tls = self.config.tls.is_some(), auth = !self.config.credentials.is_empty(), "eskv server listening");
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new appends, ending subscriptions, finishing requests in flight");
            let _ = stop_tx.send(true);
            health.set_not_serving::<DcbServer<DcbService>>().await;
            crate::kurrent::set_not_serving(&health).await;
            // Keep the sender alive until the transport has drained.
            std::mem::forget(stop_tx);
        };
        // Connections still open `shutdown_grace` after shutdown began are
        // closed under the transport (a client that stopped reading would
        // otherwise keep its streams, and so the server, open for ever).
        let (cut_tx, cut_rx) = watch::channel(false);
        // tonic applies its own `tcp_nodelay` only to listeners it binds:
        // set it on the accepted connections here, or small responses wait
        // on Nagle's algorithm.
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let incoming = incoming.map(move |c| c.map(|io| Cuttable::new(io, cut_rx.clone())));
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        let grace = limits.shutdown_grace;
        let stopping = shared.shutdown.clone();
        let cut = async move {
            crate::context::shutdown_begun(&stopping).await;
            tokio::time::sleep(grace).await;
            tracing::warn!(
                ?grace,
                "shutdown grace ran out: closing the connections still open"
            );
            let _ = cut_tx.send(true);
            // Keep the sender: a dropped one would read as "cut" too.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = serve => r?,
            _ = cut => {}
        }
        tracing::info!("server stopped");
        Ok(())
    }

    /// Serves in a background task; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve_until(async {
            let _ = rx.await;
        }));
        ServerHandle {
            addr,
            stop: Some(tx),
            task,
        }
    }
}

/// A server running in the background ([`Server::spawn`]).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Task(e.to_string())),
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C); on other platforms, on Ctrl-C.
///
/// On Unix the handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives between this call and
/// `serve_until` still stops the server gracefully (so a caller can say
/// "listening" only once a SIGTERM would be honoured). Call it inside a
/// Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// An accepted connection that the server can close under the transport
/// once the shutdown grace runs out: from then on every read and write
/// fails, so the connection's task ends.
struct Cuttable {
    io: tokio::net::TcpStream,
    /// Completes when the connection is to be closed.
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `cut` has completed (it is not polled again).
    is_cut: bool,
}

impl Cuttable {
    fn new(io: tokio::net::TcpStream, cut: watch::Receiver<bool>) -> Self {
        let mut cut = cut;
        Cuttable {
            io,
            cut: Box::pin(async move {
                let _ = cut.wait_for(|c| *c).await;
            }),
            is_cut: false,
        }
    }

    /// Polls the cut (registering the task's waker), and fails once cut.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        if self.is_cut {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server shut down",
            ));
        }
        Ok(())
    }
}

impl Connected for Cuttable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check(cx).is_err() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
