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
//! (or its clones) wake subscribers at once through a watch channel. On
//! backends shared by several processes ([`Capabilities::single_process`]
//! is false) subscribers also poll with adaptive backoff, from
//! [`SubscriptionOptions::poll_min`] doubling to
//! [`SubscriptionOptions::poll_max`] while idle.
//!
//! [`Capabilities::single_process`]: crate::Capabilities::single_process

use crate::error::{BoxError, Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::ScanOptions;
use crate::layout;
use crate::query::Query;
use crate::store::{retry, EventStore, ReadOptions, ReadStreamOptions};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
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
    head_rx: watch::Receiver<Position>,
    /// Commits on the KV store itself (any handle), when it can tell.
    kv_rx: Option<watch::Receiver<u64>>,
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
        let start = match opts.start {
            StartFrom::Beginning => 0,
            StartFrom::After(p) => p,
            StartFrom::End => self.head().await?,
            StartFrom::Checkpoint => match &opts.name {
                Some(n) => self.checkpoint(n).await?.unwrap_or(0),
                None => return Err(Error::invalid(
                    "StartFrom::Checkpoint needs a named subscription (SubscriptionOptions::named)",
                )),
            },
        };
        let next_version = match &opts.filter {
            SubscriptionFilter::Stream(s) if start > 0 => {
                self.stream_version_after(s, start).await?
            }
            _ => 1,
        };
        Ok(Subscription {
            store: self.clone(),
            poll: opts.poll_min,
            head_rx: self.watch_head(),
            kv_rx: self.kv().commit_watch(),
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
        let mut txn = self.kv().begin().await?;
        txn.get(&checkpoint_key(name))
            .await?
            .map(|v| layout::parse_u64(&v, "checkpoint"))
            .transpose()
    }

    /// Stores `position` as the checkpoint of `name`. Checkpoints only move
    /// forward (a lower position is ignored) and never past the head.
    pub async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_name(name)?;
        let key = checkpoint_key(name);
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

    /// Every stored checkpoint, by name.
    pub async fn checkpoints(&self) -> Result<BTreeMap<String, Position>> {
        let mut txn = self.kv().begin().await?;
        let range = crate::kv::KeyRange::children(&layout::subscription_kind_prefix("checkpoint"));
        let mut out = BTreeMap::new();
        for (k, v) in txn.scan(range, ScanOptions::default()).await? {
            let mut r = crate::tuple::KeyReader::new(&k);
            r.skip_raw(1)?;
            r.str()?;
            out.insert(r.str()?, layout::parse_u64(&v, "checkpoint")?);
        }
        Ok(out)
    }

    /// Events parked in the dead-letter list of subscription `name`.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        validate_name(name)?;
        let mut txn = self.kv().begin().await?;
        let rows = txn
            .scan(
                crate::kv::KeyRange::children(&dead_letter_prefix(name)),
                ScanOptions::default(),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let mut r = crate::tuple::KeyReader::new(&k);
            r.skip_raw(1)?;
            r.str()?;
            r.str()?;
            let pos = r.u64()?;
            let rec: DeadLetter = postcard::from_bytes(&v).map_err(|e| {
                Error::corrupt(Some(pos), format!("dead-letter entry does not decode: {e}"))
            })?;
            let event = self
                .read_all(ReadOptions::new().from(pos).limit(1))
                .await?
                .events
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::corrupt(Some(pos), "a parked event is missing from the log")
                })?;
            out.push(ParkedEvent {
                event,
                error: rec.error,
                attempts: rec.attempts,
                parked_at_ms: rec.parked_at_ms,
            });
        }
        Ok(out)
    }

    /// Runs `handler` again on every parked event of `name`; events it now
    /// handles are removed from the list. Returns how many were removed.
    pub async fn replay_parked<H: EventHandler>(&self, name: &str, handler: &H) -> Result<usize> {
        let mut fixed = 0;
        for p in self.parked(name).await? {
            if handler.handle(&p.event).await.is_ok() {
                let key = dead_letter_key(name, p.event.position);
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
        let single = self.store.kv().capabilities().single_process;
        // Embedded backends are woken by the watch channels; the slow timer
        // is only a safety net there.
        let sleep = if single {
            self.opts.poll_max
        } else {
            self.poll
        };
        let kv_changed = async {
            match self.kv_rx.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = self.head_rx.changed() => {
                if r.is_err() {
                    tokio::time::sleep(sleep).await;
                }
            }
            _ = kv_changed => {}
            _ = tokio::time::sleep(sleep) => {
                self.poll = self.poll.saturating_mul(2).min(self.opts.poll_max);
            }
        }
        Ok(())
    }

    /// Reads the next page after the cursor. Returns true if it buffered
    /// anything.
    async fn fill(&mut self) -> Result<bool> {
        let limit = self.opts.batch_size.max(1);
        let after = self.scanned;
        let (events, head) = match &self.opts.filter {
            SubscriptionFilter::All => {
                let r = self
                    .store
                    .read_all(ReadOptions::after(after).limit(limit))
                    .await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Query(q) => {
                let r = self
                    .store
                    .read(q, ReadOptions::after(after).limit(limit))
                    .await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Category(c) => {
                let r = self
                    .store
                    .read_category(c, ReadOptions::after(after).limit(limit))
                    .await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Stream(s) => {
                // The head is read first: every event at or below it is in
                // the (later) stream read.
                let head = self.store.head().await?;
                let evs = self
                    .store
                    .read_stream(
                        s,
                        ReadStreamOptions::new()
                            .from_version(self.next_version)
                            .limit(limit),
                    )
                    .await?;
                if let Some(last) = evs.last() {
                    self.next_version = last
                        .stream
                        .as_ref()
                        .map_or(self.next_version, |r| r.version + 1);
                }
                let full = evs.len() == limit;
                let evs: Vec<RecordedEvent> =
                    evs.into_iter().filter(|e| e.position > after).collect();
                if full && evs.is_empty() {
                    // Old events before the start position: keep paging.
                    return Ok(false);
                }
                let head = if full {
                    evs.last().map_or(after, |e| e.position)
                } else {
                    head
                };
                (evs, head)
            }
        };
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

pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "subscription name {name:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

fn checkpoint_key(name: &str) -> Vec<u8> {
    layout::subscription_key("checkpoint", name).finish()
}

fn dead_letter_prefix(name: &str) -> Vec<u8> {
    layout::subscription_key("dead-letter", name).finish()
}

fn dead_letter_key(name: &str, pos: Position) -> Vec<u8> {
    layout::subscription_key("dead-letter", name)
        .u64(pos)
        .finish()
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
    name: Option<&str>,
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
            Err(e) => match (opts.on_failure, name) {
                (OnFailure::Park, Some(name)) => {
                    tracing::warn!(position = event.position, error = %e, "parking event");
                    let rec = DeadLetter {
                        error: e.to_string(),
                        attempts: attempt,
                        parked_at_ms: now_ms(),
                    };
                    let value =
                        postcard::to_allocvec(&rec).map_err(|e| Error::backend("eskv", e))?;
                    let key = dead_letter_key(name, event.position);
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
                handle_with_retries(&self.store, name.as_deref(), &handler, &opts, e).await?;
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

    fn partition_name(&self, p: u32) -> String {
        format!("{}#{p}", self.group)
    }

    fn lease_key(&self, p: u32) -> Vec<u8> {
        layout::subscription_key("lease", &self.group)
            .u64(p as u64)
            .finish()
    }

    fn member_key(&self, m: &str) -> Vec<u8> {
        layout::subscription_key("member", &self.group)
            .str(m)
            .finish()
    }

    /// One membership round: renew our membership, count live members, keep
    /// a fair share of partitions, release extras, claim free or expired
    /// ones. Returns the partitions we own.
    async fn rebalance(&self) -> Result<Vec<u32>> {
        let ttl = self.opts.lease_ttl.as_millis().min(u64::MAX as u128) as u64;
        retry(self.store.options().max_retries, || async {
            let now = now_ms();
            let mut txn = self.store.kv().begin().await?;
            txn.put(
                self.member_key(&self.member),
                postcard::to_allocvec(&now.saturating_add(ttl))
                    .map_err(|e| Error::backend("eskv", e))?,
            );
            let members = txn
                .scan(
                    crate::kv::KeyRange::children(
                        &layout::subscription_key("member", &self.group).finish(),
                    ),
                    ScanOptions::default(),
                )
                .await?;
            let mut live = 1; // ourselves
            for (k, v) in &members {
                let expires: u64 = postcard::from_bytes(v).unwrap_or(0);
                if *k != self.member_key(&self.member) && expires > now {
                    live += 1;
                }
            }
            let fair = self.opts.partitions.div_ceil(live) as usize;
            let keys: Vec<Vec<u8>> = (0..self.opts.partitions)
                .map(|p| self.lease_key(p))
                .collect();
            let leases = txn.get_many(&keys).await?;
            let mut mine = Vec::new();
            let mut free = Vec::new();
            for (p, v) in leases.iter().enumerate() {
                let lease: Option<Lease> = v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
                match lease {
                    Some(l) if l.owner == self.member => mine.push(p as u32),
                    Some(l) if l.expires_ms > now => {}
                    _ => free.push(p as u32),
                }
            }
            while mine.len() > fair {
                if let Some(p) = mine.pop() {
                    txn.delete(self.lease_key(p));
                }
            }
            for p in free {
                if mine.len() >= fair {
                    break;
                }
                mine.push(p);
            }
            mine.sort_unstable();
            let lease = Lease {
                owner: self.member.clone(),
                expires_ms: now.saturating_add(ttl),
            };
            let value = postcard::to_allocvec(&lease).map_err(|e| Error::backend("eskv", e))?;
            for p in &mine {
                txn.put(self.lease_key(*p), value.clone());
            }
            txn.commit().await?;
            Ok(mine)
        })
        .await
    }

    /// Stores a partition checkpoint if we still hold its lease (fencing:
    /// a member that lost its lease cannot move the checkpoint).
    async fn ack_partition(&self, p: u32, position: Position) -> Result<bool> {
        let key = checkpoint_key(&self.partition_name(p));
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

    async fn release(&self) -> Result<()> {
        let mut txn = self.store.kv().begin().await?;
        let keys: Vec<Vec<u8>> = (0..self.opts.partitions)
            .map(|p| self.lease_key(p))
            .collect();
        let leases = txn.get_many(&keys).await?;
        for (p, v) in leases.iter().enumerate() {
            let lease: Option<Lease> = v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
            if lease.is_some_and(|l| l.owner == self.member) {
                txn.delete(self.lease_key(p as u32));
            }
        }
        txn.delete(self.member_key(&self.member));
        txn.commit().await
    }

    async fn run_partition<H: EventHandler>(
        self: Arc<Self>,
        p: u32,
        handler: Arc<H>,
    ) -> Result<()> {
        let name = self.partition_name(p);
        let mut sub = self
            .store
            .subscribe(
                SubscriptionOptions::named(name.clone())
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
                        Some(&name),
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

struct AbortOnDrop(HashMap<u32, tokio::task::JoinHandle<Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}
