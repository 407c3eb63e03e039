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
use serde::{Deserialize, Serialize};
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
/// allocation per field, no intermediate borrowed vectors).
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
    let (body, rest): (OwnedBody, _) = postcard::take_from_bytes(&bytes[HEADER..])
        .map_err(|e| bad(format!("event envelope does not decode: {e}")))?;
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
    if body.position != expected {
        return Err(bad(format!(
            "envelope says position {}, its key says {expected}",
            body.position
        )));
    }
    Ok(RecordedEvent {
        position: body.position,
        id: Ulid(body.id),
        event_type: body.event_type,
        tags: body.tags,
        data: body.data,
        metadata: Metadata {
            correlation_id: body.correlation_id,
            causation_id: body.causation_id,
            extra: body.extra.into_iter().collect(),
        },
        recorded_at_ms: body.recorded_at_ms,
        stream: body
            .stream
            .map(|(stream_id, version)| StreamRef { stream_id, version }),
        personal,
    })
}

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

    proptest! {
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
