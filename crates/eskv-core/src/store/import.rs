//! Import: bulk loading of recorded events into an empty store, with a
//! marker that makes an interrupted import visible.

use super::read::{read_head, read_stream_meta};
use super::EventStore;
use crate::crypto::SubjectRecord;
use crate::error::{Error, Result};
use crate::event::SealedPersonal;
use crate::event::{NewEvent, Position, RecordedEvent};
use crate::kv::KvTransaction;
use crate::layout::event_rows;
use crate::layout::{self, IdEntry, StreamMeta};
use crate::lifecycle::{LogLife, StreamLife};
use crate::retry::retry;
use crate::validate::{validate_stream_id, validate_subject, validate_tag, validate_type};
use std::collections::{HashMap, HashSet};

impl EventStore {
    /// Writes events exactly as they were recorded elsewhere, for restores
    /// and migrations: ids, positions, stream versions, metadata and
    /// recorded times are kept. The events must continue this store's log
    /// (the first at head + 1, consecutive) and each stream's versions.
    /// One transaction: all or nothing. Returns the new head.
    ///
    /// Positions, stream versions and the numbers in imported lifecycle
    /// events must be at most [`Limits::import_ceiling`], so that appends
    /// after the import have numbers left; larger ones are
    /// [`Error::InvalidInput`], with nothing written.
    ///
    /// [`Limits::import_ceiling`]: crate::Limits::import_ceiling
    pub async fn import(&self, events: &[RecordedEvent]) -> Result<Position> {
        self.import_events(events, false).await
    }

    /// Like [`import`](Self::import), for the export of a store that had
    /// removals (retention, deletion, compaction): the first event may lie
    /// beyond head + 1, and a stream may start at a version above 1. The
    /// positions skipped stay holes, recorded as removals (so `verify`
    /// accepts them), and a stream's skipped first versions stay released.
    /// A `$stream-deleted` or `$stream-tombstoned` event restores its
    /// stream's version even when none of its events is imported (its
    /// metadata then gives last position 0), so a recreated stream
    /// continues after it. The events themselves must still be
    /// consecutive.
    ///
    /// Personal parts come sealed (as [`PersonalParts::Sealed`] reads
    /// return them) or erased, never in clear ([`Error::InvalidInput`]). A
    /// sealed part needs its subject's key record here first
    /// ([`import_subject_keys`](Self::import_subject_keys)); it is stored
    /// as it came while that record holds a key of its generation, and
    /// erased otherwise (the subject was forgotten here).
    ///
    /// [`PersonalParts::Sealed`]: crate::PersonalParts::Sealed
    pub async fn import_after_removals(&self, events: &[RecordedEvent]) -> Result<Position> {
        self.import_events(events, true).await
    }

    async fn import_events(&self, events: &[RecordedEvent], holes: bool) -> Result<Position> {
        let l = &self.inner.opts.limits;
        // Invariant: no imported number leaves the appends after the
        // import without room (see `Limits::import_ceiling`).
        let ceiling = l.import_ceiling();
        let mut ids = HashSet::with_capacity(events.len());
        for e in events {
            if e.position == 0 || e.position > ceiling {
                return Err(Error::invalid(format!(
                    "event {} has position {}: import accepts positions from 1 to {ceiling} (Limits::import_ceiling: numbers are left for appends after the import)",
                    e.id, e.position
                )));
            }
            if let Some(s) = e.stream.as_ref().filter(|s| s.version > ceiling) {
                return Err(Error::invalid(format!(
                    "event {} (position {}) has version {} of stream '{}': import accepts versions up to {ceiling} (Limits::import_ceiling: numbers are left for appends after the import)",
                    e.id, e.position, s.version, s.stream_id
                )));
            }
            if e.recorded_at_ms > crate::recorded_at::MAX_MS {
                return Err(Error::invalid(format!(
                    "event {} (position {}): {}",
                    e.id,
                    e.position,
                    crate::recorded_at::out_of_range(e.recorded_at_ms)
                )));
            }
            // eskv's own lifecycle events come back as they were.
            if !crate::lifecycle::system_types::is_system(&e.event_type) {
                validate_type(&e.event_type, l)?;
            }
            for t in &e.tags {
                validate_tag(t, l)?;
            }
            if let Some(s) = &e.stream {
                validate_stream_id(&s.stream_id, l)?;
            }
            if let Some(p) = &e.personal {
                validate_subject(p.subject(), l)?;
                if p.bytes().is_some() {
                    return Err(Error::invalid(format!(
                        "event {} has a personal part in clear; import writes events as they were stored, so a personal part must come sealed (as `eskv export` writes it) or erased: append new personal data with NewEvent::with_personal_data",
                        e.id
                    )));
                }
            }
            if !ids.insert(e.id) {
                return Err(Error::invalid(format!(
                    "event id {} appears twice in the import",
                    e.id
                )));
            }
        }
        let Some(first) = events.first() else {
            return self.head().await;
        };
        let kv = &self.inner.kv;
        let head = retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            let head = read_head(&mut *txn).await?;
            // Ids first: an import whose commit was applied but reported
            // unknown finds every id at its position and is a replay.
            let id_keys: Vec<Vec<u8>> = events.iter().map(|e| layout::id_key(e.id)).collect();
            let found = txn.get_many(&id_keys).await?;
            if found.iter().any(Option::is_some) {
                let mut replay = true;
                for ((e, f), k) in events.iter().zip(&found).zip(&id_keys) {
                    let mut tags = e.tags.clone();
                    tags.sort();
                    tags.dedup();
                    let at = match f {
                        Some(v) => {
                            let x = IdEntry::decode(layout::open_index_value(k, v)?)?;
                            Some((x.position, x.digest))
                        }
                        None => None,
                    };
                    replay &= at
                        == Some((
                            e.position,
                            layout::content_digest(&tags, &e.data, &e.metadata),
                        ));
                }
                if replay {
                    return Ok(head);
                }
                let (e, _) = events
                    .iter()
                    .zip(&found)
                    .find(|(_, f)| f.is_some())
                    .unwrap_or((first, &None));
                return Err(Error::IdempotencyViolation {
                    message: format!("event id {} already exists in the target store", e.id),
                });
            }
            let next = head.saturating_add(1);
            if first.position <= head || (!holes && first.position != next) {
                return Err(Error::invalid(format!(
                    "the import starts at position {}, but this store's next position is {next}",
                    first.position,
                )));
            }
            // Every position is at most the ceiling (checked above), and
            // they must be consecutive: so must the last one be.
            let base = first.position - 1;
            let last = base
                .checked_add(events.len() as u64)
                .filter(|l| *l <= ceiling)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "an import of {} events from position {} goes beyond position {ceiling}, the highest an import accepts",
                        events.len(),
                        first.position
                    ))
                })?;
            let mut rows = Vec::with_capacity(events.len() * 6);
            // Positions skipped (removed in the source) stay holes, recorded
            // as removals so `verify` accepts them.
            if base > head {
                let k = layout::removed_key(head + 1);
                rows.push((
                    k.clone(),
                    layout::seal_index_value(&k, layout::u64_value(base)),
                ));
            }
            let personal = Personal::read(&mut *txn, events).await?;
            personal.write(&mut rows);
            let mut versions: std::collections::HashMap<&str, u64> =
                std::collections::HashMap::new();
            let mut lives = Lives::default();
            // Streams a deletion or tombstone gives a version that none of
            // their imported events carries (all released in the source):
            // version and last position for their metadata.
            let mut implied: HashMap<String, (u64, u64)> = HashMap::new();
            for (i, e) in events.iter().enumerate() {
                let pos = base + 1 + i as u64;
                if e.position != pos {
                    return Err(Error::invalid(format!(
                        "import positions must be consecutive: expected {pos}, found {}",
                        e.position
                    )));
                }
                let sref = match &e.stream {
                    Some(s) => {
                        let cur = match versions.get(s.stream_id.as_str()) {
                            Some(v) => *v,
                            None => match implied.get(&s.stream_id) {
                                Some((v, _)) => *v,
                                None => read_stream_meta(&mut *txn, &s.stream_id)
                                    .await?
                                    .map_or(0, |m| m.version),
                            },
                        };
                        // A stream's first imported event may skip versions
                        // when everything up to `cur` is released here too
                        // (no version yet, or a kept deletion, tombstone or
                        // retention named them): the versions between were
                        // released in the source.
                        let jump = holes
                            && s.version > cur.saturating_add(1)
                            && !versions.contains_key(s.stream_id.as_str())
                            && (cur == 0
                                || lives.peek(&mut *txn, &s.stream_id).await?.reads_absent(cur));
                        if jump {
                            // The stream's first versions were removed in
                            // the source: they stay removed.
                            let life = lives.get(&mut *txn, &s.stream_id).await?;
                            life.compacted_before = life.compacted_before.max(s.version);
                        } else if s.version != cur.saturating_add(1) {
                            return Err(Error::invalid(format!(
                                "event {pos} has version {} of stream '{}', expected {}",
                                s.version,
                                s.stream_id,
                                cur.saturating_add(1)
                            )));
                        }
                        versions.insert(&s.stream_id, s.version);
                        Some((s.stream_id.as_str(), s.version))
                    }
                    None => None,
                };
                if e.stream.is_none() {
                    if let Some((s, v)) = lives.replay(&mut *txn, e, ceiling).await? {
                        let cur = match versions.get(s.as_str()) {
                            Some(v) => Some((*v, pos)),
                            None => match implied.get(&s) {
                                Some(x) => Some(*x),
                                None => read_stream_meta(&mut *txn, &s)
                                    .await?
                                    .map(|m| (m.version, m.last_position)),
                            },
                        };
                        let (cur, last_position) = cur.unwrap_or((0, 0));
                        if cur < v {
                            // Its versions up to `v` were released in the
                            // source: they stay removed, and the version
                            // continues after them.
                            let life = lives.get(&mut *txn, &s).await?;
                            // `v` is at most the ceiling (checked by replay).
                            life.compacted_before = life.compacted_before.max(v + 1);
                            implied.insert(s, (v, last_position));
                        }
                    }
                }
                let mut tags = e.tags.clone();
                tags.sort();
                tags.dedup();
                let new = NewEvent {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    tags,
                    data: e.data.clone(),
                    metadata: e.metadata.clone(),
                    personal: None,
                };
                let part = personal.stored(e)?;
                event_rows(
                    &mut rows,
                    pos,
                    &new,
                    e.recorded_at_ms,
                    (sref, part.as_ref().map(|(s, p)| (*s, p))),
                    (base + 1, last),
                )?;
            }
            for (s, v) in &versions {
                let last_position = events
                    .iter()
                    .rev()
                    .find(|e| e.stream.as_ref().is_some_and(|r| r.stream_id == *s))
                    .map_or(last, |e| e.position);
                rows.push((
                    layout::stream_key(s),
                    StreamMeta {
                        version: *v,
                        last_position,
                    }
                    .encode(),
                ));
            }
            for (s, (version, last_position)) in &implied {
                if !versions.contains_key(s.as_str()) {
                    let meta = StreamMeta {
                        version: *version,
                        last_position: *last_position,
                    };
                    rows.push((layout::stream_key(s), meta.encode()));
                }
            }
            lives.write(&mut rows);
            for (k, v) in rows {
                txn.put(k, v);
            }
            txn.put(layout::head_key(), layout::u64_value(last));
            txn.validate(layout::head_key());
            txn.commit().await?;
            Ok(last)
        })
        .await?;
        self.inner.publish_head(head);
        Ok(head)
    }

    /// Marks an import as in progress (see [`layout::import_key`]), before
    /// its first [`import`](Self::import). `expected_events` is the number
    /// of events the import is to write, when known. Until
    /// [`finish_import`](Self::finish_import), [`crate::verify`] reports the
    /// store as damaged, so that an import cut short (a crash, a kill) is
    /// never taken for a complete store.
    pub async fn begin_import(&self, expected_events: Option<u64>) -> Result<()> {
        let kv = &self.inner.kv;
        let value = expected_events.map_or_else(Vec::new, layout::u64_value);
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.put(layout::import_key(), value.clone());
            Ok(txn.commit().await?)
        })
        .await
    }

    /// Removes the mark of [`begin_import`](Self::begin_import): the import
    /// is complete.
    pub async fn finish_import(&self) -> Result<()> {
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.delete(layout::import_key());
            Ok(txn.commit().await?)
        })
        .await
    }

    /// The mark of an import that began and has not finished, if any.
    pub async fn import_in_progress(&self) -> Result<Option<ImportMarker>> {
        let mut txn = self.inner.kv.begin().await?;
        txn.get(&layout::import_key())
            .await?
            .map(|v| ImportMarker::decode(&v))
            .transpose()
    }
}

/// The subject key records an import chunk's personal parts need, read in
/// its transaction.
struct Personal {
    /// The generation of each subject's live key, `None` when forgotten.
    live: HashMap<String, Option<u64>>,
    /// Subjects with erased parts and no record: recorded as forgotten, so
    /// `forget` answers "already forgotten" and a new key never reuses an
    /// old generation.
    forgotten: Vec<String>,
}

impl Personal {
    async fn read(txn: &mut dyn KvTransaction, events: &[RecordedEvent]) -> Result<Self> {
        let mut subjects: Vec<&str> = events
            .iter()
            .filter_map(|e| e.personal.as_ref().map(|p| p.subject()))
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        let mut out = Personal {
            live: HashMap::new(),
            forgotten: Vec::new(),
        };
        if subjects.is_empty() {
            return Ok(out);
        }
        let keys: Vec<Vec<u8>> = subjects.iter().map(|s| layout::subject_key(s)).collect();
        for (s, v) in subjects.into_iter().zip(txn.get_many(&keys).await?) {
            match v {
                Some(v) => {
                    let rec = SubjectRecord::decode(&v)?;
                    out.live
                        .insert(s.to_owned(), rec.wrapped.map(|_| rec.generation));
                }
                None => {
                    if let Some(e) = events
                        .iter()
                        .find(|e| e.personal.as_ref().is_some_and(|p| p.subject() == s))
                        .filter(|e| {
                            e.personal
                                .as_ref()
                                .is_some_and(|p| p.sealed_part().is_some())
                        })
                    {
                        return Err(Error::invalid(format!(
                            "the personal part of event {} (position {}) belongs to data subject '{s}', whose key is not in this store: import the subject keys first (`eskv export` writes them into the file; an archive leaves them in its store: import it with --keys-from that store)",
                            e.id, e.position
                        )));
                    }
                    out.forgotten.push(s.to_owned());
                    out.live.insert(s.to_owned(), None);
                }
            }
        }
        Ok(out)
    }

    fn write(&self, rows: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for s in &self.forgotten {
            let rec = SubjectRecord {
                generation: 0,
                wrapped: None,
            };
            rows.push((layout::subject_key(s), rec.encode()));
        }
    }

    /// The part to store for `e`: sealed as it came while its key lives
    /// here; otherwise erased (no ciphertext of a forgotten subject is
    /// kept), stored as generation 0, which no key ever has.
    fn stored<'e>(&self, e: &'e RecordedEvent) -> Result<Option<(&'e str, SealedPersonal)>> {
        let Some(p) = &e.personal else {
            return Ok(None);
        };
        let live = self.live.get(p.subject()).copied().flatten();
        let part = match p.sealed_part() {
            Some(sealed) if Some(sealed.generation) == live => sealed.clone(),
            _ => SealedPersonal {
                generation: 0,
                nonce: [0; 24],
                ciphertext: Vec::new(),
            },
        };
        Ok(Some((p.subject(), part)))
    }
}

/// The lifecycle records an import chunk changes: the stream records its
/// holes and system events imply, and the log's truncation.
#[derive(Default)]
struct Lives {
    streams: HashMap<String, StreamLife>,
    log: Option<LogLife>,
}

impl Lives {
    /// The record of `stream`, read on first use.
    async fn get(&mut self, txn: &mut dyn KvTransaction, stream: &str) -> Result<&mut StreamLife> {
        if !self.streams.contains_key(stream) {
            let life = txn
                .get(&layout::stream_life_key(stream))
                .await?
                .map(|v| StreamLife::decode(&v))
                .transpose()?
                .unwrap_or_default();
            self.streams.insert(stream.to_owned(), life);
        }
        Ok(self.streams.entry(stream.to_owned()).or_default())
    }

    /// The record of `stream` as it stands, without marking it changed.
    async fn peek(&mut self, txn: &mut dyn KvTransaction, stream: &str) -> Result<StreamLife> {
        if let Some(l) = self.streams.get(stream) {
            return Ok(l.clone());
        }
        Ok(txn
            .get(&layout::stream_life_key(stream))
            .await?
            .map(|v| StreamLife::decode(&v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Applies what an imported system event recorded (retention, soft
    /// delete, tombstone, log truncation), so a restore keeps the source's
    /// lifecycle; other events change nothing. Returns the stream and
    /// version a delete or tombstone names, or for a retention the last
    /// version below its `truncate_before` (released in the source, so
    /// the stream's version is at least that).
    ///
    /// Numbers in the body above `ceiling` (`Limits::import_ceiling`) are
    /// refused: a later change or append would run out of them.
    async fn replay(
        &mut self,
        txn: &mut dyn KvTransaction,
        e: &RecordedEvent,
        ceiling: u64,
    ) -> Result<Option<(String, u64)>> {
        use crate::lifecycle::system_types as t;
        if !t::is_system(&e.event_type) || e.event_type == t::SUBJECT_FORGOTTEN {
            return Ok(None);
        }
        let bad = |why: String| {
            Error::invalid(format!(
                "system event {} ({}) at position {} cannot be replayed: {why}",
                e.id, e.event_type, e.position
            ))
        };
        let body: serde_json::Value =
            serde_json::from_slice(&e.data).map_err(|x| bad(x.to_string()))?;
        let num = |k: &str| body.get(k).and_then(serde_json::Value::as_u64);
        for k in ["version", "revision", "truncate_before", "before"] {
            if let Some(n) = num(k).filter(|n| *n > ceiling) {
                return Err(bad(format!(
                    "its \"{k}\" is {n}, above {ceiling}, the highest an import accepts (Limits::import_ceiling: numbers are left for appends after the import)"
                )));
            }
        }
        if e.event_type == t::LOG_TRUNCATED {
            let before = num("before").ok_or_else(|| bad("no \"before\"".into()))?;
            let log = match self.log {
                Some(l) => l,
                None => txn
                    .get(&layout::log_life_key())
                    .await?
                    .map(|v| LogLife::decode(&v))
                    .transpose()?
                    .unwrap_or_default(),
            };
            self.log = Some(LogLife {
                truncate_before: log.truncate_before.max(before),
                ..log
            });
            return Ok(None);
        }
        let stream = body
            .get("stream")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("no \"stream\"".into()))?;
        let life = self.get(txn, stream).await?;
        life.revision =
            crate::lifecycle::checked_next(life.revision, 1, "the stream's metadata revisions")?;
        // Numbers are at most the ceiling (checked above): `+ 1` and `- 1`
        // stay in range.
        match e.event_type.as_str() {
            t::RETENTION_SET => {
                life.revision = num("revision").filter(|r| *r > 0).unwrap_or(life.revision);
                life.max_count = num("max_count");
                life.max_age_ms = num("max_age_ms");
                let tb = num("truncate_before").unwrap_or(0);
                life.truncate_before = life.truncate_before.max(tb);
                Ok((tb > 1).then(|| (stream.to_owned(), tb - 1)))
            }
            t::STREAM_DELETED => {
                let v = num("version").ok_or_else(|| bad("no \"version\"".into()))?;
                life.truncate_before = life.truncate_before.max(v + 1);
                Ok(Some((stream.to_owned(), v)))
            }
            _ => {
                life.tombstoned = true;
                Ok(num("version").map(|v| (stream.to_owned(), v)))
            }
        }
    }

    /// Buffers the changed records.
    fn write(self, rows: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for (s, life) in self.streams {
            rows.push((layout::stream_life_key(&s), life.encode()));
        }
        if let Some(l) = self.log {
            rows.push((layout::log_life_key(), l.encode()));
        }
    }
}

/// An import that began and has not finished: the value of
/// [`layout::import_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportMarker {
    /// How many events the import was to write, when it said.
    pub expected_events: Option<u64>,
}

impl ImportMarker {
    /// Decodes the marker's value: empty, or the expected count (u64 BE).
    pub fn decode(v: &[u8]) -> Result<Self> {
        Ok(ImportMarker {
            expected_events: if v.is_empty() {
                None
            } else {
                Some(layout::parse_u64(v, "import marker")?)
            },
        })
    }
}

impl std::fmt::Display for ImportMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an import into this store did not finish")?;
        if let Some(n) = self.expected_events {
            write!(f, " (it was to write {n} events)")?;
        }
        f.write_str("; the store holds only part of it: remove the store and run the import again")
    }
}

/// The error for a store whose format marker is not [`layout::FORMAT`].
pub(super) fn format_error(found: &[u8]) -> Error {
    let supported = String::from_utf8_lossy(layout::FORMAT).into_owned();
    let (Some(n), Some(ours)) = (
        layout::format_number(found),
        layout::format_number(layout::FORMAT),
    ) else {
        return Error::corrupt(
            None,
            format!(
                "the event layout marker holds {:?}, which is not an eskv layout (this eskv reads {supported:?}); is this an eskv event store?",
                String::from_utf8_lossy(found)
            ),
        );
    };
    let advice = if n < ours {
        "it was written by an older eskv. Export it with that version \
         (`eskv --store <url> export --out events.jsonl`), then import the export into a \
         new, empty store with this version (`eskv --store <new url> import --in events.jsonl`). \
         The store was not changed"
    } else {
        "it was written by a newer eskv; open it with that version. The store was not changed"
    };
    Error::IncompatibleFormat {
        found: String::from_utf8_lossy(found).into_owned(),
        supported,
        advice: advice.to_string(),
    }
}
