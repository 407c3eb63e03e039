//! What commits that append nothing (checkpoints, leases, projection
//! batches) cost idle subscribers. A measurement, not a
//! check (the check is the conformance case
//! `checkpoint_commits_do_not_wake_subscribers`); run it with
//!
//! ```text
//! cargo test --release --test wake_cost -- --ignored --nocapture
//! ```
//!
//! It uses only API that predates the fix, so the same file measures
//! older commits too.

use async_trait::async_trait;
use eskv::{
    Capabilities, EventStore, KvStore, KvTransaction, MemoryStore, NewEvent, StartFrom,
    SubscriptionOptions,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts transactions; passes everything else through.
struct Counting {
    inner: Arc<dyn KvStore>,
    begins: Arc<AtomicU64>,
}

#[async_trait]
impl KvStore for Counting {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_watch()
    }
    async fn begin(&self) -> eskv::KvResult<Box<dyn KvTransaction>> {
        self.begins.fetch_add(1, Ordering::SeqCst);
        self.inner.begin().await
    }
}

/// `subscribers` idle subscribers on one handle; `commits` checkpoint
/// commits through another, `gap` apart. Returns (time spent in the
/// commits, reads by others than the checkpoint commits).
async fn run(subscribers: usize, commits: u64, gap: Duration) -> (Duration, u64) {
    let begins = Arc::new(AtomicU64::new(0));
    let kv: Arc<dyn KvStore> = Arc::new(Counting {
        inner: Arc::new(MemoryStore::new()),
        begins: begins.clone(),
    });
    let a = EventStore::open(kv.clone()).await.unwrap();
    let b = EventStore::open(kv).await.unwrap();
    a.append(vec![NewEvent::new("First", Vec::new())], None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut sub = a
            .subscribe(
                SubscriptionOptions::new()
                    .start(StartFrom::End)
                    .poll(Duration::from_secs(600), Duration::from_secs(600)),
            )
            .await
            .unwrap();
        tasks.push(tokio::spawn(
            async move { sub.next().await.map(|e| e.position) },
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = begins.load(Ordering::SeqCst);
    let mut elapsed = Duration::ZERO;
    for i in 0..commits {
        let t = Instant::now();
        b.save_checkpoint(&format!("cp-{i}"), 1).await.unwrap();
        elapsed += t.elapsed();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = begins.load(Ordering::SeqCst) - before - commits;
    for t in tasks {
        t.abort();
    }
    (elapsed, reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn wake_cost() {
    for (subscribers, commits, gap) in [
        (100, 2_000, Duration::ZERO),
        (100, 200, Duration::from_millis(1)),
        (1_000, 200, Duration::from_millis(1)),
    ] {
        let (elapsed, reads) = run(subscribers, commits, gap).await;
        println!(
            "{subscribers} idle subscribers, {commits} checkpoint commits {gap:?} apart: \
             {elapsed:.2?} in the commits ({:.1} µs each), {reads} subscriber reads \
             ({:.2} per commit)",
            elapsed.as_secs_f64() * 1e6 / commits as f64,
            reads as f64 / commits as f64
        );
    }
}
