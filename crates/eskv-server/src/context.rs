//! State shared by every service: the stores (one per tenant), the
//! credentials, the limits, the shutdown signal and the per-connection
//! subscription counts.

use crate::config::{credential_table, ServerConfig, ServerLimits};
use eskv_core::{EventStore, Namespaced};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataMap;

pub(crate) struct Shared {
    root: EventStore,
    /// `authorization` header value -> tenant (`None`: the whole store).
    /// Empty when the server is open.
    credentials: HashMap<String, Option<String>>,
    /// Opened tenant stores. One `EventStore` per tenant, so that all of
    /// a tenant's appends share one group-commit queue and wake its
    /// subscriptions.
    tenants: tokio::sync::Mutex<HashMap<String, EventStore>>,
    pub(crate) limits: ServerLimits,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Open subscriptions per connection (by peer address).
    subscriptions: Arc<Mutex<HashMap<Option<SocketAddr>, usize>>>,
}

/// Why a request gets no store.
pub(crate) enum Denied {
    /// No or wrong credentials.
    Unauthenticated,
    /// The tenant's store cannot be opened.
    Store(eskv_core::Error),
}

impl Shared {
    pub(crate) fn new(
        root: EventStore,
        config: &ServerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            root,
            credentials: credential_table(&config.credentials),
            tenants: tokio::sync::Mutex::new(HashMap::new()),
            limits: config.limits.clone(),
            shutdown,
            subscriptions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The store the request's credentials open: the whole store on an
    /// open server or for a credential without tenant, else the tenant's
    /// namespace (a `Namespaced` view, whose keys no other tenant can
    /// reach).
    pub(crate) async fn store_for(&self, metadata: &MetadataMap) -> Result<EventStore, Denied> {
        if self.credentials.is_empty() {
            return Ok(self.root.clone());
        }
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(Denied::Unauthenticated)?;
        let tenant = match self.credentials.get(header.trim()) {
            None => return Err(Denied::Unauthenticated),
            Some(None) => return Ok(self.root.clone()),
            Some(Some(t)) => t,
        };
        let mut tenants = self.tenants.lock().await;
        if let Some(s) = tenants.get(tenant) {
            return Ok(s.clone());
        }
        let kv = Arc::new(Namespaced::new(self.root.kv().clone(), tenant));
        let store = EventStore::open_with(kv, self.root.options().clone())
            .await
            .map_err(Denied::Store)?;
        tenants.insert(tenant.clone(), store.clone());
        Ok(store)
    }

    /// Takes one of the connection's subscription slots, or `None` when
    /// all are in use. The slot is given back when the guard drops.
    pub(crate) fn subscription_slot(&self, peer: Option<SocketAddr>) -> Option<SubscriptionSlot> {
        let mut m = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer).or_insert(0);
        if *n >= self.limits.max_subscriptions_per_connection {
            return None;
        }
        *n += 1;
        Some(SubscriptionSlot {
            counts: self.subscriptions.clone(),
            peer,
        })
    }

    /// True once shutdown has begun.
    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A subscription's place in its connection's count.
pub(crate) struct SubscriptionSlot {
    counts: Arc<Mutex<HashMap<Option<SocketAddr>, usize>>>,
    peer: Option<SocketAddr>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Wakes a live reader when its store may have new events: at once for
/// appends through this server (the store's head watch), and by polling,
/// with backoff, for appends by other processes on a shared backend.
pub(crate) struct Waker {
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    poll: Duration,
    max: Duration,
}

impl Waker {
    pub(crate) fn new(store: &EventStore, shutdown: watch::Receiver<bool>) -> Self {
        // On an embedded backend every append goes through this process,
        // and so through the head watch: the timer is only a safety net.
        let caps = store.kv().capabilities();
        let max = if caps.single_process {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        Waker {
            head: store.watch_head(),
            shutdown,
            poll: Duration::from_millis(5),
            max,
        }
    }

    /// Marks the current head as seen; call before reading.
    pub(crate) fn seen(&mut self) {
        self.head.borrow_and_update();
        self.poll = Duration::from_millis(5);
    }

    /// Waits for a possible new event, the poll timer, shutdown, or the
    /// client going away (`closed`). Returns false when the reader should
    /// stop.
    pub(crate) async fn wait(&mut self, closed: impl std::future::Future<Output = ()>) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        let sleep = self.poll;
        tokio::select! {
            r = self.head.changed() => {
                if r.is_err() {
                    tokio::time::sleep(sleep).await;
                }
                true
            }
            _ = tokio::time::sleep(sleep) => {
                self.poll = (self.poll * 2).min(self.max);
                true
            }
            _ = self.shutdown.changed() => false,
            _ = closed => false,
        }
    }
}

/// Completes once shutdown has begun (at once when it already has).
pub(crate) async fn shutdown_begun(shutdown: &watch::Receiver<bool>) {
    let mut rx = shutdown.clone();
    // The sender lives as long as the server: an error cannot come before
    // shutdown, and would mean the server is gone anyway.
    let _ = rx.wait_for(|s| *s).await;
}

/// Why a message was not sent.
pub(crate) enum Unsent {
    /// The client went away.
    Gone,
    /// Shutdown began first.
    ShuttingDown,
}

/// Sends `item` to a live stream's client, unless shutdown has begun or
/// begins while the client's queue is full (a client that stopped reading
/// must not hold shutdown up).
pub(crate) async fn send_live<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), Unsent> {
    tokio::select! {
        biased;
        _ = shutdown_begun(shutdown) => Err(Unsent::ShuttingDown),
        r = tx.send(item) => r.map_err(|_| Unsent::Gone),
    }
}

/// How long a message may wait for room in the client's queue once
/// shutdown has begun.
const SEND_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// Sends `item`: waits for room in the client's queue, but once shutdown
/// has begun only briefly (a client that stopped reading must not hold
/// shutdown up). False when it was not sent.
pub(crate) async fn send_patiently<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    let send = tx.send(item);
    tokio::pin!(send);
    tokio::select! {
        r = &mut send => return r.is_ok(),
        _ = shutdown_begun(shutdown) => {}
    }
    matches!(
        tokio::time::timeout(SEND_AFTER_SHUTDOWN, send).await,
        Ok(Ok(()))
    )
}

/// Ends a response stream with `status`, as [`send_patiently`] sends.
pub(crate) async fn finish<T>(
    tx: &mpsc::Sender<Result<T, tonic::Status>>,
    status: tonic::Status,
    shutdown: &watch::Receiver<bool>,
) {
    send_patiently(tx, Err(status), shutdown).await;
}
