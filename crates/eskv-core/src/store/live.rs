//! The one filter step every read path runs on the events it loaded:
//! drops events released by their stream's retention, deletion or
//! tombstone, and opens (or marks erased) personal parts. Reads, DCB
//! condition checks and idempotency lookups all go through [`Live`], so a
//! removed event is invisible to each of them in the same way.

use super::options::{EventStoreOptions, PersonalParts};
use super::read::stream_events_as_stored;
use crate::crypto::{self, StoreKey, SubjectKey, SubjectRecord};
use crate::error::{Error, Result};
use crate::event::{PersonalContent, RecordedEvent, StreamVersion};
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout::{self, StreamMeta};
use crate::lifecycle::{LogLife, StreamLife};
use std::collections::HashMap;

/// A stream's version and lifecycle record, as a read sees them.
pub(crate) type StreamState = (StreamVersion, StreamLife);

/// Per-read cache of stream lifecycle records and subject keys.
pub(crate) struct Live<'a> {
    store_key: Option<&'a StoreKey>,
    /// Leave live personal parts sealed (`PersonalParts::Sealed`).
    sealed: bool,
    now_ms: u64,
    /// Whether this read's snapshot holds any lifecycle record at all
    /// (from [`Live::life_probe`], read in the same snapshot); `None`: not
    /// probed, so each stream's record is looked up.
    any_life: Option<bool>,
    /// `None`: the stream has no lifecycle record (every event live).
    streams: HashMap<String, Option<StreamState>>,
    /// Whether some entry of `streams` holds a record (else every event
    /// of a loaded stream is live, and the per-event check is skipped).
    any_state: bool,
    /// `None`: forgotten.
    subjects: HashMap<String, Option<SubjectKey>>,
    /// In sealed mode: the generation of each subject's live key (`None`:
    /// forgotten); nothing is unwrapped.
    generations: HashMap<String, Option<u64>>,
    /// The log's first live position (`LogLife::truncate_before`), once
    /// read: every event below it is released.
    log_cut: Option<u64>,
}

pub(crate) use crate::recorded_at::now_ms;

impl<'a> Live<'a> {
    pub(crate) fn new(store_key: Option<&'a StoreKey>) -> Self {
        Live {
            store_key,
            sealed: false,
            now_ms: now_ms(),
            any_life: None,
            streams: HashMap::new(),
            any_state: false,
            subjects: HashMap::new(),
            generations: HashMap::new(),
            log_cut: None,
        }
    }

    /// The read filter of a store with these options.
    pub(crate) fn of(opts: &'a EventStoreOptions) -> Self {
        Live {
            sealed: opts.personal_parts == PersonalParts::Sealed,
            ..Live::new(opts.store_key.as_ref())
        }
    }

    /// The scan that tells whether a snapshot holds any lifecycle record:
    /// a read path folds it into its first backend call and hands the rows
    /// to [`note_life_probe`](Self::note_life_probe). Stores that never
    /// had retention, deletion or tombstones then skip every per-stream
    /// lookup.
    pub(crate) fn life_probe() -> (KeyRange, ScanOptions) {
        (
            layout::stream_life_range(None),
            ScanOptions::forward(Some(1)),
        )
    }

    /// Records what [`life_probe`](Self::life_probe) found. The rows must
    /// come from the snapshot every later event of this read is loaded
    /// from: that is what makes "no record" true for all of them.
    pub(crate) fn note_life_probe(&mut self, rows: &[KvPair]) {
        self.any_life = Some(!rows.is_empty());
    }

    /// Records `stream`'s metadata and lifecycle record, read by the caller
    /// in this read's snapshot (saves [`stream_state`](Self::stream_state)
    /// a lookup).
    pub(crate) fn note_stream(
        &mut self,
        stream: &str,
        meta: Option<&[u8]>,
        life: Option<&[u8]>,
    ) -> Result<()> {
        let state = stream_state_of(meta, life)?;
        self.any_state |= state.is_some();
        self.streams.insert(stream.to_owned(), state);
        Ok(())
    }

    /// Records the log's truncation record (`layout::log_life_key`), read
    /// by the caller in this read's snapshot (saves
    /// [`log_cut`](Self::log_cut) a lookup).
    pub(crate) fn note_log_cut(&mut self, v: Option<&[u8]>) -> Result<()> {
        self.log_cut = Some(log_cut_of(v)?);
        Ok(())
    }

    /// Records the log's first live position, already read in this read's
    /// snapshot (an append batch reads it with its prefetch).
    pub(crate) fn note_log_cut_position(&mut self, cut: u64) {
        self.log_cut = Some(cut.max(1));
    }

    /// The log's first live position (1 when it was never truncated),
    /// read once per read.
    pub(crate) async fn log_cut(&mut self, txn: &mut dyn KvTransaction) -> Result<u64> {
        if let Some(c) = self.log_cut {
            return Ok(c);
        }
        let v = txn.get(&layout::log_life_key()).await?;
        self.note_log_cut(v.as_deref())?;
        Ok(self.log_cut.unwrap_or(1))
    }

    /// Loads the lifecycle records of `streams` not seen yet, in one read.
    async fn load_streams(
        &mut self,
        txn: &mut dyn KvTransaction,
        streams: impl Iterator<Item = &str>,
    ) -> Result<()> {
        if self.any_life == Some(false) {
            return Ok(());
        }
        // Events come in runs of one stream: the run's first is enough.
        let mut prev = None;
        let mut missing: Vec<&str> = Vec::new();
        for s in streams {
            if prev != Some(s) && !self.streams.contains_key(s) {
                missing.push(s);
            }
            prev = Some(s);
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = missing
            .iter()
            .flat_map(|s| [layout::stream_key(s), layout::stream_life_key(s)])
            .collect();
        let vals = txn.get_many(&keys).await?;
        for (s, pair) in missing.into_iter().zip(vals.chunks(2)) {
            let state = stream_state_of(pair[0].as_deref(), pair[1].as_deref())?;
            self.any_state |= state.is_some();
            self.streams.insert(s.to_owned(), state);
        }
        Ok(())
    }

    /// The version and lifecycle record of `stream` (`None`: no record).
    pub(crate) async fn stream_state(
        &mut self,
        txn: &mut dyn KvTransaction,
        stream: &str,
    ) -> Result<Option<StreamState>> {
        self.load_streams(txn, std::iter::once(stream)).await?;
        if !self.any_state {
            return Ok(None);
        }
        Ok(self.streams.get(stream).cloned().flatten())
    }

    /// True when `e` is live (its stream's records must be loaded). The
    /// log's cut releases every event below it but a stream's lifecycle
    /// changes (`crate::lifecycle::survives_log_cut`).
    fn is_live(&self, e: &RecordedEvent) -> bool {
        if e.position < self.log_cut.unwrap_or(1) && !crate::lifecycle::survives_log_cut(e) {
            return false;
        }
        if !self.any_state {
            return true;
        }
        let Some(s) = &e.stream else { return true };
        match self.streams.get(&s.stream_id) {
            Some(Some((version, life))) => life.is_live(*version, e, self.now_ms),
            _ => true,
        }
    }

    /// Keeps the live events of `events`, with their personal parts opened
    /// or marked erased. The only filter step of the read paths.
    pub(crate) async fn retain(
        &mut self,
        txn: &mut dyn KvTransaction,
        mut events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>> {
        self.drop_released(txn, &mut events).await?;
        self.open_personal(txn, &mut events).await?;
        Ok(events)
    }

    /// The positions among `events` that are live (no personal part is
    /// opened: for condition and idempotency checks).
    pub(crate) async fn live_only(
        &mut self,
        txn: &mut dyn KvTransaction,
        mut events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>> {
        self.drop_released(txn, &mut events).await?;
        Ok(events)
    }

    /// Drops the events of `events` their streams' records release.
    async fn drop_released(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &mut Vec<RecordedEvent>,
    ) -> Result<()> {
        let streams = events
            .iter()
            .filter_map(|e| e.stream.as_ref().map(|s| s.stream_id.as_str()));
        self.load_streams(txn, streams).await?;
        let cut = if events.is_empty() {
            1
        } else {
            self.log_cut(txn).await?
        };
        if self.any_state || cut > 1 {
            events.retain(|e| self.is_live(e));
        }
        Ok(())
    }

    async fn open_personal(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &mut [RecordedEvent],
    ) -> Result<()> {
        if self.sealed {
            return self.mark_forgotten(txn, events).await;
        }
        let unknown = |s: &str| !self.subjects.contains_key(s);
        for (s, rec) in unread_subject_records(txn, events, unknown).await? {
            let key = match rec {
                None => None,
                Some(rec) => match (&rec.wrapped, self.store_key) {
                    (None, _) => None,
                    (Some(_), None) => return Err(no_store_key()),
                    (Some(_), Some(k)) => crypto::unwrap_subject_key(k, &s, &rec)?,
                },
            };
            self.subjects.insert(s, key);
        }
        for e in events.iter_mut() {
            let Some(p) = e.personal.as_mut() else {
                continue;
            };
            let PersonalContent::Sealed(sealed) = &p.content else {
                continue;
            };
            let opened = match self.subjects.get(p.subject()).cloned().flatten() {
                Some(k) if k.generation == sealed.generation => {
                    let plain = crypto::open_part(&k, e.id, p.subject(), sealed).map_err(
                        |err| match err {
                            Error::Corrupt { message, .. } => {
                                Error::corrupt(Some(e.position), message)
                            }
                            other => other,
                        },
                    )?;
                    PersonalContent::Plain(plain)
                }
                // Forgotten (the record is gone or holds a newer key).
                _ => PersonalContent::Erased,
            };
            p.content = opened;
        }
        Ok(())
    }
}

impl Live<'_> {
    /// Sealed mode: leaves each personal part sealed while its key of
    /// that generation lives, and marks it erased otherwise, reading the
    /// subjects' records but unwrapping nothing.
    async fn mark_forgotten(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &mut [RecordedEvent],
    ) -> Result<()> {
        let unknown = |s: &str| !self.generations.contains_key(s);
        for (s, rec) in unread_subject_records(txn, events, unknown).await? {
            let live = rec.and_then(|rec| rec.wrapped.map(|_| rec.generation));
            self.generations.insert(s, live);
        }
        for p in events.iter_mut().filter_map(|e| e.personal.as_mut()) {
            let PersonalContent::Sealed(sealed) = &p.content else {
                continue;
            };
            if self.generations.get(p.subject()).copied().flatten() != Some(sealed.generation) {
                p.content = PersonalContent::Erased;
            }
        }
        Ok(())
    }
}

/// The subjects of `events`' sealed personal parts for which `unknown`
/// holds, each once (sorted), with its subject record as of `txn`, read in
/// one batch.
async fn unread_subject_records(
    txn: &mut dyn KvTransaction,
    events: &[RecordedEvent],
    unknown: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Option<SubjectRecord>)>> {
    let mut missing: Vec<String> = events
        .iter()
        .filter_map(|e| e.personal.as_ref())
        .filter(|p| matches!(p.content, PersonalContent::Sealed(_)))
        .map(|p| p.subject())
        .filter(|s| unknown(s))
        .map(str::to_owned)
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<u8>> = missing.iter().map(|s| layout::subject_key(s)).collect();
    let vals = txn.get_many(&keys).await?;
    missing
        .into_iter()
        .zip(vals)
        .map(|(s, v)| Ok((s, v.map(|v| SubjectRecord::decode(&v)).transpose()?)))
        .collect()
}

/// A stream's state from its metadata and lifecycle record (`None`: no
/// record, every event live).
fn stream_state_of(meta: Option<&[u8]>, life: Option<&[u8]>) -> Result<Option<StreamState>> {
    let Some(life) = life else { return Ok(None) };
    let version = meta
        .map(StreamMeta::decode)
        .transpose()?
        .map_or(0, |m| m.version);
    Ok(Some((version, StreamLife::decode(life)?)))
}

pub(crate) fn no_store_key() -> Error {
    Error::WrongStoreKey {
        message: "this store holds personal data, and no store key was given: open it with EventStoreOptions::store_key (the key it was written with)".into(),
    }
}

/// The log's first live position from its truncation record (1: never
/// truncated).
pub(crate) fn log_cut_of(v: Option<&[u8]>) -> Result<u64> {
    Ok(v.map(LogLife::decode)
        .transpose()?
        .map_or(1, |l| l.truncate_before.max(1)))
}

/// The first version a read of the stream `info` describes can return
/// now: past what its lifecycle record releases (`info.first_version`),
/// past the events below the log's cut `cut`, and past the leading events
/// the record's `max_age` has released by `now_ms`. The one answer
/// `stream_info` and `list_streams` give, so both agree with the reads.
pub(crate) async fn first_readable_version(
    txn: &mut dyn KvTransaction,
    info: &crate::store::StreamInfo,
    life: Option<&[u8]>,
    cut: u64,
    now_ms: u64,
) -> Result<StreamVersion> {
    let from = first_version_at_cut(txn, info, cut).await?;
    let Some(life) = life.map(StreamLife::decode).transpose()? else {
        return Ok(from);
    };
    if !info.exists {
        return Ok(from);
    }
    first_version_by_age(txn, &info.stream_id, &life, info.version, from, now_ms).await
}

/// The first version of `stream` (at `version`) from `from` on that
/// `life`'s `max_age` has not released by `now_ms`, or `version + 1` when
/// it released them all; `from` without a `max_age`. Events are recorded
/// in version order, so the released ones lead: read a page at a time
/// until the first one kept (the first page holds one event, as most
/// streams keep their first; later pages grow to 256).
pub(crate) async fn first_version_by_age(
    txn: &mut dyn KvTransaction,
    stream: &str,
    life: &StreamLife,
    version: StreamVersion,
    from: StreamVersion,
    now_ms: u64,
) -> Result<StreamVersion> {
    const MOST: usize = 256;
    let mut v = from;
    if life.max_age_ms.is_none() {
        return Ok(v);
    }
    let mut page = 1;
    while v <= version {
        let events = stream_events_as_stored(txn, stream, (v, version), page).await?;
        let full = events.len() == page;
        page = (page * 16).min(MOST);
        for e in events {
            let at = e.stream.as_ref().map_or(v, |s| s.version);
            if life.is_live(version, &e, now_ms) {
                return Ok(at);
            }
            v = at.saturating_add(1);
        }
        if !full {
            break;
        }
    }
    Ok(v.max(version.saturating_add(1)))
}

/// The first live version of a stream that the log cut covers in part,
/// before compaction has raised its record past the cut: the first
/// version at or above `info.first_version` whose event lies at or above
/// `cut`. Versions follow positions, so a binary search over the stream
/// index (point reads, about log2 of the versions below the cut) finds
/// it; a missing entry was removed, so lies below. Otherwise
/// `info.first_version` as it is.
pub(crate) async fn first_version_at_cut(
    txn: &mut dyn KvTransaction,
    info: &crate::store::StreamInfo,
    cut: u64,
) -> Result<StreamVersion> {
    let (mut lo, mut hi) = (info.first_version, info.version);
    if cut <= 1 || !info.exists || lo > hi {
        return Ok(info.first_version);
    }
    let position_of = |v: StreamVersion| layout::stream_event_key(&info.stream_id, v);
    // Most streams start above the cut: one read settles them.
    let first = position_of(lo);
    if let Some(v) = txn.get(&first).await? {
        if layout::parse_stream_entry(&first, &v)? >= cut {
            return Ok(lo);
        }
    }
    // Invariant: the answer lies in lo..=hi (the last version is live:
    // the stream exists, so its last position is at or above the cut).
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let k = position_of(mid);
        let above = match txn.get(&k).await? {
            Some(v) => layout::parse_stream_entry(&k, &v)? >= cut,
            None => false,
        };
        if above {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}
