//! DCB query reads: positions from the type and tag indexes, and the
//! paged live read that any positional source feeds.

use super::super::batch::{condition_probes, probe_keeps};
use super::super::live::Live;
use super::super::options::{consistent_through, ReadOptions, ReadResult};
use super::scan::{load_events, scan_index, Order};
use crate::error::Result;
use crate::event::{Position, RecordedEvent};
use crate::kv::{KvTransaction, ScanOptions};
use crate::layout::{self, Index};
use crate::query::{Query, QueryItem};
use std::collections::BTreeSet;

/// Where [`read_live`] finds positions.
#[derive(Clone, Copy)]
pub(in crate::store) enum Source<'q> {
    Query(&'q Query),
    Index(Index<'q>),
}

/// Live events of `source` in `[lo, hi]`, in `order`, at most `limit`:
/// pages of positions, loaded and passed through [`Live::retain`], until
/// the limit is met or the range is exhausted. A page with released events
/// is followed by another, so a full page is never cut short by a removal
/// (subscribers take a short page for "caught up").
pub(in crate::store) async fn read_live(
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

/// A forward DCB read in two calls to the backend: the head together with
/// the first page of every index probe, then the events (more pages only
/// for probes whose first page was full).
pub(in crate::store) async fn read_forward(
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
        head,
        consistent_through: consistent_through(opts, head, &events),
        events,
    })
}

/// Positions in `[lo, hi]` of events matching `query`, in the requested
/// order, at most `limit`. Cost: O(matching index entries) per item; an
/// item with tags scans the index of its first tag and checks type and the
/// other tags on the index entry itself.
pub(in crate::store) async fn find_positions(
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

pub(in crate::store) async fn item_positions(
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
