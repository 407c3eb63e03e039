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

/// Where a queued append's answer goes.
pub(super) type Reply = tokio::sync::oneshot::Sender<Answer>;

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

    /// Runs `batch` and answers each request through its reply channel.
    pub(super) async fn run_batch(self: Arc<Self>, batch: Vec<Pending>) {
        for (reply, a) in self.answer_batch(batch).await {
            let _ = reply.send(a);
        }
    }

    /// [`answer_batch`](Self::answer_batch) as a future that owns what it
    /// uses (so it can move to another task).
    pub(super) async fn answer_batch_owned(
        self: Arc<Self>,
        batch: Vec<Pending>,
    ) -> Vec<(Reply, Answer)> {
        self.answer_batch(batch).await
    }

    /// Runs `batch` in one transaction: each request's reply channel with
    /// its answer, in the batch's order.
    pub(super) async fn answer_batch(&self, batch: Vec<Pending>) -> Vec<(Reply, Answer)> {
        let started = Instant::now();
        let size = batch.len();
        let reqs: Vec<&AppendRequest> = batch.iter().map(|p| &p.req).collect();
        let outcome = retry(self.opts.max_retries, || self.execute(&reqs)).await;
        let answers = match outcome {
            Ok(results) => batch
                .into_iter()
                .zip(results)
                .map(|(p, verdict)| (p.reply, answer(verdict, size)))
                .collect(),
            Err(e) if batch.len() > 1 && !e.is_retryable() => {
                // One request's failure (an oversized transaction, a damaged
                // stream head) must not fail the others: run each alone.
                tracing::debug!(error = %e, requests = batch.len(), "group commit failed; retrying requests one by one");
                let mut answers = Vec::with_capacity(size);
                for p in batch {
                    let one = [&p.req];
                    let a = match retry(self.opts.max_retries, || self.execute(&one)).await {
                        Ok(mut verdicts) => match verdicts.pop() {
                            Some(v) => answer(v, 1),
                            None => Answer::lost(),
                        },
                        Err(e) => Answer::new(Err(e), false, 1),
                    };
                    answers.push((p.reply, a));
                }
                answers
            }
            Err(e) => batch
                .into_iter()
                .map(|p| (p.reply, Answer::new(Err(e.clone()), false, size)))
                .collect(),
        };
        observe::batch_done(size, started.elapsed());
        answers
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
