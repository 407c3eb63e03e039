//! UmaDB 0.7, the DCB anchor: embedded through `umadb-core` (its defaults,
//! and with memory-mapped reads plus its page cache), and through its own
//! gRPC server on 127.0.0.1 for the concurrent workload, since only the
//! server batches concurrent appends into one commit.
//!
//! Embedded UmaDB's `append` takes no writer lock and concurrent calls
//! corrupt its file, so every append here goes through a mutex.

use crate::common::{err, stream_tag, Ev, Res, Store, EVENT_TYPE};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use umadb_client::AsyncUmaDbClient;
use umadb_core::db::UmaDb;
use umadb_core::mvcc::{Mvcc, StorageOptions};
use umadb_core::pager::ReadMethod;
use umadb_dcb::{
    DcbAppendCondition, DcbEvent, DcbEventStoreAsync, DcbEventStoreSync, DcbQuery, DcbQueryItem,
};

/// Page cache of the cached variant, in MB.
pub const PAGE_CACHE_MB: usize = 1024;

pub struct Uma {
    db: UmaDb,
    mvcc: Arc<Mvcc>,
    append_lock: Mutex<()>,
}

fn dcb_event(ev: &Ev) -> DcbEvent {
    DcbEvent::new()
        .event_type(EVENT_TYPE)
        .data(ev.data.to_vec())
        .tags(ev.tags.iter().cloned())
        .uuid(uuid::Uuid::from_u128(ev.id))
}

fn tag_query(tag: &str) -> DcbQuery {
    DcbQuery::new().item(DcbQueryItem::new().tags([tag]))
}

impl Uma {
    /// Embedded UmaDB on `path` (a file). `cached`: memory-mapped reads and
    /// a page cache of [`PAGE_CACHE_MB`].
    pub fn open(path: &Path, cached: bool) -> Res<Uma> {
        let mut opts = StorageOptions::default().db_path(path);
        if cached {
            opts = opts
                .read_method(ReadMethod::Mmap)
                .page_cache_max_mb(PAGE_CACHE_MB);
        }
        let mvcc = Arc::new(Mvcc::new(false, opts).map_err(err("umadb open"))?);
        Ok(Uma {
            db: UmaDb::from_arc(mvcc.clone()),
            mvcc,
            append_lock: Mutex::new(()),
        })
    }

    fn append(&self, events: Vec<DcbEvent>, cond: Option<DcbAppendCondition>) -> Res<u64> {
        let _g = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.db
            .append(events, cond, None)
            .map_err(err("umadb append"))
    }

    fn read(&self, query: Option<DcbQuery>) -> Res<usize> {
        self.db
            .read_with_head(query, None, false, None)
            .map(|(events, _)| events.len())
            .map_err(err("umadb read"))
    }
}

impl Store for Uma {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        let cond = DcbAppendCondition::new(tag_query(cond_tag));
        self.append(vec![dcb_event(ev)], Some(cond)).map(|_| ())
    }

    /// A stream is a tag in a DCB store: the expected version becomes "no
    /// event of the stream after the last one I saw".
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, last: u64) -> Res<u64> {
        let after = (expected > 0).then_some(last);
        let cond = DcbAppendCondition::new(tag_query(&stream_tag(stream))).after(after);
        self.append(vec![dcb_event(ev)], Some(cond))
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.append(evs.iter().map(dcb_event).collect(), None)
            .map(|_| ())
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        self.append_batch(evs)
    }

    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        self.read(Some(tag_query(tag)))
    }

    fn read_all(&mut self) -> Res<usize> {
        self.read(None)
    }

    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        self.read(Some(tag_query(&stream_tag(stream))))
    }

    /// UmaDB grows its file in `posix_fallocate`d chunks (256 MiB with the
    /// default page size); the pages below the header's next page id are
    /// the ones it has used (free pages among them included).
    fn used_bytes(&self) -> Res<Option<u64>> {
        let page = self
            .mvcc
            .get_latest_header_page()
            .map_err(err("umadb header"))?;
        let header = page.as_header_node().map_err(err("umadb header"))?;
        Ok(Some(header.next_page_id.0 * self.mvcc.page_size as u64))
    }
}

/// A UmaDB server running in this process on its own thread and runtime.
pub struct UmaServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Res<()>>>,
}

impl UmaServer {
    /// Starts the server on a free port of 127.0.0.1 with a database file
    /// at `path` and UmaDB's default storage options.
    pub fn start(path: &Path) -> Res<UmaServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(err("free port"))?
            .port();
        let opts = umadb_server::ServerOptions {
            listen_addr: format!("127.0.0.1:{port}"),
            tls: None,
            api_key: None,
            storage: StorageOptions::default().db_path(path),
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("umadb-server".into())
            .spawn(move || -> Res<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(err("server runtime"))?;
                rt.block_on(umadb_server::start_server_with_options(opts, stop_rx))
                    .map_err(|e| format!("umadb server: {e}"))
            })
            .map_err(err("server thread"))?;
        Ok(UmaServer {
            url: format!("http://127.0.0.1:{port}"),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// W3: `writers` clients, each with its own connection, append
    /// concurrently for `budget`, each event under a condition on its own
    /// tag. Returns (appends, elapsed).
    pub fn concurrent(
        &self,
        rt: &tokio::runtime::Handle,
        writers: usize,
        budget: Duration,
        data: &Arc<[u8]>,
    ) -> Res<(u64, Duration)> {
        let url = self.url.clone();
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
                        let cond = DcbAppendCondition::new(tag_query(&ev.tags[0]));
                        client
                            .append(vec![dcb_event(&ev)], Some(cond), None)
                            .await
                            .map_err(err("umadb server append"))?;
                        n += 1;
                    }
                    Ok::<u64, String>(n)
                });
            }
            let mut total = 0;
            while let Some(r) = tasks.join_next().await {
                total += r.map_err(err("umadb client task"))??;
            }
            Ok((total, start.elapsed()))
        })
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
                .map_err(|_| "umadb server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for UmaServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Connects a client, retrying while the server starts.
async fn connect(url: &str) -> Res<AsyncUmaDbClient> {
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
