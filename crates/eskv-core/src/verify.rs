//! Integrity checker: checks every invariant of the key layout (see
//! [`crate::layout`]) and reports each violation with its key or position.
//!
//! ```
//! use eskv_core::{EventStore, MemoryStore, NewEvent};
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::Result<()> {
//! let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
//! store.append(vec![NewEvent::new("Started", b"{}".to_vec())], None).await?;
//! let report = eskv_core::verify::verify(&store).await?;
//! assert!(report.is_clean(), "{report}");
//! assert_eq!(report.events, 1);
//! # Ok(()) }
//! ```
//!
//! # What is checked
//!
//! Everything is read from **one snapshot** (one KV transaction), table by
//! table, in pages ([`PAGE`] keys, [`LOG_PAGE`] events), so memory stays
//! bounded by a page whatever the store's size:
//!
//! - **head and log**: positions `1..=head` are all present (gapless), no
//!   event lies above the head, every log key parses;
//! - **envelopes**: every event decodes and passes its checksum (a damaged
//!   one is reported with its position, and the check goes on);
//! - **id index** (`0x11`) and log agree both ways: every event's id entry
//!   points at it, every id entry points at an event with that id;
//! - **streams**: per stream, the index (`0x21`) holds versions `1..=n`
//!   without gaps, positions grow with versions, the metadata (`0x20`) says
//!   version `n` and the position of version `n`, and each index entry
//!   points at an event whose envelope names that stream and version;
//! - **category, type and tag indexes** (`0x22`, `0x30`, `0x31`) agree with
//!   the events both ways, including the `(type, tags)` copy held in each
//!   tag entry (it is what DCB conditions are checked against);
//! - **seals**: every index entry's checksum over its key and value
//!   ([`layout::open_index_value`]), reported once, by its table's pass;
//! - **registry and meta**: keys parse, the format marker is this layout's,
//!   and no import was left unfinished ([`crate::layout::import_key`]);
//! - **subscriptions** (`0x50`): every key parses as one of the layout's
//!   subscription-state families ([`layout::parse_state_key`]);
//!   subscription, group-partition and projection checkpoints, rebuild
//!   records and parked (dead-letter) events are not past the head;
//! - **stray keys**: any key outside the layout's tables (keys under the
//!   nested-namespace prefix `n` are skipped: they belong to other stores).
//!
//! Backend errors (unavailable, conflict) abort the check with `Err`;
//! damaged data never does: it becomes a [`Violation`].

use crate::envelope;
use crate::error::Result;
use crate::event::{Position, RecordedEvent};
use crate::kv::{KeyRange, KvPair, KvStore, KvTransaction, ScanOptions};
use crate::layout::{self, StreamMeta};
use crate::store::EventStore;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Bound;

/// Keys read per scan of an index table.
pub const PAGE: usize = 1024;
/// Events read per scan of the log, and per batch of event lookups.
pub const LOG_PAGE: usize = 256;
/// Violations kept in a report; further ones are only counted.
pub const MAX_VIOLATIONS: usize = 10_000;

/// The prefix byte of nested namespaces (see [`crate::Namespaced`]).
const NAMESPACE_TAG: u8 = b'n';

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The offending key, when the violation is about one key.
    pub key: Option<Vec<u8>>,
    /// The global position concerned, when known.
    pub position: Option<Position>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.position {
            write!(f, "position {p}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "key {}: ", crate::display_key(k))?;
        }
        f.write_str(&self.message)
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Events in the log (decodable or not).
    pub events: u64,
    /// Streams with metadata.
    pub streams: u64,
    /// The head at the checked snapshot (0 when missing or unreadable).
    pub head: Position,
    /// Keys read in all.
    pub keys: u64,
    /// The violations, at most [`MAX_VIOLATIONS`].
    pub violations: Vec<Violation>,
    /// Violations found beyond [`MAX_VIOLATIONS`], counted but not kept.
    pub omitted: u64,
    /// Positions removed by compaction (recorded holes, not damage).
    pub removed: u64,
}

impl VerifyReport {
    /// True when no invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.omitted == 0
    }

    /// Every violation at `position`.
    pub fn at_position(&self, position: Position) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(move |v| v.position == Some(position))
    }

    /// Every violation about `key`.
    pub fn at_key<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a Violation> {
        self.violations
            .iter()
            .filter(move |v| v.key.as_deref() == Some(key))
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.violations.len() as u64 + self.omitted;
        write!(
            f,
            "{} events, {} streams, head {}, {} keys read: ",
            self.events, self.streams, self.head, self.keys
        )?;
        if n == 0 {
            return f.write_str("clean");
        }
        write!(f, "{n} violation(s)")?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        if self.omitted > 0 {
            write!(f, "\n  … and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// Checks every invariant of the event layout in `store`, at one snapshot.
pub async fn verify(store: &EventStore) -> Result<VerifyReport> {
    verify_kv(store.kv().as_ref()).await
}

/// Checks every invariant of the event layout in a raw KV store (for tools
/// that must not write, such as a read-only check before opening).
pub async fn verify_kv(kv: &dyn KvStore) -> Result<VerifyReport> {
    check_kv(kv, None).await
}

/// Like [`verify`], calling `progress` with the number of keys read so far
/// after every page (for a progress display; the total is not known
/// ahead).
pub async fn verify_with_progress(
    store: &EventStore,
    mut progress: impl FnMut(u64) + Send,
) -> Result<VerifyReport> {
    check_kv(store.kv().as_ref(), Some(&mut progress)).await
}

async fn check_kv(
    kv: &dyn KvStore,
    progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<VerifyReport> {
    let mut txn = kv.begin().await?;
    let mut c = Checker {
        report: VerifyReport::default(),
        progress,
        removed: Vec::new(),
        lives: std::collections::HashMap::new(),
    };
    let txn = &mut *txn;
    c.meta(txn).await?;
    c.lifecycle(txn).await?;
    let head = c.head(txn).await?;
    c.log(txn, head).await?;
    c.ids(txn).await?;
    c.streams(txn).await?;
    for (range, kind) in [
        (layout::category_range(), Positional::Category),
        (layout::type_range(), Positional::Type),
        (layout::tag_range(), Positional::Tag),
    ] {
        c.positional(txn, range, kind).await?;
    }
    c.registry(txn).await?;
    c.subscriptions(txn, head).await?;
    c.stray_keys(txn).await?;
    Ok(c.report)
}

/// Reads one table (or any range) in pages.
struct Pager {
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    page: usize,
    done: bool,
}

impl Pager {
    fn new(range: KeyRange, page: usize) -> Self {
        Pager {
            start: range.start,
            end: range.end,
            page,
            done: false,
        }
    }

    async fn next(&mut self, txn: &mut dyn KvTransaction) -> Result<Option<Vec<KvPair>>> {
        if self.done {
            return Ok(None);
        }
        let range = KeyRange {
            start: self.start.clone(),
            end: self.end.clone(),
        };
        let rows = txn
            .scan(range, ScanOptions::forward(Some(self.page)))
            .await?;
        if rows.len() < self.page {
            self.done = true;
        }
        match rows.last() {
            Some((k, _)) => self.start = Bound::Excluded(k.clone()),
            None => {
                self.done = true;
                return Ok(None);
            }
        }
        Ok(Some(rows))
    }
}

/// A pager read one pair at a time, with lookahead.
struct Cursor {
    pager: Pager,
    buf: VecDeque<KvPair>,
}

impl Cursor {
    fn new(range: KeyRange) -> Self {
        Cursor {
            pager: Pager::new(range, PAGE),
            buf: VecDeque::new(),
        }
    }

    async fn peek(&mut self, txn: &mut dyn KvTransaction) -> Result<Option<&KvPair>> {
        if self.buf.is_empty() {
            if let Some(rows) = self.pager.next(txn).await? {
                self.buf.extend(rows);
            }
        }
        Ok(self.buf.front())
    }

    fn pop(&mut self) -> Option<KvPair> {
        self.buf.pop_front()
    }
}

/// The head key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Missing,
    Unreadable,
    At(Position),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Positional {
    Category,
    Type,
    Tag,
}

impl Positional {
    fn name(self) -> &'static str {
        match self {
            Positional::Category => "category",
            Positional::Type => "type",
            Positional::Tag => "tag",
        }
    }
}

/// What an event's index entry must hold.
enum Expect {
    /// An id entry: the event's position and content digest.
    IdEntry,
    /// A u64 position value.
    Position,
    /// An empty value.
    Empty,
    /// A tag entry: the event's type and tags.
    TagEntry,
}

/// One stream's index entries, gathered while scanning `0x21`.
struct StreamGroup {
    stream: String,
    /// Highest version seen.
    version: u64,
    /// Position of the highest version.
    last_position: Position,
}

struct Checker<'a> {
    report: VerifyReport,
    progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
    /// Runs of positions compaction removed, ascending by first position.
    removed: Vec<(Position, Position)>,
    /// Lifecycle records by stream.
    lives: std::collections::HashMap<String, crate::lifecycle::StreamLife>,
}

impl Checker<'_> {
    /// Reads the removal runs and lifecycle records (both small: one row
    /// per run and per stream with retention) before the passes that
    /// need them.
    async fn lifecycle(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::removed_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                let run = layout::parse_removed_key(&k).and_then(|first| {
                    let last = layout::parse_u64(layout::open_index_value(&k, &v)?, "removal run")?;
                    Ok((first, last))
                });
                match run {
                    Ok((first, last)) if first <= last => {
                        self.report.removed += last - first + 1;
                        self.removed.push((first, last));
                    }
                    Ok((first, last)) => self.violation(
                        Some(&k),
                        Some(first),
                        format!("removal run {first}..={last} ends before it starts"),
                    ),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
        }
        let mut pager = Pager::new(layout::stream_life_range(None), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                match layout::parse_stream_life_key(&k)
                    .and_then(|s| Ok((s, crate::lifecycle::StreamLife::decode(&v)?)))
                {
                    Ok((s, l)) => {
                        self.lives.insert(s, l);
                    }
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
        }
        Ok(())
    }

    /// True when every position of `[from, to]` was removed by compaction.
    fn removed_range(&self, from: Position, to: Position) -> bool {
        let mut next = from;
        for &(a, b) in &self.removed {
            if b < next {
                continue;
            }
            if a > next {
                return false;
            }
            next = b + 1;
            if next > to {
                return true;
            }
        }
        next > to
    }

    /// The first version of `stream` that compaction kept.
    fn first_kept_version(&self, stream: &str) -> u64 {
        self.lives
            .get(stream)
            .map_or(1, |l| l.compacted_before.max(1))
    }
}

fn corrupt_message(e: &crate::Error) -> String {
    match e {
        crate::Error::Corrupt { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn range_text(from: Position, to: Position) -> String {
    if from == to {
        format!("position {from} is")
    } else {
        format!("positions {from}..={to} are")
    }
}

impl Checker<'_> {
    fn violation(&mut self, key: Option<&[u8]>, position: Option<Position>, message: String) {
        if self.report.violations.len() < MAX_VIOLATIONS {
            self.report.violations.push(Violation {
                key: key.map(<[u8]>::to_vec),
                position,
                message,
            });
        } else {
            self.report.omitted += 1;
        }
    }

    async fn page(
        &mut self,
        pager: &mut Pager,
        txn: &mut dyn KvTransaction,
    ) -> Result<Option<Vec<KvPair>>> {
        let rows = pager.next(txn).await?;
        if let Some(r) = &rows {
            self.report.keys += r.len() as u64;
            if let Some(p) = self.progress.as_mut() {
                p(self.report.keys);
            }
        }
        Ok(rows)
    }

    /// Loads the events at `positions` (in chunks of [`LOG_PAGE`]):
    /// `None` when the log has no entry there, `Some(Err)` when the entry
    /// does not decode (the log pass reports that, so callers skip it).
    async fn load(
        &mut self,
        txn: &mut dyn KvTransaction,
        positions: &[Position],
    ) -> Result<Vec<Option<Result<RecordedEvent>>>> {
        let mut out = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(LOG_PAGE) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|&p| layout::log_key(p)).collect();
            let vals = txn.get_many(&keys).await?;
            self.report.keys += vals.iter().flatten().count() as u64;
            out.extend(
                chunk
                    .iter()
                    .zip(vals)
                    .map(|(&p, v)| v.map(|v| envelope::decode(&v, p))),
            );
        }
        Ok(out)
    }

    async fn meta(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut format_seen = false;
        let mut pager = Pager::new(layout::meta_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                match layout::parse_meta_key(&k) {
                    Err(e) => self.violation(
                        Some(&k),
                        None,
                        format!("meta key does not parse ({})", corrupt_message(&e)),
                    ),
                    Ok(_) if k == layout::format_key() => {
                        format_seen = true;
                        if v != layout::FORMAT {
                            self.violation(
                                Some(&k),
                                None,
                                format!(
                                    "layout format is {:?}, this checker knows {:?}",
                                    String::from_utf8_lossy(&v),
                                    String::from_utf8_lossy(layout::FORMAT)
                                ),
                            );
                        }
                    }
                    Ok(_) if k == layout::strict_key() => {
                        if v != [0] && v != [1] {
                            self.violation(
                                Some(&k),
                                None,
                                format!("strict-types flag holds {v:02x?}, expected 0 or 1"),
                            );
                        }
                    }
                    Ok(_) if k == layout::import_key() => {
                        let message = match crate::store::ImportMarker::decode(&v) {
                            Ok(m) => m.to_string(),
                            Err(e) => format!(
                                "an import into this store did not finish (its marker does not parse: {})",
                                corrupt_message(&e)
                            ),
                        };
                        self.violation(Some(&k), None, message);
                    }
                    // Other names are configuration flags of later
                    // versions; their values are theirs to check.
                    Ok(_) => {}
                }
            }
        }
        if !format_seen {
            // An empty store that was never opened has no marker; anything
            // else without one was not written by the event layer.
            let any = txn
                .scan(
                    KeyRange {
                        start: Bound::Unbounded,
                        end: Bound::Unbounded,
                    },
                    ScanOptions::forward(Some(1)),
                )
                .await?;
            if !any.is_empty() {
                let k = layout::format_key();
                self.violation(
                    Some(&k),
                    None,
                    "the layout format marker is missing, but the store holds keys".into(),
                );
            }
        }
        Ok(())
    }

    async fn head(&mut self, txn: &mut dyn KvTransaction) -> Result<Head> {
        let k = layout::head_key();
        let raw = txn.get(&k).await?;
        self.report.keys += u64::from(raw.is_some());
        Ok(match raw {
            None => Head::Missing,
            Some(v) => match layout::parse_u64(&v, "head") {
                Ok(h) => {
                    self.report.head = h;
                    Head::At(h)
                }
                Err(e) => {
                    self.violation(Some(&k), None, corrupt_message(&e));
                    Head::Unreadable
                }
            },
        })
    }

    /// The log pass: gaps, head, envelopes, and each event's own index
    /// entries (events → indexes).
    async fn log(&mut self, txn: &mut dyn KvTransaction, head: Head) -> Result<()> {
        let mut next = 1u64;
        let mut pager = Pager::new(layout::log_table_range(), LOG_PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut events = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let pos = match layout::parse_log_key_strict(&k) {
                    Ok(p) => p,
                    Err(e) => {
                        self.violation(
                            Some(&k),
                            None,
                            format!("log key does not parse ({})", corrupt_message(&e)),
                        );
                        continue;
                    }
                };
                if pos == 0 {
                    self.violation(Some(&k), Some(0), "positions start at 1".into());
                    continue;
                }
                if pos > next && !self.removed_range(next, pos - 1) {
                    self.violation(
                        None,
                        Some(next),
                        format!("{} missing from the log (gap)", range_text(next, pos - 1)),
                    );
                }
                next = pos + 1;
                self.report.events += 1;
                if let Head::At(h) = head {
                    if pos > h {
                        self.violation(Some(&k), Some(pos), format!("event above the head ({h})"));
                    }
                }
                match envelope::decode(&v, pos) {
                    Ok(e) => events.push(e),
                    Err(e) => self.violation(Some(&k), Some(pos), corrupt_message(&e)),
                }
            }
            self.event_entries(txn, &events).await?;
        }
        let last = next - 1;
        match head {
            Head::At(h) if last < h && !self.removed_range(last + 1, h) => self.violation(
                Some(&layout::head_key()),
                Some(last + 1),
                format!(
                    "{} at or below the head ({h}) but missing from the log",
                    range_text(last + 1, h)
                ),
            ),
            Head::Missing if last > 0 => self.violation(
                Some(&layout::head_key()),
                None,
                format!("the head key is missing, but the log holds events up to position {last}"),
            ),
            _ => {}
        }
        Ok(())
    }

    /// Checks that every index entry an event needs exists and holds what
    /// it must.
    async fn event_entries(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &[RecordedEvent],
    ) -> Result<()> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut expect: Vec<(usize, Expect, &'static str)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let p = e.position;
            keys.push(layout::id_key(e.id));
            expect.push((i, Expect::IdEntry, "id"));
            keys.push(layout::type_key(&e.event_type, p));
            expect.push((i, Expect::Empty, "type"));
            for t in &e.tags {
                keys.push(layout::tag_key(t, p));
                expect.push((i, Expect::TagEntry, "tag"));
            }
            if let Some(s) = &e.stream {
                keys.push(layout::stream_event_key(&s.stream_id, s.version));
                expect.push((i, Expect::Position, "stream"));
                keys.push(layout::category_key(layout::category_of(&s.stream_id), p));
                expect.push((i, Expect::Empty, "category"));
            }
        }
        for (chunk_keys, chunk_expect) in keys.chunks(PAGE).zip(expect.chunks(PAGE)) {
            let vals = txn.get_many(chunk_keys).await?;
            self.report.keys += vals.iter().flatten().count() as u64;
            for ((k, (i, ex, table)), v) in chunk_keys.iter().zip(chunk_expect).zip(vals) {
                let e = &events[*i];
                let p = e.position;
                let Some(v) = v else {
                    self.violation(
                        Some(k),
                        Some(p),
                        format!(
                            "the event (id {}, type '{}') has no {table} index entry",
                            e.id, e.event_type
                        ),
                    );
                    continue;
                };
                // A damaged seal is reported by the pass over its table,
                // which sees every entry, whether its event exists or not.
                let Ok(v) = layout::open_index_value(k, &v) else {
                    continue;
                };
                match ex {
                    Expect::IdEntry => match layout::IdEntry::decode(v) {
                        // A released event's id may be appended again: the
                        // entry then belongs to the later event.
                        Ok(x) if x.position > p
                            && e.stream.as_ref().is_some_and(|s| self.lives.contains_key(&s.stream_id)) => {}
                        Ok(x) if x.position != p => self.violation(
                            Some(k),
                            Some(p),
                            format!(
                                "the id index entry of this event points at position {} (the same id is stored twice?)",
                                x.position
                            ),
                        ),
                        Ok(x) if x.digest != layout::content_digest(&e.tags, &e.data, &e.metadata) => {
                            self.violation(
                                Some(k),
                                Some(p),
                                "the id index entry's content digest does not match the event's tags, data and metadata".into(),
                            )
                        }
                        Ok(_) => {}
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                    Expect::Position => match layout::parse_u64(v, "index entry") {
                        Ok(q) if q == p => {}
                        Ok(q) => self.violation(
                            Some(k),
                            Some(p),
                            format!("the {table} index entry of this event points at position {q}"),
                        ),
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                    Expect::Empty => {
                        if !v.is_empty() {
                            self.violation(
                                Some(k),
                                Some(p),
                                format!(
                                    "{table} index entry holds {} bytes, expected none",
                                    v.len()
                                ),
                            );
                        }
                    }
                    Expect::TagEntry => match layout::parse_tag_entry(v) {
                        Ok((t, tags)) if t == e.event_type && tags == e.tags => {}
                        Ok((t, tags)) => self.violation(
                            Some(k),
                            Some(p),
                            format!(
                                "tag index entry says type '{t}' with tags {tags:?}, the event has type '{}' with tags {:?}",
                                e.event_type, e.tags
                            ),
                        ),
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                }
            }
        }
        Ok(())
    }

    /// Id index → log.
    async fn ids(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::id_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let id = match layout::parse_id_key(&k) {
                    Ok(id) => id,
                    Err(e) => {
                        self.violation(
                            Some(&k),
                            None,
                            format!("id index key does not parse ({})", corrupt_message(&e)),
                        );
                        continue;
                    }
                };
                match layout::open_index_value(&k, &v)
                    .and_then(layout::IdEntry::decode)
                    .map(|x| x.position)
                {
                    Ok(p) => entries.push((k, id, p)),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, id, p), e) in entries.iter().zip(events) {
                match e {
                    None => self.violation(
                        Some(k),
                        Some(*p),
                        format!("id index entry of event {id} points at position {p}, which holds no event"),
                    ),
                    Some(Err(_)) => {}
                    Some(Ok(e)) if e.id != *id => self.violation(
                        Some(k),
                        Some(*p),
                        format!(
                            "id index entry of event {id} points at position {p}, which holds event {}",
                            e.id
                        ),
                    ),
                    Some(Ok(_)) => {}
                }
            }
        }
        Ok(())
    }

    /// Stream metadata (`0x20`) merged with the stream index (`0x21`); both
    /// are ordered by stream id.
    async fn streams(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut metas = Cursor::new(layout::stream_meta_range());
        let mut group: Option<StreamGroup> = None;
        let mut pager = Pager::new(layout::stream_event_table_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let (s, ver) = match layout::parse_stream_event_key(&k) {
                    Ok(x) => x,
                    Err(e) => {
                        self.violation(
                            Some(&k),
                            None,
                            format!("stream index key does not parse ({})", corrupt_message(&e)),
                        );
                        continue;
                    }
                };
                match layout::parse_stream_entry(&k, &v) {
                    Ok(p) => entries.push((k, s, ver, p)),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, s, ver, p), e) in entries.into_iter().zip(events) {
                match e {
                    None => self.violation(
                        Some(&k),
                        Some(p),
                        format!("version {ver} of stream '{s}' points at position {p}, which holds no event"),
                    ),
                    Some(Err(_)) => {}
                    Some(Ok(e)) => {
                        let named = e.stream.as_ref().map(|r| (r.stream_id.as_str(), r.version));
                        if named != Some((s.as_str(), ver)) {
                            self.violation(
                                Some(&k),
                                Some(p),
                                format!(
                                    "version {ver} of stream '{s}' points at position {p}, whose event belongs to {}",
                                    match named {
                                        Some((x, v)) => format!("stream '{x}' version {v}"),
                                        None => "no stream".into(),
                                    }
                                ),
                            );
                        }
                    }
                }
                let same = group.as_ref().is_some_and(|g| g.stream == s);
                if !same {
                    if let Some(g) = group.take() {
                        self.finish_stream(txn, &mut metas, g).await?;
                    }
                    // Versions below the compacted edge were removed.
                    let kept = self.first_kept_version(&s);
                    group = Some(StreamGroup {
                        stream: s.clone(),
                        version: kept - 1,
                        last_position: 0,
                    });
                }
                if let Some(g) = group.as_mut() {
                    if ver != g.version + 1 {
                        let msg = if ver == 0 {
                            format!("stream '{s}' has a version 0 (versions start at 1)")
                        } else {
                            format!(
                                "stream '{s}' is missing versions {}..={}",
                                g.version + 1,
                                ver - 1
                            )
                        };
                        self.violation(Some(&k), Some(p), msg);
                    }
                    if p <= g.last_position {
                        self.violation(
                            Some(&k),
                            Some(p),
                            format!(
                                "version {ver} of stream '{s}' is at position {p}, not after version {}'s position {}",
                                g.version, g.last_position
                            ),
                        );
                    }
                    g.version = ver;
                    g.last_position = p;
                }
            }
        }
        if let Some(g) = group.take() {
            self.finish_stream(txn, &mut metas, g).await?;
        }
        // Metadata of streams with no index entry at all.
        while let Some((k, v)) = self.next_meta(txn, &mut metas).await? {
            self.meta_without_entries(&k, &v);
        }
        Ok(())
    }

    /// Pops the next metadata pair, counting streams.
    async fn next_meta(
        &mut self,
        txn: &mut dyn KvTransaction,
        metas: &mut Cursor,
    ) -> Result<Option<KvPair>> {
        if metas.peek(txn).await?.is_none() {
            return Ok(None);
        }
        let pair = metas.pop();
        if pair.is_some() {
            self.report.streams += 1;
            self.report.keys += 1;
        }
        Ok(pair)
    }

    fn meta_without_entries(&mut self, k: &[u8], v: &[u8]) {
        let name = match layout::parse_stream_meta_key(k) {
            Ok(s) => format!("stream '{s}'"),
            Err(e) => {
                self.violation(
                    Some(k),
                    None,
                    format!("stream key does not parse ({})", corrupt_message(&e)),
                );
                return;
            }
        };
        let what = match StreamMeta::decode(v) {
            Ok(m) => {
                // Every version removed by compaction: no entries left.
                let stream = layout::parse_stream_meta_key(k).unwrap_or_default();
                if self.first_kept_version(&stream) > m.version {
                    return;
                }
                format!("version {}", m.version)
            }
            Err(e) => corrupt_message(&e),
        };
        self.violation(
            Some(k),
            None,
            format!("{name} has metadata ({what}) but no stream index entries"),
        );
    }

    /// Matches a finished group of index entries with its metadata.
    async fn finish_stream(
        &mut self,
        txn: &mut dyn KvTransaction,
        metas: &mut Cursor,
        g: StreamGroup,
    ) -> Result<()> {
        loop {
            let Some((k, _)) = metas.peek(txn).await? else {
                break;
            };
            let before = match layout::parse_stream_meta_key(k) {
                Ok(s) => s < g.stream,
                // Malformed keys sort by bytes; report them where found.
                Err(_) => k.as_slice() < layout::stream_key(&g.stream).as_slice(),
            };
            if !before {
                break;
            }
            if let Some((k, v)) = self.next_meta(txn, metas).await? {
                self.meta_without_entries(&k, &v);
            }
        }
        let key = layout::stream_key(&g.stream);
        let matches = matches!(metas.peek(txn).await?, Some((k, _)) if *k == key);
        if !matches {
            self.violation(
                Some(&key),
                Some(g.last_position),
                format!(
                    "stream '{}' has index entries up to version {} but no metadata",
                    g.stream, g.version
                ),
            );
            return Ok(());
        }
        let Some((k, v)) = self.next_meta(txn, metas).await? else {
            return Ok(());
        };
        match StreamMeta::decode(&v) {
            Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
            Ok(m) => {
                if m.version != g.version {
                    self.violation(
                        Some(&k),
                        Some(g.last_position),
                        format!(
                            "stream '{}' metadata says version {}, its index ends at version {}",
                            g.stream, m.version, g.version
                        ),
                    );
                } else if m.last_position != g.last_position {
                    self.violation(
                        Some(&k),
                        Some(m.last_position),
                        format!(
                            "stream '{}' metadata says its last event is at position {}, the index says {}",
                            g.stream, m.last_position, g.last_position
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Category, type or tag index → log.
    async fn positional(
        &mut self,
        txn: &mut dyn KvTransaction,
        range: KeyRange,
        kind: Positional,
    ) -> Result<()> {
        let table = kind.name();
        let mut pager = Pager::new(range, PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let (s, p) = match layout::parse_positional_key(&k) {
                    Ok(x) => x,
                    Err(e) => {
                        self.violation(
                            Some(&k),
                            None,
                            format!("{table} index key does not parse ({})", corrupt_message(&e)),
                        );
                        continue;
                    }
                };
                // The seal is checked here; the value itself by the log
                // pass: a tag entry's (type, tags) copy against its event,
                // category and type entries for being empty. An entry
                // whose event does not carry it is reported below.
                if let Err(e) = layout::open_index_value(&k, &v) {
                    self.violation(Some(&k), Some(p), corrupt_message(&e));
                    continue;
                }
                entries.push((k, s, p));
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, s, p), e) in entries.into_iter().zip(events) {
                let e = match e {
                    None => {
                        self.violation(
                            Some(&k),
                            Some(p),
                            format!("{table} index entry '{s}' points at position {p}, which holds no event"),
                        );
                        continue;
                    }
                    Some(Err(_)) => continue,
                    Some(Ok(e)) => e,
                };
                let ok = match kind {
                    Positional::Type => e.event_type == s,
                    Positional::Category => e
                        .stream
                        .as_ref()
                        .is_some_and(|r| layout::category_of(&r.stream_id) == s),
                    Positional::Tag => e.tags.contains(&s),
                };
                if !ok {
                    let has = match kind {
                        Positional::Type => format!("type '{}'", e.event_type),
                        Positional::Category => match &e.stream {
                            Some(r) => format!("category '{}'", layout::category_of(&r.stream_id)),
                            None => "no stream".into(),
                        },
                        Positional::Tag => format!("tags {:?}", e.tags),
                    };
                    self.violation(
                        Some(&k),
                        Some(p),
                        format!("{table} index entry '{s}' points at position {p}, whose event has {has}"),
                    );
                }
            }
        }
        Ok(())
    }

    async fn registry(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::registry_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                if let Err(e) = layout::parse_registry_key_strict(&k) {
                    self.violation(
                        Some(&k),
                        None,
                        format!("registry key does not parse ({})", corrupt_message(&e)),
                    );
                } else if !v.is_empty() {
                    self.violation(
                        Some(&k),
                        None,
                        format!("registry entry holds {} bytes, expected none", v.len()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Subscription state (`0x50`): every key parses as one of the
    /// layout's state families ([`layout::parse_state_key`]); checkpoints
    /// (of named subscriptions, group partitions and projections), parked
    /// events and rebuild records decode and are not past the head. Leases,
    /// members, read-model values and snapshots are only checked for their
    /// keys: their values are their owners' business.
    async fn subscriptions(&mut self, txn: &mut dyn KvTransaction, head: Head) -> Result<()> {
        use layout::{ConsumerId, StateKey};
        let head = match head {
            Head::At(h) => Some(h),
            Head::Missing => Some(0),
            Head::Unreadable => None,
        };
        let mut pager = Pager::new(layout::subscription_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                let parsed = match layout::parse_state_key(&k) {
                    Ok(p) => p,
                    Err(e) => {
                        self.violation(
                            Some(&k),
                            None,
                            format!(
                                "subscription-state key does not parse ({})",
                                corrupt_message(&e)
                            ),
                        );
                        continue;
                    }
                };
                let owner = |c: &ConsumerId| c.as_consumer().to_string();
                let (what, pos) = match &parsed {
                    StateKey::Checkpoint(c) => match layout::parse_u64(&v, "checkpoint") {
                        Ok(p) => (format!("checkpoint of {}", owner(c)), p),
                        Err(e) => {
                            self.violation(Some(&k), None, corrupt_message(&e));
                            continue;
                        }
                    },
                    StateKey::ProjectionCheckpoint { name } => {
                        match layout::parse_projection_checkpoint(&v) {
                            Ok((_, p)) => (format!("projection-checkpoint of '{name}'"), p),
                            Err(e) => {
                                self.violation(Some(&k), None, corrupt_message(&e));
                                continue;
                            }
                        }
                    }
                    StateKey::ProjectionRebuild { name } => {
                        match layout::ProjectionRebuild::decode(&v) {
                            Ok(r) => (
                                format!(
                                    "rebuild of projection '{name}' (generation {})",
                                    r.generation
                                ),
                                r.position,
                            ),
                            Err(e) => {
                                self.violation(Some(&k), None, corrupt_message(&e));
                                continue;
                            }
                        }
                    }
                    StateKey::DeadLetter { consumer, position } => {
                        (format!("parked event of {}", owner(consumer)), *position)
                    }
                    StateKey::Lease { .. }
                    | StateKey::Member { .. }
                    | StateKey::ReadModel { .. }
                    | StateKey::StreamSnapshot(_)
                    | StateKey::QuerySnapshot(_)
                    | StateKey::NamedSnapshot(_) => continue,
                };
                if let Some(h) = head {
                    if pos > h {
                        self.violation(
                            Some(&k),
                            Some(pos),
                            format!("{what} is at position {pos}, past the head ({h})"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Keys outside every table of the layout.
    async fn stray_keys(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut tags: Vec<u8> = layout::table_tags().to_vec();
        tags.push(NAMESPACE_TAG);
        tags.sort_unstable();
        let mut ranges = Vec::new();
        let mut start: Bound<Vec<u8>> = Bound::Unbounded;
        for &t in &tags {
            ranges.push(KeyRange {
                start,
                end: Bound::Excluded(vec![t]),
            });
            start = Bound::Included(vec![t.wrapping_add(1)]);
        }
        if tags.last() != Some(&0xFF) {
            ranges.push(KeyRange {
                start,
                end: Bound::Unbounded,
            });
        }
        // The head table holds exactly one key.
        let head = layout::head_key();
        ranges.push(KeyRange {
            start: Bound::Excluded(head.clone()),
            end: Bound::Excluded(vec![head[0].wrapping_add(1)]),
        });
        for range in ranges {
            if range.is_empty() {
                continue;
            }
            let mut pager = Pager::new(range, PAGE);
            while let Some(rows) = self.page(&mut pager, txn).await? {
                for (k, _) in rows {
                    self.violation(
                        Some(&k),
                        None,
                        "key outside every table of the event layout".into(),
                    );
                }
            }
        }
        Ok(())
    }
}
