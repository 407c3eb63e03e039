//! Soak: 16 writers and 4 live subscribers on a redb file for
//! `ESKV_SOAK_SECS` seconds (default 30, the CI size; `cargo xtask soak`
//! runs 600). Checks that every subscriber saw every event in order, that
//! the integrity checker is clean, and that resident memory stays flat.

use eskv::{
    AppendCondition, Error, EventStore, ExpectedVersion, NewEvent, Query, RedbStore,
    SubscriptionOptions,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak() {
    let secs: u64 = std::env::var("ESKV_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(Arc::new(
        RedbStore::open(dir.path().join("soak.redb")).await.unwrap(),
    ))
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Set once every writer has finished: the head subscribers must reach.
    let final_head = Arc::new(AtomicU64::new(u64::MAX));
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut subscribers = Vec::new();
    for _ in 0..4 {
        let mut sub = store
            .subscribe(SubscriptionOptions::new().batch_size(512))
            .await
            .unwrap();
        let final_head = final_head.clone();
        subscribers.push(tokio::spawn(async move {
            let mut expected = 1u64;
            loop {
                let batch =
                    match tokio::time::timeout(Duration::from_millis(200), sub.next_batch(512))
                        .await
                    {
                        Ok(b) => b.unwrap(),
                        Err(_) => Vec::new(),
                    };
                for e in batch {
                    assert_eq!(e.position, expected, "subscriber saw a gap or reordering");
                    expected += 1;
                }
                if expected > final_head.load(Ordering::SeqCst) {
                    return expected - 1;
                }
            }
        }));
    }

    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = store.clone();
        let stop = stop.clone();
        let appended = appended.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tag = format!("w:{w}:{}", i % 50);
                let e = NewEvent::new("Soaked", vec![0u8; 200])
                    .with_tags([tag.clone(), format!("writer:{w}")]);
                let n = match i % 4 {
                    0 => store.append(vec![e], None).await.map(|_| 1),
                    1 => store
                        .append_to_stream(
                            &format!("soak-{w}"),
                            ExpectedVersion::Any,
                            vec![e.clone(), e.with_id(eskv::Ulid::generate())],
                        )
                        .await
                        .map(|_| 2),
                    _ => {
                        let q = Query::of(["Soaked"], vec![tag]);
                        let seen = store
                            .read(&q, eskv::ReadOptions::new().backwards().limit(1))
                            .await
                            .unwrap();
                        match store
                            .append(
                                vec![e],
                                Some(AppendCondition::new(q, Some(seen.consistent_through))),
                            )
                            .await
                        {
                            Err(Error::ConditionFailed { .. }) => Ok(0),
                            other => other.map(|_| 1),
                        }
                    }
                }
                .unwrap();
                appended.fetch_add(n, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(rss_kib());
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let head = store.head().await.unwrap();
    final_head.store(head, Ordering::SeqCst);
    for s in subscribers {
        let seen = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, head, "a subscriber did not see every event");
    }
    assert_eq!(
        appended.load(Ordering::SeqCst),
        head,
        "acknowledged appends and head disagree"
    );
    let report = eskv::verify::verify(&store).await.unwrap();
    assert!(
        report.is_clean(),
        "verify found violations: {:?}",
        report.violations
    );

    let half = samples.len() / 2;
    let early = samples[..half.max(1)].iter().copied().max().unwrap_or(0);
    let late = samples[half..].iter().copied().max().unwrap_or(0);
    println!(
        "soak: {secs}s, {head} events ({:.0} events/s), 4 subscribers saw all in order, verify clean, peak RSS first half {} MiB, second half {} MiB",
        head as f64 / elapsed,
        early / 1024,
        late / 1024
    );
    // Flat memory: the second half may not grow past the first half's peak
    // by more than half (plus 64 MiB of slack for allocator noise).
    assert!(
        late <= early + early / 2 + 64 * 1024,
        "RSS grew from {early} KiB to {late} KiB"
    );
}
