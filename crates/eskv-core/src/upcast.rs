//! Schema evolution: versioned event types and the upcasters that turn a
//! stored event of an old schema version into the current one.
//!
//! An event's schema version lives in its metadata, under
//! [`SCHEMA_VERSION_KEY`]; an event without it is version 1. So the stored
//! layout does not change, and events written before versioning existed
//! (or by programs that know nothing of it) read as version 1.
//!
//! Register one upcaster per step (`1 → 2`, `2 → 3`, ...) on
//! [`EventStoreOptions`](crate::EventStoreOptions). The highest step
//! registered for a type defines its **current** version:
//!
//! - **Every read path** returns events at the current version: stream,
//!   log, category and DCB reads, paged reads, subscriptions, projections,
//!   snapshots and deciders all read through the same decode step, which
//!   runs the chain of upcasters from the stored version up.
//! - **Writes** always use the current version: an event without a version
//!   is stamped with it, and an event that says it is an older version is
//!   refused ([`Error::InvalidInput`], nothing written). A newer version
//!   (from a newer program sharing the store) is stored as it is, and read
//!   back as it is.
//!
//! An upcaster rewrites the payload only: the type and tags of an event are
//! indexed for DCB queries, so they stay as stored.
//!
//! ```
//! use eskv_core::{EventStore, EventStoreOptions, MemoryStore, NewEvent, ReadStreamOptions, ExpectedVersion};
//! use serde_json::json;
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
//! let kv = Arc::new(MemoryStore::new());
//!
//! // Last year's program wrote `Deposited { amount }` in whole euros (version 1).
//! let old = EventStore::open(kv.clone()).await?;
//! old.append_to_stream("acc-1", ExpectedVersion::Any, vec![NewEvent::json("Deposited", &json!({"amount": 5}))?]).await?;
//!
//! // Today's reads see version 2: cents, with a currency.
//! let opts = EventStoreOptions::default().upcast_json("Deposited", 1, |mut v| {
//!     let euros = v["amount"].as_i64().unwrap_or(0);
//!     v["amount"] = json!(euros * 100);
//!     v["currency"] = json!("EUR");
//!     Ok(v)
//! });
//! let store = EventStore::open_with(kv, opts).await?;
//! let read = store.read_stream("acc-1", ReadStreamOptions::new()).await?;
//! assert_eq!(read[0].schema_version(), 2);
//! assert_eq!(read[0].json::<serde_json::Value>()?, json!({"amount": 500, "currency": "EUR"}));
//!
//! // New events are written at version 2.
//! store.append_to_stream("acc-1", ExpectedVersion::Exact(1), vec![
//!     NewEvent::json("Deposited", &json!({"amount": 250, "currency": "EUR"}))?,
//! ]).await?;
//! let read = store.read_stream("acc-1", ReadStreamOptions::new()).await?;
//! assert_eq!(read[1].schema_version(), 2);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// The metadata key ([`Metadata::extra`](crate::Metadata::extra)) that
/// holds an event's schema version, as a decimal number. Absent means 1.
///
/// ```
/// use eskv_core::{NewEvent, SCHEMA_VERSION_KEY};
/// let e = NewEvent::new("Deposited", b"{}".to_vec()).with_schema_version(2);
/// assert_eq!(e.metadata.extra.get(SCHEMA_VERSION_KEY).map(String::as_str), Some("2"));
/// ```
pub const SCHEMA_VERSION_KEY: &str = "eskv.schema_version";

/// One upcasting step: the payload of an event at version `v`, rewritten
/// as version `v + 1`. It sees the whole stored event (for its metadata,
/// time or position) and returns the new payload.
///
/// ```
/// use eskv_core::upcast::UpcastFn;
/// // Version 1 stored a bare number; version 2 wraps it.
/// let step: Box<UpcastFn> = Box::new(|e| Ok(format!("{{\"amount\":{}}}", String::from_utf8_lossy(&e.data)).into_bytes()));
/// let mut u = eskv_core::upcast::Upcasters::new();
/// u.add("Deposited", 1, step);
/// assert_eq!(u.current_version("Deposited"), 2);
/// ```
pub type UpcastFn = dyn Fn(&RecordedEvent) -> Result<Vec<u8>> + Send + Sync;

/// The registered upcasters, by event type and version they upcast from.
/// Built through [`EventStoreOptions::upcast`](crate::EventStoreOptions::upcast)
/// or directly:
///
/// ```
/// use eskv_core::upcast::Upcasters;
/// let mut u = Upcasters::new();
/// u.add("Renamed", 1, |e| Ok(e.data.to_ascii_uppercase()));
/// assert_eq!(u.current_version("Renamed"), 2);
/// assert_eq!(u.current_version("Other"), 1);
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    chains: HashMap<String, BTreeMap<u32, Arc<UpcastFn>>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (t, steps) in &self.chains {
            m.entry(t, &steps.keys().collect::<Vec<_>>());
        }
        m.finish()
    }
}

impl Upcasters {
    /// No upcasters: every type is at version 1.
    ///
    /// ```
    /// let u = eskv_core::upcast::Upcasters::new();
    /// assert!(u.is_empty());
    /// assert_eq!(u.current_version("Anything"), 1);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` for
    /// `event_type`, replacing an earlier one for the same step. The steps
    /// of a type must start at 1 and have no gaps (checked by
    /// [`EventStore::open_with`](crate::EventStore::open_with)).
    ///
    /// ```
    /// use eskv_core::upcast::Upcasters;
    /// let mut u = Upcasters::new();
    /// u.add("Deposited", 1, |e| Ok(e.data.clone())).add("Deposited", 2, |e| Ok(e.data.clone()));
    /// assert_eq!(u.current_version("Deposited"), 3);
    /// ```
    pub fn add(
        &mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(&RecordedEvent) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.chains
            .entry(event_type.into())
            .or_default()
            .insert(from_version, Arc::new(step));
        self
    }

    /// True when no upcaster is registered.
    ///
    /// ```
    /// let mut u = eskv_core::upcast::Upcasters::new();
    /// u.add("Deposited", 1, |e| Ok(e.data.clone()));
    /// assert!(!u.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// The version writes of `event_type` use: one above the highest step
    /// registered for it, or 1.
    ///
    /// ```
    /// let mut u = eskv_core::upcast::Upcasters::new();
    /// u.add("Deposited", 1, |e| Ok(e.data.clone()));
    /// assert_eq!((u.current_version("Deposited"), u.current_version("Withdrawn")), (2, 1));
    /// ```
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.chains
            .get(event_type)
            .and_then(|s| s.keys().next_back())
            .map_or(1, |v| v + 1)
    }

    /// Checks that every chain starts at version 1 and has no gaps.
    ///
    /// ```
    /// let mut u = eskv_core::upcast::Upcasters::new();
    /// u.add("Deposited", 2, |e| Ok(e.data.clone()));
    /// let err = u.validate().unwrap_err();
    /// assert!(err.to_string().contains("register one from version 1 too"), "{err}");
    /// u.add("Deposited", 1, |e| Ok(e.data.clone()));
    /// assert!(u.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        for (t, steps) in &self.chains {
            for (i, &from) in steps.keys().enumerate() {
                let want = i as u32 + 1;
                if from != want {
                    let have: Vec<String> = steps.keys().map(u32::to_string).collect();
                    return Err(Error::invalid(format!(
                        "upcasters of event type '{t}' go from versions [{}]; register one \
                         from version {want} too, so events of every older version reach \
                         version {}",
                        have.join(", "),
                        self.current_version(t)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Brings a stored event to its type's current version. Events at or
    /// above it are returned as they are. A failing step is
    /// [`Error::Upcast`], naming the event and the version.
    ///
    /// ```
    /// # fn recorded(data: &[u8], version: Option<&str>) -> eskv_core::RecordedEvent {
    /// #     let mut e = eskv_core::RecordedEvent {
    /// #         position: 7, id: eskv_core::Ulid::nil(), event_type: "Deposited".into(), tags: vec![],
    /// #         data: data.to_vec(), metadata: Default::default(), recorded_at_ms: 0, stream: None, personal: None,
    /// #     };
    /// #     if let Some(v) = version { e.metadata.extra.insert(eskv_core::SCHEMA_VERSION_KEY.into(), v.into()); }
    /// #     e
    /// # }
    /// let mut u = eskv_core::upcast::Upcasters::new();
    /// u.add("Deposited", 1, |e| Ok([&e.data[..], b"0"].concat())); // euros → tenths
    /// u.add("Deposited", 2, |e| Ok([&e.data[..], b"0"].concat())); // tenths → cents
    /// let up = u.upcast(recorded(b"5", None))?;
    /// assert_eq!((up.data.as_slice(), up.schema_version()), (&b"500"[..], 3));
    /// let up = u.upcast(recorded(b"50", Some("2")))?;
    /// assert_eq!(up.data, b"500");
    /// # Ok::<(), eskv_core::Error>(())
    /// ```
    pub fn upcast(&self, mut e: RecordedEvent) -> Result<RecordedEvent> {
        let Some(steps) = self.chains.get(&e.event_type) else {
            return Ok(e);
        };
        let mut v = stored_version(&e)?;
        let mut changed = false;
        while let Some(step) = steps.get(&v) {
            e.data = step(&e).map_err(|err| Error::Upcast {
                event_type: e.event_type.clone(),
                position: e.position,
                from_version: v,
                message: err.to_string(),
            })?;
            v += 1;
            changed = true;
        }
        if changed {
            e.metadata
                .extra
                .insert(SCHEMA_VERSION_KEY.to_owned(), v.to_string());
        }
        Ok(e)
    }

    /// Brings every event to its current version.
    ///
    /// ```
    /// # fn recorded(data: &[u8], version: Option<&str>) -> eskv_core::RecordedEvent {
    /// #     let mut e = eskv_core::RecordedEvent {
    /// #         position: 7, id: eskv_core::Ulid::nil(), event_type: "Deposited".into(), tags: vec![],
    /// #         data: data.to_vec(), metadata: Default::default(), recorded_at_ms: 0, stream: None, personal: None,
    /// #     };
    /// #     if let Some(v) = version { e.metadata.extra.insert(eskv_core::SCHEMA_VERSION_KEY.into(), v.into()); }
    /// #     e
    /// # }
    /// let mut u = eskv_core::upcast::Upcasters::new();
    /// u.add("Deposited", 1, |e| Ok([&e.data[..], b"00"].concat()));
    /// let up = u.upcast_all(vec![recorded(b"5", None), recorded(b"700", Some("2"))])?;
    /// assert_eq!(up.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), [b"500".to_vec(), b"700".to_vec()]);
    /// # Ok::<(), eskv_core::Error>(())
    /// ```
    pub fn upcast_all(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
        if self.is_empty() {
            return Ok(events);
        }
        events.into_iter().map(|e| self.upcast(e)).collect()
    }

    /// Stamps an event being appended with its type's current version, or
    /// refuses it if it says it is an older one. A version the event says
    /// is kept as said (metadata reads back exactly as written).
    pub(crate) fn stamp(&self, e: &mut NewEvent) -> Result<()> {
        let current = self.current_version(&e.event_type);
        match e.metadata.extra.get(SCHEMA_VERSION_KEY) {
            None if current == 1 => Ok(()),
            None => {
                e.metadata
                    .extra
                    .insert(SCHEMA_VERSION_KEY.to_owned(), current.to_string());
                Ok(())
            }
            Some(s) => {
                let v = parse_version(s).ok_or_else(|| {
                    Error::invalid(format!(
                        "event {} says its schema version ({SCHEMA_VERSION_KEY}) is {s:?}; \
                         it must be a number from 1",
                        e.id
                    ))
                })?;
                if v < current {
                    return Err(Error::invalid(format!(
                        "event {} of type '{}' is schema version {v}, but the store writes \
                         version {current} (its upcasters reach it); build the event in the \
                         current schema",
                        e.id, e.event_type
                    )));
                }
                Ok(())
            }
        }
    }
}

fn parse_version(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|&v| v >= 1)
}

fn stored_version(e: &RecordedEvent) -> Result<u32> {
    match e.metadata.extra.get(SCHEMA_VERSION_KEY) {
        None => Ok(1),
        Some(s) => parse_version(s).ok_or_else(|| {
            Error::corrupt(
                Some(e.position),
                format!("schema version {s:?} ({SCHEMA_VERSION_KEY}) is not a number from 1"),
            )
        }),
    }
}

impl RecordedEvent {
    /// The event's schema version (1 when it carries none). Events read
    /// from a store are already at their type's current version; see the
    /// [module example](self).
    ///
    /// ```
    /// # fn recorded(data: &[u8], version: Option<&str>) -> eskv_core::RecordedEvent {
    /// #     let mut e = eskv_core::RecordedEvent {
    /// #         position: 7, id: eskv_core::Ulid::nil(), event_type: "Deposited".into(), tags: vec![],
    /// #         data: data.to_vec(), metadata: Default::default(), recorded_at_ms: 0, stream: None, personal: None,
    /// #     };
    /// #     if let Some(v) = version { e.metadata.extra.insert(eskv_core::SCHEMA_VERSION_KEY.into(), v.into()); }
    /// #     e
    /// # }
    /// assert_eq!(recorded(b"{}", None).schema_version(), 1);
    /// assert_eq!(recorded(b"{}", Some("4")).schema_version(), 4);
    /// ```
    pub fn schema_version(&self) -> u32 {
        self.metadata
            .extra
            .get(SCHEMA_VERSION_KEY)
            .and_then(|s| parse_version(s))
            .unwrap_or(1)
    }
}

impl NewEvent {
    /// The schema version this event says it is (1 when it says none).
    ///
    /// ```
    /// let e = eskv_core::NewEvent::new("Deposited", b"{}".to_vec());
    /// assert_eq!(e.schema_version(), 1);
    /// assert_eq!(e.with_schema_version(2).schema_version(), 2);
    /// ```
    pub fn schema_version(&self) -> u32 {
        self.metadata
            .extra
            .get(SCHEMA_VERSION_KEY)
            .and_then(|s| parse_version(s))
            .unwrap_or(1)
    }

    /// Marks the event as schema version `v` (at least 1). The store
    /// refuses it if its type's current version is higher; an event that
    /// says nothing is stamped with the current version.
    ///
    /// ```
    /// let e = eskv_core::NewEvent::new("Deposited", b"{}".to_vec()).with_schema_version(3);
    /// assert_eq!(e.schema_version(), 3);
    /// ```
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.metadata
            .extra
            .insert(SCHEMA_VERSION_KEY.to_owned(), v.max(1).to_string());
        self
    }
}
