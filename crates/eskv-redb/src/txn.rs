//! A transaction's snapshot: reads of one redb read transaction, and
//! the commit handed to the writer.
use super::*;
use eskv_core::oracle::writer::submit;

pub(crate) type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A snapshot's table, and the database it was read from (kept so that a
/// reopen after an I/O failure waits until no snapshot uses the old one).
pub(crate) struct View {
    pub(crate) table: Table,
    pub(crate) _db: Arc<Db>,
}

/// A transaction's snapshot: a redb read transaction's table, read on the
/// blocking pool, and the oracle's snapshot its commit is checked against.
pub(crate) struct RedbSnapshot {
    pub(crate) store: Arc<Inner>,
    pub(crate) snapshot: Snapshot,
    pub(crate) view: Arc<View>,
}

impl RedbSnapshot {
    /// Runs a read against the snapshot without blocking the runtime: on a
    /// multi-threaded runtime in place, after telling the runtime this
    /// thread blocks (`block_in_place` hands its other tasks to another
    /// thread, and the caller saves the hop to the blocking pool and back),
    /// else on the blocking pool.
    pub(crate) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &Table) -> KvResult<R> + Send + 'static,
    ) -> KvResult<R> {
        let view = self.view.clone();
        let shared = self.store.shared.clone();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            return tokio::task::block_in_place(|| shared.call(|| f(&shared, &view.table)));
        }
        tokio::task::spawn_blocking(move || shared.call(|| f(&shared, &view.table)))
            .await
            .map_err(|e| KvError::backend(BACKEND, e))?
    }

    /// Runs `f` in place on a multi-threaded runtime (see
    /// [`read`](Self::read)), where it may borrow from the caller; `None`
    /// on a current-thread runtime, whose reads go to the blocking pool.
    fn read_in_place<R>(
        &self,
        f: impl FnOnce(&Shared, &Table) -> KvResult<R>,
    ) -> Option<KvResult<R>> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let shared = &self.store.shared;
        multi_thread
            .then(|| tokio::task::block_in_place(|| shared.call(|| f(shared, &self.view.table))))
    }
}

/// Up to `limit` rows of `range` from the snapshot, in scan order.
pub(crate) fn scan_rows(
    s: &Shared,
    t: &Table,
    range: &KeyRange,
    reverse: bool,
    limit: Option<usize>,
) -> KvResult<Vec<KvPair>> {
    let mut out = Vec::new();
    let opts = ScanOptions { limit, reverse };
    scan_visit(s, t, range, opts, &mut |k: &[u8], v: &[u8]| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Hands up to `opts.limit` rows of `range` to `visit`, in scan order,
/// until it returns `false`.
fn scan_visit(
    s: &Shared,
    t: &Table,
    range: &KeyRange,
    opts: ScanOptions,
    visit: &mut VisitRow<'_>,
) -> KvResult<()> {
    let limit = opts.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(());
    }
    let iter = t
        .range::<&[u8]>(range.as_bounds())
        .map_err(|e| s.map_err(e))?;
    let mut seen = 0;
    let mut each = |item: std::result::Result<_, redb::StorageError>| -> KvResult<bool> {
        let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
            item.map_err(|e| s.map_err(e))?;
        seen += 1;
        Ok(visit(k.value(), v.value()) && seen < limit)
    };
    if opts.reverse {
        for item in iter.rev() {
            if !each(item)? {
                break;
            }
        }
    } else {
        for item in iter {
            if !each(item)? {
                break;
            }
        }
    }
    Ok(())
}

pub(crate) fn get_one(s: &Shared, t: &Table, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
    Ok(t.get(key)
        .map_err(|e| s.map_err(e))?
        .map(|v| v.value().to_vec()))
}

#[async_trait]
impl KvSnapshot for RedbSnapshot {
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.read(move |s, t| keys.iter().map(|k| get_one(s, t, k)).collect())
            .await
    }

    /// Lends each value from redb's page where the read runs in place.
    async fn get_each(&mut self, keys: Vec<Vec<u8>>, visit: &mut VisitValue<'_>) -> KvResult<()> {
        let in_place = self.read_in_place(|s, t| {
            for k in &keys {
                let v = t.get(k.as_slice()).map_err(|e| s.map_err(e))?;
                visit(v.as_ref().map(|v| v.value()));
            }
            Ok(())
        });
        if let Some(r) = in_place {
            return r;
        }
        eskv_core::kv::visit_values(self.get_many(keys).await?, visit);
        Ok(())
    }

    /// Lends each row from redb's pages where the read runs in place.
    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut VisitRow<'_>,
    ) -> KvResult<()> {
        let in_place = self.read_in_place(|s, t| scan_visit(s, t, &range, opts, &mut *visit));
        if let Some(r) = in_place {
            return r;
        }
        eskv_core::kv::visit_rows(self.scan(range, opts).await?, visit);
        Ok(())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        let span = tracing::Span::current();
        self.read(move |s, t| {
            let _g = span.entered();
            scan_rows(s, t, &range, opts.reverse, opts.limit)
        })
        .await
    }

    /// All gets and scans in one hop to the blocking pool.
    async fn read_many(
        &mut self,
        gets: Vec<Vec<u8>>,
        scans: Vec<(KeyRange, ScanOptions)>,
    ) -> KvResult<ReadMany> {
        self.read(move |s, t| {
            let values = gets
                .iter()
                .map(|k| get_one(s, t, k))
                .collect::<KvResult<Vec<_>>>()?;
            let rows = scans
                .iter()
                .map(|(r, o)| scan_rows(s, t, r, o.reverse, o.limit))
                .collect::<KvResult<Vec<_>>>()?;
            Ok((values, rows))
        })
        .await
    }

    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let RedbSnapshot {
            store,
            snapshot,
            view,
        } = self;
        drop(view);
        if store.shared.read_only {
            return Err(KvError::ReadOnly { backend: BACKEND });
        }
        submit(store.writer.as_ref(), BACKEND, snapshot, writes, validated).await
    }
}
