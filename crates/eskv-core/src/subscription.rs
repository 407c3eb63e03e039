//! Subscriptions: catch-up then live delivery in global order, persisted
//! checkpoints, handler runners with retries and a dead-letter list, and
//! consumer groups that split the work by partition with leases.
//!
//! Delivery is **at-least-once**: a named subscription resumes after its
//! last acknowledged event, so only unacknowledged events can be seen twice.
//! Nothing is ever skipped: the global log is gapless and positions follow
//! commit order (see [`crate::store`]), so reading "everything after my
//! cursor" can never miss a later commit.
//!
//! Waiting for new events: appends made through the same [`EventStore`]
//! (or its clones) wake subscribers at once through a watch channel; on
//! embedded backends, appends through other handles over the same KV store
//! do too, through one relay task per handle that reads the head after
//! each commit and wakes subscribers only when it moved (commits that
//! append nothing, such as checkpoints, wake nobody). On backends shared by
//! several processes ([`Capabilities::single_process`] is false)
//! subscribers also poll with adaptive backoff, from
//! [`SubscriptionOptions::poll_min`] doubling to
//! [`SubscriptionOptions::poll_max`] while idle.
//!
//! Reads are retried on transient errors ([`Error::is_retryable`]) with the
//! store's retry policy, the one appends use, so subscribers and group
//! members ride out short unavailability.
//!
//! [`Capabilities::single_process`]: crate::Capabilities::single_process

use crate::error::{BoxError, Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout::{self, Consumer, ConsumerId};
use crate::query::Query;
use crate::store::{retry, EventStore, ReadOptions, ReadStreamOptions};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Which events a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    /// The whole log.
    All,
    /// Events matching a DCB query (types and tags).
    Query(Query),
    /// One stream.
    Stream(String),
    /// A stream category (stream id up to the first `-`).
    Category(String),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first event.
    Beginning,
    /// After this position.
    After(Position),
    /// After the current head: only new events.
    End,
    /// After the named subscription's stored checkpoint, or from the
    /// beginning if it has none.
    Checkpoint,
}

/// Options for [`EventStore::subscribe`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriptionOptions {
    /// What to deliver. Default: everything.
    pub filter: SubscriptionFilter,
    /// Where to start. Default: the stored checkpoint for named
    /// subscriptions, the beginning otherwise.
    pub start: StartFrom,
    /// Name under which the checkpoint is stored; required by
    /// [`Subscription::ack`].
    pub name: Option<String>,
    /// Events fetched per read. Default 256. Bounds the memory a slow
    /// consumer can make the subscription hold.
    pub batch_size: usize,
    /// Shortest poll interval while idle. Default 5 ms.
    pub poll_min: Duration,
    /// Longest poll interval while idle. Default 1 s.
    pub poll_max: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            filter: SubscriptionFilter::All,
            start: StartFrom::Beginning,
            name: None,
            batch_size: 256,
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_secs(1),
        }
    }
}

impl SubscriptionOptions {
    /// An anonymous subscription to everything from the beginning.
    pub fn new() -> Self {
        Self::default()
    }

    /// A named subscription resuming from its checkpoint.
    pub fn named(name: impl Into<String>) -> Self {
        SubscriptionOptions {
            name: Some(name.into()),
            start: StartFrom::Checkpoint,
            ..Self::default()
        }
    }

    /// Sets the filter.
    pub fn filter(mut self, filter: SubscriptionFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the start.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the poll interval bounds.
    pub fn poll(mut self, min: Duration, max: Duration) -> Self {
        self.poll_min = min;
        self.poll_max = max.max(min);
        self
    }
}

/// A live cursor over the log. Call [`next`](Self::next) or
/// [`next_batch`](Self::next_batch); both wait for new events once the
/// history is exhausted.
pub struct Subscription {
    store: EventStore,
    opts: SubscriptionOptions,
    /// Position of the last event handed out.
    delivered: Position,
    /// Every position up to here has been examined.
    scanned: Position,
    /// Next stream version to read (stream filter only).
    next_version: u64,
    buffer: VecDeque<RecordedEvent>,
    /// The head, published by appends through this handle and by the
    /// commit relay (see [`relay_commits`]) for appends through others.
    head_rx: watch::Receiver<Position>,
    /// True when the head watch sees every append (embedded backend with
    /// commit notifications): the poll timer is then only a safety net.
    watched: bool,
    poll: Duration,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.opts.name)
            .field("filter", &self.opts.filter)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl EventStore {
    /// Starts a subscription.
    pub async fn subscribe(&self, opts: SubscriptionOptions) -> Result<Subscription> {
        if let Some(n) = &opts.name {
            validate_name(n)?;
        }
        match &opts.filter {
            SubscriptionFilter::Stream(s) | SubscriptionFilter::Category(s) => {
                crate::store::validate_stream_id(s, &self.options().limits)?
            }
            SubscriptionFilter::Query(q) => {
                // Reading validates the query; do it once up front.
                self.read(q, ReadOptions::new().limit(0)).await?;
            }
            SubscriptionFilter::All => {}
        }
        let retries = self.options().max_retries;
        let start = match opts.start {
            StartFrom::Beginning => 0,
            StartFrom::After(p) => {
                let head = retry(retries, || self.head()).await?;
                if p > head {
                    return Err(Error::invalid(format!(
                        "cannot start a subscription after position {p}: the head is {head}, \
                         so the next {} events appended would be skipped; start at or before \
                         the head (StartFrom::End starts at it)",
                        p - head
                    )));
                }
                p
            }
            StartFrom::End => retry(retries, || self.head()).await?,
            StartFrom::Checkpoint => match &opts.name {
                Some(n) => self.checkpoint(n).await?.unwrap_or(0),
                None => return Err(Error::invalid(
                    "StartFrom::Checkpoint needs a named subscription (SubscriptionOptions::named)",
                )),
            },
        };
        let next_version = match &opts.filter {
            SubscriptionFilter::Stream(s) if start > 0 => {
                retry(retries, || self.stream_version_after(s, start)).await?
            }
            _ => 1,
        };
        let head_rx = self.watch_head();
        relay_commits(self);
        Ok(Subscription {
            store: self.clone(),
            poll: opts.poll_min,
            head_rx,
            watched: self.kv().capabilities().single_process && self.kv().commit_watch().is_some(),
            opts,
            delivered: start,
            scanned: start,
            next_version,
            buffer: VecDeque::new(),
        })
    }

    /// The stored checkpoint of a named subscription.
    pub async fn checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_name(name)?;
        self.consumer_checkpoint(Consumer::Named(name)).await
    }

    pub(crate) async fn consumer_checkpoint(&self, c: Consumer<'_>) -> Result<Option<Position>> {
        let key = layout::checkpoint_key(c);
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            txn.get(&key)
                .await?
                .map(|v| layout::parse_u64(&v, "checkpoint"))
                .transpose()
        })
        .await
    }

    /// Stores `position` as the checkpoint of `name`. Checkpoints only move
    /// forward (a lower position is ignored) and never past the head.
    pub async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_name(name)?;
        let key = layout::checkpoint_key(Consumer::Named(name));
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let vals = txn.get_many(&[key.clone(), layout::head_key()]).await?;
            let current = vals[0]
                .as_deref()
                .map(|v| layout::parse_u64(v, "checkpoint"))
                .transpose()?;
            let head = vals[1]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
            if position > head {
                return Err(Error::invalid(format!(
                    "checkpoint {position} for '{name}' is past the head ({head})"
                )));
            }
            if current.is_some_and(|c| c >= position) {
                return Ok(());
            }
            txn.put(key.clone(), layout::u64_value(position));
            txn.commit().await
        })
        .await
    }

    /// Every stored checkpoint of a named subscription, by name. Consumer
    /// groups keep theirs apart (see [`group_partitions`](Self::group_partitions)).
    pub async fn checkpoints(&self) -> Result<BTreeMap<String, Position>> {
        let rows = self.scan_all(layout::checkpoint_range()).await?;
        let mut out = BTreeMap::new();
        for (k, v) in rows {
            match layout::parse_state_key(&k)? {
                layout::StateKey::Checkpoint(ConsumerId::Named(n)) => {
                    out.insert(n, layout::parse_u64(&v, "checkpoint")?);
                }
                other => {
                    return Err(Error::corrupt(
                        None,
                        format!("{other:?} found among subscription checkpoints"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Every row of `range`, read in pages in one snapshot, retried on
    /// transient errors.
    async fn scan_all(&self, range: KeyRange) -> Result<Vec<KvPair>> {
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            txn.scan(range.clone(), ScanOptions::default()).await
        })
        .await
    }

    /// Events parked in the dead-letter list of subscription `name`.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        validate_name(name)?;
        Ok(self
            .parked_in(layout::dead_letter_range(Consumer::Named(name)))
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Events parked by any partition of consumer group `group`, with
    /// their partition, in partition then position order.
    pub async fn group_parked(&self, group: &str) -> Result<Vec<(u32, ParkedEvent)>> {
        validate_name(group)?;
        let mut out = Vec::new();
        for (c, p) in self
            .parked_in(layout::group_dead_letter_range(group))
            .await?
        {
            if let ConsumerId::Partition { partition, .. } = c {
                out.push((partition, p));
            }
        }
        Ok(out)
    }

    async fn parked_in(&self, range: KeyRange) -> Result<Vec<(ConsumerId, ParkedEvent)>> {
        let rows = self.scan_all(range).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let layout::StateKey::DeadLetter { consumer, position } = layout::parse_state_key(&k)?
            else {
                return Err(Error::corrupt(
                    None,
                    "a non-dead-letter key among dead letters",
                ));
            };
            let rec: DeadLetter = postcard::from_bytes(&v).map_err(|e| {
                Error::corrupt(
                    Some(position),
                    format!("dead-letter entry does not decode: {e}"),
                )
            })?;
            let event = retry(self.options().max_retries, || {
                self.read_all(ReadOptions::new().from(position).limit(1))
            })
            .await?
            .events
            .into_iter()
            .next()
            .filter(|e| e.position == position)
            .ok_or_else(|| {
                Error::corrupt(Some(position), "a parked event is missing from the log")
            })?;
            out.push((
                consumer,
                ParkedEvent {
                    event,
                    error: rec.error,
                    attempts: rec.attempts,
                    parked_at_ms: rec.parked_at_ms,
                },
            ));
        }
        Ok(out)
    }

    /// Runs `handler` again on every parked event of `name`; events it now
    /// handles are removed from the list. Returns how many were removed.
    pub async fn replay_parked<H: EventHandler>(&self, name: &str, handler: &H) -> Result<usize> {
        let parked = self.parked(name).await?;
        let c = Consumer::Named(name);
        self.replay(parked.into_iter().map(|p| (c, p)), handler)
            .await
    }

    /// As [`replay_parked`](Self::replay_parked), for every partition of
    /// consumer group `group`.
    pub async fn replay_group_parked<H: EventHandler>(
        &self,
        group: &str,
        handler: &H,
    ) -> Result<usize> {
        let parked = self.group_parked(group).await?;
        self.replay(
            parked
                .into_iter()
                .map(|(partition, p)| (Consumer::Partition { group, partition }, p)),
            handler,
        )
        .await
    }

    async fn replay<'a, H: EventHandler>(
        &self,
        parked: impl Iterator<Item = (Consumer<'a>, ParkedEvent)>,
        handler: &H,
    ) -> Result<usize> {
        let mut fixed = 0;
        for (c, p) in parked {
            if handler.handle(&p.event).await.is_ok() {
                let key = layout::dead_letter_key(c, p.event.position);
                retry(self.options().max_retries, || async {
                    let mut txn = self.kv().begin().await?;
                    txn.delete(key.clone());
                    txn.commit().await
                })
                .await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// The state of every partition of consumer group `group` that has
    /// any: its lease holder and its checkpoint.
    pub async fn group_partitions(&self, group: &str) -> Result<BTreeMap<u32, PartitionState>> {
        validate_name(group)?;
        let (leases, checkpoints) = retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let leases = txn
                .scan(layout::lease_range(group), ScanOptions::default())
                .await?;
            let cps = txn
                .scan(
                    layout::group_checkpoint_range(group),
                    ScanOptions::default(),
                )
                .await?;
            Ok((leases, cps))
        })
        .await?;
        let mut out: BTreeMap<u32, PartitionState> = BTreeMap::new();
        for (k, v) in leases {
            if let layout::StateKey::Lease { partition, .. } = layout::parse_state_key(&k)? {
                let lease: Lease = postcard::from_bytes(&v).map_err(|e| {
                    Error::corrupt(
                        None,
                        format!("lease of partition {partition} does not decode: {e}"),
                    )
                })?;
                let s = out.entry(partition).or_default();
                s.owner = Some(lease.owner);
                s.lease_expires_ms = Some(lease.expires_ms);
            }
        }
        for (k, v) in checkpoints {
            if let layout::StateKey::Checkpoint(ConsumerId::Partition { partition, .. }) =
                layout::parse_state_key(&k)?
            {
                out.entry(partition).or_default().checkpoint =
                    Some(layout::parse_u64(&v, "checkpoint")?);
            }
        }
        Ok(out)
    }
}

/// What [`EventStore::group_partitions`] reports about one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionState {
    /// The member holding its lease (possibly expired), if any.
    pub owner: Option<String>,
    /// When that lease expires (ms since the Unix epoch).
    pub lease_expires_ms: Option<u64>,
    /// The position up to which the partition has been handled.
    pub checkpoint: Option<Position>,
}

/// Keeps in-process subscribers of `store` awake to appends made through
/// other handles over the same KV store, without waking them for every
/// commit: one task per handle turns commit notifications
/// ([`KvStore::commit_watch`](crate::KvStore::commit_watch)) into head
/// reads, and publishes the head only when it moved. Subscribers wait on
/// the head, so checkpoint, lease and projection commits cost one head
/// read per handle instead of one page read per subscriber. The task ends
/// when the handle has no head watchers left.
pub(crate) fn relay_commits(store: &EventStore) {
    let Some(mut commits) = store.kv().commit_watch() else {
        return;
    };
    if store.relay_running().swap(true, Ordering::SeqCst) {
        return;
    }
    // The task holds the store weakly: it must not keep a file open after
    // the application dropped every handle (reopening it would then find
    // it locked). It ends when the store is gone or has no head watchers.
    let weak = store.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                changed = commits.changed() => {
                    let Some(store) = EventStore::upgrade(&weak) else {
                        return;
                    };
                    if changed.is_err() {
                        store.relay_running().store(false, Ordering::SeqCst);
                        return;
                    }
                    match retry(store.options().max_retries, || store.head()).await {
                        Ok(head) => store.publish_head(head),
                        // The subscribers' own timers are the safety net.
                        Err(e) => tracing::debug!(error = %e, "commit relay could not read the head"),
                    }
                }
                _ = tick.tick() => {
                    let Some(store) = EventStore::upgrade(&weak) else {
                        return;
                    };
                    if store.head_sender().receiver_count() == 0 {
                        store.relay_running().store(false, Ordering::SeqCst);
                        // A watcher that arrived meanwhile saw the flag
                        // still set and relies on this task: carry on for
                        // it, unless another relay has started.
                        if store.head_sender().receiver_count() == 0
                            || store.relay_running().swap(true, Ordering::SeqCst)
                        {
                            return;
                        }
                    }
                }
            }
        }
    });
}

impl Subscription {
    /// The position of the last event handed out (the start position
    /// before the first one).
    pub fn position(&self) -> Position {
        self.delivered
    }

    /// The next event, waiting for one if the history is exhausted.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.delivered = e.position;
                return Ok(e);
            }
            self.wait_for_more().await?;
        }
    }

    /// Up to `max` events, waiting for at least one.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        while self.buffer.is_empty() {
            self.wait_for_more().await?;
        }
        let n = max.max(1).min(self.buffer.len());
        let out: Vec<RecordedEvent> = self.buffer.drain(..n).collect();
        if let Some(last) = out.last() {
            self.delivered = last.position;
        }
        Ok(out)
    }

    /// Events already available, without waiting (possibly none).
    pub async fn try_next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        let n = max.min(self.buffer.len());
        let out: Vec<RecordedEvent> = self.buffer.drain(..n).collect();
        if let Some(last) = out.last() {
            self.delivered = last.position;
        }
        Ok(out)
    }

    /// Stores `position` as this named subscription's checkpoint: a restart
    /// resumes after it.
    pub async fn ack(&self, position: Position) -> Result<()> {
        match &self.opts.name {
            Some(n) => self.store.save_checkpoint(n, position).await,
            None => Err(Error::invalid(
                "only named subscriptions have checkpoints (SubscriptionOptions::named)",
            )),
        }
    }

    /// Fetches into the buffer; then, if still empty, waits for a wake-up.
    async fn wait_for_more(&mut self) -> Result<()> {
        if self.fill().await? {
            self.poll = self.opts.poll_min;
            return Ok(());
        }
        if *self.head_rx.borrow_and_update() > self.scanned {
            return Ok(());
        }
        // Embedded backends are woken through the head watch (appends
        // through this handle, or the commit relay for other handles); the
        // slow timer is only a safety net there.
        let sleep = if self.watched {
            self.opts.poll_max
        } else {
            self.poll
        };
        tokio::select! {
            r = self.head_rx.changed() => {
                if r.is_err() {
                    tokio::time::sleep(sleep).await;
                }
            }
            _ = tokio::time::sleep(sleep) => {
                self.poll = self.poll.saturating_mul(2).min(self.opts.poll_max);
            }
        }
        Ok(())
    }

    /// Reads the next page after the cursor. Returns true if it buffered
    /// anything. Transient read errors are retried with the store's retry
    /// policy (the one appends use), so a subscriber rides out short
    /// unavailability; only an exhausted budget or a permanent error stops
    /// it.
    async fn fill(&mut self) -> Result<bool> {
        let limit = self.opts.batch_size.max(1);
        let after = self.scanned;
        let next_version = self.next_version;
        let page = retry(self.store.options().max_retries, || {
            read_page(&self.store, &self.opts.filter, after, next_version, limit)
        })
        .await?;
        self.next_version = page.next_version;
        if page.old_only {
            // Only stream events before the start: keep paging.
            return Ok(false);
        }
        let Page { events, head, .. } = page;
        let got = !events.is_empty();
        // A short page means everything up to the read's head was examined.
        self.scanned = if events.len() < limit {
            head.max(after)
        } else {
            events.last().map_or(after, |e| e.position)
        };
        self.buffer.extend(events);
        Ok(got)
    }
}

/// One page read by a subscription.
struct Page {
    events: Vec<RecordedEvent>,
    /// Everything up to here was examined (when the page is short).
    head: Position,
    /// Next stream version to read (stream filter only).
    next_version: u64,
    /// A full page of stream events at or before the cursor, none after.
    old_only: bool,
}

/// Reads the page after `after` for `filter`; no side effects, so it can be
/// retried.
async fn read_page(
    store: &EventStore,
    filter: &SubscriptionFilter,
    after: Position,
    next_version: u64,
    limit: usize,
) -> Result<Page> {
    let page = |events, head| Page {
        events,
        head,
        next_version,
        old_only: false,
    };
    Ok(match filter {
        SubscriptionFilter::All => {
            let r = store
                .read_all(ReadOptions::after(after).limit(limit))
                .await?;
            page(r.events, r.consistent_through)
        }
        SubscriptionFilter::Query(q) => {
            let r = store
                .read(q, ReadOptions::after(after).limit(limit))
                .await?;
            page(r.events, r.consistent_through)
        }
        SubscriptionFilter::Category(c) => {
            let r = store
                .read_category(c, ReadOptions::after(after).limit(limit))
                .await?;
            page(r.events, r.consistent_through)
        }
        SubscriptionFilter::Stream(s) => {
            // The head is read first: every event at or below it is in
            // the (later) stream read.
            let head = store.head().await?;
            let evs = store
                .read_stream(
                    s,
                    ReadStreamOptions::new()
                        .from_version(next_version)
                        .limit(limit),
                )
                .await?;
            let next_version = evs
                .last()
                .and_then(|e| e.stream.as_ref())
                .map_or(next_version, |r| r.version + 1);
            let full = evs.len() == limit;
            let evs: Vec<RecordedEvent> = evs.into_iter().filter(|e| e.position > after).collect();
            let old_only = full && evs.is_empty();
            let head = if full {
                evs.last().map_or(after, |e| e.position)
            } else {
                head
            };
            Page {
                events: evs,
                head,
                next_version,
                old_only,
            }
        }
    })
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "subscription name {name:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct DeadLetter {
    error: String,
    attempts: u32,
    parked_at_ms: u64,
}

/// An event a handler gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// The handler's last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was parked (ms since the Unix epoch).
    pub parked_at_ms: u64,
}

/// Processes one event. Implemented for async closures
/// `Fn(RecordedEvent) -> impl Future<Output = Result<(), E>>` (they get
/// their own copy of the event, so the future may keep it).
///
/// A handler with state implements it with the re-exported
/// [`async_trait`](crate::async_trait) attribute:
///
/// ```
/// use eskv_core::{async_trait, error::BoxError, EventHandler, EventStore, HandlerOptions, MemoryStore, NewEvent, RecordedEvent, SubscriptionOptions};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// struct Mailer { sent: Arc<AtomicU64> }
///
/// #[async_trait]
/// impl EventHandler for Mailer {
///     async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
///         if event.event_type == "Welcome" {
///             self.sent.fetch_add(1, Ordering::SeqCst);
///         }
///         Ok(())
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv_core::Result<()> {
/// let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
/// store.append(vec![NewEvent::new("Welcome", vec![])], None).await?;
/// let sent = Arc::new(AtomicU64::new(0));
/// let sub = store.subscribe(SubscriptionOptions::named("mailer")).await?;
/// let done = { let sent = sent.clone(); async move { while sent.load(Ordering::SeqCst) < 1 { tokio::task::yield_now().await } } };
/// sub.run(Mailer { sent: sent.clone() }, HandlerOptions::default(), done).await?;
/// assert_eq!(sent.load(Ordering::SeqCst), 1);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles `event`; an error triggers the retry policy.
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut, E> EventHandler for F
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: Into<BoxError>,
{
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        (self)(event.clone()).await.map_err(Into::into)
    }
}

/// What a runner does with an event whose handler keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Park it in the dead-letter list and move on (default).
    #[default]
    Park,
    /// Stop the runner with [`Error::Backend`] carrying the handler error.
    Stop,
}

/// Retry policy for handler runners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Attempts per event before giving up. Default 5.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default 10 ms.
    pub backoff: Duration,
    /// Longest retry delay. Default 1 s.
    pub max_backoff: Duration,
    /// What to do after the last attempt.
    pub on_failure: OnFailure,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            max_attempts: 5,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            on_failure: OnFailure::Park,
        }
    }
}

impl HandlerOptions {
    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the backoff bounds.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Sets the failure action.
    pub fn on_failure(mut self, f: OnFailure) -> Self {
        self.on_failure = f;
        self
    }
}

/// Runs one event through `handler` with retries. Returns `Ok(true)` if
/// handled, `Ok(false)` if parked.
async fn handle_with_retries<H: EventHandler + ?Sized>(
    store: &EventStore,
    consumer: Option<Consumer<'_>>,
    handler: &H,
    opts: &HandlerOptions,
    event: &RecordedEvent,
) -> Result<bool> {
    let mut delay = opts.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match handler.handle(event).await {
            Ok(()) => return Ok(true),
            Err(e) if attempt < opts.max_attempts => {
                tracing::debug!(position = event.position, attempt, error = %e, "handler failed, retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(opts.max_backoff);
            }
            Err(e) => match (opts.on_failure, consumer) {
                (OnFailure::Park, Some(consumer)) => {
                    tracing::warn!(position = event.position, error = %e, "parking event");
                    let rec = DeadLetter {
                        error: e.to_string(),
                        attempts: attempt,
                        parked_at_ms: now_ms(),
                    };
                    let value =
                        postcard::to_allocvec(&rec).map_err(|e| Error::backend("eskv", e))?;
                    let key = layout::dead_letter_key(consumer, event.position);
                    retry(store.options().max_retries, || async {
                        let mut txn = store.kv().begin().await?;
                        txn.put(key.clone(), value.clone());
                        txn.commit().await
                    })
                    .await?;
                    return Ok(false);
                }
                _ => {
                    return Err(Error::Backend {
                        backend: "handler",
                        source: format!(
                            "handler failed {attempt} times on the event at position {}: {e}",
                            event.position
                        )
                        .into(),
                    })
                }
            },
        }
    }
}

impl Subscription {
    /// Feeds every event to `handler` until `shutdown` completes, with
    /// retries and dead-lettering per `opts`, acknowledging after each
    /// batch. A named subscription thus resumes after the last handled
    /// batch on restart (at-least-once).
    pub async fn run<H, S>(mut self, handler: H, opts: HandlerOptions, shutdown: S) -> Result<()>
    where
        H: EventHandler,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let name = self.opts.name.clone();
        if name.is_none() && opts.on_failure == OnFailure::Park {
            return Err(Error::invalid(
                "parking failed events needs a named subscription (SubscriptionOptions::named), or use OnFailure::Stop",
            ));
        }
        loop {
            let batch = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                b = self.next_batch(self.opts.batch_size.max(1)) => b?,
            };
            for e in &batch {
                let consumer = name.as_deref().map(Consumer::Named);
                handle_with_retries(&self.store, consumer, &handler, &opts, e).await?;
            }
            if let (Some(_), Some(last)) = (&name, batch.last()) {
                self.ack(last.position).await?;
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a consumer group assigns events to partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionKey {
    /// By stream id (default). Events without a stream go by event id.
    #[default]
    StreamId,
    /// By the first tag starting with this prefix (for example `course:`).
    /// Events without such a tag go by event id.
    TagPrefix(String),
}

impl PartitionKey {
    /// The partition of `event` among `partitions`.
    pub fn partition(&self, event: &RecordedEvent, partitions: u32) -> u32 {
        let key: &[u8] = match self {
            PartitionKey::StreamId => event.stream.as_ref().map(|s| s.stream_id.as_bytes()),
            PartitionKey::TagPrefix(p) => event
                .tags
                .iter()
                .find(|t| t.starts_with(p.as_str()))
                .map(|t| t.as_bytes()),
        }
        .unwrap_or(&[]);
        let hash = if key.is_empty() {
            crc32c::crc32c(&event.id.to_bytes())
        } else {
            crc32c::crc32c(key)
        };
        hash % partitions.max(1)
    }
}

/// Options for a [`ConsumerGroup`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupOptions {
    /// Number of partitions (fixed for the group's life). Default 16.
    pub partitions: u32,
    /// Lease time to live. A member that stops renewing loses its
    /// partitions after this long. Default 10 s.
    pub lease_ttl: Duration,
    /// How events map to partitions.
    pub partition_key: PartitionKey,
    /// Which events the group consumes.
    pub filter: SubscriptionFilter,
    /// Events fetched per read.
    pub batch_size: usize,
    /// Handler retry policy.
    pub handler: HandlerOptions,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            partitions: 16,
            lease_ttl: Duration::from_secs(10),
            partition_key: PartitionKey::StreamId,
            filter: SubscriptionFilter::All,
            batch_size: 256,
            handler: HandlerOptions::default(),
        }
    }
}

impl GroupOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Sets the lease TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the partition key.
    pub fn partition_key(mut self, k: PartitionKey) -> Self {
        self.partition_key = k;
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, f: SubscriptionFilter) -> Self {
        self.filter = f;
        self
    }

    /// Sets the handler policy.
    pub fn handler(mut self, h: HandlerOptions) -> Self {
        self.handler = h;
        self
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Lease {
    owner: String,
    expires_ms: u64,
}

/// A member of a consumer group: a group of N members splits the
/// partitions between them; each partition is processed in order by one
/// member at a time, partitions in parallel. Membership and partition
/// ownership are leases stored in the store, so a member that dies loses
/// its partitions to the others after the lease TTL.
pub struct ConsumerGroup {
    store: EventStore,
    group: String,
    member: String,
    opts: GroupOptions,
}

impl std::fmt::Debug for ConsumerGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerGroup")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl ConsumerGroup {
    /// A member `member` of group `group`.
    pub fn new(store: EventStore, group: &str, member: &str, opts: GroupOptions) -> Result<Self> {
        validate_name(group)?;
        validate_name(member)?;
        let mut opts = opts;
        opts.partitions = opts.partitions.max(1);
        opts.batch_size = opts.batch_size.max(1);
        Ok(ConsumerGroup {
            store,
            group: group.to_owned(),
            member: member.to_owned(),
            opts,
        })
    }

    fn consumer(&self, partition: u32) -> Consumer<'_> {
        Consumer::Partition {
            group: &self.group,
            partition,
        }
    }

    fn lease_key(&self, p: u32) -> Vec<u8> {
        layout::lease_key(&self.group, p)
    }

    fn member_key(&self, m: &str) -> Vec<u8> {
        layout::member_key(&self.group, m)
    }

    /// Writes plus validations one transaction may carry on this backend.
    fn txn_budget(&self) -> usize {
        self.store
            .kv()
            .capabilities()
            .max_ops_per_txn
            .unwrap_or(usize::MAX)
            .max(2)
    }

    /// One membership round: renew our membership, count live members, keep
    /// a fair share of partitions, release extras, claim free or expired
    /// ones. Returns the partitions we own.
    ///
    /// Lease writes are split into transactions of at most the backend's
    /// [`max_ops_per_txn`](crate::Capabilities::max_ops_per_txn) operations
    /// (etcd allows 128): the first also renews the membership and plans the
    /// round; each later one re-reads its leases, so it renews or releases
    /// only leases still ours and claims only leases still free.
    async fn rebalance(&self) -> Result<Vec<u32>> {
        let ttl = self.opts.lease_ttl.as_millis().min(u64::MAX as u128) as u64;
        let budget = self.txn_budget();
        let retries = self.store.options().max_retries;
        let (rest, mut owned) = retry(retries, || async {
            let now = now_ms();
            let mut txn = self.store.kv().begin().await?;
            txn.put(
                self.member_key(&self.member),
                postcard::to_allocvec(&now.saturating_add(ttl))
                    .map_err(|e| Error::backend("eskv", e))?,
            );
            let members = txn
                .scan(layout::member_range(&self.group), ScanOptions::default())
                .await?;
            let me = self.member_key(&self.member);
            let live = 1 + members
                .iter()
                .filter(|(k, v)| *k != me && postcard::from_bytes::<u64>(v).unwrap_or(0) > now)
                .count();
            let fair = self.opts.partitions.div_ceil(live as u32) as usize;
            let leases = self.read_leases(&mut *txn).await?;
            let mut mine = Vec::new();
            let mut free = Vec::new();
            for p in 0..self.opts.partitions {
                match leases.get(&p) {
                    Some(l) if l.owner == self.member => mine.push(p),
                    Some(l) if l.expires_ms > now => {}
                    _ => free.push(p),
                }
            }
            // Releases first (others may claim them), then renewals, then
            // claims.
            let keep = mine.len().min(fair);
            let mut plan: Vec<(u32, LeaseAction)> = mine[keep..]
                .iter()
                .map(|&p| (p, LeaseAction::Release))
                .collect();
            plan.extend(mine[..keep].iter().map(|&p| (p, LeaseAction::Renew)));
            plan.extend(
                free.iter()
                    .take(fair - keep)
                    .map(|&p| (p, LeaseAction::Claim)),
            );
            // One operation went to the membership.
            let now_n = plan.len().min(budget - 1);
            let value = self.lease_value(now, ttl)?;
            let mut owned = Vec::new();
            for &(p, a) in &plan[..now_n] {
                match a {
                    LeaseAction::Release => txn.delete(self.lease_key(p)),
                    LeaseAction::Renew | LeaseAction::Claim => {
                        txn.put(self.lease_key(p), value.clone());
                        owned.push(p);
                    }
                }
            }
            txn.commit().await?;
            Ok((plan[now_n..].to_vec(), owned))
        })
        .await?;
        for chunk in rest.chunks(budget) {
            let got = retry(retries, || async {
                let now = now_ms();
                let mut txn = self.store.kv().begin().await?;
                let keys: Vec<Vec<u8>> = chunk.iter().map(|&(p, _)| self.lease_key(p)).collect();
                let current = txn.get_many(&keys).await?;
                let value = self.lease_value(now, ttl)?;
                let mut owned = Vec::new();
                for (&(p, a), v) in chunk.iter().zip(current) {
                    let lease: Option<Lease> =
                        v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
                    let ours = lease.as_ref().is_some_and(|l| l.owner == self.member);
                    let free = lease.as_ref().is_none_or(|l| l.expires_ms <= now);
                    match a {
                        LeaseAction::Release if ours => txn.delete(self.lease_key(p)),
                        LeaseAction::Renew | LeaseAction::Claim if ours || free => {
                            txn.put(self.lease_key(p), value.clone());
                            owned.push(p);
                        }
                        _ => {}
                    }
                }
                txn.commit().await?;
                Ok(owned)
            })
            .await?;
            owned.extend(got);
        }
        owned.sort_unstable();
        Ok(owned)
    }

    fn lease_value(&self, now: u64, ttl: u64) -> Result<Vec<u8>> {
        let lease = Lease {
            owner: self.member.clone(),
            expires_ms: now.saturating_add(ttl),
        };
        postcard::to_allocvec(&lease).map_err(|e| Error::backend("eskv", e))
    }

    /// Every stored lease of the group, by partition (undecodable leases
    /// count as free).
    async fn read_leases(&self, txn: &mut dyn KvTransaction) -> Result<BTreeMap<u32, Lease>> {
        let rows = txn
            .scan(layout::lease_range(&self.group), ScanOptions::default())
            .await?;
        let mut out = BTreeMap::new();
        for (k, v) in rows {
            if let layout::StateKey::Lease { partition, .. } = layout::parse_state_key(&k)? {
                if let Ok(l) = postcard::from_bytes::<Lease>(&v) {
                    out.insert(partition, l);
                }
            }
        }
        Ok(out)
    }

    /// Stores a partition checkpoint if we still hold its lease (fencing:
    /// a member that lost its lease cannot move the checkpoint).
    async fn ack_partition(&self, p: u32, position: Position) -> Result<bool> {
        let key = layout::checkpoint_key(self.consumer(p));
        let lease_key = self.lease_key(p);
        retry(self.store.options().max_retries, || async {
            let mut txn = self.store.kv().begin().await?;
            let vals = txn.get_many(&[lease_key.clone(), key.clone()]).await?;
            let lease: Option<Lease> = vals[0]
                .as_deref()
                .and_then(|b| postcard::from_bytes(b).ok());
            if lease.is_none_or(|l| l.owner != self.member) {
                return Ok(false);
            }
            let cur = vals[1]
                .as_deref()
                .map(|v| layout::parse_u64(v, "checkpoint"))
                .transpose()?;
            if cur.is_some_and(|c| c >= position) {
                return Ok(true);
            }
            txn.validate(lease_key.clone());
            txn.put(key.clone(), layout::u64_value(position));
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Runs this member until `shutdown` completes: renews leases every
    /// TTL/3 and processes owned partitions in parallel, one task each.
    /// On shutdown it releases its leases so others take over at once.
    pub async fn run<H, S>(self, handler: H, shutdown: S) -> Result<()>
    where
        H: EventHandler + 'static,
        S: Future<Output = ()>,
    {
        let this = Arc::new(self);
        let handler = Arc::new(handler);
        tokio::pin!(shutdown);
        // Partition tasks die with this future, also when it is dropped
        // rather than shut down.
        let mut tasks = AbortOnDrop(HashMap::new());
        let tasks = &mut tasks.0;
        // At least 10 ms between renewals, whatever the TTL.
        let tick = (this.opts.lease_ttl / 3).max(Duration::from_millis(10));
        let result = loop {
            let owned = match this.rebalance().await {
                Ok(o) => o,
                Err(e) => break Err(e),
            };
            // A partition task that stopped with an error (a handler that
            // keeps failing under OnFailure::Stop) stops the member.
            let failed: Vec<u32> = tasks
                .iter()
                .filter(|(_, t)| t.is_finished())
                .map(|(p, _)| *p)
                .collect();
            let mut stop = None;
            for p in failed {
                if let Some(t) = tasks.remove(&p) {
                    match t.await {
                        Ok(Err(e)) => stop = Some(e),
                        Err(e) if e.is_panic() => {
                            stop =
                                Some(Error::backend("handler", format!("partition {p} panicked")))
                        }
                        _ => {}
                    }
                }
            }
            if let Some(e) = stop {
                break Err(e);
            }
            tasks.retain(|p, t| {
                let keep = owned.contains(p);
                if !keep {
                    t.abort();
                }
                keep
            });
            for p in owned {
                tasks.entry(p).or_insert_with(|| {
                    let this = this.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move { this.run_partition(p, handler).await })
                });
            }
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = tokio::time::sleep(tick) => {}
            }
        };
        for (_, t) in tasks.drain() {
            t.abort();
        }
        let _ = this.release().await;
        result
    }

    /// Gives up every lease we hold and our membership, in transactions
    /// sized to the backend (see [`rebalance`](Self::rebalance)).
    async fn release(&self) -> Result<()> {
        let budget = self.txn_budget();
        let retries = self.store.options().max_retries;
        let ours: Vec<u32> = retry(retries, || async {
            let mut txn = self.store.kv().begin().await?;
            Ok(self
                .read_leases(&mut *txn)
                .await?
                .into_iter()
                .filter(|(_, l)| l.owner == self.member)
                .map(|(p, _)| p)
                .collect())
        })
        .await?;
        for chunk in ours.chunks(budget) {
            retry(retries, || async {
                let mut txn = self.store.kv().begin().await?;
                let keys: Vec<Vec<u8>> = chunk.iter().map(|&p| self.lease_key(p)).collect();
                let current = txn.get_many(&keys).await?;
                for (k, v) in keys.into_iter().zip(current) {
                    let lease: Option<Lease> =
                        v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
                    if lease.is_some_and(|l| l.owner == self.member) {
                        txn.delete(k);
                    }
                }
                txn.commit().await
            })
            .await?;
        }
        retry(retries, || async {
            let mut txn = self.store.kv().begin().await?;
            txn.delete(self.member_key(&self.member));
            txn.commit().await
        })
        .await
    }

    async fn run_partition<H: EventHandler>(
        self: Arc<Self>,
        p: u32,
        handler: Arc<H>,
    ) -> Result<()> {
        let consumer = self.consumer(p);
        let start = self.store.consumer_checkpoint(consumer).await?.unwrap_or(0);
        let mut sub = self
            .store
            .subscribe(
                SubscriptionOptions::new()
                    .start(StartFrom::After(start))
                    .filter(self.opts.filter.clone())
                    .batch_size(self.opts.batch_size),
            )
            .await?;
        loop {
            let batch = sub.next_batch(self.opts.batch_size).await?;
            for e in &batch {
                if self.opts.partition_key.partition(e, self.opts.partitions) == p {
                    handle_with_retries(
                        &self.store,
                        Some(consumer),
                        handler.as_ref(),
                        &self.opts.handler,
                        e,
                    )
                    .await?;
                }
            }
            if let Some(last) = batch.last() {
                if !self.ack_partition(p, last.position).await? {
                    tracing::info!(partition = p, "lease lost; stopping partition");
                    return Ok(());
                }
            }
        }
    }
}

/// What a rebalance does with one partition's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseAction {
    Release,
    Renew,
    Claim,
}

struct AbortOnDrop(HashMap<u32, tokio::task::JoinHandle<Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}
