//! The lifecycle of a stream's events: retention, soft deletion,
//! tombstones, and what compaction has removed.
//!
//! Invariants (see `docs/DESIGN.md`, "Removals"):
//!
//! - Everything a stream releases is a *prefix of its versions*: truncation,
//!   `max_count` and soft deletion each name a first live version, and
//!   compaction removes versions below it. `max_age` releases events by
//!   their own age (also, in practice, a prefix).
//! - Released never comes back: changing the retention raises
//!   `truncate_before` to what the old settings released, so loosening a
//!   setting cannot resurrect an event some reader already saw vanish.
//! - A stream's version continues across a soft delete (as in KurrentDB):
//!   the next append gets the next version, so expected-version checks
//!   never see a version twice.

use crate::error::{Error, Result};
use crate::event::{RecordedEvent, StreamVersion};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A stream's retention: which of its events stay readable. Every setting
/// is optional; an event is released when any setting releases it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Retention {
    /// Keep only the last `max_count` events (at least 1).
    pub max_count: Option<u64>,
    /// Keep only events younger than this (by their `recorded_at`).
    pub max_age: Option<Duration>,
    /// Release every version below this one.
    pub truncate_before: Option<StreamVersion>,
}

impl Retention {
    /// No retention: every event is kept.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only the last `n` events.
    pub fn max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Keeps only events younger than `age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Releases every version below `v`.
    pub fn truncate_before(mut self, v: StreamVersion) -> Self {
        self.truncate_before = Some(v);
        self
    }
}

/// The stored lifecycle record of one stream (`layout::stream_life_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamLife {
    /// Metadata revision: 1 after the first change (retention, delete,
    /// tombstone), +1 per change. 0: never changed by anyone; the record
    /// holds only compaction's progress (or an import's holes) and reads
    /// as no metadata at all (`StreamInfo::metadata_revision` `None`, no
    /// retention, `NoStream` matches).
    pub revision: u64,
    /// Versions below this are released (0 or 1: none).
    pub truncate_before: u64,
    pub max_count: Option<u64>,
    pub max_age_ms: Option<u64>,
    /// Never writable again; reads as absent.
    pub tombstoned: bool,
    /// Versions below this were removed by compaction.
    pub compacted_before: u64,
}

impl StreamLife {
    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        postcard::from_bytes(v).map_err(|e| {
            Error::corrupt(
                None,
                format!("stream lifecycle record does not decode: {e}"),
            )
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The first version not released by count, truncation, deletion or
    /// compaction, for a stream at `version` (age is per event).
    pub(crate) fn first_live(&self, version: StreamVersion) -> StreamVersion {
        if self.tombstoned {
            return version.saturating_add(1);
        }
        let by_count = self
            .max_count
            .map_or(1, |n| version.saturating_add(1).saturating_sub(n));
        by_count
            .max(self.truncate_before)
            .max(self.compacted_before)
            .max(1)
    }

    /// True when a stream at `version` has no live event by count,
    /// truncation or deletion (it reads as absent).
    pub(crate) fn reads_absent(&self, version: StreamVersion) -> bool {
        version == 0 || self.first_live(version) > version
    }

    /// True when `e` (an event of this stream, at `version` now) is live.
    pub(crate) fn is_live(&self, version: StreamVersion, e: &RecordedEvent, now_ms: u64) -> bool {
        let Some(s) = &e.stream else { return true };
        if s.version < self.first_live(version) {
            return false;
        }
        self.max_age_ms
            .is_none_or(|age| e.recorded_at_ms.saturating_add(age) >= now_ms)
    }

    /// The retention as the application sees it: none while the revision
    /// is 0 (stores written before compaction stopped raising
    /// `truncate_before` may hold one there that nobody set).
    pub(crate) fn retention(&self) -> Retention {
        if self.revision == 0 {
            return Retention::default();
        }
        Retention {
            max_count: self.max_count,
            max_age: self.max_age_ms.map(Duration::from_millis),
            truncate_before: (self.truncate_before > 1).then_some(self.truncate_before),
        }
    }
}

/// The log's lifecycle record (`layout::log_life_key`): events at
/// positions below `truncate_before` are released, whatever their stream
/// (DCB events included); compaction has removed every event below
/// `compacted_before`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogLife {
    /// Positions below this are released (0 or 1: none).
    pub truncate_before: u64,
    /// Positions below this were removed by compaction.
    pub compacted_before: u64,
}

impl LogLife {
    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        postcard::from_bytes(v)
            .map_err(|e| Error::corrupt(None, format!("log lifecycle record does not decode: {e}")))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// Event types eskv appends itself (log-only events, no stream), so that
/// subscribers and projections see every lifecycle change. The `$` prefix
/// is reserved: application types must start with a letter. Each carries
/// the tag `$stream:<id>` or `$subject:<id>` and a JSON body.
pub mod system_types {
    /// A stream's retention was set: `{stream, revision, max_count,
    /// max_age_ms, truncate_before}`.
    pub const RETENTION_SET: &str = "$stream-retention-set";
    /// A stream was soft-deleted: `{stream, version}`.
    pub const STREAM_DELETED: &str = "$stream-deleted";
    /// A stream was tombstoned: `{stream, version}`.
    pub const STREAM_TOMBSTONED: &str = "$stream-tombstoned";
    /// A data subject's key was destroyed: `{subject}`.
    pub const SUBJECT_FORGOTTEN: &str = "$subject-forgotten";
    /// Every event below a position was released: `{before, note}`
    /// (tagged [`LOG_TAG`](super::LOG_TAG)).
    pub const LOG_TRUNCATED: &str = "$log-truncated";

    /// True for a stream's lifecycle changes (retention, delete,
    /// tombstone): the log's cut (`EventStore::truncate_log_before`) never
    /// releases them, so every export carries them and a restore keeps the
    /// stream's lifecycle, however old the change.
    pub(crate) fn survives_log_cut(t: &str) -> bool {
        [RETENTION_SET, STREAM_DELETED, STREAM_TOMBSTONED].contains(&t)
    }

    /// True for the types above.
    pub fn is_system(t: &str) -> bool {
        [
            RETENTION_SET,
            STREAM_DELETED,
            STREAM_TOMBSTONED,
            SUBJECT_FORGOTTEN,
            LOG_TRUNCATED,
        ]
        .contains(&t)
    }
}

/// True when the log's cut leaves `e` live: a stream lifecycle change
/// (no stream, a type of [`system_types::survives_log_cut`]).
pub(crate) fn survives_log_cut(e: &RecordedEvent) -> bool {
    e.stream.is_none() && system_types::survives_log_cut(&e.event_type)
}

/// `n + by`, or [`Error::LimitExceeded`] when that would reach `u64::MAX`.
/// Invariant: positions, stream versions and metadata revisions never
/// wrap, and none is ever `u64::MAX` (so `x + 1` of a stored one never
/// overflows); every increment of one goes through here. Import keeps
/// them at most [`Limits::import_ceiling`](crate::Limits::import_ceiling),
/// so this fails only after that many more appends.
pub(crate) fn checked_next(n: u64, by: u64, what: &str) -> Result<u64> {
    n.checked_add(by)
        .filter(|v| *v < u64::MAX)
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{what} ({n} plus {by})"),
            limit: u64::MAX - 1,
            actual: u64::MAX,
        })
}

/// The tag of every `$log-truncated` event.
pub const LOG_TAG: &str = "$log";

/// The tag every system event about `stream` carries.
pub fn stream_tag(stream: &str) -> String {
    format!("$stream:{stream}")
}

/// The tag every system event about data subject `subject` carries.
pub fn subject_tag(subject: &str) -> String {
    format!("$subject:{subject}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_live_combines_every_setting() {
        let mut l = StreamLife::default();
        assert_eq!(l.first_live(10), 1);
        l.max_count = Some(3);
        assert_eq!(l.first_live(10), 8);
        l.truncate_before = 9;
        assert_eq!(l.first_live(10), 9);
        assert!(!l.reads_absent(10));
        l.truncate_before = 11;
        assert!(l.reads_absent(10));
        l.truncate_before = 0;
        l.tombstoned = true;
        assert!(l.reads_absent(10));
        assert_eq!(StreamLife::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn numbers_stop_below_u64_max() {
        assert_eq!(checked_next(u64::MAX - 2, 1, "x").unwrap(), u64::MAX - 1);
        for (n, by) in [(u64::MAX - 1, 1), (u64::MAX, 1), (5, u64::MAX)] {
            assert!(matches!(
                checked_next(n, by, "x"),
                Err(Error::LimitExceeded { .. })
            ));
        }
    }

    #[test]
    fn revision_0_shows_no_retention() {
        let l = StreamLife {
            truncate_before: 5,
            compacted_before: 5,
            ..StreamLife::default()
        };
        assert_eq!(l.retention(), Retention::new());
        let set = StreamLife { revision: 1, ..l };
        assert_eq!(set.retention(), Retention::new().truncate_before(5));
    }
}
