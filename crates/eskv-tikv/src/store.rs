//! The store: connecting through PD, the namespace, and garbage collection.

use async_trait::async_trait;
use eskv_core::kv::BufferedTxn;
use eskv_core::{Capabilities, KvError, KvResult, KvStore, KvTransaction};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tikv_client::{CheckLevel, Config, TransactionClient, TransactionOptions};

use crate::error::timed;
use crate::gc::{self, GcOptions, GcOutcome};

use crate::options::TikvOptions;

use crate::txn::TikvSnapshot;
use crate::{BACKEND, MAX_TXN_BYTES, MAX_VALUE_SIZE};
use eskv_core::kv::remote::{ClusterView, Phase};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A TiKV cluster as a [`KvStore`]. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct TikvStore {
    raw: Arc<RawStore>,
    /// The store users see: `raw` itself, or `raw` under the key prefix.
    view: ClusterView,
}

impl fmt::Debug for TikvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TikvStore")
            .field("pd_endpoints", &self.raw.endpoints)
            .field("key_prefix", &self.raw.key_prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RawStore {
    pub(crate) client: TransactionClient,
    pub(crate) caps: Capabilities,
    pub(crate) endpoints: String,
    pub(crate) key_prefix: Option<String>,
    pub(crate) request_timeout: Duration,
    /// The shortest GC lifetime this process has collected with, in
    /// milliseconds; 0 while it has not run GC. Transactions older than it
    /// refuse to read (see [`gc`]).
    pub(crate) gc_lifetime_ms: Arc<AtomicU64>,
}

impl TikvStore {
    /// Connects to the cluster behind the PD endpoints of `options`.
    ///
    /// Fails with [`KvError::Unavailable`] within `options.remote.connect_timeout`
    /// when PD cannot be reached or does not answer, and with
    /// [`KvError::InvalidInput`] for bad options (no endpoints, missing TLS
    /// files).
    pub async fn connect(options: TikvOptions) -> KvResult<Self> {
        let endpoints = options.endpoints();
        if options.remote.endpoints.is_empty() {
            return Err(KvError::invalid(
                "no PD endpoints given; pass at least one host:port (for example 127.0.0.1:2379)",
            ));
        }
        let mut config = Config::default().with_timeout(options.remote.request_timeout);
        // Values up to MAX_VALUE_SIZE, several per scan page.
        config = config.with_grpc_max_decoding_message_size(64 << 20);
        let tls = &options.remote.tls;
        match (&tls.ca, &tls.cert, &tls.key) {
            (None, None, None) => {}
            (Some(ca), Some(cert), Some(key)) => {
                for (what, p) in [("CA certificate", ca), ("certificate", cert), ("key", key)] {
                    if let Err(e) = std::fs::metadata(p) {
                        return Err(KvError::invalid(format!(
                            "TLS {what} file {} cannot be read: {e}",
                            p.display()
                        )));
                    }
                }
                config = config.with_security(ca, cert, key);
            }
            _ => {
                return Err(KvError::invalid(
                    "TLS needs all three of remote.tls.ca, remote.tls.cert and remote.tls.key (see TikvOptions::tls)",
                ))
            }
        }
        let client = timed(
            "connecting to PD",
            Phase::Connect,
            options.remote.connect_timeout,
            &endpoints,
            TransactionClient::new_with_config(options.remote.endpoints.clone(), config),
        )
        .await?;
        let raw = Arc::new(RawStore {
            client,
            caps: Capabilities::unlimited(BACKEND)
                .with_max_value_size(MAX_VALUE_SIZE)
                .with_max_txn_bytes(MAX_TXN_BYTES),
            endpoints,
            key_prefix: options.remote.key_prefix.clone(),
            request_timeout: options.remote.request_timeout,
            gc_lifetime_ms: Arc::new(AtomicU64::new(0)),
        });
        let view = ClusterView::new(raw.clone(), options.remote.key_prefix.as_deref());
        Ok(TikvStore { raw, view })
    }

    /// The raw key prefix of the configured namespace, if any.
    pub fn prefix(&self) -> Option<&[u8]> {
        self.view.prefix()
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
    /// commit with a retryable [`KvError::Conflict`] rather than read a
    /// snapshot GC may have removed.
    ///
    /// Fails with [`KvError::InvalidInput`] for a lifetime under
    /// [`MIN_GC_LIFETIME`](crate::MIN_GC_LIFETIME) or twice the request timeout, and with
    /// [`KvError::Unavailable`] when PD or TiKV cannot be reached.
    pub async fn collect_garbage(&self, lifetime: Duration) -> KvResult<GcOutcome> {
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
            return Err(KvError::invalid(format!(
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
    /// Fails with [`KvError::InvalidInput`] for a lifetime that
    /// `collect_garbage` would refuse, a zero interval, or when called
    /// outside a Tokio runtime.
    pub fn spawn_gc(&self, options: GcOptions) -> KvResult<GcTask> {
        gc::check_lifetime(options.lifetime, self.raw.request_timeout)?;
        if options.interval.is_zero() {
            return Err(KvError::invalid("GC interval must not be zero"));
        }
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| KvError::invalid("spawn_gc must be called within a Tokio runtime"))?;
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
    pub async fn clear_namespace(&self) -> KvResult<u64> {
        self.view.namespace_to_clear()?.clear().await
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
        self.view.store().capabilities()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        self.view.store().begin().await
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.view.store().commit_watch()
    }
}

#[async_trait]
impl KvStore for RawStore {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        BufferedTxn::begin(&self.caps, async {
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
            .await?;
            Ok(TikvSnapshot {
                client: self.client.clone(),
                start: txn.start_timestamp(),
                txn,
                endpoints: self.endpoints.clone(),
                timeout: self.request_timeout,
                stride: None,
                started,
                gc_lifetime_ms: self.gc_lifetime_ms.clone(),
            })
        })
        .await
    }
}
