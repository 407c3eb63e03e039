//! The JSON-lines event format shared by `append` (input), `read`, `tail`,
//! `export` (output) and `import` (input).
//!
//! One event per line, fields in this order (optional ones left out when
//! absent):
//!
//! ```json
//! {"position":3,"id":"01J...","type":"StudentSubscribed","stream":"course-c1","version":2,
//!  "tags":["course:c1","student:s1"],"data":{"student":"s1"},
//!  "metadata":{"correlation_id":"r-1","extra":{"k":"v"}},"recorded_at":"2025-01-31T10:00:00.123Z"}
//! ```
//!
//! # Payloads
//!
//! eskv stores payloads as bytes. A line carries them in exactly one of:
//!
//! - `"data": <JSON>`: the payload is a JSON document, written verbatim
//!   (byte for byte, so key order, spacing and number spelling survive a
//!   round trip). Used when the bytes are UTF-8, parse as JSON with nothing
//!   around them, and have no line break.
//! - `"data_text": "..."`: any other UTF-8 payload (including an empty one
//!   and JSON spread over several lines).
//! - `"data_base64": "..."`: a payload that is not UTF-8, in standard
//!   base64 with padding.
//!
//! On input (`append`, `import`) the same three fields are accepted; with
//! none of them the payload is `{}`.
//!
//! # Recorded time
//!
//! `recorded_at` is RFC 3339 in UTC with milliseconds. The store assigns it
//! at append time; `import` writes it back exactly (with
//! `EventStore::import`), so an imported store reads like its source.
//!
//! # Personal parts
//!
//! An event with a personal part carries `"personal"`, never its bytes in
//! clear:
//!
//! - `{"subject":"user-1","sealed":{"generation":1,"nonce":"…","ciphertext":"…"}}`:
//!   the part as the store holds it (XChaCha20-Poly1305 under the
//!   subject's key, base64), written by export and archive;
//! - `{"subject":"user-1","erased":true}`: its subject was forgotten;
//! - `{"subject":"user-1"}`: `read --json` of an opened part (the subject
//!   is named, the bytes are left out); import refuses it.

use crate::{Metadata, NewEvent, PersonalData, RecordedEvent};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
pub use eskv_core::event_serde::{PersonalLine, SealedLine};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// One event as a JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    /// Global position (output; required by `import`, ignored by `append`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Event id (a ULID); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Stream id (output; required by `import` for stream events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Version within the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A JSON payload, verbatim.
    #[serde(
        default,
        deserialize_with = "some_raw",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<Box<RawValue>>,
    /// A UTF-8 payload that is not single-line JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_text: Option<String>,
    /// A binary payload, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "MetaLine::is_empty")]
    pub metadata: MetaLine,
    /// The personal part: sealed, erased, or only its subject (see the
    /// module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal: Option<PersonalLine>,
    /// When the store recorded the event (RFC 3339, UTC, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

/// Metadata as JSON: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaLine {
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Causation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Free key-value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl MetaLine {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none() && self.extra.is_empty()
    }
}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
/// A time after [`recorded_at::MAX_MS`] (year 9999), which no store holds
/// (appends take the clock and imports refuse it), is written as a
/// message that [`parse_time`] refuses by name, never as a panic.
///
/// [`recorded_at::MAX_MS`]: eskv_core::recorded_at::MAX_MS
pub fn format_time(ms: u64) -> String {
    eskv_core::recorded_at::format(ms).unwrap_or_else(|e| e)
}

/// Parses an RFC 3339 UTC time into milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64, String> {
    eskv_core::recorded_at::parse(s)
}

/// The three ways a payload is written (see the module docs).
pub fn payload_fields(bytes: &[u8]) -> (Option<Box<RawValue>>, Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let verbatim_json = !s.contains(['\n', '\r'])
                && serde_json::from_str::<&RawValue>(s).is_ok_and(|r| r.get().len() == s.len());
            if verbatim_json {
                // Valid JSON with nothing around it: the raw value is exactly `s`.
                let raw = RawValue::from_string(s.to_owned()).expect("checked above");
                (Some(raw), None, None)
            } else {
                (None, Some(s.to_owned()), None)
            }
        }
        Err(_) => (None, None, Some(B64.encode(bytes))),
    }
}

impl EventLine {
    /// The line for a stored event.
    pub fn from_recorded(e: &RecordedEvent) -> EventLine {
        let (data, data_text, data_base64) = payload_fields(&e.data);
        let extra = e.metadata.extra.clone();
        let recorded_at_ms = e.recorded_at_ms;
        EventLine {
            position: Some(e.position),
            id: Some(e.id.to_string()),
            event_type: e.event_type.clone(),
            stream: e.stream.as_ref().map(|s| s.stream_id.clone()),
            version: e.stream.as_ref().map(|s| s.version),
            tags: e.tags.clone(),
            data,
            data_text,
            data_base64,
            metadata: MetaLine {
                correlation_id: e.metadata.correlation_id.clone(),
                causation_id: e.metadata.causation_id.clone(),
                extra,
            },
            personal: e.personal.as_ref().map(PersonalLine::of),
            recorded_at: Some(format_time(recorded_at_ms)),
        }
    }

    /// Parses a line.
    pub fn parse(line: &str) -> Result<EventLine, String> {
        serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("missing field `type`") {
                "the event has no \"type\"".to_owned()
            } else {
                format!("not an event line: {msg}")
            }
        })
    }

    /// The canonical text of the line (what `read --json` and `export`
    /// print, and what checksums are computed over).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event line always serializes")
    }

    /// The payload bytes. Fails when more than one payload field is set or
    /// base64 does not decode.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        match (&self.data, &self.data_text, &self.data_base64) {
            (None, None, None) => Ok(b"{}".to_vec()),
            (Some(raw), None, None) => Ok(raw.get().as_bytes().to_vec()),
            (None, Some(t), None) => Ok(t.clone().into_bytes()),
            (None, None, Some(b)) => B64
                .decode(b)
                .map_err(|e| format!("data_base64 is not valid base64: {e}")),
            _ => Err("give at most one of data, data_text and data_base64".into()),
        }
    }

    /// The canonical text with personal parts reduced to their subject:
    /// what a store's content is compared by (a part sealed in the file
    /// reads erased from a store where its subject was forgotten since).
    pub fn to_content_json(&self) -> String {
        match &self.personal {
            None => self.to_json(),
            Some(p) => EventLine {
                personal: Some(p.subject_only()),
                ..self.clone()
            }
            .to_json(),
        }
    }

    /// The event to append: the line's id (or a fresh one), type, tags,
    /// payload and metadata. A line with a personal part is refused
    /// (import writes those, see [`PersonalLine::to_personal`]).
    pub fn to_new_event(&self) -> Result<NewEvent, String> {
        if self.personal.is_some() {
            return Err(
                "the line has a personal part; only import writes those (from an export)".into(),
            );
        }
        self.to_new_event_without_personal()
    }

    /// The parts an import writes of this line, checked as far as the
    /// line itself can tell, without a store: an id, a stream with a
    /// version of 1 or more (or neither), a valid payload, id and time, and
    /// a well-formed personal part. `eskv import` runs it over a whole file
    /// before it writes anything; [`Importer::push`](super::Importer::push)
    /// builds its event from it.
    pub fn to_imported(&self) -> Result<ImportedLine, String> {
        if self.id.is_none() {
            return Err("no \"id\"".into());
        }
        let stream = match (&self.stream, self.version) {
            (Some(s), Some(v)) if v > 0 => Some((s.clone(), v)),
            (None, None) => None,
            _ => {
                return Err(
                    "it needs both \"stream\" and \"version\" (1 or more), or neither".into(),
                )
            }
        };
        Ok(ImportedLine {
            event: self.to_new_event_without_personal()?,
            stream,
            personal: self
                .personal
                .as_ref()
                .map(|p| p.to_personal())
                .transpose()?,
            recorded_at_ms: self.recorded_at.as_deref().map(parse_time).transpose()?,
        })
    }

    /// [`to_new_event`](Self::to_new_event), leaving the personal part
    /// out (import adds it).
    pub(crate) fn to_new_event_without_personal(&self) -> Result<NewEvent, String> {
        let mut e = NewEvent::new(self.event_type.clone(), self.payload()?)
            .with_tags(self.tags.iter().cloned())
            .with_metadata(Metadata {
                correlation_id: self.metadata.correlation_id.clone(),
                causation_id: self.metadata.causation_id.clone(),
                extra: self.metadata.extra.clone(),
            });
        if let Some(id) = &self.id {
            // The core parser: it also rejects ids beyond the ULID range,
            // which a lenient decoder would wrap onto another id.
            e = e.with_id(crate::parse_event_id(id).map_err(|err| err.to_string())?);
        }
        Ok(e)
    }
}

/// What an import takes from an [`EventLine`] ([`EventLine::to_imported`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedLine {
    /// Id, type, tags, payload and metadata.
    pub event: NewEvent,
    /// The stream and the version in it.
    pub stream: Option<(String, u64)>,
    /// The personal part, sealed or erased.
    pub personal: Option<PersonalData>,
    /// When the source recorded it (ms since the Unix epoch), when known.
    pub recorded_at_ms: Option<u64>,
}

/// A running checksum over canonical event lines: crc32c of every line
/// followed by `\n`, in order, plus the count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Lines added.
    pub events: u64,
    /// crc32c so far.
    pub crc: u32,
}

impl Digest {
    /// Adds one canonical line (without its newline).
    pub fn add(&mut self, line: &str) {
        self.crc = crc32c::crc32c_append(self.crc, line.as_bytes());
        self.crc = crc32c::crc32c_append(self.crc, b"\n");
        self.events += 1;
    }

    /// The crc as 8 hex digits.
    pub fn hex(&self) -> String {
        format!("{:08x}", self.crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ulid;
    use crate::{SealedPersonal, StreamRef};

    fn recorded(data: &[u8]) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            id: Ulid::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap(),
            event_type: "OrderPlaced".into(),
            tags: vec!["order:1".into()],
            data: data.to_vec(),
            metadata: Metadata::new().correlation_id("c").with("k", "v"),
            recorded_at_ms: 1_700_000_000_123,
            stream: Some(StreamRef {
                stream_id: "order-1".into(),
                version: 2,
            }),
            personal: None,
        }
    }

    #[test]
    fn canonical_line() {
        let line = EventLine::from_recorded(&recorded(br#"{"b": 1,"a":2.50}"#)).to_json();
        assert_eq!(
            line,
            r#"{"position":7,"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","type":"OrderPlaced","stream":"order-1","version":2,"tags":["order:1"],"data":{"b": 1,"a":2.50},"metadata":{"correlation_id":"c","extra":{"k":"v"}},"recorded_at":"2023-11-14T22:13:20.123Z"}"#
        );
        let back = EventLine::parse(&line).unwrap();
        assert_eq!(back.to_json(), line);
        assert_eq!(back.payload().unwrap(), br#"{"b": 1,"a":2.50}"#);
    }

    #[test]
    fn payload_kinds_round_trip() {
        for data in [
            &b"null"[..],
            b"\"s\"",
            b"",
            b" {}",
            b"{\n}",
            b"plain text",
            b"[1,2",
            &[0xff, 0x00, 0x80],
        ] {
            let line = EventLine::from_recorded(&recorded(data)).to_json();
            assert!(!line.contains('\n'));
            let back = EventLine::parse(&line).unwrap();
            assert_eq!(back.payload().unwrap(), data, "{line}");
            let e = back.to_new_event().unwrap();
            assert_eq!(e.data, data);
            assert_eq!(e.id.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        }
        let (_, text, _) = payload_fields(b" {}");
        assert_eq!(text.as_deref(), Some(" {}"));
        let (_, _, b64) = payload_fields(&[0xff]);
        assert_eq!(b64.as_deref(), Some("/w=="));
    }

    #[test]
    fn recorded_time_round_trips() {
        let mut e = recorded(b"{}");
        e.recorded_at_ms = 1000;
        let line = EventLine::from_recorded(&e);
        assert_eq!(
            line.recorded_at.as_deref(),
            Some("1970-01-01T00:00:01.000Z")
        );
        assert_eq!(parse_time("1970-01-01T00:00:01.000Z").unwrap(), 1000);
        assert_eq!(
            parse_time(&format_time(1_700_000_000_123)).unwrap(),
            1_700_000_000_123
        );
    }

    #[test]
    fn input_errors() {
        assert!(EventLine::parse(r#"{"data":1}"#)
            .unwrap_err()
            .contains("no \"type\""));
        assert!(EventLine::parse(r#"{"type":"A","typo":1}"#)
            .unwrap_err()
            .contains("unknown field"));
        let two = EventLine::parse(r#"{"type":"A","data":1,"data_text":"x"}"#).unwrap();
        assert!(two.payload().unwrap_err().contains("at most one"));
        let bad = EventLine::parse(r#"{"type":"A","id":"nope"}"#).unwrap();
        assert!(bad.to_new_event().unwrap_err().contains("not a ULID"));
        // Out of the ULID range: rejected, not wrapped onto 0ZZZ….
        let over = EventLine::parse(r#"{"type":"A","id":"8ZZZZZZZZZZZZZZZZZZZZZZZZZ"}"#).unwrap();
        assert!(over
            .to_new_event()
            .unwrap_err()
            .contains("out of the ULID range"));
        let none = EventLine::parse(r#"{"type":"A"}"#).unwrap();
        assert_eq!(none.payload().unwrap(), b"{}");
    }

    #[test]
    fn personal_parts_travel_sealed_or_erased_never_in_clear() {
        let sealed = SealedPersonal {
            generation: 3,
            nonce: [7; 24],
            ciphertext: vec![1, 2, 3, 250],
        };
        let mut e = recorded(b"{}");
        e.personal = Some(PersonalData::sealed("user-1", sealed.clone()));
        let line = EventLine::from_recorded(&e).to_json();
        assert!(
            line.contains(r#""personal":{"subject":"user-1","sealed":{"generation":3,"#),
            "{line}"
        );
        let back = EventLine::parse(&line).unwrap();
        let p = back.personal.as_ref().unwrap().to_personal().unwrap();
        assert_eq!(p.sealed_part(), Some(&sealed));
        assert_eq!(p.subject(), "user-1");
        // The content form names the subject only.
        assert!(back
            .to_content_json()
            .contains(r#""personal":{"subject":"user-1"},"#));
        // Erased: no ciphertext at all.
        e.personal = Some(PersonalData::erased("user-2"));
        let line = EventLine::from_recorded(&e).to_json();
        assert!(
            line.contains(r#""personal":{"subject":"user-2","erased":true}"#),
            "{line}"
        );
        let p = EventLine::parse(&line)
            .unwrap()
            .personal
            .unwrap()
            .to_personal()
            .unwrap();
        assert!(p.is_erased());
        // Opened (a `read`): the subject only, never the bytes.
        e.personal = Some(PersonalData::new("user-3", b"Ada Lovelace".to_vec()));
        let line = EventLine::from_recorded(&e).to_json();
        assert!(!line.contains("Ada"), "{line}");
        let only = EventLine::parse(&line).unwrap();
        assert!(only
            .personal
            .as_ref()
            .unwrap()
            .to_personal()
            .unwrap_err()
            .contains("no content"));
        // Appends take no personal parts from a line.
        assert!(only.to_new_event().unwrap_err().contains("personal"));
    }

    #[test]
    fn bad_personal_lines() {
        let base = r#"{"type":"A","personal":"#;
        for (p, want) in [
            (
                r#"{"subject":"s","erased":true,"sealed":{"generation":1,"nonce":"","ciphertext":""}}"#,
                "not both",
            ),
            (
                r#"{"subject":"s","sealed":{"generation":1,"nonce":"AAAA","ciphertext":""}}"#,
                "24 bytes",
            ),
            (
                r#"{"subject":"s","sealed":{"generation":1,"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ciphertext":"*"}}"#,
                "base64",
            ),
        ] {
            let l = EventLine::parse(&format!("{base}{p}}}")).unwrap();
            let err = l.personal.unwrap().to_personal().unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        assert!(
            EventLine::parse(&format!(r#"{base}{{"subject":"s","typo":1}}}}"#))
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn digest() {
        let mut d = Digest::default();
        d.add("a");
        d.add("b");
        assert_eq!(d.events, 2);
        assert_eq!(d.crc, crc32c::crc32c(b"a\nb\n"));
        assert_eq!(d.hex().len(), 8);
    }
}
