//! The lines of an export file besides events: header, subject keys,
//! trailer; and the writer that puts them in order.

use super::line::{Digest, EventLine};
use crate::{Error, EventStore, Position, RecordedEvent, Result, StreamVersion, WrappedSubjectKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;

/// Export format version written in the header. Version 1 (no personal
/// parts, no subject keys) is still read.
pub const FORMAT: u32 = 2;
/// Oldest format version read.
pub const OLDEST_FORMAT: u32 = 1;

/// First line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Format version ([`FORMAT`]).
    pub eskv_export: u32,
    /// The source's head: no event lies beyond it.
    pub head: u64,
    /// The source's registered event types.
    pub types: Vec<String>,
    /// Whether the source was in strict mode.
    pub strict: bool,
    /// For an archive (`eskv archive`): what it holds, with its bound. An
    /// archive carries no subject keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archived>,
}

impl Header {
    /// The header describing `store` now.
    pub async fn of(store: &EventStore) -> Result<Header> {
        Ok(Header {
            eskv_export: FORMAT,
            head: store.head().await?,
            types: store.event_types().await?,
            strict: store.strict_types().await?,
            archive: None,
        })
    }

    /// Refuses a format this version does not read.
    pub fn check_format(&self) -> Result<()> {
        if !(OLDEST_FORMAT..=FORMAT).contains(&self.eskv_export) {
            return Err(Error::invalid(format!(
                "export format {} is not supported (this eskv reads formats {OLDEST_FORMAT} to {FORMAT})",
                self.eskv_export
            )));
        }
        Ok(())
    }
}

/// The scope of an archive with its bound fixed, as its header records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Archived {
    /// A stream's versions below `before_version`.
    Stream {
        /// The stream.
        stream: String,
        /// The first version not archived.
        before_version: StreamVersion,
    },
    /// Every event below `before_position`.
    Log {
        /// The first position not archived.
        before_position: Position,
    },
}

/// Last line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    /// Counts and checksums.
    pub eskv_export_end: End,
}

/// What the trailer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Events written.
    pub events: u64,
    /// crc32c of the event lines (see [`Digest`]), 8 hex digits.
    pub crc32c: String,
    /// Subject key lines written (format 2; absent: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subject_keys: u64,
    /// crc32c of the subject key lines, when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_crc32c: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl End {
    /// The trailer for these digests.
    pub fn of(events: &Digest, keys: &Digest) -> End {
        End {
            events: events.events,
            crc32c: events.hex(),
            subject_keys: keys.events,
            keys_crc32c: (keys.events > 0).then(|| keys.hex()),
        }
    }

    /// Checks the trailer against what was read: [`Error::InvalidInput`]
    /// naming both sides when the file is damaged.
    pub fn check(&self, events: &Digest, keys: &Digest) -> Result<()> {
        let found = End::of(events, keys);
        if *self != found {
            return Err(Error::invalid(format!(
                "the export file is damaged: its trailer says {} events with crc32c {} and {} subject keys, the lines read give {} events with crc32c {} and {} subject keys{}",
                self.events,
                self.crc32c,
                self.subject_keys,
                found.events,
                found.crc32c,
                found.subject_keys,
                if self.keys_crc32c != found.keys_crc32c && self.subject_keys == found.subject_keys {
                    " (the key lines' checksum differs)"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }
}

/// A subject key line: `{"eskv_subject_key":{"subject":..,"generation":..,
/// "nonce":..,"key":..}}` (base64; the key is wrapped under the store
/// key), or `{..,"forgotten":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLine {
    /// The record.
    pub eskv_subject_key: KeyFields,
}

/// The fields of a [`KeyLine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    /// The data subject.
    pub subject: String,
    /// The key's generation.
    pub generation: u64,
    /// The wrapping's nonce, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The wrapped key (ciphertext and tag), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// True when the subject was forgotten (no key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forgotten: bool,
}

impl KeyLine {
    /// The line of a key record.
    pub fn of(k: &WrappedSubjectKey) -> KeyLine {
        let (nonce, key) = match k.wrapped() {
            Some((n, c)) => (Some(B64.encode(n)), Some(B64.encode(c))),
            None => (None, None),
        };
        KeyLine {
            eskv_subject_key: KeyFields {
                subject: k.subject().to_owned(),
                generation: k.generation(),
                nonce,
                key,
                forgotten: k.is_forgotten(),
            },
        }
    }

    /// The key record of the line.
    pub fn to_key(&self) -> std::result::Result<WrappedSubjectKey, String> {
        let f = &self.eskv_subject_key;
        match (&f.nonce, &f.key, f.forgotten) {
            (None, None, true) => Ok(WrappedSubjectKey::forgotten(&f.subject, f.generation)),
            (Some(n), Some(k), false) => {
                let nonce: [u8; 24] = B64
                    .decode(n)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or("the subject key's nonce is not 24 bytes in base64")?;
                let key = B64
                    .decode(k)
                    .map_err(|e| format!("the subject key is not valid base64: {e}"))?;
                Ok(WrappedSubjectKey::new(&f.subject, f.generation, nonce, key))
            }
            _ => Err(format!(
                "the key line of subject '{}' needs \"nonce\" and \"key\", or \"forgotten\": true",
                f.subject
            )),
        }
    }

    /// The canonical text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key line always serializes")
    }
}

/// One line of an export file.
#[derive(Debug)]
pub enum ExportLine {
    /// The header.
    Header(Header),
    /// A subject key.
    Key(KeyLine),
    /// An event.
    Event(Box<EventLine>),
    /// The trailer.
    Trailer(End),
}

impl ExportLine {
    /// Parses one line.
    pub fn parse(line: &str) -> std::result::Result<ExportLine, String> {
        let t = line.trim_start();
        if t.starts_with("{\"eskv_export\"") {
            serde_json::from_str(t)
                .map(ExportLine::Header)
                .map_err(|e| format!("bad export header: {e}"))
        } else if t.starts_with("{\"eskv_export_end\"") {
            serde_json::from_str::<Trailer>(t)
                .map(|t| ExportLine::Trailer(t.eskv_export_end))
                .map_err(|e| format!("bad export trailer: {e}"))
        } else if t.starts_with("{\"eskv_subject_key\"") {
            serde_json::from_str(t)
                .map(ExportLine::Key)
                .map_err(|e| format!("bad subject key line: {e}"))
        } else {
            EventLine::parse(t).map(|e| ExportLine::Event(Box::new(e)))
        }
    }
}

/// Writes an export: the header, then the events, each subject's key line
/// (when keys are carried) before the first event with a personal part of
/// that subject, then the trailer. Events must be read with sealed
/// personal parts ([`EventStore::sealed_reads`]); an opened part is
/// refused, so no personal data is ever written in clear.
pub struct ExportWriter<W: Write> {
    w: W,
    /// Where subject keys come from; `None`: an archive, keys stay in the
    /// store.
    keys: Option<EventStore>,
    written: HashSet<String>,
    events: Digest,
    key_digest: Digest,
}

impl<W: Write> std::fmt::Debug for ExportWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportWriter")
            .field("events", &self.events.events)
            .field("subject_keys", &self.key_digest.events)
            .finish_non_exhaustive()
    }
}

fn io(e: std::io::Error) -> Error {
    Error::backend("export file", e)
}

impl<W: Write> ExportWriter<W> {
    /// Writes `header` to `w`. With `keys`, subject keys are read from
    /// that store and carried (a backup); without, they are not (an
    /// archive).
    pub fn new(mut w: W, header: &Header, keys: Option<EventStore>) -> Result<Self> {
        let h = serde_json::to_string(header).map_err(|e| Error::invalid(e.to_string()))?;
        writeln!(w, "{h}").map_err(io)?;
        Ok(ExportWriter {
            w,
            keys,
            written: HashSet::new(),
            events: Digest::default(),
            key_digest: Digest::default(),
        })
    }

    /// Writes a page of events (and the key lines they need first).
    pub async fn events(&mut self, page: &[RecordedEvent]) -> Result<()> {
        let mut new: Vec<&str> = Vec::new();
        for e in page {
            if let Some(p) = &e.personal {
                if p.bytes().is_some() {
                    return Err(Error::invalid(format!(
                        "the event at position {} was read with its personal part opened; an export reads through EventStore::sealed_reads, so personal data is never written in clear",
                        e.position
                    )));
                }
                if !self.written.contains(p.subject()) && !new.contains(&p.subject()) {
                    new.push(p.subject());
                }
            }
        }
        if let Some(store) = &self.keys {
            for k in store.subject_keys(&new).await?.into_iter().flatten() {
                let line = KeyLine::of(&k).to_json();
                self.key_digest.add(&line);
                writeln!(self.w, "{line}").map_err(io)?;
            }
        }
        self.written.extend(new.into_iter().map(str::to_owned));
        for e in page {
            let line = EventLine::from_recorded(e).to_json();
            self.events.add(&line);
            writeln!(self.w, "{line}").map_err(io)?;
        }
        Ok(())
    }

    /// The digest of the event lines so far.
    pub fn digest(&self) -> Digest {
        self.events
    }

    /// Writes the trailer and flushes; returns the writer and the digest
    /// of the event lines.
    pub fn finish(mut self) -> Result<(W, Digest)> {
        let end = Trailer {
            eskv_export_end: End::of(&self.events, &self.key_digest),
        };
        let t = serde_json::to_string(&end).map_err(|e| Error::invalid(e.to_string()))?;
        writeln!(self.w, "{t}").map_err(io)?;
        self.w.flush().map_err(io)?;
        Ok((self.w, self.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_round_trip_wrapped_or_forgotten() {
        let live = WrappedSubjectKey::new("user-1", 2, [9; 24], vec![1; 48]);
        let line = KeyLine::of(&live).to_json();
        assert!(line.starts_with(r#"{"eskv_subject_key":{"subject":"user-1","generation":2,"#));
        let ExportLine::Key(k) = ExportLine::parse(&line).unwrap() else {
            panic!("{line}")
        };
        assert_eq!(k.to_key().unwrap(), live);
        let gone = WrappedSubjectKey::forgotten("user-2", 5);
        let line = KeyLine::of(&gone).to_json();
        assert_eq!(
            line,
            r#"{"eskv_subject_key":{"subject":"user-2","generation":5,"forgotten":true}}"#
        );
        let ExportLine::Key(k) = ExportLine::parse(&line).unwrap() else {
            panic!("{line}")
        };
        assert_eq!(k.to_key().unwrap(), gone);
        let ExportLine::Key(half) = ExportLine::parse(
            r#"{"eskv_subject_key":{"subject":"u","generation":1,"nonce":"AAAA"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(half.to_key().unwrap_err().contains("needs"));
    }

    #[test]
    fn format_1_files_still_read() {
        let ExportLine::Header(h) =
            ExportLine::parse(r#"{"eskv_export":1,"head":2,"types":[],"strict":false}"#).unwrap()
        else {
            panic!()
        };
        h.check_format().unwrap();
        let ExportLine::Trailer(end) =
            ExportLine::parse(r#"{"eskv_export_end":{"events":0,"crc32c":"00000000"}}"#).unwrap()
        else {
            panic!()
        };
        end.check(&Digest::default(), &Digest::default()).unwrap();
        let newer = Header {
            eskv_export: FORMAT + 1,
            ..h
        };
        assert!(newer
            .check_format()
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }

    #[test]
    fn trailer_covers_key_lines() {
        let mut events = Digest::default();
        events.add("e");
        let mut keys = Digest::default();
        keys.add("k");
        let end = End::of(&events, &keys);
        end.check(&events, &keys).unwrap();
        let mut other = Digest::default();
        other.add("K");
        let err = end.check(&events, &other).unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("key lines"),
            "{err}"
        );
        assert!(end.check(&events, &Digest::default()).is_err());
    }
}
