//! serde for [`RecordedEvent`] and [`NewEvent`], in the JSON-lines format
//! of the `eskv` CLI (`read --json`, `export`, `import`), so an event
//! serialized by a program and a line exported by the CLI are the same text.
//!
//! ```json
//! {"position":3,"id":"01J...","type":"StudentSubscribed","stream":"course-c1","version":2,
//!  "tags":["course:c1","student:s1"],"data":{"student":"s1"},
//!  "metadata":{"correlation_id":"r-1","extra":{"k":"v"}},"recorded_at":"2025-01-31T10:00:00.123Z"}
//! ```
//!
//! The payload goes in exactly one of `data` (a single-line JSON document,
//! verbatim), `data_text` (other UTF-8) or `data_base64` (anything else).
//! `recorded_at` is RFC 3339 in UTC with milliseconds, up to year 9999
//! ([`crate::recorded_at`]). A personal part is never written in clear
//! ([`PersonalLine`]): a recorded event's goes out sealed, erased, or (opened)
//! as its subject alone, which cannot be read back; a new event with one
//! is an error either way. A [`NewEvent`] has
//! only `id`, `type`, `tags`, the payload and `metadata`; deserializing one
//! from a recorded line ignores the recorded fields, and a missing `id`
//! gets a fresh one. The format is JSON: the verbatim `data` field needs
//! `serde_json`.
//!
//! ```
//! use eskv_core::NewEvent;
//! let e = NewEvent::new("OrderPlaced", br#"{"total":12}"#.to_vec()).with_tags(["order:1"]);
//! let line = serde_json::to_string(&e).unwrap();
//! assert!(line.ends_with(r#""type":"OrderPlaced","tags":["order:1"],"data":{"total":12}}"#));
//! let back: NewEvent = serde_json::from_str(&line).unwrap();
//! assert_eq!(back, e);
//! ```

use crate::event::{Metadata, NewEvent, RecordedEvent, StreamRef};
use base64::Engine as _;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use ulid::Ulid;

mod personal;
pub use personal::{PersonalLine, SealedLine};

#[derive(Serialize)]
struct LineOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    id: &'a Ulid,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip_serializing_if = "MetaOut::is_empty")]
    metadata: MetaOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    personal: Option<PersonalLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_at: Option<String>,
}

#[derive(Serialize)]
struct MetaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: &'a BTreeMap<String, String>,
}

impl<'a> MetaOut<'a> {
    fn new(m: &'a Metadata) -> Self {
        MetaOut {
            correlation_id: m.correlation_id.as_deref(),
            causation_id: m.causation_id.as_deref(),
            extra: &m.extra,
        }
    }

    fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none() && self.extra.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    id: Option<Ulid>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default, deserialize_with = "present_raw")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    data_text: Option<String>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    metadata: MetaIn,
    #[serde(default)]
    personal: Option<PersonalLine>,
    #[serde(default)]
    recorded_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetaIn {
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    #[serde(default)]
    extra: BTreeMap<String, String>,
}

impl From<MetaIn> for Metadata {
    fn from(m: MetaIn) -> Self {
        Metadata {
            correlation_id: m.correlation_id,
            causation_id: m.causation_id,
            extra: m.extra,
        }
    }
}

/// `"data": null` is the payload `null`, not an absent field.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// The payload written the way the CLI writes it.
fn payload_out(bytes: &[u8]) -> (Option<&RawValue>, Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let verbatim = !s.contains(['\n', '\r'])
                && serde_json::from_str::<&RawValue>(s).is_ok_and(|r| r.get().len() == s.len());
            if verbatim {
                let raw: &RawValue = serde_json::from_str(s).expect("checked above");
                (Some(raw), None, None)
            } else {
                (None, Some(s), None)
            }
        }
        Err(_) => (
            None,
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

impl LineIn {
    fn payload<E: serde::de::Error>(&self) -> Result<Vec<u8>, E> {
        match (&self.data, &self.data_text, &self.data_base64) {
            (None, None, None) => Ok(b"{}".to_vec()),
            (Some(raw), None, None) => Ok(raw.get().as_bytes().to_vec()),
            (None, Some(t), None) => Ok(t.clone().into_bytes()),
            (None, None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| E::custom(format!("data_base64 is not valid base64: {e}"))),
            _ => Err(E::custom(
                "give at most one of data, data_text and data_base64",
            )),
        }
    }
}

/// Why a line with a personal part is no new event.
fn personal_new_event_line(id: &str) -> String {
    format!(
        "the event {id} has a personal part, which only an import writes (from an export); \
         deserialize it as a RecordedEvent, or append a NewEvent built with with_personal_data"
    )
}

/// Why a new event with a personal part has no line.
fn personal_new_event(id: &Ulid) -> String {
    format!(
        "event {id} has a personal part: a new event is never written as a line with one \
         (its bytes would leave the store in clear, out of reach of forgetting); append it, \
         and move stored events with `eskv export` and `eskv import`"
    )
}

impl Serialize for NewEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.personal.is_some() {
            return Err(S::Error::custom(personal_new_event(&self.id)));
        }
        let (data, data_text, data_base64) = payload_out(&self.data);
        LineOut {
            position: None,
            id: &self.id,
            event_type: &self.event_type,
            stream: None,
            version: None,
            tags: &self.tags,
            data,
            data_text,
            data_base64,
            metadata: MetaOut::new(&self.metadata),
            personal: None,
            recorded_at: None,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NewEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = LineIn::deserialize(d)?;
        if line.personal.is_some() {
            let id = line
                .id
                .map_or_else(|| "on this line".into(), |id| id.to_string());
            return Err(D::Error::custom(personal_new_event_line(&id)));
        }
        let data = line.payload()?;
        let mut e = NewEvent::new(line.event_type, data)
            .with_tags(line.tags)
            .with_metadata(line.metadata.into());
        if let Some(id) = line.id {
            e = e.with_id(id);
        }
        Ok(e)
    }
}

impl Serialize for RecordedEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (data, data_text, data_base64) = payload_out(&self.data);
        LineOut {
            position: Some(self.position),
            id: &self.id,
            event_type: &self.event_type,
            stream: self.stream.as_ref().map(|r| r.stream_id.as_str()),
            version: self.stream.as_ref().map(|r| r.version),
            tags: &self.tags,
            data,
            data_text,
            data_base64,
            metadata: MetaOut::new(&self.metadata),
            personal: self.personal.as_ref().map(PersonalLine::of),
            recorded_at: Some(
                crate::recorded_at::format(self.recorded_at_ms).map_err(S::Error::custom)?,
            ),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = LineIn::deserialize(d)?;
        let data = line.payload()?;
        let position = line
            .position
            .ok_or_else(|| D::Error::missing_field("position"))?;
        let id = line.id.ok_or_else(|| D::Error::missing_field("id"))?;
        let recorded_at = line
            .recorded_at
            .as_deref()
            .ok_or_else(|| D::Error::missing_field("recorded_at"))?;
        let recorded_at_ms = crate::recorded_at::parse(recorded_at).map_err(D::Error::custom)?;
        let stream = match (line.stream, line.version) {
            (Some(stream_id), Some(version)) => Some(StreamRef { stream_id, version }),
            (None, None) => None,
            _ => return Err(D::Error::custom("give both stream and version, or neither")),
        };
        let personal = line
            .personal
            .as_ref()
            .map(PersonalLine::to_personal)
            .transpose()
            .map_err(D::Error::custom)?;
        let mut tags = line.tags;
        tags.sort();
        tags.dedup();
        Ok(RecordedEvent {
            position,
            id,
            event_type: line.event_type,
            tags,
            data,
            metadata: line.metadata.into(),
            recorded_at_ms,
            stream,
            personal,
        })
    }
}
