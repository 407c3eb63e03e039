//! UmaDB 0.7, the DCB anchor: embedded through `umadb-core` (its defaults,
//! and with memory-mapped reads plus its page cache), and its own gRPC
//! server on 127.0.0.1 (driven by `crate::sys_server` for W1 and W3; only
//! the server batches concurrent appends into one commit).
//!
//! Embedded UmaDB's `append` takes no writer lock and concurrent calls
//! corrupt its file, so every append here goes through a mutex.

use crate::common::{err, stream_tag, Ev, Res, Store};
use crate::sys_server::{dcb_event, tag_query};
use std::path::Path;
use std::sync::{Arc, Mutex};
use umadb_core::db::UmaDb;
use umadb_core::mvcc::{Mvcc, StorageOptions};
use umadb_core::pager::ReadMethod;
use umadb_dcb::{DcbAppendCondition, DcbEvent, DcbEventStoreSync, DcbQuery};

/// Page cache of the cached variant, in MB.
pub const PAGE_CACHE_MB: usize = 1024;

pub struct Uma {
    db: UmaDb,
    mvcc: Arc<Mvcc>,
    append_lock: Mutex<()>,
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
