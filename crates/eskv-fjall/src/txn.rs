//! Transactions: reads at a fjall snapshot, writes buffered until commit.

use crate::error::BACKEND;
use crate::store::{Db, Inner, Shared};
use async_trait::async_trait;
use eskv_core::kv::{KvSnapshot, ReadMany, VisitRow, VisitValue, WriteSet};
use eskv_core::oracle::writer::submit;
use eskv_core::oracle::Snapshot;
use eskv_core::{KeyRange, KvError, KvPair, KvResult, ScanOptions};
use fjall::Readable;
use std::sync::Arc;

/// Reads that may return more rows than this run on the blocking pool;
/// smaller ones (every point read, the event layer's pages and probes)
/// run where they are called: they are served from the memtable, the
/// block cache or one `pread`, and a hop to another thread would cost
/// more than the read.
const INLINE_ROWS: usize = 1024;

/// A snapshot, and the database it reads (kept so that a reopen after an
/// I/O failure waits until no snapshot uses the old one).
pub(crate) struct View {
    pub(crate) snap: fjall::Snapshot,
    pub(crate) db: Arc<Db>,
}

/// A transaction's snapshot: fjall's snapshot of the data, and the
/// oracle's snapshot its commit is checked against.
pub(crate) struct FjallSnapshot {
    pub(crate) store: Arc<Inner>,
    pub(crate) snapshot: Snapshot,
    pub(crate) view: Arc<View>,
}

impl View {
    fn get(&self, s: &Shared, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self
            .snap
            .get(&self.db.data, key)
            .map_err(|e| s.map_err(e))?
            .map(|v| v.to_vec()))
    }

    /// Hands up to `limit` rows of `range` to `visit`, in scan order,
    /// until it returns `false`.
    fn scan_each(
        &self,
        s: &Shared,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        let limit = limit.unwrap_or(usize::MAX);
        if limit == 0 || range.is_empty() {
            return Ok(());
        }
        let iter = self
            .snap
            .range::<&[u8], _>(&self.db.data, range.as_bounds());
        let mut seen = 0;
        let mut each = |g: fjall::Guard| -> KvResult<bool> {
            let (k, v) = g.into_inner().map_err(|e| s.map_err(e))?;
            seen += 1;
            Ok(visit(&k, &v) && seen < limit)
        };
        if reverse {
            for g in iter.rev() {
                if !each(g)? {
                    break;
                }
            }
        } else {
            for g in iter {
                if !each(g)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` rows of `range`, in scan order.
    fn scan(
        &self,
        s: &Shared,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> KvResult<Vec<KvPair>> {
        let mut out = Vec::new();
        self.scan_each(s, range, reverse, limit, &mut |k: &[u8], v: &[u8]| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }
}

impl FjallSnapshot {
    /// Runs a read against the snapshot: here when it is small, on the
    /// blocking pool when it may be large (see [`INLINE_ROWS`]).
    async fn read<R: Send + 'static>(
        &self,
        small: bool,
        f: impl FnOnce(&Shared, &View) -> KvResult<R> + Send + 'static,
    ) -> KvResult<R> {
        let shared = self.store.shared.clone();
        if small {
            return shared.call(|| f(&shared, &self.view));
        }
        let view = self.view.clone();
        tokio::task::spawn_blocking(move || shared.call(|| f(&shared, &view)))
            .await
            .map_err(|e| KvError::backend(BACKEND, e))?
    }
}

fn is_small(limit: Option<usize>) -> bool {
    limit.is_some_and(|l| l <= INLINE_ROWS)
}

#[async_trait]
impl KvSnapshot for FjallSnapshot {
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        let (values, _) = self.read_many(keys, Vec::new()).await?;
        Ok(values)
    }

    /// Lends each value where the read runs here (see [`INLINE_ROWS`]).
    async fn get_each(&mut self, keys: Vec<Vec<u8>>, visit: &mut VisitValue<'_>) -> KvResult<()> {
        if keys.len() <= INLINE_ROWS {
            let (s, v) = (&self.store.shared, &self.view);
            return s.call(|| {
                for k in &keys {
                    let value = v.snap.get(&v.db.data, k).map_err(|e| s.map_err(e))?;
                    visit(value.as_deref());
                }
                Ok(())
            });
        }
        eskv_core::kv::visit_values(self.get_many(keys).await?, visit);
        Ok(())
    }

    /// Lends each row where the read runs here (see [`INLINE_ROWS`]).
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        if is_small(opts.limit) {
            let (s, v) = (&self.store.shared, &self.view);
            return s.call(|| v.scan_each(s, &range, opts.reverse, opts.limit, &mut *visit));
        }
        eskv_core::kv::visit_rows(self.scan(range, opts).await?, visit);
        Ok(())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let span = tracing::Span::current();
        self.read(is_small(opts.limit), move |s, v| {
            let _g = span.entered();
            v.scan(s, &range, opts.reverse, opts.limit)
        })
        .await
    }

    /// All gets and scans in one call (one hop to the blocking pool when
    /// any of them may be large).
    async fn read_many(
        &mut self,
        gets: Vec<Vec<u8>>,
        scans: Vec<(KeyRange, ScanOptions)>,
    ) -> KvResult<ReadMany> {
        let small = gets.len() <= INLINE_ROWS && scans.iter().all(|(_, o)| is_small(o.limit));
        self.read(small, move |s, v| {
            let values = gets
                .iter()
                .map(|k| v.get(s, k))
                .collect::<KvResult<Vec<_>>>()?;
            let rows = scans
                .iter()
                .map(|(r, o)| v.scan(s, r, o.reverse, o.limit))
                .collect::<KvResult<Vec<_>>>()?;
            Ok((values, rows))
        })
        .await
    }

    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let FjallSnapshot {
            store,
            snapshot,
            view,
        } = self;
        drop(view);
        if let Some(k) = writes.keys().find(|k| k.len() > crate::store::MAX_KEY) {
            return Err(KvError::LimitExceeded {
                what: "a fjall key (bytes)".into(),
                limit: crate::store::MAX_KEY as u64,
                actual: k.len() as u64,
            });
        }
        if store.shared.read_only() {
            return Err(KvError::ReadOnly { backend: BACKEND });
        }
        submit(store.writer.as_ref(), BACKEND, snapshot, writes, validated).await
    }
}
