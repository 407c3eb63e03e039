//! The event model: what you append ([`NewEvent`]) and what you read back
//! ([`RecordedEvent`]), plus typed helpers over serde.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use ulid::Ulid;

/// A global log position. Positions start at 1 and are gapless.
pub type Position = u64;

/// A stream version: the 1-based index of an event within its stream.
pub type StreamVersion = u64;

/// Event metadata: correlation and causation ids plus free key-value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Id shared by everything caused by one request.
    pub correlation_id: Option<String>,
    /// Id of the message or event that caused this one.
    pub causation_id: Option<String>,
    /// Anything else.
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a free key-value pair.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.correlation_id.as_ref().map_or(0, String::len)
            + self.causation_id.as_ref().map_or(0, String::len)
            + self
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// An event to append.
///
/// The id is generated when the event is built, so retrying the same
/// `NewEvent` after a timeout is idempotent. Tags are kept in canonical
/// order with duplicates removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id; appending the same ids again is an idempotent replay.
    pub id: Ulid,
    /// The event type, for example `CourseDefined`.
    pub event_type: String,
    /// Tags such as `course:c1`, sorted and deduplicated.
    pub tags: Vec<String>,
    /// Opaque payload.
    pub data: Vec<u8>,
    /// Metadata.
    pub metadata: Metadata,
    /// The personal part, belonging to a data subject: stored encrypted
    /// under the subject's key, erased for good by
    /// [`EventStore::forget`](crate::EventStore::forget).
    pub personal: Option<PersonalData>,
}

/// The personal part of an event: bytes that belong to one data subject
/// (a person), kept apart from the event's other data so that they can be
/// forgotten (crypto-shredding) while the event stays in the log.
///
/// The subject id names the person in the store; use a surrogate id
/// (`user-123`), not personal data itself, since it is stored in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonalData {
    subject: String,
    pub(crate) content: PersonalContent,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum PersonalContent {
    Plain(Vec<u8>),
    Erased,
    /// As stored; the read path opens it before an application sees it.
    Sealed(SealedPersonal),
}

/// A personal part as stored: encrypted (XChaCha20-Poly1305) under
/// generation `generation` of its subject's key, bound to its event id and
/// subject. Only reads with [`PersonalParts::Sealed`] return it (backups:
/// [`crate::EventStoreOptions::personal_parts`]); it is useless without the
/// subject's key, which never leaves the store unwrapped.
///
/// [`PersonalParts::Sealed`]: crate::PersonalParts::Sealed
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPersonal {
    /// The generation of the subject key it is sealed under (1 or more).
    pub generation: u64,
    /// The cipher's nonce.
    pub nonce: [u8; 24],
    /// Ciphertext with its authentication tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl PersonalData {
    /// `bytes` belonging to data subject `subject`.
    pub fn new(subject: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        PersonalData {
            subject: subject.into(),
            content: PersonalContent::Plain(bytes.into()),
        }
    }

    /// A personal part whose subject was forgotten.
    pub fn erased(subject: impl Into<String>) -> Self {
        PersonalData {
            subject: subject.into(),
            content: PersonalContent::Erased,
        }
    }

    /// A personal part as stored, sealed: for
    /// [`EventStore::import`](crate::EventStore::import) of a backup.
    pub fn sealed(subject: impl Into<String>, sealed: SealedPersonal) -> Self {
        PersonalData {
            subject: subject.into(),
            content: PersonalContent::Sealed(sealed),
        }
    }

    /// The part as stored, when it was read sealed
    /// ([`PersonalParts::Sealed`](crate::PersonalParts::Sealed)) and its
    /// subject was not forgotten.
    pub fn sealed_part(&self) -> Option<&SealedPersonal> {
        match &self.content {
            PersonalContent::Sealed(s) => Some(s),
            _ => None,
        }
    }

    /// The data subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The bytes, or `None` when the subject was forgotten.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.content {
            PersonalContent::Plain(b) => Some(b),
            _ => None,
        }
    }

    /// True when the subject was forgotten and the bytes are gone (a
    /// sealed part, see [`sealed_part`](Self::sealed_part), is not erased).
    pub fn is_erased(&self) -> bool {
        matches!(self.content, PersonalContent::Erased)
    }

    /// Decodes the bytes as JSON; `None` when erased.
    pub fn json<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.bytes().map(Json::decode).transpose()
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.subject.len() + self.bytes().map_or(0, <[u8]>::len)
    }
}

impl std::fmt::Debug for PersonalData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the bytes: logs are no place for personal data.
        let state = match &self.content {
            PersonalContent::Plain(b) => format!("{} bytes", b.len()),
            PersonalContent::Erased => "erased".into(),
            PersonalContent::Sealed(_) => "sealed".into(),
        };
        f.debug_struct("PersonalData")
            .field("subject", &self.subject)
            .field("content", &state)
            .finish()
    }
}

impl NewEvent {
    /// A new event of `event_type` with payload `data` and a fresh ULID.
    pub fn new(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        NewEvent {
            id: Ulid::generate(),
            event_type: event_type.into(),
            tags: Vec::new(),
            data: data.into(),
            metadata: Metadata::default(),
            personal: None,
        }
    }

    /// A new event whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(event_type: impl Into<String>, value: &T) -> Result<Self> {
        Self::encoded::<Json, T>(event_type, value)
    }

    /// A new event whose payload is `value` encoded with codec `C`.
    pub fn encoded<C: PayloadCodec, T: Serialize + ?Sized>(
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self> {
        Ok(Self::new(event_type, C::encode(value)?))
    }

    /// Uses a client-chosen id (for idempotent retries across processes).
    pub fn with_id(mut self, id: Ulid) -> Self {
        self.id = id;
        self
    }

    /// Replaces the tags.
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self.tags.sort();
        self.tags.dedup();
        self
    }

    /// Adds one tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let t = tag.into();
        if let Err(i) = self.tags.binary_search(&t) {
            self.tags.insert(i, t);
        }
        self
    }

    /// Sets the metadata. The event keeps its schema version
    /// ([`NewEvent::with_schema_version`]) unless `metadata` says one
    /// ([`SCHEMA_VERSION_KEY`](crate::SCHEMA_VERSION_KEY)), which then wins:
    /// an export line, for one, carries its event's version there. To pass
    /// along metadata read from another event, which carries *that*
    /// event's version, use [`NewEvent::typed`], which always keeps the
    /// typed event's own.
    ///
    /// ```
    /// use eskv_core::{Metadata, NewEvent, SCHEMA_VERSION_KEY};
    /// let e = NewEvent::new("Deposited", b"{}".to_vec()).with_schema_version(2);
    /// let e = e.with_metadata(Metadata::new().correlation_id("req-1"));
    /// assert_eq!((e.schema_version(), e.metadata.correlation_id.as_deref()), (2, Some("req-1")));
    /// let mut said = Metadata::new();
    /// said.extra.insert(SCHEMA_VERSION_KEY.into(), "3".into());
    /// assert_eq!(e.with_metadata(said).schema_version(), 3);
    /// ```
    pub fn with_metadata(mut self, mut metadata: Metadata) -> Self {
        let key = crate::SCHEMA_VERSION_KEY;
        if let Some(v) = self.metadata.extra.remove(key) {
            metadata.extra.entry(key.to_owned()).or_insert(v);
        }
        self.metadata = metadata;
        self
    }

    /// Marks `bytes` as the personal part of this event, belonging to data
    /// subject `subject`: stored encrypted under the subject's key (the
    /// store needs [`EventStoreOptions::store_key`]), and erased for good
    /// by [`EventStore::forget`]. Keep the rest of the event free of
    /// personal data.
    ///
    /// [`EventStoreOptions::store_key`]: crate::EventStoreOptions::store_key
    /// [`EventStore::forget`]: crate::EventStore::forget
    pub fn with_personal_data(
        mut self,
        subject: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> Self {
        self.personal = Some(PersonalData::new(subject, bytes));
        self
    }

    /// Puts the tags in canonical order (sorted, no duplicates). Called by
    /// the store on every append, so hand-built structs are fine too.
    pub(crate) fn canonicalize(&mut self) {
        self.tags.sort();
        self.tags.dedup();
    }
}

/// Parses an event id written as a 26-character ULID (Crockford base32,
/// either case), the way every id given as text must be parsed.
///
/// Rejects, as [`Error::InvalidInput`], anything that is not exactly a
/// ULID, including ids beyond the 128-bit range (a first character above
/// `7`, such as `8ZZZZZZZZZZZZZZZZZZZZZZZZZ`): a lenient decoder drops the
/// overflowing bits and turns that id into `0ZZZ…`, so two different ids
/// would name the same event.
pub fn parse_event_id(s: &str) -> Result<Ulid> {
    let id = Ulid::from_string(s).map_err(|e| {
        Error::invalid(format!(
            "event id {s:?} is not a ULID ({e}): give 26 characters of Crockford base32, for example {}",
            Ulid::nil()
        ))
    })?;
    // The decoder keeps the low 128 of the 130 bits 26 characters carry;
    // only a text that prints back as itself named this id.
    if !id.to_string().eq_ignore_ascii_case(s) {
        return Err(Error::invalid(format!(
            "event id {s:?} is out of the ULID range: the first character must be 0 to 7 (the largest id is {})",
            Ulid(u128::MAX)
        )));
    }
    Ok(id)
}

/// The stream an event was appended to, and its version there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamRef {
    /// Stream id.
    pub stream_id: String,
    /// 1-based version of the event within the stream.
    pub version: StreamVersion,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position (gapless, in commit order).
    pub position: Position,
    /// Unique id.
    pub id: Ulid,
    /// Event type.
    pub event_type: String,
    /// Tags, sorted and deduplicated.
    pub tags: Vec<String>,
    /// Payload.
    pub data: Vec<u8>,
    /// Metadata.
    pub metadata: Metadata,
    /// When the store recorded it, in milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
    /// The stream and version, for stream appends.
    pub stream: Option<StreamRef>,
    /// The personal part, if the event has one: its bytes, or marked
    /// erased once its subject was forgotten.
    pub personal: Option<PersonalData>,
}

impl RecordedEvent {
    /// When the store recorded the event.
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.recorded_at_ms)
    }

    /// Decodes the payload as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode::<Json, T>()
    }

    /// Decodes the payload with codec `C`.
    pub fn decode<C: PayloadCodec, T: DeserializeOwned>(&self) -> Result<T> {
        C::decode(&self.data).map_err(|e| match e {
            Error::InvalidInput { message } => Error::invalid(format!(
                "event at position {} ({}): {message}",
                self.position, self.event_type
            )),
            other => other,
        })
    }

    /// True when the event carries every tag in `tags`.
    pub fn has_tags<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        tags.iter().all(|t| {
            self.tags
                .binary_search_by(|x| x.as_str().cmp(t.as_ref()))
                .is_ok()
        })
    }
}

/// A payload format. [`Json`] is the default; implement this to plug in any
/// serde format.
pub trait PayloadCodec {
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T>;
}

/// JSON payloads (serde_json).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl PayloadCodec for Json {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::encode("payload as JSON", e))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("payload is not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_range_ids_are_rejected() {
        let max = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
        assert_eq!(parse_event_id(max).unwrap(), Ulid(u128::MAX));
        for bad in [
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "Z0000000000000000000000000",
            "80000000000000000000000000",
        ] {
            match parse_event_id(bad) {
                Err(Error::InvalidInput { message }) => {
                    assert!(message.contains(bad), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for bad in [
            "",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
            "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        ] {
            assert!(
                matches!(parse_event_id(bad), Err(Error::InvalidInput { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            parse_event_id("01arz3ndektsv4rrffq69g5fav").unwrap(),
            parse_event_id("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap()
        );
    }

    proptest! {
        /// Whatever parses is the id the text spells: it prints back as the
        /// same text (up to case), so two texts never name one id.
        #[test]
        fn accepted_ids_round_trip(s in "[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}") {
            if let Ok(id) = parse_event_id(&s) {
                prop_assert_eq!(id.to_string(), s.to_ascii_uppercase());
            } else {
                prop_assert!(!('0'..='7').contains(&s.chars().next().unwrap()));
            }
        }
    }
}
