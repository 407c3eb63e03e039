//! The narrow interface a backend implements, and the one adapter that turns
//! it into a full [`KvTransaction`].
//!
//! A backend provides reads at one snapshot and a commit of a write set
//! ([`KvSnapshot`]). [`BufferedTxn`] adds everything the contract asks for
//! on top, in one place for every backend: the write buffer and
//! read-your-own-writes (point reads answered from the buffer, scans merged
//! over the snapshot with enough rows fetched that buffered deletes cannot
//! leave a short page), empty keys, the limits of [`Capabilities`], the
//! empty-transaction shortcut, and the tracing spans.
//!
//! Invariant: a [`KvSnapshot`] never sees buffered writes. It is asked only
//! for keys the buffer does not answer, for non-empty ranges, and to commit
//! a non-empty write or validation set that is within the limits.

use super::{
    begin_span, scan_span, traced_commit, Capabilities, KeyRange, KvPair, KvTransaction, ReadMany,
    ScanOptions, VisitRow, VisitValue, WriteBuffer, WriteSet,
};
use crate::kv::KvResult;
use async_trait::async_trait;
use tracing::Instrument;

/// Reads at one snapshot, and the commit of a write set validated against
/// it: what a backend implements (see the [contract](crate::kv)). Wrap it in
/// a [`BufferedTxn`] to return it from [`KvStore::begin`](super::KvStore::begin).
///
/// ```
/// use eskv_core::kv::{BufferedTxn, Capabilities, KeyRange, KvPair, KvSnapshot, ReadMany, ScanOptions, WriteSet};
/// use eskv_core::{KvResult, KvTransaction};
/// use std::collections::BTreeMap;
///
/// /// A frozen map that accepts commits without checking them: enough to
/// /// show the shape, not a backend.
/// struct Frozen(BTreeMap<Vec<u8>, Vec<u8>>);
///
/// #[eskv_core::async_trait]
/// impl KvSnapshot for Frozen {
///     async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
///         Ok(keys.iter().map(|k| self.0.get(k).cloned()).collect())
///     }
///     async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
///         let rows = self.0.range::<[u8], _>(range.as_bounds()).map(|(k, v)| (k.clone(), v.clone()));
///         let rows: Vec<KvPair> = if opts.reverse { rows.rev().collect() } else { rows.collect() };
///         Ok(rows.into_iter().take(opts.limit.unwrap_or(usize::MAX)).collect())
///     }
///     async fn commit(self, _writes: WriteSet, _validated: Vec<Vec<u8>>) -> KvResult<()> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> KvResult<()> {
/// let snapshot = Frozen(BTreeMap::from([(b"a".to_vec(), b"1".to_vec())]));
/// let mut txn = BufferedTxn::new(snapshot, Capabilities::unlimited("frozen"));
/// txn.put(b"b".to_vec(), b"2".to_vec());
/// // Reads see the snapshot and this transaction's own writes.
/// let rows = txn.scan(KeyRange::prefix(b""), ScanOptions::forward(None)).await?;
/// assert_eq!(rows.len(), 2);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait KvSnapshot: Send + 'static {
    /// The values of `keys` at the snapshot, in input order.
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>>;

    /// Up to `opts.limit` rows of the non-empty `range` at the snapshot, in
    /// key order (descending if `opts.reverse`).
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>>;

    /// [`get_many`](Self::get_many), handing each value to `visit` in
    /// input order. The default copies through `get_many`; a backend
    /// whose values can be borrowed for the call (memory, redb) lends
    /// them, saving an allocation and a copy per value.
    async fn get_each(&mut self, keys: Vec<Vec<u8>>, visit: &mut VisitValue<'_>) -> KvResult<()> {
        super::visit_values(self.get_many(keys).await?, visit);
        Ok(())
    }

    /// [`scan`](Self::scan), handing each row to `visit` in scan order
    /// until it returns `false`. The default copies through `scan`; a
    /// backend whose rows can be borrowed for the call (memory, redb,
    /// fjall) lends them, saving two allocations and copies per row.
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        super::visit_rows(self.scan(range, opts).await?, visit);
        Ok(())
    }

    /// [`get_many`](Self::get_many) and several [`scan`](Self::scan)s at
    /// once. The default runs them one after another; backends that pay per
    /// call (a thread hand-off, a network round trip) override it.
    async fn read_many(
        &mut self,
        gets: Vec<Vec<u8>>,
        scans: Vec<(KeyRange, ScanOptions)>,
    ) -> KvResult<ReadMany> {
        let values = if gets.is_empty() {
            Vec::new()
        } else {
            self.get_many(gets).await?
        };
        let mut rows = Vec::with_capacity(scans.len());
        for (range, opts) in scans {
            rows.push(self.scan(range, opts).await?);
        }
        Ok((values, rows))
    }

    /// Takes the caller's word that `key`, about to be written, was absent
    /// at the snapshot ([`KvTransaction::put_new`]). The default ignores
    /// it; a backend that reads written keys' state before committing
    /// records it instead.
    fn assume_absent(&mut self, key: &[u8]) {
        let _ = key;
    }

    /// Applies `writes` atomically, unless a key of `writes` or `validated`
    /// was changed by a transaction that committed after the snapshot
    /// (then [`KvError::Conflict`](crate::Error::Conflict)). See the
    /// contract's rules 4 to 7 in [`crate::kv`].
    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()>
    where
        Self: Sized;
}

/// A [`KvTransaction`] over a backend's [`KvSnapshot`]: the one place that
/// implements the write buffer, read-your-own-writes, limits and tracing.
pub struct BufferedTxn<S> {
    snapshot: S,
    buf: WriteBuffer,
    caps: Capabilities,
}

impl<S: KvSnapshot> BufferedTxn<S> {
    /// A transaction reading from `snapshot`, checked against `caps` at
    /// commit.
    pub fn new(snapshot: S, caps: Capabilities) -> Self {
        BufferedTxn {
            snapshot,
            buf: WriteBuffer::new(),
            caps,
        }
    }

    /// Opens the begin span for `caps.backend` around `open`, the
    /// backend's way of fixing a snapshot, and wraps the result.
    pub async fn begin<F>(caps: &Capabilities, open: F) -> KvResult<Box<dyn KvTransaction>>
    where
        F: std::future::Future<Output = KvResult<S>>,
    {
        let snapshot = open.instrument(begin_span(caps.backend)).await?;
        Ok(Box::new(BufferedTxn::new(snapshot, caps.clone())))
    }

    /// The keys of `keys` the buffer does not answer (empty keys are never
    /// stored, so they are answered too), in input order.
    fn unbuffered(&self, keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        keys.iter()
            .filter(|k| !k.is_empty() && self.buf.lookup(k).is_none())
            .cloned()
            .collect()
    }

    /// `keys`' values: from the buffer, else the next of `fetched` (the
    /// snapshot's values of [`unbuffered`](Self::unbuffered), in order).
    fn merge_gets(&self, keys: &[Vec<u8>], fetched: Vec<Option<Vec<u8>>>) -> Vec<Option<Vec<u8>>> {
        let mut fetched = fetched.into_iter();
        keys.iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None if k.is_empty() => None,
                None => fetched.next().flatten(),
            })
            .collect()
    }

    /// What to ask the snapshot for a scan of `range`: `None` for an empty
    /// range, else the range with enough rows that buffered deletes cannot
    /// leave fewer than the caller's limit.
    fn snapshot_scan(
        &self,
        range: &KeyRange,
        opts: ScanOptions,
    ) -> Option<(KeyRange, ScanOptions)> {
        (!range.is_empty()).then(|| {
            let limit = self.buf.overfetch(range, opts.limit);
            (range.clone(), ScanOptions { limit, ..opts })
        })
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: KvSnapshot> KvTransaction for BufferedTxn<S> {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let keys = [key.to_vec()];
        Ok(self.get_many(&keys).await?.pop().flatten())
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        let missing = self.unbuffered(keys);
        let fetched = if missing.is_empty() {
            Vec::new()
        } else {
            self.snapshot.get_many(missing).await?
        };
        Ok(self.merge_gets(keys, fetched))
    }

    async fn get_each(&mut self, keys: &[Vec<u8>], visit: &mut VisitValue<'_>) -> KvResult<()> {
        // Reads that wrote nothing (every read path) borrow from the
        // snapshot; the others take the merging path.
        if self.buf.writes().is_empty() && keys.iter().all(|k| !k.is_empty()) {
            return self.snapshot.get_each(keys.to_vec(), visit).await;
        }
        super::visit_values(self.get_many(keys).await?, visit);
        Ok(())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let Some((r, o)) = self.snapshot_scan(&range, opts) else {
            return Ok(Vec::new());
        };
        let rows = self
            .snapshot
            .scan(r, o)
            .instrument(scan_span(self.caps.backend, opts))
            .await?;
        Ok(self.buf.merge_scan(&range, opts, rows))
    }

    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        let Some((r, o)) = self.snapshot_scan(&range, opts) else {
            return Ok(());
        };
        // A range this transaction wrote nothing in (every read path's)
        // is the snapshot's, lent as it is; the others take the merge.
        if self.buf.is_untouched(&range) {
            return self
                .snapshot
                .scan_each(r, o, visit)
                .instrument(scan_span(self.caps.backend, opts))
                .await;
        }
        super::visit_rows(self.scan(range, opts).await?, visit);
        Ok(())
    }

    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany> {
        let missing = self.unbuffered(gets);
        let plans: Vec<Option<(KeyRange, ScanOptions)>> = scans
            .iter()
            .map(|(r, o)| self.snapshot_scan(r, *o))
            .collect();
        let asked: Vec<(KeyRange, ScanOptions)> = plans.iter().flatten().cloned().collect();
        let (fetched, rows) = if missing.is_empty() && asked.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            self.snapshot.read_many(missing, asked).await?
        };
        let values = self.merge_gets(gets, fetched);
        let mut rows = rows.into_iter();
        let merged = scans
            .iter()
            .zip(&plans)
            .map(|((r, o), plan)| match plan {
                Some(_) => self.buf.merge_scan(r, *o, rows.next().unwrap_or_default()),
                None => Vec::new(),
            })
            .collect();
        Ok((values, merged))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.buf.put(key, value)
    }

    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.snapshot.assume_absent(&key);
        self.buf.put(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.buf.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.buf.validate(key)
    }

    async fn commit(self: Box<Self>) -> KvResult<()> {
        let BufferedTxn {
            snapshot,
            buf,
            caps,
        } = *self;
        traced_commit(caps.backend, buf.writes().len(), async move {
            buf.check_limits(&caps)?;
            if buf.is_empty() {
                return Ok(());
            }
            let (writes, validated) = buf.into_parts()?;
            snapshot.commit(writes, validated).await
        })
        .await
    }
}
