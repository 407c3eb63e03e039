//! How a long scan is cut into requests, so that each request reads about
//! one page from about one region.
//!
//! tikv-client 0.4 splits a scan request by region and sends the *whole*
//! limit to every region the range overlaps, in parallel, then sorts the
//! union and keeps the first `limit` rows (`shardable_range!` in
//! `request/shard.rs`, `RetryableMultiRegion::single_plan_handler` in
//! `request/plan.rs`, `Buffer::scan_and_fetch` in `transaction/buffer.rs`).
//! A page over a range that spans `R` regions therefore reads and ships up
//! to `R × limit` rows to return `limit`. The client exposes no region
//! boundaries, so a request cannot be cut at them; instead the plan cuts
//! the *key range*: after the first rows it knows roughly how far apart
//! consecutive keys are, and asks for the next page over a window just wide
//! enough to hold it (twice the estimate). A window that small overlaps one
//! region, or two at a boundary, whatever the length of the whole range.
//!
//! Distances are measured on the 16 bytes that follow the longest common
//! prefix of two sampled keys (less two bytes of headroom), read as a
//! big-endian number: order-preserving,
//! and linear for the keys eskv writes (fixed-width-per-magnitude integers
//! such as log positions). Only the number of requests depends on the
//! estimate, never the result: every window is read to its end (or to a
//! full page) before the next starts, so the rows are exactly those of the
//! range, in order. A window that comes back short widens the next one by
//! the density it measured; after [`MAX_EMPTY_WINDOWS`] empty windows in a
//! row the plan asks for the whole remaining range, as an unplanned scan
//! would.

use eskv_core::{KeyRange, KvPair};
use std::ops::Bound;

/// Rows per request once the plan has an estimate.
pub(crate) const SCAN_PAGE: usize = 256;

/// Rows asked for by a request over the whole remaining range (the first
/// of a scan, before anything is known about its keys): this request fans
/// out to every region of the range, so it asks for few rows. A scan that
/// wants no more than this is one such request, as it was before planning:
/// short scans (a stream of a few dozen events, the event layer's
/// condition probes) keep their single round trip.
pub(crate) const PROBE_ROWS: usize = 64;

/// A carried estimate applies to a new scan that starts within this many
/// pages of where it was last used (the next page of a long read), not to
/// an unrelated range of the same transaction.
const CARRY_PAGES: u128 = 4;

/// Windows are sized for this many times the rows they ask for, so an
/// estimate off by up to this factor still fills the page in one request.
const WINDOW_SLACK: u128 = 2;

/// Consecutive empty windows after which the plan stops narrowing.
pub(crate) const MAX_EMPTY_WINDOWS: u32 = 3;

/// Bytes of a key, after the common prefix, that distances are measured on.
const NUM_BYTES: usize = 16;

/// Bytes of the common prefix of a sample that are measured rather than
/// kept as the frame's prefix: a page often spans the whole range of its
/// last varying byte, and a window of two pages must not overflow the
/// frame (with two bytes, windows up to 65,536 pages wide fit).
const HEADROOM_BYTES: usize = 2;

/// Estimated distance between consecutive keys, measured after `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stride {
    prefix: Vec<u8>,
    per_row: u128,
    /// Where the scan that measured it stopped.
    at: Vec<u8>,
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The `NUM_BYTES` bytes of `key` after its first `skip`, zero-padded, as a
/// big-endian number.
fn key_num(key: &[u8], skip: usize) -> u128 {
    let mut b = [0u8; NUM_BYTES];
    let tail = key.get(skip..).unwrap_or(&[]);
    let n = tail.len().min(NUM_BYTES);
    b[..n].copy_from_slice(&tail[..n]);
    u128::from_be_bytes(b)
}

/// The key `prefix` followed by `n` as `NUM_BYTES` big-endian bytes.
fn num_key(prefix: &[u8], n: u128) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + NUM_BYTES);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

impl Stride {
    /// The mean distance between rows from `first` to `last`, `gaps`
    /// rows apart; `None` when the keys give no usable measure.
    pub(crate) fn measure(first: &[u8], last: &[u8], gaps: usize) -> Option<Stride> {
        if gaps == 0 {
            return None;
        }
        let (lo, hi) = if first <= last {
            (first, last)
        } else {
            (last, first)
        };
        let p = common_prefix_len(lo, hi).saturating_sub(HEADROOM_BYTES);
        let span = key_num(hi, p).checked_sub(key_num(lo, p))?;
        let per_row = span / gaps as u128;
        (per_row > 0).then(|| Stride {
            prefix: lo[..p].to_vec(),
            per_row,
            at: last.to_vec(),
        })
    }

    /// True when `key` is within [`CARRY_PAGES`] pages of where the
    /// estimate was last used, in its frame.
    fn near(&self, key: &[u8]) -> bool {
        let p = self.prefix.len();
        self.applies_to(key)
            && self.applies_to(&self.at)
            && key_num(key, p).abs_diff(key_num(&self.at, p))
                <= self.per_row.saturating_mul(SCAN_PAGE as u128 * CARRY_PAGES)
    }

    fn applies_to(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }
}

/// One request of a plan: read at most `limit` rows of `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The window to read.
    pub range: KeyRange,
    /// Rows asked for.
    pub limit: usize,
    /// True when the window is the whole remaining range.
    pub whole: bool,
}

/// The requests of one scan, decided one at a time from what came back.
#[derive(Debug, Clone)]
pub(crate) struct ScanPlan {
    range: KeyRange,
    reverse: bool,
    /// Rows still wanted; `None`: all.
    want: Option<usize>,
    stride: Option<Stride>,
    empty: u32,
    done: bool,
}

fn bound_key(b: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

impl ScanPlan {
    /// A plan for up to `limit` rows of `range` (all when `None`), in
    /// descending order when `reverse`, starting from the estimate `stride`
    /// (from an earlier scan of the same transaction) if the range starts
    /// near where that estimate was last used.
    pub(crate) fn new(
        range: KeyRange,
        reverse: bool,
        limit: Option<usize>,
        stride: Option<Stride>,
    ) -> Self {
        let cursor = if reverse { &range.end } else { &range.start };
        let stride = stride.filter(|s| bound_key(cursor).is_some_and(|c| s.near(c)));
        ScanPlan {
            range,
            reverse,
            want: limit,
            stride,
            empty: 0,
            done: false,
        }
    }

    /// The estimate the plan ended with, to start the next scan from.
    pub(crate) fn stride(&self) -> Option<&Stride> {
        self.stride.as_ref()
    }

    /// The next request, or `None` when the scan is complete.
    pub(crate) fn next_request(&self) -> Option<Request> {
        if self.done || self.want == Some(0) || self.range.is_empty() {
            return None;
        }
        let ask = self.want.map_or(SCAN_PAGE, |w| w.min(SCAN_PAGE));
        let whole = Request {
            range: self.range.clone(),
            limit: ask.min(PROBE_ROWS),
            whole: true,
        };
        if ask <= PROBE_ROWS {
            // As cheap as a probe: no window needed.
            return Some(whole);
        }
        let Some(window) = self.window(ask) else {
            return Some(whole);
        };
        Some(Request {
            range: window,
            limit: ask,
            whole: false,
        })
    }

    /// A window of the remaining range sized for `ask` rows, if the
    /// estimate applies and the window is strictly inside the range.
    fn window(&self, ask: usize) -> Option<KeyRange> {
        let s = self.stride.as_ref()?;
        if self.empty >= MAX_EMPTY_WINDOWS {
            return None;
        }
        let span = s
            .per_row
            .saturating_mul(ask as u128)
            .saturating_mul(WINDOW_SLACK);
        let p = s.prefix.len();
        if !self.reverse {
            let cursor = bound_key(&self.range.start)?;
            if !s.applies_to(cursor) {
                return None;
            }
            let w = num_key(&s.prefix, key_num(cursor, p).checked_add(span)?);
            let inside = match &self.range.end {
                Bound::Included(e) | Bound::Excluded(e) => w < *e,
                Bound::Unbounded => true,
            };
            inside.then(|| KeyRange {
                start: self.range.start.clone(),
                end: Bound::Excluded(w),
            })
        } else {
            let cursor = bound_key(&self.range.end)?;
            if !s.applies_to(cursor) {
                return None;
            }
            let w = num_key(&s.prefix, key_num(cursor, p).checked_sub(span)?);
            let inside = match &self.range.start {
                Bound::Included(b) | Bound::Excluded(b) => w > *b,
                Bound::Unbounded => true,
            };
            inside.then(|| KeyRange {
                start: Bound::Included(w),
                end: self.range.end.clone(),
            })
        }
    }

    /// Takes in the answer to `req` (its rows in scan order) and moves on.
    pub(crate) fn record(&mut self, req: &Request, rows: &[KvPair]) {
        let n = rows.len();
        if let Some(w) = self.want.as_mut() {
            *w = w.saturating_sub(n);
        }
        if n >= req.limit {
            // A full page: continue after its last row, with the density
            // it shows.
            if let (Some((first, _)), Some((last, _))) = (rows.first(), rows.last()) {
                match Stride::measure(first, last, n - 1) {
                    Some(s) => self.stride = Some(s),
                    None => {
                        if let Some(s) = self.stride.as_mut() {
                            s.at = last.clone();
                        }
                    }
                }
                if self.reverse {
                    self.range.end = Bound::Excluded(last.clone());
                } else {
                    self.range.start = Bound::Excluded(last.clone());
                }
            }
            self.empty = 0;
            return;
        }
        // Short: everything of the window was read.
        if req.whole {
            self.done = true;
            return;
        }
        let (edge, next) = if self.reverse {
            (&req.range.start, &mut self.range.end)
        } else {
            (&req.range.end, &mut self.range.start)
        };
        *next = match edge {
            Bound::Included(w) => Bound::Excluded(w.clone()),
            Bound::Excluded(w) => Bound::Included(w.clone()),
            Bound::Unbounded => Bound::Unbounded,
        };
        // The window's exact density becomes the estimate; an empty one
        // multiplies the width by the rows it asked for.
        if let Some(s) = self.stride.as_mut() {
            let span = s
                .per_row
                .saturating_mul(req.limit as u128)
                .saturating_mul(WINDOW_SLACK);
            s.per_row = (span / n.max(1) as u128).max(1);
            if let Some(k) = bound_key(edge) {
                s.at = k.to_vec();
            }
        }
        if n == 0 {
            self.empty += 1;
        } else {
            self.empty = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A simulated cluster: sorted rows cut into regions. `scan` answers
    /// like tikv-client 0.4 does (every region overlapping the range gets
    /// the whole limit; the union is sorted and cut) and counts the rows
    /// the regions read.
    struct Cluster {
        rows: BTreeMap<Vec<u8>, Vec<u8>>,
        /// Region start keys after the first region (sorted).
        splits: Vec<Vec<u8>>,
    }

    impl Cluster {
        fn new(keys: impl IntoIterator<Item = Vec<u8>>, rows_per_region: usize) -> Self {
            let rows: BTreeMap<Vec<u8>, Vec<u8>> = keys.into_iter().map(|k| (k, vec![])).collect();
            let splits = rows
                .keys()
                .enumerate()
                .filter(|(i, _)| *i > 0 && i % rows_per_region == 0)
                .map(|(_, k)| k.clone())
                .collect();
            Cluster { rows, splits }
        }

        fn regions(&self) -> usize {
            self.splits.len() + 1
        }

        /// Returns the rows and how many rows the regions read.
        fn scan(&self, range: &KeyRange, limit: usize, reverse: bool) -> (Vec<KvPair>, usize) {
            fn max_lo(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
                match (&a, &b) {
                    (Bound::Unbounded, _) => b,
                    (_, Bound::Unbounded) => a,
                    (
                        Bound::Included(x) | Bound::Excluded(x),
                        Bound::Included(y) | Bound::Excluded(y),
                    ) => {
                        if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                            a
                        } else {
                            b
                        }
                    }
                }
            }
            fn min_hi(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
                match (&a, &b) {
                    (Bound::Unbounded, _) => b,
                    (_, Bound::Unbounded) => a,
                    (
                        Bound::Included(x) | Bound::Excluded(x),
                        Bound::Included(y) | Bound::Excluded(y),
                    ) => {
                        if x < y || (x == y && matches!(a, Bound::Excluded(_))) {
                            a
                        } else {
                            b
                        }
                    }
                }
            }
            let mut cost = 0;
            let mut out = Vec::new();
            let mut lo: Bound<Vec<u8>> = Bound::Unbounded;
            let mut regions = Vec::new();
            for s in &self.splits {
                regions.push((lo, Bound::Excluded(s.clone())));
                lo = Bound::Included(s.clone());
            }
            regions.push((lo, Bound::Unbounded));
            for (rlo, rhi) in regions {
                let part = KeyRange {
                    start: max_lo(rlo, range.start.clone()),
                    end: min_hi(rhi, range.end.clone()),
                };
                if part.is_empty() {
                    continue;
                }
                let it = self
                    .rows
                    .range::<[u8], _>(part.as_bounds())
                    .map(|(k, v)| (k.clone(), v.clone()));
                let take: Vec<KvPair> = if reverse {
                    it.rev().take(limit).collect()
                } else {
                    it.take(limit).collect()
                };
                cost += take.len();
                out.extend(take);
            }
            out.sort();
            if reverse {
                out.reverse();
            }
            out.truncate(limit);
            (out, cost)
        }

        fn expected(&self, range: &KeyRange, reverse: bool, limit: Option<usize>) -> Vec<KvPair> {
            let it = self
                .rows
                .range::<[u8], _>(range.as_bounds())
                .map(|(k, v)| (k.clone(), v.clone()));
            let all: Vec<KvPair> = if reverse {
                it.rev().collect()
            } else {
                it.collect()
            };
            all.into_iter().take(limit.unwrap_or(usize::MAX)).collect()
        }

        /// Runs a plan; returns rows, region reads, and requests.
        fn run(&self, mut plan: ScanPlan, reverse: bool) -> (Vec<KvPair>, usize, usize, ScanPlan) {
            let (mut rows, mut cost, mut requests) = (Vec::new(), 0, 0);
            while let Some(req) = plan.next_request() {
                let (page, c) = self.scan(&req.range, req.limit, reverse);
                plan.record(&req, &page);
                rows.extend(page);
                cost += c;
                requests += 1;
                assert!(requests < 100_000, "the plan does not terminate");
            }
            (rows, cost, requests, plan)
        }

        /// What the old loop cost: every request over the whole remaining
        /// range with limit SCAN_PAGE.
        fn unplanned_cost(&self, range: &KeyRange, reverse: bool) -> usize {
            let mut r = range.clone();
            let mut cost = 0;
            loop {
                let (page, c) = self.scan(&r, SCAN_PAGE, reverse);
                cost += c;
                if page.len() < SCAN_PAGE {
                    return cost;
                }
                let last = page.last().unwrap().0.clone();
                if reverse {
                    r.end = Bound::Excluded(last);
                } else {
                    r.start = Bound::Excluded(last);
                }
            }
        }
    }

    fn log_key(pos: u64) -> Vec<u8> {
        eskv_core::layout::log_key(pos)
    }

    #[test]
    fn key_numbers_keep_key_order() {
        let p = b"\x10log".to_vec();
        let a = num_key(&p, 5);
        let b = num_key(&p, 6);
        assert!(a < b);
        assert_eq!(key_num(&a, p.len()), 5);
        assert_eq!(key_num(b"\x10log\x01", p.len()), 1u128 << 120);
        let s = Stride::measure(&log_key(1000), &log_key(1255), 255).unwrap();
        assert!(s.per_row > 0);
        assert!(log_key(1256).starts_with(&s.prefix));
        assert_eq!(Stride::measure(b"a", b"a", 3), None);
        assert_eq!(Stride::measure(b"a", b"b", 0), None);
    }

    /// A long log over many regions: the plan returns exactly the rows of
    /// the range, in order, and its requests read about one page each,
    /// where the unplanned loop read a page from every region ahead.
    #[test]
    fn a_long_scan_reads_about_one_page_per_request() {
        let cluster = Cluster::new((1..=60_000).map(log_key), 2_000);
        assert_eq!(cluster.regions(), 30);
        for reverse in [false, true] {
            let range = eskv_core::layout::log_range(1, 60_000);
            let (rows, cost, requests, _) =
                cluster.run(ScanPlan::new(range.clone(), reverse, None, None), reverse);
            assert_eq!(
                rows,
                cluster.expected(&range, reverse, None),
                "reverse={reverse}"
            );
            let returned = rows.len();
            // One probe fans out (≤ 30 regions × PROBE_ROWS), the other
            // requests read at most two regions' pages each.
            let bound = cluster.regions() * PROBE_ROWS + 2 * requests * SCAN_PAGE;
            assert!(cost <= bound, "reverse={reverse}: read {cost} > {bound}");
            assert!(
                cost <= returned * 2,
                "reverse={reverse}: read {cost} rows to return {returned}"
            );
            let unplanned = cluster.unplanned_cost(&range, reverse);
            assert!(
                unplanned >= 10 * cost,
                "reverse={reverse}: unplanned {unplanned} vs planned {cost}"
            );
            eprintln!("reverse={reverse}: {requests} requests, read {cost} rows for {returned}, unplanned {unplanned}");
            assert!(
                requests <= returned / SCAN_PAGE * 11 / 10 + 8,
                "{requests} requests"
            );
        }
    }

    /// Limits, sub-ranges, sparse and irregular keys: the rows are always
    /// exactly the expected ones.
    #[test]
    fn plans_return_exactly_the_rows_of_the_range() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut keys: Vec<Vec<u8>> = (1..=3_000).map(|i| log_key(i * 7)).collect();
        // Irregular keys of other lengths and tables, and a dense cluster.
        for _ in 0..2_000 {
            let len = 1 + (next() % 12) as usize;
            keys.push((0..len).map(|_| next() as u8).collect());
        }
        keys.extend((0..500u32).map(|i| [b"zz".as_slice(), &i.to_be_bytes()].concat()));
        let cluster = Cluster::new(keys, 97);
        let ranges = [
            KeyRange::prefix(b""),
            eskv_core::layout::log_range(100, 20_000),
            KeyRange::new(b"\x05".to_vec(), b"\xf0\x01".to_vec()),
            KeyRange {
                start: Bound::Excluded(log_key(70)),
                end: Bound::Unbounded,
            },
            KeyRange {
                start: Bound::Unbounded,
                end: Bound::Included(b"zz\0\0\x01\0".to_vec()),
            },
        ];
        for range in &ranges {
            for reverse in [false, true] {
                for limit in [None, Some(1), Some(31), Some(300), Some(1_000)] {
                    for stride in [None, Stride::measure(&log_key(1), &log_key(2), 1)] {
                        let plan = ScanPlan::new(range.clone(), reverse, limit, stride);
                        let (rows, _, _, _) = cluster.run(plan, reverse);
                        assert_eq!(
                            rows,
                            cluster.expected(range, reverse, limit),
                            "{range:?} reverse={reverse} limit={limit:?}"
                        );
                    }
                }
            }
        }
    }

    /// A stride carried from an earlier scan skips the probe; empty windows
    /// widen fast and give up narrowing after a few.
    #[test]
    fn carried_estimates_and_empty_windows() {
        let cluster = Cluster::new((1..=10_000).map(|i| log_key(i * 1_000)), 500);
        let first = eskv_core::layout::log_range(1_000, 2_000_000);
        let (_, _, _, plan) = cluster.run(ScanPlan::new(first, false, Some(512), None), false);
        let carried = plan.stride().cloned();
        assert!(carried.is_some());
        // The next page of the same read (rows 1000..=512,000 were read).
        let next = eskv_core::layout::log_range(512_001, 10_000_000);
        let plan = ScanPlan::new(next.clone(), false, Some(512), carried.clone());
        let req = plan.next_request().unwrap();
        assert!(!req.whole, "a carried estimate must give a window");
        assert_eq!(req.limit, SCAN_PAGE);
        let (rows, _, _, _) = cluster.run(plan, false);
        assert_eq!(rows, cluster.expected(&next, false, Some(512)));
        // Not for a range far from where the estimate was used, nor for an
        // unrelated table, nor for a scan no bigger than a probe.
        for (range, limit) in [
            (
                eskv_core::layout::log_range(5_000_000, 10_000_000),
                Some(512),
            ),
            (KeyRange::prefix(b"\x31tag"), Some(512)),
            (next.clone(), Some(PROBE_ROWS)),
        ] {
            let req = ScanPlan::new(range, false, limit, carried.clone())
                .next_request()
                .unwrap();
            assert!(req.whole, "{req:?}");
            assert!(req.limit <= PROBE_ROWS);
        }
        // An estimate far too small for the keys: a few empty windows, then
        // the whole range, and still the right rows.
        let range = eskv_core::layout::log_range(1, 10_000_000);
        let tiny = Some(Stride {
            prefix: Vec::new(),
            per_row: 1,
            at: log_key(1),
        });
        let (rows, _, requests, _) =
            cluster.run(ScanPlan::new(range.clone(), false, None, tiny), false);
        assert_eq!(rows, cluster.expected(&range, false, None));
        assert!(requests < 200, "{requests} requests");
    }
}
