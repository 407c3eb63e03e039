//! The group-commit queue: concurrent appends are queued, and one leader
//! at a time takes as many as fit one transaction and runs them together.

use super::batch::Verdict;
use super::options::{AppendRequest, AppendResult};
use super::{batch_lost, Cost, Inner, Pending};
use crate::error::Result;
use crate::event::Position;
use crate::observe;
use crate::retry::retry;
use std::sync::Arc;
use std::time::Instant;

/// What a queued append gets back: its result, named for spans and
/// metrics, and the size of the group commit that ran it.
pub(super) struct Answer {
    pub(super) result: Result<AppendResult>,
    pub(super) outcome: &'static str,
    pub(super) batch_size: usize,
}

impl Answer {
    /// Records the answer's metrics and wraps it.
    fn new(result: Result<AppendResult>, replayed: bool, batch_size: usize) -> Answer {
        let outcome = observe::outcome(&result, replayed);
        observe::append_done(&result, outcome);
        Answer {
            result,
            outcome,
            batch_size,
        }
    }

    /// A request whose batch was lost before it answered.
    pub(super) fn lost() -> Answer {
        Answer {
            result: Err(batch_lost()),
            outcome: "failed",
            batch_size: 0,
        }
    }
}

fn answer(verdict: Verdict, batch_size: usize) -> Answer {
    let replayed = matches!(verdict, Verdict::Replayed(_));
    Answer::new(verdict.into_result(), replayed, batch_size)
}

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
        let started = Instant::now();
        let size = batch.len();
        let reqs: Vec<&AppendRequest> = batch.iter().map(|p| &p.req).collect();
        let outcome = retry(self.opts.max_retries, || self.execute(&reqs)).await;
        match outcome {
            Ok(results) => {
                for (p, verdict) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(answer(verdict, size));
                }
            }
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                // One request's failure (an oversized transaction, a damaged
                // stream head) must not fail the others: run each alone.
                tracing::debug!(error = %e, requests = batch.len(), "group commit failed; retrying requests one by one");
                for p in batch {
                    let one = [&p.req];
                    let a = match retry(self.opts.max_retries, || self.execute(&one)).await {
                        Ok(mut verdicts) => match verdicts.pop() {
                            Some(v) => answer(v, 1),
                            None => Answer::lost(),
                        },
                        Err(e) => Answer::new(Err(e), false, 1),
                    };
                    let _ = p.reply.send(a);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Answer::new(Err(e.clone()), false, size));
                }
            }
        }
        observe::batch_done(size, started.elapsed());
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
