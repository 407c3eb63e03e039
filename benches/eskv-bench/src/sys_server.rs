//! The DCB servers, each driven by the official `umadb-client` over gRPC
//! on 127.0.0.1 with the same client code: UmaDB's own server
//! (`umadb-server`, started by [`crate::sys_uma::UmaServer`]) and eskv
//! served by the `eskv-server` crate ([`EskvServer`], eskv on a fresh redb
//! file or fjall directory with the backend's durable defaults). Each server runs in this
//! process on its own thread and 2-worker runtime, so the clients' runtime
//! is the bench's.
//!
//! W1: one client appends one event per call, each under a condition on
//! its own tag ([`ServedStore`]). W3: `writers` clients, one connection
//! each, do the same concurrently ([`concurrent`]).

use crate::common::{err, Ev, Res, Store, EVENT_TYPE};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use umadb_client::AsyncUmaDbClient;
use umadb_dcb::{DcbAppendCondition, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem};

pub fn dcb_event(ev: &Ev) -> DcbEvent {
    DcbEvent::new()
        .event_type(EVENT_TYPE)
        .data(ev.data.to_vec())
        .tags(ev.tags.iter().cloned())
        .uuid(uuid::Uuid::from_u128(ev.id))
}

pub fn tag_query(tag: &str) -> DcbQuery {
    DcbQuery::new().item(DcbQueryItem::new().tags([tag]))
}

/// Connects a client, retrying while the server starts.
pub async fn connect(url: &str) -> Res<AsyncUmaDbClient> {
    let mut last = String::new();
    for _ in 0..100 {
        match AsyncUmaDbClient::connect_with_tls_options(url.to_string(), None, None, None).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("umadb client cannot connect to {url}: {last}"))
}

/// One conditional append of `ev` under a condition on its first tag.
async fn append_cond(client: &AsyncUmaDbClient, ev: &Ev, cond_tag: &str) -> Res<u64> {
    let cond = DcbAppendCondition::new(tag_query(cond_tag));
    client
        .append(vec![dcb_event(ev)], Some(cond), None)
        .await
        .map_err(err("server append"))
}

/// W3 against the server at `url`: `writers` clients, each with its own
/// connection, append concurrently for `budget`, each event under a
/// condition on its own tag. Returns (appends, elapsed).
pub fn concurrent(
    rt: &Handle,
    url: &str,
    writers: usize,
    budget: Duration,
    data: &Arc<[u8]>,
) -> Res<(u64, Duration)> {
    let url = url.to_string();
    let data = data.clone();
    rt.block_on(async move {
        let mut clients = Vec::with_capacity(writers);
        for _ in 0..writers {
            clients.push(connect(&url).await?);
        }
        let start = Instant::now();
        let deadline = start + budget;
        let mut tasks = tokio::task::JoinSet::new();
        for (w, client) in clients.into_iter().enumerate() {
            let data = data.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while n == 0 || Instant::now() < deadline {
                    let ev = Ev::writer(w, &data);
                    append_cond(&client, &ev, &ev.tags[0]).await?;
                    n += 1;
                }
                Ok::<u64, String>(n)
            });
        }
        let mut total = 0;
        while let Some(r) = tasks.join_next().await {
            total += r.map_err(err("server client task"))??;
        }
        Ok((total, start.elapsed()))
    })
}

/// A server reached through one `umadb-client` connection: the W1 side of
/// a served system. Owns the server, which stops when this is dropped.
pub struct ServedStore {
    rt: Handle,
    client: AsyncUmaDbClient,
    /// Dropped after the client: stops the server.
    _server: Box<dyn std::any::Any>,
}

impl ServedStore {
    pub fn new(rt: &Handle, url: &str, server: Box<dyn std::any::Any>) -> Res<ServedStore> {
        let client = rt.block_on(connect(url))?;
        Ok(ServedStore {
            rt: rt.clone(),
            client,
            _server: server,
        })
    }
}

const W1_ONLY: &str = "the served systems run W1 and W3 only";

impl Store for ServedStore {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        self.rt
            .block_on(append_cond(&self.client, ev, cond_tag))
            .map(|_| ())
    }

    fn append_stream(&mut self, _: &Ev, _: &str, _: u64, _: u64) -> Res<u64> {
        Err(W1_ONLY.into())
    }

    fn append_batch(&mut self, _: &[Ev]) -> Res<()> {
        Err(W1_ONLY.into())
    }

    fn load(&mut self, _: &[Ev]) -> Res<()> {
        Err(W1_ONLY.into())
    }

    fn read_tag(&mut self, _: &str) -> Res<usize> {
        Err(W1_ONLY.into())
    }

    fn read_all(&mut self) -> Res<usize> {
        Err(W1_ONLY.into())
    }

    fn read_stream(&mut self, _: &str) -> Res<usize> {
        Err(W1_ONLY.into())
    }
}

/// eskv served by `eskv-server` (the UmaDB protocol among others) on a
/// free port of 127.0.0.1, over eskv on a fresh store of the given backend
/// with its defaults (durable: fsync before a commit returns).
pub struct EskvServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Res<()>>>,
}

/// The backend under a served store.
#[derive(Debug, Clone, Copy)]
pub enum Served {
    /// A redb file (`eskv serve --store redb:…`).
    Redb,
    /// A fjall directory (`eskv serve --store fjall:…`), the README's
    /// recommended embedded backend for a store that takes writes.
    Fjall,
}

impl Served {
    /// The file or directory name of a fresh store of this backend.
    pub fn store_name(self) -> &'static str {
        match self {
            Served::Redb => "eskv.redb",
            Served::Fjall => "eskv.fjall",
        }
    }
}

impl EskvServer {
    /// Starts the server with a fresh store of `backend` in `dir`.
    pub fn start(dir: &Path, backend: Served) -> Res<EskvServer> {
        let path = dir.join(backend.store_name());
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Res<std::net::SocketAddr>>();
        let thread = std::thread::Builder::new()
            .name("eskv-server".into())
            .spawn(move || -> Res<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(err("server runtime"))?;
                rt.block_on(async move {
                    let bound = async {
                        let kv: Arc<dyn eskv::KvStore> = match backend {
                            Served::Redb => Arc::new(
                                eskv::redb::RedbStore::open_with(
                                    path,
                                    eskv::redb::RedbOptions::default(),
                                )
                                .await
                                .map_err(err("open eskv-redb"))?,
                            ),
                            Served::Fjall => Arc::new(
                                eskv::fjall::FjallStore::open(path)
                                    .await
                                    .map_err(err("open eskv-fjall"))?,
                            ),
                        };
                        let store = eskv::EventStore::open(kv).await.map_err(err("open eskv"))?;
                        let config = eskv_server::ServerConfig::new(
                            "127.0.0.1:0".parse().expect("a socket address"),
                        );
                        eskv_server::Server::bind(store, config)
                            .await
                            .map_err(err("eskv server bind"))
                    }
                    .await;
                    let server = match bound {
                        Ok(s) => {
                            let _ = addr_tx.send(Ok(s.local_addr()));
                            s
                        }
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    server
                        .serve_until(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .map_err(err("eskv server"))
                })
            })
            .map_err(err("server thread"))?;
        let addr = addr_rx
            .recv()
            .map_err(|_| "the eskv server thread ended before binding".to_string())??;
        Ok(EskvServer {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stop(mut self) -> Res<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Res<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "eskv server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for EskvServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
