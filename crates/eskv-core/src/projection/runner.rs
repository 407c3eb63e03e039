//! Applying a projection's batches: once ([`EventStore::project_batch`]),
//! up to the head ([`EventStore::catch_up_projection`]), or live
//! ([`EventStore::run_projection`]). Each batch commits its read-model
//! writes and the checkpoint in one transaction.

use super::{apply_events, model_prefix, projection_checkpoint_key, read_checkpoint};
use super::{Projection, ProjectionOptions, ProjectionState};
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::layout;
use crate::retry::retry;
use crate::store::{EventStore, ReadOptions, ReadStreamOptions};
use crate::subscription::SubscriptionFilter;
use std::future::Future;
use tracing::Instrument;

impl EventStore {
    /// Applies one batch after the projection's checkpoint, exactly once.
    /// Returns the new checkpoint, or `None` if there was nothing to apply.
    ///
    /// A batch the backend refuses as too large
    /// ([`Error::LimitExceeded`], for example more than etcd's 128
    /// operations) is retried with half as many events, down to one.
    pub async fn project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
    ) -> Result<Option<Position>> {
        let mut limit = opts.batch_size.max(1);
        self.with_batch_retries(p.name(), opts, &mut limit, |l| self.try_project_batch(p, l))
            .await
    }

    /// Runs one batch attempt `f(limit)` with the store's retry policy for
    /// transient errors, the handler policy for failing batches, and
    /// halving of `limit` for batches too large for the backend.
    pub(super) async fn with_batch_retries<T, F, Fut>(
        &self,
        name: &str,
        opts: &ProjectionOptions,
        limit: &mut usize,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delay = opts.handler.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let l = *limit;
            match retry(self.options().max_retries, || f(l)).await {
                Ok(r) => return Ok(r),
                Err(Error::LimitExceeded { .. }) if l > 1 => {
                    *limit = l / 2;
                    attempt -= 1;
                    tracing::debug!(
                        projection = name,
                        batch = *limit,
                        "projection batch too large for one transaction; halving it"
                    );
                }
                Err(e)
                    if attempt < opts.handler.max_attempts
                        && !matches!(e, Error::Corrupt { .. }) =>
                {
                    tracing::debug!(projection = name, attempt, error = %e, "projection batch failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(opts.handler.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The events of `filter` after `cp`, at most `limit`, and the position
    /// up to which they cover the log.
    pub(super) async fn projection_page(
        &self,
        filter: SubscriptionFilter,
        cp: Position,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, Position)> {
        let opts = ReadOptions::after(cp).limit(limit);
        let (events, head) = match filter {
            SubscriptionFilter::All => {
                let r = self.read_all(opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Query(q) => {
                let r = self.read(&q, opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Category(c) => {
                let r = self.read_category(&c, opts).await?;
                (r.events, r.consistent_through)
            }
            SubscriptionFilter::Stream(s) => {
                // Head first: every event at or below it is in the later read.
                let head = self.head().await?;
                let from = self.stream_version_after(&s, cp).await?;
                let evs: Vec<RecordedEvent> = self
                    .read_stream(&s, ReadStreamOptions::new().from_version(from).limit(limit))
                    .await?
                    .into_iter()
                    .filter(|e| e.position <= head)
                    .collect();
                let head = if evs.len() == limit {
                    evs.last().map_or(cp, |e| e.position)
                } else {
                    head
                };
                (evs, head)
            }
        };
        let next = if events.len() < limit {
            head.max(cp)
        } else {
            events.last().map_or(cp, |e| e.position)
        };
        Ok((events, next))
    }

    async fn try_project_batch<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
    ) -> Result<Option<Position>> {
        let span = tracing::info_span!(
            "eskv.projection",
            name = p.name(),
            batch = tracing::field::Empty,
            checkpoint = tracing::field::Empty,
        );
        let applied = self
            .apply_projection_page(p, limit)
            .instrument(span.clone())
            .await?;
        Ok(applied.map(|(batch, next)| {
            span.record("batch", batch);
            span.record("checkpoint", next);
            next
        }))
    }

    /// Applies the next page and commits it with the checkpoint: the
    /// number of events applied and the new checkpoint.
    async fn apply_projection_page<P: Projection + ?Sized>(
        &self,
        p: &P,
        limit: usize,
    ) -> Result<Option<(usize, Position)>> {
        let cp_key = projection_checkpoint_key(p.name());
        let mut txn = self.kv().begin().await?;
        let (gen, cp) = read_checkpoint(&mut *txn, p.name()).await?;
        let (events, next) = self.projection_page(p.filter(), cp, limit).await?;
        if next == cp {
            return Ok(None);
        }
        let mut state = ProjectionState {
            txn: &mut *txn,
            prefix: model_prefix(p.name(), gen),
        };
        apply_events(p, &events, &mut state).await?;
        txn.validate(cp_key.clone());
        txn.put(cp_key, layout::projection_checkpoint_value(gen, next));
        txn.commit().await?;
        Ok(Some((events.len(), next)))
    }

    /// Applies batches until the projection has caught up with the head
    /// seen at the call. Returns its checkpoint.
    pub async fn catch_up_projection<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
    ) -> Result<Position> {
        let target = self.head().await?;
        self.catch_up_to(p, opts, target, &mut |_, _| {}).await
    }

    pub(super) async fn catch_up_to<P: Projection + ?Sized>(
        &self,
        p: &P,
        opts: &ProjectionOptions,
        target: Position,
        progress: &mut (dyn FnMut(Position, Position) + Send),
    ) -> Result<Position> {
        let mut cp = self.projection_checkpoint(p.name()).await?.unwrap_or(0);
        while cp < target {
            match self.project_batch(p, opts).await? {
                Some(n) => {
                    cp = n;
                    progress(cp.min(target), target);
                }
                None => break,
            }
        }
        Ok(cp)
    }

    /// Runs the projection live until `shutdown` completes: catches up,
    /// then applies new events as they are appended.
    pub async fn run_projection<P, S>(
        &self,
        p: &P,
        opts: ProjectionOptions,
        shutdown: S,
    ) -> Result<()>
    where
        P: Projection + ?Sized,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut head_rx = self.watch_head();
        crate::subscription::relay_commits(self);
        let mut idle = opts.poll_min;
        loop {
            let step = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.project_batch(p, &opts) => r?,
            };
            if step.is_some() {
                idle = opts.poll_min;
                continue;
            }
            let single = self.kv().capabilities().single_process;
            let wait = if single { opts.poll_max } else { idle };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = head_rx.changed() => {}
                _ = tokio::time::sleep(wait) => { idle = idle.saturating_mul(2).min(opts.poll_max); }
            }
        }
    }
}
