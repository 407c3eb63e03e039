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
//! | 0x12 | `removed` (u64 first)       | last position of a run removed by compaction, sealed |
//! | 0x20 | `stream` (str id)           | version + last position, BE    |
//! | 0x21 | `stream_ev` (str id, u64 v) | position, u64 BE               |
//! | 0x22 | `category` (str, u64 pos)   | empty                          |
//! | 0x23 | `stream_life` (str id)      | postcard retention, deletion, tombstone |
//! | 0x30 | `type` (str type, u64 pos)  | empty                          |
//! | 0x31 | `tag` (str tag, u64 pos)    | postcard (type, tags)          |
//! | 0x40 | `registry` (str type)       | empty                          |
//! | 0x50 | `sub` (family str, …): subscription state; see [`StateKey`] ||
//! | 0x60 | `subject` (str subject)     | postcard wrapped per-subject key (or its erasure) |
//!
//! The values of the index entries (`id`, `stream_ev`, `category`, `type`,
//! `tag`) are sealed: the value above is followed by a crc32c of the key and
//! that value ([`seal_index_value`]), and every read path checks it
//! ([`open_index_value`]) before using the entry. A flipped bit in the key
//! or the value of an entry that a read touches is therefore
//! [`Error::Corrupt`], never a wrong answer. An entry that vanished, or
//! whose key changed so that it left the range a read scans, is not seen by
//! that read; only the integrity checker ([`crate::verify`]), which walks
//! from every event to its entries, finds it.

use crate::error::{Error, Result};
use crate::event::{NewEvent, Position};
use crate::kv::KeyRange;
use crate::tuple::{prefix_successor, KeyBuilder, KeyReader};
use std::ops::Bound;
use ulid::Ulid;

const META: u8 = 0x01;
const HEAD: u8 = 0x02;
const LOG: u8 = 0x10;
const ID: u8 = 0x11;
const REMOVED: u8 = 0x12;
const STREAM: u8 = 0x20;
const STREAM_EV: u8 = 0x21;
const CATEGORY: u8 = 0x22;
const STREAM_LIFE: u8 = 0x23;
const TYPE: u8 = 0x30;
const TAG: u8 = 0x31;
const REGISTRY: u8 = 0x40;
/// Tag byte reserved for subscription and projection state.
pub const SUBSCRIPTIONS: u8 = 0x50;
const SUBJECT: u8 = 0x60;

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

/// The import-in-progress marker: set by [`EventStore::begin_import`]
/// before an import writes its first event, removed by
/// [`EventStore::finish_import`] after its last. Its value says what the
/// import expected (see [`ImportMarker`]); a store that still holds it
/// was left by an import that did not finish.
///
/// [`EventStore::begin_import`]: crate::EventStore::begin_import
/// [`EventStore::finish_import`]: crate::EventStore::finish_import
/// [`ImportMarker`]: crate::ImportMarker
pub fn import_key() -> Vec<u8> {
    KeyBuilder::with_raw(&[META])
        .str("import_in_progress")
        .finish()
}

/// The log's lifecycle record: how far the log was truncated (every
/// event below the position is released, with or without a stream) and
/// how far compaction has removed it; see `crate::lifecycle::LogLife`.
/// Absent in a store whose log was never truncated.
pub fn log_life_key() -> Vec<u8> {
    KeyBuilder::with_raw(&[META]).str("log_life").finish()
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
        r.skip_str()?;
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

/// Bytes [`seal_index_value`] adds to an index entry's value.
pub const SEAL_LEN: usize = 4;

/// The seal of an index entry: crc32c over the key's length (so no byte
/// can move between key and value unnoticed), the key, and the value body.
fn index_seal(key: &[u8], body: &[u8]) -> u32 {
    let len = (key.len() as u64).to_le_bytes();
    let crc = crc32c::crc32c(&len);
    let crc = crc32c::crc32c_append(crc, key);
    crc32c::crc32c_append(crc, body)
}

/// Seals the value `body` of the index entry at `key` (an `id`,
/// `stream_ev`, `category`, `type` or `tag` entry, without namespace
/// prefix): appends a crc32c of the key and the body, 4 bytes LE.
pub fn seal_index_value(key: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let crc = index_seal(key, &body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// Checks the seal of the index entry `key` → `value` and returns the
/// value's body. A damaged key or value is [`Error::Corrupt`] naming the
/// key, so a read never acts on a damaged entry.
pub fn open_index_value<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8]> {
    let damaged = |why: &str| {
        let table = key
            .first()
            .and_then(|t| table_name(*t))
            .unwrap_or("unknown");
        Error::corrupt(
            None,
            format!(
                "{table} index entry {} {why}; run `eskv check` to find every damaged entry",
                crate::display_key(key)
            ),
        )
    };
    if value.len() < SEAL_LEN {
        return Err(damaged(&format!(
            "holds {} bytes, less than its {SEAL_LEN}-byte checksum",
            value.len()
        )));
    }
    let (body, seal) = value.split_at(value.len() - SEAL_LEN);
    let stored = u32::from_le_bytes([seal[0], seal[1], seal[2], seal[3]]);
    if stored != index_seal(key, body) {
        return Err(damaged("fails its checksum (its key or value is damaged)"));
    }
    Ok(body)
}

/// True for keys of the tables whose values are sealed
/// ([`seal_index_value`]).
pub fn is_sealed_index_key(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(&(ID | REMOVED | STREAM_EV | CATEGORY | TYPE | TAG))
    )
}

// ---------------------------------------------------------------------------
// Lifecycle tables: what compaction removed, each stream's
// retention, and the per-subject keys of personal data. New tables only:
// a store that never used them is laid out exactly as before.
// ---------------------------------------------------------------------------

/// A run of positions removed by compaction, keyed by its first position;
/// its value is the run's last position (u64 BE, sealed). The integrity
/// checker accepts a hole in the log exactly where such a run says so.
pub fn removed_key(first: Position) -> Vec<u8> {
    KeyBuilder::with_raw(&[REMOVED]).u64(first).finish()
}

/// Every removal record.
pub fn removed_range() -> KeyRange {
    table_range(REMOVED)
}

/// Parses a removal record's key strictly.
pub fn parse_removed_key(key: &[u8]) -> Result<Position> {
    let mut r = strict_reader(key, REMOVED, "removed")?;
    let p = r.u64()?;
    finished(&r, p, "removed")
}

/// A stream's lifecycle record (retention, deletion, tombstone, how far
/// compaction got); see `crate::lifecycle::StreamLife`.
pub fn stream_life_key(stream: &str) -> Vec<u8> {
    KeyBuilder::with_raw(&[STREAM_LIFE]).str(stream).finish()
}

/// Every stream lifecycle record, optionally only those after `after`.
pub fn stream_life_range(after: Option<&str>) -> KeyRange {
    let mut r = table_range(STREAM_LIFE);
    if let Some(a) = after {
        r.start = Bound::Excluded(stream_life_key(a));
    }
    r
}

/// Parses a stream lifecycle key strictly.
pub fn parse_stream_life_key(key: &[u8]) -> Result<String> {
    let mut r = strict_reader(key, STREAM_LIFE, "stream_life")?;
    let s = r.str()?;
    finished(&r, s, "stream_life")
}

/// The key record of a data subject (see `crate::crypto`).
pub fn subject_key(subject: &str) -> Vec<u8> {
    KeyBuilder::with_raw(&[SUBJECT]).str(subject).finish()
}

/// Every subject key record.
pub fn subject_range() -> KeyRange {
    table_range(SUBJECT)
}

/// Parses a subject key strictly.
pub fn parse_subject_key(key: &[u8]) -> Result<String> {
    let mut r = strict_reader(key, SUBJECT, "subject")?;
    let s = r.str()?;
    finished(&r, s, "subject")
}

/// The store-key check: a known text sealed under the application's
/// store key, so a wrong key is refused at open instead of failing later.
pub fn store_key_check_key() -> Vec<u8> {
    KeyBuilder::with_raw(&[META])
        .str("store_key_check")
        .finish()
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

/// Opens a stream index entry (`stream_event_key` → sealed position) and
/// returns the log position it points at. The one reader of that row.
pub fn parse_stream_entry(key: &[u8], value: &[u8]) -> Result<Position> {
    parse_u64(open_index_value(key, value)?, "stream index entry")
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
    postcard::to_allocvec(&(event_type, tags)).map_err(|e| Error::encode("tag index entry", e))
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

// ---------------------------------------------------------------------------
// Subscription state (table 0x50). Every key is the table tag, a family
// string, then the family's elements; each family has its encoders here,
// and `parse_state_key` parses any of them strictly (the integrity checker
// uses it). Names are tuple strings, so no name can reach another family or
// another name's keys, whatever characters it holds.
//
// | family                  | elements after the family             | value                        |
// |-------------------------|---------------------------------------|------------------------------|
// | `checkpoint`            | name                                  | position, u64 BE             |
// | `group-checkpoint`      | group, partition                      | position, u64 BE             |
// | `dead-letter`           | name, position                        | postcard dead letter         |
// | `group-dead-letter`     | group, partition, position            | postcard dead letter         |
// | `lease`                 | group, partition                      | postcard lease               |
// | `member`                | group, member                         | postcard expiry              |
// | `projection-checkpoint` | name                                  | generation, position (16 B)  |
// | `projection-rebuild`    | name                                  | [`ProjectionRebuild`] (32 B) |
// | `read-model`            | name, generation, then raw user bytes | the user's                   |
// | `snapshot`              | `stream`, id / `query`, bytes / `named`, name | postcard snapshot    |
// ---------------------------------------------------------------------------

const F_CHECKPOINT: &str = "checkpoint";
const F_GROUP_CHECKPOINT: &str = "group-checkpoint";
const F_DEAD_LETTER: &str = "dead-letter";
const F_GROUP_DEAD_LETTER: &str = "group-dead-letter";
const F_LEASE: &str = "lease";
const F_MEMBER: &str = "member";
const F_PROJECTION_CHECKPOINT: &str = "projection-checkpoint";
const F_PROJECTION_REBUILD: &str = "projection-rebuild";
const F_READ_MODEL: &str = "read-model";
const F_SNAPSHOT: &str = "snapshot";

/// Who a checkpoint or a dead-letter list belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consumer<'a> {
    /// A named subscription.
    Named(&'a str),
    /// One partition of a consumer group.
    Partition {
        /// The group's name.
        group: &'a str,
        /// The partition.
        partition: u32,
    },
}

/// The owned form of [`Consumer`], as parsed from a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConsumerId {
    /// A named subscription.
    Named(String),
    /// One partition of a consumer group.
    Partition {
        /// The group's name.
        group: String,
        /// The partition.
        partition: u32,
    },
}

impl ConsumerId {
    /// The borrowed form.
    pub fn as_consumer(&self) -> Consumer<'_> {
        match self {
            ConsumerId::Named(n) => Consumer::Named(n),
            ConsumerId::Partition { group, partition } => Consumer::Partition {
                group,
                partition: *partition,
            },
        }
    }
}

impl std::fmt::Display for Consumer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consumer::Named(n) => write!(f, "subscription '{n}'"),
            Consumer::Partition { group, partition } => {
                write!(f, "partition {partition} of group '{group}'")
            }
        }
    }
}

/// What a snapshot key names (see `SnapshotKey` in the projection module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotOf<'a> {
    /// The state of one stream.
    Stream(&'a str),
    /// The state of a DCB query, by its encoding.
    Query(&'a [u8]),
    /// Anything else, by name.
    Named(&'a str),
}

/// Any subscription-state key, parsed (see [`parse_state_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateKey {
    /// A checkpoint.
    Checkpoint(ConsumerId),
    /// A parked event.
    DeadLetter {
        /// Whose list it is on.
        consumer: ConsumerId,
        /// The event's position.
        position: Position,
    },
    /// A partition lease.
    Lease {
        /// The group.
        group: String,
        /// The partition.
        partition: u32,
    },
    /// A group member's registration.
    Member {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// A projection's live generation and checkpoint.
    ProjectionCheckpoint {
        /// The projection.
        name: String,
    },
    /// A projection's rebuild in progress.
    ProjectionRebuild {
        /// The projection.
        name: String,
    },
    /// A read-model value of one generation of a projection.
    ReadModel {
        /// The projection.
        name: String,
        /// The generation.
        generation: u64,
        /// The user's key.
        key: Vec<u8>,
    },
    /// A snapshot of a stream.
    StreamSnapshot(String),
    /// A snapshot of a DCB query (its encoding).
    QuerySnapshot(Vec<u8>),
    /// A named snapshot.
    NamedSnapshot(String),
}

impl StateKey {
    /// The key's bytes; `parse_state_key(&k.encode())` gives `k` back.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StateKey::Checkpoint(c) => checkpoint_key(c.as_consumer()),
            StateKey::DeadLetter { consumer, position } => {
                dead_letter_key(consumer.as_consumer(), *position)
            }
            StateKey::Lease { group, partition } => lease_key(group, *partition),
            StateKey::Member { group, member } => member_key(group, member),
            StateKey::ProjectionCheckpoint { name } => projection_checkpoint_key(name),
            StateKey::ProjectionRebuild { name } => projection_rebuild_key(name),
            StateKey::ReadModel {
                name,
                generation,
                key,
            } => [read_model_prefix(name, *generation).as_slice(), key].concat(),
            StateKey::StreamSnapshot(s) => snapshot_key(SnapshotOf::Stream(s)),
            StateKey::QuerySnapshot(q) => snapshot_key(SnapshotOf::Query(q)),
            StateKey::NamedSnapshot(n) => snapshot_key(SnapshotOf::Named(n)),
        }
    }
}

fn family(f: &str) -> KeyBuilder {
    KeyBuilder::with_raw(&[SUBSCRIPTIONS]).str(f)
}

fn consumer_builder(c: Consumer<'_>, named: &str, grouped: &str) -> KeyBuilder {
    match c {
        Consumer::Named(n) => family(named).str(n),
        Consumer::Partition { group, partition } => {
            family(grouped).str(group).u64(u64::from(partition))
        }
    }
}

/// The checkpoint of a named subscription or of a group partition.
pub fn checkpoint_key(c: Consumer<'_>) -> Vec<u8> {
    consumer_builder(c, F_CHECKPOINT, F_GROUP_CHECKPOINT).finish()
}

/// Every named subscription's checkpoint (not group partitions').
pub fn checkpoint_range() -> KeyRange {
    KeyRange::children(&family(F_CHECKPOINT).finish())
}

/// Every partition checkpoint of `group`.
pub fn group_checkpoint_range(group: &str) -> KeyRange {
    KeyRange::children(&family(F_GROUP_CHECKPOINT).str(group).finish())
}

/// A parked event of a named subscription or of a group partition.
pub fn dead_letter_key(c: Consumer<'_>, position: Position) -> Vec<u8> {
    consumer_builder(c, F_DEAD_LETTER, F_GROUP_DEAD_LETTER)
        .u64(position)
        .finish()
}

/// Every parked event of one consumer, by position.
pub fn dead_letter_range(c: Consumer<'_>) -> KeyRange {
    KeyRange::children(&consumer_builder(c, F_DEAD_LETTER, F_GROUP_DEAD_LETTER).finish())
}

/// Every parked event of every partition of `group`.
pub fn group_dead_letter_range(group: &str) -> KeyRange {
    KeyRange::children(&family(F_GROUP_DEAD_LETTER).str(group).finish())
}

/// The lease of partition `partition` of `group`.
pub fn lease_key(group: &str, partition: u32) -> Vec<u8> {
    family(F_LEASE)
        .str(group)
        .u64(u64::from(partition))
        .finish()
}

/// Every partition lease of `group`.
pub fn lease_range(group: &str) -> KeyRange {
    KeyRange::children(&family(F_LEASE).str(group).finish())
}

/// The registration of `member` in `group`.
pub fn member_key(group: &str, member: &str) -> Vec<u8> {
    family(F_MEMBER).str(group).str(member).finish()
}

/// Every member registration of `group`.
pub fn member_range(group: &str) -> KeyRange {
    KeyRange::children(&family(F_MEMBER).str(group).finish())
}

/// A projection's live read-model generation and checkpoint (value:
/// [`projection_checkpoint_value`]).
pub fn projection_checkpoint_key(name: &str) -> Vec<u8> {
    family(F_PROJECTION_CHECKPOINT).str(name).finish()
}

/// A projection's rebuild in progress (value: [`ProjectionRebuild`]).
pub fn projection_rebuild_key(name: &str) -> Vec<u8> {
    family(F_PROJECTION_REBUILD).str(name).finish()
}

/// The prefix of every read-model key of generation `generation` of
/// projection `name`; the user's key bytes follow it as they are. The
/// generation integer is self-delimiting, so one generation's prefix never
/// starts another's.
pub fn read_model_prefix(name: &str, generation: u64) -> Vec<u8> {
    family(F_READ_MODEL).str(name).u64(generation).finish()
}

/// Every read-model key of one generation.
pub fn read_model_generation_range(name: &str, generation: u64) -> KeyRange {
    KeyRange::prefix(&read_model_prefix(name, generation))
}

/// Every read-model key of every generation of projection `name` from
/// generation `from` on, in generation order (for finding leftover
/// generations).
pub fn read_model_range_from(name: &str, from: u64) -> KeyRange {
    let all = KeyRange::children(&family(F_READ_MODEL).str(name).finish());
    KeyRange {
        start: Bound::Included(read_model_prefix(name, from)),
        end: all.end,
    }
}

/// A snapshot's key.
pub fn snapshot_key(of: SnapshotOf<'_>) -> Vec<u8> {
    let b = family(F_SNAPSHOT);
    match of {
        SnapshotOf::Stream(s) => b.str("stream").str(s).finish(),
        SnapshotOf::Query(q) => b.str("query").bytes(q).finish(),
        SnapshotOf::Named(n) => b.str("named").str(n).finish(),
    }
}

fn partition_of(v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::corrupt(None, format!("partition {v} exceeds u32")))
}

/// Parses any subscription-state key strictly: the family must be known,
/// its elements present and nothing after them (except a read-model key's
/// user bytes). Whatever it accepts re-encodes to the same bytes.
pub fn parse_state_key(key: &[u8]) -> Result<StateKey> {
    let mut r = strict_reader(key, SUBSCRIPTIONS, "subscription-state")?;
    let f = r.str()?;
    let k = match f.as_str() {
        F_CHECKPOINT => StateKey::Checkpoint(ConsumerId::Named(r.str()?)),
        F_GROUP_CHECKPOINT => StateKey::Checkpoint(ConsumerId::Partition {
            group: r.str()?,
            partition: partition_of(r.u64()?)?,
        }),
        F_DEAD_LETTER => StateKey::DeadLetter {
            consumer: ConsumerId::Named(r.str()?),
            position: r.u64()?,
        },
        F_GROUP_DEAD_LETTER => StateKey::DeadLetter {
            consumer: ConsumerId::Partition {
                group: r.str()?,
                partition: partition_of(r.u64()?)?,
            },
            position: r.u64()?,
        },
        F_LEASE => StateKey::Lease {
            group: r.str()?,
            partition: partition_of(r.u64()?)?,
        },
        F_MEMBER => StateKey::Member {
            group: r.str()?,
            member: r.str()?,
        },
        F_PROJECTION_CHECKPOINT => StateKey::ProjectionCheckpoint { name: r.str()? },
        F_PROJECTION_REBUILD => StateKey::ProjectionRebuild { name: r.str()? },
        F_READ_MODEL => {
            let name = r.str()?;
            let generation = r.u64()?;
            let prefix = read_model_prefix(&name, generation);
            // The reader accepts only canonical elements, so the key starts
            // with exactly this prefix; the rest is the user's.
            let user = key.get(prefix.len()..).filter(|_| key.starts_with(&prefix));
            let Some(user) = user else {
                return Err(Error::corrupt(None, "malformed read-model key"));
            };
            return Ok(StateKey::ReadModel {
                name,
                generation,
                key: user.to_vec(),
            });
        }
        F_SNAPSHOT => match r.str()?.as_str() {
            "stream" => StateKey::StreamSnapshot(r.str()?),
            "query" => StateKey::QuerySnapshot(r.bytes()?),
            "named" => StateKey::NamedSnapshot(r.str()?),
            other => {
                return Err(Error::corrupt(
                    None,
                    format!("unknown snapshot kind {other:?}"),
                ))
            }
        },
        other => {
            return Err(Error::corrupt(
                None,
                format!("unknown subscription-state family {other:?}"),
            ))
        }
    };
    finished(&r, k, "subscription-state")
}

/// A rebuild in progress: the generation being built, how far it is, and
/// the id of the rebuild that owns it (so a retried or restarted rebuild
/// can tell its own record from a stale one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionRebuild {
    /// The generation being built.
    pub generation: u64,
    /// The position up to which it has applied the log.
    pub position: Position,
    /// The rebuild's id.
    pub id: Ulid,
}

impl ProjectionRebuild {
    /// Encodes as 32 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.position.to_be_bytes());
        v.extend_from_slice(&self.id.to_bytes());
        v
    }

    /// Decodes 32 bytes.
    pub fn decode(v: &[u8]) -> Result<Self> {
        if v.len() != 32 {
            return Err(Error::corrupt(
                None,
                format!(
                    "projection rebuild record is {} bytes, expected 32",
                    v.len()
                ),
            ));
        }
        let id: [u8; 16] = v[16..]
            .try_into()
            .map_err(|_| Error::corrupt(None, "projection rebuild id"))?;
        Ok(ProjectionRebuild {
            generation: parse_u64(&v[..8], "rebuild generation")?,
            position: parse_u64(&v[8..16], "rebuild position")?,
            id: Ulid::from_bytes(id),
        })
    }
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
        REMOVED => "removed",
        STREAM_LIFE => "stream_life",
        SUBJECT => "subject",
        _ => return None,
    })
}

/// Every tag byte the layout uses, ascending.
pub fn table_tags() -> [u8; 14] {
    [
        META,
        HEAD,
        LOG,
        ID,
        REMOVED,
        STREAM,
        STREAM_EV,
        CATEGORY,
        STREAM_LIFE,
        TYPE,
        TAG,
        REGISTRY,
        SUBSCRIPTIONS,
        SUBJECT,
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

/// A sealed personal part and its subject, as the envelope stores them.
pub type SealedRef<'a> = (&'a str, &'a crate::event::SealedPersonal);

/// The rows one event adds to the layout (log, id, type, tags, stream
/// index, category). The one place that knows an event's index entries.
/// Returns the event's id entry.
pub fn event_rows(
    rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
    pos: Position,
    e: &NewEvent,
    recorded_at_ms: u64,
    (stream, personal): (Option<(&str, u64)>, Option<SealedRef<'_>>),
    (append_first, append_last): (Position, Position),
) -> Result<IdEntry> {
    let start = rows.len();
    rows.push((
        log_key(pos),
        crate::envelope::encode_sealed(pos, e, recorded_at_ms, stream, personal)?,
    ));
    let id = IdEntry {
        position: pos,
        append_first,
        append_last,
        digest: content_digest(&e.tags, &e.data, &e.metadata),
    };
    rows.push((id_key(e.id), id.encode()));
    rows.push((type_key(&e.event_type, pos), Vec::new()));
    if !e.tags.is_empty() {
        let entry = tag_entry_value(&e.event_type, &e.tags)?;
        for t in &e.tags {
            rows.push((tag_key(t, pos), entry.clone()));
        }
    }
    if let Some((s, v)) = stream {
        rows.push((stream_event_key(s, v), u64_value(pos)));
        rows.push((category_key(category_of(s), pos), Vec::new()));
    }
    // Every row after the log entry is an index entry: seal it.
    for (k, v) in &mut rows[start + 1..] {
        *v = seal_index_value(k, std::mem::take(v));
    }
    Ok(id)
}

/// True for a row of [`event_rows`] that its append creates, appended at
/// a position above the head: every row but the id entry, which is keyed
/// by the event's id and may exist (a released id is taken again). The
/// others are keyed by the new position, or by a stream version above the
/// stream's (stream index entries).
pub fn event_row_is_new(key: &[u8]) -> bool {
    key.first() != Some(&ID)
}

#[cfg(test)]
mod tests;
