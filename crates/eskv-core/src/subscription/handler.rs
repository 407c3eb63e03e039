//! Handler runners: a subscription driven through an [`EventHandler`], with
//! retries, and parking or stopping on failure.

use crate::error::{BoxError, Error, Result};
use crate::event::RecordedEvent;
use crate::layout::{self, Consumer};
use crate::retry::retry;
use crate::store::EventStore;
use std::future::Future;
use std::time::Duration;

use super::dead_letter::DeadLetter;
use super::{now_ms, Subscription};

/// Processes one event. Implemented for async closures
/// `Fn(RecordedEvent) -> impl Future<Output = Result<(), E>>` (they get
/// their own copy of the event, so the future may keep it).
///
/// A handler with state implements it with a plain `async fn` (no
/// attribute needed; its future must be `Send`, since runners drive it on
/// the tokio runtime):
///
/// ```
/// use eskv_core::{error::BoxError, EventHandler, EventStore, HandlerOptions, MemoryStore, NewEvent, RecordedEvent, SubscriptionOptions};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// struct Mailer { sent: Arc<AtomicU64> }
///
/// impl EventHandler for Mailer {
///     async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
///         if event.event_type == "Welcome" {
///             self.sent.fetch_add(1, Ordering::SeqCst);
///         }
///         Ok(())
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv_core::Result<()> {
/// let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
/// store.append(vec![NewEvent::new("Welcome", vec![])], None).await?;
/// let sent = Arc::new(AtomicU64::new(0));
/// let sub = store.subscribe(SubscriptionOptions::named("mailer")).await?;
/// let done = { let sent = sent.clone(); async move { while sent.load(Ordering::SeqCst) < 1 { tokio::task::yield_now().await } } };
/// sub.run(Mailer { sent: sent.clone() }, HandlerOptions::default(), done).await?;
/// assert_eq!(sent.load(Ordering::SeqCst), 1);
/// # Ok(()) }
/// ```
pub trait EventHandler: Send + Sync {
    /// Handles `event`; an error triggers the retry policy.
    fn handle(
        &self,
        event: &RecordedEvent,
    ) -> impl Future<Output = std::result::Result<(), BoxError>> + Send;
}

impl<F, Fut, E> EventHandler for F
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: Into<BoxError>,
{
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        (self)(event.clone()).await.map_err(Into::into)
    }
}

/// What a runner does with an event whose handler keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Park it in the dead-letter list and move on (default).
    #[default]
    Park,
    /// Stop the runner with [`Error::Handler`]: the position of the event
    /// and the handler's last error.
    Stop,
}

/// Retry policy for handler runners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Attempts per event before giving up. Default 5.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default 10 ms.
    pub backoff: Duration,
    /// Longest retry delay. Default 1 s.
    pub max_backoff: Duration,
    /// What to do after the last attempt.
    pub on_failure: OnFailure,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            max_attempts: 5,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            on_failure: OnFailure::Park,
        }
    }
}

impl HandlerOptions {
    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the backoff bounds.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Sets the failure action.
    pub fn on_failure(mut self, f: OnFailure) -> Self {
        self.on_failure = f;
        self
    }
}

/// Runs one event through `handler` with retries. Returns `Ok(true)` if
/// handled, `Ok(false)` if parked.
pub(super) async fn handle_with_retries<H: EventHandler + ?Sized>(
    store: &EventStore,
    consumer: Option<Consumer<'_>>,
    handler: &H,
    opts: &HandlerOptions,
    event: &RecordedEvent,
) -> Result<bool> {
    let mut delay = opts.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match handler.handle(event).await {
            Ok(()) => return Ok(true),
            Err(e) if attempt < opts.max_attempts => {
                tracing::debug!(position = event.position, attempt, error = %e, "handler failed, retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(opts.max_backoff);
            }
            Err(e) => match (opts.on_failure, consumer) {
                (OnFailure::Park, Some(consumer)) => {
                    tracing::warn!(position = event.position, error = %e, "parking event");
                    let rec = DeadLetter {
                        error: e.to_string(),
                        attempts: attempt,
                        parked_at_ms: now_ms(),
                    };
                    let value =
                        postcard::to_allocvec(&rec).map_err(|e| Error::encode("dead letter", e))?;
                    let key = layout::dead_letter_key(consumer, event.position);
                    retry(store.options().max_retries, || async {
                        let mut txn = store.kv().begin().await?;
                        txn.put(key.clone(), value.clone());
                        Ok(txn.commit().await?)
                    })
                    .await?;
                    crate::observe::parked(match consumer {
                        layout::Consumer::Named(n) => n,
                        layout::Consumer::Partition { group, .. } => group,
                    });
                    return Ok(false);
                }
                _ => {
                    return Err(Error::handler(
                        Some(event.position),
                        format!("the handler failed {attempt} times: {e}"),
                    ))
                }
            },
        }
    }
}

impl Subscription {
    /// Feeds every event to `handler` until `shutdown` completes, with
    /// retries and dead-lettering per `opts`, acknowledging after each
    /// batch. A named subscription thus resumes after the last handled
    /// batch on restart (at-least-once).
    pub async fn run<H, S>(mut self, handler: H, opts: HandlerOptions, shutdown: S) -> Result<()>
    where
        H: EventHandler,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let name = self.opts.name.clone();
        if name.is_none() && opts.on_failure == OnFailure::Park {
            return Err(Error::invalid(
                "parking failed events needs a named subscription (SubscriptionOptions::named), or use OnFailure::Stop",
            ));
        }
        loop {
            let batch = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            b = self.next_batch(self.opts.batch_size.max(1)) => b?};
            for e in &batch {
                let consumer = name.as_deref().map(Consumer::Named);
                handle_with_retries(&self.store, consumer, &handler, &opts, e).await?;
            }
            if let (Some(_), Some(last)) = (&name, batch.last()) {
                self.ack(last.position).await?;
            }
        }
    }
}
