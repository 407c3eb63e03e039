//! A projection whose `apply` keeps failing stops with `Error::Handler`
//! naming the event, after its retries, with its checkpoint before it, in
//! a catch-up and in a rebuild alike; a projection parks nothing (it
//! applies every event in order).

use eskv::{
    Error, EventStore, HandlerOptions, MemoryStore, NewEvent, OnFailure, Projection,
    ProjectionOptions, ProjectionState, RecordedEvent,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Fails on every "Poison" event, counting its attempts.
struct Poisoned(AtomicU32);

impl Projection for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }
    async fn apply(&self, e: &RecordedEvent, _: &mut ProjectionState<'_>) -> eskv::Result<()> {
        if e.event_type == "Poison" {
            self.0.fetch_add(1, Ordering::SeqCst);
            return Err(Error::invalid("cannot apply"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_projection_names_the_event_and_keeps_its_checkpoint() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let events = ["Ok", "Poison", "Ok"]
        .iter()
        .map(|t| NewEvent::new(*t, b"{}".to_vec()))
        .collect();
    store.append(events, None).await.unwrap();
    let p = Poisoned(AtomicU32::new(0));
    let opts = ProjectionOptions::default().batch_size(1).handler(
        HandlerOptions::default()
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .on_failure(OnFailure::Park),
    );
    match store.catch_up_projection(&p, &opts).await {
        Err(Error::Handler { position, message }) => {
            assert_eq!(position, Some(2));
            assert!(message.contains("cannot apply"), "{message}");
        }
        other => panic!("expected Error::Handler at position 2, got {other:?}"),
    }
    assert_eq!(p.0.load(Ordering::SeqCst), 2, "max_attempts");
    // One event a batch: the first applied, the checkpoint stays there.
    assert_eq!(
        store.projection_checkpoint("poisoned").await.unwrap(),
        Some(1)
    );
}

/// Fails on "Poison" events once armed (a projection whose code changed).
struct Changed {
    armed: std::sync::atomic::AtomicBool,
    attempts: AtomicU32,
}

impl Projection for Changed {
    fn name(&self) -> &str {
        "changed"
    }
    async fn apply(&self, e: &RecordedEvent, _: &mut ProjectionState<'_>) -> eskv::Result<()> {
        if e.event_type == "Poison" && self.armed.load(Ordering::SeqCst) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(Error::invalid("cannot apply"));
        }
        Ok(())
    }
}

/// A rebuild that meets an event its new code cannot apply stops as a
/// catch-up does, and the live generation stays where it was.
#[tokio::test]
async fn a_failing_rebuild_names_the_event() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let events = ["Ok", "Poison", "Ok"]
        .iter()
        .map(|t| NewEvent::new(*t, b"{}".to_vec()))
        .collect();
    store.append(events, None).await.unwrap();
    let p = Changed {
        armed: false.into(),
        attempts: AtomicU32::new(0),
    };
    let opts = ProjectionOptions::default().batch_size(1).handler(
        HandlerOptions::default()
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2)),
    );
    assert_eq!(store.catch_up_projection(&p, &opts).await.unwrap(), 3);
    p.armed.store(true, Ordering::SeqCst);
    match store.rebuild_projection(&p, &opts, |_, _| {}).await {
        Err(Error::Handler { position, message }) => {
            assert_eq!(position, Some(2));
            assert!(message.contains("cannot apply"), "{message}");
        }
        other => panic!("expected Error::Handler at position 2, got {other:?}"),
    }
    assert_eq!(p.attempts.load(Ordering::SeqCst), 2, "max_attempts");
    assert_eq!(
        store.projection_checkpoint("changed").await.unwrap(),
        Some(3)
    );
}
