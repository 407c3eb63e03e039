//! Read paths: the log, categories, streams and DCB queries, over
//! positional indexes read in pages.

use super::batch::{condition_probes, probe_keeps};
use super::live::{log_cut_of, Live};
use super::options::{
    consistent_through, LogFilter, ReadOptions, ReadResult, ReadStreamOptions, StreamInfo,
    StreamRead,
};
use super::EventStore;
use crate::envelope;
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent, StreamVersion};
use crate::kv::{Capabilities, KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout::{self, Index, StreamMeta};
use crate::lifecycle::StreamLife;
use crate::query::{Query, QueryItem};
use crate::validate::validate_stream_id;
use std::collections::BTreeSet;

impl EventStore {
    /// The last assigned position (0 when the store is empty).
    pub async fn head(&self) -> Result<Position> {
        let mut txn = self.inner.kv.begin().await?;
        read_head(&mut *txn).await
    }

    /// DCB read: the events matching `query`, plus the position through
    /// which the read is consistent
    /// ([`ReadResult::consistent_through`]), to pass back as the `after`
    /// of a condition on the same query.
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "query", count)
    )]
    pub async fn read(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        let r = self.read_stored(query, opts).await?;
        self.decoded_result(r)
    }

    async fn read_stored(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        let mut q = query.clone();
        self.validate_query(&mut q)?;
        if q.is_all() {
            // Every event: the log itself, which skips removed positions.
            return self.read_log(&LogFilter::default(), opts).await;
        }
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        if !opts.backwards && opts.limit != Some(0) {
            return read_forward(&mut *txn, &q, opts, &mut live).await;
        }
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let events = read_live(
            &mut *txn,
            Source::Query(&q),
            (lo, hi),
            order,
            opts.limit,
            &mut live,
        )
        .await?;
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// The read filter of this store (see [`Live`]).
    pub(crate) fn live(&self) -> Live<'_> {
        Live::of(&self.inner.opts)
    }

    /// Reads the global log.
    pub async fn read_all(&self, opts: ReadOptions) -> Result<ReadResult> {
        self.read_all_filtered(&LogFilter::default(), opts).await
    }

    /// Reads the global log, keeping only events that pass `filter`. A
    /// query filter uses the type and tag indexes; a stream prefix is
    /// checked on each event.
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "log", count)
    )]
    pub async fn read_all_filtered(
        &self,
        filter: &LogFilter,
        opts: ReadOptions,
    ) -> Result<ReadResult> {
        let r = self.read_all_stored(filter, opts).await?;
        self.decoded_result(r)
    }

    async fn read_all_stored(&self, filter: &LogFilter, opts: ReadOptions) -> Result<ReadResult> {
        if let Some(q) = &filter.query {
            let mut q = q.clone();
            self.validate_query(&mut q)?;
            if filter.stream_prefix.is_none() {
                return self.read_stored(&q, opts).await;
            }
        }
        self.read_log(filter, opts).await
    }

    /// The log, page by page, through the read filter, keeping what passes
    /// `filter` (checked on each event).
    async fn read_log(&self, filter: &LogFilter, opts: ReadOptions) -> Result<ReadResult> {
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((mut lo, mut hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let want = opts.limit.unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let page = opts.limit.map_or(1024, |l| l.clamp(16, 1024));
        while events.len() < want && lo <= hi {
            let rows = scan_page(
                &mut *txn,
                layout::log_range,
                lo,
                hi,
                page,
                Order::new(opts.backwards, self.inner.kv.capabilities()),
            )
            .await?;
            let n = rows.len();
            // Decoded no further than needed: a read of N events never
            // touches (nor fails on) the rows after them.
            let mut rows = rows.into_iter().peekable();
            while events.len() < want && rows.peek().is_some() {
                let need = want - events.len();
                let mut decoded = Vec::new();
                for (k, v) in rows.by_ref().take(need) {
                    let pos = layout::parse_log_key(&k)?;
                    decoded.push(envelope::decode(&v, pos)?);
                    if opts.backwards {
                        hi = pos.saturating_sub(1);
                    } else {
                        lo = pos + 1;
                    }
                }
                for e in live.retain(&mut *txn, decoded).await? {
                    if filter.matches(&e) {
                        events.push(e);
                        if events.len() == want {
                            break;
                        }
                    }
                }
            }
            if n < page || (opts.backwards && hi == 0) {
                break;
            }
        }
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads a category: the events of every stream whose id, up to its
    /// first `-`, is `category` (like EventStoreDB's `$ce-` streams, but
    /// from an index, without copying events).
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "category", count)
    )]
    pub async fn read_category(&self, category: &str, opts: ReadOptions) -> Result<ReadResult> {
        validate_stream_id(category, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let source = Source::Index(Index::Category(category));
        let events = read_live(&mut *txn, source, (lo, hi), order, opts.limit, &mut live).await?;
        let events = self.decoded(events)?;
        Ok(ReadResult {
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads a stream by version: its events, its version, and the
    /// position the read is consistent through (see [`StreamRead`]), all
    /// from one snapshot.
    ///
    /// ```
    /// use eskv_core::{EventStore, ExpectedVersion, MemoryStore, NewEvent, ReadStreamOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// store.append(vec![NewEvent::new("Other", vec![])], None).await?;
    /// store.append_to_stream("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", vec![])]).await?;
    ///
    /// let read = store.read_stream("order-1", ReadStreamOptions::new()).await?;
    /// assert_eq!((read.len(), read.version, read.consistent_through), (1, 1, 2));
    /// // The version is what an append decided on this read expects.
    /// store.append_to_stream("order-1", ExpectedVersion::Exact(read.version), vec![NewEvent::new("Paid", vec![])]).await?;
    /// for event in &read {
    ///     assert_eq!(event.event_type, "Placed");
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "stream", count)
    )]
    pub async fn read_stream(&self, stream: &str, opts: ReadStreamOptions) -> Result<StreamRead> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        // The stream index bounds the read: versions run 1..=n, so an open
        // upper bound stops at the last.
        let (lo, hi) = if opts.backwards {
            (1, opts.from_version.unwrap_or(StreamVersion::MAX))
        } else {
            (opts.from_version.unwrap_or(1).max(1), StreamVersion::MAX)
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let reads = lo <= hi && opts.limit != Some(0);
        let want0 = opts.limit.unwrap_or(usize::MAX);
        // One backend call: the head and the stream's version (for what the
        // read reports), its lifecycle record (for the live filter), and the
        // first page of its index where one scan reads it.
        let first_scan = reads
            .then(|| stream_scan(stream, (lo, hi), opts, order, want0))
            .flatten();
        let keys = [
            layout::head_key(),
            layout::stream_key(stream),
            layout::stream_life_key(stream),
            layout::log_life_key(),
        ];
        let (vals, mut first_rows) = txn.read_many(&keys, first_scan.as_slice()).await?;
        let head = vals[0]
            .as_deref()
            .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
        let version = match vals[1].as_deref() {
            Some(v) => StreamMeta::decode(v)?.version,
            None => 0,
        };
        let until = opts.until.unwrap_or(Position::MAX);
        let mut out = Vec::new();
        if reads {
            let mut live = self.live();
            live.note_stream(stream, vals[1].as_deref(), vals[2].as_deref())?;
            live.note_log_cut(vals[3].as_deref())?;
            let mut first_rows = first_rows.pop();
            let (mut lo, mut hi) = (lo, hi);
            // Released events are a prefix of the versions: when a page comes
            // back with some dropped, the next one starts at the first live
            // version (forwards) or stops there (backwards).
            loop {
                let want = opts.limit.map_or(usize::MAX, |l| l - out.len());
                let positions = match first_rows.take() {
                    Some(rows) => stream_positions_of(rows, opts, want, until)?,
                    None => {
                        stream_positions(&mut *txn, stream, (lo, hi), opts, order, want, until)
                            .await?
                    }
                };
                let n = positions.len();
                let loaded = load_events(&mut *txn, &positions).await?;
                let edge = loaded
                    .last()
                    .and_then(|e| e.stream.as_ref())
                    .map(|r| r.version);
                let kept = live.retain(&mut *txn, loaded).await?;
                let dropped = kept.len() < n;
                out.extend(kept);
                let (Some(edge), true, true) = (edge, dropped, n == want) else {
                    break;
                };
                // Released by the stream's record, or only by the log's
                // truncation (which keeps no per-stream first version).
                let first = match live.stream_state(&mut *txn, stream).await? {
                    Some((v, life)) => life.first_live(v),
                    None => 1,
                };
                if opts.backwards {
                    hi = edge.saturating_sub(1);
                    if hi < first.max(lo) {
                        break;
                    }
                } else {
                    lo = (edge + 1).max(first);
                    if lo > version {
                        break;
                    }
                }
            }
        }
        let top = opts.until.map_or(head, |u| u.min(head));
        let consistent_through = match (opts.backwards, opts.limit) {
            (false, Some(l)) if out.len() >= l => out
                .last()
                .map_or(top, |e: &RecordedEvent| e.position.min(top)),
            _ => top,
        };
        Ok(StreamRead {
            events: self.decoded(out)?,
            version,
            consistent_through,
        })
    }

    /// The first version of `stream` whose event lies after global position
    /// `after` (the stream's version + 1 if none does). A binary search
    /// over the stream index: O(log n) reads, for resuming stream readers
    /// from a position.
    pub async fn stream_version_after(
        &self,
        stream: &str,
        after: Position,
    ) -> Result<StreamVersion> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let Some(meta) = read_stream_meta(&mut *txn, stream).await? else {
            return Ok(1);
        };
        if meta.last_position <= after {
            return Ok(meta.version + 1);
        }
        // Versions below the compacted edge have no index entries: the
        // search starts there (any earlier version was removed anyway).
        let floor = match self.live().stream_state(&mut *txn, stream).await? {
            Some((_, life)) => life.compacted_before.max(1),
            None => 1,
        };
        // Invariant: position(lo - 1) <= after < position(hi).
        let (mut lo, mut hi) = (floor.min(meta.version), meta.version);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = layout::stream_event_key(stream, mid);
            let pos = txn.get(&key).await?.ok_or_else(|| {
                Error::corrupt(
                    None,
                    format!("stream '{stream}' has no index entry for version {mid}"),
                )
            })?;
            if layout::parse_stream_entry(&key, &pos)? > after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// A stream's version and last position.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let vals = txn
            .get_many(&[
                layout::stream_key(stream),
                layout::stream_life_key(stream),
                layout::log_life_key(),
            ])
            .await?;
        let cut = log_cut_of(vals[2].as_deref())?;
        let mut info = stream_info_of(
            stream.to_owned(),
            vals[0].as_deref(),
            vals[1].as_deref(),
            cut,
        )?;
        info.first_version = super::live::first_version_at_cut(&mut *txn, &info, cut).await?;
        Ok(info)
    }

    /// Lists streams whose id starts with `prefix`, in id order, at most
    /// `limit`, starting after stream id `after` (for paging).
    pub async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        let mut txn = self.inner.kv.begin().await?;
        let rows = txn
            .scan(
                layout::stream_list_range(prefix, after),
                ScanOptions::forward(Some(limit)),
            )
            .await?;
        let mut lives: Vec<Vec<u8>> = rows
            .iter()
            .map(|(k, _)| Ok(layout::stream_life_key(&layout::parse_stream_key(k)?)))
            .collect::<Result<_>>()?;
        lives.push(layout::log_life_key());
        let mut lives = txn.get_many(&lives).await?;
        let cut = log_cut_of(lives.pop().flatten().as_deref())?;
        rows.into_iter()
            .zip(lives)
            .map(|((k, v), life)| {
                stream_info_of(
                    layout::parse_stream_key(&k)?,
                    Some(&v),
                    life.as_deref(),
                    cut,
                )
            })
            .collect()
    }
}

impl EventStore {
    /// The one step between the stored events and what every read path
    /// returns (stream, log, category and DCB reads, and through them
    /// paged reads, subscriptions, projections and deciders): upcasting to
    /// each type's current schema version.
    pub(super) fn decoded(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
        tracing::Span::current().record("count", events.len());
        self.inner.opts.upcasters.upcast_all(events)
    }

    fn decoded_result(&self, r: ReadResult) -> Result<ReadResult> {
        Ok(ReadResult {
            events: self.decoded(r.events)?,
            consistent_through: r.consistent_through,
        })
    }
}

/// The one scan that reads the positions of versions `[lo, hi]` of
/// `stream` in the read's order (at most `want`), or `None` where reading
/// them backwards takes windows below the stream's last version.
fn stream_scan(
    stream: &str,
    (lo, hi): (StreamVersion, StreamVersion),
    opts: ReadStreamOptions,
    order: Order,
    want: usize,
) -> Option<(KeyRange, ScanOptions)> {
    // Positions grow with versions, so `until` only trims.
    let limit = if opts.until.is_some() && opts.backwards {
        None
    } else {
        Some(want).filter(|w| *w != usize::MAX)
    };
    if limit.is_some() && order == Order::BackwardByWindows {
        return None;
    }
    Some((
        layout::stream_event_range(stream, lo, hi),
        ScanOptions {
            limit,
            reverse: opts.backwards,
        },
    ))
}

/// Positions of the versions `[lo, hi]` of `stream` in the read's order,
/// at most `want`, none after `until`.
async fn stream_positions(
    txn: &mut dyn KvTransaction,
    stream: &str,
    (lo, hi): (StreamVersion, StreamVersion),
    opts: ReadStreamOptions,
    order: Order,
    want: usize,
    until: Position,
) -> Result<Vec<Position>> {
    let rows = match stream_scan(stream, (lo, hi), opts, order, want) {
        Some((range, scan)) => txn.scan(range, scan).await?,
        None => {
            // Versions are dense: the window below the stream's last
            // version holds exactly the events asked for.
            let Some(meta) = read_stream_meta(txn, stream).await? else {
                return Ok(Vec::new());
            };
            let hi = hi.min(meta.version);
            if lo > hi {
                return Ok(Vec::new());
            }
            let range = |a, b| layout::stream_event_range(stream, a, b);
            scan_page(txn, range, lo, hi, want, order).await?
        }
    };
    stream_positions_of(rows, opts, want, until)
}

/// The positions in stream index rows, at most `want`, none after `until`.
fn stream_positions_of(
    rows: Vec<KvPair>,
    opts: ReadStreamOptions,
    want: usize,
    until: Position,
) -> Result<Vec<Position>> {
    let mut positions = Vec::new();
    for (k, v) in rows {
        let pos = layout::parse_stream_entry(&k, &v)?;
        if pos > until {
            if opts.backwards {
                continue;
            }
            break;
        }
        positions.push(pos);
        if positions.len() == want {
            break;
        }
    }
    Ok(positions)
}

/// Where [`read_live`] finds positions.
#[derive(Clone, Copy)]
pub(super) enum Source<'q> {
    Query(&'q Query),
    Index(Index<'q>),
}

/// Live events of `source` in `[lo, hi]`, in `order`, at most `limit`:
/// pages of positions, loaded and passed through [`Live::retain`], until
/// the limit is met or the range is exhausted. A page with released events
/// is followed by another, so a full page is never cut short by a removal
/// (subscribers take a short page for "caught up").
pub(super) async fn read_live(
    txn: &mut dyn KvTransaction,
    source: Source<'_>,
    (mut lo, mut hi): (Position, Position),
    order: Order,
    limit: Option<usize>,
    live: &mut Live<'_>,
) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    while lo <= hi {
        let want = limit.map(|l| l - out.len());
        let positions = match source {
            Source::Query(q) => find_positions(txn, q, lo, hi, order, want).await?,
            Source::Index(i) => scan_index(txn, i, lo, hi, order, want, |_| Ok(true)).await?,
        };
        let Some(&last) = positions.last() else {
            break;
        };
        let n = positions.len();
        let loaded = load_events(txn, &positions).await?;
        out.extend(live.retain(txn, loaded).await?);
        match want {
            Some(w) if n >= w && out.len() < limit.unwrap_or(0) => {}
            _ => break,
        }
        if order.backwards() {
            if last <= lo {
                break;
            }
            hi = last - 1;
        } else {
            lo = last + 1;
        }
    }
    Ok(out)
}

/// A stream's state from its metadata and lifecycle record, and the
/// log's first live position.
pub(super) fn stream_info_of(
    stream_id: String,
    meta: Option<&[u8]>,
    life: Option<&[u8]>,
    log_cut: Position,
) -> Result<StreamInfo> {
    let meta = meta.map(StreamMeta::decode).transpose()?;
    let life = life.map(StreamLife::decode).transpose()?;
    let version = meta.map_or(0, |m| m.version);
    let l = life.clone().unwrap_or_default();
    let absent = l.reads_absent(version) || meta.is_some_and(|m| m.last_position < log_cut);
    Ok(StreamInfo {
        stream_id,
        exists: meta.is_some() && !absent,
        version,
        last_position: meta.map(|m| m.last_position),
        deleted: meta.is_some() && absent && !l.tombstoned,
        tombstoned: l.tombstoned,
        retention: l.retention(),
        metadata_revision: life.map(|l| l.revision),
        // A stream wholly below the log's truncation starts after its end;
        // one cut part-way shows its first version once compaction ran.
        first_version: if absent {
            l.first_live(version).max(version + 1)
        } else {
            l.first_live(version)
        },
    })
}

pub(super) async fn read_head(txn: &mut dyn KvTransaction) -> Result<Position> {
    txn.get(&layout::head_key())
        .await?
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))
}

/// The head, read together with [`Live::life_probe`] (whose answer it
/// hands to `live`).
async fn read_head_probing(txn: &mut dyn KvTransaction, live: &mut Live<'_>) -> Result<Position> {
    let (vals, probes) = txn
        .read_many(
            &[layout::head_key(), layout::log_life_key()],
            &[Live::life_probe()],
        )
        .await?;
    if let Some(rows) = probes.first() {
        live.note_life_probe(rows);
    }
    live.note_log_cut(vals.get(1).and_then(|v| v.as_deref()))?;
    vals.into_iter()
        .next()
        .flatten()
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))
}

pub(super) async fn read_stream_meta(
    txn: &mut dyn KvTransaction,
    stream: &str,
) -> Result<Option<StreamMeta>> {
    txn.get(&layout::stream_key(stream))
        .await?
        .map(|v| StreamMeta::decode(&v))
        .transpose()
}

/// The inclusive position range a read covers, or `None` when empty.
pub(super) fn bounds(opts: ReadOptions, head: Position) -> Option<(Position, Position)> {
    if opts.limit == Some(0) {
        return None;
    }
    let top = opts.until.map_or(head, |u| u.min(head));
    let (lo, hi) = if opts.backwards {
        (1, opts.from.map_or(top, |f| f.min(top)))
    } else {
        (opts.from.unwrap_or(1).max(1), top)
    };
    (lo <= hi).then_some((lo, hi))
}

/// A forward DCB read in two calls to the backend: the head together with
/// the first page of every index probe, then the events (more pages only
/// for probes whose first page was full).
pub(super) async fn read_forward(
    txn: &mut dyn KvTransaction,
    query: &Query,
    opts: ReadOptions,
    live: &mut Live<'_>,
) -> Result<ReadResult> {
    let lo = opts.from.unwrap_or(1).max(1);
    let top = opts.until.unwrap_or(Position::MAX);
    let page = opts.limit.map_or(1024, |l| l.clamp(16, 1024));
    let probes = condition_probes(query);
    let mut scans: Vec<(crate::kv::KeyRange, ScanOptions)> = probes
        .iter()
        .map(|(index, _)| (index.range(lo, top), ScanOptions::forward(Some(page))))
        .collect();
    let (vals, pages) = if lo > top {
        (txn.get_many(&[layout::head_key()]).await?, Vec::new())
    } else {
        // The lifecycle probe rides along as the last scan.
        scans.push(Live::life_probe());
        let (vals, mut pages) = txn
            .read_many(&[layout::head_key(), layout::log_life_key()], &scans)
            .await?;
        if let Some(rows) = pages.pop() {
            live.note_life_probe(&rows);
        }
        live.note_log_cut(vals.get(1).and_then(|v| v.as_deref()))?;
        (vals, pages)
    };
    let head = vals
        .into_iter()
        .next()
        .flatten()
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))?;
    let hi = top.min(head);
    let want = opts.limit.unwrap_or(usize::MAX);
    let mut all: BTreeSet<Position> = BTreeSet::new();
    for ((index, item), rows) in probes.into_iter().zip(pages) {
        let full = rows.len() >= page;
        let mut kept = 0usize;
        let mut last = None;
        for (k, v) in &rows {
            let pos = index.parse_position(k)?;
            let v = layout::open_index_value(k, v)?;
            last = Some(pos);
            if pos <= hi && kept < want && probe_keeps(index, item, v)? {
                all.insert(pos);
                kept += 1;
            }
        }
        if full && kept < want {
            if let Some(last) = last {
                let more = scan_index(
                    txn,
                    index,
                    last + 1,
                    hi,
                    Order::Forward,
                    Some(want - kept),
                    |v| probe_keeps(index, item, v),
                )
                .await?;
                all.extend(more);
            }
        }
    }
    let positions: Vec<Position> = all.into_iter().take(want).collect();
    let loaded = load_events(txn, &positions).await?;
    let mut events = live.retain(txn, loaded).await?;
    // Released events dropped from a full page: read on past it.
    if let (Some(&last), true) = (positions.last(), events.len() < positions.len()) {
        if positions.len() == want && last < hi {
            let more = Some(want - events.len());
            let order = Order::Forward;
            events.extend(
                read_live(txn, Source::Query(query), (last + 1, hi), order, more, live).await?,
            );
        }
    }
    Ok(ReadResult {
        consistent_through: consistent_through(opts, head, &events),
        events,
    })
}

/// Positions in `[lo, hi]` of events matching `query`, in the requested
/// order, at most `limit`. Cost: O(matching index entries) per item; an
/// item with tags scans the index of its first tag and checks type and the
/// other tags on the index entry itself.
pub(super) async fn find_positions(
    txn: &mut dyn KvTransaction,
    query: &Query,
    lo: Position,
    hi: Position,
    order: Order,
    limit: Option<usize>,
) -> Result<Vec<Position>> {
    let backwards = order.backwards();
    if lo > hi {
        return Ok(Vec::new());
    }
    if query.is_all() {
        let n = (hi - lo + 1) as usize;
        let take = limit.map_or(n, |l| l.min(n)) as u64;
        return Ok(if backwards {
            (hi + 1 - take..=hi).rev().collect()
        } else {
            (lo..lo + take).collect()
        });
    }
    let mut all: BTreeSet<Position> = BTreeSet::new();
    for item in &query.items {
        for p in item_positions(txn, item, lo, hi, order, limit).await? {
            all.insert(p);
        }
    }
    let n = limit.unwrap_or(usize::MAX);
    Ok(if backwards {
        all.into_iter().rev().take(n).collect()
    } else {
        all.into_iter().take(n).collect()
    })
}

pub(super) async fn item_positions(
    txn: &mut dyn KvTransaction,
    item: &QueryItem,
    lo: Position,
    hi: Position,
    order: Order,
    limit: Option<usize>,
) -> Result<Vec<Position>> {
    match item.tags.first() {
        None => {
            let mut out = Vec::new();
            for t in &item.types {
                out.extend(
                    scan_index(txn, Index::Type(t), lo, hi, order, limit, |_| Ok(true)).await?,
                );
            }
            Ok(out)
        }
        Some(first) => {
            scan_index(txn, Index::Tag(first), lo, hi, order, limit, |v| {
                let (t, tags) = layout::parse_tag_entry(v)?;
                Ok(item.matches_parts(&t, &tags))
            })
            .await
        }
    }
}

/// Which way a positional scan runs, and how a backwards page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    Forward,
    /// A reverse scan with a limit.
    Backward,
    /// Forward scans of windows below the top (see [`scan_page`]).
    BackwardByWindows,
}

impl Order {
    pub(super) fn new(backwards: bool, caps: &Capabilities) -> Order {
        match (backwards, caps.cheap_reverse_scans) {
            (false, _) => Order::Forward,
            (true, true) => Order::Backward,
            (true, false) => Order::BackwardByWindows,
        }
    }

    pub(super) fn backwards(self) -> bool {
        self != Order::Forward
    }
}

/// One page of the positional range `range_of(lo, hi)`: its first `page`
/// rows, or backwards its last `page` rows, highest first.
///
/// Where reverse scans cost O(range) (`Capabilities::cheap_reverse_scans`
/// false: etcd sorts
/// the whole range to answer a descending read), the last rows come from
/// forward scans of windows below `hi`, `page` positions wide and doubling
/// until they hold a page: O(page) rows read for a dense range (the log, a
/// stream's versions), and a few windows for a sparse index.
pub(super) async fn scan_page(
    txn: &mut dyn KvTransaction,
    range_of: impl Fn(u64, u64) -> KeyRange,
    lo: u64,
    hi: u64,
    page: usize,
    order: Order,
) -> Result<Vec<KvPair>> {
    if order != Order::BackwardByWindows {
        return Ok(txn
            .scan(
                range_of(lo, hi),
                ScanOptions {
                    limit: Some(page),
                    reverse: order.backwards(),
                },
            )
            .await?);
    }
    let mut out: Vec<KvPair> = Vec::new();
    let mut top = hi;
    let mut width = (page as u64).max(1);
    loop {
        let bottom = top.saturating_sub(width - 1).max(lo);
        let mut rows = txn
            .scan(range_of(bottom, top), ScanOptions::default())
            .await?;
        rows.reverse();
        out.extend(rows);
        if out.len() >= page || bottom <= lo {
            break;
        }
        top = bottom - 1;
        width = width.saturating_mul(2);
    }
    out.truncate(page);
    Ok(out)
}

/// Scans one positional index over `[lo, hi]` in pages, keeping entries
/// whose value passes `keep`, until `limit` are kept.
pub(super) async fn scan_index(
    txn: &mut dyn KvTransaction,
    index: Index<'_>,
    mut lo: Position,
    mut hi: Position,
    order: Order,
    limit: Option<usize>,
    mut keep: impl FnMut(&[u8]) -> Result<bool>,
) -> Result<Vec<Position>> {
    let want = limit.unwrap_or(usize::MAX);
    let page = limit.map_or(1024, |l| l.clamp(16, 1024));
    let mut out = Vec::new();
    let backwards = order.backwards();
    while out.len() < want && lo <= hi {
        let rows = scan_page(txn, |a, b| index.range(a, b), lo, hi, page, order).await?;
        let n = rows.len();
        for (k, v) in rows {
            let pos = index.parse_position(&k)?;
            if backwards {
                hi = pos.saturating_sub(1);
            } else {
                lo = pos + 1;
            }
            if keep(layout::open_index_value(&k, &v)?)? {
                out.push(pos);
                if out.len() == want {
                    break;
                }
            }
        }
        if n < page || (backwards && hi == 0) {
            break;
        }
    }
    Ok(out)
}

/// Loads events by position, in the given order.
pub(super) async fn load_events(
    txn: &mut dyn KvTransaction,
    positions: &[Position],
) -> Result<Vec<RecordedEvent>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<u8>> = positions.iter().map(|&p| layout::log_key(p)).collect();
    let vals = txn.get_many(&keys).await?;
    positions
        .iter()
        .zip(vals)
        .map(|(&p, v)| match v {
            Some(v) => envelope::decode(&v, p),
            None => Err(Error::corrupt(
                Some(p),
                "an index points at this position but the log has no event there",
            )),
        })
        .collect()
}
