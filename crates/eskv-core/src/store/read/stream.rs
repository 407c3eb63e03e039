//! Stream reads by version: the positions in a stream's index, and a
//! stream's state from its metadata and lifecycle record.

use super::super::options::{ReadStreamOptions, StreamInfo};
use super::scan::{load_events, scan_page, Order};
use crate::error::Result;
use crate::event::{Position, RecordedEvent, StreamVersion};
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use crate::layout::{self, StreamMeta};
use crate::lifecycle::StreamLife;

/// The one scan that reads the positions of versions `[lo, hi]` of
/// `stream` in the read's order (at most `want`), or `None` where reading
/// them backwards takes windows below the stream's last version.
pub(in crate::store) fn stream_scan(
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
pub(in crate::store) async fn stream_positions(
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

/// The events of versions `[lo, hi]` of `stream` as stored (no lifecycle
/// filter), oldest first, at most `limit`: for the paths that judge
/// liveness themselves (compaction, retention changes).
pub(in crate::store) async fn stream_events_as_stored(
    txn: &mut dyn KvTransaction,
    stream: &str,
    (lo, hi): (StreamVersion, StreamVersion),
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let rows = txn
        .scan(
            layout::stream_event_range(stream, lo, hi),
            ScanOptions::forward(Some(limit)),
        )
        .await?;
    let positions = rows
        .iter()
        .map(|(k, v)| layout::parse_stream_entry(k, v))
        .collect::<Result<Vec<Position>>>()?;
    load_events(txn, &positions).await
}

/// The positions in stream index rows, at most `want`, none after `until`.
pub(in crate::store) fn stream_positions_of(
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

/// A stream's state from its metadata and lifecycle record, and the
/// log's first live position.
pub(in crate::store) fn stream_info_of(
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
        // Revision 0: a record only compaction or an import's holes wrote.
        metadata_revision: life.map(|l| l.revision).filter(|r| *r > 0),
        // A stream wholly below the log's truncation starts after its end;
        // one cut part-way shows its first version once compaction ran.
        first_version: if absent {
            l.first_live(version).max(version + 1)
        } else {
            l.first_live(version)
        },
    })
}

pub(in crate::store) async fn read_stream_meta(
    txn: &mut dyn KvTransaction,
    stream: &str,
) -> Result<Option<StreamMeta>> {
    txn.get(&layout::stream_key(stream))
        .await?
        .map(|v| StreamMeta::decode(&v))
        .transpose()
}
