//! Given-when-then tests for [`Decision`] commands, on a fresh
//! [`MemoryStore`] per test.
//!
//! ```
//! use eskv_core::testing::given;
//! # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
//! # struct TakeSeat { capacity: u32 }
//! # impl Decision for TakeSeat {
//! #     type Event = Seat; type State = u32; type Error = String;
//! #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
//! #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
//! #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
//! #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! given([Seat::Taken]).when(TakeSeat { capacity: 2 }).await.then([Seat::Taken]).await;
//! given([Seat::Taken, Seat::Taken])
//!     .when(TakeSeat { capacity: 2 })
//!     .await
//!     .then_error("room r1 is full".to_string());
//! # }
//! ```

use crate::decide::{Boundary, DecideError, Decided, Decision};
use crate::error::ExpectedVersion;
use crate::memory::MemoryStore;
use crate::store::{EventStore, ReadOptions};
use crate::typed::DomainEvent;
use std::fmt::Debug;
use std::sync::Arc;

/// Starts a test with these events already in the store (appended to the
/// command's stream when its boundary is a stream).
///
/// ```
/// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
/// # struct TakeSeat { capacity: u32 }
/// # impl Decision for TakeSeat {
/// #     type Event = Seat; type State = u32; type Error = String;
/// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
/// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
/// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
/// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use eskv_core::testing::given;
/// let then = given([Seat::Taken]).when(TakeSeat { capacity: 1 }).await;
/// assert!(then.result.is_err());
/// # }
/// ```
pub fn given<Ev: DomainEvent>(events: impl IntoIterator<Item = Ev>) -> Given<Ev> {
    Given {
        events: events.into_iter().collect(),
    }
}

/// The history of a test; see [`given`].
///
/// ```
/// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
/// # struct TakeSeat { capacity: u32 }
/// # impl Decision for TakeSeat {
/// #     type Event = Seat; type State = u32; type Error = String;
/// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
/// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
/// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
/// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use eskv_core::testing::given;
/// let history = given([Seat::Taken, Seat::Taken, Seat::Taken]);
/// history.when(TakeSeat { capacity: 4 }).await.then([Seat::Taken]).await;
/// # }
/// ```
#[derive(Debug)]
pub struct Given<Ev> {
    events: Vec<Ev>,
}

impl<Ev: DomainEvent> Given<Ev> {
    /// A fresh in-memory store holding the given events (without a stream).
    /// For closure deciders, which [`given`] cannot run itself.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Seat { Taken }
    /// # impl DomainEvent for Seat {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["SeatTaken"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "SeatTaken" }
    /// #     fn tags(&self) -> Vec<String> { vec![] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { Ok(b"{}".to_vec()) }
    /// #     fn decode_payload(t: &str, _: &[u8]) -> Result<Self, DecodeError> { Ok(Seat::Taken) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = eskv_core::testing::given([Seat::Taken]).store().await;
    /// assert_eq!(store.head().await.unwrap(), 1);
    /// # }
    /// ```
    pub async fn store(&self) -> EventStore {
        self.store_for(&Boundary::Query(crate::Query::all())).await
    }

    async fn store_for(&self, boundary: &Boundary) -> EventStore {
        let store = EventStore::open(Arc::new(MemoryStore::new()))
            .await
            .expect("an in-memory store opens");
        if !self.events.is_empty() {
            let new = self
                .events
                .iter()
                .map(DomainEvent::to_new_event)
                .collect::<crate::Result<Vec<_>>>()
                .expect("the given events encode");
            match boundary {
                Boundary::Stream(s) => store
                    .append_to_stream(s, ExpectedVersion::Any, new)
                    .await
                    .expect("the given events append"),
                Boundary::Query(_) => store
                    .append(new, None)
                    .await
                    .expect("the given events append"),
            };
        }
        store
    }

    /// Decides `command` on the given history, on a fresh in-memory store.
    ///
    /// ```
    /// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
    /// # struct TakeSeat { capacity: u32 }
    /// # impl Decision for TakeSeat {
    /// #     type Event = Seat; type State = u32; type Error = String;
    /// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    /// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    /// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    /// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use eskv_core::testing::given;
    /// let then = given([]).when(TakeSeat { capacity: 1 }).await;
    /// assert_eq!(then.result.unwrap().events, [Seat::Taken]);
    /// # }
    /// ```
    pub async fn when<D: Decision<Event = Ev>>(self, command: D) -> Then<Ev, D::Error> {
        let store = self.store_for(&command.boundary()).await;
        let before = store.head().await.expect("head");
        let result = store.execute(&command).await;
        Then {
            store,
            before,
            result,
        }
    }
}

/// The outcome of a decision under test.
///
/// ```
/// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
/// # struct TakeSeat { capacity: u32 }
/// # impl Decision for TakeSeat {
/// #     type Event = Seat; type State = u32; type Error = String;
/// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
/// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
/// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
/// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use eskv_core::testing::given;
/// let then = given([Seat::Taken]).when(TakeSeat { capacity: 1 }).await;
/// assert_eq!(then.result.as_ref().unwrap_err().to_string(), "decision rejected: room r1 is full");
/// # }
/// ```
#[derive(Debug)]
pub struct Then<Ev, E> {
    store: EventStore,
    before: u64,
    /// What the decision returned.
    pub result: Result<Decided<Ev>, DecideError<E>>,
}

impl<Ev: DomainEvent + PartialEq + Debug, E: Debug> Then<Ev, E> {
    /// Asserts that the decision appended exactly `expected`, and that they
    /// read back from the store as the same values.
    ///
    /// # Panics
    ///
    /// When the decision failed or produced other events.
    ///
    /// ```
    /// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
    /// # struct TakeSeat { capacity: u32 }
    /// # impl Decision for TakeSeat {
    /// #     type Event = Seat; type State = u32; type Error = String;
    /// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    /// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    /// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    /// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use eskv_core::testing::given;
    /// given([Seat::Taken]).when(TakeSeat { capacity: 2 }).await.then([Seat::Taken]).await;
    /// # }
    /// ```
    ///
    /// ```should_panic
    /// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
    /// # struct TakeSeat { capacity: u32 }
    /// # impl Decision for TakeSeat {
    /// #     type Event = Seat; type State = u32; type Error = String;
    /// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    /// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    /// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    /// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use eskv_core::testing::given;
    /// // The room is full: the decision is rejected, so `then` panics.
    /// given([Seat::Taken]).when(TakeSeat { capacity: 1 }).await.then([Seat::Taken]).await;
    /// # }
    /// ```
    pub async fn then(self, expected: impl IntoIterator<Item = Ev>) {
        let expected: Vec<Ev> = expected.into_iter().collect();
        let decided = match self.result {
            Ok(d) => d,
            Err(e) => panic!("expected the events {expected:?}, but the decision failed: {e:?}"),
        };
        assert_eq!(decided.events, expected, "the decision's events");
        let stored = self
            .store
            .read_all(ReadOptions::after(self.before))
            .await
            .expect("read back");
        let back = stored
            .events
            .iter()
            .map(Ev::from_recorded)
            .collect::<Result<Vec<_>, _>>()
            .expect("the appended events decode");
        assert_eq!(back, expected, "the events read back from the store");
    }

    /// Asserts that the decision was rejected with `expected` and appended
    /// nothing.
    ///
    /// # Panics
    ///
    /// When the decision succeeded or failed otherwise.
    ///
    /// ```
    /// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
    /// # struct TakeSeat { capacity: u32 }
    /// # impl Decision for TakeSeat {
    /// #     type Event = Seat; type State = u32; type Error = String;
    /// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    /// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    /// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    /// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use eskv_core::testing::given;
    /// given([Seat::Taken]).when(TakeSeat { capacity: 1 }).await.then_error("room r1 is full".into());
    /// # }
    /// ```
    pub fn then_error(self, expected: E)
    where
        E: PartialEq,
    {
        match self.result {
            Err(DecideError::Rejected(e)) => assert_eq!(e, expected, "the rejection"),
            Ok(d) => panic!(
                "expected the rejection {expected:?}, but the decision appended {:?}",
                d.events
            ),
            Err(e) => panic!("expected the rejection {expected:?}, but got {e:?}"),
        }
    }

    /// The store after the decision, for further checks.
    ///
    /// ```
    /// # use eskv_core::{Boundary, Decision, DecodeError, DomainEvent, Json, Query};
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
    /// # struct TakeSeat { capacity: u32 }
    /// # impl Decision for TakeSeat {
    /// #     type Event = Seat; type State = u32; type Error = String;
    /// #     fn boundary(&self) -> Boundary { Query::of(["SeatTaken"], ["room:r1"]).into() }
    /// #     fn evolve(&self, n: &mut u32, _: &Seat) { *n += 1 }
    /// #     fn decide(&self, n: &u32) -> Result<Vec<Seat>, String> {
    /// #         if *n >= self.capacity { Err("room r1 is full".into()) } else { Ok(vec![Seat::Taken]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use eskv_core::testing::given;
    /// let then = given([Seat::Taken]).when(TakeSeat { capacity: 3 }).await;
    /// assert_eq!(then.store().head().await.unwrap(), 2);
    /// # }
    /// ```
    pub fn store(&self) -> &EventStore {
        &self.store
    }
}
