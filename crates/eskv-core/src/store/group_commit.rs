//! The group-commit queue: concurrent appends are queued, and one leader
//! at a time takes as many as fit one transaction and runs them together.

use super::batch::Verdict;
use super::options::AppendRequest;
use super::{batch_lost, Cost, Inner, Pending};
use crate::event::Position;
use crate::retry::retry;
use std::sync::Arc;

impl Inner {
    /// Takes the next batch: queued requests in arrival order, as many as
    /// fit in one transaction of this backend.
    pub(super) fn take_batch(&self) -> Vec<Pending> {
        let caps = self.kv.capabilities();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch: Vec<Pending> = Vec::new();
        let mut total = Cost::default();
        while let Some(p) = q.front() {
            if p.reply.is_closed() {
                // The caller gave up before any leader took it: drop it
                // rather than commit it later, out of order.
                q.pop_front();
                continue;
            }
            let ops = total.ops + p.cost.ops;
            let bytes = total.bytes + p.cost.bytes;
            let full = batch.len() >= self.opts.max_batch
                || caps.max_ops_per_txn.is_some_and(|m| ops > m)
                || caps.max_txn_bytes.is_some_and(|m| bytes > m);
            if full && !batch.is_empty() {
                break;
            }
            total = Cost { ops, bytes };
            batch.extend(q.pop_front());
        }
        batch
    }

    pub(super) async fn run_batch(self: Arc<Self>, batch: Vec<Pending>) {
        let reqs: Vec<&AppendRequest> = batch.iter().map(|p| &p.req).collect();
        let outcome = retry(self.opts.max_retries, || self.execute(&reqs)).await;
        match outcome {
            Ok(results) => {
                for (p, verdict) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(verdict.into_result());
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                // One request's failure (an oversized transaction, a damaged
                // stream head) must not fail the others: run each alone.
                tracing::debug!(error = %e, requests = batch.len(), "group commit failed; retrying requests one by one");
                for p in batch {
                    let one = [&p.req];
                    let r = retry(self.opts.max_retries, || self.execute(&one))
                        .await
                        .and_then(|mut verdicts| {
                            verdicts
                                .pop()
                                .map_or_else(|| Err(batch_lost()), Verdict::into_result)
                        });
                    let _ = p.reply.send(r);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// Publishes a head to in-process subscribers; never moves it back.
    pub(super) fn publish_head(&self, head: Position) {
        self.head_tx.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }
}
