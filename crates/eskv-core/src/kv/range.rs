//! Key ranges and scan options.

use std::ops::Bound;

/// An ordered key range for scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// `[start, end)`.
    pub fn new(start: Vec<u8>, end: Vec<u8>) -> Self {
        KeyRange {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let (start, end) = crate::tuple::prefix_range(prefix);
        KeyRange {
            start: Bound::Included(start),
            end: end.map_or(Bound::Unbounded, Bound::Excluded),
        }
    }

    /// Every key of a tuple that extends the packed tuple `packed` (see
    /// [`crate::tuple::children_range`]).
    pub fn children(packed: &[u8]) -> Self {
        let (start, end) = crate::tuple::children_range(packed);
        KeyRange::new(start, end)
    }

    /// True when `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let lower = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let upper = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        lower && upper
    }

    /// True when no key can lie inside the range.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        }
    }

    /// The range as a pair of borrowed bounds, for `BTreeMap::range`.
    pub fn as_bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        fn b(x: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match x {
                Bound::Included(v) => Bound::Included(v.as_slice()),
                Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        (b(&self.start), b(&self.end))
    }
}

/// Options for [`KvTransaction::scan`](super::KvTransaction::scan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Return at most this many pairs (`None`: all).
    pub limit: Option<usize>,
    /// Return pairs in descending key order.
    pub reverse: bool,
}

impl ScanOptions {
    /// Ascending, at most `limit`.
    pub fn forward(limit: Option<usize>) -> Self {
        ScanOptions {
            limit,
            reverse: false,
        }
    }

    /// Descending, at most `limit`.
    pub fn backward(limit: Option<usize>) -> Self {
        ScanOptions {
            limit,
            reverse: true,
        }
    }
}
