//! [etcd] backend for eskv: reads at a pinned revision, one compare-and-swap
//! `Txn` per commit.
//!
//! ```no_run
//! use eskv_core::{KvStore, KvStoreExt};
//! use eskv_etcd::{EtcdOptions, EtcdStore};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
//! let options = EtcdOptions::new(["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"])
//!     .connect_timeout(Duration::from_secs(3))
//!     .key_prefix("my-app");
//! let store = EtcdStore::connect(options).await?; // probes the cluster
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots.** [`KvStore::begin`] costs nothing. The first read of a
//!   transaction is a linearizable read at the newest revision; the revision
//!   in its response header becomes the transaction's *pin*, and every later
//!   read asks for that revision. etcd's MVCC store answers from the pinned
//!   revision until it is compacted; a read at a compacted revision fails
//!   with a retryable [`Error::Conflict`].
//! - **Buffered writes** live in an [`eskv_core::WriteBuffer`]; scans merge
//!   them over the snapshot.
//! - **Commit** is one etcd `Txn`: `If` every written and every validated key
//!   still has the `mod_revision` it had at the pin, `Then` apply the puts
//!   and deletes. A key absent at the pin is compared with `mod_revision ==
//!   0`, which holds only while it is still absent (etcd compares a missing
//!   key as all zeros). So creating, changing and deleting a key after the
//!   pin are all caught, and a failed compare is a retryable
//!   [`Error::Conflict`].
//! - **Keys not read before commit.** The transaction knows the pinned
//!   `mod_revision` of every key it read. For a written or validated key it
//!   never read, commit first reads the keys' metadata at the pin (one extra
//!   round trip for all such keys): comparing with `mod_revision <= pin`
//!   instead would miss a key deleted after the pin. A transaction that never
//!   read anything has no pin: its snapshot is the commit itself and its
//!   `Txn` carries no compares.
//! - **Round trips:** one per read, one per commit, plus one when the commit
//!   writes or validates keys the transaction did not read.
//! - **Unknown outcomes.** A commit whose answer is lost (timeout, dropped
//!   connection, leader change) returns [`Error::CommitOutcomeUnknown`].
//!
//! # Limits
//!
//! etcd caps a `Txn` at `--max-txn-ops` operations (128 by default; the
//! compares, the `Then` list and the `Else` list are each held to it) and a
//! request at `--max-request-bytes` (1.5 MiB by default). [`EtcdOptions`]
//! carries the server's settings (defaults: etcd's defaults), and the store
//! declares them in its [`Capabilities`] so that oversized transactions are
//! rejected with [`Error::LimitExceeded`] before anything is sent; they are
//! never half-applied. If the server runs with larger limits, raise them in
//! the options too.
//!
//! # Operating etcd for eskv
//!
//! - **Compaction.** etcd keeps every revision until it is compacted, and
//!   its database stops taking writes at `--quota-backend-bytes` (2 GiB by
//!   default). Run it with automatic compaction, for example
//!   `--auto-compaction-mode=periodic --auto-compaction-retention=1h`, and
//!   defragment now and then. A transaction older than the retention can
//!   fail with a retryable conflict; eskv's transactions last milliseconds.
//! - **Throughput.** Every commit is one Raft entry, applied in revision
//!   order by one apply loop and fsynced by the leader and a quorum, so
//!   commits are serialized cluster-wide; the event layer's group commit
//!   puts many appends into one `Txn`.
//! - **Size.** etcd suits stores up to a few GB; use TiKV beyond that.
//!
//! [etcd]: https://etcd.io
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use async_trait::async_trait;
use eskv_core::kv::{begin_span, scan_span, traced_commit};
use eskv_core::{
    Capabilities, Error, KeyRange, KvPair, KvStore, KvTransaction, Namespaced, Result, ScanOptions,
    WriteBuffer,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const BACKEND: &str = "etcd";

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Bytes of a request kept free for protobuf framing and the compares.
const REQUEST_HEADROOM: usize = 64 * 1024;

/// Rows per scan request; longer scans page through the range.
const SCAN_PAGE: usize = 128;

/// Connection settings for [`EtcdStore::connect`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Client endpoints, `host:port` (or `http://`/`https://` URLs). The
    /// client balances over all of them and fails over when one is down.
    pub endpoints: Vec<String>,
    /// User name for etcd authentication.
    pub user: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
    /// CA certificate (PEM) that signed the servers' certificates; enables
    /// TLS.
    pub ca_path: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS; needs `key_path`.
    pub cert_path: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS; needs `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Longest wait for a connection, and for the probe at open. Default:
    /// 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for any one call. Default: 10 s.
    pub request_timeout: Duration,
    /// Scope every key under this namespace (see [`Namespaced`]).
    pub key_prefix: Option<String>,
    /// The server's `--max-txn-ops`. Default: 128.
    pub max_txn_ops: usize,
    /// The server's `--max-request-bytes`. Default: 1.5 MiB.
    pub max_request_bytes: usize,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.ca_path.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for `endpoints` with etcd's default limits, default
    /// timeouts, no TLS, no auth and no key prefix.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            password: None,
            ca_path: None,
            cert_path: None,
            key_path: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            key_prefix: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Options from a comma-separated endpoint list such as
    /// `ETCD_ENDPOINTS`. Blank entries are ignored.
    pub fn from_endpoints(list: &str) -> Self {
        Self::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        )
    }

    /// Authenticates as `user`.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Enables TLS, trusting `ca`.
    pub fn tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca_path = Some(ca.into());
        self
    }

    /// Presents a client certificate (mutual TLS).
    pub fn tls_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_path = Some(cert.into());
        self.key_path = Some(key.into());
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets the per-call timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Scopes the store to a namespace.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Declares the server's `--max-txn-ops` and `--max-request-bytes`.
    pub fn server_limits(mut self, max_txn_ops: usize, max_request_bytes: usize) -> Self {
        self.max_txn_ops = max_txn_ops;
        self.max_request_bytes = max_request_bytes;
        self
    }

    /// The capabilities a store with these options declares.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::unlimited(BACKEND)
            // Leave room in the request for keys, compares and framing:
            // 1 MiB values and 1.3 MiB per transaction at etcd's defaults.
            .with_max_value_size(self.max_request_bytes / 3 * 2)
            .with_max_txn_bytes(self.max_request_bytes / 8 * 7)
            // Written keys plus validated keys: etcd checks compares and
            // puts separately, so this is conservative.
            .with_max_ops_per_txn(self.max_txn_ops)
    }

    fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

/// An etcd cluster as a [`KvStore`]. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct EtcdStore {
    raw: Arc<RawStore>,
    view: Arc<dyn KvStore>,
    prefix: Option<Arc<[u8]>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.raw.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

struct RawStore {
    kv: KvClient,
    caps: Capabilities,
    endpoints: String,
    timeout: Duration,
    max_txn_ops: usize,
    max_request_bytes: usize,
}

/// Where an error happened; decides how connection trouble is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting and probing: every network failure means "unreachable".
    Connect,
    /// Reading: nothing was written.
    Read,
    /// Sending the commit `Txn`: a lost answer leaves the outcome unknown.
    Commit,
}

/// The one place where etcd-client errors become eskv errors.
fn map_err(e: etcd_client::Error, phase: Phase, endpoints: &str) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    let unavailable = |what: String| Error::Unavailable {
        backend: BACKEND,
        message: format!("etcd at {endpoints}: {what}"),
    };
    let unknown = |what: String| Error::CommitOutcomeUnknown {
        backend: BACKEND,
        message: format!("etcd at {endpoints}: {what}"),
    };
    if phase == Phase::Commit && never_sent(&e) {
        // Nothing reached the server: a plain, retryable unavailability.
        return unavailable(format!("the commit was not sent: {e}"));
    }
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                Code::OutOfRange if msg.contains("compacted") => Error::conflict(format!(
                    "the transaction's snapshot revision was compacted away ({msg}); \
                     retry with a fresh transaction, and compact less eagerly if this repeats"
                )),
                Code::InvalidArgument
                    if msg.contains("too many operations") || msg.contains("too large") =>
                {
                    Error::invalid(format!(
                        "etcd rejected the request as too large ({msg}); set EtcdOptions::server_limits \
                         to the server's --max-txn-ops and --max-request-bytes"
                    ))
                }
                Code::Unauthenticated | Code::PermissionDenied => Error::invalid(format!(
                    "etcd refused the request for this user ({msg}); check EtcdOptions user, \
                     password and the user's roles"
                )),
                Code::InvalidArgument if msg.contains("authentication failed") => Error::invalid(
                    format!("etcd refused the credentials ({msg}); check EtcdOptions user and password"),
                ),
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                    if phase == Phase::Commit =>
                {
                    unknown(format!("the commit got no definite answer: {s}"))
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted => unavailable(s.to_string()),
                Code::OutOfRange if msg.contains("future revision") => unavailable(s.to_string()),
                _ => Error::backend(BACKEND, E::GRpcStatus(s)),
            }
        }
        E::TransportError(t) if phase == Phase::Commit => {
            unknown(format!("connection failed during commit: {t}"))
        }
        E::IoError(t) if phase == Phase::Commit => {
            unknown(format!("connection failed during commit: {t}"))
        }
        E::TransportError(t) => unavailable(t.to_string()),
        E::IoError(t) => unavailable(t.to_string()),
        E::InvalidArgs(m) => Error::invalid(format!("etcd options: {m}")),
        E::InvalidUri(u) => Error::invalid(format!("etcd endpoint is not a valid URI: {u}")),
        other if phase == Phase::Connect => unavailable(other.to_string()),
        other => Error::backend(BACKEND, other),
    }
}

/// The error for a call that did not finish within its timeout.
fn timeout_err(what: &str, phase: Phase, timeout: Duration, endpoints: &str) -> Error {
    let message = format!(
        "{what} got no answer within {timeout:?} from etcd at {endpoints}; \
         check that the cluster is running, reachable and has a leader"
    );
    match phase {
        Phase::Commit => Error::CommitOutcomeUnknown {
            backend: BACKEND,
            message,
        },
        _ => Error::Unavailable {
            backend: BACKEND,
            message,
        },
    }
}

/// True when the request never left this process: the TCP connection to
/// the endpoint the client picked was refused. Such a call is safe to send
/// again, even a commit; the client's balancer then picks another endpoint.
fn never_sent(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = match e {
        E::GRpcStatus(s) => Some(s),
        E::TransportError(t) => Some(t),
        E::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Most times one call is sent again after its connection was refused.
const REFUSED_RETRIES: u32 = 6;

/// Runs `call` under `timeout`, sending it again (to whichever endpoint the
/// client picks next) while a node is refusing connections.
async fn timed<T, F, Fut>(
    what: &str,
    phase: Phase,
    timeout: Duration,
    endpoints: &str,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if attempt < REFUSED_RETRIES && never_sent(&e) => {
                attempt += 1;
                let pause = Duration::from_millis(5 << attempt);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(map_err(e, phase, endpoints));
                }
                tracing::debug!(attempt, error = %e, "etcd endpoint refused the connection; retrying");
                tokio::time::sleep(pause).await;
            }
            Ok(Err(e)) => return Err(map_err(e, phase, endpoints)),
            Err(_) => return Err(timeout_err(what, phase, timeout, endpoints)),
        }
    }
}

fn read_file(what: &str, p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| {
        Error::invalid(format!(
            "TLS {what} file {} cannot be read: {e}",
            p.display()
        ))
    })
}

impl EtcdStore {
    /// Connects to the cluster and probes it.
    ///
    /// etcd-client connects lazily, so this sends one linearizable read with
    /// `options.connect_timeout`: a cluster that is down, unreachable or
    /// without a leader fails here with [`Error::Unavailable`] instead of at
    /// the first transaction. Bad options fail with [`Error::InvalidInput`].
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let endpoints = options.endpoint_list();
        if options.endpoints.is_empty() {
            return Err(Error::invalid(
                "no etcd endpoints given; pass at least one host:port (for example 127.0.0.1:2379)",
            ));
        }
        if options.max_txn_ops < 2 || options.max_request_bytes <= 2 * REQUEST_HEADROOM {
            return Err(Error::invalid(format!(
                "etcd server limits too small: max_txn_ops {} (need >= 2), max_request_bytes {} (need > {})",
                options.max_txn_ops,
                options.max_request_bytes,
                2 * REQUEST_HEADROOM
            )));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // Fail fast on a member that lost its leader instead of waiting.
            .with_require_leader(true);
        match (&options.user, &options.password) {
            (Some(u), Some(p)) => connect = connect.with_user(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err(Error::invalid("etcd auth needs both a user and a password")),
        }
        if options.ca_path.is_some() || options.cert_path.is_some() || options.key_path.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &options.ca_path {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_file(
                    "CA certificate",
                    ca,
                )?));
            }
            match (&options.cert_path, &options.key_path) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read_file("certificate", c)?,
                        read_file("key", k)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::invalid(
                        "mutual TLS needs both cert_path and key_path",
                    ))
                }
            }
            connect = connect.with_tls(tls);
        }
        let client = timed(
            "connecting",
            Phase::Connect,
            options.connect_timeout,
            &endpoints,
            || Client::connect(options.endpoints.clone(), Some(connect.clone())),
        )
        .await?;
        let caps = options.capabilities();
        // Scan pages carry up to SCAN_PAGE values of the largest size.
        let decode_limit = (SCAN_PAGE * (caps.max_value_size.unwrap_or(0) + 4096)).max(64 << 20);
        let kv = client
            .kv_client()
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(options.max_request_bytes + REQUEST_HEADROOM);
        // The probe: a linearizable read needs a live quorum with a leader.
        timed(
            "probing the cluster",
            Phase::Connect,
            options.connect_timeout,
            &endpoints,
            || {
                let mut kv = kv.clone();
                async move {
                    kv.get(
                        b"\x00eskv-probe".to_vec(),
                        Some(GetOptions::new().with_count_only()),
                    )
                    .await
                }
            },
        )
        .await?;
        let raw = Arc::new(RawStore {
            kv,
            caps,
            endpoints,
            timeout: options.request_timeout,
            max_txn_ops: options.max_txn_ops,
            max_request_bytes: options.max_request_bytes,
        });
        let (view, prefix): (Arc<dyn KvStore>, _) = match &options.key_prefix {
            Some(p) => {
                let ns = Namespaced::new(raw.clone(), p);
                let prefix: Arc<[u8]> = ns.prefix().into();
                (Arc::new(ns), Some(prefix))
            }
            None => (raw.clone(), None),
        };
        Ok(EtcdStore { raw, view, prefix })
    }

    /// The raw key prefix of the configured namespace, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        self.prefix.as_deref()
    }

    /// Deletes every key of this store's namespace in one request and
    /// returns how many were deleted. Refuses to run without a key prefix.
    pub async fn clear_namespace(&self) -> Result<u64> {
        let Some(prefix) = &self.prefix else {
            return Err(Error::invalid(
                "clear_namespace needs a key prefix; refusing to delete every key of the cluster",
            ));
        };
        let end = eskv_core::tuple::prefix_successor(prefix).unwrap_or_else(|| vec![0]);
        let resp = timed(
            "deleting a namespace",
            Phase::Read,
            self.raw.timeout,
            &self.raw.endpoints,
            || {
                let mut kv = self.raw.kv.clone();
                let (key, end) = (prefix.to_vec(), end.clone());
                async move {
                    kv.delete(key, Some(DeleteOptions::new().with_range(end)))
                        .await
                }
            },
        )
        .await?;
        Ok(resp.deleted().max(0) as u64)
    }
}

#[async_trait]
impl KvStore for EtcdStore {
    fn capabilities(&self) -> &Capabilities {
        self.view.capabilities()
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        self.view.begin().await
    }
}

#[async_trait]
impl KvStore for RawStore {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        let _span = begin_span(BACKEND).entered();
        Ok(Box::new(EtcdTxn {
            kv: self.kv.clone(),
            caps: self.caps.clone(),
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            max_txn_ops: self.max_txn_ops,
            max_request_bytes: self.max_request_bytes,
            pin: None,
            seen: HashMap::new(),
            buf: WriteBuffer::new(),
        }))
    }
}

struct EtcdTxn {
    kv: KvClient,
    caps: Capabilities,
    endpoints: String,
    timeout: Duration,
    max_txn_ops: usize,
    max_request_bytes: usize,
    /// The snapshot revision, fixed by the first read.
    pin: Option<i64>,
    /// `mod_revision` at the pin of every key read so far (0: absent).
    seen: HashMap<Vec<u8>, i64>,
    buf: WriteBuffer,
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

impl EtcdTxn {
    fn read_options(&self) -> GetOptions {
        match self.pin {
            Some(rev) => GetOptions::new().with_revision(rev),
            None => GetOptions::new(),
        }
    }

    /// Fixes the pin from the first read's response header.
    fn pin_from(&mut self, header: Option<&etcd_client::ResponseHeader>) -> Result<()> {
        if self.pin.is_none() {
            let rev = header.map(|h| h.revision()).ok_or_else(|| {
                Error::backend(BACKEND, "etcd answered a read without a response header")
            })?;
            self.pin = Some(rev);
        }
        Ok(())
    }

    /// Reads `keys` at the pin in `Txn`s of at most `max_txn_ops` gets, and
    /// records their `mod_revision`s. Returns the values in input order.
    async fn fetch(&mut self, keys: &[Vec<u8>], keys_only: bool) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.max_txn_ops) {
            let mut opts = self.read_options();
            if keys_only {
                opts = opts.with_keys_only();
            }
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(k.clone(), Some(opts.clone())))
                .collect();
            let resp = timed("a read", Phase::Read, self.timeout, &self.endpoints, || {
                let mut kv = self.kv.clone();
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
            self.pin_from(resp.header())?;
            for (k, r) in chunk.iter().zip(resp.op_responses()) {
                let kv = match r {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                };
                self.seen
                    .insert(k.clone(), kv.as_ref().map_or(0, |kv| kv.mod_revision()));
                out.push(kv.map(|kv| kv.into_key_value().1));
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
    ) -> Result<Vec<KvPair>> {
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
            let mut opts = self.read_options().with_range(end).with_limit(want as i64);
            if reverse {
                opts = opts.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            let resp = timed("a scan", Phase::Read, self.timeout, &self.endpoints, || {
                let mut kv = self.kv.clone();
                let (start, opts) = (start.clone(), opts.clone());
                async move { kv.get(start, Some(opts)).await }
            })
            .await?;
            self.pin_from(resp.header())?;
            let more = resp.more();
            let mut page = resp;
            let kvs = page.take_kvs();
            let n = kvs.len();
            for kv in kvs {
                let rev = kv.mod_revision();
                let (k, v) = kv.into_key_value();
                self.seen.insert(k.clone(), rev);
                out.push((k, v));
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
}

impl EtcdTxn {
    /// Gets and short scans in one `Txn` (one round trip, one revision).
    /// Returns `None` when they do not fit one transaction; the caller
    /// then reads them one after another.
    async fn read_many_in_one_txn(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<Option<eskv_core::ReadMany>> {
        let missing: Vec<Vec<u8>> = gets
            .iter()
            .filter(|k| !k.is_empty() && self.buf.lookup(k).is_none())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Every scan must be answered by one ranged get: a limit of at most
        // one page, so the response is complete or the limit is reached.
        let mut plans = Vec::with_capacity(scans.len());
        for (range, opts) in scans {
            let fetch = self.buf.overfetch(range, opts.limit);
            match fetch {
                Some(l) if l <= SCAN_PAGE => plans.push(if range.is_empty() || l == 0 {
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
        let mut ops: Vec<TxnOp> = missing
            .iter()
            .map(|k| TxnOp::get(k.clone(), Some(self.read_options())))
            .collect();
        for (start, end) in plans.iter().flatten().map(|((s, e), l, rev)| {
            let mut o = self
                .read_options()
                .with_range(e.clone())
                .with_limit(*l as i64);
            if *rev {
                o = o.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            (s.clone(), o)
        }) {
            ops.push(TxnOp::get(start, Some(end)));
        }
        let resp = timed("a read", Phase::Read, self.timeout, &self.endpoints, || {
            let mut kv = self.kv.clone();
            let txn = Txn::new().and_then(ops.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        self.pin_from(resp.header())?;
        let mut responses = resp.op_responses().into_iter();
        let mut fetched: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::with_capacity(missing.len());
        for k in missing {
            let kv = match responses.next() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                _ => None,
            };
            self.seen
                .insert(k.clone(), kv.as_ref().map_or(0, |kv| kv.mod_revision()));
            fetched.insert(k, kv.map(|kv| kv.into_key_value().1));
        }
        let values = gets
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.get(k).cloned().flatten(),
            })
            .collect();
        let mut rows_out = Vec::with_capacity(scans.len());
        for ((range, opts), plan) in scans.iter().zip(&plans) {
            let mut rows = Vec::new();
            if plan.is_some() {
                if let Some(TxnOpResponse::Get(g)) = responses.next() {
                    for kv in g.kvs() {
                        self.seen.insert(kv.key().to_vec(), kv.mod_revision());
                        rows.push((kv.key().to_vec(), kv.value().to_vec()));
                    }
                }
            }
            rows_out.push(self.buf.merge_scan(range, *opts, rows));
        }
        Ok(Some((values, rows_out)))
    }
}

#[async_trait]
impl KvTransaction for EtcdTxn {
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<eskv_core::ReadMany> {
        if let Some(r) = self.read_many_in_one_txn(gets, scans).await? {
            return Ok(r);
        }
        let values = if gets.is_empty() {
            Vec::new()
        } else {
            self.get_many(gets).await?
        };
        let mut rows = Vec::with_capacity(scans.len());
        for (r, o) in scans {
            rows.push(self.scan(r.clone(), *o).await?);
        }
        Ok((values, rows))
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.buf.lookup(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        if key.is_empty() {
            return Ok(None);
        }
        let opts = self.read_options();
        let mut resp = timed("a get", Phase::Read, self.timeout, &self.endpoints, || {
            let mut kv = self.kv.clone();
            let (key, opts) = (key.to_vec(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await?;
        self.pin_from(resp.header())?;
        let kv = resp.take_kvs().into_iter().next();
        self.seen
            .insert(key.to_vec(), kv.as_ref().map_or(0, |kv| kv.mod_revision()));
        Ok(kv.map(|kv| kv.into_key_value().1))
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !k.is_empty() && self.buf.lookup(k).is_none())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let values = self.fetch(&missing, false).await?;
        let fetched: HashMap<Vec<u8>, Option<Vec<u8>>> = missing.into_iter().zip(values).collect();
        Ok(keys
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.get(k).cloned().flatten(),
            })
            .collect())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        use tracing::Instrument;
        let span = scan_span(BACKEND, opts);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let fetch = self.buf.overfetch(&range, opts.limit);
        let rows = self
            .scan_snapshot(&range, opts.reverse, fetch)
            .instrument(span)
            .await?;
        Ok(self.buf.merge_scan(&range, opts, rows))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.buf.put(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.buf.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.buf.validate(key)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let writes = self.buf.writes().len();
        traced_commit(BACKEND, writes, async move {
            self.buf.check_limits(&self.caps)?;
            if self.buf.is_empty() {
                return Ok(());
            }
            let buf = std::mem::take(&mut self.buf);
            let (writes, validated) = buf.into_parts()?;
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
                return Err(Error::LimitExceeded {
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
                return Err(Error::LimitExceeded {
                    what: "bytes in one etcd transaction request".into(),
                    limit: max_bytes as u64,
                    actual: request_bytes as u64,
                });
            }

            // Compares: only a transaction that read has a snapshot to
            // defend. Keys it never read get their pinned state first.
            let mut compares = Vec::new();
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
                    compares.push(Compare::mod_revision(k.clone(), CompareOp::Equal, rev));
                }
            }

            let then: Vec<TxnOp> = writes
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => TxnOp::put(k, v, None),
                    None => TxnOp::delete(k, None),
                })
                .collect();
            // On failure, read the compared keys back to name the culprit.
            let compared: Vec<&Vec<u8>> = match self.pin {
                Some(_) => checked.iter().collect(),
                None => Vec::new(),
            };
            let or_else: Vec<TxnOp> = compared
                .iter()
                .map(|k| TxnOp::get(k.to_vec(), Some(GetOptions::new().with_keys_only())))
                .collect();
            let txn = Txn::new().when(compares).and_then(then).or_else(or_else);
            let resp = timed(
                "a commit",
                Phase::Commit,
                self.timeout,
                &self.endpoints,
                || {
                    let mut kv = self.kv.clone();
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                },
            )
            .await?;
            if resp.succeeded() {
                return Ok(());
            }
            let culprit = compared
                .into_iter()
                .zip(resp.op_responses())
                .find_map(|(k, r)| {
                    let now = match r {
                        TxnOpResponse::Get(g) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
                        _ => 0,
                    };
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
            Err(Error::conflict(culprit.unwrap_or_else(|| {
                "a key read or written by this transaction changed after its snapshot".into()
            })))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::Error as E;

    const EP: &str = "127.0.0.1:2379";

    fn status(code: tonic::Code, msg: &str) -> E {
        E::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn compacted_reads_are_retryable_conflicts() {
        let e = map_err(
            status(
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            Phase::Read,
            EP,
        );
        assert!(matches!(&e, Error::Conflict { message } if message.contains("compacted")));
        assert!(e.is_retryable());
    }

    #[test]
    fn lost_commit_answers_are_unknown_outcomes() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Unknown,
        ] {
            let e = map_err(
                status(code, "etcdserver: request timed out"),
                Phase::Commit,
                EP,
            );
            assert!(
                matches!(
                    e,
                    Error::CommitOutcomeUnknown {
                        backend: "etcd",
                        ..
                    }
                ),
                "{code:?}: {e:?}"
            );
            let e = map_err(
                status(code, "etcdserver: request timed out"),
                Phase::Read,
                EP,
            );
            assert!(matches!(e, Error::Unavailable { .. }), "{code:?}: {e:?}");
        }
        let io = || E::IoError(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(matches!(
            map_err(io(), Phase::Commit, EP),
            Error::CommitOutcomeUnknown { .. }
        ));
        assert!(matches!(
            map_err(io(), Phase::Read, EP),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            timeout_err("a commit", Phase::Commit, Duration::from_secs(1), EP),
            Error::CommitOutcomeUnknown { .. }
        ));
    }

    #[test]
    fn refused_connections_were_never_sent_so_commits_are_not_ambiguous() {
        let refused = || {
            E::GRpcStatus(tonic::Status::from_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))))
        };
        assert!(never_sent(&refused()));
        let e = map_err(refused(), Phase::Commit, EP);
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let reset = E::GRpcStatus(tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))));
        assert!(!never_sent(&reset));
        let e = map_err(reset, Phase::Commit, EP);
        assert!(matches!(e, Error::CommitOutcomeUnknown { .. }), "{e:?}");
    }

    #[test]
    fn oversized_requests_and_bad_options_are_invalid_input() {
        let e = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            Phase::Commit,
            EP,
        );
        assert!(matches!(&e, Error::InvalidInput { message } if message.contains("server_limits")));
        assert!(matches!(
            map_err(E::InvalidArgs("empty endpoints".into()), Phase::Connect, EP),
            Error::InvalidInput { .. }
        ));
    }

    #[test]
    fn the_rest_is_a_backend_error_except_at_connect() {
        let e = map_err(
            status(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            Phase::Connect,
            EP,
        );
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
        let e = map_err(status(tonic::Code::PermissionDenied, "no"), Phase::Read, EP);
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
        let e = map_err(status(tonic::Code::DataLoss, "no"), Phase::Read, EP);
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "etcd",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = map_err(E::Internal("x".into()), Phase::Read, EP);
        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
        let e = map_err(E::Internal("x".into()), Phase::Connect, EP);
        assert!(matches!(&e, Error::Unavailable { message, .. } if message.contains(EP)));
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

    #[test]
    fn capabilities_follow_server_limits() {
        let c = EtcdOptions::new([EP]).capabilities();
        assert_eq!(c.max_ops_per_txn, Some(128));
        let v = c.max_value_size.unwrap();
        assert!((1 << 20..DEFAULT_MAX_REQUEST_BYTES).contains(&v), "{v}");
        assert!(c.max_txn_bytes.unwrap() < DEFAULT_MAX_REQUEST_BYTES);
        let c = EtcdOptions::new([EP])
            .server_limits(1024, 10 << 20)
            .capabilities();
        assert_eq!(c.max_ops_per_txn, Some(1024));
        assert!(c.max_value_size.unwrap() > 6 << 20);
    }
}
