//! The stored form of an event.
//!
//! ```text
//! [format version: 1 byte = 1][crc32c of body: 4 bytes LE][body: postcard]
//! [format version: 1 byte = 2][crc32c of the rest][body: postcard][personal part: postcard]
//! ```
//!
//! Format 2 is written only for events with a personal part: the
//! version-1 body followed by `(subject, sealed part)`, the part encrypted
//! under the subject's key (see [`crate::crypto`]). Every other event is
//! still format 1, so a store that never holds personal data is laid out
//! exactly as before.
//!
//! The body carries the event's own position, so a value copied to the
//! wrong key is detected as well as a flipped bit. Decoding never panics and
//! never allocates more than the input's size: any damage is
//! [`Error::Corrupt`] naming the position.

use crate::error::{Error, Result};
use crate::event::{
    Metadata, NewEvent, PersonalContent, PersonalData, Position, RecordedEvent, SealedPersonal,
    StreamRef,
};
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;
use ulid::Ulid;

/// Current envelope format.
pub const FORMAT_V1: u8 = 1;
/// Envelope format of events with a personal part.
pub const FORMAT_V2: u8 = 2;
const HEADER: usize = 5;

#[derive(Serialize)]
struct Body<'a> {
    position: u64,
    id: u128,
    event_type: &'a str,
    tags: Vec<&'a str>,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    extra: Vec<(&'a str, &'a str)>,
    recorded_at_ms: u64,
    stream: Option<(&'a str, u64)>,
}

/// The same layout as [`Body`], decoded straight into owned fields (one
/// allocation per field, no intermediate borrowed vectors). Reads use
/// [`BodyReader`]; this serde form stays as the reference it is tested
/// against.
#[cfg(test)]
#[derive(Deserialize)]
struct OwnedBody {
    position: u64,
    id: u128,
    event_type: String,
    tags: Vec<String>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    extra: Vec<(String, String)>,
    recorded_at_ms: u64,
    stream: Option<(String, u64)>,
}

/// Encodes a recorded event for storage.
pub fn encode(e: &RecordedEvent) -> Result<Vec<u8>> {
    let new = NewEvent {
        id: e.id,
        event_type: e.event_type.clone(),
        tags: e.tags.clone(),
        data: e.data.clone(),
        metadata: e.metadata.clone(),
        personal: None,
    };
    let stream = e.stream.as_ref().map(|s| (s.stream_id.as_str(), s.version));
    let personal = match &e.personal {
        None => None,
        Some(p) => match &p.content {
            PersonalContent::Sealed(s) => Some((p.subject(), s)),
            _ => return Err(Error::invalid(
                "only a sealed personal part can be stored; append the event to have it encrypted",
            )),
        },
    };
    encode_sealed(e.position, &new, e.recorded_at_ms, stream, personal)
}

/// Encodes an event being appended at `position`, without copying it.
pub fn encode_new(
    position: Position,
    e: &NewEvent,
    recorded_at_ms: u64,
    stream: Option<(&str, u64)>,
) -> Result<Vec<u8>> {
    encode_sealed(position, e, recorded_at_ms, stream, None)
}

/// [`encode_new`] with the event's personal part, already sealed.
pub(crate) fn encode_sealed(
    position: Position,
    e: &NewEvent,
    recorded_at_ms: u64,
    stream: Option<(&str, u64)>,
    personal: Option<(&str, &SealedPersonal)>,
) -> Result<Vec<u8>> {
    let body = Body {
        position,
        id: e.id.0,
        event_type: &e.event_type,
        tags: e.tags.iter().map(String::as_str).collect(),
        data: &e.data,
        correlation_id: e.metadata.correlation_id.as_deref(),
        causation_id: e.metadata.causation_id.as_deref(),
        extra: e
            .metadata
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        recorded_at_ms,
        stream,
    };
    // Room for every field, so the payload is never copied by a regrowth.
    let capacity = HEADER
        + 64
        + e.data.len()
        + e.event_type.len()
        + e.tags.iter().map(|t| t.len() + 2).sum::<usize>()
        + e.metadata.byte_len()
        + 4 * e.metadata.extra.len()
        + stream.map_or(0, |(s, _)| s.len());
    let mut out = Vec::with_capacity(capacity);
    let version = if personal.is_some() {
        FORMAT_V2
    } else {
        FORMAT_V1
    };
    out.extend_from_slice(&[version, 0, 0, 0, 0]);
    let mut out = postcard::to_extend(&body, out)
        .map_err(|err| Error::invalid(format!("cannot encode event: {err}")))?;
    if let Some(p) = personal {
        out = postcard::to_extend(&p, out)
            .map_err(|err| Error::invalid(format!("cannot encode event: {err}")))?;
    }
    let crc = crc32c::crc32c(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a stored event. `expected` is the position its key names.
pub fn decode(bytes: &[u8], expected: Position) -> Result<RecordedEvent> {
    let bad = |m: String| Error::corrupt(Some(expected), m);
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "event envelope is {} bytes, shorter than its header",
            bytes.len()
        )));
    }
    if bytes[0] != FORMAT_V1 && bytes[0] != FORMAT_V2 {
        return Err(bad(format!("unknown event envelope format {}", bytes[0])));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let actual = crc32c::crc32c(&bytes[HEADER..]);
    if stored != actual {
        return Err(bad(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    let mut body = BodyReader {
        rest: &bytes[HEADER..],
    };
    let mut event = body
        .event()
        .map_err(|e| bad(format!("event envelope does not decode: {e}")))?;
    let rest = body.rest;
    let (personal, rest) = if bytes[0] == FORMAT_V2 {
        let ((subject, sealed), rest): ((String, SealedPersonal), _) =
            postcard::take_from_bytes(rest)
                .map_err(|e| bad(format!("personal part does not decode: {e}")))?;
        (Some(PersonalData::sealed(subject, sealed)), rest)
    } else {
        (None, rest)
    };
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after the event envelope",
            rest.len()
        )));
    }
    if event.position != expected {
        return Err(bad(format!(
            "envelope says position {}, its key says {expected}",
            event.position
        )));
    }
    event.personal = personal;
    Ok(event)
}

/// Reads [`Body`]'s postcard encoding straight into a [`RecordedEvent`]'s
/// owned fields: each string and byte field is copied once from the
/// stored bytes, with no serde machinery in between (the read paths'
/// hottest loop). Postcard's rules: integers are LEB128 varints (at most
/// 10 bytes for a `u64`, 19 for a `u128`, the last byte within the type's
/// width), strings and byte strings a varint length then the bytes, a
/// sequence a varint count then its items, an option a `0` or a `1`
/// then the value. Every length is checked against the bytes left, so a
/// damaged envelope is an error and never a large allocation.
struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    fn event(&mut self) -> std::result::Result<RecordedEvent, &'static str> {
        let position = self.u64()?;
        let id = self.u128()?;
        let event_type = self.string()?;
        let n = self.len()?;
        let mut tags = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            tags.push(self.string()?);
        }
        let data = self.bytes()?.to_vec();
        let correlation_id = self.option(Self::string)?;
        let causation_id = self.option(Self::string)?;
        let mut extra = std::collections::BTreeMap::new();
        for _ in 0..self.len()? {
            let k = self.string()?;
            extra.insert(k, self.string()?);
        }
        let recorded_at_ms = self.u64()?;
        let stream = self.option(|r| {
            let stream_id = r.string()?;
            Ok(StreamRef {
                stream_id,
                version: r.u64()?,
            })
        })?;
        Ok(RecordedEvent {
            position,
            id: Ulid(id),
            event_type,
            tags,
            data,
            metadata: Metadata {
                correlation_id,
                causation_id,
                extra,
            },
            recorded_at_ms,
            stream,
            personal: None,
        })
    }

    /// A varint of at most `max` bytes whose last byte is at most `last`.
    fn varint(&mut self, max: usize, last: u8) -> std::result::Result<u128, &'static str> {
        let mut out = 0u128;
        for i in 0..max {
            let (&b, rest) = self.rest.split_first().ok_or(END)?;
            self.rest = rest;
            out |= u128::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return if i == max - 1 && b > last {
                    Err(BAD_VARINT)
                } else {
                    Ok(out)
                };
            }
        }
        Err(BAD_VARINT)
    }

    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        // Within 64 bits by the last byte's bound.
        self.varint(10, 1).map(|v| v as u64)
    }

    fn u128(&mut self) -> std::result::Result<u128, &'static str> {
        self.varint(19, 3)
    }

    fn len(&mut self) -> std::result::Result<usize, &'static str> {
        usize::try_from(self.u64()?).map_err(|_| END)
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], &'static str> {
        let n = self.len()?;
        if n > self.rest.len() {
            return Err(END);
        }
        let (out, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(out)
    }

    fn string(&mut self) -> std::result::Result<String, &'static str> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "a string is not UTF-8")
    }

    fn option<T>(
        &mut self,
        some: impl FnOnce(&mut Self) -> std::result::Result<T, &'static str>,
    ) -> std::result::Result<Option<T>, &'static str> {
        let (&tag, rest) = self.rest.split_first().ok_or(END)?;
        self.rest = rest;
        match tag {
            0 => Ok(None),
            1 => some(self).map(Some),
            _ => Err("an option tag is neither 0 nor 1"),
        }
    }
}

const END: &str = "it ends before its last field";
const BAD_VARINT: &str = "an integer is not a valid varint";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RecordedEvent {
        RecordedEvent {
            position: 42,
            id: Ulid(7),
            event_type: "CourseDefined".into(),
            tags: vec!["course:c1".into(), "term:2026".into()],
            data: b"{\"capacity\":10}".to_vec(),
            metadata: Metadata::new().correlation_id("corr").with("user", "ann"),
            recorded_at_ms: 1_700_000_000_000,
            stream: Some(StreamRef {
                stream_id: "course-c1".into(),
                version: 3,
            }),
            personal: None,
        }
    }

    #[test]
    fn roundtrip() {
        let e = sample();
        assert_eq!(decode(&encode(&e).unwrap(), 42).unwrap(), e);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let err = decode(&b, 42).unwrap_err();
                assert!(
                    matches!(
                        err,
                        Error::Corrupt {
                            position: Some(42),
                            ..
                        }
                    ),
                    "byte {i} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_is_detected() {
        assert!(matches!(
            decode(&encode(&sample()).unwrap(), 43),
            Err(Error::Corrupt {
                position: Some(43),
                ..
            })
        ));
    }

    /// What the serde reference ([`OwnedBody`]) makes of a body: the
    /// event, or `None` where it refuses the bytes.
    fn reference(body: &[u8]) -> Option<(RecordedEvent, usize)> {
        let (b, rest): (OwnedBody, _) = postcard::take_from_bytes(body).ok()?;
        let e = RecordedEvent {
            position: b.position,
            id: Ulid(b.id),
            event_type: b.event_type,
            tags: b.tags,
            data: b.data,
            metadata: Metadata {
                correlation_id: b.correlation_id,
                causation_id: b.causation_id,
                extra: b.extra.into_iter().collect(),
            },
            recorded_at_ms: b.recorded_at_ms,
            stream: b
                .stream
                .map(|(stream_id, version)| StreamRef { stream_id, version }),
            personal: None,
        };
        Some((e, rest.len()))
    }

    fn read(body: &[u8]) -> Option<(RecordedEvent, usize)> {
        let mut r = BodyReader { rest: body };
        let e = r.event().ok()?;
        Some((e, r.rest.len()))
    }

    fn arb_event() -> impl Strategy<Value = RecordedEvent> {
        let text = "[a-z:é😀]{0,12}";
        (
            (any::<u64>(), any::<u128>(), text),
            proptest::collection::vec(text, 0..4),
            proptest::collection::vec(any::<u8>(), 0..300),
            (proptest::option::of(text), proptest::option::of(text)),
            proptest::collection::btree_map(text, text, 0..3),
            any::<u64>(),
            proptest::option::of((text, any::<u64>())),
        )
            .prop_map(
                |((position, id, event_type), tags, data, (corr, cause), extra, at, stream)| {
                    RecordedEvent {
                        position,
                        id: Ulid(id),
                        event_type,
                        tags,
                        data,
                        metadata: Metadata {
                            correlation_id: corr,
                            causation_id: cause,
                            extra,
                        },
                        recorded_at_ms: at,
                        stream: stream.map(|(stream_id, version)| StreamRef { stream_id, version }),
                        personal: None,
                    }
                },
            )
    }

    proptest! {
        /// The reader and the serde reference agree on every valid body.
        #[test]
        fn reader_decodes_what_was_encoded(e in arb_event()) {
            let bytes = encode(&e).unwrap();
            prop_assert_eq!(read(&bytes[HEADER..]), reference(&bytes[HEADER..]));
            prop_assert_eq!(decode(&bytes, e.position).unwrap(), e);
        }

        /// ... and on damaged ones: both refuse, or both read the same
        /// event and leave the same bytes.
        #[test]
        fn reader_agrees_with_serde_on_damage(
            e in arb_event(),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes = encode(&e).unwrap();
            let mut body = bytes[HEADER..].to_vec();
            for (i, b) in flips {
                let i = i.index(body.len());
                body[i] = b;
            }
            prop_assert_eq!(read(&body), reference(&body));
            let short = &body[..cut.index(body.len() + 1)];
            prop_assert_eq!(read(short), reference(short));
        }

        #[test]
        fn arbitrary_bodies_agree_with_serde(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(read(&b), reference(&b));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b, 1);
        }

        #[test]
        fn arbitrary_body_with_valid_crc_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v = vec![FORMAT_V1];
            v.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
            v.extend_from_slice(&b);
            let _ = decode(&v, 1);
        }
    }
}
