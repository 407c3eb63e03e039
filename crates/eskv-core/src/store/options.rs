//! Options, requests and results of the event store's public calls.

use crate::error::ExpectedVersion;
use crate::error::Result;
use crate::event::{NewEvent, Position, RecordedEvent, StreamVersion};
use crate::query::{AppendCondition, Query};
use crate::upcast::Upcasters;

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

impl Limits {
    /// The highest position, stream version or metadata revision an
    /// import accepts: `u64::MAX - 1 - max_events_per_append`, so that at
    /// least one full append still fits after an import. Numbers never
    /// wrap, and `u64::MAX` itself is never used: an append or lifecycle
    /// change that would need it is refused with
    /// [`Error::LimitExceeded`](crate::Error::LimitExceeded).
    pub fn import_ceiling(&self) -> u64 {
        let room = u64::try_from(self.max_events_per_append).unwrap_or(u64::MAX);
        (u64::MAX - 1).saturating_sub(room.max(1))
    }
}

/// How the read paths of a store handle return the personal parts of
/// events ([`EventStoreOptions::personal_parts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PersonalParts {
    /// Opened with the subject's key: the bytes, or erased once the
    /// subject was forgotten. Needs the store key.
    #[default]
    Opened,
    /// As stored: sealed ([`PersonalData::sealed_part`]) while the
    /// subject's key lives, erased once it was forgotten. Needs no store
    /// key and never decrypts anything: for backups and archives
    /// (`eskv::export`), which must never hold personal data in clear.
    ///
    /// [`PersonalData::sealed_part`]: crate::PersonalData::sealed_part
    Sealed,
}

/// Options for [`EventStore::open_with`](crate::EventStore::open_with).
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
    /// The application's key for personal data
    /// ([`NewEvent::with_personal_data`]): needed to append or read
    /// personal parts; a wrong one is refused at open.
    pub store_key: Option<crate::crypto::StoreKey>,
    /// Whether an open with a store key records a check of it in a store
    /// that has none, after which any other key is refused at open.
    /// Default true. A tool that only looks at a store sets it false, so
    /// a mistyped key binds nothing: the key is still checked where one
    /// is recorded, and still opens personal parts. A handle that writes
    /// personal data should bind (the check is what refuses another key
    /// later).
    pub bind_store_key: bool,
    /// How reads return personal parts. Default
    /// [`PersonalParts::Opened`].
    pub personal_parts: PersonalParts,
    /// Schema upcasters applied on every read (see [`crate::upcast`]).
    /// Default: none.
    pub upcasters: Upcasters,
}

impl Default for EventStoreOptions {
    fn default() -> Self {
        EventStoreOptions {
            limits: Limits::default(),
            max_batch: 256,
            max_retries: 32,
            store_key: None,
            bind_store_key: true,
            personal_parts: PersonalParts::Opened,
            upcasters: Upcasters::new(),
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

    /// Sets the store key for personal data (crypto-shredding).
    pub fn store_key(mut self, key: crate::crypto::StoreKey) -> Self {
        self.store_key = Some(key);
        self
    }

    /// Sets whether an open with a store key records its check where
    /// none is (see [`EventStoreOptions::bind_store_key`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// use eskv_core::{EventStore, EventStoreOptions, KvStore, MemoryStore, StoreKey};
    /// use std::sync::Arc;
    /// let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    /// let typo = EventStoreOptions::default().store_key(StoreKey::from_bytes([1; 32])).bind_store_key(false);
    /// EventStore::open_with(kv.clone(), typo.clone()).await?; // looks, binds nothing
    /// let right = EventStoreOptions::default().store_key(StoreKey::from_bytes([2; 32]));
    /// EventStore::open_with(kv.clone(), right).await?; // binds the store to its key
    /// assert!(EventStore::open_with(kv, typo).await.is_err()); // still checked
    /// # Ok(()) }
    /// ```
    pub fn bind_store_key(mut self, bind: bool) -> Self {
        self.bind_store_key = bind;
        self
    }

    /// Sets how reads return personal parts (see [`PersonalParts`]).
    pub fn personal_parts(mut self, parts: PersonalParts) -> Self {
        self.personal_parts = parts;
        self
    }

    /// Sets the retry budget.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Registers the upcaster of `event_type` from schema version
    /// `from_version` to `from_version + 1`: it gets the stored event and
    /// returns its payload in the next version. See [`crate::upcast`].
    ///
    /// ```
    /// use eskv_core::EventStoreOptions;
    /// let opts = EventStoreOptions::default()
    ///     .upcast("Greeted", 1, |e| Ok([b"v2:".as_slice(), &e.data].concat()));
    /// assert_eq!(opts.upcasters.current_version("Greeted"), 2);
    /// ```
    pub fn upcast(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(&RecordedEvent) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        self.upcasters.add(event_type, from_version, step);
        self
    }

    /// [`upcast`](Self::upcast) for JSON payloads: the step gets the
    /// payload as a `serde_json::Value` and returns the next version's.
    ///
    /// ```
    /// use eskv_core::EventStoreOptions;
    /// let opts = EventStoreOptions::default().upcast_json("Renamed", 1, |mut v| {
    ///     v["name"] = v["title"].take();
    ///     Ok(v)
    /// });
    /// assert_eq!(opts.upcasters.current_version("Renamed"), 2);
    /// ```
    pub fn upcast_json(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(serde_json::Value) -> Result<serde_json::Value> + Send + Sync + 'static,
    ) -> Self {
        self.upcast(event_type, from_version, move |e| {
            let v: serde_json::Value = e.json()?;
            <crate::event::Json as crate::event::PayloadCodec>::encode(&step(v)?)
        })
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

/// Options for [`EventStore::read_stream`](crate::EventStore::read_stream).
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

/// Filters for [`EventStore::read_all_filtered`](crate::EventStore::read_all_filtered).
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
    /// The store's head at the read's snapshot: the last position of the
    /// log then, whatever `limit`, `until` or the query. A reader paging
    /// through the log is `head - consistent_through` positions behind it.
    pub head: Position,
}

/// [`ReadResult::consistent_through`] of a read with `opts` at a snapshot
/// whose head is `head`, which returned `events`.
pub(super) fn consistent_through(
    opts: ReadOptions,
    head: Position,
    events: &[RecordedEvent],
) -> Position {
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

/// What [`EventStore::read_stream`](crate::EventStore::read_stream)
/// returns: the events, the stream's version, and the position the read
/// is consistent through, all from one snapshot.
///
/// It dereferences to the slice of events and iterates over them, so
/// `read[0]`, `read.len()` and `for e in &read` work as on a `Vec`.
///
/// ```
/// use eskv_core::StreamRead;
/// let read = StreamRead::default();
/// assert!(read.is_empty());
/// assert_eq!((read.version, read.consistent_through), (0, 0));
/// let events: Vec<_> = read.into_iter().collect();
/// assert!(events.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRead {
    /// The events, in the requested order.
    pub events: Vec<RecordedEvent>,
    /// The stream's version at the read's snapshot (0 when it has no
    /// events), whatever part of it was read: pass it as
    /// `ExpectedVersion::Exact` to append on what was read. With `until`
    /// it is still the current version, not the version at `until`.
    pub version: StreamVersion,
    /// The global position the read reflects the log through: the head at
    /// the read's snapshot capped by `until`; for a forward read cut short
    /// by `limit`, the position of the last event returned (continue with
    /// `from_version` of the last event's version + 1).
    pub consistent_through: Position,
}

impl std::ops::Deref for StreamRead {
    type Target = [RecordedEvent];
    fn deref(&self) -> &[RecordedEvent] {
        &self.events
    }
}

impl IntoIterator for StreamRead {
    type Item = RecordedEvent;
    type IntoIter = std::vec::IntoIter<RecordedEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

impl<'a> IntoIterator for &'a StreamRead {
    type Item = &'a RecordedEvent;
    type IntoIter = std::slice::Iter<'a, RecordedEvent>;
    fn into_iter(self) -> Self::IntoIter {
        self.events.iter()
    }
}

impl From<StreamRead> for Vec<RecordedEvent> {
    fn from(r: StreamRead) -> Self {
        r.events
    }
}

/// A stream's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInfo {
    /// Stream id.
    pub stream_id: String,
    /// True when the stream has events, or had events that only its
    /// `max_age` released (it exists with nothing to read, as in
    /// KurrentDB, and `first_version` is `version + 1`); false when it
    /// was never written, or reads as absent after deletion, truncation
    /// or the log's cut.
    pub exists: bool,
    /// Current version (0 when it does not exist).
    pub version: StreamVersion,
    /// Position of its last event.
    pub last_position: Option<Position>,
    /// Soft-deleted (or truncated past its last event): reads as absent,
    /// `exists` is false, and the next append continues at `version + 1`.
    pub deleted: bool,
    /// Tombstoned: never writable again.
    pub tombstoned: bool,
    /// The stream's retention.
    pub retention: crate::lifecycle::Retention,
    /// Revision of its retention metadata (`None`: never set), the
    /// expected version of [`EventStore::set_retention`].
    ///
    /// [`EventStore::set_retention`]: crate::EventStore::set_retention
    pub metadata_revision: Option<u64>,
    /// The first version a read can return now: versions below it were
    /// released by retention (`max_count`, `truncate_before`, and
    /// `max_age` as of this call), deletion or the log's truncation.
    /// `version + 1` when none is left to read.
    pub first_version: StreamVersion,
}
