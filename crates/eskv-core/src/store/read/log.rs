//! The global log read in pages through the read filter, and the head
//! (with the lifecycle probe) every positional read starts from.

use super::super::live::Live;
use super::super::options::{consistent_through, LogFilter, ReadOptions, ReadResult};
use super::super::EventStore;
use super::scan::{scan_page_each, Order};
use crate::envelope;
use crate::error::Result;
use crate::event::Position;
use crate::kv::KvTransaction;
use crate::layout;

impl EventStore {
    /// The log, page by page, through the read filter, keeping what passes
    /// `filter` (checked on each event).
    pub(super) async fn read_log(
        &self,
        filter: &LogFilter,
        opts: ReadOptions,
    ) -> Result<ReadResult> {
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((mut lo, mut hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                head,
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let want = opts.limit.unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let page = opts.limit.map_or(1024, |l| l.clamp(16, 1024));
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        while events.len() < want && lo <= hi {
            // Decoded no further than needed: a read of N events never
            // touches (nor fails on) the rows after them. Each event is
            // decoded from the bytes the backend lends.
            let take = page.min(want - events.len());
            let (mut decoded, mut failed) = (Vec::with_capacity(take), None);
            let (from, to) = (lo, hi);
            scan_page_each(
                &mut *txn,
                layout::log_range,
                from,
                to,
                take,
                order,
                &mut |k, v| {
                    let event = layout::parse_log_key(k).and_then(|pos| envelope::decode(v, pos));
                    match event {
                        Ok(e) => {
                            if opts.backwards {
                                hi = e.position.saturating_sub(1);
                            } else {
                                lo = e.position + 1;
                            }
                            decoded.push(e);
                        }
                        Err(e) => failed = Some(e),
                    }
                    failed.is_none()
                },
            )
            .await?;
            if let Some(e) = failed {
                return Err(e);
            }
            let n = decoded.len();
            for e in live.retain(&mut *txn, decoded).await? {
                if filter.matches(&e) {
                    events.push(e);
                    if events.len() == want {
                        break;
                    }
                }
            }
            if n < take || (opts.backwards && hi == 0) {
                break;
            }
        }
        Ok(ReadResult {
            head,
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }
}

pub(in crate::store) async fn read_head(txn: &mut dyn KvTransaction) -> Result<Position> {
    txn.get(&layout::head_key())
        .await?
        .map_or(Ok(0), |v| layout::parse_u64(&v, "head"))
}

/// The head, read together with [`Live::life_probe`] (whose answer it
/// hands to `live`).
pub(in crate::store) async fn read_head_probing(
    txn: &mut dyn KvTransaction,
    live: &mut Live<'_>,
) -> Result<Position> {
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

/// The inclusive position range a read covers, or `None` when empty.
pub(in crate::store) fn bounds(opts: ReadOptions, head: Position) -> Option<(Position, Position)> {
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
