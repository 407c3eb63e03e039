//! Compaction: removes the rows of events that retention, deletion and
//! tombstones released, in transactions bounded by the backend's
//! capabilities.
//!
//! Invariants: compaction removes only events no read path returns any
//! more (so no reader sees a change), walks each stream's released prefix
//! upwards and records its progress (`StreamLife::compacted_before`) in
//! the same transaction as the removal, and records every removed
//! position as a removal run (`layout::removed_key`) so `verify` can tell a
//! removal from damage. Positions are never reused: the head is not
//! touched.

use super::live::now_ms;
use super::read::stream_events_as_stored;
use super::EventStore;
use crate::envelope;
use crate::error::Result;
use crate::event::{Position, RecordedEvent};
use crate::kv::ScanOptions;
use crate::layout::{self, IdEntry, StreamMeta};
use crate::lifecycle::{LogLife, StreamLife};
use crate::retry::retry;

/// What [`EventStore::compact`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Streams with a lifecycle record that were examined.
    pub streams_examined: u64,
    /// Events whose rows were removed.
    pub events_removed: u64,
    /// Keys deleted (events and their index entries).
    pub keys_removed: u64,
    /// Bytes of keys and values deleted. What the file gives back depends
    /// on the backend: redb reuses the pages, and returns them to the file
    /// system after `eskv_redb::compact_file` (`eskv compact` runs it).
    pub bytes_reclaimed: u64,
    /// Transactions committed.
    pub transactions: u64,
}

/// Stream index entries read per compaction step.
const STEP_PAGE: usize = 256;

/// One step's removals.
#[derive(Default)]
struct Step {
    events: u64,
    keys: u64,
    bytes: u64,
    more: bool,
}

impl EventStore {
    /// Removes the rows of every event released by retention, deletion or
    /// a tombstone (see [`set_retention`](Self::set_retention)), in
    /// transactions within the backend's `max_ops_per_txn` and
    /// `max_txn_bytes`. Safe to run at any time, concurrently with
    /// appends and readers (each step is retried on conflicts), and to
    /// interrupt: the next run continues where this one stopped.
    pub async fn compact(&self) -> Result<CompactReport> {
        self.compact_with_progress(|_| {}).await
    }

    /// Like [`compact`](Self::compact), calling `progress` after every
    /// transaction with the totals so far.
    pub async fn compact_with_progress(
        &self,
        mut progress: impl FnMut(&CompactReport) + Send,
    ) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let mut after: Option<String> = None;
        loop {
            let rows = {
                let mut txn = self.inner.kv.begin().await?;
                txn.scan(
                    layout::stream_life_range(after.as_deref()),
                    ScanOptions::forward(Some(STEP_PAGE)),
                )
                .await?
            };
            let n = rows.len();
            for (k, _) in rows {
                let stream = layout::parse_stream_life_key(&k)?;
                report.streams_examined += 1;
                loop {
                    let step = self.compact_step(&stream).await?;
                    if step.events > 0 {
                        report.events_removed += step.events;
                        report.keys_removed += step.keys;
                        report.bytes_reclaimed += step.bytes;
                        report.transactions += 1;
                        progress(&report);
                    }
                    if !step.more {
                        break;
                    }
                }
                after = Some(stream);
            }
            if n < STEP_PAGE {
                break;
            }
        }
        // Then the log's truncated prefix (`truncate_log_before`).
        loop {
            let step = self.compact_log_step().await?;
            if step.events > 0 {
                report.events_removed += step.events;
                report.keys_removed += step.keys;
                report.bytes_reclaimed += step.bytes;
                report.transactions += 1;
                progress(&report);
            }
            if !step.more {
                break;
            }
        }
        progress(&report);
        Ok(report)
    }

    /// One transaction: removes the next events below the log's
    /// truncation, in position order. A stream event's removal raises its
    /// stream's `compacted_before` past it (what is removed of a stream
    /// this way is a prefix of its versions, since versions follow
    /// positions), so stream reads and `verify` see the stream start
    /// there. Invariant: it changes nothing a reader sees of the stream's
    /// metadata: not the revision (a new record keeps revision 0, "never
    /// set"), not `truncate_before` (the retention `stream_info` shows).
    async fn compact_log_step(&self) -> Result<Step> {
        let budget = self.step_budget();
        retry(self.inner.opts.max_retries, || async {
            let mut txn = self.inner.kv.begin().await?;
            let Some(log) = txn
                .get(&layout::log_life_key())
                .await?
                .map(|v| LogLife::decode(&v))
                .transpose()?
            else {
                return Ok(Step::default());
            };
            let start = log.compacted_before.max(1);
            if start >= log.truncate_before {
                return Ok(Step::default());
            }
            let rows = txn
                .scan(
                    layout::log_range(start, log.truncate_before - 1),
                    ScanOptions::forward(Some(STEP_PAGE)),
                )
                .await?;
            let events = rows
                .iter()
                .map(|(k, v)| envelope::decode(v, layout::parse_log_key(k)?))
                .collect::<Result<Vec<RecordedEvent>>>()?;
            let (mut ops, mut bytes) = (0usize, 0usize);
            let mut removed: Vec<&RecordedEvent> = Vec::new();
            // The last position this step is done with (removed or kept).
            let mut done: Option<Position> = None;
            let mut budget_hit = false;
            for e in &events {
                // A stream's lifecycle change stays (the cut never
                // releases it); compaction walks past it.
                if crate::lifecycle::survives_log_cut(e) {
                    done = Some(e.position);
                    continue;
                }
                if !fits(e, &removed, (&mut ops, &mut bytes), budget) {
                    budget_hit = true;
                    break;
                }
                removed.push(e);
                done = Some(e.position);
            }
            let partial = budget_hit || events.len() == STEP_PAGE;
            let next = match done {
                Some(p) if partial => p + 1,
                _ => log.truncate_before,
            };
            // Each stream's new first version: one past its last removed.
            let mut firsts: std::collections::BTreeMap<&str, u64> = Default::default();
            for e in &removed {
                if let Some(s) = &e.stream {
                    let f = firsts.entry(s.stream_id.as_str()).or_default();
                    *f = (*f).max(s.version + 1);
                }
            }
            let keys: Vec<Vec<u8>> = firsts.keys().map(|s| layout::stream_life_key(s)).collect();
            let lives = txn.get_many(&keys).await?;
            for ((k, first), life) in keys.into_iter().zip(firsts.values()).zip(lives) {
                let mut life = life
                    .as_deref()
                    .map(StreamLife::decode)
                    .transpose()?
                    .unwrap_or_default();
                life.compacted_before = life.compacted_before.max(*first);
                txn.put(k, life.encode());
            }
            let mut step = delete_rows(&mut *txn, &removed).await?;
            txn.put(
                layout::log_life_key(),
                LogLife {
                    compacted_before: next,
                    ..log
                }
                .encode(),
            );
            txn.commit().await?;
            step.more = next < log.truncate_before;
            Ok(step)
        })
        .await
    }

    /// Operations and bytes one compaction step may write.
    fn step_budget(&self) -> (usize, usize) {
        let caps = self.inner.kv.capabilities();
        // Room for the lifecycle records and the removal runs.
        let ops_budget = caps
            .max_ops_per_txn
            .unwrap_or(8192)
            .saturating_sub(8)
            .max(8);
        (ops_budget, caps.max_txn_bytes.unwrap_or(32 << 20) / 2)
    }

    /// One transaction: removes the next released events of `stream`.
    async fn compact_step(&self, stream: &str) -> Result<Step> {
        let (ops_budget, bytes_budget) = self.step_budget();
        retry(self.inner.opts.max_retries, || async {
            let mut txn = self.inner.kv.begin().await?;
            let vals = txn
                .get_many(&[layout::stream_key(stream), layout::stream_life_key(stream)])
                .await?;
            let Some(life) = vals[1].as_deref().map(StreamLife::decode).transpose()? else {
                return Ok(Step::default());
            };
            let version = vals[0]
                .as_deref()
                .map(StreamMeta::decode)
                .transpose()?
                .map_or(0, |m| m.version);
            let start = life.compacted_before.max(1);
            if start > version {
                return Ok(Step::default());
            }
            let events =
                stream_events_as_stored(&mut *txn, stream, (start, version), STEP_PAGE).await?;
            let now = now_ms();
            let (mut ops, mut bytes) = (0usize, 0usize);
            let mut removed: Vec<&RecordedEvent> = Vec::new();
            let mut budget_hit = false;
            for e in &events {
                if life.is_live(version, e, now) {
                    break;
                }
                if !fits(
                    e,
                    &removed,
                    (&mut ops, &mut bytes),
                    (ops_budget, bytes_budget),
                ) {
                    budget_hit = true;
                    break;
                }
                removed.push(e);
            }
            let Some(last) = removed.last() else {
                return Ok(Step::default());
            };
            let more = budget_hit || (removed.len() == events.len() && events.len() == STEP_PAGE);
            let next_version = last.stream.as_ref().map_or(start, |s| s.version + 1);
            let mut step = delete_rows(&mut *txn, &removed).await?;
            let mut new = life.clone();
            new.compacted_before = next_version;
            txn.put(layout::stream_life_key(stream), new.encode());
            // A concurrent append or retention change re-runs the step.
            txn.validate(layout::stream_key(stream));
            txn.commit().await?;
            step.more = more;
            Ok(step)
        })
        .await
    }
}

/// Whether `e` fits the step's budget (the first event always does);
/// counts it when it does.
fn fits(
    e: &RecordedEvent,
    removed: &[&RecordedEvent],
    (ops, bytes): (&mut usize, &mut usize),
    (ops_budget, bytes_budget): (usize, usize),
) -> bool {
    let cost = 6 + e.tags.len();
    let size = 128 + e.event_type.len() + e.tags.iter().map(|t| 2 * t.len() + 8).sum::<usize>();
    if !removed.is_empty() && (*ops + cost > ops_budget || *bytes + size > bytes_budget) {
        return false;
    }
    *ops += cost;
    *bytes += size;
    true
}

/// Buffers the deletion of every row of `removed` (log row, id entry if
/// it still points at the event, type, tag, stream and category entries)
/// and the removal runs of their positions.
async fn delete_rows(
    txn: &mut dyn crate::kv::KvTransaction,
    removed: &[&RecordedEvent],
) -> Result<Step> {
    let id_keys: Vec<Vec<u8>> = removed.iter().map(|e| layout::id_key(e.id)).collect();
    let log_keys: Vec<Vec<u8>> = removed
        .iter()
        .map(|e| layout::log_key(e.position))
        .collect();
    let ids = txn.get_many(&id_keys).await?;
    let logs = txn.get_many(&log_keys).await?;
    let mut step = Step {
        events: removed.len() as u64,
        ..Step::default()
    };
    let mut delete = |txn: &mut dyn crate::kv::KvTransaction, k: Vec<u8>, value_len: usize| {
        step.keys += 1;
        step.bytes += (k.len() + value_len) as u64;
        txn.delete(k);
    };
    for ((e, id), log) in removed.iter().zip(ids).zip(logs) {
        let p = e.position;
        delete(&mut *txn, layout::log_key(p), log.map_or(0, |v| v.len()));
        // The id may have been appended again after the event was
        // released: that entry belongs to the new event.
        if let Some(v) = id {
            let k = layout::id_key(e.id);
            if IdEntry::decode(layout::open_index_value(&k, &v)?)?.position == p {
                delete(&mut *txn, k, v.len());
            }
        }
        delete(
            &mut *txn,
            layout::type_key(&e.event_type, p),
            layout::SEAL_LEN,
        );
        let tag_value = e.event_type.len() + e.tags.iter().map(|t| t.len() + 1).sum::<usize>();
        for t in &e.tags {
            delete(
                &mut *txn,
                layout::tag_key(t, p),
                tag_value + layout::SEAL_LEN,
            );
        }
        if let Some(s) = &e.stream {
            delete(
                &mut *txn,
                layout::stream_event_key(&s.stream_id, s.version),
                12,
            );
            let category = layout::category_of(&s.stream_id);
            delete(
                &mut *txn,
                layout::category_key(category, p),
                layout::SEAL_LEN,
            );
        }
    }
    // Removal runs: consecutive positions share one record.
    let mut sorted: Vec<Position> = removed.iter().map(|e| e.position).collect();
    sorted.sort_unstable();
    let mut runs: Vec<(Position, Position)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == p => *last = p,
            _ => runs.push((p, p)),
        }
    }
    for (first, last) in runs {
        let k = layout::removed_key(first);
        let v = layout::seal_index_value(&k, layout::u64_value(last));
        txn.put(k, v);
    }
    Ok(step)
}
