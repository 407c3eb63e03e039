//! Core of eskv: an event store (streams with optimistic locking, a
//! gapless global log, Dynamic Consistency Boundaries) on any transactional
//! key-value backend that meets the [`KvStore`] contract.
//!
//! ```
//! use eskv_core::{AppendCondition, EventStore, MemoryStore, NewEvent, Query, ReadOptions};
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
//! let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
//!
//! // Decide: may student s1 subscribe to course c1? Read what matters...
//! let query = Query::of(["StudentSubscribed"], ["course:c1", "student:s1"]);
//! let seen = store.read(&query, ReadOptions::new()).await?;
//! assert!(seen.events.is_empty());
//!
//! // ...and append only if nothing matching appeared since that read.
//! let event = NewEvent::new("StudentSubscribed", br#"{"student":"s1"}"#.to_vec())
//!     .with_tags(["course:c1", "student:s1"]);
//! let done = store
//!     .append(vec![event], Some(AppendCondition::new(query.clone(), Some(seen.consistent_through))))
//!     .await?;
//! assert_eq!(done.first_position, 1);
//!
//! // The same decision again now fails: the boundary has changed.
//! let again = NewEvent::new("StudentSubscribed", b"{}".to_vec()).with_tags(["course:c1", "student:s1"]);
//! let err = store
//!     .append(vec![again], Some(AppendCondition::new(query, Some(seen.consistent_through))))
//!     .await
//!     .unwrap_err();
//! assert!(matches!(err, eskv_core::Error::ConditionFailed { position: 1, .. }));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod crypto;
pub mod decide;
#[doc(hidden)] // Internal: for eskv's own backends, tools and fuzz targets.
pub mod envelope;
pub mod error;
pub mod event;
pub mod event_serde;
pub mod kv;
#[doc(hidden)] // Internal: for eskv's own backends, tools and fuzz targets.
pub mod layout;
pub mod lifecycle;
pub mod memory;
pub mod observe;
#[doc(hidden)] // Internal: for eskv's own backends, tools and fuzz targets.
pub mod oracle;
pub mod projection;
pub mod query;
pub mod recorded_at;
mod retry;
pub mod store;
pub mod subscription;
pub mod testing;
#[doc(hidden)] // Internal: for eskv's own backends, tools and fuzz targets.
pub mod tuple;
pub mod typed;
pub mod upcast;
pub mod validate;
pub mod verify;

pub use crypto::{StoreKey, WrappedSubjectKey};
pub use decide::{Boundary, DecideError, DecideOptions, Decided, Decider, Decision};
pub use error::{Error, ExpectedVersion, Result};
pub use event::{
    parse_event_id, Json, Metadata, NewEvent, PayloadCodec, PersonalData, Position, RecordedEvent,
    SealedPersonal, StreamRef, StreamVersion,
};
pub use kv::{
    Capabilities, KeyRange, KvError, KvPair, KvResult, KvStore, KvStoreExt, KvTransaction,
    Namespaced, ReadMany, ScanOptions, WriteBuffer,
};
pub use lifecycle::Retention;
pub use memory::MemoryStore;
pub use projection::{
    Projection, ProjectionOptions, ProjectionState, ReadModel, Snapshot, SnapshotKey,
};
pub use query::{AppendCondition, Query, QueryItem};
pub use store::{
    AppendRequest, AppendResult, CompactReport, EventStore, EventStoreOptions, ForgetOutcome,
    ImportMarker, Limits, LogFilter, LogTruncation, PersonalParts, ReadOptions, ReadResult,
    ReadStreamOptions, StreamInfo, StreamRead,
};
pub use subscription::{
    ConsumerGroup, EventHandler, GroupOptions, HandlerOptions, OnFailure, ParkedEvent,
    PartitionKey, StartFrom, Subscription, SubscriptionFilter, SubscriptionOptions,
};
pub use typed::{DecodeError, DomainEvent, TagValue};
pub use ulid::Ulid;
pub use upcast::{Upcasters, SCHEMA_VERSION_KEY};

/// The `async_trait` attribute, for implementing the KV contract
/// ([`KvStore`], [`KvTransaction`], [`KvSnapshot`](kv::KvSnapshot)), whose
/// traits are used as objects, without adding the crate yourself.
/// [`Projection`] and [`EventHandler`] need no attribute: implement them
/// with a plain `async fn`.
pub use async_trait::async_trait;

/// Re-exports for `#[derive(eskv::DomainEvent)]`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::typed::derive_support::{tag, tags};
    pub use serde;
}

/// Renders a key for messages: printable ASCII as is, other bytes as `\xNN`,
/// cut after 64 bytes.
pub fn display_key(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key.iter().take(64) {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if key.len() > 64 {
        s.push_str("...");
    }
    s
}
