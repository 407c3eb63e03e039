//! [TiKV] backend for eskv, over `tikv-client` optimistic transactions.
//!
//! ```no_run
//! use eskv_core::{KvStore, KvStoreExt};
//! use eskv_tikv::{TikvOptions, TikvStore};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
//! let options = TikvOptions::new(["127.0.0.1:2379"])
//!     .connect_timeout(Duration::from_secs(5))
//!     .key_prefix("my-app");
//! let store = TikvStore::connect(options).await?;
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots.** [`KvStore::begin`] starts an optimistic TiKV
//!   transaction, which takes its start timestamp from PD (one round trip).
//!   Every read runs at that timestamp: snapshot isolation. Each read runs
//!   in its own read-only snapshot at that timestamp, dropped when it
//!   returns, because tikv-client caches everything a transaction (or a
//!   snapshot) reads until it ends.
//! - **Scans** are planned so that each request reads about one page from
//!   about one region, although tikv-client sends a request's whole limit
//!   to every region its range overlaps: after a first small request, the
//!   plan narrows each request's key range to a window estimated to hold
//!   one page (see `docs/DESIGN.md`, "Long scans on TiKV").
//! - **Buffered writes** live in an [`eskv_core::WriteBuffer`] until commit.
//!   tikv-client can buffer writes itself, but its scan merge lets a buffered
//!   key past a limit-truncated snapshot page jump the queue; the shared
//!   buffer gets that case right, and it also rejects empty keys.
//! - **Validation set.** At commit, validated keys go to `lock_keys`. In an
//!   optimistic transaction that adds a `Lock` mutation to the prewrite, and
//!   TiKV's prewrite fails with a write conflict if any committed write to
//!   that key is newer than the start timestamp — including the creation of
//!   a key that was absent, and a delete.
//! - **Write-write conflicts.** Written keys are prewritten as `Put`/`Del`
//!   mutations, which get the same newer-version check; a written key needs
//!   no extra lock (tikv-client skips locks on mutated keys for that reason).
//! - **Commit** is Percolator two-phase commit: prewrite (one round trip per
//!   region batch, in parallel), a commit timestamp from PD, and the commit
//!   of the primary key. Secondary keys are committed in the background.
//!   So a commit costs about three round trips.
//! - **Drop is rollback.** Transactions are opened with the drop check off
//!   ([`CheckLevel::None`]); nothing reaches TiKV before commit, so dropping
//!   an uncommitted transaction leaves nothing behind. A commit that fails
//!   with a known outcome is rolled back explicitly so its prewrite locks do
//!   not wait for their TTL.
//!
//! # Garbage collection
//!
//! TiKV keeps every version of every key until PD's GC safe point passes
//! it, and on a cluster without TiDB nothing moves the safe point: the
//! versions of the keys eskv rewrites constantly (the head on every append,
//! stream metadata, checkpoints, leases) pile up forever.
//! [`TikvStore::spawn_gc`] runs a background task that every 10 minutes
//! (by default) sets the safe point to PD's time less a lifetime (default
//! 10 minutes, [`DEFAULT_GC_LIFETIME`]); [`TikvStore::collect_garbage`]
//! runs one round. Neither runs unless called: the safe point is
//! cluster-wide, so only the owner of the cluster may move it (never do on
//! a cluster managed by TiDB, which runs its own GC).
//!
//! ```no_run
//! # use eskv_tikv::{GcOptions, TikvOptions, TikvStore};
//! # async fn f() -> eskv_core::Result<()> {
//! let store = TikvStore::connect(TikvOptions::new(["127.0.0.1:2379"])).await?;
//! let _gc = store.spawn_gc(GcOptions::default())?; // stops when dropped
//! # Ok(()) }
//! ```
//!
//! Once this process runs GC, its transactions older than the lifetime
//! (less the request timeout) fail with a retryable [`Error::Conflict`]
//! instead of reading a snapshot whose versions may be gone.
//!
//! # Errors
//!
//! Every native error goes through one mapping function:
//!
//! | tikv-client error | eskv error |
//! | --- | --- |
//! | `KeyError` with `conflict`, `retryable`, `deadlock`, `txn_not_found` or `commit_ts_expired` (also nested in `MultipleKeyErrors`, `ExtractedErrors`, `PessimisticLockError`) | [`Error::Conflict`] |
//! | `KeyError` with `already_exist`, `DuplicateKeyInsertion` | [`Error::Conflict`] ("key already exists") |
//! | `UndeterminedError` | [`Error::CommitOutcomeUnknown`] |
//! | gRPC transport, I/O, region and leader errors left over after the client's own backoff; gRPC statuses `Unavailable`, `DeadlineExceeded`, `Cancelled`, `Unknown`, `Aborted`, `ResourceExhausted` | [`Error::Unavailable`] (during commit: [`Error::CommitOutcomeUnknown`], since the primary may have been committed) |
//! | gRPC status `Internal` | [`Error::Backend`] (during commit: [`Error::CommitOutcomeUnknown`]) |
//! | anything else | [`Error::Backend`] |
//!
//! Every call is wrapped in `tokio::time::timeout`: tikv-client can hang for
//! a minute on a PD that accepts connections and never answers. A timeout is
//! [`Error::Unavailable`], or [`Error::CommitOutcomeUnknown`] during commit.
//!
//! [TiKV]: https://tikv.org
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use async_trait::async_trait;
use eskv_core::kv::{begin_span, scan_span, traced_commit};
use eskv_core::{
    Capabilities, Error, KeyRange, KvPair, KvStore, KvTransaction, Namespaced, Result, ScanOptions,
    WriteBuffer,
};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tikv_client::{
    BoundRange, CheckLevel, Config, Key, Transaction, TransactionClient, TransactionOptions,
};

mod gc;
mod paging;
pub use gc::{GcOptions, GcOutcome, DEFAULT_GC_LIFETIME, MIN_GC_LIFETIME};
use paging::SCAN_PAGE;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const BACKEND: &str = "tikv";

/// Largest value eskv writes to TiKV. TiKV's default `raft-entry-max-size`
/// is 8 MiB and its gRPC responses are capped at 10 MiB by default; 4 MiB
/// leaves room for keys and for a few values per scan page.
pub const MAX_VALUE_SIZE: usize = 4 << 20;

/// Most bytes one transaction may write (TiDB's default transaction size
/// limit is 100 MB; locks of huge transactions block readers for long).
pub const MAX_TXN_BYTES: usize = 64 << 20;

/// Connection settings for [`TikvStore::connect`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TikvOptions {
    /// PD endpoints, `host:port`. Several may be given; the client finds the
    /// PD leader through any of them.
    pub pd_endpoints: Vec<String>,
    /// CA certificate (PEM) for TLS. TLS needs all three files.
    pub ca_path: Option<PathBuf>,
    /// Client certificate (PEM) for TLS.
    pub cert_path: Option<PathBuf>,
    /// Client key (PEM) for TLS.
    pub key_path: Option<PathBuf>,
    /// Longest wait for the connection to PD. Default: 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for any one call (a read, a begin, a commit). Default:
    /// 20 s.
    pub request_timeout: Duration,
    /// Scope every key under this namespace (see [`Namespaced`]), so several
    /// applications or tenants can share one cluster.
    pub key_prefix: Option<String>,
}

impl fmt::Debug for TikvOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TikvOptions")
            .field("pd_endpoints", &self.pd_endpoints)
            .field("tls", &self.ca_path.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl TikvOptions {
    /// Options for the PD endpoints `pd_endpoints`, with default timeouts,
    /// no TLS and no key prefix.
    pub fn new<S: Into<String>>(pd_endpoints: impl IntoIterator<Item = S>) -> Self {
        TikvOptions {
            pd_endpoints: pd_endpoints.into_iter().map(Into::into).collect(),
            ca_path: None,
            cert_path: None,
            key_path: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            key_prefix: None,
        }
    }

    /// Options from a comma-separated endpoint list such as the `PD_ADDRS`
    /// environment variable (`host:port,host:port`). Blank entries are
    /// ignored.
    pub fn from_addrs(addrs: &str) -> Self {
        Self::new(
            addrs
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        )
    }

    /// Enables TLS with a CA certificate, a client certificate and its key.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.ca_path = Some(ca.into());
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

    fn endpoints(&self) -> String {
        self.pd_endpoints.join(",")
    }
}

/// A TiKV cluster as a [`KvStore`]. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct TikvStore {
    raw: Arc<RawStore>,
    /// The store users see: `raw` itself, or `raw` under the key prefix.
    view: Arc<dyn KvStore>,
    prefix: Option<Arc<[u8]>>,
}

impl fmt::Debug for TikvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TikvStore")
            .field("pd_endpoints", &self.raw.endpoints)
            .field("key_prefix", &self.raw.key_prefix)
            .finish_non_exhaustive()
    }
}

struct RawStore {
    client: TransactionClient,
    caps: Capabilities,
    endpoints: String,
    key_prefix: Option<String>,
    request_timeout: Duration,
    /// The shortest GC lifetime this process has collected with, in
    /// milliseconds; 0 while it has not run GC. Transactions older than it
    /// refuse to read (see [`gc`]).
    gc_lifetime_ms: Arc<AtomicU64>,
}

/// Where an error happened; decides how connection trouble is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting to PD: every failure means the cluster is unreachable.
    Connect,
    /// Beginning a transaction or reading: nothing was written.
    Read,
    /// Committing: a lost connection leaves the outcome unknown.
    Commit,
}

/// How a native error is classified, most decisive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Other,
    /// A server-side or protocol failure (gRPC `Internal`): a definite
    /// error while reading, but a lost answer while committing.
    Internal,
    Unavailable,
    AlreadyExists,
    Conflict,
    Undetermined,
}

fn classify_key_error(k: &tikv_client::ProtoKeyError) -> Kind {
    if k.already_exist.is_some() {
        Kind::AlreadyExists
    } else if k.conflict.is_some()
        || !k.retryable.is_empty()
        || k.deadlock.is_some()
        || k.txn_not_found.is_some()
        || k.commit_ts_expired.is_some()
    {
        Kind::Conflict
    } else {
        Kind::Other
    }
}

fn classify(e: &tikv_client::Error) -> Kind {
    use tikv_client::Error as T;
    match e {
        T::UndeterminedError(_) => Kind::Undetermined,
        T::KeyError(k) => classify_key_error(k),
        T::MultipleKeyErrors(v) | T::ExtractedErrors(v) => {
            v.iter().map(classify).max().unwrap_or(Kind::Other)
        }
        T::PessimisticLockError { inner, .. } => classify(inner),
        T::DuplicateKeyInsertion => Kind::AlreadyExists,
        // A lock of another transaction that could not be resolved in time,
        // or our own lock rolled back by another transaction: retryable.
        T::ResolveLockError(_) | T::TxnNotFound(_) => Kind::Conflict,
        T::Grpc(_) | T::Io(_) | T::Canceled(_) | T::Channel(_) => Kind::Unavailable,
        // tonic reports a connection lost mid-call (reset, closed by the
        // peer, an h2 error) as a status, `Unknown` or `Internal`, rather
        // than as a transport error; tikv-client only marks a commit
        // undetermined for the latter (`Committer::commit_primary`).
        T::GrpcAPI(status) => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted => Kind::Unavailable,
            tonic::Code::Internal => Kind::Internal,
            _ => Kind::Other,
        },
        // Region and leader errors are retried by the client's own backoff;
        // one that still surfaces means the cluster is not serving the range.
        T::RegionError(r) if r.raft_entry_too_large.is_none() => Kind::Unavailable,
        T::LeaderNotFound { .. }
        | T::RegionForKeyNotFound { .. }
        | T::RegionForRangeNotFound { .. }
        | T::RegionNotFoundInResponse { .. }
        | T::NoCurrentRegions
        | T::EntryNotFoundInRegionCache => Kind::Unavailable,
        _ => Kind::Other,
    }
}

/// The one place where tikv-client errors become eskv errors.
fn map_err(e: tikv_client::Error, phase: Phase, endpoints: &str) -> Error {
    match (classify(&e), phase) {
        (Kind::Undetermined, _) => Error::CommitOutcomeUnknown {
            backend: BACKEND,
            message: e.to_string(),
        },
        (Kind::Conflict, _) => Error::conflict(format!(
            "TiKV rejected the transaction with a retryable error: {e}"
        )),
        (Kind::AlreadyExists, _) => Error::conflict(format!(
            "TiKV reports that a key the transaction inserts already exists: {e}"
        )),
        (Kind::Unavailable | Kind::Internal, Phase::Commit) => Error::CommitOutcomeUnknown {
            backend: BACKEND,
            message: format!(
                "connection to TiKV failed during commit ({e}); the commit may or may not \
                 have been applied; PD endpoints {endpoints}"
            ),
        },
        (Kind::Unavailable, _) | (Kind::Other | Kind::Internal, Phase::Connect) => {
            Error::Unavailable {
                backend: BACKEND,
                message: format!(
                    "cannot reach the TiKV cluster through PD endpoints {endpoints}: {e}"
                ),
            }
        }
        (Kind::Other | Kind::Internal, _) => Error::backend(BACKEND, e),
    }
}

/// The error for a call that did not finish within its timeout.
fn timeout_err(what: &str, phase: Phase, timeout: Duration, endpoints: &str) -> Error {
    let message = format!(
        "{what} got no answer within {timeout:?} (PD endpoints {endpoints}); \
         check that PD and TiKV are running and reachable"
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

async fn timed<T>(
    what: &str,
    phase: Phase,
    timeout: Duration,
    endpoints: &str,
    fut: impl Future<Output = tikv_client::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_err(e, phase, endpoints)),
        Err(_) => Err(timeout_err(what, phase, timeout, endpoints)),
    }
}

impl TikvStore {
    /// Connects to the cluster behind `options.pd_endpoints`.
    ///
    /// Fails with [`Error::Unavailable`] within `options.connect_timeout`
    /// when PD cannot be reached or does not answer, and with
    /// [`Error::InvalidInput`] for bad options (no endpoints, missing TLS
    /// files).
    pub async fn connect(options: TikvOptions) -> Result<Self> {
        let endpoints = options.endpoints();
        if options.pd_endpoints.is_empty() {
            return Err(Error::invalid(
                "no PD endpoints given; pass at least one host:port (for example 127.0.0.1:2379)",
            ));
        }
        let mut config = Config::default().with_timeout(options.request_timeout);
        // Values up to MAX_VALUE_SIZE, several per scan page.
        config = config.with_grpc_max_decoding_message_size(64 << 20);
        match (&options.ca_path, &options.cert_path, &options.key_path) {
            (None, None, None) => {}
            (Some(ca), Some(cert), Some(key)) => {
                for (what, p) in [("CA certificate", ca), ("certificate", cert), ("key", key)] {
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(Error::invalid(format!(
                            "TLS {what} file {} cannot be read: {e}",
                            p.display()
                        )));
                    }
                }
                config = config.with_security(ca, cert, key);
            }
            _ => {
                return Err(Error::invalid(
                    "TLS needs all three of ca_path, cert_path and key_path",
                ))
            }
        }
        let client = timed(
            "connecting to PD",
            Phase::Connect,
            options.connect_timeout,
            &endpoints,
            TransactionClient::new_with_config(options.pd_endpoints.clone(), config),
        )
        .await?;
        let raw = Arc::new(RawStore {
            client,
            caps: Capabilities::unlimited(BACKEND)
                .with_max_value_size(MAX_VALUE_SIZE)
                .with_max_txn_bytes(MAX_TXN_BYTES),
            endpoints,
            key_prefix: options.key_prefix.clone(),
            request_timeout: options.request_timeout,
            gc_lifetime_ms: Arc::new(AtomicU64::new(0)),
        });
        let (view, prefix): (Arc<dyn KvStore>, _) = match &options.key_prefix {
            Some(p) => {
                let ns = Namespaced::new(raw.clone(), p);
                let prefix: Arc<[u8]> = ns.prefix().into();
                (Arc::new(ns), Some(prefix))
            }
            None => (raw.clone(), None),
        };
        Ok(TikvStore { raw, view, prefix })
    }

    /// The raw key prefix of the configured namespace, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        self.prefix.as_deref()
    }

    /// Runs one round of MVCC garbage collection: sets the cluster's GC safe
    /// point to PD's current time less `lifetime`, after resolving the
    /// locks older than it (tikv-client's `TransactionClient::gc`). TiKV
    /// then drops every version older than the safe point, keeping, per
    /// key, the newest one at or before it (unless it is a deletion).
    ///
    /// Without this (or TiDB, which runs its own GC), TiKV keeps every
    /// version forever, and the keys eskv rewrites on every append or
    /// acknowledgement (the head, stream metadata, checkpoints, leases)
    /// grow without bound. [`spawn_gc`](Self::spawn_gc) runs it
    /// periodically.
    ///
    /// **The safe point is cluster-wide**, not per key prefix: run GC only
    /// on a cluster whose every user tolerates `lifetime` (never on one
    /// managed by TiDB, which runs its own GC), and give every process the
    /// same lifetime. From the first call on, a transaction of this store
    /// older than `lifetime` (less the request timeout) fails its reads and
    /// commit with a retryable [`Error::Conflict`] rather than read a
    /// snapshot GC may have removed.
    ///
    /// Fails with [`Error::InvalidInput`] for a lifetime under
    /// [`MIN_GC_LIFETIME`] or twice the request timeout, and with
    /// [`Error::Unavailable`] when PD or TiKV cannot be reached.
    pub async fn collect_garbage(&self, lifetime: Duration) -> Result<GcOutcome> {
        let raw = &self.raw;
        gc::check_lifetime(lifetime, raw.request_timeout)?;
        // Guard this process's transactions before anything is collected.
        let ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let _ = raw
            .gc_lifetime_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                (cur == 0 || ms < cur).then_some(ms)
            });
        let now = timed(
            "reading PD's time",
            Phase::Read,
            raw.request_timeout,
            &raw.endpoints,
            raw.client.current_timestamp(),
        )
        .await?;
        let Some(safe_point) = gc::safe_point(&now, lifetime) else {
            return Err(Error::invalid(format!(
                "GC lifetime {lifetime:?} reaches back before PD's clock started"
            )));
        };
        use tikv_client::TimestampExt;
        let outcome = GcOutcome {
            safe_point: safe_point.version(),
            safe_point_ms: safe_point.physical,
            advanced: false,
        };
        // Resolving every old lock of the cluster may take longer than one
        // request; it must finish within the lifetime.
        let advanced = timed(
            "a GC round",
            Phase::Read,
            lifetime.max(raw.request_timeout),
            &raw.endpoints,
            raw.client.gc(safe_point),
        )
        .await?;
        tracing::debug!(
            backend = BACKEND,
            safe_point = outcome.safe_point,
            advanced,
            "GC round finished"
        );
        Ok(GcOutcome {
            advanced,
            ..outcome
        })
    }

    /// Runs [`collect_garbage`](Self::collect_garbage) with
    /// `options.lifetime` now and then every `options.interval`, on a Tokio
    /// task, until the returned [`GcTask`] is dropped or stopped. A failed
    /// round is logged (`tracing` warning) and retried at the next
    /// interval. Read the caveats of `collect_garbage` first: the safe
    /// point is cluster-wide.
    ///
    /// Fails with [`Error::InvalidInput`] for a lifetime that
    /// `collect_garbage` would refuse, a zero interval, or when called
    /// outside a Tokio runtime.
    pub fn spawn_gc(&self, options: GcOptions) -> Result<GcTask> {
        gc::check_lifetime(options.lifetime, self.raw.request_timeout)?;
        if options.interval.is_zero() {
            return Err(Error::invalid("GC interval must not be zero"));
        }
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::invalid("spawn_gc must be called within a Tokio runtime"))?;
        let store = self.clone();
        let handle = rt.spawn(async move {
            let mut tick = tokio::time::interval(options.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.collect_garbage(options.lifetime).await {
                    tracing::warn!(backend = BACKEND, error = %e, "GC round failed");
                }
            }
        });
        Ok(GcTask { handle })
    }

    /// Deletes every key of this store's namespace, in transactions of a few
    /// hundred keys each, and returns how many were deleted. Refuses to run
    /// without a key prefix, which would wipe the whole cluster.
    pub async fn clear_namespace(&self) -> Result<u64> {
        if self.prefix.is_none() {
            return Err(Error::invalid(
                "clear_namespace needs a key prefix; refusing to delete every key of the cluster",
            ));
        }
        let mut deleted = 0u64;
        loop {
            let mut txn = self.view.begin().await?;
            let rows = txn
                .scan(KeyRange::prefix(b""), ScanOptions::forward(Some(SCAN_PAGE)))
                .await?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            deleted += rows.len() as u64;
            for (k, _) in rows {
                txn.delete(k);
            }
            txn.commit().await?;
        }
    }
}

/// The background GC task of [`TikvStore::spawn_gc`]. Dropping it stops
/// the task (a round in progress is abandoned; the next one, by any
/// process, redoes it).
#[derive(Debug)]
pub struct GcTask {
    handle: tokio::task::JoinHandle<()>,
}

impl GcTask {
    /// Stops the task.
    pub fn stop(self) {}
}

impl Drop for GcTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

// The public store is a wrapper over `view`: it forwards every method,
// defaults included, and the lint keeps it that way.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for TikvStore {
    fn capabilities(&self) -> &Capabilities {
        self.view.capabilities()
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        self.view.begin().await
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.view.commit_watch()
    }
}

#[async_trait]
impl KvStore for RawStore {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        use tracing::Instrument;
        let options = TransactionOptions::new_optimistic().drop_check(CheckLevel::None);
        // Before the timestamp is asked for, so the age never undercounts.
        let started = Instant::now();
        let txn = timed(
            "beginning a transaction",
            Phase::Read,
            self.request_timeout,
            &self.endpoints,
            self.client.begin_with_options(options),
        )
        .instrument(begin_span(BACKEND))
        .await?;
        Ok(Box::new(TikvTxn {
            client: self.client.clone(),
            start: txn.start_timestamp(),
            txn,
            buf: WriteBuffer::new(),
            caps: self.caps.clone(),
            endpoints: self.endpoints.clone(),
            timeout: self.request_timeout,
            stride: None,
            started,
            gc_lifetime_ms: self.gc_lifetime_ms.clone(),
        }))
    }
}

/// One eskv transaction. Reads never go through `txn`: tikv-client keeps
/// every row a transaction reads in its buffer until the transaction ends
/// (`Buffer::update_cache`), so a long scan in one transaction would hold
/// the whole range in memory. Each read runs in a fresh read-only
/// [`tikv_client::Snapshot`] at the transaction's start timestamp instead
/// (the same snapshot, by MVCC), which is dropped, with its cache, as soon
/// as the read returns. `txn` only carries the writes and locks at commit.
struct TikvTxn {
    client: TransactionClient,
    start: tikv_client::Timestamp,
    txn: Transaction,
    buf: WriteBuffer,
    caps: Capabilities,
    endpoints: String,
    timeout: Duration,
    /// The key density seen by the last scan, to size the next one's
    /// windows (see [`paging`]).
    stride: Option<paging::Stride>,
    /// Just before the start timestamp was asked for.
    started: Instant,
    /// The store's GC lifetime, if it runs GC (see [`gc`]).
    gc_lifetime_ms: Arc<AtomicU64>,
}

fn pair(p: tikv_client::KvPair) -> KvPair {
    let (k, v): (Key, Vec<u8>) = p.into();
    (k.into(), v)
}

fn bound(b: Bound<Vec<u8>>) -> Bound<Key> {
    match b {
        Bound::Included(k) => Bound::Included(k.into()),
        Bound::Excluded(k) => Bound::Excluded(k.into()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Fails when a transaction started `started` ago may see a snapshot that
/// GC with the lifetime in `gc_lifetime_ms` removed.
fn check_age(started: Instant, gc_lifetime_ms: &AtomicU64, slack: Duration) -> Result<()> {
    let ms = gc_lifetime_ms.load(Ordering::SeqCst);
    let lifetime = (ms > 0).then(|| Duration::from_millis(ms));
    let age = started.elapsed();
    match lifetime {
        Some(l) if gc::snapshot_too_old(age, Some(l), slack) => Err(gc::too_old_error(age, l)),
        _ => Ok(()),
    }
}

impl TikvTxn {
    fn check_age(&self) -> Result<()> {
        check_age(self.started, &self.gc_lifetime_ms, self.timeout)
    }

    /// A read-only view at the transaction's snapshot, for one read.
    fn snapshot(&self) -> tikv_client::Snapshot {
        self.client.snapshot(
            self.start.clone(),
            TransactionOptions::new_optimistic().drop_check(CheckLevel::None),
        )
    }

    /// Reads up to `limit` snapshot rows of `range` (all if `None`), in
    /// requests planned by [`paging::ScanPlan`]: each reads about one page
    /// from about one region, in its own snapshot.
    async fn scan_snapshot(
        &mut self,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<KvPair>> {
        let mut out: Vec<KvPair> = Vec::new();
        let mut plan = paging::ScanPlan::new(range.clone(), reverse, limit, self.stride.take());
        while let Some(req) = plan.next_request() {
            self.check_age()?;
            let br = BoundRange::new(bound(req.range.start.clone()), bound(req.range.end.clone()));
            let mut snap = self.snapshot();
            let want = req.limit as u32;
            let fetch = async move {
                let rows: Vec<tikv_client::KvPair> = if reverse {
                    snap.scan_reverse(br, want).await?.collect()
                } else {
                    snap.scan(br, want).await?.collect()
                };
                Ok(rows.into_iter().map(pair).collect::<Vec<KvPair>>())
            };
            let page = timed("a scan", Phase::Read, self.timeout, &self.endpoints, fetch).await?;
            plan.record(&req, &page);
            out.extend(page);
        }
        self.stride = plan.stride().cloned();
        Ok(out)
    }
}

#[async_trait]
impl KvTransaction for TikvTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.buf.lookup(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        if key.is_empty() {
            return Ok(None);
        }
        self.check_age()?;
        let mut snap = self.snapshot();
        let key = key.to_vec();
        timed(
            "a get",
            Phase::Read,
            self.timeout,
            &self.endpoints,
            async move { snap.get(key).await },
        )
        .await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !k.is_empty() && self.buf.lookup(k).is_none())
            .cloned()
            .collect();
        let fetched: HashMap<Vec<u8>, Vec<u8>> = if missing.is_empty() {
            HashMap::new()
        } else {
            self.check_age()?;
            let mut snap = self.snapshot();
            let fetch = async move { Ok(snap.batch_get(missing).await?.map(pair).collect()) };
            timed(
                "a batch get",
                Phase::Read,
                self.timeout,
                &self.endpoints,
                fetch,
            )
            .await?
        };
        Ok(keys
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.get(k).cloned(),
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

    async fn commit(self: Box<Self>) -> Result<()> {
        let TikvTxn {
            mut txn,
            buf,
            caps,
            endpoints,
            timeout,
            started,
            gc_lifetime_ms,
            ..
        } = *self;
        traced_commit(BACKEND, buf.writes().len(), async move {
            buf.check_limits(&caps)?;
            if buf.is_empty() {
                return Ok(());
            }
            // A write-write conflict with a deletion older than the safe
            // point would go unseen: GC drops such deletions.
            check_age(started, &gc_lifetime_ms, timeout)?;
            let (writes, validated) = buf.into_parts()?;
            // Move the buffered writes into tikv-client's buffer. These calls
            // touch only the local buffer of an optimistic transaction.
            let staged: tikv_client::Result<()> = async {
                for (k, v) in writes {
                    match v {
                        Some(v) => txn.put(k, v).await?,
                        None => txn.delete(k).await?,
                    }
                }
                let locks: Vec<Vec<u8>> = validated.into_iter().filter(|k| !k.is_empty()).collect();
                if !locks.is_empty() {
                    txn.lock_keys(locks).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = staged {
                return Err(map_err(e, Phase::Read, &endpoints));
            }
            let res = timed("a commit", Phase::Commit, timeout, &endpoints, txn.commit()).await;
            match res {
                Ok(_) => Ok(()),
                Err(e @ Error::CommitOutcomeUnknown { .. }) => Err(e),
                Err(e) => {
                    // The commit failed before the primary key was committed:
                    // release the prewrite locks now rather than leave them
                    // to their TTL. Best effort; the error that matters is e.
                    let _ = tokio::time::timeout(timeout, txn.rollback()).await;
                    Err(e)
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_client::Error as T;
    use tikv_client::ProtoKeyError;

    const EP: &str = "127.0.0.1:2379";

    fn conflict_key_error() -> T {
        let k = ProtoKeyError {
            conflict: Some(Default::default()),
            retryable: "write conflict".into(),
            ..Default::default()
        };
        T::KeyError(Box::new(k))
    }

    fn abort_key_error() -> T {
        let k = ProtoKeyError {
            abort: "assertion failed".into(),
            ..Default::default()
        };
        T::KeyError(Box::new(k))
    }

    fn map(e: T, phase: Phase) -> Error {
        map_err(e, phase, EP)
    }

    #[test]
    fn conflicts_are_retryable_conflicts_even_nested() {
        for phase in [Phase::Read, Phase::Commit] {
            assert!(matches!(
                map(conflict_key_error(), phase),
                Error::Conflict { .. }
            ));
        }
        let only_retryable = T::KeyError(Box::new(ProtoKeyError {
            retryable: "txn lock not found".into(),
            ..Default::default()
        }));
        assert!(matches!(
            map(only_retryable, Phase::Commit),
            Error::Conflict { .. }
        ));
        let nested = T::ExtractedErrors(vec![
            abort_key_error(),
            T::MultipleKeyErrors(vec![conflict_key_error()]),
        ]);
        let e = map(nested, Phase::Commit);
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
        assert!(e.is_retryable());
        let pessimistic = T::PessimisticLockError {
            inner: Box::new(T::MultipleKeyErrors(vec![conflict_key_error()])),
            success_keys: vec![],
        };
        assert!(matches!(
            map(pessimistic, Phase::Commit),
            Error::Conflict { .. }
        ));
        let deadlock = T::KeyError(Box::new(ProtoKeyError {
            deadlock: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(deadlock, Phase::Commit),
            Error::Conflict { .. }
        ));
    }

    #[test]
    fn already_exists_is_a_conflict_that_says_so() {
        let k = T::KeyError(Box::new(ProtoKeyError {
            already_exist: Some(Default::default()),
            ..Default::default()
        }));
        let e = map(T::MultipleKeyErrors(vec![k]), Phase::Commit);
        match e {
            Error::Conflict { message } => assert!(message.contains("already exists")),
            other => panic!("got {other:?}"),
        }
        let e = map(T::DuplicateKeyInsertion, Phase::Commit);
        assert!(matches!(e, Error::Conflict { ref message } if message.contains("already exists")));
    }

    #[test]
    fn undetermined_is_commit_outcome_unknown() {
        let e = map(
            T::UndeterminedError(Box::new(T::StringError("lost".into()))),
            Phase::Commit,
        );
        assert!(
            matches!(
                e,
                Error::CommitOutcomeUnknown {
                    backend: "tikv",
                    ..
                }
            ),
            "{e:?}"
        );
        // Undetermined wins over a conflict in the same batch.
        let e = map(
            T::ExtractedErrors(vec![
                conflict_key_error(),
                T::UndeterminedError(Box::new(T::StringError("lost".into()))),
            ]),
            Phase::Commit,
        );
        assert!(matches!(e, Error::CommitOutcomeUnknown { .. }), "{e:?}");
    }

    #[test]
    fn connection_trouble_is_unavailable_or_unknown_during_commit() {
        let io = || {
            T::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))
        };
        let e = map(io(), Phase::Read);
        match &e {
            Error::Unavailable { backend, message } => {
                assert_eq!(*backend, "tikv");
                assert!(message.contains(EP), "{message}");
            }
            other => panic!("got {other:?}"),
        }
        assert!(matches!(
            map(io(), Phase::Commit),
            Error::CommitOutcomeUnknown { .. }
        ));
        let status = T::GrpcAPI(tonic::Status::unavailable("down"));
        assert!(matches!(
            map(status, Phase::Read),
            Error::Unavailable { .. }
        ));
        let leader = T::RegionError(Box::new(tikv_client::ProtoRegionError {
            not_leader: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(leader, Phase::Read),
            Error::Unavailable { .. }
        ));
        // At connect time every failure means "cannot reach the cluster".
        let e = map(
            T::InternalError {
                message: "PD cluster failed to respond".into(),
            },
            Phase::Connect,
        );
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    }

    /// A connection lost mid-RPC reaches tikv-client as a gRPC status with
    /// code `Unknown` or `Internal` (hyper/h2 failures inside tonic), not
    /// as a transport error, so tikv-client does not mark the commit
    /// undetermined itself. During commit the primary may have been
    /// committed: the outcome is unknown, never a definite failure.
    #[test]
    fn lost_connection_statuses_during_commit_are_unknown_outcomes() {
        for status in [
            tonic::Status::unknown("transport error: connection reset"),
            tonic::Status::internal("h2 protocol error: stream no longer needed"),
        ] {
            let code = status.code();
            let e = map(T::GrpcAPI(status.clone()), Phase::Commit);
            assert!(
                matches!(
                    e,
                    Error::CommitOutcomeUnknown {
                        backend: "tikv",
                        ..
                    }
                ),
                "{code:?} during commit: {e:?}"
            );
            assert!(e.is_retryable());
            // Nested the way the client collects per-region results.
            let e = map(
                T::ExtractedErrors(vec![abort_key_error(), T::GrpcAPI(status.clone())]),
                Phase::Commit,
            );
            assert!(
                matches!(e, Error::CommitOutcomeUnknown { .. }),
                "{code:?} nested during commit: {e:?}"
            );
        }
        // Outside a commit nothing was written: an unknown status is the
        // cluster being unreachable, an internal one a server error.
        let e = map(T::GrpcAPI(tonic::Status::unknown("reset")), Phase::Read);
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let e = map(T::GrpcAPI(tonic::Status::internal("bug")), Phase::Read);
        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
    }

    #[test]
    fn the_rest_is_a_backend_error() {
        let e = map(abort_key_error(), Phase::Commit);
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "tikv",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        let e = map(
            T::GrpcAPI(tonic::Status::invalid_argument("bad")),
            Phase::Read,
        );
        assert!(matches!(e, Error::Backend { .. }), "{e:?}");
        let too_large = T::RegionError(Box::new(tikv_client::ProtoRegionError {
            raft_entry_too_large: Some(Default::default()),
            ..Default::default()
        }));
        assert!(matches!(
            map(too_large, Phase::Commit),
            Error::Backend { .. }
        ));
    }

    #[test]
    fn timeouts_name_endpoints_and_duration() {
        let e = timeout_err("a get", Phase::Read, Duration::from_secs(2), EP);
        let s = e.to_string();
        assert!(matches!(e, Error::Unavailable { .. }));
        assert!(s.contains(EP) && s.contains("2s"), "{s}");
        assert!(matches!(
            timeout_err("a commit", Phase::Commit, Duration::from_secs(2), EP),
            Error::CommitOutcomeUnknown { .. }
        ));
    }

    #[test]
    fn transactions_older_than_the_gc_lifetime_refuse_to_run() {
        let slack = Duration::from_secs(2);
        let lifetime = AtomicU64::new(0);
        let old = Instant::now()
            .checked_sub(Duration::from_secs(61))
            .expect("the monotonic clock has run for a minute");
        // No GC from this process: any age is fine.
        assert!(check_age(old, &lifetime, slack).is_ok());
        lifetime.store(60_000, Ordering::SeqCst);
        let e = check_age(old, &lifetime, slack).unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(check_age(Instant::now(), &lifetime, slack).is_ok());
        // Within the slack of the lifetime counts as too old.
        let almost = Instant::now()
            .checked_sub(Duration::from_secs(59))
            .expect("the monotonic clock has run for a minute");
        assert!(check_age(almost, &lifetime, slack).is_err());
    }

    #[test]
    fn options_parse_pd_addrs() {
        let o = TikvOptions::from_addrs(" 10.0.0.1:2379, ,10.0.0.2:2379 ");
        assert_eq!(o.pd_endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(o.endpoints(), "10.0.0.1:2379,10.0.0.2:2379");
    }
}
