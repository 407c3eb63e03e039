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
//! | 0x11 | `id` (ulid)                 | [`IdEntry`]: position, append extent, content digest |
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
///
/// History: `eskv-events/1` had 24-byte id entries without a content
/// digest; `eskv-events/2` adds the digest (see [`IdEntry`]). A store of
/// another format is refused at open with [`Error::IncompatibleFormat`].
pub const FORMAT: &[u8] = b"eskv-events/2";

/// The prefix every event-layout format marker starts with; the rest is
/// the format's number.
pub const FORMAT_PREFIX: &str = "eskv-events/";

/// The format number of a marker (`eskv-events/<n>`), or `None` when the
/// marker is not one of eskv's.
pub fn format_number(marker: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(marker).ok()?;
    let n = s.strip_prefix(FORMAT_PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

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
    // Start after `after` only when that lies inside the prefix's range:
    // an `after` below the prefix must not pull in other streams.
    let start = match after {
        Some(a) if stream_key(a) >= p => Bound::Excluded(stream_key(a)),
        _ => Bound::Included(p),
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

/// Prefix of every subscription-state key of one kind (checkpoints,
/// leases, dead letters, projections, snapshots).
pub fn subscription_kind_prefix(kind: &str) -> Vec<u8> {
    KeyBuilder::with_raw(&[SUBSCRIPTIONS]).str(kind).finish()
}

// ---------------------------------------------------------------------------
// Whole-table ranges and strict parsers, for the integrity checker
// (`crate::verify`) and the fuzz targets. Each parser checks the table tag
// and rejects trailing bytes; on any damage it returns `Error::Corrupt`.
// ---------------------------------------------------------------------------

/// The name of the table whose tag byte is `tag`, or `None` for a tag the
/// layout does not use.
pub fn table_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        META => "meta",
        HEAD => "head",
        LOG => "log",
        ID => "id",
        STREAM => "stream",
        STREAM_EV => "stream_ev",
        CATEGORY => "category",
        TYPE => "type",
        TAG => "tag",
        REGISTRY => "registry",
        SUBSCRIPTIONS => "sub",
        _ => return None,
    })
}

/// Every tag byte the layout uses, ascending.
pub fn table_tags() -> [u8; 11] {
    [
        META,
        HEAD,
        LOG,
        ID,
        STREAM,
        STREAM_EV,
        CATEGORY,
        TYPE,
        TAG,
        REGISTRY,
        SUBSCRIPTIONS,
    ]
}

/// Every key of the table with tag byte `tag`.
pub fn table_range(tag: u8) -> KeyRange {
    KeyRange::prefix(&[tag])
}

/// Every meta key (format marker, flags).
pub fn meta_range() -> KeyRange {
    table_range(META)
}

/// Every log entry.
pub fn log_table_range() -> KeyRange {
    table_range(LOG)
}

/// Every idempotency entry.
pub fn id_range() -> KeyRange {
    table_range(ID)
}

/// Every stream metadata entry.
pub fn stream_meta_range() -> KeyRange {
    table_range(STREAM)
}

/// Every stream index entry, ordered by stream id, then version.
pub fn stream_event_table_range() -> KeyRange {
    table_range(STREAM_EV)
}

/// Every category index entry.
pub fn category_range() -> KeyRange {
    table_range(CATEGORY)
}

/// Every type index entry.
pub fn type_range() -> KeyRange {
    table_range(TYPE)
}

/// Every tag index entry.
pub fn tag_range() -> KeyRange {
    table_range(TAG)
}

/// Every subscription and projection key.
pub fn subscription_range() -> KeyRange {
    table_range(SUBSCRIPTIONS)
}

fn strict_reader<'a>(key: &'a [u8], tag: u8, what: &str) -> Result<KeyReader<'a>> {
    if key.first() != Some(&tag) {
        return Err(Error::corrupt(None, format!("not a {what} key")));
    }
    let mut r = KeyReader::new(key);
    r.skip_raw(1)?;
    Ok(r)
}

fn finished<T>(r: &KeyReader<'_>, v: T, what: &str) -> Result<T> {
    if r.is_empty() {
        Ok(v)
    } else {
        Err(Error::corrupt(
            None,
            format!("trailing bytes after a {what} key"),
        ))
    }
}

/// Parses a log key strictly (tag, one integer, nothing after it).
pub fn parse_log_key_strict(key: &[u8]) -> Result<Position> {
    let mut r = strict_reader(key, LOG, "log")?;
    let p = r.u64()?;
    finished(&r, p, "log")
}

/// Parses an idempotency key back to its event id.
pub fn parse_id_key(key: &[u8]) -> Result<Ulid> {
    let mut r = strict_reader(key, ID, "id")?;
    let id = r.ulid()?;
    finished(&r, id, "id")
}

/// Parses a stream metadata key strictly.
pub fn parse_stream_meta_key(key: &[u8]) -> Result<String> {
    let mut r = strict_reader(key, STREAM, "stream")?;
    let s = r.str()?;
    finished(&r, s, "stream")
}

/// Parses a stream index key to its stream id and version.
pub fn parse_stream_event_key(key: &[u8]) -> Result<(String, u64)> {
    let mut r = strict_reader(key, STREAM_EV, "stream index")?;
    let s = r.str()?;
    let v = r.u64()?;
    finished(&r, (s, v), "stream index")
}

/// Parses a category, type or tag index key (the table is its first byte)
/// to its string element and position.
pub fn parse_positional_key(key: &[u8]) -> Result<(String, Position)> {
    let tag = match key.first() {
        Some(&t @ (CATEGORY | TYPE | TAG)) => t,
        _ => {
            return Err(Error::corrupt(
                None,
                "not a category, type or tag index key",
            ))
        }
    };
    let mut r = strict_reader(key, tag, "index")?;
    let s = r.str()?;
    let p = r.u64()?;
    finished(&r, (s, p), "index")
}

/// Parses a meta key to its name.
pub fn parse_meta_key(key: &[u8]) -> Result<String> {
    let mut r = strict_reader(key, META, "meta")?;
    let s = r.str()?;
    finished(&r, s, "meta")
}

/// Parses a registry key strictly.
pub fn parse_registry_key_strict(key: &[u8]) -> Result<String> {
    let mut r = strict_reader(key, REGISTRY, "registry")?;
    let s = r.str()?;
    finished(&r, s, "registry")
}

#[cfg(test)]
mod parser_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parsers_roundtrip() {
        let id = Ulid(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_log_key_strict(&log_key(77)).unwrap(), 77);
        assert_eq!(parse_id_key(&id_key(id)).unwrap(), id);
        assert_eq!(
            parse_stream_meta_key(&stream_key("a\0-\u{ff}")).unwrap(),
            "a\0-\u{ff}"
        );
        assert_eq!(
            parse_stream_event_key(&stream_event_key("s\0", 9)).unwrap(),
            ("s\0".to_string(), 9)
        );
        for k in [type_key("T", 3), tag_key("T", 3), category_key("T", 3)] {
            assert_eq!(parse_positional_key(&k).unwrap(), ("T".to_string(), 3));
        }
        assert_eq!(parse_meta_key(&format_key()).unwrap(), "format");
        assert_eq!(parse_registry_key_strict(&registry_key("X")).unwrap(), "X");
        for tag in table_tags() {
            assert!(table_name(tag).is_some());
            assert!(table_range(tag).contains(&[tag, 1, 2]));
        }
        assert_eq!(table_name(0x99), None);
    }

    #[test]
    fn parsers_reject_wrong_table_and_trailing_bytes() {
        let mut k = log_key(5);
        k.push(0x14);
        assert!(matches!(
            parse_log_key_strict(&k),
            Err(Error::Corrupt { .. })
        ));
        assert!(parse_id_key(&log_key(5)).is_err());
        assert!(parse_stream_event_key(&stream_key("s")).is_err());
        assert!(parse_positional_key(&stream_event_key("s", 1)).is_err());
        assert!(parse_stream_meta_key(&[]).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(
            tag in prop_oneof![Just(LOG), Just(ID), Just(STREAM), Just(STREAM_EV), Just(CATEGORY), Just(TYPE), Just(TAG), Just(META), Just(REGISTRY), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut key = vec![tag];
            key.extend_from_slice(&rest);
            // Whatever a strict parser accepts is the canonical key of
            // what it returns, so two different keys never parse the same.
            if let Ok(p) = parse_log_key_strict(&key) {
                prop_assert_eq!(log_key(p), key.clone());
            }
            if let Ok(id) = parse_id_key(&key) {
                prop_assert_eq!(id_key(id), key.clone());
            }
            if let Ok(s) = parse_stream_meta_key(&key) {
                prop_assert_eq!(stream_key(&s), key.clone());
            }
            if let Ok((s, v)) = parse_stream_event_key(&key) {
                prop_assert_eq!(stream_event_key(&s, v), key.clone());
            }
            if let Ok((s, p)) = parse_positional_key(&key) {
                let rebuilt = match tag {
                    TYPE => type_key(&s, p),
                    TAG => tag_key(&s, p),
                    _ => category_key(&s, p),
                };
                prop_assert_eq!(rebuilt, key.clone());
            }
            let _ = parse_log_key(&key);
            let _ = parse_stream_key(&key);
            let _ = parse_meta_key(&key);
            let _ = parse_registry_key(&key);
            let _ = parse_registry_key_strict(&key);
            let _ = Index::Tag("x").parse_position(&key);
            let _ = parse_u64(&rest, "value");
            let _ = StreamMeta::decode(&rest);
            let _ = parse_tag_entry(&rest);
        }
    }
}

/// An idempotency entry: where an event is, the extent of the append that
/// wrote it, so a retry is recognised only when it repeats the whole
/// append, and a digest of the event's content, so a retry is recognised
/// only when it repeats the same events (not just the same ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdEntry {
    /// The event's position.
    pub position: Position,
    /// First position of the append that wrote it.
    pub append_first: Position,
    /// Last position of the append that wrote it.
    pub append_last: Position,
    /// [`content_digest`] of the event's tags, data and metadata.
    pub digest: u32,
}

/// Length of an encoded [`IdEntry`].
pub const ID_ENTRY_LEN: usize = 28;

impl IdEntry {
    /// Encodes as 28 bytes: position, append start and end (u64 BE each),
    /// digest (u32 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ID_ENTRY_LEN);
        v.extend_from_slice(&self.position.to_be_bytes());
        v.extend_from_slice(&self.append_first.to_be_bytes());
        v.extend_from_slice(&self.append_last.to_be_bytes());
        v.extend_from_slice(&self.digest.to_be_bytes());
        v
    }

    /// Decodes 28 bytes.
    pub fn decode(v: &[u8]) -> Result<Self> {
        if v.len() != ID_ENTRY_LEN {
            return Err(Error::corrupt(
                None,
                format!(
                    "id index entry is {} bytes, expected {ID_ENTRY_LEN}",
                    v.len()
                ),
            ));
        }
        let mut d = [0u8; 4];
        d.copy_from_slice(&v[24..]);
        let e = IdEntry {
            position: parse_u64(&v[..8], "id entry position")?,
            append_first: parse_u64(&v[8..16], "id entry append start")?,
            append_last: parse_u64(&v[16..24], "id entry append end")?,
            digest: u32::from_be_bytes(d),
        };
        if !(e.append_first <= e.position && e.position <= e.append_last) {
            return Err(Error::corrupt(
                Some(e.position),
                format!(
                    "id index entry's append extent {}..={} does not contain its position",
                    e.append_first, e.append_last
                ),
            ));
        }
        Ok(e)
    }
}

/// The digest of an event's content kept in its [`IdEntry`]: crc32c over
/// the postcard encoding of `(tags, metadata)`, then the data's length (u64
/// LE) and the data. Both parts are self-delimiting, so moving bytes
/// between tags, metadata and data changes the input. Type and stream are
/// not included: the replay check reads them from the log, and they are
/// part of the key layout anyway.
///
/// crc32c (already used by the envelope, hardware-accelerated) rather than
/// a cryptographic hash: it guards against a client re-using an id by
/// mistake, where a 2^-32 chance of a miss is ample, not against an
/// adversary, who could append anything under a new id anyway; and the
/// append path also compares the stored event itself, so a collision
/// cannot turn other content into a replay there.
pub fn content_digest(tags: &[String], data: &[u8], metadata: &crate::event::Metadata) -> u32 {
    // Tags and metadata are small; the payload is hashed in place.
    let head = postcard::to_allocvec(&(tags, metadata)).unwrap_or_default();
    let mut crc = crc32c::crc32c(&head);
    crc = crc32c::crc32c_append(crc, &(data.len() as u64).to_le_bytes());
    crc32c::crc32c_append(crc, data)
}

/// Encodes a projection checkpoint: read-model generation and position.
pub fn projection_checkpoint_value(generation: u64, position: Position) -> Vec<u8> {
    let mut v = generation.to_be_bytes().to_vec();
    v.extend_from_slice(&position.to_be_bytes());
    v
}

/// Decodes a projection checkpoint into `(generation, position)`.
pub fn parse_projection_checkpoint(v: &[u8]) -> Result<(u64, Position)> {
    if v.len() != 16 {
        return Err(Error::corrupt(
            None,
            format!("projection checkpoint is {} bytes, expected 16", v.len()),
        ));
    }
    Ok((
        parse_u64(&v[..8], "projection generation")?,
        parse_u64(&v[8..], "projection checkpoint")?,
    ))
}
