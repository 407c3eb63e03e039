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

use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::query::Query;
use crate::retry::retry;
use crate::store::{EventStore, ReadOptions, ReadStreamOptions};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

mod checkpoint;
mod dead_letter;
mod group;
mod handler;

pub use dead_letter::ParkedEvent;
pub use group::{ConsumerGroup, GroupOptions, PartitionKey, PartitionState};
pub use handler::{EventHandler, HandlerOptions, OnFailure};

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
///
/// # As a `Stream`
///
/// `Subscription` implements [`futures::Stream`] with
/// `Item = Result<RecordedEvent>`: it never ends by itself (it is live),
/// yields `Some(Err(e))` when a read fails after the store's retries (the
/// next poll tries again), and composes with `StreamExt` and
/// `TryStreamExt` (`take`, `filter`, `chunks`, `try_for_each`, ...).
///
/// **Cancellation safety.** Every way of waiting ([`next`](Self::next),
/// [`next_batch`](Self::next_batch) and polling the stream) keeps its
/// in-flight read inside the subscription and moves the cursor only when
/// events are handed out, so dropping such a future (in a `select!`, on a
/// timeout) loses no event: the next call delivers it.
///
/// **The name clash.** The inherent [`next`](Self::next) (returning
/// `Result<RecordedEvent>`) takes precedence over `StreamExt::next`
/// (returning `Option<Result<RecordedEvent>>`) in method calls on a
/// `Subscription`. Use a combinator, call the trait method explicitly
/// (`StreamExt::next(&mut sub)`), or pin it first: method calls on a
/// `Pin<&mut Subscription>` find `StreamExt::next`.
///
/// ```
/// use eskv_core::{EventStore, MemoryStore, NewEvent, SubscriptionOptions};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv_core::Result<()> {
/// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
/// for i in 0..3 {
///     store.append(vec![NewEvent::new("Tick", vec![i])], None).await?;
/// }
///
/// // A combinator: the first three events, then the stream ends.
/// let mut first = store.subscribe(SubscriptionOptions::new()).await?.take(3);
/// while let Some(event) = first.next().await {
///     println!("{}", event?.position);
/// }
///
/// // Pinned: `next` is StreamExt::next.
/// let sub = store.subscribe(SubscriptionOptions::new()).await?;
/// let mut sub = std::pin::pin!(sub);
/// while let Some(event) = sub.next().await {
///     if event?.position == 3 {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
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
    /// The read or wait in flight. It changes nothing until it completes,
    /// so dropping a caller's future mid-way loses nothing. Behind a mutex
    /// only to keep `Subscription: Sync` (the futures are `Send` only);
    /// it is reached through `&mut self` and never locked.
    in_flight: std::sync::Mutex<Option<InFlight>>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

enum InFlight {
    /// A page read after `after`.
    Read {
        after: Position,
        limit: usize,
        page: BoxFuture<Result<Page>>,
    },
    /// Waiting for a head change; true when it timed out.
    Wait(BoxFuture<bool>),
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
                crate::validate::validate_stream_id(s, &self.options().limits)?
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
            in_flight: std::sync::Mutex::new(None),
        })
    }
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
                        Err(e) => tracing::debug!(error = %e, "commit relay could not read the head")}
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
    /// Cancellation-safe (see [`Subscription`]).
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        std::future::poll_fn(|cx| self.poll_filled(cx)).await?;
        let e = self.buffer.pop_front().expect("filled");
        self.delivered = e.position;
        Ok(e)
    }

    /// Up to `max` events, waiting for at least one. Cancellation-safe.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        std::future::poll_fn(|cx| self.poll_filled(cx)).await?;
        Ok(self.hand_out(max.max(1)))
    }

    /// Events already available, without waiting (possibly none).
    pub async fn try_next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        if self.buffer.is_empty() {
            // A read or wait in flight changed nothing yet: drop it and
            // read now.
            *self.in_flight() = None;
            let after = self.scanned;
            let limit = self.opts.batch_size.max(1);
            let page = self.read_future(after, limit).await?;
            self.apply(after, limit, page);
        }
        Ok(self.hand_out(max))
    }

    fn hand_out(&mut self, max: usize) -> Vec<RecordedEvent> {
        let n = max.min(self.buffer.len());
        let out: Vec<RecordedEvent> = self.buffer.drain(..n).collect();
        if let Some(last) = out.last() {
            self.delivered = last.position;
        }
        out
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

    /// Ready once the buffer holds an event: reads the page after the
    /// cursor and, when there is nothing new, waits for a wake-up (the
    /// head watch, or the poll timer) and reads again. Reads are retried
    /// on transient errors with the store's retry policy (the one appends
    /// use), so a subscriber rides out short unavailability; only an
    /// exhausted budget or a permanent error is returned.
    fn poll_filled(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            if !self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let in_flight = match self.in_flight().take() {
                Some(f) => f,
                None => {
                    let (after, limit) = (self.scanned, self.opts.batch_size.max(1));
                    InFlight::Read {
                        after,
                        limit,
                        page: self.read_future(after, limit),
                    }
                }
            };
            match in_flight {
                InFlight::Read {
                    after,
                    limit,
                    mut page,
                } => match page.as_mut().poll(cx) {
                    Poll::Pending => {
                        *self.in_flight() = Some(InFlight::Read { after, limit, page });
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(page)) => {
                        let old_only = page.old_only;
                        if self.apply(after, limit, page) {
                            self.poll = self.opts.poll_min;
                        } else if !old_only && *self.head_rx.borrow_and_update() <= self.scanned {
                            *self.in_flight() = Some(InFlight::Wait(self.wait_future()));
                        }
                    }
                },
                InFlight::Wait(mut wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => {
                        *self.in_flight() = Some(InFlight::Wait(wait));
                        return Poll::Pending;
                    }
                    Poll::Ready(timed_out) => {
                        if timed_out {
                            self.poll = self.poll.saturating_mul(2).min(self.opts.poll_max);
                        }
                    }
                },
            }
        }
    }

    fn in_flight(&mut self) -> &mut Option<InFlight> {
        self.in_flight.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The read of the page after `after`; it has no side effects, so it
    /// can be retried or dropped.
    fn read_future(&self, after: Position, limit: usize) -> BoxFuture<Result<Page>> {
        let store = self.store.clone();
        let filter = self.opts.filter.clone();
        let next_version = self.next_version;
        Box::pin(async move {
            retry(store.options().max_retries, || {
                read_page(&store, &filter, after, next_version, limit)
            })
            .await
        })
    }

    /// Waits for the head to move past what was scanned, or for the poll
    /// timer. Embedded backends are woken through the head watch (appends
    /// through this handle, or the commit relay for other handles); the
    /// slow timer is only a safety net there.
    fn wait_future(&self) -> BoxFuture<bool> {
        let mut head = self.head_rx.clone();
        let sleep = if self.watched {
            self.opts.poll_max
        } else {
            self.poll
        };
        Box::pin(async move {
            tokio::select! {
                r = head.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(sleep).await;
                    }
                    false
                }
                _ = tokio::time::sleep(sleep) => true,
            }
        })
    }

    /// Takes a page read after `after` into the buffer and moves the scan
    /// cursor. Returns true if it buffered anything.
    fn apply(&mut self, after: Position, limit: usize, page: Page) -> bool {
        self.next_version = page.next_version;
        if page.old_only {
            // Only stream events before the start: keep paging.
            return false;
        }
        let Page {
            events,
            examined,
            head,
            ..
        } = page;
        let got = !events.is_empty();
        if let Some(last) = events.last() {
            let lag = head.saturating_sub(last.position);
            let _span = tracing::debug_span!(
                "eskv.subscription",
                name = self.opts.name.as_deref(),
                position = last.position,
                lag,
                count = events.len(),
            )
            .entered();
            crate::observe::subscription_lag(self.opts.name.as_deref(), lag);
        }
        // A short page means everything up to `examined` was examined.
        self.scanned = if events.len() < limit {
            examined.max(after)
        } else {
            events.last().map_or(after, |e| e.position)
        };
        self.buffer.extend(events);
        got
    }
}

impl futures::Stream for Subscription {
    type Item = Result<RecordedEvent>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.poll_filled(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let e = this.buffer.pop_front().expect("filled");
                this.delivered = e.position;
                Poll::Ready(Some(Ok(e)))
            }
        }
    }
}

/// One page read by a subscription.
struct Page {
    events: Vec<RecordedEvent>,
    /// Everything up to here was examined (when the page is short).
    examined: Position,
    /// The store's head when the page was read: the lag is measured to it.
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
    let page = |r: crate::ReadResult| Page {
        events: r.events,
        examined: r.consistent_through,
        head: r.head,
        next_version,
        old_only: false,
    };
    Ok(match filter {
        SubscriptionFilter::All => {
            let r = store
                .read_all(ReadOptions::after(after).limit(limit))
                .await?;
            page(r)
        }
        SubscriptionFilter::Query(q) => {
            let r = store
                .read(q, ReadOptions::after(after).limit(limit))
                .await?;
            page(r)
        }
        SubscriptionFilter::Category(c) => {
            let r = store
                .read_category(c, ReadOptions::after(after).limit(limit))
                .await?;
            page(r)
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
            let examined = if full {
                evs.last().map_or(after, |e| e.position)
            } else {
                head
            };
            Page {
                examined,
                head: evs.last().map_or(head, |e| e.position.max(head)),
                events: evs,
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

pub(crate) use crate::recorded_at::now_ms;
