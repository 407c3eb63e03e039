//! One group commit's decisions: each request of the batch is checked
//! (idempotency, expected version, condition, types) against the batch's
//! snapshot and the requests before it, then written.

use super::live::Live;
use super::options::{AppendRequest, AppendResult};
use super::read::{load_events, scan_index, Order};
use super::types::registered_types;
use super::Inner;
use crate::crypto::{self, SubjectKey, SubjectRecord};
use crate::envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event::{NewEvent, Position};
use crate::kv::{KvPair, KvTransaction, ScanOptions};
use crate::layout::{self, event_rows, IdEntry, Index, StreamMeta};
use crate::lifecycle::{checked_next, StreamLife};
use crate::query::{Query, QueryItem};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use ulid::Ulid;

/// Per-batch state while a group commit is built.
pub(super) struct Batch<'a> {
    /// The head at the batch's snapshot.
    head0: Position,
    head: Position,
    strict: bool,
    /// The log's first live position: a stream whose last event lies
    /// below it reads as absent.
    log_cut: Position,
    now_ms: u64,
    /// Idempotency entries written by earlier requests of this batch.
    ids: HashMap<Ulid, IdEntry>,
    /// Stream heads written by earlier requests of this batch.
    streams: HashMap<String, StreamMeta>,
    /// Events appended by earlier requests of this batch, with positions.
    appended: Vec<(Position, &'a NewEvent)>,
    /// Subject keys read or created by this batch (`None`: unusable, the
    /// record was read but no store key opens it).
    subjects: HashMap<String, SubjectKey>,
}

/// The data subjects of a request's personal parts.
fn subjects_of(req: &AppendRequest) -> Vec<&str> {
    let mut v: Vec<&str> = req
        .events
        .iter()
        .filter_map(|e| e.personal.as_ref().map(|p| p.subject()))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// How many index entries a condition probe reads in the batch's one read.
pub(super) const PROBE_PAGE: usize = 32;

/// The index scans that decide whether `query` matches anything at or
/// after `lo`: one per type for type-only items, one on the first tag for
/// items with tags (checked against the entry's type and tags).
pub(super) fn condition_probes(query: &Query) -> Vec<(Index<'_>, &QueryItem)> {
    let mut out = Vec::new();
    for item in &query.items {
        match item.tags.first() {
            None => out.extend(item.types.iter().map(|t| (Index::Type(t), item))),
            Some(tag) => out.push((Index::Tag(tag), item)),
        }
    }
    out
}

/// True when an index entry of `index` (with value `v`) matches `item`.
pub(super) fn probe_keeps(index: Index<'_>, item: &QueryItem, v: &[u8]) -> Result<bool> {
    match index {
        // The index of the item's only tag, any type: every entry matches.
        Index::Tag(_) if item.types.is_empty() && item.tags.len() == 1 => Ok(true),
        Index::Tag(_) => {
            let (t, tags) = layout::parse_tag_entry(v)?;
            Ok(item.matches_parts(&t, &tags))
        }
        _ => Ok(true),
    }
}

/// What one request of a group commit came to. An error that aborts the
/// whole batch (and may be retried) is the `Err` around these instead.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Its writes are buffered in the batch's transaction.
    Appended(AppendResult),
    /// The same events were appended before: the original result, nothing
    /// written.
    Replayed(AppendResult),
    /// Rejected on its own (expected version, condition, idempotency,
    /// types); the batch's other requests go on.
    Rejected(Error),
}

impl Verdict {
    /// The answer its caller gets.
    pub(super) fn into_result(self) -> Result<AppendResult> {
        match self {
            Verdict::Appended(r) | Verdict::Replayed(r) => Ok(r),
            Verdict::Rejected(e) => Err(e),
        }
    }
}

/// One request's share of the batch's single prefetch read.
pub(super) struct Prefetched {
    /// The idempotency entry of each of its events' ids, if any.
    ids: Vec<Option<Vec<u8>>>,
    /// Its stream's head, when it appends to a stream.
    stream_meta: Option<Vec<u8>>,
    /// Its stream's lifecycle record, when it appends to a stream.
    stream_life: Option<Vec<u8>>,
    /// The key record of each data subject of its personal parts.
    subjects: Vec<Option<Vec<u8>>>,
    /// The first page of each of its condition's index probes.
    probes: Vec<Vec<KvPair>>,
}

impl Inner {
    /// One attempt at a group commit. The outer error aborts the whole
    /// batch (and is retried if retryable); inner errors reject single
    /// requests.
    pub(super) async fn execute(&self, reqs: &[&AppendRequest]) -> Result<Vec<Verdict>> {
        let mut txn = self.kv.begin().await?;
        // One read for the whole batch: head, strict flag, and every
        // request's idempotency entries and stream head.
        let mut keys = vec![
            layout::head_key(),
            layout::strict_key(),
            layout::log_life_key(),
        ];
        for req in reqs {
            keys.extend(req.events.iter().map(|e| layout::id_key(e.id)));
            if let Some((s, _)) = &req.stream {
                keys.push(layout::stream_key(s));
                keys.push(layout::stream_life_key(s));
            }
            keys.extend(subjects_of(req).into_iter().map(layout::subject_key));
        }
        // ...and the first page of every condition probe.
        let mut scans = Vec::new();
        for req in reqs {
            if let Some(c) = &req.condition {
                let lo = c.after.map_or(1, |a| a.saturating_add(1));
                for (index, _) in condition_probes(&c.fail_if_events_match) {
                    scans.push((
                        index.range(lo, Position::MAX),
                        ScanOptions::forward(Some(PROBE_PAGE)),
                    ));
                }
            }
        }
        let (vals, probe_rows) = txn.read_many(&keys, &scans).await?;
        let mut vals = vals.into_iter();
        let mut probe_rows = probe_rows.into_iter();
        let head0 = vals
            .next()
            .flatten()
            .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))?;
        let mut batch = Batch {
            head0,
            appended: Vec::new(),
            head: head0,
            strict: vals.next().flatten().as_deref() == Some(&[1u8][..]),
            log_cut: super::live::log_cut_of(vals.next().flatten().as_deref())?,
            now_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ids: HashMap::new(),
            streams: HashMap::new(),
            subjects: HashMap::new(),
        };
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            let ids: Vec<Option<Vec<u8>>> = vals.by_ref().take(req.events.len()).collect();
            let (stream_meta, stream_life) = match &req.stream {
                Some(_) => (vals.next().flatten(), vals.next().flatten()),
                None => (None, None),
            };
            let subjects: Vec<Option<Vec<u8>>> =
                vals.by_ref().take(subjects_of(req).len()).collect();
            let probes: Vec<Vec<KvPair>> = match &req.condition {
                Some(c) => probe_rows
                    .by_ref()
                    .take(condition_probes(&c.fail_if_events_match).len())
                    .collect(),
                None => Vec::new(),
            };
            let prefetched = Prefetched {
                ids,
                stream_meta,
                stream_life,
                subjects,
                probes,
            };
            results.push(self.apply(&mut *txn, &mut batch, req, prefetched).await?);
        }
        if batch.head != head0 {
            txn.put(layout::head_key(), layout::u64_value(batch.head));
            txn.commit().await?;
        }
        // Also after an all-replay batch: its events were committed by an
        // earlier attempt whose answer was lost.
        self.publish_head(batch.head);
        Ok(results)
    }

    /// Checks one request against the batch's view and, if it passes,
    /// buffers its writes. All checks come before the first write, so a
    /// rejected request leaves nothing behind. What was prefetched may
    /// have been superseded by this batch's earlier requests, which
    /// `batch` records.
    pub(super) async fn apply<'a>(
        &self,
        txn: &mut dyn KvTransaction,
        batch: &mut Batch<'a>,
        req: &'a AppendRequest,
        prefetched: Prefetched,
    ) -> Result<Verdict> {
        let Prefetched {
            ids,
            stream_meta: meta,
            stream_life,
            subjects,
            probes,
        } = prefetched;
        let life = stream_life
            .as_deref()
            .map(StreamLife::decode)
            .transpose()?
            .unwrap_or_default();
        let mut found: Vec<Option<IdEntry>> = req
            .events
            .iter()
            .zip(ids)
            .map(|(e, v)| match batch.ids.get(&e.id) {
                Some(x) => Ok(Some(*x)),
                None => v
                    .map(|v| IdEntry::decode(layout::open_index_value(&layout::id_key(e.id), &v)?))
                    .transpose(),
            })
            .collect::<Result<_>>()?;
        let meta = match &req.stream {
            Some((s, _)) => match batch.streams.get(s) {
                Some(m) => Some(*m),
                None => meta.map(|v| StreamMeta::decode(&v)).transpose()?,
            },
            None => None,
        };

        // Idempotency sees only live events: the id of a released event
        // is free again (its entry is overwritten, and compaction keeps
        // an entry that no longer points at the event it removes).
        if found.iter().any(Option::is_some) {
            self.forget_released_ids(txn, &mut found).await?;
        }
        // Idempotency: the same ids again is a replay of the original.
        if found.iter().any(Option::is_some) {
            return self.replay(txn, req, &found).await;
        }

        if let Some((stream, _)) = &req.stream {
            if life.tombstoned {
                return Ok(Verdict::Rejected(Error::StreamTombstoned {
                    stream: stream.clone(),
                }));
            }
        }

        if batch.strict {
            if let Some(e) = self.unknown_types(txn, req).await? {
                return Ok(Verdict::Rejected(e));
            }
        }

        if let Some((stream, expected)) = &req.stream {
            let actual = meta.map(|m| m.version);
            // A soft-deleted stream reads as absent, so `NoStream` accepts
            // it; its version continues, so `Exact` compares the real one.
            let absent = life.reads_absent(actual.unwrap_or(0))
                || meta.is_some_and(|m| m.last_position < batch.log_cut);
            let ok = match *expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => absent,
                ExpectedVersion::StreamExists => !absent,
                ExpectedVersion::Exact(v) => actual == Some(v),
            };
            if !ok {
                return Ok(Verdict::Rejected(Error::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                }));
            }
        }

        if let Some(c) = &req.condition {
            if let Some(after) = c.after {
                if after > batch.head {
                    return Ok(Verdict::Rejected(Error::invalid(format!(
                        "condition's after ({after}) is past the head ({}); pass the consistent_through of the read your decision used",
                        batch.head
                    ))));
                }
            }
            let lo = c.after.map_or(1, |a| a.saturating_add(1));
            if let Some(position) =
                condition_hit(txn, batch, &c.fail_if_events_match, lo, probes).await?
            {
                return Ok(Verdict::Rejected(Error::ConditionFailed {
                    position,
                    after: c.after,
                }));
            }
        }

        // Numbers: positions and versions never wrap (checked before any
        // write of this request, like every other check).
        let n = req.events.len() as u64;
        let numbers = checked_next(batch.head, n.max(1), "the log's positions").and_then(|last| {
            if req.stream.is_some() {
                let v = meta.map_or(0, |m| m.version);
                checked_next(v, n, "the stream's versions")?;
            }
            Ok(last)
        });
        let last = match numbers {
            Ok(last) => last,
            Err(e) => return Ok(Verdict::Rejected(e)),
        };

        // Personal parts: sealed under their subjects' keys (a subject
        // seen for the first time, or forgotten before, gets a new key).
        let mut sealed = Vec::with_capacity(req.events.len());
        if req.events.iter().any(|e| e.personal.is_some()) {
            let Some(store_key) = self.opts.store_key.as_ref() else {
                return Ok(Verdict::Rejected(super::live::no_store_key()));
            };
            for (subject, rec) in subjects_of(req).into_iter().zip(subjects) {
                if batch.subjects.contains_key(subject) {
                    continue;
                }
                let rec = rec.as_deref().map(SubjectRecord::decode).transpose()?;
                let key = match &rec {
                    Some(r) => crypto::unwrap_subject_key(store_key, subject, r)?,
                    None => None,
                };
                let key = match key {
                    Some(k) => k,
                    None => {
                        let generation = rec.map_or(1, |r| r.generation + 1);
                        let (k, r) = crypto::new_subject_key(store_key, subject, generation);
                        txn.put(layout::subject_key(subject), r.encode());
                        k
                    }
                };
                batch.subjects.insert(subject.to_owned(), key);
            }
            for e in &req.events {
                sealed.push(e.personal.as_ref().and_then(|p| {
                    let plain = p.bytes()?;
                    let key = batch.subjects.get(p.subject())?;
                    Some(crypto::seal_part(key, e.id, p.subject(), plain))
                }));
            }
        }

        // Encode everything first; then buffer the writes.
        // No overflow: `last` and the stream's last version were checked.
        let first = batch.head + 1;
        let mut version = meta.map_or(0, |m| m.version);
        let stream = req.stream.as_ref().map(|(s, _)| s.as_str());
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(req.events.len() * 6);
        let mut entries = Vec::with_capacity(req.events.len());
        for (i, e) in req.events.iter().enumerate() {
            let pos = first + i as u64;
            let sref = stream.map(|s| {
                version += 1;
                (s, version)
            });
            let personal = e
                .personal
                .as_ref()
                .zip(sealed.get(i).and_then(Option::as_ref))
                .map(|(p, s)| (p.subject(), s));
            entries.push(event_rows(
                &mut rows,
                pos,
                e,
                batch.now_ms,
                (sref, personal),
                (first, last),
            )?);
        }
        for (e, entry) in req.events.iter().zip(entries) {
            batch.appended.push((entry.position, e));
            batch.ids.insert(e.id, entry);
        }
        for (k, v) in rows {
            if layout::event_row_is_new(&k) {
                txn.put_new(k, v);
            } else {
                txn.put(k, v);
            }
        }
        if let Some(s) = stream {
            let m = StreamMeta {
                version,
                last_position: last,
            };
            txn.put(layout::stream_key(s), m.encode());
            batch.streams.insert(s.to_owned(), m);
        }
        batch.head = last;
        Ok(Verdict::Appended(AppendResult {
            first_position: first,
            last_position: last,
            stream_version: stream.map(|_| version),
        }))
    }

    /// Some ids already exist: succeed with the original result if this is
    /// an exact replay, else reject.
    pub(super) async fn replay(
        &self,
        txn: &mut dyn KvTransaction,
        req: &AppendRequest,
        found: &[Option<IdEntry>],
    ) -> Result<Verdict> {
        let existing = found.iter().filter(|v| v.is_some()).count();
        let violation =
            |message: String| Ok(Verdict::Rejected(Error::IdempotencyViolation { message }));
        if existing < req.events.len() {
            let ids: Vec<String> = req
                .events
                .iter()
                .zip(found)
                .filter(|(_, f)| f.is_some())
                .map(|(e, _)| e.id.to_string())
                .collect();
            return violation(format!(
                "{existing} of {} event ids already exist ({}); an append is replayed only with exactly the same ids in the same order",
                req.events.len(),
                ids.join(", ")
            ));
        }
        let entries: Vec<IdEntry> = found.iter().flatten().copied().collect();
        let first = entries[0].append_first;
        let last = entries[0].append_last;
        let whole = entries.iter().enumerate().all(|(i, e)| {
            e.position == first + i as u64 && e.append_first == first && e.append_last == last
        }) && last - first + 1 == entries.len() as u64;
        if !whole {
            return violation(format!(
                "these event ids were appended, but not as exactly this append (the original append covered positions {first}..={last}); an append is replayed only with exactly the same ids in the same order"
            ));
        }
        let positions: Vec<Position> = entries.iter().map(|e| e.position).collect();
        let stored = load_events(txn, &positions).await?;
        let want_stream = req.stream.as_ref().map(|(s, _)| s.as_str());
        for ((e, s), entry) in req.events.iter().zip(&stored).zip(&entries) {
            let got_stream = s.stream.as_ref().map(|r| r.stream_id.as_str());
            if s.event_type != e.event_type || got_stream != want_stream {
                return violation(format!(
                    "event id {} was already appended with type '{}' to {}, not type '{}' to {}",
                    e.id,
                    s.event_type,
                    got_stream.map_or("no stream".to_string(), |x| format!("stream '{x}'")),
                    e.event_type,
                    want_stream.map_or("no stream".to_string(), |x| format!("stream '{x}'")),
                ));
            }
            // Same ids, type and stream: the content must match too, or
            // the new data would be dropped in silence. The digest is what
            // the id entry holds; the stored event (already loaded) is
            // compared as well, so a digest collision cannot pass.
            let differs: Vec<&str> = [
                ("data", s.data != e.data),
                ("tags", s.tags != e.tags),
                ("metadata", !same_metadata(&s.metadata, &e.metadata)),
                ("content digest", !digest_matches(entry.digest, e)),
            ]
            .into_iter()
            .filter_map(|(what, d)| d.then_some(what))
            .collect();
            if !differs.is_empty() {
                return violation(format!(
                    "event id {} was already appended (at position {}) with other {}; a retry must repeat the same events, and a new event needs a new id",
                    e.id,
                    entry.position,
                    differs.join(", "),
                ));
            }
        }
        tracing::debug!(first, "idempotent replay of an earlier append");
        Ok(Verdict::Replayed(AppendResult {
            first_position: first,
            last_position: last,
            stream_version: stored
                .last()
                .and_then(|e| e.stream.as_ref().map(|s| s.version)),
        }))
    }

    /// Strict mode: every type must be registered. Returns the rejection
    /// for the first type that is not.
    pub(super) async fn unknown_types(
        &self,
        txn: &mut dyn KvTransaction,
        req: &AppendRequest,
    ) -> Result<Option<Error>> {
        let unknown: Vec<&str> = {
            let known = self.known_types.read().unwrap_or_else(|p| p.into_inner());
            let mut u: Vec<&str> = req
                .events
                .iter()
                .map(|e| e.event_type.as_str())
                .filter(|t| !known.contains(*t))
                .collect();
            u.sort();
            u.dedup();
            u
        };
        if unknown.is_empty() {
            return Ok(None);
        }
        let keys: Vec<Vec<u8>> = unknown.iter().map(|t| layout::registry_key(t)).collect();
        let found = txn.get_many(&keys).await?;
        if let Some((t, _)) = unknown.iter().zip(&found).find(|(_, f)| f.is_none()) {
            let registered = registered_types(txn).await?;
            let nearest = registered
                .iter()
                .map(|r| (strsim::damerau_levenshtein(t, r), r))
                .filter(|(d, r)| *d <= (r.len().max(t.len()) / 2).max(2))
                .min()
                .map(|(_, r)| r.clone());
            return Ok(Some(Error::UnknownEventType {
                event_type: (*t).to_string(),
                nearest,
            }));
        }
        self.known_types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(unknown.iter().map(|t| t.to_string()));
        Ok(None)
    }
}

/// The lowest live position among `positions` (ascending).
async fn first_live(
    txn: &mut dyn KvTransaction,
    live: &mut Live<'_>,
    positions: &[Position],
) -> Result<Option<Position>> {
    if positions.is_empty() {
        return Ok(None);
    }
    let loaded = load_events(txn, positions).await?;
    Ok(live
        .live_only(txn, loaded)
        .await?
        .iter()
        .map(|e| e.position)
        .min())
}

impl Inner {
    /// Drops the id entries of `found` whose events were released: their
    /// ids are free again.
    async fn forget_released_ids(
        &self,
        txn: &mut dyn KvTransaction,
        found: &mut [Option<IdEntry>],
    ) -> Result<()> {
        let positions: Vec<Position> = found.iter().flatten().map(|e| e.position).collect();
        let loaded = load_events(txn, &positions).await?;
        let alive: std::collections::HashSet<Position> = Live::new(None)
            .live_only(txn, loaded)
            .await?
            .iter()
            .map(|e| e.position)
            .collect();
        for f in found.iter_mut() {
            if f.is_some_and(|e| !alive.contains(&e.position)) {
                *f = None;
            }
        }
        Ok(())
    }
}

/// The digest of `e`'s content kept in its id entry.
pub(super) fn digest_of(e: &NewEvent) -> u32 {
    layout::content_digest(&e.tags, &e.data, &e.metadata)
}

/// Metadata with schema version 1 said explicitly, and without it (what
/// it reads as), is the same metadata to the replay check: typed events
/// say their version, 1 included, where earlier releases left it unsaid,
/// so a retry across an upgrade must still be a replay.
fn same_metadata(a: &crate::Metadata, b: &crate::Metadata) -> bool {
    a == b || a == &version_one_toggled(b).unwrap_or_else(|| b.clone())
}

/// Whether `digest` is the content digest of `e`, with its schema
/// version 1 said or unsaid (see [`same_metadata`]).
fn digest_matches(digest: u32, e: &NewEvent) -> bool {
    digest == digest_of(e)
        || version_one_toggled(&e.metadata)
            .is_some_and(|m| digest == layout::content_digest(&e.tags, &e.data, &m))
}

/// `m` with an explicit schema version "1" removed, or added where it
/// says none; `None` when it says another version.
fn version_one_toggled(m: &crate::Metadata) -> Option<crate::Metadata> {
    let key = crate::SCHEMA_VERSION_KEY;
    let mut t = m.clone();
    match m.extra.get(key).map(String::as_str) {
        Some("1") => {
            t.extra.remove(key);
        }
        None => {
            t.extra.insert(key.to_owned(), "1".to_owned());
        }
        Some(_) => return None,
    }
    Some(t)
}

/// The first position at or after `lo` of an event matching `query`, as
/// seen by this batch: the snapshot (from the probes' prefetched first
/// pages, scanning further only when a full page held no match) and the
/// events appended by earlier requests of the batch.
pub(super) async fn condition_hit(
    txn: &mut dyn KvTransaction,
    batch: &Batch<'_>,
    query: &Query,
    lo: Position,
    probes: Vec<Vec<KvPair>>,
) -> Result<Option<Position>> {
    let mut hit: Option<Position> = None;
    let mut live = Live::new(None);
    live.note_log_cut_position(batch.log_cut);
    if query.is_all() {
        // The first live event of the log at or after `lo`.
        let mut from = lo;
        while hit.is_none() && from <= batch.head0 {
            let rows = txn
                .scan(
                    layout::log_range(from, batch.head0),
                    ScanOptions::forward(Some(PROBE_PAGE)),
                )
                .await?;
            let Some((k, _)) = rows.last() else { break };
            from = layout::parse_log_key(k)? + 1;
            let events = rows
                .iter()
                .map(|(k, v)| envelope::decode(v, layout::parse_log_key(k)?))
                .collect::<Result<Vec<_>>>()?;
            hit = live
                .live_only(txn, events)
                .await?
                .first()
                .map(|e| e.position);
        }
    } else {
        for ((index, item), rows) in condition_probes(query).into_iter().zip(probes) {
            let full = rows.len() >= PROBE_PAGE;
            let mut last = None;
            let mut candidates = Vec::new();
            for (k, v) in &rows {
                let pos = index.parse_position(k)?;
                last = Some(pos);
                // Probe rows come from the snapshot: they can only be at
                // or below the snapshot's head.
                if pos <= batch.head0 && probe_keeps(index, item, layout::open_index_value(k, v)?)?
                {
                    candidates.push(pos);
                }
            }
            // DCB conditions see only live events: a released match is
            // skipped, and the probe reads on past it.
            let mut found = first_live(txn, &mut live, &candidates).await?;
            while found.is_none() && full {
                let Some(l) = last else { break };
                let more = scan_index(
                    txn,
                    index,
                    l + 1,
                    batch.head0,
                    Order::Forward,
                    Some(PROBE_PAGE),
                    |v| probe_keeps(index, item, v),
                )
                .await?;
                found = first_live(txn, &mut live, &more).await?;
                if more.len() < PROBE_PAGE {
                    break;
                }
                last = more.last().copied();
            }
            if let Some(p) = found {
                hit = Some(hit.map_or(p, |h| h.min(p)));
            }
        }
    }
    if hit.is_none() {
        hit = batch
            .appended
            .iter()
            .find(|(p, e)| *p >= lo && query.matches_parts(&e.event_type, &e.tags))
            .map(|(p, _)| *p);
    }
    Ok(hit)
}
