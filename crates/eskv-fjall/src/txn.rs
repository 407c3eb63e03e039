//! Transactions: reads at a fjall snapshot, writes buffered until commit.

use crate::error::BACKEND;
use crate::store::{Db, Inner, Shared};
use crate::writer::CommitRequest;
use async_trait::async_trait;
use eskv_core::kv::{scan_span, traced_commit, ReadMany};
use eskv_core::oracle::Snapshot;
use eskv_core::{Error, KeyRange, KvPair, KvTransaction, Result, ScanOptions, WriteBuffer};
use fjall::Readable;
use std::sync::Arc;
use tokio::sync::oneshot;

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

pub(crate) struct FjallTxn {
    pub(crate) store: Arc<Inner>,
    pub(crate) snapshot: Snapshot,
    pub(crate) view: Arc<View>,
    pub(crate) buf: WriteBuffer,
}

impl View {
    fn get(&self, s: &Shared, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .snap
            .get(&self.db.data, key)
            .map_err(|e| s.map_err(e))?
            .map(|v| v.to_vec()))
    }

    /// Up to `limit` rows of `range`, in scan order.
    fn scan(
        &self,
        s: &Shared,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<KvPair>> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 || range.is_empty() {
            return Ok(out);
        }
        let iter = self
            .snap
            .range::<&[u8], _>(&self.db.data, range.as_bounds());
        let mut push = |g: fjall::Guard| -> Result<bool> {
            let (k, v) = g.into_inner().map_err(|e| s.map_err(e))?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        if reverse {
            for g in iter.rev() {
                if !push(g)? {
                    break;
                }
            }
        } else {
            for g in iter {
                if !push(g)? {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl FjallTxn {
    /// Runs a read against the snapshot: here when it is small, on the
    /// blocking pool when it may be large (see [`INLINE_ROWS`]).
    async fn read<R: Send + 'static>(
        &self,
        small: bool,
        f: impl FnOnce(&Shared, &View) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let shared = self.store.shared.clone();
        if small {
            return shared.call(|| f(&shared, &self.view));
        }
        let view = self.view.clone();
        tokio::task::spawn_blocking(move || shared.call(|| f(&shared, &view)))
            .await
            .map_err(|e| Error::backend(BACKEND, e))?
    }
}

fn is_small(limit: Option<usize>) -> bool {
    limit.is_some_and(|l| l <= INLINE_ROWS)
}

#[async_trait]
impl KvTransaction for FjallTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.buf.lookup(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let key = key.to_vec();
        self.read(true, move |s, v| v.get(s, &key)).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let (values, _) = self.read_many(keys, &[]).await?;
        Ok(values)
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        let span = scan_span(BACKEND, opts);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let fetch = self.buf.overfetch(&range, opts.limit);
        let r = range.clone();
        let rows = self
            .read(is_small(fetch), move |s, v| {
                let _g = span.entered();
                v.scan(s, &r, opts.reverse, fetch)
            })
            .await?;
        Ok(self.buf.merge_scan(&range, opts, rows))
    }

    /// All gets and scans in one call (one hop to the blocking pool when
    /// any of them may be large).
    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> Result<ReadMany> {
        let missing: Vec<Vec<u8>> = gets
            .iter()
            .filter(|k| self.buf.lookup(k).is_none())
            .cloned()
            .collect();
        let plan: Vec<(KeyRange, bool, Option<usize>)> = scans
            .iter()
            .map(|(r, o)| (r.clone(), o.reverse, self.buf.overfetch(r, o.limit)))
            .collect();
        let small = missing.len() <= INLINE_ROWS && plan.iter().all(|(_, _, f)| is_small(*f));
        let (fetched, rows) = self
            .read(small, move |s, v| {
                let values = missing
                    .iter()
                    .map(|k| v.get(s, k))
                    .collect::<Result<Vec<_>>>()?;
                let rows = plan
                    .iter()
                    .map(|(r, reverse, fetch)| v.scan(s, r, *reverse, *fetch))
                    .collect::<Result<Vec<_>>>()?;
                Ok((values, rows))
            })
            .await?;
        let mut fetched = fetched.into_iter();
        let values = gets
            .iter()
            .map(|k| match self.buf.lookup(k) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => fetched.next().flatten(),
            })
            .collect();
        let rows = scans
            .iter()
            .zip(rows)
            .map(|((r, o), rows)| self.buf.merge_scan(r, *o, rows))
            .collect();
        Ok((values, rows))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.buf.put(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.buf.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.buf.validate(key)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let FjallTxn {
            store,
            snapshot,
            buf,
            view,
        } = *self;
        drop(view);
        traced_commit(BACKEND, buf.writes().len(), async move {
            buf.check_limits(&store.caps)?;
            if let Some(k) = buf
                .writes()
                .keys()
                .find(|k| k.len() > crate::store::MAX_KEY)
            {
                return Err(Error::LimitExceeded {
                    what: "a fjall key (bytes)".into(),
                    limit: crate::store::MAX_KEY as u64,
                    actual: k.len() as u64,
                });
            }
            if buf.is_empty() {
                return Ok(());
            }
            let (writes, validated) = buf.into_parts()?;
            if store.shared.read_only() {
                return Err(Error::ReadOnly { backend: BACKEND });
            }
            let (reply, rx) = oneshot::channel();
            store
                .writer
                .as_ref()
                .ok_or_else(writer_gone)?
                .send(CommitRequest {
                    snapshot,
                    writes,
                    validated,
                    reply,
                })
                .map_err(|_| writer_gone())?;
            rx.await.map_err(|_| writer_gone())?
        })
        .await
    }
}

pub(crate) fn writer_gone() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        message: "the fjall writer thread stopped; reopen the store".into(),
    }
}
