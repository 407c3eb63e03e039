//! A transaction's snapshot: reads at its start timestamp, and the commit.

use async_trait::async_trait;
use eskv_core::kv::{KvSnapshot, WriteSet};
use eskv_core::{KeyRange, KvError, KvPair, KvResult, ScanOptions};
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;
use tikv_client::{
    BoundRange, CheckLevel, Key, Transaction, TransactionClient, TransactionOptions,
};

use crate::error::{map_err, timed};
use crate::gc::{self};
use crate::paging;

use eskv_core::kv::remote::Phase;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One eskv transaction's snapshot. Reads never go through `txn`: tikv-client keeps
/// every row a transaction reads in its buffer until the transaction ends
/// (`Buffer::update_cache`), so a long scan in one transaction would hold
/// the whole range in memory. Each read runs in a fresh read-only
/// [`tikv_client::Snapshot`] at the transaction's start timestamp instead
/// (the same snapshot, by MVCC), which is dropped, with its cache, as soon
/// as the read returns. `txn` only carries the writes and locks at commit.
pub(crate) struct TikvSnapshot {
    pub(crate) client: TransactionClient,
    pub(crate) start: tikv_client::Timestamp,
    pub(crate) txn: Transaction,
    pub(crate) endpoints: String,
    pub(crate) timeout: Duration,
    /// The key density seen by the last scan, to size the next one's
    /// windows (see [`paging`]).
    pub(crate) stride: Option<paging::Stride>,
    /// Just before the start timestamp was asked for.
    pub(crate) started: Instant,
    /// The store's GC lifetime, if it runs GC (see [`gc`]).
    pub(crate) gc_lifetime_ms: Arc<AtomicU64>,
}

pub(crate) fn pair(p: tikv_client::KvPair) -> KvPair {
    let (k, v): (Key, Vec<u8>) = p.into();
    (k.into(), v)
}

pub(crate) fn bound(b: Bound<Vec<u8>>) -> Bound<Key> {
    match b {
        Bound::Included(k) => Bound::Included(k.into()),
        Bound::Excluded(k) => Bound::Excluded(k.into()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Fails when a transaction started `started` ago may see a snapshot that
/// GC with the lifetime in `gc_lifetime_ms` removed.
pub(crate) fn check_age(
    started: Instant,
    gc_lifetime_ms: &AtomicU64,
    slack: Duration,
) -> KvResult<()> {
    let ms = gc_lifetime_ms.load(Ordering::SeqCst);
    let lifetime = (ms > 0).then(|| Duration::from_millis(ms));
    let age = started.elapsed();
    match lifetime {
        Some(l) if gc::snapshot_too_old(age, Some(l), slack) => Err(gc::too_old_error(age, l)),
        _ => Ok(()),
    }
}

impl TikvSnapshot {
    fn check_age(&self) -> KvResult<()> {
        check_age(self.started, &self.gc_lifetime_ms, self.timeout)
    }

    /// A read-only view at the transaction's snapshot, for one read.
    fn snapshot(&self) -> tikv_client::Snapshot {
        self.client.snapshot(
            self.start.clone(),
            TransactionOptions::new_optimistic().drop_check(CheckLevel::None),
        )
    }

    /// Reads up to `limit` snapshot rows of `range` (all if `None`), in
    /// requests planned by [`paging::ScanPlan`]: each reads about one page
    /// from about one region, in its own snapshot.
    async fn scan_snapshot(
        &mut self,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> KvResult<Vec<KvPair>> {
        let mut out: Vec<KvPair> = Vec::new();
        let mut plan = paging::ScanPlan::new(range.clone(), reverse, limit, self.stride.take());
        while let Some(req) = plan.next_request() {
            self.check_age()?;
            let br = BoundRange::new(bound(req.range.start.clone()), bound(req.range.end.clone()));
            let mut snap = self.snapshot();
            let want = req.limit as u32;
            let fetch = async move {
                let rows: Vec<tikv_client::KvPair> = if reverse {
                    snap.scan_reverse(br, want).await?.collect()
                } else {
                    snap.scan(br, want).await?.collect()
                };
                Ok(rows.into_iter().map(pair).collect::<Vec<KvPair>>())
            };
            let page = timed("a scan", Phase::Read, self.timeout, &self.endpoints, fetch).await?;
            plan.record(&req, &page);
            out.extend(page);
        }
        self.stride = plan.stride().cloned();
        Ok(out)
    }
}

#[async_trait]
impl KvSnapshot for TikvSnapshot {
    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.check_age()?;
        let mut snap = self.snapshot();
        let wanted = keys.clone();
        let fetch = async move { Ok(snap.batch_get(wanted).await?.map(pair).collect()) };
        let fetched: HashMap<Vec<u8>, Vec<u8>> = timed(
            "a batch get",
            Phase::Read,
            self.timeout,
            &self.endpoints,
            fetch,
        )
        .await?;
        Ok(keys.iter().map(|k| fetched.get(k).cloned()).collect())
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        self.scan_snapshot(&range, opts.reverse, opts.limit).await
    }

    async fn commit(self, writes: WriteSet, validated: Vec<Vec<u8>>) -> KvResult<()> {
        let TikvSnapshot {
            mut txn,
            endpoints,
            timeout,
            started,
            gc_lifetime_ms,
            ..
        } = self;
        // A write-write conflict with a deletion older than the safe
        // point would go unseen: GC drops such deletions.
        check_age(started, &gc_lifetime_ms, timeout)?;
        // Move the buffered writes into tikv-client's buffer. These calls
        // touch only the local buffer of an optimistic transaction.
        let staged: tikv_client::Result<()> = async {
            for (k, v) in writes {
                match v {
                    Some(v) => txn.put(k, v).await?,
                    None => txn.delete(k).await?,
                }
            }
            let locks: Vec<Vec<u8>> = validated.into_iter().filter(|k| !k.is_empty()).collect();
            if !locks.is_empty() {
                txn.lock_keys(locks).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = staged {
            return Err(map_err(e, Phase::Read, &endpoints));
        }
        let res = timed("a commit", Phase::Commit, timeout, &endpoints, txn.commit()).await;
        match res {
            Ok(_) => Ok(()),
            Err(e @ KvError::CommitOutcomeUnknown { .. }) => Err(e),
            Err(e) => {
                // The commit failed before the primary key was committed:
                // release the prewrite locks now rather than leave them
                // to their TTL. Best effort; the error that matters is e.
                let _ = tokio::time::timeout(timeout, txn.rollback()).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_older_than_the_gc_lifetime_refuse_to_run() {
        let slack = Duration::from_secs(2);
        let lifetime = AtomicU64::new(0);
        let old = Instant::now()
            .checked_sub(Duration::from_secs(61))
            .expect("the monotonic clock has run for a minute");
        // No GC from this process: any age is fine.
        assert!(check_age(old, &lifetime, slack).is_ok());
        lifetime.store(60_000, Ordering::SeqCst);
        let e = check_age(old, &lifetime, slack).unwrap_err();
        assert!(matches!(e, KvError::Conflict { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(check_age(Instant::now(), &lifetime, slack).is_ok());
        // Within the slack of the lifetime counts as too old.
        let almost = Instant::now()
            .checked_sub(Duration::from_secs(59))
            .expect("the monotonic clock has run for a minute");
        assert!(check_age(almost, &lifetime, slack).is_err());
    }
}
