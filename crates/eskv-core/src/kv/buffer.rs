//! The write buffer: a transaction's buffered writes and validation set,
//! and the read-your-own-writes merge over a snapshot.

use super::{Capabilities, KeyRange, KvPair, ScanOptions, WriteSet};
use crate::kv::{KvError, KvResult};
use std::collections::BTreeMap;

/// The buffered writes of a transaction, with the read-your-own-writes merge
/// that backends share. `None` marks a deletion.
#[derive(Debug, Default, Clone)]
pub struct WriteBuffer {
    writes: WriteSet,
    validated: Vec<Vec<u8>>,
    error: Option<String>,
}

impl WriteBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers a put. An empty key poisons the buffer: commit will fail.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if key.is_empty() {
            self.error = Some("empty key".into());
            return;
        }
        self.writes.insert(key, Some(value));
    }

    /// Buffers a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        if key.is_empty() {
            self.error = Some("empty key".into());
            return;
        }
        self.writes.insert(key, None);
    }

    /// Adds a key to the validation set.
    pub fn validate(&mut self, key: Vec<u8>) {
        self.validated.push(key);
    }

    /// The buffered state of `key`: `Some(Some(v))` put, `Some(None)`
    /// deleted, `None` untouched.
    pub fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|v| v.as_deref())
    }

    /// True when nothing was written or validated.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.validated.is_empty()
    }

    /// The buffered writes in key order.
    pub fn writes(&self) -> &WriteSet {
        &self.writes
    }

    /// The validation set (may repeat keys; may overlap the writes).
    pub fn validated(&self) -> &[Vec<u8>] {
        &self.validated
    }

    /// Splits into writes and validation set, failing if an invalid write
    /// was buffered.
    pub fn into_parts(self) -> KvResult<(WriteSet, Vec<Vec<u8>>)> {
        if let Some(e) = self.error {
            return Err(KvError::invalid(format!(
                "transaction buffered an invalid write: {e}"
            )));
        }
        Ok((self.writes, self.validated))
    }

    /// Checks the buffered writes against `caps`, so a backend rejects an
    /// oversized transaction before sending anything.
    pub fn check_limits(&self, caps: &Capabilities) -> KvResult<()> {
        if let Some(e) = &self.error {
            return Err(KvError::invalid(format!(
                "transaction buffered an invalid write: {e}"
            )));
        }
        if let Some(max) = caps.max_value_size {
            if let Some(v) = self
                .writes
                .values()
                .flatten()
                .map(|v| v.len())
                .find(|&n| n > max)
            {
                return Err(KvError::limit(
                    format!("a value for the {} backend (bytes)", caps.backend),
                    max,
                    v,
                ));
            }
        }
        if let Some(max) = caps.max_ops_per_txn {
            let ops = self.writes.len() + self.validated.len();
            if ops > max {
                return Err(KvError::limit(
                    format!("operations in one {} transaction", caps.backend),
                    max,
                    ops,
                ));
            }
        }
        if let Some(max) = caps.max_txn_bytes {
            let bytes: usize = self
                .writes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
                .sum();
            if bytes > max {
                return Err(KvError::limit(
                    format!("bytes written by one {} transaction", caps.backend),
                    max,
                    bytes,
                ));
            }
        }
        Ok(())
    }

    /// How many extra rows a snapshot scan of `range` must fetch so that,
    /// after buffered deletes hide some, `limit` rows remain.
    pub fn overfetch(&self, range: &KeyRange, limit: Option<usize>) -> Option<usize> {
        if range.is_empty() {
            // `BTreeMap::range` panics on a range whose start is past its end.
            return limit;
        }
        limit.map(|l| {
            l + self
                .writes
                .range::<[u8], _>(range.as_bounds())
                .filter(|(_, v)| v.is_none())
                .count()
        })
    }

    /// True when no buffered write lies in `range`: a scan of it reads
    /// the snapshot alone.
    pub fn is_untouched(&self, range: &KeyRange) -> bool {
        range.is_empty()
            || self
                .writes
                .range::<[u8], _>(range.as_bounds())
                .next()
                .is_none()
    }

    /// Merges buffered writes over a snapshot scan result. `snapshot` must be
    /// the snapshot's rows of `range` in scan order, fetched with at least
    /// [`overfetch`](Self::overfetch) rows (or all rows).
    pub fn merge_scan(
        &self,
        range: &KeyRange,
        opts: ScanOptions,
        snapshot: Vec<KvPair>,
    ) -> Vec<KvPair> {
        if range.is_empty() {
            // Nothing lies inside; `BTreeMap::range` would panic.
            return Vec::new();
        }
        let mut local = self.writes.range::<[u8], _>(range.as_bounds()).peekable();
        if local.peek().is_none() {
            let mut rows = snapshot;
            if let Some(l) = opts.limit {
                rows.truncate(l);
            }
            return rows;
        }
        // No cutoff is needed when the snapshot page was cut short by its
        // limit: it holds `limit + deletes in range` rows, so at least
        // `limit` of them survive the merge, all at or before its last row,
        // and buffered keys beyond that row are never reached by `take`.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = snapshot.into_iter().collect();
        for (k, v) in local {
            match v {
                Some(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        let iter: Box<dyn Iterator<Item = KvPair>> = if opts.reverse {
            Box::new(merged.into_iter().rev())
        } else {
            Box::new(merged.into_iter())
        };
        match opts.limit {
            Some(l) => iter.take(l).collect(),
            None => iter.collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::ops::Bound;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..4, 1..3)
    }

    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            Just(Bound::Unbounded),
            key().prop_map(Bound::Included),
            key().prop_map(Bound::Excluded),
        ]
    }

    proptest! {
        /// `merge_scan` over a snapshot page fetched with `overfetch` rows
        /// returns exactly what a scan of the snapshot with the buffered
        /// writes applied would: the same rows, order and limit.
        #[test]
        fn merge_scan_matches_a_scan_of_the_written_map(
            snapshot in prop::collection::btree_map(key(), key(), 0..12),
            writes in prop::collection::vec((key(), prop::option::of(key())), 0..10),
            start in bound(),
            end in bound(),
            reverse: bool,
            limit in prop::option::of(0usize..8),
        ) {
            let range = KeyRange { start, end };
            let opts = ScanOptions { limit, reverse };
            let mut buf = WriteBuffer::new();
            let mut model = snapshot.clone();
            for (k, v) in writes {
                match v {
                    Some(v) => {
                        buf.put(k.clone(), v.clone());
                        model.insert(k, v);
                    }
                    None => {
                        buf.delete(k.clone());
                        model.remove(&k);
                    }
                }
            }
            let scan = |map: &BTreeMap<Vec<u8>, Vec<u8>>, limit: Option<usize>| -> Vec<KvPair> {
                if range.is_empty() {
                    return Vec::new();
                }
                let rows = map.range::<[u8], _>(range.as_bounds()).map(|(k, v)| (k.clone(), v.clone()));
                let rows: Vec<KvPair> = if reverse { rows.rev().collect() } else { rows.collect() };
                rows.into_iter().take(limit.unwrap_or(usize::MAX)).collect()
            };
            let page = scan(&snapshot, buf.overfetch(&range, limit));
            let merged = buf.merge_scan(&range, opts, page);
            prop_assert_eq!(merged, scan(&model, limit));
        }
    }
}
