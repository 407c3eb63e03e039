//! An embedded store closes when the application drops its handles, also
//! after subscribers ran: background tasks never keep the file open, so
//! it can be reopened at once (the demo's restart step).

use eskv::{EventStore, NewEvent, RedbStore, SubscriptionOptions};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_can_be_reopened_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    for round in 0..5u64 {
        let store = EventStore::open(Arc::new(RedbStore::open(&path).await.unwrap()))
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopening failed: {e}"));
        store
            .append(vec![NewEvent::new("Tick", vec![])], None)
            .await
            .unwrap();
        let mut sub = store
            .subscribe(SubscriptionOptions::named("reader"))
            .await
            .unwrap();
        let e = sub.next().await.unwrap();
        sub.ack(e.position).await.unwrap();
        // A commit through the KV store wakes the relay task.
        store
            .append(vec![NewEvent::new("Tock", vec![])], None)
            .await
            .unwrap();
        drop(sub);
        drop(store);
    }
}
