//! etcd: a 3-node cluster on 127.0.0.1 started by the harness,
//! eskv on it (`EtcdStore`), and raw etcd `Txn`s doing the same key writes
//! and reads as eskv's layout, as the baseline.
//!
//! The cluster comes from `eskv-etcd-launcher`, the launcher the etcd tests
//! use: its members are children of this process, with their data
//! directories under the run's temporary directory (the same disk as every
//! other system), killed by PID when the cluster drops or this process dies.

use crate::common::layout_rows;
use crate::common::{err, now_ms, Ev, Res, Store};
use eskv::layout::{self, Index, StreamMeta};
use eskv::{KeyRange, MemoryStore, Namespaced, Ulid};
use eskv_etcd::proto::{
    Compare, CompareResult, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use eskv_etcd::EtcdClient;
use eskv_etcd_launcher::{etcd_bin, etcd_version, ClusterOptions};
pub use eskv_etcd_launcher::{Cluster, LaunchError};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
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
        etcd_version(&etcd_bin())
    )
}

/// Starts the bench cluster under `dir`: [`NODES`] members with the
/// server flags above, through the one etcd launcher the tests use too.
pub fn start_cluster(dir: &Path) -> Result<Cluster, LaunchError> {
    Cluster::launch(ClusterOptions {
        extra_args: vec![
            "--max-txn-ops".into(),
            MAX_TXN_OPS.to_string(),
            "--max-request-bytes".into(),
            MAX_REQUEST_BYTES.to_string(),
            "--quota-backend-bytes".into(),
            QUOTA_BACKEND_BYTES.to_string(),
        ],
        dir: Some(dir.to_path_buf()),
        ..ClusterOptions::new(NODES)
    })
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
                layout_rows(&mut rows, first + i as u64, (first, last), ev, now, None)?;
            }
            rows.push((layout::head_key(), layout::u64_value(last)));
            Ok(rows)
        })
    }
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
                layout_rows(&mut rows, pos, (pos, pos), ev, now_ms(), None)?;
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
                layout_rows(&mut rows, pos, (pos, pos), ev, now_ms(), sref)?;
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
