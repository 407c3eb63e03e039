//! The store and its transaction: reads at a pinned revision, one
//! compare-and-swap `Txn` per commit.
use crate::client::EtcdClient;
use crate::config::EtcdOptions;
use crate::error::{map_err, timed, Phase};
use crate::proto::{
    Compare, CompareResult, DeleteRangeRequest, RangeRequest, RequestOp, ResponseHeader, SortOrder,
    SortTarget, TxnRequest,
};
use crate::{BACKEND, REQUEST_HEADROOM, SCAN_PAGE};
use async_trait::async_trait;
use eskv_core::kv::remote::ClusterView;
use eskv_core::kv::{BufferedTxn, KvSnapshot, WriteSet};
use eskv_core::{
    Capabilities, KeyRange, KvError, KvPair, KvResult, KvStore, KvTransaction, ScanOptions,
};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;
/// An etcd cluster as a [`KvStore`]. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct EtcdStore {
    raw: Arc<RawStore>,
    view: ClusterView,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.raw.endpoints)
            .field("prefix", &self.view.prefix())
            .finish_non_exhaustive()
    }
}

struct RawStore {
    kv: EtcdClient,
    caps: Capabilities,
    endpoints: String,
    timeout: Duration,
    max_txn_ops: usize,
    max_request_bytes: usize,
}

impl EtcdStore {
    /// Connects to the cluster and probes it.
    ///
    /// The channel connects lazily, so this sends one linearizable read with
    /// `options.remote.connect_timeout`: a cluster that is down, unreachable or
    /// without a leader fails here with [`KvError::Unavailable`] instead of at
    /// the first transaction. Bad options fail with [`KvError::InvalidInput`].
    ///
    /// The probe reads a key inside the namespace (`key_prefix`), and the
    /// store touches no key outside it: with etcd authentication, a user
    /// whose role grants read-write on the namespace's prefix only (the raw
    /// bytes [`EtcdStore::prefix`]; see the crate docs) can connect and use
    /// the store.
    pub async fn connect(options: EtcdOptions) -> KvResult<Self> {
        let endpoints = options.endpoint_list();
        if options.remote.endpoints.is_empty() {
            return Err(KvError::invalid(
                "no etcd endpoints given; pass at least one host:port (for example 127.0.0.1:2379)",
            ));
        }
        if options.max_txn_ops < 2 || options.max_request_bytes <= 2 * REQUEST_HEADROOM {
            return Err(KvError::invalid(format!(
                "etcd server limits too small: max_txn_ops {} (need >= 2), max_request_bytes {} (need > {})",
                options.max_txn_ops,
                options.max_request_bytes,
                2 * REQUEST_HEADROOM
            )));
        }
        let caps = options.capabilities();
        // Scan pages carry up to SCAN_PAGE values of the largest size.
        let decode_limit = (SCAN_PAGE * (caps.max_value_size.unwrap_or(0) + 4096)).max(64 << 20);
        let kv = EtcdClient::connect(&options)
            .await
            .map_err(|e| map_err(e, Phase::Connect, &endpoints))?
            .with_message_limits(decode_limit, options.max_request_bytes + REQUEST_HEADROOM);
        let raw = Arc::new(RawStore {
            kv,
            caps,
            endpoints,
            timeout: options.remote.request_timeout,
            max_txn_ops: options.max_txn_ops,
            max_request_bytes: options.max_request_bytes,
        });
        let view = ClusterView::new(raw.clone(), options.remote.key_prefix.as_deref());
        // The probe: a linearizable read needs a live quorum with a leader
        // (and, with auth, valid credentials). It reads a key inside the
        // namespace, so a user granted only the namespace's key range can
        // connect.
        let probe = probe_key(view.prefix());
        timed(
            "probing the cluster",
            Phase::Connect,
            options.remote.connect_timeout,
            &raw.endpoints,
            || {
                raw.kv.range(RangeRequest {
                    count_only: true,
                    ..RangeRequest::key(probe.clone())
                })
            },
        )
        .await?;
        Ok(EtcdStore { raw, view })
    }

    /// The raw key prefix of the configured namespace, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        self.view.prefix()
    }

    /// Deletes every key of this store's namespace in one request and
    /// returns how many were deleted. Refuses to run without a key prefix.
    pub async fn clear_namespace(&self) -> KvResult<u64> {
        // One DeleteRange: cheaper than the generic `Namespaced::clear`.
        let prefix = self.view.namespace_to_clear()?.prefix();
        let end = eskv_core::tuple::prefix_successor(prefix).unwrap_or_else(|| vec![0]);
        let resp = timed(
            "deleting a namespace",
            Phase::Read,
            self.raw.timeout,
            &self.raw.endpoints,
            || {
                self.raw.kv.delete_range(DeleteRangeRequest {
                    key: prefix.to_vec(),
                    range_end: end.clone(),
                })
            },
        )
        .await?;
        Ok(resp.deleted.max(0) as u64)
    }
}

#[async_trait]
impl KvStore for EtcdStore {
    fn capabilities(&self) -> &Capabilities {
        self.view.store().capabilities()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        self.view.store().begin().await
    }
}

#[async_trait]
impl KvStore for RawStore {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        BufferedTxn::begin(&self.caps, async {
            Ok(EtcdSnapshot {
                kv: self.kv.clone(),
                endpoints: self.endpoints.clone(),
                timeout: self.timeout,
                max_txn_ops: self.max_txn_ops,
                max_request_bytes: self.max_request_bytes,
                pin: None,
                seen: HashMap::new(),
            })
        })
        .await
    }
}

/// A transaction's snapshot: reads pinned to the revision of the first
/// read, and the `mod_revision` of every key read, which the commit's
/// compares defend.
struct EtcdSnapshot {
    kv: EtcdClient,
    endpoints: String,
    timeout: Duration,
    max_txn_ops: usize,
    max_request_bytes: usize,
    /// The snapshot revision, fixed by the first read.
    pin: Option<i64>,
    /// `mod_revision` at the pin of every key read so far (0: absent).
    seen: HashMap<Vec<u8>, i64>,
}

/// The key the connect probe reads: one inside the namespace `prefix` (a
/// raw key when there is none), so that it needs no permission beyond the
/// namespace's.
fn probe_key(prefix: Option<&[u8]>) -> Vec<u8> {
    let mut key = prefix.unwrap_or_default().to_vec();
    key.extend_from_slice(b"\x00eskv-probe");
    key
}

/// The smallest key after `k`.
fn next_key(k: &[u8]) -> Vec<u8> {
    let mut n = Vec::with_capacity(k.len() + 1);
    n.extend_from_slice(k);
    n.push(0);
    n
}

/// `range` as etcd's `[key, range_end)`, or `None` when it holds no
/// (non-empty) key. `range_end` `[0]` means "to the end of the keyspace".
fn etcd_range(range: &KeyRange) -> Option<(Vec<u8>, Vec<u8>)> {
    let start = match &range.start {
        Bound::Included(k) if !k.is_empty() => k.clone(),
        Bound::Included(_) | Bound::Unbounded => vec![0],
        Bound::Excluded(k) => next_key(k),
    };
    let end = match &range.end {
        Bound::Included(k) => next_key(k),
        Bound::Excluded(k) => k.clone(),
        Bound::Unbounded => return Some((start, vec![0])),
    };
    (start < end).then_some((start, end))
}

impl EtcdSnapshot {
    /// A read at the pin (at the newest revision before the first read).
    fn at_pin(&self, req: RangeRequest) -> RangeRequest {
        RangeRequest {
            revision: self.pin.unwrap_or(0),
            ..req
        }
    }

    /// A read of `[start, end)` at the pin: at most `limit` rows, the last
    /// ones first when `reverse`.
    fn scan_request(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        reverse: bool,
    ) -> RangeRequest {
        let mut req = RangeRequest {
            range_end: end,
            limit: limit as i64,
            ..RangeRequest::key(start)
        };
        if reverse {
            req.sort_order = SortOrder::Descend as i32;
            req.sort_target = SortTarget::Key as i32;
        }
        self.at_pin(req)
    }

    /// Fixes the pin from the first read's response header.
    fn pin_from(&mut self, header: Option<&ResponseHeader>) -> KvResult<()> {
        if self.pin.is_none() {
            let rev = header.map(|h| h.revision).ok_or_else(|| {
                KvError::backend(BACKEND, "etcd answered a read without a response header")
            })?;
            self.pin = Some(rev);
        }
        Ok(())
    }

    /// Sends `ops` as the `Then` branch of a compare-free `Txn`: one round
    /// trip, one revision.
    async fn read_txn(&mut self, ops: Vec<RequestOp>) -> KvResult<Vec<crate::proto::ResponseOp>> {
        let txn = TxnRequest {
            success: ops,
            ..Default::default()
        };
        let kv = &self.kv;
        let resp = timed("a read", Phase::Read, self.timeout, &self.endpoints, || {
            kv.txn(txn.clone())
        })
        .await?;
        self.pin_from(resp.header.as_ref())?;
        Ok(resp.responses)
    }

    /// Records the pinned state of `key` from a get's answer and returns
    /// its value.
    fn record_get(
        &mut self,
        key: &[u8],
        answer: Option<&crate::proto::RangeResponse>,
    ) -> Option<Vec<u8>> {
        let kv = answer.and_then(|r| r.kvs.first());
        self.seen
            .insert(key.to_vec(), kv.map_or(0, |kv| kv.mod_revision));
        kv.map(|kv| kv.value.clone())
    }

    /// Reads `keys` at the pin in `Txn`s of at most `max_txn_ops` gets, and
    /// records their `mod_revision`s. Returns the values in input order.
    async fn fetch(&mut self, keys: &[Vec<u8>], keys_only: bool) -> KvResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.max_txn_ops) {
            let ops: Vec<RequestOp> = chunk
                .iter()
                .map(|k| {
                    RequestOp::range(self.at_pin(RangeRequest {
                        keys_only,
                        ..RangeRequest::key(k.clone())
                    }))
                })
                .collect();
            let responses = self.read_txn(ops).await?;
            for (k, r) in chunk.iter().zip(&responses) {
                out.push(self.record_get(k, r.as_range()));
            }
        }
        Ok(out)
    }

    /// Reads up to `limit` rows of `range` at the pin (all if `None`),
    /// paging `SCAN_PAGE` rows at a time.
    async fn scan_snapshot(
        &mut self,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> KvResult<Vec<KvPair>> {
        // Without a limit, read forwards and turn the result around: etcd
        // sorts a descending range by loading all of it first, on every page.
        let turn_around = reverse && limit.is_none();
        let reverse = reverse && !turn_around;
        let mut out: Vec<KvPair> = Vec::new();
        let mut r = range.clone();
        loop {
            let want = match limit {
                Some(l) => (l - out.len()).min(SCAN_PAGE),
                None => SCAN_PAGE,
            };
            let Some((start, end)) = etcd_range(&r).filter(|_| want > 0) else {
                break;
            };
            let req = self.scan_request(start, end, want, reverse);
            let kv = &self.kv;
            let resp = timed("a scan", Phase::Read, self.timeout, &self.endpoints, || {
                kv.range(req.clone())
            })
            .await?;
            self.pin_from(resp.header.as_ref())?;
            let more = resp.more;
            let n = resp.kvs.len();
            for kv in resp.kvs {
                self.seen.insert(kv.key.clone(), kv.mod_revision);
                out.push((kv.key, kv.value));
            }
            if !more || n < want {
                break;
            }
            let last = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
            if reverse {
                r.end = Bound::Excluded(last);
            } else {
                r.start = Bound::Excluded(last);
            }
        }
        if turn_around {
            out.reverse();
        }
        Ok(out)
    }

    /// `keys` sorted and without duplicates: each is read once.
    fn unique(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        keys.iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Gets and short scans in one `Txn` (one round trip, one revision).
    /// Returns `None` when they do not fit one transaction; the caller
    /// then reads them one after another.
    async fn read_many_in_one_txn(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<Option<eskv_core::ReadMany>> {
        let missing = Self::unique(gets);
        // Every scan must be answered by one ranged get: a limit of at most
        // one page, so the response is complete or the limit is reached.
        let mut plans = Vec::with_capacity(scans.len());
        for (range, opts) in scans {
            match opts.limit {
                Some(l) if l <= SCAN_PAGE => plans.push(if l == 0 {
                    None
                } else {
                    etcd_range(range).map(|r| (r, l, opts.reverse))
                }),
                _ => return Ok(None),
            }
        }
        if missing.len() + plans.len() > self.max_txn_ops || missing.len() + plans.len() == 0 {
            return Ok(None);
        }
        let mut ops: Vec<RequestOp> = missing
            .iter()
            .map(|k| RequestOp::range(self.at_pin(RangeRequest::key(k.clone()))))
            .collect();
        for ((start, end), limit, reverse) in plans.iter().flatten() {
            ops.push(RequestOp::range(self.scan_request(
                start.clone(),
                end.clone(),
                *limit,
                *reverse,
            )));
        }
        let responses = self.read_txn(ops).await?;
        let mut responses = responses.into_iter();
        let mut fetched: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::with_capacity(missing.len());
        for k in missing {
            let r = responses.next();
            let v = self.record_get(&k, r.as_ref().and_then(|r| r.as_range()));
            fetched.insert(k, v);
        }
        let values = gets
            .iter()
            .map(|k| fetched.get(k).cloned().flatten())
            .collect();
        let mut rows_out = Vec::with_capacity(scans.len());
        for plan in &plans {
            let mut rows = Vec::new();
            if plan.is_some() {
                if let Some(r) = responses.next() {
                    for kv in r.as_range().map(|r| r.kvs.as_slice()).unwrap_or_default() {
                        self.seen.insert(kv.key.clone(), kv.mod_revision);
                        rows.push((kv.key.clone(), kv.value.clone()));
                    }
                }
            }
            rows_out.push(rows);
        }
        Ok(Some((values, rows_out)))
    }
}

#[async_trait]
impl KvSnapshot for EtcdSnapshot {
    /// Absent at the pin: `mod_revision` 0, compared at commit without
    /// reading it first (a key that was read keeps what the read saw).
    fn assume_absent(&mut self, key: &[u8]) {
        if !self.seen.contains_key(key) {
            self.seen.insert(key.to_vec(), 0);
        }
    }

    async fn read_many(
        &mut self,
        gets: Vec<Vec<u8>>,
        scans: Vec<(KeyRange, ScanOptions)>,
    ) -> KvResult<eskv_core::ReadMany> {
        if let Some(r) = self.read_many_in_one_txn(&gets, &scans).await? {
            return Ok(r);
        }
        let values = if gets.is_empty() {
            Vec::new()
        } else {
            self.get_many(gets).await?
        };
        let mut rows = Vec::with_capacity(scans.len());
        for (r, o) in scans {
            rows.push(self.scan(r, o).await?);
        }
        Ok((values, rows))
    }

    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        let unique = Self::unique(&keys);
        let values = self.fetch(&unique, false).await?;
        let fetched: HashMap<Vec<u8>, Option<Vec<u8>>> = unique.into_iter().zip(values).collect();
        Ok(keys
            .iter()
            .map(|k| fetched.get(k).cloned().flatten())
            .collect())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        self.scan_snapshot(&range, opts.reverse, opts.limit).await
    }

    async fn commit(mut self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let checked: BTreeSet<Vec<u8>> = writes
            .keys()
            .cloned()
            .chain(validated.into_iter().filter(|k| !k.is_empty()))
            .collect();

        // etcd holds the compares and the operations each to
        // --max-txn-ops, and the whole request to --max-request-bytes:
        // checked before anything is sent.
        let compare_count = if self.pin.is_some() { checked.len() } else { 0 };
        let ops = writes.len().max(compare_count);
        if ops > self.max_txn_ops {
            return Err(KvError::LimitExceeded {
                what: "operations (compares or writes) in one etcd transaction".into(),
                limit: self.max_txn_ops as u64,
                actual: ops as u64,
            });
        }
        let request_bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum::<usize>()
            + if self.pin.is_some() {
                checked.iter().map(|k| 2 * k.len() + 32).sum::<usize>()
            } else {
                0
            };
        let max_bytes = self.max_request_bytes - REQUEST_HEADROOM;
        if request_bytes > max_bytes {
            return Err(KvError::LimitExceeded {
                what: "bytes in one etcd transaction request".into(),
                limit: max_bytes as u64,
                actual: request_bytes as u64,
            });
        }

        // Compares: only a transaction that read has a snapshot to
        // defend. Keys it never read get their pinned state first.
        let mut compare = Vec::new();
        if let Some(pin) = self.pin {
            let unknown: Vec<Vec<u8>> = checked
                .iter()
                .filter(|k| !self.seen.contains_key(*k))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                self.fetch(&unknown, true).await?;
            }
            for k in &checked {
                let rev = self.seen.get(k).copied().unwrap_or(0);
                debug_assert!(rev <= pin);
                compare.push(Compare::mod_revision(k.clone(), CompareResult::Equal, rev));
            }
        }

        let success: Vec<RequestOp> = writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => RequestOp::put(k, v),
                None => RequestOp::delete(k),
            })
            .collect();
        // On failure, read the compared keys back to name the culprit.
        // These linearizable reads also keep a commit with compares but no
        // writes off etcd's serializable path: a transaction whose branches
        // hold no operations is answered from the member's own, possibly
        // lagging, state.
        let compared: Vec<&Vec<u8>> = match self.pin {
            Some(_) => checked.iter().collect(),
            None => Vec::new(),
        };
        let failure: Vec<RequestOp> = compared
            .iter()
            .map(|k| {
                RequestOp::range(RangeRequest {
                    keys_only: true,
                    ..RangeRequest::key(k.to_vec())
                })
            })
            .collect();
        let txn = TxnRequest {
            compare,
            success,
            failure,
        };
        let kv = &self.kv;
        let resp = timed(
            "a commit",
            Phase::Commit,
            self.timeout,
            &self.endpoints,
            || kv.txn(txn.clone()),
        )
        .await?;
        if resp.succeeded {
            return Ok(());
        }
        let culprit = compared
            .into_iter()
            .zip(&resp.responses)
            .find_map(|(k, r)| {
                let now = r
                    .as_range()
                    .and_then(|g| g.kvs.first())
                    .map_or(0, |kv| kv.mod_revision);
                let then = self.seen.get(k).copied().unwrap_or(0);
                (now != then).then(|| {
                    let what = match (then, now) {
                        (0, _) => "created",
                        (_, 0) => "deleted",
                        _ => "changed",
                    };
                    format!(
                        "key {} was {what} after this transaction's snapshot (revision {})",
                        eskv_core::display_key(k),
                        self.pin.unwrap_or(0)
                    )
                })
            });
        Err(KvError::conflict(culprit.unwrap_or_else(|| {
            "a key read or written by this transaction changed after its snapshot".into()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reads_inside_the_namespace() {
        assert_eq!(probe_key(None), b"\x00eskv-probe");
        let p = b"n\x15\x03app";
        let k = probe_key(Some(p));
        assert!(k.starts_with(p), "{k:?}");
        let end = eskv_core::tuple::prefix_successor(p).unwrap();
        assert!(k.as_slice() < end.as_slice(), "{k:?}");
    }

    #[test]
    fn ranges_map_to_etcd_bounds() {
        let r = |s, e| KeyRange { start: s, end: e };
        let v = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            etcd_range(&KeyRange::new(v("a"), v("c"))),
            Some((v("a"), v("c")))
        );
        assert_eq!(
            etcd_range(&r(Bound::Excluded(v("a")), Bound::Included(v("c")))),
            Some((v("a\0"), v("c\0")))
        );
        assert_eq!(
            etcd_range(&r(Bound::Unbounded, Bound::Unbounded)),
            Some((vec![0], vec![0]))
        );
        assert_eq!(
            etcd_range(&r(Bound::Unbounded, Bound::Excluded(Vec::new()))),
            None
        );
        assert_eq!(
            etcd_range(&r(Bound::Included(v("b")), Bound::Excluded(v("b")))),
            None
        );
    }
}
