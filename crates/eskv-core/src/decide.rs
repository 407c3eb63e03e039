//! Deciders: read the events a decision depends on, fold them into state,
//! decide, and append — re-reading and re-deciding when a concurrent
//! append changed what the decision read.
//!
//! Two consistency boundaries are supported:
//!
//! - **DCB** ([`EventStore::decide`]): the boundary is a [`Query`]; the
//!   append carries the condition "nothing matching the query after the
//!   read's position", and [`Error::ConditionFailed`] triggers a re-decision.
//! - **A stream** ([`EventStore::decide_stream`]): the boundary is one
//!   stream; the append expects the version the decision read, and
//!   [`Error::WrongExpectedVersion`] triggers a re-decision.
//!
//! Re-decisions are bounded ([`DecideOptions::max_attempts`]) with jittered
//! exponential backoff. Your own domain error comes back as
//! [`DecideError::Rejected`], typed, so callers match on it directly.
//!
//! ```
//! use eskv_core::{DecideError, EventStore, MemoryStore, Query, NewEvent, DomainEvent};
//! # use eskv_core::{DecodeError, Json, PayloadCodec};
//! # #[derive(Debug, PartialEq)]
//! # enum Seat { Taken }
//! # impl DomainEvent for Seat {
//! #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
//! #     type Codec = Json;
//! #     fn event_type(&self) -> &'static str { "SeatTaken" }
//! #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
//! #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
//! #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
//! #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
//! // `Seat` is a `DomainEvent` (usually `#[derive(eskv::DomainEvent)]`).
//! let take_seat = || {
//!     store.decide(
//!         Query::of(["SeatTaken"], ["room:r1"]),
//!         |taken: &mut u32, _: &Seat| *taken += 1,
//!         |taken| if *taken < 2 { Ok(vec![Seat::Taken]) } else { Err("room r1 is full") },
//!     )
//! };
//! take_seat().await?;
//! take_seat().await?;
//! assert!(matches!(take_seat().await, Err(DecideError::Rejected("room r1 is full"))));
//! # Ok(()) }
//! ```

use crate::error::{Error, ExpectedVersion, Result};
use crate::event::Metadata;
use crate::query::{AppendCondition, Query};
use crate::store::{AppendResult, EventStore, ReadOptions, ReadStreamOptions};
use crate::typed::{DecodeError, DomainEvent};
use std::hash::BuildHasher;
use std::time::Duration;

/// How a decider retries when a concurrent append changed its boundary.
///
/// ```
/// use eskv_core::DecideOptions;
/// use std::time::Duration;
/// let o = DecideOptions::new().max_attempts(5).backoff(Duration::from_millis(2), Duration::from_millis(50));
/// assert_eq!((o.max_attempts, o.max_backoff), (5, Duration::from_millis(50)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecideOptions {
    /// Decisions tried in all (the first one included) before giving up
    /// with [`DecideError::RetriesExhausted`]. Default 20.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt, with full
    /// jitter (a random delay between half and all of it). Default 1 ms.
    pub backoff: Duration,
    /// Longest delay. Default 100 ms.
    pub max_backoff: Duration,
    /// Metadata put on every appended event (correlation and causation
    /// ids). Default: none.
    pub metadata: Metadata,
}

impl Default for DecideOptions {
    fn default() -> Self {
        DecideOptions {
            max_attempts: 20,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(100),
            metadata: Metadata::default(),
        }
    }
}

impl DecideOptions {
    /// The defaults: 20 attempts, backoff from 1 ms to 100 ms, no metadata.
    ///
    /// ```
    /// use eskv_core::DecideOptions;
    /// assert_eq!(DecideOptions::new(), DecideOptions::default());
    /// assert_eq!(DecideOptions::new().max_attempts, 20);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the attempts (at least 1).
    ///
    /// ```
    /// use eskv_core::DecideOptions;
    /// assert_eq!(DecideOptions::new().max_attempts(0).max_attempts, 1);
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the backoff bounds (`max` is at least `first`).
    ///
    /// ```
    /// use eskv_core::DecideOptions;
    /// use std::time::Duration;
    /// let o = DecideOptions::new().backoff(Duration::from_millis(10), Duration::from_millis(1));
    /// assert_eq!((o.backoff, o.max_backoff), (Duration::from_millis(10), Duration::from_millis(10)));
    /// ```
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Sets the metadata of appended events.
    ///
    /// ```
    /// use eskv_core::{DecideOptions, Metadata};
    /// let o = DecideOptions::new().metadata(Metadata::new().correlation_id("req-7"));
    /// assert_eq!(o.metadata, Metadata::new().correlation_id("req-7"));
    /// ```
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// What a successful decision did.
/// See the [module example](self); `attempts` counts re-decisions:
///
/// ```
/// let d: eskv_core::Decided<()> = eskv_core::Decided { events: vec![], appended: None, attempts: 1 };
/// assert!(d.appended.is_none(), "an empty decision appends nothing");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Decided<Ev> {
    /// The events the decision produced, in append order (may be empty:
    /// then nothing was appended).
    pub events: Vec<Ev>,
    /// Where they were appended; `None` when `events` is empty.
    pub appended: Option<AppendResult>,
    /// Decisions made, 1 when the first one held.
    pub attempts: u32,
}

/// Why a decision did not append. `E` is your own domain error.
///
/// ```
/// use eskv_core::{DecideError, Error};
/// let e: DecideError<&str> = DecideError::Rejected("course full");
/// assert_eq!(e.to_string(), "decision rejected: course full");
/// let store: DecideError<&str> = Error::invalid("bad tag").into();
/// assert!(matches!(store.map_rejected(String::from), DecideError::Store(Error::InvalidInput { .. })));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E> {
    /// The decision refused the command: your error, unchanged.
    #[error("decision rejected: {0}")]
    Rejected(E),
    /// The store failed (nothing was appended by this decision).
    #[error(transparent)]
    Store(#[from] Error),
    /// An event on the boundary does not decode into the event type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Every attempt conflicted with a concurrent append.
    #[error("gave up after {attempts} decisions: each conflicted with a concurrent append (last: {last}); raise DecideOptions::max_attempts or narrow the boundary")]
    RetriesExhausted {
        /// Decisions made.
        attempts: u32,
        /// The last conflict ([`Error::ConditionFailed`] or
        /// [`Error::WrongExpectedVersion`]).
        last: Error,
    },
}

impl<E> DecideError<E> {
    /// Your domain error, if the decision was rejected.
    ///
    /// ```
    /// use eskv_core::DecideError;
    /// assert_eq!(DecideError::Rejected("full").rejected(), Some("full"));
    /// let store: DecideError<&str> = eskv_core::Error::invalid("bad").into();
    /// assert_eq!(store.rejected(), None);
    /// ```
    pub fn rejected(self) -> Option<E> {
        match self {
            DecideError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Maps the domain error; other variants pass through unchanged.
    ///
    /// ```
    /// use eskv_core::DecideError;
    /// let e = DecideError::Rejected(3).map_rejected(|n| format!("{n} seats left"));
    /// assert_eq!(e.rejected().as_deref(), Some("3 seats left"));
    /// ```
    pub fn map_rejected<F>(self, f: impl FnOnce(E) -> F) -> DecideError<F> {
        match self {
            DecideError::Rejected(e) => DecideError::Rejected(f(e)),
            DecideError::Store(e) => DecideError::Store(e),
            DecideError::Decode(e) => DecideError::Decode(e),
            DecideError::RetriesExhausted { attempts, last } => {
                DecideError::RetriesExhausted { attempts, last }
            }
        }
    }
}

/// A decision's consistency boundary.
///
/// ```
/// use eskv_core::{Boundary, Query};
/// let dcb: Boundary = Query::tags(["course:c1"]).into();
/// let stream = Boundary::Stream("account-7".into());
/// assert_ne!(dcb, stream);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boundary {
    /// DCB: the events matching a query.
    Query(Query),
    /// One stream, by id.
    Stream(String),
}

impl From<Query> for Boundary {
    fn from(q: Query) -> Self {
        Boundary::Query(q)
    }
}

/// A command that decides itself: its boundary, how events fold into its
/// state, and the decision. Run it with [`EventStore::execute`]; test it
/// with [`testing::given`](crate::testing::given).
///
/// ```
/// use eskv_core::{Boundary, Decision, Query};
/// # use eskv_core::{DecodeError, DomainEvent, Json};
/// # #[derive(Debug, PartialEq)]
/// # enum Seat { Taken }
/// # impl DomainEvent for Seat {
/// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
/// #     type Codec = Json;
/// #     fn event_type(&self) -> &'static str { "SeatTaken" }
/// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
/// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
/// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
/// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
/// #     }
/// # }
/// struct TakeSeat { room: String, capacity: u32 }
///
/// impl Decision for TakeSeat {
///     type Event = Seat;
///     type State = u32;
///     type Error = String;
///     fn boundary(&self) -> Boundary {
///         Query::of(["SeatTaken"], vec![format!("room:{}", self.room)]).into()
///     }
///     fn evolve(&self, taken: &mut u32, _: &Seat) {
///         *taken += 1;
///     }
///     fn decide(&self, taken: &u32) -> Result<Vec<Seat>, String> {
///         if *taken >= self.capacity {
///             return Err(format!("room {} is full", self.room));
///         }
///         Ok(vec![Seat::Taken])
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await.unwrap();
/// let done = store.execute(&TakeSeat { room: "r1".into(), capacity: 1 }).await.unwrap();
/// assert_eq!(done.events, [Seat::Taken]);
/// # }
/// ```
pub trait Decision {
    /// The event type read and appended.
    type Event: DomainEvent;
    /// The state folded from the boundary's events, starting at `Default`.
    type State: Default;
    /// The domain error of a refused command.
    type Error;

    /// Which events the decision depends on.
    fn boundary(&self) -> Boundary;

    /// Folds one event into the state.
    fn evolve(&self, state: &mut Self::State, event: &Self::Event);

    /// Decides on the folded state: the events to append, or a refusal.
    fn decide(&self, state: &Self::State) -> Result<Vec<Self::Event>, Self::Error>;
}

/// An [`EventStore`] with decision options; from [`EventStore::decider`].
///
/// ```
/// # use eskv_core::{DecodeError, DomainEvent, Json};
/// # #[derive(Debug, PartialEq)]
/// # enum Seat { Taken }
/// # impl DomainEvent for Seat {
/// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
/// #     type Codec = Json;
/// #     fn event_type(&self) -> &'static str { "SeatTaken" }
/// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
/// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
/// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
/// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await?;
/// use eskv_core::{DecideOptions, Query};
/// let decider = store.decider(DecideOptions::new().max_attempts(3));
/// let done = decider
///     .decide(Query::of(["SeatTaken"], ["room:r1"]), |n: &mut u32, _: &Seat| *n += 1, |_| {
///         Ok::<_, String>(vec![Seat::Taken])
///     })
///     .await?;
/// assert_eq!((done.events.len(), done.attempts), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Decider {
    store: EventStore,
    opts: DecideOptions,
}

impl EventStore {
    /// A decider with `opts` (retries, backoff, metadata).
    ///
    /// ```
    /// # use eskv_core::{DecideOptions, EventStore, MemoryStore, Metadata};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// # let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// let decider = store.decider(DecideOptions::new().max_attempts(5).metadata(Metadata::new().correlation_id("req-7")));
    /// # let _ = decider; Ok(()) }
    /// ```
    pub fn decider(&self, opts: DecideOptions) -> Decider {
        Decider {
            store: self.clone(),
            opts,
        }
    }

    /// DCB decision with default options: reads `query`, folds the events
    /// into `S::default()` with `fold`, runs `decide`, and appends its
    /// events on the condition that nothing matching `query` appeared after
    /// the read. A conflict re-reads and re-decides. See [`Decider::decide`].
    pub async fn decide<Ev, S, E>(
        &self,
        query: Query,
        fold: impl Fn(&mut S, &Ev),
        decide: impl FnMut(&S) -> Result<Vec<Ev>, E>,
    ) -> Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        self.decider(DecideOptions::default())
            .decide(query, fold, decide)
            .await
    }

    /// Stream decision with default options: reads `stream`, folds, decides,
    /// and appends expecting the version it read. See
    /// [`Decider::decide_stream`].
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
    /// # #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// # enum Account { Deposited(u64), Withdrawn(u64) }
    /// # impl DomainEvent for Account {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["Account"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "Account" }
    /// #     fn tags(&self) -> Vec<String> { vec![] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Json::encode(self) }
    /// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
    /// #         eskv_core::typed::decode_with::<Json, Self, Self>(t, d)
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await.unwrap();
    /// let withdraw = |amount: u64| {
    ///     store.decide_stream(
    ///         "account-1",
    ///         |balance: &mut u64, e: &Account| match e {
    ///             Account::Deposited(n) => *balance += n,
    ///             Account::Withdrawn(n) => *balance -= n,
    ///         },
    ///         move |&balance| match balance >= amount {
    ///             true => Ok(vec![Account::Withdrawn(amount)]),
    ///             false => Err(format!("balance {balance} is below {amount}")),
    ///         },
    ///     )
    /// };
    /// let err = withdraw(5).await.unwrap_err();
    /// assert_eq!(err.rejected().as_deref(), Some("balance 0 is below 5"));
    /// # }
    /// ```
    pub async fn decide_stream<Ev, S, E>(
        &self,
        stream: impl AsRef<str>,
        fold: impl Fn(&mut S, &Ev),
        decide: impl FnMut(&S) -> Result<Vec<Ev>, E>,
    ) -> Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        let stream = stream.as_ref();
        self.decider(DecideOptions::default())
            .decide_stream(stream, fold, decide)
            .await
    }

    /// Runs a [`Decision`] command with default options; see
    /// [`Decision`] for a full example.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
    /// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await?;
    /// use eskv_core::{Boundary, Decision, Query};
    /// struct Take;
    /// impl Decision for Take {
    ///     type Event = Seat;
    ///     type State = ();
    ///     type Error = std::convert::Infallible;
    ///     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    ///     fn evolve(&self, _: &mut (), _: &Seat) {}
    ///     fn decide(&self, _: &()) -> Result<Vec<Seat>, Self::Error> { Ok(vec![Seat::Taken]) }
    /// }
    /// let done = store.execute(&Take).await?;
    /// assert_eq!(done.appended.map(|a| a.first_position), Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn execute<D: Decision>(
        &self,
        command: &D,
    ) -> Result<Decided<D::Event>, DecideError<D::Error>> {
        self.decider(DecideOptions::default())
            .execute(command)
            .await
    }
}

impl Decider {
    /// The options in force.
    ///
    /// ```
    /// # use eskv_core::{DecideOptions, EventStore, MemoryStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// # let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// let decider = store.decider(DecideOptions::new().max_attempts(4));
    /// assert_eq!(decider.options().max_attempts, 4);
    /// # Ok(()) }
    /// ```
    pub fn options(&self) -> &DecideOptions {
        &self.opts
    }

    /// DCB decision: reads the events matching `query`, decodes each into
    /// `Ev` (an event of another type is [`DecideError::Decode`]), folds
    /// them in log order into `S::default()`, and calls `decide`. Its
    /// events are appended with the condition "no event matching `query`
    /// after the read's position". On [`Error::ConditionFailed`] it waits
    /// (backoff) and decides again from a fresh read, up to
    /// [`DecideOptions::max_attempts`] decisions.
    ///
    /// The appended events should match `query` themselves, so that
    /// concurrent decisions on the same boundary see each other.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
    /// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await?;
    /// use eskv_core::{DecideError, DecideOptions, Query};
    /// let decider = store.decider(DecideOptions::new().max_attempts(3));
    /// let room = Query::of(["SeatTaken"], ["room:r1"]);
    /// let take = || decider.decide(room.clone(), |n: &mut u32, _: &Seat| *n += 1, |n| match *n {
    ///     0 => Ok(vec![Seat::Taken]),
    ///     _ => Err("room r1 is full"),
    /// });
    /// assert_eq!(take().await?.events, [Seat::Taken]);
    /// assert!(matches!(take().await, Err(DecideError::Rejected("room r1 is full"))));
    /// # Ok(()) }
    /// ```
    pub async fn decide<Ev, S, E>(
        &self,
        query: Query,
        fold: impl Fn(&mut S, &Ev),
        mut decide: impl FnMut(&S) -> Result<Vec<Ev>, E>,
    ) -> Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        let mut backoff = Backoff::new(&self.opts);
        loop {
            let seen = self.store.read(&query, ReadOptions::new()).await?;
            let events = {
                let mut state = S::default();
                for r in &seen.events {
                    fold(&mut state, &Ev::from_recorded(r)?);
                }
                decide(&state).map_err(DecideError::Rejected)?
            };
            if events.is_empty() {
                return Ok(backoff.done(events, None));
            }
            let new = self.encode(&events)?;
            let condition = AppendCondition::new(query.clone(), Some(seen.consistent_through));
            match self.store.append(new, Some(condition)).await {
                Ok(r) => return Ok(backoff.done(events, Some(r))),
                Err(e @ Error::ConditionFailed { .. }) => backoff.conflict(e).await?,
                Err(e) => return Err(DecideError::Store(e)),
            }
        }
    }

    /// Stream (aggregate) decision: reads `stream`, decodes and folds its
    /// events into `S::default()`, calls `decide`, and appends its events
    /// to `stream` expecting the version read ([`StreamRead::version`](crate::StreamRead::version):
    /// events retention hides still count; no stream at version 0). On [`Error::WrongExpectedVersion`] it decides again, like
    /// [`decide`](Self::decide).
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
    /// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await?;
    /// use eskv_core::DecideOptions;
    /// let decider = store.decider(DecideOptions::new());
    /// let book = || decider.decide_stream("room-r1", |n: &mut u32, _: &Seat| *n += 1, |n| {
    ///     if *n < 2 { Ok(vec![Seat::Taken]) } else { Err(format!("{n} seats taken")) }
    /// });
    /// let first = book().await?;
    /// assert_eq!(first.appended.map(|a| a.stream_version), Some(Some(1)));
    /// book().await?;
    /// assert_eq!(book().await.unwrap_err().rejected().as_deref(), Some("2 seats taken"));
    /// # Ok(()) }
    /// ```
    pub async fn decide_stream<Ev, S, E>(
        &self,
        stream: impl AsRef<str>,
        fold: impl Fn(&mut S, &Ev),
        mut decide: impl FnMut(&S) -> Result<Vec<Ev>, E>,
    ) -> Result<Decided<Ev>, DecideError<E>>
    where
        Ev: DomainEvent,
        S: Default,
    {
        let stream = stream.as_ref();
        let mut backoff = Backoff::new(&self.opts);
        loop {
            let history = self
                .store
                .read_stream(stream, ReadStreamOptions::new())
                .await?;
            // The stream's version, not the last event's: events that
            // retention already hides still count.
            let version = history.version;
            let events = {
                let mut state = S::default();
                for r in &history {
                    fold(&mut state, &Ev::from_recorded(r)?);
                }
                decide(&state).map_err(DecideError::Rejected)?
            };
            if events.is_empty() {
                return Ok(backoff.done(events, None));
            }
            let new = self.encode(&events)?;
            let expected = match version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            match self.store.append_to_stream(stream, expected, new).await {
                Ok(r) => return Ok(backoff.done(events, Some(r))),
                Err(e @ Error::WrongExpectedVersion { .. }) => backoff.conflict(e).await?,
                Err(e) => return Err(DecideError::Store(e)),
            }
        }
    }

    /// Runs a [`Decision`] command on its [`Boundary`], with these options.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec!["room:r1".into()] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> {
    /// #         if t == "SeatTaken" { Ok(Seat::Taken) } else { Err(DecodeError::unknown_type::<Self>(t)) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let store = eskv_core::EventStore::open(std::sync::Arc::new(eskv_core::MemoryStore::new())).await?;
    /// use eskv_core::{Boundary, DecideOptions, Decision};
    /// struct Book;
    /// impl Decision for Book {
    ///     type Event = Seat;
    ///     type State = u32;
    ///     type Error = String;
    ///     fn boundary(&self) -> Boundary { Boundary::Stream("room-r1".into()) }
    ///     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    ///     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    ///         if *n == 0 { Ok(vec![Seat::Taken]) } else { Err("booked".into()) }
    ///     }
    /// }
    /// let decider = store.decider(DecideOptions::new().max_attempts(2));
    /// decider.execute(&Book).await?;
    /// assert_eq!(decider.execute(&Book).await.unwrap_err().rejected().as_deref(), Some("booked"));
    /// # Ok(()) }
    /// ```
    pub async fn execute<D: Decision>(
        &self,
        command: &D,
    ) -> Result<Decided<D::Event>, DecideError<D::Error>> {
        let fold = |s: &mut D::State, e: &D::Event| command.evolve(s, e);
        let decide = |s: &D::State| command.decide(s);
        match command.boundary() {
            Boundary::Query(q) => self.decide(q, fold, decide).await,
            Boundary::Stream(s) => self.decide_stream(&s, fold, decide).await,
        }
    }

    fn encode<Ev: DomainEvent>(&self, events: &[Ev]) -> Result<Vec<crate::NewEvent>> {
        events
            .iter()
            .map(|e| crate::NewEvent::typed(e, self.opts.metadata.clone()))
            .collect()
    }
}

/// Attempt counting and jittered exponential backoff.
struct Backoff {
    attempts: u32,
    max_attempts: u32,
    delay: Duration,
    max_delay: Duration,
}

impl Backoff {
    fn new(o: &DecideOptions) -> Self {
        Backoff {
            attempts: 1,
            max_attempts: o.max_attempts.max(1),
            delay: o.backoff,
            max_delay: o.max_backoff,
        }
    }

    fn done<Ev>(&self, events: Vec<Ev>, appended: Option<AppendResult>) -> Decided<Ev> {
        Decided {
            events,
            appended,
            attempts: self.attempts,
        }
    }

    /// After a conflict: gives up with `RetriesExhausted`, or sleeps and
    /// counts the next attempt.
    async fn conflict<E>(&mut self, last: Error) -> Result<(), DecideError<E>> {
        if self.attempts >= self.max_attempts {
            return Err(DecideError::RetriesExhausted {
                attempts: self.attempts,
                last,
            });
        }
        tracing::debug!(attempt = self.attempts, error = %last, "decision conflicted, deciding again");
        if !self.delay.is_zero() {
            // Full jitter between delay/2 and delay, so competing deciders
            // spread out instead of colliding again in lockstep.
            let nanos = self.delay.as_nanos().min(u64::MAX as u128) as u64;
            let r = std::collections::hash_map::RandomState::new().hash_one(self.attempts);
            let half = nanos / 2;
            tokio::time::sleep(Duration::from_nanos(half + r % (nanos - half).max(1))).await;
            self.delay = self.delay.saturating_mul(2).min(self.max_delay);
        }
        self.attempts += 1;
        Ok(())
    }
}
