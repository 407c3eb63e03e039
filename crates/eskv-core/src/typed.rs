//! Typed application events: an enum (or struct) of your domain events
//! that knows each value's event type, its tags, and how its payload is
//! stored.
//!
//! The stored payload of an event is the variant's *own* data — for
//! `Subscribed { course, student }` the JSON `{"course":..,"student":..}`,
//! not `{"Subscribed":{..}}` — and the variant is recovered from the
//! stored event type when reading back. That keeps the log readable by
//! other programs (and the CLI), and lets a variant be renamed in Rust
//! without touching stored data.
//!
//! Implement [`DomainEvent`] with `#[derive(eskv::DomainEvent)]` (facade
//! feature `derive`, on by default) or by hand:
//!
//! ```
//! use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec, RecordedEvent};
//!
//! #[derive(Debug, PartialEq)]
//! enum Door {
//!     Opened { by: String },
//!     Closed,
//! }
//!
//! impl DomainEvent for Door {
//!     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened", "DoorClosed"];
//!     type Codec = Json;
//!
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             Door::Opened { .. } => "DoorOpened",
//!             Door::Closed => "DoorClosed",
//!         }
//!     }
//!     fn tags(&self) -> Vec<String> {
//!         match self {
//!             Door::Opened { by } => vec![format!("person:{by}")],
//!             Door::Closed => vec![],
//!         }
//!     }
//!     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> {
//!         match self {
//!             Door::Opened { by } => Json::encode(&serde_json::json!({ "by": by })),
//!             Door::Closed => Json::encode(&serde_json::json!({})),
//!         }
//!     }
//!     fn decode_payload(event_type: &str, data: &[u8]) -> Result<Self, DecodeError> {
//!         match event_type {
//!             "DoorOpened" => {
//!                 let v: serde_json::Value = eskv_core::typed::decode_with::<Json, _, Self>(event_type, data)?;
//!                 Ok(Door::Opened { by: v["by"].as_str().unwrap_or_default().to_owned() })
//!             }
//!             "DoorClosed" => Ok(Door::Closed),
//!             other => Err(DecodeError::unknown_type::<Self>(other)),
//!         }
//!     }
//! }
//!
//! let new = Door::Opened { by: "ann".into() }.to_new_event()?;
//! assert_eq!(new.event_type, "DoorOpened");
//! assert_eq!(new.tags, ["person:ann"]);
//! assert_eq!(new.data, br#"{"by":"ann"}"#);
//! let err = Door::decode_payload("DoorPainted", b"{}").unwrap_err();
//! assert!(matches!(err, DecodeError::UnknownType { .. }));
//! # Ok::<(), eskv_core::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::event::{Metadata, NewEvent, PayloadCodec, Position, RecordedEvent};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::sync::Arc;

/// An application's event type: usually an enum with one variant per event
/// type. See the [module docs](self).
///
/// With the facade's `derive` feature, `#[derive(eskv::DomainEvent)]`
/// writes the implementation: the event type is the variant name (or
/// `#[eskv(type = "...")]`), tags come from fields marked `#[tag]`,
/// `#[tag("prefix")]` or `#[tags("prefix")]`, and payloads use
/// [`Json`](crate::Json) (or `#[eskv(codec = path::To::Codec)]`).
///
/// A round trip through the store (`Door` is implemented by hand as in the
/// [module docs](self)):
///
/// ```
/// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
/// # #[derive(Debug, PartialEq)]
/// # enum Door { Opened { by: String } }
/// # impl DomainEvent for Door {
/// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
/// #     type Codec = Json;
/// #     fn event_type(&self) -> &'static str { "DoorOpened" }
/// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
/// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
/// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
/// #         match t {
/// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
/// #             other => Err(DecodeError::unknown_type::<Self>(other)),
/// #         }
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use eskv_core::{EventStore, MemoryStore, Query, ReadOptions};
/// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
/// store.append(vec![Door::Opened { by: "ann".into() }.to_new_event()?], None).await?;
/// let read = store.read(&Query::types(Door::EVENT_TYPES.iter().copied()), ReadOptions::new()).await?;
/// let doors: Vec<Door> = read.events.iter().map(Door::from_recorded).collect::<Result<_, _>>()?;
/// assert_eq!(doors, [Door::Opened { by: "ann".into() }]);
/// # Ok(()) }
/// ```
pub trait DomainEvent: Sized {
    /// Every event type this type can be. Useful for queries
    /// (`Query::types(MyEvent::EVENT_TYPES.iter().copied())`) and for
    /// [`EventStore::register_event_types`](crate::EventStore::register_event_types).
    const EVENT_TYPES: &'static [&'static str];

    /// The payload format ([`Json`](crate::Json) unless you plug in another
    /// [`PayloadCodec`]).
    type Codec: PayloadCodec;

    /// The stored event type of this value.
    fn event_type(&self) -> &'static str;

    /// The tags to store with this value.
    fn tags(&self) -> Vec<String>;

    /// This value's own payload, encoded with [`Self::Codec`](DomainEvent::Codec).
    fn encode_payload(&self) -> Result<Vec<u8>>;

    /// Rebuilds a value from a stored event type and payload. An event type
    /// this type does not know is [`DecodeError::UnknownType`].
    fn decode_payload(event_type: &str, data: &[u8]) -> Result<Self, DecodeError>;

    /// The schema version of `event_type` this type reads and writes (see
    /// [`crate::upcast`]); 1 unless declared, as with
    /// `#[eskv(type = "...", version = 3)]`.
    fn schema_version_of(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The schema version of this value's event type.
    fn schema_version(&self) -> u32 {
        Self::schema_version_of(self.event_type())
    }

    /// The event to append: type, tags and payload of `self`, a fresh id,
    /// and its schema version, said explicitly (1 included) so that a store
    /// whose upcasters reach a later version refuses it rather than
    /// stamping it as current.
    fn to_new_event(&self) -> Result<NewEvent> {
        Ok(NewEvent::new(self.event_type(), self.encode_payload()?)
            .with_tags(self.tags())
            .with_schema_version(self.schema_version()))
    }

    /// Decodes a stored event; errors name its position. An event older
    /// than the version this type reads (no upcaster registered for it)
    /// is [`DecodeError::OldVersion`].
    fn from_recorded(event: &RecordedEvent) -> Result<Self, DecodeError> {
        let want = Self::schema_version_of(&event.event_type);
        let found = event.schema_version();
        if found < want {
            return Err(DecodeError::OldVersion {
                event_type: event.event_type.clone(),
                position: Some(event.position),
                found,
                expected: want,
            });
        }
        Self::decode_payload(&event.event_type, &event.data).map_err(|e| e.at(event.position))
    }
}

impl NewEvent {
    /// The event for a typed value, with metadata (see
    /// [`DomainEvent::to_new_event`]). The event carries the typed value's
    /// schema version even when `metadata` was copied from an event of
    /// another version (which carries that one).
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Door { Opened { by: String } }
    /// # impl DomainEvent for Door {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "DoorOpened" }
    /// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
    /// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
    /// #         match t {
    /// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
    /// #             other => Err(DecodeError::unknown_type::<Self>(other)),
    /// #         }
    /// #     }
    /// # }
    /// use eskv_core::{Metadata, NewEvent};
    /// let new = NewEvent::typed(&Door::Opened { by: "ann".into() }, Metadata::new().correlation_id("req-1"))?;
    /// assert_eq!((new.event_type.as_str(), new.tags.as_slice()), ("DoorOpened", &["person:ann".to_owned()][..]));
    /// assert_eq!(new.metadata.correlation_id.as_deref(), Some("req-1"));
    /// # Ok::<(), eskv_core::Error>(())
    /// ```
    pub fn typed<E: DomainEvent>(event: &E, metadata: Metadata) -> Result<NewEvent> {
        // The typed event's version wins over one copied in `metadata`.
        let version = event.schema_version();
        Ok(event
            .to_new_event()?
            .with_metadata(metadata)
            .with_schema_version(version))
    }
}

impl RecordedEvent {
    /// Decodes this event into an application event type (see
    /// [`DomainEvent::from_recorded`]).
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Door { Opened { by: String } }
    /// # impl DomainEvent for Door {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "DoorOpened" }
    /// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
    /// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
    /// #         match t {
    /// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
    /// #             other => Err(DecodeError::unknown_type::<Self>(other)),
    /// #         }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use eskv_core::{EventStore, MemoryStore, NewEvent, Query, ReadOptions};
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// store.append(vec![Door::Opened { by: "bo".into() }.to_new_event()?, NewEvent::json("DoorPainted", &"red")?], None).await?;
    /// let read = store.read(&Query::all(), ReadOptions::new()).await?;
    /// assert_eq!(read.events[0].to_typed::<Door>()?, Door::Opened { by: "bo".into() });
    /// assert!(matches!(read.events[1].to_typed::<Door>(), Err(DecodeError::UnknownType { position: Some(2), .. })));
    /// # Ok(()) }
    /// ```
    pub fn to_typed<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        E::from_recorded(self)
    }
}

/// A stored event that does not decode into the application's event type.
/// Its message names the event type, the position and what to do:
///
/// ```
/// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
/// # #[derive(Debug, PartialEq)]
/// # enum Door { Opened { by: String } }
/// # impl DomainEvent for Door {
/// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
/// #     type Codec = Json;
/// #     fn event_type(&self) -> &'static str { "DoorOpened" }
/// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
/// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
/// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
/// #         match t {
/// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
/// #             other => Err(DecodeError::unknown_type::<Self>(other)),
/// #         }
/// #     }
/// # }
/// let e = Door::decode_payload("DoorPainted", b"{}").unwrap_err().at(9);
/// assert!(e.to_string().starts_with("unknown event type 'DoorPainted' at position 9"));
/// let e = Door::decode_payload("DoorOpened", b"[1,2]").unwrap_err();
/// assert!(matches!(e, DecodeError::Payload { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The stored event type is not one of the target type's
    /// [`EVENT_TYPES`](DomainEvent::EVENT_TYPES).
    #[error("unknown event type '{event_type}'{} for {target} (it knows {}); narrow the query to these types or add a variant for it", at(.position), .expected.join(", "))]
    UnknownType {
        /// The stored type.
        event_type: String,
        /// The event's position, when known.
        position: Option<Position>,
        /// The Rust type decoded into.
        target: &'static str,
        /// The types it knows.
        expected: &'static [&'static str],
    },
    /// The stored event is an older schema version than the target type
    /// reads, and no upcaster brought it up (register them on
    /// [`EventStoreOptions`](crate::EventStoreOptions::upcast)).
    #[error("'{event_type}'{} is schema version {found}, but the event type reads version {expected}; register upcasters from version {found} (EventStoreOptions::upcast)", at(.position))]
    OldVersion {
        /// The stored type.
        event_type: String,
        /// The event's position, when known.
        position: Option<Position>,
        /// The stored version.
        found: u32,
        /// The version the target type reads.
        expected: u32,
    },
    /// The payload does not decode as the variant's data.
    #[error("the payload of '{event_type}'{} does not decode as {target}: {message}", at(.position))]
    Payload {
        /// The stored type.
        event_type: String,
        /// The event's position, when known.
        position: Option<Position>,
        /// The Rust type decoded into.
        target: &'static str,
        /// The codec's message.
        message: String,
    },
}

fn at(position: &Option<Position>) -> String {
    position.map_or_else(String::new, |p| format!(" at position {p}"))
}

impl DecodeError {
    /// [`DecodeError::UnknownType`] for `event_type` decoded into `E`.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Door { Opened { by: String } }
    /// # impl DomainEvent for Door {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "DoorOpened" }
    /// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
    /// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
    /// #         match t {
    /// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
    /// #             other => Err(DecodeError::unknown_type::<Self>(other)),
    /// #         }
    /// #     }
    /// # }
    /// let e = DecodeError::unknown_type::<Door>("DoorPainted");
    /// assert!(matches!(e, DecodeError::UnknownType { expected: &["DoorOpened"], position: None, .. }));
    /// ```
    pub fn unknown_type<E: DomainEvent>(event_type: &str) -> Self {
        DecodeError::UnknownType {
            event_type: event_type.to_owned(),
            position: None,
            target: std::any::type_name::<E>(),
            expected: E::EVENT_TYPES,
        }
    }

    /// The same error, naming the event's position.
    ///
    /// ```
    /// # use eskv_core::{DecodeError, DomainEvent, Json, PayloadCodec};
    /// # #[derive(Debug, PartialEq)]
    /// # enum Door { Opened { by: String } }
    /// # impl DomainEvent for Door {
    /// #     const EVENT_TYPES: &'static [&'static str] = &["DoorOpened"];
    /// #     type Codec = Json;
    /// #     fn event_type(&self) -> &'static str { "DoorOpened" }
    /// #     fn tags(&self) -> Vec<String> { let Door::Opened { by } = self; vec![format!("person:{by}")] }
    /// #     fn encode_payload(&self) -> eskv_core::Result<Vec<u8>> { let Door::Opened { by } = self; Json::encode(by) }
    /// #     fn decode_payload(t: &str, d: &[u8]) -> Result<Self, DecodeError> {
    /// #         match t {
    /// #             "DoorOpened" => Ok(Door::Opened { by: eskv_core::typed::decode_with::<Json, String, Self>(t, d)? }),
    /// #             other => Err(DecodeError::unknown_type::<Self>(other)),
    /// #         }
    /// #     }
    /// # }
    /// let e = DecodeError::unknown_type::<Door>("Renamed").at(42);
    /// assert!(e.to_string().contains("'Renamed' at position 42"));
    /// ```
    pub fn at(mut self, position: Position) -> Self {
        match &mut self {
            DecodeError::UnknownType { position: p, .. }
            | DecodeError::OldVersion { position: p, .. }
            | DecodeError::Payload { position: p, .. } => *p = Some(position),
        }
        self
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::invalid(e.to_string())
    }
}

/// Decodes a payload with codec `C` into `T`, reporting failures as
/// [`DecodeError::Payload`] of event type `event_type` for target `E`.
/// For hand-written [`DomainEvent::decode_payload`] implementations.
///
/// ```
/// use eskv_core::{typed::decode_with, DecodeError, Json};
/// struct Counter;
/// let n: u32 = decode_with::<Json, u32, Counter>("Counted", b"7")?;
/// assert_eq!(n, 7);
/// let e = decode_with::<Json, u32, Counter>("Counted", b"\"x\"").unwrap_err();
/// assert!(matches!(e, DecodeError::Payload { ref event_type, .. } if event_type == "Counted"));
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode_with<C: PayloadCodec, T: DeserializeOwned, E>(
    event_type: &str,
    data: &[u8],
) -> Result<T, DecodeError> {
    C::decode(data).map_err(|e| DecodeError::Payload {
        event_type: event_type.to_owned(),
        position: None,
        target: std::any::type_name::<E>(),
        message: match e {
            Error::InvalidInput { message } => message,
            other => other.to_string(),
        },
    })
}

/// A value that can be an event tag (a field marked `#[tag]` in
/// `#[derive(DomainEvent)]`). Tags are strings: implemented for `String`,
/// `str`, `Box<str>`, `Arc<str>`, `Cow<str>` and [`Ulid`](crate::Ulid);
/// implement it for your own id types.
///
/// ```
/// struct CourseId(String);
/// impl eskv_core::TagValue for CourseId {
///     fn tag_value(&self) -> std::borrow::Cow<'_, str> {
///         self.0.as_str().into()
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an event tag: tags are strings",
    label = "a `#[tag]`/`#[tags]` field must hold strings",
    note = "use String, &str, Box<str>, Arc<str>, Cow<str> or Ulid, format the value into a String field, or implement `eskv::TagValue` for `{Self}`"
)]
pub trait TagValue {
    /// The tag text (without the prefix).
    fn tag_value(&self) -> Cow<'_, str>;
}

impl TagValue for str {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl TagValue for String {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl TagValue for Box<str> {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl TagValue for Arc<str> {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl TagValue for Cow<'_, str> {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}
impl TagValue for ulid::Ulid {
    fn tag_value(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_string())
    }
}
impl<T: TagValue + ?Sized> TagValue for &T {
    fn tag_value(&self) -> Cow<'_, str> {
        (**self).tag_value()
    }
}

/// Support code for `#[derive(DomainEvent)]`; not a public API.
#[doc(hidden)]
pub mod derive_support {
    use super::TagValue;

    /// Adds `prefix:value` (or `value`) to `out`.
    pub fn tag<T: TagValue + ?Sized>(out: &mut Vec<String>, prefix: Option<&str>, value: &T) {
        let v = value.tag_value();
        out.push(match prefix {
            Some(p) => format!("{p}:{v}"),
            None => v.into_owned(),
        });
    }

    /// Adds one tag per item of `values`.
    pub fn tags<'a, I, T>(out: &mut Vec<String>, prefix: Option<&str>, values: I)
    where
        I: IntoIterator<Item = &'a T>,
        T: TagValue + ?Sized + 'a,
    {
        for v in values {
            tag(out, prefix, v);
        }
    }
}
