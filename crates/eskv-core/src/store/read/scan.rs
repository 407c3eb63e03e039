//! Positional scans shared by every read path: pages of an index or of
//! the log in either order, and the events at a list of positions.

use crate::envelope;
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::{Capabilities, KeyRange, KvPair, KvTransaction, ScanOptions, VisitRow};
use crate::layout::{self, Index};

/// Which way a positional scan runs, and how a backwards page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Order {
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
pub(in crate::store) async fn scan_page(
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

/// [`scan_page`], handing each row to `visit` until it returns `false`:
/// borrowed from the backend where it can lend them
/// ([`KvTransaction::scan_each`]).
pub(in crate::store) async fn scan_page_each(
    txn: &mut dyn KvTransaction,
    range_of: impl Fn(u64, u64) -> KeyRange,
    lo: u64,
    hi: u64,
    page: usize,
    order: Order,
    visit: &mut VisitRow<'_>,
) -> Result<()> {
    if order != Order::BackwardByWindows {
        let opts = ScanOptions {
            limit: Some(page),
            reverse: order.backwards(),
        };
        return Ok(txn.scan_each(range_of(lo, hi), opts, visit).await?);
    }
    crate::kv::visit_rows(scan_page(txn, range_of, lo, hi, page, order).await?, visit);
    Ok(())
}

/// Scans one positional index over `[lo, hi]` in pages, keeping entries
/// whose value passes `keep`, until `limit` are kept.
pub(in crate::store) async fn scan_index(
    txn: &mut dyn KvTransaction,
    index: Index<'_>,
    mut lo: Position,
    mut hi: Position,
    order: Order,
    limit: Option<usize>,
    mut keep: impl FnMut(&[u8]) -> Result<bool> + Send,
) -> Result<Vec<Position>> {
    let want = limit.unwrap_or(usize::MAX);
    let page = limit.map_or(1024, |l| l.clamp(16, 1024));
    let mut out = Vec::new();
    let backwards = order.backwards();
    while out.len() < want && lo <= hi {
        let (mut rows, mut failed) = (0, None);
        let (from, to) = (lo, hi);
        let range_of = |a, b| index.range(a, b);
        scan_page_each(txn, range_of, from, to, page, order, &mut |k, v| {
            rows += 1;
            let kept = index.parse_position(k).and_then(|pos| {
                if backwards {
                    hi = pos.saturating_sub(1);
                } else {
                    lo = pos + 1;
                }
                Ok(keep(layout::open_index_value(k, v)?)?.then_some(pos))
            });
            match kept {
                Ok(Some(pos)) => out.push(pos),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
            failed.is_none() && out.len() < want
        })
        .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        if rows < page || (backwards && hi == 0) {
            break;
        }
    }
    Ok(out)
}

/// Loads events by position, in the given order, decoding each from the
/// bytes the backend lends ([`KvTransaction::get_each`]): one allocation
/// per field of the event, none for the stored value.
pub(in crate::store) async fn load_events(
    txn: &mut dyn KvTransaction,
    positions: &[Position],
) -> Result<Vec<RecordedEvent>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<u8>> = positions.iter().map(|&p| layout::log_key(p)).collect();
    let mut events = Vec::with_capacity(positions.len());
    let mut failed = None;
    let mut next = positions.iter();
    txn.get_each(&keys, &mut |v| {
        let Some(&p) = next.next() else { return };
        if failed.is_some() {
            return;
        }
        let decoded = match v {
            Some(v) => envelope::decode(v, p),
            None => Err(Error::corrupt(
                Some(p),
                "an index points at this position but the log has no event there",
            )),
        };
        match decoded {
            Ok(e) => events.push(e),
            Err(e) => failed = Some(e),
        }
    })
    .await?;
    match failed {
        Some(e) => Err(e),
        None if events.len() == positions.len() => Ok(events),
        None => Err(Error::corrupt(
            None,
            format!(
                "the backend answered {} of {} reads of the log",
                events.len(),
                positions.len()
            ),
        )),
    }
}
