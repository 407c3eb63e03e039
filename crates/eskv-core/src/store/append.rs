//! Appends: the public calls, and the validation and cost estimate that
//! run before a request joins the group-commit queue.

use super::group_commit::{Answer, Reply};
use super::options::{AppendRequest, AppendResult};
use super::{Cost, EventStore, Pending, KEY_OVERHEAD};
use crate::error::{Error, ExpectedVersion, Result};
use crate::event::NewEvent;
use crate::query::{AppendCondition, Query};
use crate::validate::{validate_stream_id, validate_tag, validate_type};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::{oneshot, OwnedMutexGuard};
use tracing::Instrument;

/// Numbers queued requests, so a leader knows its batch is only its own.
static NEXT_TICKET: AtomicU64 = AtomicU64::new(0);

type BatchRun = Pin<Box<dyn Future<Output = Vec<(Reply, Answer)>> + Send>>;

/// A batch run on its leader's own task, holding the leader lock. If the
/// leader is cancelled before the batch is done, the rest of the run and
/// the lock move to a task of their own: a cancelled caller never lets a
/// second batch start beside its own.
struct Lead {
    run: Option<BatchRun>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Lead {
    fn new(run: BatchRun, guard: OwnedMutexGuard<()>) -> Lead {
        Lead {
            run: Some(run),
            guard: Some(guard),
        }
    }
}

impl Future for Lead {
    type Output = Option<(Reply, Answer)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(None);
        };
        let mut answers = std::task::ready!(run.as_mut().poll(cx));
        self.run = None;
        self.guard = None;
        Poll::Ready(answers.pop())
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let (Some(run), guard) = (self.run.take(), self.guard.take()) else {
            return;
        };
        // Outside a runtime (it is shutting down) nothing can run it on.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                run.await;
                drop(guard);
            });
        }
    }
}

impl EventStore {
    /// Appends `events` under an optional DCB condition.
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult> {
        let mut req = AppendRequest::new(events);
        req.condition = condition;
        self.submit(req).await
    }

    /// Appends `events` to `stream` if its version matches `expected`.
    /// Stream ids are anything that reads as a `str` (`&str`, `String`,
    /// `format!(..)`), as in every call that names a stream.
    ///
    /// ```
    /// use eskv_core::{Error, EventStore, ExpectedVersion, MemoryStore, NewEvent};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// let order = 7;
    /// let placed = || vec![NewEvent::new("OrderPlaced", b"{}".to_vec())];
    /// let r = store.append_to_stream(format!("order-{order}"), ExpectedVersion::NoStream, placed()).await?;
    /// assert_eq!(r.stream_version, Some(1));
    /// let again = store.append_to_stream("order-7", ExpectedVersion::NoStream, placed()).await;
    /// assert!(matches!(again, Err(Error::WrongExpectedVersion { .. })));
    /// assert_eq!(store.read_stream(format!("order-{order}"), Default::default()).await?.version, 1);
    /// # Ok(()) }
    /// ```
    pub async fn append_to_stream(
        &self,
        stream: impl AsRef<str>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let stream = stream.as_ref();
        self.submit(AppendRequest::new(events).stream(stream, expected))
            .await
    }

    /// Runs one append request. Concurrent calls are grouped into one KV
    /// transaction; each keeps its own outcome.
    ///
    /// Traced as an `eskv.append` span (see [`crate::observe`]).
    pub async fn submit(&self, req: AppendRequest) -> Result<AppendResult> {
        let span = tracing::info_span!(
            "eskv.append",
            stream = req.stream.as_ref().map(|(s, _)| s.as_str()),
            events = req.events.len(),
            first_position = tracing::field::Empty,
            last_position = tracing::field::Empty,
            outcome = tracing::field::Empty,
            batch_size = tracing::field::Empty,
        );
        let answer = self.queue_and_wait(req).instrument(span.clone()).await;
        if let Ok(r) = &answer.result {
            span.record("first_position", r.first_position);
            span.record("last_position", r.last_position);
        }
        span.record("outcome", answer.outcome);
        span.record("batch_size", answer.batch_size);
        answer.result
    }

    async fn queue_and_wait(&self, mut req: AppendRequest) -> Answer {
        let cost = match self.prepare(&mut req) {
            Ok(c) => c,
            Err(e) => {
                let result = Err(e);
                crate::observe::append_done(&result, "rejected");
                return Answer {
                    result,
                    outcome: "rejected",
                    batch_size: 0,
                };
            }
        };
        let (reply, mut rx) = oneshot::channel();
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Pending {
                req,
                cost,
                reply,
                ticket,
            });
        loop {
            tokio::select! {
                biased;
                res = &mut rx => return res.unwrap_or_else(|_| Answer::lost()),
                guard = self.inner.leader.clone().lock_owned() => {
                    let batch = self.inner.take_batch();
                    if batch.is_empty() {
                        // Another leader took ours; its answer is coming.
                        drop(guard);
                        return rx.await.unwrap_or_else(|_| Answer::lost());
                    }
                    let inner = self.inner.clone();
                    if batch.len() == 1 && batch[0].ticket == ticket {
                        // A lone writer: its batch holds only its own
                        // request, so it runs on this task and is answered
                        // directly, with no hand-off to a leader task and
                        // back. Cancelled, it goes on in a task of its own.
                        let run = inner.answer_batch_owned(batch);
                        let answer = Lead::new(Box::pin(run), guard).await;
                        return answer.map_or_else(Answer::lost, |(_, a)| a);
                    }
                    // The batch runs in its own task, which also holds the
                    // leader lock until the batch is done: a cancelled
                    // caller neither abandons the other appends of the
                    // batch nor lets a second batch start beside it. This
                    // caller's own answer comes through `rx`, like every
                    // other waiter's.
                    tokio::spawn(async move {
                        inner.run_batch(batch).await;
                        drop(guard);
                    });
                }
            }
        }
    }

    /// Validates and canonicalizes an append; nothing is written on error.
    pub(super) fn prepare(&self, req: &mut AppendRequest) -> Result<Cost> {
        let l = &self.inner.opts.limits;
        let caps = self.inner.kv.capabilities();
        if req.events.is_empty() {
            return Err(Error::invalid("an append needs at least one event"));
        }
        if req.events.len() > l.max_events_per_append {
            return Err(Error::limit(
                "events in one append",
                l.max_events_per_append,
                req.events.len(),
            ));
        }
        let mut ids = HashSet::with_capacity(req.events.len());
        let mut total = 0usize;
        let mut cost = Cost { ops: 2, bytes: 16 };
        for e in &mut req.events {
            e.canonicalize();
            validate_type(&e.event_type, l)?;
            self.inner.opts.upcasters.stamp(e)?;
            if e.tags.len() > l.max_tags_per_event {
                return Err(Error::limit(
                    format!("tags on event {}", e.id),
                    l.max_tags_per_event,
                    e.tags.len(),
                ));
            }
            for t in &e.tags {
                validate_tag(t, l)?;
            }
            if let Some(p) = &e.personal {
                crate::validate::validate_subject(p.subject(), l)?;
                if self.inner.opts.store_key.is_none() {
                    return Err(super::live::no_store_key());
                }
            }
            // A personal part grows by its nonce and tag when sealed.
            let personal = e.personal.as_ref().map_or(0, |p| p.byte_len() + 48);
            let size = e.data.len() + e.metadata.byte_len() + personal;
            if size > l.max_event_bytes {
                return Err(Error::limit(
                    format!("bytes in event {}", e.id),
                    l.max_event_bytes,
                    size,
                ));
            }
            total += size;
            if !ids.insert(e.id) {
                return Err(Error::invalid(format!(
                    "event id {} appears twice in one append; every event needs its own id",
                    e.id
                )));
            }
            // Upper bounds of what `event_rows` writes for this event; each
            // key may also carry a namespace prefix (KEY_OVERHEAD).
            let stream_len = req.stream.as_ref().map_or(0, |(s, _)| s.len());
            let tags_len: usize = e.tags.iter().map(|t| t.len() + 4).sum();
            let envelope = size + e.event_type.len() + tags_len + stream_len + 96;
            if let Some(max) = caps.max_value_size {
                if envelope > max {
                    return Err(Error::limit(
                        format!("bytes of one stored event on the {} backend", caps.backend),
                        max,
                        envelope,
                    ));
                }
            }
            let rows = 3
                + e.tags.len()
                + if req.stream.is_some() { 2 } else { 0 }
                + usize::from(e.personal.is_some());
            let keys = 48 + e.event_type.len() + tags_len + 2 * stream_len + rows * KEY_OVERHEAD;
            let tag_values = e.tags.len() * (e.event_type.len() + tags_len + 8);
            cost.ops += rows;
            cost.bytes += envelope + keys + tag_values + 64;
        }
        if total > l.max_append_bytes {
            return Err(Error::limit(
                "bytes in one append",
                l.max_append_bytes,
                total,
            ));
        }
        if let Some((stream, expected)) = &req.stream {
            validate_stream_id(stream, l)?;
            if *expected == ExpectedVersion::Exact(0) {
                return Err(Error::invalid(
                    "expected version 0 does not exist: versions start at 1; use ExpectedVersion::NoStream for a new stream",
                ));
            }
            cost.ops += 1;
            cost.bytes += stream.len() + 32 + KEY_OVERHEAD;
        }
        if let Some(c) = &mut req.condition {
            self.validate_query(&mut c.fail_if_events_match)?;
        }
        if let Some(max) = caps.max_ops_per_txn {
            if cost.ops > max {
                return Err(Error::limit(
                    format!(
                        "key operations for this append on the {} backend (split it into smaller appends)",
                        caps.backend
                    ),
                    max,
                    cost.ops,
                ));
            }
        }
        if let Some(max) = caps.max_txn_bytes {
            if cost.bytes > max {
                return Err(Error::limit(
                    format!("bytes for this append on the {} backend", caps.backend),
                    max,
                    cost.bytes,
                ));
            }
        }
        Ok(cost)
    }

    pub(super) fn validate_query(&self, q: &mut Query) -> Result<()> {
        let l = &self.inner.opts.limits;
        if q.items.is_empty() {
            return Err(Error::invalid(
                "a query needs at least one item; use Query::all() to match every event",
            ));
        }
        if q.items.len() > l.max_query_items {
            return Err(Error::limit(
                "items in one query",
                l.max_query_items,
                q.items.len(),
            ));
        }
        for item in &mut q.items {
            if item.types.len() > l.max_types_per_query_item {
                return Err(Error::limit(
                    "types in one query item (split the item into several items with fewer types each)",
                    l.max_types_per_query_item,
                    item.types.len(),
                ));
            }
            if item.tags.len() > l.max_tags_per_event {
                return Err(Error::limit(
                    "tags in one query item (an item matches only events carrying all its tags, and an event carries at most max_tags_per_event)",
                    l.max_tags_per_event,
                    item.tags.len(),
                ));
            }
            item.types.sort();
            item.types.dedup();
            item.tags.sort();
            item.tags.dedup();
            for t in &item.types {
                validate_type(t, l)?;
            }
            for t in &item.tags {
                validate_tag(t, l)?;
            }
        }
        Ok(())
    }
}
