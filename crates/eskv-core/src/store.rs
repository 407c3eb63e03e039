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

use crate::envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event::{NewEvent, Position, RecordedEvent, StreamVersion};
use crate::kv::{Capabilities, KeyRange, KvPair, KvStore, KvTransaction, ScanOptions};
use crate::layout::{self, IdEntry, Index, StreamMeta};
use crate::query::{AppendCondition, Query, QueryItem};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};
use ulid::Ulid;

/// Size and count limits checked before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most bytes of data plus metadata in one event. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Most bytes of data plus metadata in one append. Default 16 MiB.
    pub max_append_bytes: usize,
    /// Most events in one append. Default 10,000.
    pub max_events_per_append: usize,
    /// Most tags on one event. Default 32.
    pub max_tags_per_event: usize,
    /// Longest tag, in bytes. Default 256.
    pub max_tag_len: usize,
    /// Longest event type, in bytes. Default 128.
    pub max_type_len: usize,
    /// Longest stream id, in bytes. Default 256.
    pub max_stream_id_len: usize,
    /// Most items in a query. Default 64.
    pub max_query_items: usize,
    /// Most types in one query item. Default 64. Each type of an item
    /// without tags is one index scan, so this bounds a query's reads
    /// together with `max_query_items`.
    pub max_types_per_query_item: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1 << 20,
            max_append_bytes: 16 << 20,
            max_events_per_append: 10_000,
            max_tags_per_event: 32,
            max_tag_len: 256,
            max_type_len: 128,
            max_stream_id_len: 256,
            max_query_items: 64,
            max_types_per_query_item: 64,
        }
    }
}

/// Options for [`EventStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventStoreOptions {
    /// Input limits.
    pub limits: Limits,
    /// Most appends one group commit may carry. Default 256.
    pub max_batch: usize,
    /// How often a batch is retried after a retryable KV error (conflict
    /// with another process, unknown commit outcome). Default 32.
    pub max_retries: u32,
}

impl Default for EventStoreOptions {
    fn default() -> Self {
        EventStoreOptions {
            limits: Limits::default(),
            max_batch: 256,
            max_retries: 32,
        }
    }
}

impl EventStoreOptions {
    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the largest group-commit batch (1 disables batching).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Sets the retry budget.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
}

/// One append: events, optionally to a stream with an expected version,
/// optionally with a DCB condition. Both checks may be combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// The events, stored atomically at consecutive positions.
    pub events: Vec<NewEvent>,
    /// Target stream and expected version.
    pub stream: Option<(String, ExpectedVersion)>,
    /// DCB condition.
    pub condition: Option<AppendCondition>,
}

impl AppendRequest {
    /// An unconditional append of `events`.
    pub fn new(events: Vec<NewEvent>) -> Self {
        AppendRequest {
            events,
            stream: None,
            condition: None,
        }
    }

    /// Appends to `stream`, expecting `expected`.
    pub fn stream(mut self, stream: impl Into<String>, expected: ExpectedVersion) -> Self {
        self.stream = Some((stream.into(), expected));
        self
    }

    /// Adds a DCB condition.
    pub fn condition(mut self, condition: AppendCondition) -> Self {
        self.condition = Some(condition);
        self
    }
}

/// What an append did. A replayed (idempotent) append returns the original
/// result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppendResult {
    /// Position of the first event.
    pub first_position: Position,
    /// Position of the last event; the store's head right after the append.
    pub last_position: Position,
    /// The stream's version after the append, for stream appends.
    pub stream_version: Option<StreamVersion>,
}

impl AppendResult {
    /// Positions of the appended events.
    pub fn positions(&self) -> std::ops::RangeInclusive<Position> {
        self.first_position..=self.last_position
    }
}

/// Options for reads by position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// First position to consider (inclusive). Default: the start when
    /// reading forwards, the head when reading backwards.
    pub from: Option<Position>,
    /// Read in descending position order.
    pub backwards: bool,
    /// Return at most this many events.
    pub limit: Option<usize>,
    /// Ignore events after this position (time travel: fold up to `until`
    /// to get the state as it was there).
    pub until: Option<Position>,
}

impl ReadOptions {
    /// Read everything, forwards.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start strictly after `pos` (forwards).
    pub fn after(pos: Position) -> Self {
        ReadOptions {
            from: Some(pos.saturating_add(1)),
            ..Self::default()
        }
    }

    /// Starts at `pos` (inclusive).
    pub fn from(mut self, pos: Position) -> Self {
        self.from = Some(pos);
        self
    }

    /// Reads backwards.
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// Limits the count.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Ignores events after `pos`.
    pub fn until(mut self, pos: Position) -> Self {
        self.until = Some(pos);
        self
    }
}

/// Options for [`EventStore::read_stream`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStreamOptions {
    /// First version to return (inclusive). Default: 1 forwards, the last
    /// version backwards.
    pub from_version: Option<StreamVersion>,
    /// Read in descending version order.
    pub backwards: bool,
    /// Return at most this many events.
    pub limit: Option<usize>,
    /// Ignore events after this global position (time travel).
    pub until: Option<Position>,
}

impl ReadStreamOptions {
    /// The whole stream, forwards.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts at version `v`.
    pub fn from_version(mut self, v: StreamVersion) -> Self {
        self.from_version = Some(v);
        self
    }

    /// Reads backwards.
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// Limits the count.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Ignores events after global position `pos`.
    pub fn until(mut self, pos: Position) -> Self {
        self.until = Some(pos);
        self
    }
}

/// Filters for [`EventStore::read_all_filtered`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only events matching this query (types and tags).
    pub query: Option<Query>,
    /// Only events of streams whose id starts with this.
    pub stream_prefix: Option<String>,
}

impl LogFilter {
    /// Events matching `query`.
    pub fn query(query: Query) -> Self {
        LogFilter {
            query: Some(query),
            stream_prefix: None,
        }
    }

    /// Events of streams whose id starts with `prefix`.
    pub fn stream_prefix(prefix: impl Into<String>) -> Self {
        LogFilter {
            query: None,
            stream_prefix: Some(prefix.into()),
        }
    }

    /// True when `e` passes the filter.
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        self.query.as_ref().is_none_or(|q| q.matches(e))
            && self.stream_prefix.as_ref().is_none_or(|p| {
                e.stream
                    .as_ref()
                    .is_some_and(|s| s.stream_id.starts_with(p.as_str()))
            })
    }
}

/// Events, plus the position through which the read is consistent: pass
/// [`consistent_through`](Self::consistent_through) as the `after` of an
/// [`AppendCondition`] built from this read (same query), and the append
/// fails if any matching event exists that the read did not return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// The events, in the requested order.
    pub events: Vec<RecordedEvent>,
    /// The position up to which this read reflects the log, so that
    /// passing it back as a condition's `after` is always safe.
    ///
    /// **Forwards**: every matching event at positions `from ..=
    /// consistent_through` is in `events`, and none after it is. It is the
    /// store's head at the read's snapshot, capped by `until`, unless
    /// `limit` cut the read short (as many events returned as the limit
    /// allows): then it is the position of the last event returned (with
    /// `limit(0)`, the position before `from`). Matching events the read
    /// did not reach are thus all after it, and a condition with this
    /// `after` fails on them. Continue a paged read with
    /// `ReadOptions::after(consistent_through)`.
    ///
    /// **Backwards**: the upper end of the range read: the snapshot's
    /// head, capped by `from` and `until`. `events` are the latest
    /// matching events at or below it (all of them unless `limit` cut the
    /// read); a condition with this `after` fails on any matching event
    /// above it. Matching events below those returned are not seen by the
    /// decision and not checked by the condition either (a condition only
    /// looks after `after`); read forwards when a decision needs them.
    ///
    /// Never above the snapshot's head; for an unbounded read it is the
    /// head.
    pub consistent_through: Position,
}

/// [`ReadResult::consistent_through`] of a read with `opts` at a snapshot
/// whose head is `head`, which returned `events`.
fn consistent_through(opts: ReadOptions, head: Position, events: &[RecordedEvent]) -> Position {
    let top = opts.until.map_or(head, |u| u.min(head));
    if opts.backwards {
        return opts.from.map_or(top, |f| f.min(top));
    }
    match opts.limit {
        Some(l) if events.len() >= l => events
            .last()
            .map_or(opts.from.unwrap_or(1).saturating_sub(1), |e| e.position)
            .min(top),
        _ => top,
    }
}

/// A stream's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInfo {
    /// Stream id.
    pub stream_id: String,
    /// True when the stream has events.
    pub exists: bool,
    /// Current version (0 when it does not exist).
    pub version: StreamVersion,
    /// Position of its last event.
    pub last_position: Option<Position>,
}

/// Bytes allowed per key for a namespace prefix in size estimates.
const KEY_OVERHEAD: usize = 64;

struct Pending {
    req: AppendRequest,
    cost: Cost,
    reply: oneshot::Sender<Result<AppendResult>>,
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

/// Per-batch state while a group commit is built.
struct Batch<'a> {
    /// The head at the batch's snapshot.
    head0: Position,
    head: Position,
    strict: bool,
    now_ms: u64,
    /// Idempotency entries written by earlier requests of this batch.
    ids: HashMap<Ulid, IdEntry>,
    /// Stream heads written by earlier requests of this batch.
    streams: HashMap<String, StreamMeta>,
    /// Events appended by earlier requests of this batch, with positions.
    appended: Vec<(Position, &'a NewEvent)>,
}

/// How many index entries a condition probe reads in the batch's one read.
const PROBE_PAGE: usize = 32;

/// The index scans that decide whether `query` matches anything at or
/// after `lo`: one per type for type-only items, one on the first tag for
/// items with tags (checked against the entry's type and tags).
fn condition_probes(query: &Query) -> Vec<(Index<'_>, &QueryItem)> {
    let mut out = Vec::new();
    for item in &query.items {
        match item.tags.first() {
            None => out.extend(item.types.iter().map(|t| (Index::Type(t), item))),
            Some(tag) => out.push((Index::Tag(tag), item)),
        }
    }
    out
}

/// True when an index entry of `index` (with value `v`) matches `item`.
fn probe_keeps(index: Index<'_>, item: &QueryItem, v: &[u8]) -> Result<bool> {
    match index {
        // The index of the item's only tag, any type: every entry matches.
        Index::Tag(_) if item.types.is_empty() && item.tags.len() == 1 => Ok(true),
        Index::Tag(_) => {
            let (t, tags) = layout::parse_tag_entry(v)?;
            Ok(item.matches_parts(&t, &tags))
        }
        _ => Ok(true),
    }
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
    /// format marker.
    pub async fn open_with(kv: Arc<dyn KvStore>, opts: EventStoreOptions) -> Result<Self> {
        let head = retry(opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let vals = txn
                .get_many(&[layout::format_key(), layout::head_key()])
                .await?;
            match vals[0].as_deref() {
                Some(f) if f == layout::FORMAT => {}
                Some(f) => return Err(format_error(f)),
                None => {
                    txn.put(layout::format_key(), layout::FORMAT.to_vec());
                    match txn.commit().await {
                        // A read-only store is read as it is: an empty
                        // store, never initialised.
                        Ok(()) | Err(Error::ReadOnly { .. }) => {}
                        Err(e) => return Err(e),
                    }
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

    /// Appends `events` under an optional DCB condition.
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult> {
        let mut req = AppendRequest::new(events);
        req.condition = condition;
        self.submit(req).await
    }

    /// Appends `events` to `stream` if its version matches `expected`.
    pub async fn append_to_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.submit(AppendRequest::new(events).stream(stream, expected))
            .await
    }

    /// Runs one append request. Concurrent calls are grouped into one KV
    /// transaction; each keeps its own outcome.
    pub async fn submit(&self, mut req: AppendRequest) -> Result<AppendResult> {
        let cost = self.prepare(&mut req)?;
        let (reply, mut rx) = oneshot::channel();
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Pending { req, cost, reply });
        loop {
            tokio::select! {
                biased;
                res = &mut rx => return res.unwrap_or_else(|_| Err(batch_lost())),
                guard = self.inner.leader.clone().lock_owned() => {
                    let batch = self.inner.take_batch();
                    if batch.is_empty() {
                        // Another leader took ours; its answer is coming.
                        drop(guard);
                        return rx.await.unwrap_or_else(|_| Err(batch_lost()));
                    }
                    // The batch runs in its own task, which also holds the
                    // leader lock until the batch is done: a cancelled
                    // caller neither abandons the other appends of the
                    // batch nor lets a second batch start beside it. This
                    // caller's own answer comes through `rx`, like every
                    // other waiter's.
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        inner.run_batch(batch).await;
                        drop(guard);
                    });
                }
            }
        }
    }

    /// Validates and canonicalizes an append; nothing is written on error.
    fn prepare(&self, req: &mut AppendRequest) -> Result<Cost> {
        let l = &self.inner.opts.limits;
        let caps = self.inner.kv.capabilities();
        if req.events.is_empty() {
            return Err(Error::invalid("an append needs at least one event"));
        }
        if req.events.len() > l.max_events_per_append {
            return Err(Error::limit(
                "events in one append",
                l.max_events_per_append,
                req.events.len(),
            ));
        }
        let mut ids = HashSet::with_capacity(req.events.len());
        let mut total = 0usize;
        let mut cost = Cost { ops: 2, bytes: 16 };
        for e in &mut req.events {
            e.canonicalize();
            validate_type(&e.event_type, l)?;
            if e.tags.len() > l.max_tags_per_event {
                return Err(Error::limit(
                    format!("tags on event {}", e.id),
                    l.max_tags_per_event,
                    e.tags.len(),
                ));
            }
            for t in &e.tags {
                validate_tag(t, l)?;
            }
            let size = e.data.len() + e.metadata.byte_len();
            if size > l.max_event_bytes {
                return Err(Error::limit(
                    format!("bytes in event {}", e.id),
                    l.max_event_bytes,
                    size,
                ));
            }
            total += size;
            if !ids.insert(e.id) {
                return Err(Error::invalid(format!(
                    "event id {} appears twice in one append; every event needs its own id",
                    e.id
                )));
            }
            // Upper bounds of what `event_rows` writes for this event; each
            // key may also carry a namespace prefix (KEY_OVERHEAD).
            let stream_len = req.stream.as_ref().map_or(0, |(s, _)| s.len());
            let tags_len: usize = e.tags.iter().map(|t| t.len() + 4).sum();
            let envelope = size + e.event_type.len() + tags_len + stream_len + 96;
            if let Some(max) = caps.max_value_size {
                if envelope > max {
                    return Err(Error::limit(
                        format!("bytes of one stored event on the {} backend", caps.backend),
                        max,
                        envelope,
                    ));
                }
            }
            let rows = 3 + e.tags.len() + if req.stream.is_some() { 2 } else { 0 };
            let keys = 48 + e.event_type.len() + tags_len + 2 * stream_len + rows * KEY_OVERHEAD;
            let tag_values = e.tags.len() * (e.event_type.len() + tags_len + 8);
            cost.ops += rows;
            cost.bytes += envelope + keys + tag_values + 64;
        }
        if total > l.max_append_bytes {
            return Err(Error::limit(
                "bytes in one append",
                l.max_append_bytes,
                total,
            ));
        }
        if let Some((stream, expected)) = &req.stream {
            validate_stream_id(stream, l)?;
            if *expected == ExpectedVersion::Exact(0) {
                return Err(Error::invalid(
                    "expected version 0 does not exist: versions start at 1; use ExpectedVersion::NoStream for a new stream",
                ));
            }
            cost.ops += 1;
            cost.bytes += stream.len() + 32 + KEY_OVERHEAD;
        }
        if let Some(c) = &mut req.condition {
            self.validate_query(&mut c.fail_if_events_match)?;
        }
        if let Some(max) = caps.max_ops_per_txn {
            if cost.ops > max {
                return Err(Error::limit(
                    format!(
                        "key operations for this append on the {} backend (split it into smaller appends)",
                        caps.backend
                    ),
                    max,
                    cost.ops,
                ));
            }
        }
        if let Some(max) = caps.max_txn_bytes {
            if cost.bytes > max {
                return Err(Error::limit(
                    format!("bytes for this append on the {} backend", caps.backend),
                    max,
                    cost.bytes,
                ));
            }
        }
        Ok(cost)
    }

    fn validate_query(&self, q: &mut Query) -> Result<()> {
        let l = &self.inner.opts.limits;
        if q.items.is_empty() {
            return Err(Error::invalid(
                "a query needs at least one item; use Query::all() to match every event",
            ));
        }
        if q.items.len() > l.max_query_items {
            return Err(Error::limit(
                "items in one query",
                l.max_query_items,
                q.items.len(),
            ));
        }
        for item in &mut q.items {
            if item.types.len() > l.max_types_per_query_item {
                return Err(Error::limit(
                    "types in one query item (split the item into several items with fewer types each)",
                    l.max_types_per_query_item,
                    item.types.len(),
                ));
            }
            if item.tags.len() > l.max_tags_per_event {
                return Err(Error::limit(
                    "tags in one query item (an item matches only events carrying all its tags, and an event carries at most max_tags_per_event)",
                    l.max_tags_per_event,
                    item.tags.len(),
                ));
            }
            item.types.sort();
            item.types.dedup();
            item.tags.sort();
            item.tags.dedup();
            for t in &item.types {
                validate_type(t, l)?;
            }
            for t in &item.tags {
                validate_tag(t, l)?;
            }
        }
        Ok(())
    }

    /// Writes events exactly as they were recorded elsewhere, for restores
    /// and migrations: ids, positions, stream versions, metadata and
    /// recorded times are kept. The events must continue this store's log
    /// (the first at head + 1, consecutive) and each stream's versions.
    /// One transaction: all or nothing. Returns the new head.
    pub async fn import(&self, events: &[RecordedEvent]) -> Result<Position> {
        let l = &self.inner.opts.limits;
        let mut ids = HashSet::with_capacity(events.len());
        for e in events {
            validate_type(&e.event_type, l)?;
            for t in &e.tags {
                validate_tag(t, l)?;
            }
            if let Some(s) = &e.stream {
                validate_stream_id(&s.stream_id, l)?;
            }
            if !ids.insert(e.id) {
                return Err(Error::invalid(format!(
                    "event id {} appears twice in the import",
                    e.id
                )));
            }
        }
        let Some(first) = events.first() else {
            return self.head().await;
        };
        let kv = &self.inner.kv;
        let head = retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let head = read_head(&mut *txn).await?;
            // Ids first: an import whose commit was applied but reported
            // unknown finds every id at its position and is a replay.
            let id_keys: Vec<Vec<u8>> = events.iter().map(|e| layout::id_key(e.id)).collect();
            let found = txn.get_many(&id_keys).await?;
            if found.iter().any(Option::is_some) {
                let mut replay = true;
                for ((e, f), k) in events.iter().zip(&found).zip(&id_keys) {
                    let mut tags = e.tags.clone();
                    tags.sort();
                    tags.dedup();
                    let at = match f {
                        Some(v) => {
                            let x = IdEntry::decode(layout::open_index_value(k, v)?)?;
                            Some((x.position, x.digest))
                        }
                        None => None,
                    };
                    replay &= at
                        == Some((
                            e.position,
                            layout::content_digest(&tags, &e.data, &e.metadata),
                        ));
                }
                if replay {
                    return Ok(head);
                }
                let (e, _) = events
                    .iter()
                    .zip(&found)
                    .find(|(_, f)| f.is_some())
                    .unwrap_or((first, &None));
                return Err(Error::IdempotencyViolation {
                    message: format!("event id {} already exists in the target store", e.id),
                });
            }
            if first.position != head + 1 {
                return Err(Error::invalid(format!(
                    "the import starts at position {}, but this store's next position is {}",
                    first.position,
                    head + 1
                )));
            }
            let mut versions: std::collections::HashMap<&str, u64> =
                std::collections::HashMap::new();
            let mut rows = Vec::with_capacity(events.len() * 6);
            for (i, e) in events.iter().enumerate() {
                let pos = head + 1 + i as u64;
                if e.position != pos {
                    return Err(Error::invalid(format!(
                        "import positions must be consecutive: expected {pos}, found {}",
                        e.position
                    )));
                }
                let sref = match &e.stream {
                    Some(s) => {
                        let cur = match versions.get(s.stream_id.as_str()) {
                            Some(v) => *v,
                            None => read_stream_meta(&mut *txn, &s.stream_id)
                                .await?
                                .map_or(0, |m| m.version),
                        };
                        if s.version != cur + 1 {
                            return Err(Error::invalid(format!(
                                "event {pos} has version {} of stream '{}', expected {}",
                                s.version,
                                s.stream_id,
                                cur + 1
                            )));
                        }
                        versions.insert(&s.stream_id, s.version);
                        Some((s.stream_id.as_str(), s.version))
                    }
                    None => None,
                };
                let mut tags = e.tags.clone();
                tags.sort();
                tags.dedup();
                let new = NewEvent {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    tags,
                    data: e.data.clone(),
                    metadata: e.metadata.clone(),
                };
                event_rows(
                    &mut rows,
                    pos,
                    &new,
                    e.recorded_at_ms,
                    sref,
                    (head + 1, head + events.len() as u64),
                )?;
            }
            let last = head + events.len() as u64;
            for (s, v) in &versions {
                let last_position = events
                    .iter()
                    .rev()
                    .find(|e| e.stream.as_ref().is_some_and(|r| r.stream_id == *s))
                    .map_or(last, |e| e.position);
                rows.push((
                    layout::stream_key(s),
                    StreamMeta {
                        version: *v,
                        last_position,
                    }
                    .encode(),
                ));
            }
            for (k, v) in rows {
                txn.put(k, v);
            }
            txn.put(layout::head_key(), layout::u64_value(last));
            txn.validate(layout::head_key());
            txn.commit().await?;
            Ok(last)
        })
        .await?;
        self.inner.publish_head(head);
        Ok(head)
    }

    /// The last assigned position (0 when the store is empty).
    pub async fn head(&self) -> Result<Position> {
        let mut txn = self.inner.kv.begin().await?;
        read_head(&mut *txn).await
    }

    /// DCB read: the events matching `query`, plus the position through
    /// which the read is consistent
    /// ([`ReadResult::consistent_through`]), to pass back as the `after`
    /// of a condition on the same query.
    pub async fn read(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        let mut q = query.clone();
        self.validate_query(&mut q)?;
        let mut txn = self.inner.kv.begin().await?;
        if !opts.backwards && !q.is_all() && opts.limit != Some(0) {
            return read_forward(&mut *txn, &q, opts).await;
        }
        let head = read_head(&mut *txn).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let positions = find_positions(
            &mut *txn,
            &q,
            lo,
            hi,
            Order::new(opts.backwards, self.inner.kv.capabilities()),
            opts.limit,
        )
        .await?;
        let events = load_events(&mut *txn, &positions).await?;
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads the global log.
    pub async fn read_all(&self, opts: ReadOptions) -> Result<ReadResult> {
        self.read_all_filtered(&LogFilter::default(), opts).await
    }

    /// Reads the global log, keeping only events that pass `filter`. A
    /// query filter uses the type and tag indexes; a stream prefix is
    /// checked on each event.
    pub async fn read_all_filtered(
        &self,
        filter: &LogFilter,
        opts: ReadOptions,
    ) -> Result<ReadResult> {
        if let Some(q) = &filter.query {
            let mut q = q.clone();
            self.validate_query(&mut q)?;
            if filter.stream_prefix.is_none() {
                return self.read(&q, opts).await;
            }
        }
        let mut txn = self.inner.kv.begin().await?;
        let head = read_head(&mut *txn).await?;
        let Some((mut lo, mut hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let want = opts.limit.unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let page = opts.limit.map_or(1024, |l| l.clamp(16, 1024));
        while events.len() < want && lo <= hi {
            let rows = scan_page(
                &mut *txn,
                layout::log_range,
                lo,
                hi,
                page,
                Order::new(opts.backwards, self.inner.kv.capabilities()),
            )
            .await?;
            let n = rows.len();
            for (k, v) in rows {
                let pos = layout::parse_log_key(&k)?;
                let e = envelope::decode(&v, pos)?;
                if opts.backwards {
                    hi = pos.saturating_sub(1);
                } else {
                    lo = pos + 1;
                }
                if filter.matches(&e) {
                    events.push(e);
                    if events.len() == want {
                        break;
                    }
                }
            }
            if n < page || (opts.backwards && hi == 0) {
                break;
            }
        }
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads a category: the events of every stream whose id, up to its
    /// first `-`, is `category` (like EventStoreDB's `$ce-` streams, but
    /// from an index, without copying events).
    pub async fn read_category(&self, category: &str, opts: ReadOptions) -> Result<ReadResult> {
        validate_stream_id(category, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let head = read_head(&mut *txn).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let positions = scan_index(
            &mut *txn,
            Index::Category(category),
            lo,
            hi,
            Order::new(opts.backwards, self.inner.kv.capabilities()),
            opts.limit,
            |_| Ok(true),
        )
        .await?;
        let events = load_events(&mut *txn, &positions).await?;
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads a stream by version.
    pub async fn read_stream(
        &self,
        stream: &str,
        opts: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        // The stream index alone bounds the read (no metadata round trip):
        // versions run 1..=n, so an open upper bound stops at the last.
        let (lo, hi) = if opts.backwards {
            (1, opts.from_version.unwrap_or(StreamVersion::MAX))
        } else {
            (opts.from_version.unwrap_or(1).max(1), StreamVersion::MAX)
        };
        if lo > hi || opts.limit == Some(0) {
            return Ok(Vec::new());
        }
        let until = opts.until.unwrap_or(Position::MAX);
        let mut positions = Vec::new();
        let want = opts.limit.unwrap_or(usize::MAX);
        // Positions grow with versions, so `until` only trims.
        let limit = if opts.until.is_some() && opts.backwards {
            None
        } else {
            opts.limit
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let rows = match limit {
            Some(page) if order == Order::BackwardByWindows => {
                // Versions are dense: the window below the stream's last
                // version holds exactly the events asked for.
                let Some(meta) = read_stream_meta(&mut *txn, stream).await? else {
                    return Ok(Vec::new());
                };
                let hi = hi.min(meta.version);
                if lo > hi {
                    return Ok(Vec::new());
                }
                let range = |a, b| layout::stream_event_range(stream, a, b);
                scan_page(&mut *txn, range, lo, hi, page, order).await?
            }
            _ => {
                txn.scan(
                    layout::stream_event_range(stream, lo, hi),
                    ScanOptions {
                        limit,
                        reverse: opts.backwards,
                    },
                )
                .await?
            }
        };
        for (k, v) in rows {
            let pos = layout::parse_u64(layout::open_index_value(&k, &v)?, "stream index entry")?;
            if pos > until {
                if opts.backwards {
                    continue;
                }
                break;
            }
            positions.push(pos);
            if positions.len() == want {
                break;
            }
        }
        load_events(&mut *txn, &positions).await
    }

    /// The first version of `stream` whose event lies after global position
    /// `after` (the stream's version + 1 if none does). A binary search
    /// over the stream index: O(log n) reads, for resuming stream readers
    /// from a position.
    pub async fn stream_version_after(
        &self,
        stream: &str,
        after: Position,
    ) -> Result<StreamVersion> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let Some(meta) = read_stream_meta(&mut *txn, stream).await? else {
            return Ok(1);
        };
        if meta.last_position <= after {
            return Ok(meta.version + 1);
        }
        // Invariant: position(lo - 1) <= after < position(hi).
        let (mut lo, mut hi) = (1u64, meta.version);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = layout::stream_event_key(stream, mid);
            let pos = txn.get(&key).await?.ok_or_else(|| {
                Error::corrupt(
                    None,
                    format!("stream '{stream}' has no index entry for version {mid}"),
                )
            })?;
            if layout::parse_u64(layout::open_index_value(&key, &pos)?, "stream index entry")?
                > after
            {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// A stream's version and last position.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let meta = read_stream_meta(&mut *txn, stream).await?;
        Ok(stream_info(stream.to_owned(), meta))
    }

    /// Lists streams whose id starts with `prefix`, in id order, at most
    /// `limit`, starting after stream id `after` (for paging).
    pub async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        let mut txn = self.inner.kv.begin().await?;
        let rows = txn
            .scan(
                layout::stream_list_range(prefix, after),
                ScanOptions::forward(Some(limit)),
            )
            .await?;
        rows.into_iter()
            .map(|(k, v)| {
                Ok(stream_info(
                    layout::parse_stream_key(&k)?,
                    Some(StreamMeta::decode(&v)?),
                ))
            })
            .collect()
    }

    /// Registers allowed event types (persisted; additive).
    pub async fn register_event_types<I, S>(&self, types: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let types: Vec<String> = types.into_iter().map(Into::into).collect();
        for t in &types {
            validate_type(t, &self.inner.opts.limits)?;
        }
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            for t in &types {
                txn.put(layout::registry_key(t), Vec::new());
            }
            txn.commit().await
        })
        .await?;
        self.inner
            .known_types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(types);
        Ok(())
    }

    /// The registered event types, sorted.
    pub async fn event_types(&self) -> Result<Vec<String>> {
        let mut txn = self.inner.kv.begin().await?;
        registered_types(&mut *txn).await
    }

    /// Turns strict mode on or off (persisted). In strict mode an append
    /// with an unregistered event type is rejected.
    pub async fn set_strict_types(&self, strict: bool) -> Result<()> {
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.put(layout::strict_key(), vec![u8::from(strict)]);
            txn.commit().await
        })
        .await
    }

    /// Marks an import as in progress (see [`layout::import_key`]), before
    /// its first [`import`](Self::import). `expected_events` is the number
    /// of events the import is to write, when known. Until
    /// [`finish_import`](Self::finish_import), [`crate::verify`] reports the
    /// store as damaged, so that an import cut short (a crash, a kill) is
    /// never taken for a complete store.
    pub async fn begin_import(&self, expected_events: Option<u64>) -> Result<()> {
        let kv = &self.inner.kv;
        let value = expected_events.map_or_else(Vec::new, layout::u64_value);
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.put(layout::import_key(), value.clone());
            txn.commit().await
        })
        .await
    }

    /// Removes the mark of [`begin_import`](Self::begin_import): the import
    /// is complete.
    pub async fn finish_import(&self) -> Result<()> {
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.delete(layout::import_key());
            txn.commit().await
        })
        .await
    }

    /// The mark of an import that began and has not finished, if any.
    pub async fn import_in_progress(&self) -> Result<Option<ImportMarker>> {
        let mut txn = self.inner.kv.begin().await?;
        txn.get(&layout::import_key())
            .await?
            .map(|v| ImportMarker::decode(&v))
            .transpose()
    }

    /// True when strict mode is on.
    pub async fn strict_types(&self) -> Result<bool> {
        let mut txn = self.inner.kv.begin().await?;
        Ok(txn.get(&layout::strict_key()).await?.as_deref() == Some(&[1u8][..]))
    }
}

/// An import that began and has not finished: the value of
/// [`layout::import_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportMarker {
    /// How many events the import was to write, when it said.
    pub expected_events: Option<u64>,
}

impl ImportMarker {
    /// Decodes the marker's value: empty, or the expected count (u64 BE).
    pub fn decode(v: &[u8]) -> Result<Self> {
        Ok(ImportMarker {
            expected_events: if v.is_empty() {
                None
            } else {
                Some(layout::parse_u64(v, "import marker")?)
            },
        })
    }
}

impl std::fmt::Display for ImportMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an import into this store did not finish")?;
        if let Some(n) = self.expected_events {
            write!(f, " (it was to write {n} events)")?;
        }
        f.write_str("; the store holds only part of it: remove the store and run the import again")
    }
}

/// The error for a store whose format marker is not [`layout::FORMAT`].
fn format_error(found: &[u8]) -> Error {
    let supported = String::from_utf8_lossy(layout::FORMAT).into_owned();
    let (Some(n), Some(ours)) = (
        layout::format_number(found),
        layout::format_number(layout::FORMAT),
    ) else {
        return Error::corrupt(
            None,
            format!(
                "the event layout marker holds {:?}, which is not an eskv layout (this eskv reads {supported:?}); is this an eskv event store?",
                String::from_utf8_lossy(found)
            ),
        );
    };
    let advice = if n < ours {
        "it was written by an older eskv. Export it with that version \
         (`eskv --store <url> export --out events.jsonl`), then import the export into a \
         new, empty store with this version (`eskv --store <new url> import --in events.jsonl`). \
         The store was not changed"
    } else {
        "it was written by a newer eskv; open it with that version. The store was not changed"
    };
    Error::IncompatibleFormat {
        found: String::from_utf8_lossy(found).into_owned(),
        supported,
        advice: advice.to_string(),
    }
}

fn stream_info(stream_id: String, meta: Option<StreamMeta>) -> StreamInfo {
    StreamInfo {
        stream_id,
        exists: meta.is_some(),
        version: meta.map_or(0, |m| m.version),
        last_position: meta.map(|m| m.last_position),
    }
}

fn batch_lost() -> Error {
    Error::backend(
        "eskv",
        "the group commit running this append was lost (task aborted)",
    )
}

impl Inner {
    /// Takes the next batch: queued requests in arrival order, as many as
    /// fit in one transaction of this backend.
    fn take_batch(&self) -> Vec<Pending> {
        let caps = self.kv.capabilities();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch: Vec<Pending> = Vec::new();
        let mut total = Cost::default();
        while let Some(p) = q.front() {
            if p.reply.is_closed() {
                // The caller gave up before any leader took it: drop it
                // rather than commit it later, out of order.
                q.pop_front();
                continue;
            }
            let ops = total.ops + p.cost.ops;
            let bytes = total.bytes + p.cost.bytes;
            let full = batch.len() >= self.opts.max_batch
                || caps.max_ops_per_txn.is_some_and(|m| ops > m)
                || caps.max_txn_bytes.is_some_and(|m| bytes > m);
            if full && !batch.is_empty() {
                break;
            }
            total = Cost { ops, bytes };
            batch.extend(q.pop_front());
        }
        batch
    }

    async fn run_batch(self: Arc<Self>, batch: Vec<Pending>) {
        let reqs: Vec<&AppendRequest> = batch.iter().map(|p| &p.req).collect();
        let outcome = retry(self.opts.max_retries, || self.execute(&reqs)).await;
        match outcome {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(r);
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                // One request's failure (an oversized transaction, a damaged
                // stream head) must not fail the others: run each alone.
                tracing::debug!(error = %e, requests = batch.len(), "group commit failed; retrying requests one by one");
                for p in batch {
                    let one = [&p.req];
                    let r = retry(self.opts.max_retries, || self.execute(&one))
                        .await
                        .and_then(|mut rs| rs.pop().unwrap_or_else(|| Err(batch_lost())));
                    let _ = p.reply.send(r);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// Publishes a head to in-process subscribers; never moves it back.
    fn publish_head(&self, head: Position) {
        self.head_tx.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }

    /// One attempt at a group commit. The outer error aborts the whole
    /// batch (and is retried if retryable); inner errors reject single
    /// requests.
    async fn execute(&self, reqs: &[&AppendRequest]) -> Result<Vec<Result<AppendResult>>> {
        let mut txn = self.kv.begin().await?;
        // One read for the whole batch: head, strict flag, and every
        // request's idempotency entries and stream head.
        let mut keys = vec![layout::head_key(), layout::strict_key()];
        for req in reqs {
            keys.extend(req.events.iter().map(|e| layout::id_key(e.id)));
            if let Some((s, _)) = &req.stream {
                keys.push(layout::stream_key(s));
            }
        }
        // ...and the first page of every condition probe.
        let mut scans = Vec::new();
        for req in reqs {
            if let Some(c) = &req.condition {
                let lo = c.after.map_or(1, |a| a.saturating_add(1));
                for (index, _) in condition_probes(&c.fail_if_events_match) {
                    scans.push((
                        index.range(lo, Position::MAX),
                        ScanOptions::forward(Some(PROBE_PAGE)),
                    ));
                }
            }
        }
        let (vals, probe_rows) = txn.read_many(&keys, &scans).await?;
        let mut vals = vals.into_iter();
        let mut probe_rows = probe_rows.into_iter();
        let head0 = vals
            .next()
            .flatten()
            .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))?;
        let mut batch = Batch {
            head0,
            appended: Vec::new(),
            head: head0,
            strict: vals.next().flatten().as_deref() == Some(&[1u8][..]),
            now_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ids: HashMap::new(),
            streams: HashMap::new(),
        };
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            let ids: Vec<Option<Vec<u8>>> = vals.by_ref().take(req.events.len()).collect();
            let meta = match &req.stream {
                Some(_) => vals.next().flatten(),
                None => None,
            };
            let probes: Vec<Vec<KvPair>> = match &req.condition {
                Some(c) => probe_rows
                    .by_ref()
                    .take(condition_probes(&c.fail_if_events_match).len())
                    .collect(),
                None => Vec::new(),
            };
            results.push(
                self.apply(&mut *txn, &mut batch, req, ids, meta, probes)
                    .await?,
            );
        }
        if batch.head != head0 {
            txn.put(layout::head_key(), layout::u64_value(batch.head));
            txn.commit().await?;
        }
        // Also after an all-replay batch: its events were committed by an
        // earlier attempt whose answer was lost.
        self.publish_head(batch.head);
        Ok(results)
    }

    /// Checks one request against the batch's view and, if it passes,
    /// buffers its writes. All checks come before the first write, so a
    /// rejected request leaves nothing behind. `ids` and `meta` are the
    /// prefetched idempotency entries and stream head, which this batch's
    /// earlier requests may have superseded.
    #[allow(clippy::too_many_arguments)]
    async fn apply<'a>(
        &self,
        txn: &mut dyn KvTransaction,
        batch: &mut Batch<'a>,
        req: &'a AppendRequest,
        ids: Vec<Option<Vec<u8>>>,
        meta: Option<Vec<u8>>,
        probes: Vec<Vec<KvPair>>,
    ) -> Result<Result<AppendResult>> {
        let found: Vec<Option<IdEntry>> = req
            .events
            .iter()
            .zip(ids)
            .map(|(e, v)| match batch.ids.get(&e.id) {
                Some(x) => Ok(Some(*x)),
                None => v
                    .map(|v| IdEntry::decode(layout::open_index_value(&layout::id_key(e.id), &v)?))
                    .transpose(),
            })
            .collect::<Result<_>>()?;
        let meta = match &req.stream {
            Some((s, _)) => match batch.streams.get(s) {
                Some(m) => Some(*m),
                None => meta.map(|v| StreamMeta::decode(&v)).transpose()?,
            },
            None => None,
        };

        // Idempotency: the same ids again is a replay of the original.
        if found.iter().any(Option::is_some) {
            return self.replay(txn, req, &found).await;
        }

        if batch.strict {
            if let Err(e) = self.check_types(txn, req).await? {
                return Ok(Err(e));
            }
        }

        if let Some((stream, expected)) = &req.stream {
            let actual = meta.map(|m| m.version);
            let ok = match *expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.is_none(),
                ExpectedVersion::StreamExists => actual.is_some(),
                ExpectedVersion::Exact(v) => actual == Some(v),
            };
            if !ok {
                return Ok(Err(Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                }));
            }
        }

        if let Some(c) = &req.condition {
            if let Some(after) = c.after {
                if after > batch.head {
                    return Ok(Err(Error::invalid(format!(
                        "condition's after ({after}) is past the head ({}); pass the consistent_through of the read your decision used",
                        batch.head
                    ))));
                }
            }
            let lo = c.after.map_or(1, |a| a + 1);
            if let Some(position) =
                condition_hit(txn, batch, &c.fail_if_events_match, lo, probes).await?
            {
                return Ok(Err(Error::ConditionFailed {
                    position,
                    after: c.after,
                }));
            }
        }

        // Encode everything first; then buffer the writes.
        let first = batch.head + 1;
        let mut version = meta.map_or(0, |m| m.version);
        let stream = req.stream.as_ref().map(|(s, _)| s.as_str());
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(req.events.len() * 6);
        let last = first + req.events.len() as u64 - 1;
        let mut entries = Vec::with_capacity(req.events.len());
        for (i, e) in req.events.iter().enumerate() {
            let pos = first + i as u64;
            let sref = stream.map(|s| {
                version += 1;
                (s, version)
            });
            entries.push(event_rows(
                &mut rows,
                pos,
                e,
                batch.now_ms,
                sref,
                (first, last),
            )?);
        }
        for (e, entry) in req.events.iter().zip(entries) {
            batch.appended.push((entry.position, e));
            batch.ids.insert(e.id, entry);
        }
        if let Some(s) = stream {
            let m = StreamMeta {
                version,
                last_position: last,
            };
            rows.push((layout::stream_key(s), m.encode()));
            batch.streams.insert(s.to_owned(), m);
        }
        for (k, v) in rows {
            txn.put(k, v);
        }
        batch.head = last;
        Ok(Ok(AppendResult {
            first_position: first,
            last_position: last,
            stream_version: stream.map(|_| version),
        }))
    }

    /// Some ids already exist: succeed with the original result if this is
    /// an exact replay, else reject.
    async fn replay(
        &self,
        txn: &mut dyn KvTransaction,
        req: &AppendRequest,
        found: &[Option<IdEntry>],
    ) -> Result<Result<AppendResult>> {
        let existing = found.iter().filter(|v| v.is_some()).count();
        let violation = |message: String| Ok(Err(Error::IdempotencyViolation { message }));
        if existing < req.events.len() {
            let ids: Vec<String> = req
                .events
                .iter()
                .zip(found)
                .filter(|(_, f)| f.is_some())
                .map(|(e, _)| e.id.to_string())
                .collect();
            return violation(format!(
                "{existing} of {} event ids already exist ({}); an append is replayed only with exactly the same ids in the same order",
                req.events.len(),
                ids.join(", ")
            ));
        }
        let entries: Vec<IdEntry> = found.iter().flatten().copied().collect();
        let first = entries[0].append_first;
        let last = entries[0].append_last;
        let whole = entries.iter().enumerate().all(|(i, e)| {
            e.position == first + i as u64 && e.append_first == first && e.append_last == last
        }) && last - first + 1 == entries.len() as u64;
        if !whole {
            return violation(format!(
                "these event ids were appended, but not as exactly this append (the original append covered positions {first}..={last}); an append is replayed only with exactly the same ids in the same order"
            ));
        }
        let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
        let stored = load_events(txn, &positions).await?;
        let want_stream = req.stream.as_ref().map(|(s, _)| s.as_str());
        for ((e, s), entry) in req.events.iter().zip(&stored).zip(&entries) {
            let got_stream = s.stream.as_ref().map(|r| r.stream_id.as_str());
            if s.event_type != e.event_type || got_stream != want_stream {
                return violation(format!(
                    "event id {} was already appended with type '{}' to {}, not type '{}' to {}",
                    e.id,
                    s.event_type,
                    got_stream.map_or("no stream".to_string(), |x| format!("stream '{x}'")),
                    e.event_type,
                    want_stream.map_or("no stream".to_string(), |x| format!("stream '{x}'")),
                ));
            }
            // Same ids, type and stream: the content must match too, or
            // the new data would be dropped in silence. The digest is what
            // the id entry holds; the stored event (already loaded) is
            // compared as well, so a digest collision cannot pass.
            let differs: Vec<&str> = [
                ("data", s.data != e.data),
                ("tags", s.tags != e.tags),
                ("metadata", s.metadata != e.metadata),
                ("content digest", entry.digest != digest_of(e)),
            ]
            .into_iter()
            .filter_map(|(what, d)| d.then_some(what))
            .collect();
            if !differs.is_empty() {
                return violation(format!(
                    "event id {} was already appended (at position {}) with other {}; a retry must repeat the same events, and a new event needs a new id",
                    e.id,
                    entry.position,
                    differs.join(", "),
                ));
            }
        }
        tracing::debug!(first, "idempotent replay of an earlier append");
        Ok(Ok(AppendResult {
            first_position: first,
            last_position: last,
            stream_version: stored
                .last()
                .and_then(|e| e.stream.as_ref().map(|s| s.version)),
        }))
    }

    /// Strict mode: every type must be registered.
    async fn check_types(
        &self,
        txn: &mut dyn KvTransaction,
        req: &AppendRequest,
    ) -> Result<Result<()>> {
        let unknown: Vec<&str> = {
            let known = self.known_types.read().unwrap_or_else(|p| p.into_inner());
            let mut u: Vec<&str> = req
                .events
                .iter()
                .map(|e| e.event_type.as_str())
                .filter(|t| !known.contains(*t))
                .collect();
            u.sort();
            u.dedup();
            u
        };
        if unknown.is_empty() {
            return Ok(Ok(()));
        }
        let keys: Vec<Vec<u8>> = unknown.iter().map(|t| layout::registry_key(t)).collect();
        let found = txn.get_many(&keys).await?;
        if let Some((t, _)) = unknown.iter().zip(&found).find(|(_, f)| f.is_none()) {
            let registered = registered_types(txn).await?;
            let nearest = registered
                .iter()
                .map(|r| (strsim::damerau_levenshtein(t, r), r))
                .filter(|(d, r)| *d <= (r.len().max(t.len()) / 2).max(2))
                .min()
                .map(|(_, r)| r.clone());
            return Ok(Err(Error::UnknownEventType {
                event_type: (*t).to_string(),
                nearest,
            }));
        }
        self.known_types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(unknown.iter().map(|t| t.to_string()));
        Ok(Ok(()))
    }
}

/// The digest of `e`'s content kept in its id entry.
fn digest_of(e: &NewEvent) -> u32 {
    layout::content_digest(&e.tags, &e.data, &e.metadata)
}

/// The rows one event adds to the layout (log, id, type, tags, stream
/// index, category). The one place that knows an event's index entries.
/// Returns the event's id entry.
fn event_rows(
    rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
    pos: Position,
    e: &NewEvent,
    recorded_at_ms: u64,
    stream: Option<(&str, u64)>,
    (append_first, append_last): (Position, Position),
) -> Result<IdEntry> {
    let start = rows.len();
    rows.push((
        layout::log_key(pos),
        envelope::encode_new(pos, e, recorded_at_ms, stream)?,
    ));
    let id = IdEntry {
        position: pos,
        append_first,
        append_last,
        digest: digest_of(e),
    };
    rows.push((layout::id_key(e.id), id.encode()));
    rows.push((layout::type_key(&e.event_type, pos), Vec::new()));
    if !e.tags.is_empty() {
        let entry = layout::tag_entry_value(&e.event_type, &e.tags)?;
        for t in &e.tags {
            rows.push((layout::tag_key(t, pos), entry.clone()));
        }
    }
    if let Some((s, v)) = stream {
        rows.push((layout::stream_event_key(s, v), layout::u64_value(pos)));
        rows.push((
            layout::category_key(layout::category_of(s), pos),
            Vec::new(),
        ));
    }
    // Every row after the log entry is an index entry: seal it.
    for (k, v) in &mut rows[start + 1..] {
        *v = layout::seal_index_value(k, std::mem::take(v));
    }
    Ok(id)
}

async fn registered_types(txn: &mut dyn KvTransaction) -> Result<Vec<String>> {
    txn.scan(layout::registry_range(), ScanOptions::default())
        .await?
        .into_iter()
        .map(|(k, _)| layout::parse_registry_key(&k))
        .collect()
}

async fn read_head(txn: &mut dyn KvTransaction) -> Result<Position> {
    txn.get(&layout::head_key())
        .await?
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))
}

async fn read_stream_meta(txn: &mut dyn KvTransaction, stream: &str) -> Result<Option<StreamMeta>> {
    txn.get(&layout::stream_key(stream))
        .await?
        .map(|v| StreamMeta::decode(&v))
        .transpose()
}

/// The inclusive position range a read covers, or `None` when empty.
fn bounds(opts: ReadOptions, head: Position) -> Option<(Position, Position)> {
    if opts.limit == Some(0) {
        return None;
    }
    let top = opts.until.map_or(head, |u| u.min(head));
    let (lo, hi) = if opts.backwards {
        (1, opts.from.map_or(top, |f| f.min(top)))
    } else {
        (opts.from.unwrap_or(1).max(1), top)
    };
    (lo <= hi).then_some((lo, hi))
}

/// The first position at or after `lo` of an event matching `query`, as
/// seen by this batch: the snapshot (from the probes' prefetched first
/// pages, scanning further only when a full page held no match) and the
/// events appended by earlier requests of the batch.
async fn condition_hit(
    txn: &mut dyn KvTransaction,
    batch: &Batch<'_>,
    query: &Query,
    lo: Position,
    probes: Vec<Vec<KvPair>>,
) -> Result<Option<Position>> {
    let mut hit: Option<Position> = None;
    if query.is_all() {
        if batch.head0 >= lo {
            hit = Some(lo);
        }
    } else {
        for ((index, item), rows) in condition_probes(query).into_iter().zip(probes) {
            let full = rows.len() >= PROBE_PAGE;
            let mut last = None;
            let mut found = None;
            for (k, v) in &rows {
                let pos = index.parse_position(k)?;
                last = Some(pos);
                if probe_keeps(index, item, layout::open_index_value(k, v)?)? {
                    found = Some(pos);
                    break;
                }
            }
            if found.is_none() && full {
                if let Some(last) = last {
                    found = scan_index(
                        txn,
                        index,
                        last + 1,
                        batch.head0,
                        Order::Forward,
                        Some(1),
                        |v| probe_keeps(index, item, v),
                    )
                    .await?
                    .first()
                    .copied();
                }
            }
            // Probe rows come from the snapshot: they can only be at or
            // below the snapshot's head.
            if let Some(p) = found.filter(|p| *p <= batch.head0) {
                hit = Some(hit.map_or(p, |h| h.min(p)));
            }
        }
    }
    if hit.is_none() {
        hit = batch
            .appended
            .iter()
            .find(|(p, e)| *p >= lo && query.matches_parts(&e.event_type, &e.tags))
            .map(|(p, _)| *p);
    }
    Ok(hit)
}

/// A forward DCB read in two calls to the backend: the head together with
/// the first page of every index probe, then the events (more pages only
/// for probes whose first page was full).
async fn read_forward(
    txn: &mut dyn KvTransaction,
    query: &Query,
    opts: ReadOptions,
) -> Result<ReadResult> {
    let lo = opts.from.unwrap_or(1).max(1);
    let top = opts.until.unwrap_or(Position::MAX);
    let page = opts.limit.map_or(1024, |l| l.clamp(16, 1024));
    let probes = condition_probes(query);
    let scans: Vec<(crate::kv::KeyRange, ScanOptions)> = probes
        .iter()
        .map(|(index, _)| (index.range(lo, top), ScanOptions::forward(Some(page))))
        .collect();
    let (vals, pages) = if lo > top {
        (txn.get_many(&[layout::head_key()]).await?, Vec::new())
    } else {
        txn.read_many(&[layout::head_key()], &scans).await?
    };
    let head = vals
        .into_iter()
        .next()
        .flatten()
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))?;
    let hi = top.min(head);
    let want = opts.limit.unwrap_or(usize::MAX);
    let mut all: BTreeSet<Position> = BTreeSet::new();
    for ((index, item), rows) in probes.into_iter().zip(pages) {
        let full = rows.len() >= page;
        let mut kept = 0usize;
        let mut last = None;
        for (k, v) in &rows {
            let pos = index.parse_position(k)?;
            let v = layout::open_index_value(k, v)?;
            last = Some(pos);
            if pos <= hi && kept < want && probe_keeps(index, item, v)? {
                all.insert(pos);
                kept += 1;
            }
        }
        if full && kept < want {
            if let Some(last) = last {
                let more = scan_index(
                    txn,
                    index,
                    last + 1,
                    hi,
                    Order::Forward,
                    Some(want - kept),
                    |v| probe_keeps(index, item, v),
                )
                .await?;
                all.extend(more);
            }
        }
    }
    let positions: Vec<Position> = all.into_iter().take(want).collect();
    let events = load_events(txn, &positions).await?;
    Ok(ReadResult {
        consistent_through: consistent_through(opts, head, &events),
        events,
    })
}

/// Positions in `[lo, hi]` of events matching `query`, in the requested
/// order, at most `limit`. Cost: O(matching index entries) per item; an
/// item with tags scans the index of its first tag and checks type and the
/// other tags on the index entry itself.
async fn find_positions(
    txn: &mut dyn KvTransaction,
    query: &Query,
    lo: Position,
    hi: Position,
    order: Order,
    limit: Option<usize>,
) -> Result<Vec<Position>> {
    let backwards = order.backwards();
    if lo > hi {
        return Ok(Vec::new());
    }
    if query.is_all() {
        let n = (hi - lo + 1) as usize;
        let take = limit.map_or(n, |l| l.min(n)) as u64;
        return Ok(if backwards {
            (hi + 1 - take..=hi).rev().collect()
        } else {
            (lo..lo + take).collect()
        });
    }
    let mut all: BTreeSet<Position> = BTreeSet::new();
    for item in &query.items {
        for p in item_positions(txn, item, lo, hi, order, limit).await? {
            all.insert(p);
        }
    }
    let n = limit.unwrap_or(usize::MAX);
    Ok(if backwards {
        all.into_iter().rev().take(n).collect()
    } else {
        all.into_iter().take(n).collect()
    })
}

async fn item_positions(
    txn: &mut dyn KvTransaction,
    item: &QueryItem,
    lo: Position,
    hi: Position,
    order: Order,
    limit: Option<usize>,
) -> Result<Vec<Position>> {
    match item.tags.first() {
        None => {
            let mut out = Vec::new();
            for t in &item.types {
                out.extend(
                    scan_index(txn, Index::Type(t), lo, hi, order, limit, |_| Ok(true)).await?,
                );
            }
            Ok(out)
        }
        Some(first) => {
            scan_index(txn, Index::Tag(first), lo, hi, order, limit, |v| {
                let (t, tags) = layout::parse_tag_entry(v)?;
                Ok(item.matches_parts(&t, &tags))
            })
            .await
        }
    }
}

/// Which way a positional scan runs, and how a backwards page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Forward,
    /// A reverse scan with a limit.
    Backward,
    /// Forward scans of windows below the top (see [`scan_page`]).
    BackwardByWindows,
}

impl Order {
    fn new(backwards: bool, caps: &Capabilities) -> Order {
        match (backwards, caps.cheap_reverse_scans) {
            (false, _) => Order::Forward,
            (true, true) => Order::Backward,
            (true, false) => Order::BackwardByWindows,
        }
    }

    fn backwards(self) -> bool {
        self != Order::Forward
    }
}

/// One page of the positional range `range_of(lo, hi)`: its first `page`
/// rows, or backwards its last `page` rows, highest first.
///
/// Where reverse scans cost O(range) (`Capabilities::cheap_reverse_scans`
/// false: etcd sorts
/// the whole range to answer a descending read), the last rows come from
/// forward scans of windows below `hi`, `page` positions wide and doubling
/// until they hold a page: O(page) rows read for a dense range (the log, a
/// stream's versions), and a few windows for a sparse index.
async fn scan_page(
    txn: &mut dyn KvTransaction,
    range_of: impl Fn(u64, u64) -> KeyRange,
    lo: u64,
    hi: u64,
    page: usize,
    order: Order,
) -> Result<Vec<KvPair>> {
    if order != Order::BackwardByWindows {
        return txn
            .scan(
                range_of(lo, hi),
                ScanOptions {
                    limit: Some(page),
                    reverse: order.backwards(),
                },
            )
            .await;
    }
    let mut out: Vec<KvPair> = Vec::new();
    let mut top = hi;
    let mut width = (page as u64).max(1);
    loop {
        let bottom = top.saturating_sub(width - 1).max(lo);
        let mut rows = txn
            .scan(range_of(bottom, top), ScanOptions::default())
            .await?;
        rows.reverse();
        out.extend(rows);
        if out.len() >= page || bottom <= lo {
            break;
        }
        top = bottom - 1;
        width = width.saturating_mul(2);
    }
    out.truncate(page);
    Ok(out)
}

/// Scans one positional index over `[lo, hi]` in pages, keeping entries
/// whose value passes `keep`, until `limit` are kept.
async fn scan_index(
    txn: &mut dyn KvTransaction,
    index: Index<'_>,
    mut lo: Position,
    mut hi: Position,
    order: Order,
    limit: Option<usize>,
    mut keep: impl FnMut(&[u8]) -> Result<bool>,
) -> Result<Vec<Position>> {
    let want = limit.unwrap_or(usize::MAX);
    let page = limit.map_or(1024, |l| l.clamp(16, 1024));
    let mut out = Vec::new();
    let backwards = order.backwards();
    while out.len() < want && lo <= hi {
        let rows = scan_page(txn, |a, b| index.range(a, b), lo, hi, page, order).await?;
        let n = rows.len();
        for (k, v) in rows {
            let pos = index.parse_position(&k)?;
            if backwards {
                hi = pos.saturating_sub(1);
            } else {
                lo = pos + 1;
            }
            if keep(layout::open_index_value(&k, &v)?)? {
                out.push(pos);
                if out.len() == want {
                    break;
                }
            }
        }
        if n < page || (backwards && hi == 0) {
            break;
        }
    }
    Ok(out)
}

/// Loads events by position, in the given order.
async fn load_events(
    txn: &mut dyn KvTransaction,
    positions: &[Position],
) -> Result<Vec<RecordedEvent>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<u8>> = positions.iter().map(|&p| layout::log_key(p)).collect();
    let vals = txn.get_many(&keys).await?;
    positions
        .iter()
        .zip(vals)
        .map(|(&p, v)| match v {
            Some(v) => envelope::decode(&v, p),
            None => Err(Error::corrupt(
                Some(p),
                "an index points at this position but the log has no event there",
            )),
        })
        .collect()
}

/// Runs `f` until it succeeds, fails with a non-retryable error, or the
/// budget is spent; backs off with jitter between attempts.
pub(crate) async fn retry<T, F, Fut>(max_retries: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && attempt < max_retries => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap_us = (200u64 << attempt.min(8)).min(100_000);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_micros(h.finish() % cap_us + 50)
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Event types: 1 to `max_type_len` bytes of ASCII letters, digits and
/// `_ - . : /`, starting with a letter.
pub fn validate_type(t: &str, l: &Limits) -> Result<()> {
    if t.is_empty() {
        return Err(Error::invalid("an event type must not be empty"));
    }
    if t.len() > l.max_type_len {
        return Err(Error::limit(
            format!(
                "length of event type '{}…'",
                &t[..t.floor_char_boundary(32)]
            ),
            l.max_type_len,
            t.len(),
        ));
    }
    let first_ok = t.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
    if !first_ok || !rest_ok {
        return Err(Error::invalid(format!(
            "event type {t:?} is invalid: use ASCII letters, digits and _ - . : /, starting with a letter"
        )));
    }
    Ok(())
}

/// Tags: 1 to `max_tag_len` bytes of UTF-8 without control characters.
pub fn validate_tag(t: &str, l: &Limits) -> Result<()> {
    if t.is_empty() {
        return Err(Error::invalid("a tag must not be empty"));
    }
    if t.len() > l.max_tag_len {
        return Err(Error::limit("tag length (bytes)", l.max_tag_len, t.len()));
    }
    if has_control(t) {
        return Err(Error::invalid(format!(
            "tag {t:?} contains a control character"
        )));
    }
    Ok(())
}

/// Stream ids: 1 to `max_stream_id_len` bytes of UTF-8 without control
/// characters, not starting with `$` (reserved).
pub fn validate_stream_id(s: &str, l: &Limits) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid("a stream id must not be empty"));
    }
    if s.len() > l.max_stream_id_len {
        return Err(Error::limit(
            "stream id length (bytes)",
            l.max_stream_id_len,
            s.len(),
        ));
    }
    if has_control(s) {
        return Err(Error::invalid(format!(
            "stream id {s:?} contains a control character"
        )));
    }
    if s.starts_with('$') {
        return Err(Error::invalid(format!(
            "stream id {s:?} starts with '$', which is reserved"
        )));
    }
    Ok(())
}
