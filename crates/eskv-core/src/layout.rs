//! The event store's key layout: every key the event layer reads or writes
//! is built here, and nowhere else.
//!
//! Each key is a one-byte table tag followed by a packed tuple
//! (see [`crate::tuple`]). All keys live under the store's namespace prefix
//! when the store is [`Namespaced`](crate::Namespaced).
//!
//! | tag  | key                         | value                          |
//! |------|-----------------------------|--------------------------------|
//! | 0x01 | `meta` (str name)           | format marker, config flags    |
//! | 0x02 | `head`                      | last position, u64 BE          |
//! | 0x10 | `log` (u64 position)        | event envelope                 |
//! | 0x11 | `id` (ulid)                 | position, u64 BE               |
//! | 0x20 | `stream` (str id)           | version + last position, BE    |
//! | 0x21 | `stream_ev` (str id, u64 v) | position, u64 BE               |
//! | 0x22 | `category` (str, u64 pos)   | empty                          |
//! | 0x30 | `type` (str type, u64 pos)  | empty                          |
//! | 0x31 | `tag` (str tag, u64 pos)    | postcard (type, tags)          |
//! | 0x40 | `registry` (str type)       | empty                          |
//! | 0x50 | `sub` (reserved for subscriptions and projections)          ||

use crate::error::{Error, Result};
use crate::event::Position;
use crate::kv::KeyRange;
use crate::tuple::{prefix_successor, KeyBuilder, KeyReader};
use std::ops::Bound;
use ulid::Ulid;

const META: u8 = 0x01;
const HEAD: u8 = 0x02;
const LOG: u8 = 0x10;
const ID: u8 = 0x11;
const STREAM: u8 = 0x20;
const STREAM_EV: u8 = 0x21;
const CATEGORY: u8 = 0x22;
const TYPE: u8 = 0x30;
const TAG: u8 = 0x31;
const REGISTRY: u8 = 0x40;
/// Tag byte reserved for subscription and projection state.
pub const SUBSCRIPTIONS: u8 = 0x50;

/// The format marker key and its value.
pub fn format_key() -> Vec<u8> {
    KeyBuilder::with_raw(&[META]).str("format").finish()
}
/// Value of the format marker for this layout.
pub const FORMAT: &[u8] = b"eskv-events/1";

/// The strict-types flag.
pub fn strict_key() -> Vec<u8> {
    KeyBuilder::with_raw(&[META]).str("strict_types").finish()
}

/// The head key: the last assigned position. Every append reads and writes
/// it, which is what serializes appends (see `docs/DESIGN.md`).
pub fn head_key() -> Vec<u8> {
    vec![HEAD]
}

/// Log entry of `pos`.
pub fn log_key(pos: Position) -> Vec<u8> {
    KeyBuilder::with_raw(&[LOG]).u64(pos).finish()
}

/// Parses a log key.
pub fn parse_log_key(key: &[u8]) -> Result<Position> {
    let mut r = KeyReader::new(key);
    if key.first() != Some(&LOG) {
        return Err(Error::corrupt(None, "not a log key"));
    }
    r.skip_raw(1)?;
    r.u64()
}

/// Log positions in `[from, to]`.
pub fn log_range(from: Position, to: Position) -> KeyRange {
    KeyRange {
        start: Bound::Included(log_key(from)),
        end: Bound::Included(log_key(to)),
    }
}

/// Idempotency entry of event `id`.
pub fn id_key(id: Ulid) -> Vec<u8> {
    KeyBuilder::with_raw(&[ID]).ulid(id).finish()
}

/// Stream metadata of `stream`.
pub fn stream_key(stream: &str) -> Vec<u8> {
    KeyBuilder::with_raw(&[STREAM]).str(stream).finish()
}

/// All stream metadata keys whose id starts with `prefix`, optionally only
/// those after stream id `after`.
pub fn stream_list_range(prefix: &str, after: Option<&str>) -> KeyRange {
    let p = KeyBuilder::with_raw(&[STREAM]).str_prefix(prefix).finish();
    let end = prefix_successor(&p).map_or(Bound::Unbounded, Bound::Excluded);
    let start = match after {
        Some(a) => Bound::Excluded(stream_key(a)),
        None => Bound::Included(p),
    };
    KeyRange { start, end }
}

/// Parses a stream metadata key back to its id.
pub fn parse_stream_key(key: &[u8]) -> Result<String> {
    let mut r = KeyReader::new(key);
    r.skip_raw(1)?;
    r.str()
}

/// Stream index entry: version `v` of `stream`.
pub fn stream_event_key(stream: &str, v: u64) -> Vec<u8> {
    KeyBuilder::with_raw(&[STREAM_EV])
        .str(stream)
        .u64(v)
        .finish()
}

/// Stream index entries of `stream` with versions in `[from, to]`.
pub fn stream_event_range(stream: &str, from: u64, to: u64) -> KeyRange {
    KeyRange {
        start: Bound::Included(stream_event_key(stream, from)),
        end: Bound::Included(stream_event_key(stream, to)),
    }
}

/// Category index entry.
pub fn category_key(category: &str, pos: Position) -> Vec<u8> {
    KeyBuilder::with_raw(&[CATEGORY])
        .str(category)
        .u64(pos)
        .finish()
}

/// Type index entry.
pub fn type_key(event_type: &str, pos: Position) -> Vec<u8> {
    KeyBuilder::with_raw(&[TYPE])
        .str(event_type)
        .u64(pos)
        .finish()
}

/// Tag index entry.
pub fn tag_key(tag: &str, pos: Position) -> Vec<u8> {
    KeyBuilder::with_raw(&[TAG]).str(tag).u64(pos).finish()
}

/// Which positional index to scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index<'a> {
    /// Every event of a type.
    Type(&'a str),
    /// Every event carrying a tag.
    Tag(&'a str),
    /// Every event of a stream category.
    Category(&'a str),
}

impl Index<'_> {
    /// The key of `pos` in this index.
    pub fn key(&self, pos: Position) -> Vec<u8> {
        match *self {
            Index::Type(t) => type_key(t, pos),
            Index::Tag(t) => tag_key(t, pos),
            Index::Category(c) => category_key(c, pos),
        }
    }

    /// Keys of positions in `[from, to]`.
    pub fn range(&self, from: Position, to: Position) -> KeyRange {
        KeyRange {
            start: Bound::Included(self.key(from)),
            end: Bound::Included(self.key(to)),
        }
    }

    /// The position an index key points at (its last element).
    pub fn parse_position(&self, key: &[u8]) -> Result<Position> {
        let mut r = KeyReader::new(key);
        r.skip_raw(1)?;
        r.str()?;
        r.u64()
    }
}

/// Event type registry entry.
pub fn registry_key(event_type: &str) -> Vec<u8> {
    KeyBuilder::with_raw(&[REGISTRY]).str(event_type).finish()
}

/// Every registry entry.
pub fn registry_range() -> KeyRange {
    KeyRange::prefix(&[REGISTRY])
}

/// Parses a registry key.
pub fn parse_registry_key(key: &[u8]) -> Result<String> {
    let mut r = KeyReader::new(key);
    r.skip_raw(1)?;
    r.str()
}

/// Encodes a u64 value.
pub fn u64_value(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Decodes a u64 value.
pub fn parse_u64(v: &[u8], what: &str) -> Result<u64> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| Error::corrupt(None, format!("{what} is {} bytes, expected 8", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// A stream's metadata: current version and the position of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMeta {
    /// Current version (count of events).
    pub version: u64,
    /// Position of the last event.
    pub last_position: Position,
}

impl StreamMeta {
    /// Encodes as 16 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.version.to_be_bytes().to_vec();
        v.extend_from_slice(&self.last_position.to_be_bytes());
        v
    }

    /// Decodes 16 bytes.
    pub fn decode(v: &[u8]) -> Result<Self> {
        if v.len() != 16 {
            return Err(Error::corrupt(
                None,
                format!("stream metadata is {} bytes, expected 16", v.len()),
            ));
        }
        Ok(StreamMeta {
            version: parse_u64(&v[..8], "stream version")?,
            last_position: parse_u64(&v[8..], "stream last position")?,
        })
    }
}

/// Value of a tag index entry: the event's type and all its tags, so a
/// query item can be matched from the index alone.
pub fn tag_entry_value(event_type: &str, tags: &[String]) -> Result<Vec<u8>> {
    postcard::to_allocvec(&(event_type, tags))
        .map_err(|e| Error::invalid(format!("cannot encode tag index entry: {e}")))
}

/// Decodes a tag index entry value.
pub fn parse_tag_entry(v: &[u8]) -> Result<(String, Vec<String>)> {
    postcard::from_bytes(v)
        .map_err(|e| Error::corrupt(None, format!("tag index entry does not decode: {e}")))
}

/// The category of a stream: its id up to the first `-`, or the whole id.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// Key prefix reserved for subscription state, followed by `sub` tuple.
pub fn subscription_key(kind: &str, name: &str) -> KeyBuilder {
    KeyBuilder::with_raw(&[SUBSCRIPTIONS]).str(kind).str(name)
}
