//! etcd (issue 8): a 3-node cluster on 127.0.0.1 started by the harness,
//! eskv on it (`EtcdStore`), and raw etcd `Txn`s doing the same key writes
//! and reads as eskv's layout, as the baseline.
//!
//! The cluster's nodes are children of this process, with their data
//! directories under the run's temporary directory (the same disk as every
//! other system). [`Cluster`]'s `Drop` kills them by PID (also when the
//! harness panics and unwinds), and a watchdog shell kills them if this
//! process dies without unwinding.

use crate::common::{err, now_ms, Ev, Res, Store, EVENT_TYPE};
use eskv::layout::{self, IdEntry, Index, StreamMeta};
use eskv::{envelope, KeyRange, MemoryStore, Namespaced, NewEvent, Ulid};
use eskv_etcd::proto::{
    Compare, CompareResult, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use eskv_etcd::EtcdClient;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// `--max-txn-ops` of the bench cluster: W4's 100-event append is 501
/// writes (5 rows per event plus the head) and as many compares in eskv's
/// commit, over etcd's default of 128.
pub const MAX_TXN_OPS: usize = 2048;
/// `--max-request-bytes` of the bench cluster (16 MiB; etcd's default is
/// 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// `--quota-backend-bytes` (4 GiB; default 2 GiB): room for a full run
/// without compaction.
pub const QUOTA_BACKEND_BYTES: u64 = 4 << 30;
/// Members of the bench cluster.
pub const NODES: usize = 3;

/// The server flags every node gets besides its name, URLs and data
/// directory (for the report).
pub fn server_settings() -> String {
    format!(
        "etcd {}, {NODES} nodes on 127.0.0.1, `--max-txn-ops {MAX_TXN_OPS} --max-request-bytes {MAX_REQUEST_BYTES} \
         --quota-backend-bytes {QUOTA_BACKEND_BYTES} --heartbeat-interval 100 --election-timeout 1000` \
         (etcd's defaults otherwise: `--snapshot-count 100000`, no auto-compaction, fsync on every Raft write), \
         data directories on the same disk as the other systems",
        etcd_version()
    )
}

/// The etcd binary: `ETCD_BIN` if set, else `etcd` on the `PATH`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

fn etcd_version() -> String {
    Command::new(etcd_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "(unknown version)".into())
}

/// Why the cluster did not start.
pub enum StartError {
    /// No etcd binary to run.
    Missing(String),
    Failed(String),
}

/// A running etcd cluster on loopback, stopped on drop.
pub struct Cluster {
    dir: PathBuf,
    ports: Vec<(u16, u16)>,
    children: Vec<Child>,
    watchdog: Option<Child>,
}

fn free_ports(n: usize) -> Res<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(err("bind a free port")))
        .collect::<Res<_>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(err("local address"))
        })
        .collect()
}

/// `GET /health` over HTTP/1.1: true when the member has a leader.
fn healthy(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

impl Cluster {
    /// Starts a [`NODES`]-node cluster under `dir` and waits until every
    /// node is healthy; retries with fresh ports (a port reserved by
    /// `free_ports` can be taken before etcd binds it).
    pub fn start(dir: &Path) -> Result<Cluster, StartError> {
        let mut last = String::new();
        for attempt in 0..3 {
            match Self::try_start(&dir.join(format!("try{attempt}"))) {
                Ok(c) => return Ok(c),
                Err(StartError::Missing(e)) => return Err(StartError::Missing(e)),
                Err(StartError::Failed(e)) => last = e,
            }
        }
        Err(StartError::Failed(last))
    }

    fn try_start(dir: &Path) -> Result<Cluster, StartError> {
        let failed = StartError::Failed;
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("mkdir: {e}")))?;
        let p = free_ports(2 * NODES).map_err(failed)?;
        let ports: Vec<(u16, u16)> = (0..NODES).map(|i| (p[2 * i], p[2 * i + 1])).collect();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
for f in "$2"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done"#,
            )
            .arg("eskv-bench-etcd-watchdog")
            .arg(std::process::id().to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(format!("cannot start the watchdog shell: {e}")))?;
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            ports,
            children: Vec::new(),
            watchdog: Some(watchdog),
        };
        let initial = c
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("eskv-bench-{}-{}", std::process::id(), c.ports[0].0);
        for i in 0..NODES {
            let (client_port, peer_port) = c.ports[i];
            let name = format!("n{}", i + 1);
            let log = File::create(dir.join(format!("{name}.log")))
                .map_err(|e| failed(format!("log file: {e}")))?;
            let log2 = log
                .try_clone()
                .map_err(|e| failed(format!("log file: {e}")))?;
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let child = Command::new(etcd_bin())
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join(format!("{name}.etcd")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .args(["--max-txn-ops", &MAX_TXN_OPS.to_string()])
                .args(["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()])
                .args(["--quota-backend-bytes", &QUOTA_BACKEND_BYTES.to_string()])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn();
            let child = match child {
                Ok(ch) => ch,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StartError::Missing(format!(
                        "no etcd binary ({} not found; set ETCD_BIN or install etcd-server)",
                        etcd_bin().display()
                    )))
                }
                Err(e) => return Err(failed(format!("cannot run {}: {e}", etcd_bin().display()))),
            };
            std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string())
                .map_err(|e| failed(format!("pid file: {e}")))?;
            c.children.push(child);
        }
        let start = Instant::now();
        for i in 0..NODES {
            loop {
                if healthy(c.ports[i].0) {
                    break;
                }
                if let Ok(Some(status)) = c.children[i].try_wait() {
                    return Err(failed(format!(
                        "etcd n{} exited with {status}: {}",
                        i + 1,
                        tail(&dir.join(format!("n{}.log", i + 1)))
                    )));
                }
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(failed(format!(
                        "etcd n{} not healthy after 30 s: {}",
                        i + 1,
                        tail(&dir.join(format!("n{}.log", i + 1)))
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(c)
    }

    /// Client endpoints (`127.0.0.1:port`) of the nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(c, _)| format!("127.0.0.1:{c}"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill(); // SIGKILL, by PID
            let _ = c.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The raw key prefix eskv's `key_prefix(ns)` puts in front of every key,
/// so that raw etcd's keys are as long as eskv's.
pub fn namespace_prefix(ns: &str) -> Vec<u8> {
    Namespaced::new(Arc::new(MemoryStore::new()), ns)
        .prefix()
        .to_vec()
}

/// raw etcd: per append, one read `Txn` (the head, the event ids, the
/// stream's metadata, the condition's tag-index range) and one write `Txn`
/// that compares the `mod_revision` of every key it read and puts the same
/// rows as eskv's layout, plus the head. Two round trips; no decoding.
pub struct RawEtcd {
    rt: Handle,
    kv: EtcdClient,
    prefix: Vec<u8>,
}

fn rev_of(r: Option<&ResponseOp>) -> (i64, Option<Vec<u8>>) {
    r.and_then(ResponseOp::as_range)
        .and_then(|g| g.kvs.first())
        .map_or((0, None), |kv| (kv.mod_revision, Some(kv.value.clone())))
}

fn range_len(r: Option<&ResponseOp>) -> usize {
    r.and_then(ResponseOp::as_range).map_or(0, |g| g.kvs.len())
}

impl RawEtcd {
    pub fn connect(rt: &Handle, endpoints: &[String], ns: &str) -> Res<RawEtcd> {
        let options = eskv_etcd::EtcdOptions::new(endpoints.iter().cloned());
        let kv = rt
            .block_on(EtcdClient::connect(&options))
            .map_err(err("connect raw etcd"))?
            .with_message_limits(64 << 20, MAX_REQUEST_BYTES + (64 << 10));
        Ok(RawEtcd {
            rt: rt.clone(),
            kv,
            prefix: namespace_prefix(ns),
        })
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + k.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(k);
        out
    }

    /// `range` inside the prefix as etcd's `[key, range_end)`.
    fn range(&self, r: &KeyRange) -> (Vec<u8>, Vec<u8>) {
        let next = |k: &[u8]| {
            let mut n = self.key(k);
            n.push(0);
            n
        };
        let start = match &r.start {
            Bound::Included(k) => self.key(k),
            Bound::Excluded(k) => next(k),
            Bound::Unbounded => self.prefix.clone(),
        };
        let end = match &r.end {
            Bound::Included(k) => next(k),
            Bound::Excluded(k) => self.key(k),
            Bound::Unbounded => {
                let mut e = self.prefix.clone();
                e.push(0xff);
                e
            }
        };
        (start, end)
    }

    fn txn(&self, txn: TxnRequest) -> Res<TxnResponse> {
        self.rt
            .block_on(self.kv.txn(txn))
            .map_err(err("raw etcd txn"))
    }

    /// One append: reads the head, `gets` (layout keys) and the optional
    /// `probe` range (first row only) in one `Txn`; `check` sees the head,
    /// the values and whether the probe found a row, and returns the rows
    /// to write, the head included; then one `Txn` compares the
    /// `mod_revision` of every key read (0: absent) and puts the rows.
    fn append(
        &self,
        gets: &[Vec<u8>],
        probe: Option<&KeyRange>,
        check: impl FnOnce(u64, &[Option<Vec<u8>>], bool) -> Res<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Res<()> {
        let mut keys: Vec<Vec<u8>> = vec![self.key(&layout::head_key())];
        keys.extend(gets.iter().map(|k| self.key(k)));
        let mut ops: Vec<RequestOp> = keys
            .iter()
            .map(|k| RequestOp::range(RangeRequest::key(k.clone())))
            .collect();
        if let Some(r) = probe {
            let (start, end) = self.range(r);
            ops.push(RequestOp::range(RangeRequest {
                range_end: end,
                limit: 1,
                ..RangeRequest::key(start)
            }));
        }
        let resp = self.txn(TxnRequest {
            success: ops,
            ..Default::default()
        })?;
        let rs = &resp.responses;
        let got: Vec<(i64, Option<Vec<u8>>)> = (0..keys.len()).map(|i| rev_of(rs.get(i))).collect();
        let probed = range_len(rs.get(keys.len())) > 0;
        let head = match &got[0].1 {
            Some(v) => layout::parse_u64(v, "head").map_err(err("decode"))?,
            None => 0,
        };
        let values: Vec<Option<Vec<u8>>> = got[1..].iter().map(|(_, v)| v.clone()).collect();
        let rows = check(head, &values, probed)?;
        let compares: Vec<Compare> = keys
            .iter()
            .zip(&got)
            .map(|(k, (rev, _))| Compare::mod_revision(k.clone(), CompareResult::Equal, *rev))
            .collect();
        let puts: Vec<RequestOp> = rows
            .into_iter()
            .map(|(k, v)| RequestOp::put(self.key(&k), v))
            .collect();
        let resp = self.txn(TxnRequest {
            compare: compares,
            success: puts,
            failure: Vec::new(),
        })?;
        if !resp.succeeded {
            return Err("raw etcd: a key read changed before the commit (conflict)".into());
        }
        Ok(())
    }

    /// Writes `evs` in one append without a condition (W4 and loads).
    fn write_batch(&self, evs: &[Ev]) -> Res<()> {
        let ids: Vec<Vec<u8>> = evs.iter().map(|e| layout::id_key(Ulid(e.id))).collect();
        self.append(&ids, None, |head, found, _| {
            if found.iter().any(Option::is_some) {
                return Err("raw etcd: duplicate id".into());
            }
            let now = now_ms();
            let first = head + 1;
            let last = head + evs.len() as u64;
            let mut rows = Vec::with_capacity(evs.len() * 5 + 1);
            for (i, ev) in evs.iter().enumerate() {
                event_rows(&mut rows, first + i as u64, (first, last), ev, now, None)?;
            }
            rows.push((layout::head_key(), layout::u64_value(last)));
            Ok(rows)
        })
    }
}

/// The rows one event adds, as eskv's layout defines them.
fn event_rows(
    rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
    pos: u64,
    (append_first, append_last): (u64, u64),
    ev: &Ev,
    now: u64,
    stream: Option<(&str, u64)>,
) -> Res<()> {
    let e = NewEvent {
        id: Ulid(ev.id),
        event_type: EVENT_TYPE.to_string(),
        tags: ev.tags.to_vec(),
        data: ev.data.to_vec(),
        metadata: Default::default(),
        personal: None,
    };
    rows.push((
        layout::log_key(pos),
        envelope::encode_new(pos, &e, now, stream).map_err(err("encode"))?,
    ));
    let id = IdEntry {
        position: pos,
        append_first,
        append_last,
        digest: layout::content_digest(&e.tags, &e.data, &e.metadata),
    };
    rows.push((layout::id_key(e.id), id.encode()));
    rows.push((layout::type_key(EVENT_TYPE, pos), Vec::new()));
    let entry = layout::tag_entry_value(EVENT_TYPE, &e.tags).map_err(err("encode"))?;
    for t in &e.tags {
        rows.push((layout::tag_key(t, pos), entry.clone()));
    }
    if let Some((s, v)) = stream {
        rows.push((layout::stream_event_key(s, v), layout::u64_value(pos)));
        rows.push((
            layout::category_key(layout::category_of(s), pos),
            Vec::new(),
        ));
    }
    Ok(())
}

const NOT_MEASURED: &str = "raw etcd is measured on W1, W2, W4 and W4r only";

impl Store for RawEtcd {
    /// W1: read the head, the id and the first row of the condition's tag
    /// range; write the event's rows and the head.
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        let probe = Index::Tag(cond_tag).range(1, u64::MAX);
        self.append(
            &[layout::id_key(Ulid(ev.id))],
            Some(&probe),
            |head, found, hit| {
                if found[0].is_some() {
                    return Err("raw etcd: duplicate id".into());
                }
                if hit {
                    return Err("raw etcd: condition failed".into());
                }
                let pos = head + 1;
                let mut rows = Vec::with_capacity(6);
                event_rows(&mut rows, pos, (pos, pos), ev, now_ms(), None)?;
                rows.push((layout::head_key(), layout::u64_value(pos)));
                Ok(rows)
            },
        )
    }

    /// W2: read the head, the id and the stream's metadata; check the
    /// version; write the rows, the stream metadata and the head.
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let mut pos = 0;
        self.append(
            &[layout::id_key(Ulid(ev.id)), layout::stream_key(stream)],
            None,
            |head, found, _| {
                if found[0].is_some() {
                    return Err("raw etcd: duplicate id".into());
                }
                let meta = found[1]
                    .as_deref()
                    .map(StreamMeta::decode)
                    .transpose()
                    .map_err(err("decode"))?;
                if meta.map_or(0, |m| m.version) != expected {
                    return Err("raw etcd: wrong expected version".into());
                }
                pos = head + 1;
                let mut rows = Vec::with_capacity(9);
                let sref = Some((stream, expected + 1));
                event_rows(&mut rows, pos, (pos, pos), ev, now_ms(), sref)?;
                rows.push((
                    layout::stream_key(stream),
                    StreamMeta {
                        version: expected + 1,
                        last_position: pos,
                    }
                    .encode(),
                ));
                rows.push((layout::head_key(), layout::u64_value(pos)));
                Ok(rows)
            },
        )?;
        Ok(pos)
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        if evs.iter().any(|e| e.stream.is_some()) {
            return Err(NOT_MEASURED.into());
        }
        self.write_batch(evs)
    }

    fn read_tag(&mut self, _tag: &str) -> Res<usize> {
        Err(NOT_MEASURED.into())
    }

    fn read_all(&mut self) -> Res<usize> {
        Err(NOT_MEASURED.into())
    }

    fn read_stream(&mut self, _stream: &str) -> Res<usize> {
        Err(NOT_MEASURED.into())
    }
}
