//! The event store: appends with group commit, reads, and the type registry.
//!
//! # Why the guarantees hold
//!
//! Every append transaction reads the head key, writes it, and puts it in
//! its validation set. By the `KvStore` contract two transactions with
//! overlapping snapshots that both write the head cannot both commit, so
//! committed appends form a chain: each one's snapshot contains all earlier
//! ones. From that chain:
//!
//! - **Gapless positions in commit order.** An append takes positions
//!   `head+1 ..= head+n` from its snapshot's head; the next committed append
//!   saw this head, so positions are contiguous and increase with commit
//!   order.
//! - **No skipped events.** A reader's snapshot contains a prefix of the
//!   chain, so an event committed later always gets a position above the
//!   head that reader saw.
//! - **Exact DCB conditions and stream locks.** The condition and expected
//!   version are checked on the append's snapshot; any append committed
//!   after that snapshot would have changed the head and made this commit
//!   fail (it is then retried from a fresh snapshot). So the check sees
//!   every event that precedes the append, and nothing that does not exist:
//!   no conflict is ever reported that is not there.
//!
//! Serializing on one key costs throughput on distributed backends; group
//! commit pays it back: concurrent appends in this process are queued, and
//! one leader runs them all in one KV transaction, each with its own
//! outcome. See `docs/DESIGN.md` for the costs per backend.

use crate::error::{Error, Result};
use crate::event::Position;
use crate::kv::{KvError, KvStore};
use crate::layout::{self};
use crate::retry::retry;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

mod append;
mod batch;
mod compact;
mod group_commit;
mod import;
mod lifecycle;
mod live;
mod options;
mod paged;
mod read;
mod subject_keys;
mod types;

pub use compact::CompactReport;
use import::format_error;
pub use import::ImportMarker;
pub use lifecycle::{ForgetOutcome, LogTruncation};
pub use options::{
    AppendRequest, AppendResult, EventStoreOptions, Limits, LogFilter, PersonalParts, ReadOptions,
    ReadResult, ReadStreamOptions, StreamInfo, StreamRead,
};

/// Bytes allowed per key for a namespace prefix in size estimates.
const KEY_OVERHEAD: usize = 64;

struct Pending {
    req: AppendRequest,
    cost: Cost,
    reply: group_commit::Reply,
    /// Unique per request (see `append::NEXT_TICKET`).
    ticket: u64,
}

/// KV operations and bytes an append will need, to size group commits
/// within the backend's limits.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    ops: usize,
    bytes: usize,
}

/// The event store. Cheap to clone; clones share the group-commit queue.
/// Safe to share between any number of tasks.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.inner.kv.capabilities().backend)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    kv: Arc<dyn KvStore>,
    opts: EventStoreOptions,
    queue: Mutex<VecDeque<Pending>>,
    /// Held by the task running a batch, for as long as it runs: one
    /// batch at a time per store.
    leader: Arc<tokio::sync::Mutex<()>>,
    known_types: RwLock<HashSet<String>>,
    head_tx: watch::Sender<Position>,
    /// True while a commit relay runs for this handle (see
    /// `subscription::relay_commits`).
    relay_running: std::sync::atomic::AtomicBool,
}

impl EventStore {
    /// Opens the event store on `kv` with default options, creating the
    /// layout's format marker on first use.
    pub async fn open(kv: Arc<dyn KvStore>) -> Result<Self> {
        Self::open_with(kv, EventStoreOptions::default()).await
    }

    /// Opens the event store on `kv`.
    ///
    /// Fails with [`Error::IncompatibleFormat`] when the store was written
    /// in another event layout (`eskv-events/<n>`, see
    /// [`layout::FORMAT`]): export it with the eskv version that wrote it
    /// and import the export with this one. Fails with [`Error::Corrupt`]
    /// when the format marker is not an eskv one at all. Nothing is
    /// written in either case. On a store opened read-only (whose commits
    /// fail with [`Error::ReadOnly`]) nothing is written, not even the
    /// format marker. Upcasters with a gap in their versions are
    /// [`Error::InvalidInput`].
    pub async fn open_with(kv: Arc<dyn KvStore>, opts: EventStoreOptions) -> Result<Self> {
        opts.upcasters.validate()?;
        let head = retry(opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let vals = txn
                .get_many(&[
                    layout::format_key(),
                    layout::head_key(),
                    layout::store_key_check_key(),
                ])
                .await?;
            let mut write = false;
            match vals[0].as_deref() {
                Some(f) if f == layout::FORMAT => {}
                Some(f) => return Err(format_error(f)),
                None => {
                    txn.put(layout::format_key(), layout::FORMAT.to_vec());
                    write = true;
                }
            }
            // A wrong store key is refused here, before anything is
            // written with it; the first open with a key records its check
            // (unless it only looks: `bind_store_key`).
            if let Some(key) = &opts.store_key {
                match vals[2].as_deref() {
                    Some(check) => crate::crypto::check_key(key, check)?,
                    None if !opts.bind_store_key => {}
                    None => {
                        txn.put(
                            layout::store_key_check_key(),
                            crate::crypto::check_value(key),
                        );
                        write = true;
                    }
                }
            }
            if write {
                match txn.commit().await {
                    // A read-only store is read as it is: an empty
                    // store, never initialised.
                    Ok(()) | Err(KvError::ReadOnly { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            vals[1]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))
        })
        .await?;
        let (head_tx, _) = watch::channel(head);
        Ok(EventStore {
            inner: Arc::new(Inner {
                kv,
                opts,
                queue: Mutex::new(VecDeque::new()),
                leader: Arc::new(tokio::sync::Mutex::new(())),
                known_types: RwLock::new(HashSet::new()),
                head_tx,
                relay_running: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The underlying KV store.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.inner.kv
    }

    /// The options in force.
    pub fn options(&self) -> &EventStoreOptions {
        &self.inner.opts
    }

    /// A receiver that sees the head after every append committed through
    /// this handle (or its clones). Appends by other processes are not
    /// seen; poll [`head`](Self::head) for those.
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.head_tx.subscribe()
    }

    /// The head watch's sender, for the commit relay.
    pub(crate) fn head_sender(&self) -> &watch::Sender<Position> {
        &self.inner.head_tx
    }

    /// Publishes a head read elsewhere (by the commit relay).
    pub(crate) fn publish_head(&self, head: Position) {
        self.inner.publish_head(head)
    }

    /// Set while the commit relay runs.
    pub(crate) fn relay_running(&self) -> &std::sync::atomic::AtomicBool {
        &self.inner.relay_running
    }

    /// A reference that does not keep the store open (for background
    /// tasks: the store closes when the application drops its handles).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The store behind `weak`, while any handle is left.
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<EventStore> {
        weak.upgrade().map(|inner| EventStore { inner })
    }
}

fn batch_lost() -> Error {
    Error::backend(
        "eskv",
        "the group commit running this append was lost (task aborted)",
    )
}
