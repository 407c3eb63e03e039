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
//!
//! # Where each pass lives
//!
//! This file holds the report, the entry points and the `Checker` that
//! every pass writes violations into. The passes live beside it, one file
//! per group of tables: `state` (meta, registry, subscription state, stray
//! keys), `lifecycle` (removal runs and retention records, read first),
//! `log` (head, log, and each event's own index entries), `indexes` (id,
//! category, type and tag entries back to their events) and `streams`
//! (stream metadata against the stream index); `pager` reads a table in
//! pages.

mod indexes;
mod lifecycle;
mod log;
mod pager;
mod state;
mod streams;

use crate::envelope;
use crate::error::Result;
use crate::event::{Position, RecordedEvent};
use crate::kv::{KvPair, KvStore, KvTransaction};
use crate::layout;
use crate::store::EventStore;
use indexes::Positional;
use pager::Pager;
use std::fmt;

/// Keys read per scan of an index table.
pub const PAGE: usize = 1024;
/// Events read per scan of the log, and per batch of event lookups.
pub const LOG_PAGE: usize = 256;
/// Violations kept in a report; further ones are only counted.
pub const MAX_VIOLATIONS: usize = 10_000;

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

/// The head key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Missing,
    Unreadable,
    At(Position),
}

/// The state of one check: the report so far and what the passes share.
struct Checker<'a> {
    report: VerifyReport,
    progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
    /// Runs of positions compaction removed, ascending by first position.
    removed: Vec<(Position, Position)>,
    /// Lifecycle records by stream.
    lives: std::collections::HashMap<String, crate::lifecycle::StreamLife>,
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

    /// Reports a key of `table` that does not parse.
    fn unparsed_key(&mut self, key: &[u8], table: &str, e: &crate::Error) {
        let message = format!("{table} key does not parse ({})", corrupt_message(e));
        self.violation(Some(key), None, message);
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
}
