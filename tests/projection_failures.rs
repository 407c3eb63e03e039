//! A projection whose `apply` keeps failing stops with `Error::Handler`
//! naming the event, after its retries, with its checkpoint before it, in
//! a catch-up and in a rebuild alike; a projection parks nothing (it
//! applies every event in order).

use eskv::{
    Error, EventStore, HandlerOptions, MemoryStore, NewEvent, OnFailure, Projection,
    ProjectionOptions, ProjectionState, RecordedEvent,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Fails on every "Poison" event while armed (armed later: a projection
/// whose code changed), counting its attempts.
struct Poisoned {
    armed: AtomicBool,
    attempts: AtomicU32,
}

impl Poisoned {
    fn new(armed: bool) -> Self {
        Poisoned {
            armed: armed.into(),
            attempts: AtomicU32::new(0),
        }
    }
}

impl Projection for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }
    async fn apply(&self, e: &RecordedEvent, _: &mut ProjectionState<'_>) -> eskv::Result<()> {
        if e.event_type == "Poison" && self.armed.load(Ordering::SeqCst) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(Error::invalid("cannot apply"));
        }
        Ok(())
    }
}

/// A store holding "Ok", "Poison", "Ok" at positions 1 to 3.
async fn poisoned_log() -> EventStore {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let events = ["Ok", "Poison", "Ok"]
        .iter()
        .map(|t| NewEvent::new(*t, b"{}".to_vec()))
        .collect();
    store.append(events, None).await.unwrap();
    store
}

/// One event a batch, two attempts each; `Park` is asked for, and a
/// projection does not park.
fn opts() -> ProjectionOptions {
    ProjectionOptions::default().batch_size(1).handler(
        HandlerOptions::default()
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .on_failure(OnFailure::Park),
    )
}

fn assert_failed_at_the_poison<T: std::fmt::Debug>(res: eskv::Result<T>) {
    match res {
        Err(Error::Handler { position, message }) => {
            assert_eq!(position, Some(2));
            assert!(message.contains("cannot apply"), "{message}");
        }
        other => panic!("expected Error::Handler at position 2, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_projection_names_the_event_and_keeps_its_checkpoint() {
    let store = poisoned_log().await;
    let p = Poisoned::new(true);
    assert_failed_at_the_poison(store.catch_up_projection(&p, &opts()).await);
    assert_eq!(p.attempts.load(Ordering::SeqCst), 2, "max_attempts");
    // The first event applied, the checkpoint stays there.
    assert_eq!(
        store.projection_checkpoint("poisoned").await.unwrap(),
        Some(1)
    );
}

/// A rebuild that meets an event its new code cannot apply stops as a
/// catch-up does, and the live generation stays where it was.
#[tokio::test]
async fn a_failing_rebuild_names_the_event() {
    let store = poisoned_log().await;
    let p = Poisoned::new(false);
    assert_eq!(store.catch_up_projection(&p, &opts()).await.unwrap(), 3);
    p.armed.store(true, Ordering::SeqCst);
    assert_failed_at_the_poison(store.rebuild_projection(&p, &opts(), |_, _| {}).await);
    assert_eq!(p.attempts.load(Ordering::SeqCst), 2, "max_attempts");
    assert_eq!(
        store.projection_checkpoint("poisoned").await.unwrap(),
        Some(3)
    );
}
