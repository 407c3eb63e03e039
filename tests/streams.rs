//! Streams through the public API: paged reads hold one page at a time,
//! `Subscription` as a `futures::Stream` (with concurrent writers, and
//! with its futures dropped mid-way), and what `read_stream` reports.

use eskv::{
    EventStore, ExpectedVersion, KvStore, MemoryStore, NewEvent, Query, ReadOptions,
    ReadStreamOptions, RecordedEvent, SubscriptionOptions,
};
use eskv_conformance::counting::CountingStore;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;

const EVENTS: u64 = 3000;
const PAGE: usize = 50;

/// 3000 events, every third one tagged `k:1` and in stream `s-1`.
async fn filled() -> Arc<MemoryStore> {
    let kv = Arc::new(MemoryStore::new());
    let store = EventStore::open(kv.clone()).await.unwrap();
    for chunk in 0..EVENTS / 100 {
        let (mut plain, mut tagged) = (Vec::new(), Vec::new());
        for i in 0..100 {
            if (chunk * 100 + i) % 3 == 0 {
                tagged.push(NewEvent::new("T", vec![]).with_tags(["k:1"]));
            } else {
                plain.push(NewEvent::new("P", vec![]));
            }
        }
        store.append(plain, None).await.unwrap();
        store
            .append_to_stream("s-1", ExpectedVersion::Any, tagged)
            .await
            .unwrap();
    }
    kv
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[tokio::test]
async fn paged_reads_never_hold_more_than_a_page() {
    let kv = filled().await;
    let counting = CountingStore::new(kv.clone() as Arc<dyn KvStore>);
    let store = EventStore::open(Arc::new(counting.clone())).await.unwrap();
    // Allowance beyond the page: the head, the stream's metadata, its
    // lifecycle record and the log's truncation record, read in the same
    // call as a stream's first page.
    let bound = PAGE as u64 + 4;

    let all: Vec<RecordedEvent> = store
        .read_all_paged(ReadOptions::new(), PAGE)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(positions(&all), (1..=EVENTS).collect::<Vec<_>>());
    let back: Vec<RecordedEvent> = store
        .read_all_paged(ReadOptions::new().backwards().limit(777), PAGE)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        positions(&back),
        (EVENTS - 776..=EVENTS).rev().collect::<Vec<_>>()
    );

    let q = Query::of(["T"], ["k:1"]);
    let tagged: Vec<RecordedEvent> = store
        .read_paged(&q, ReadOptions::new(), PAGE)
        .try_collect()
        .await
        .unwrap();
    // The expected events, read past the counter.
    let plain = EventStore::open(kv.clone()).await.unwrap();
    let want = plain.read(&q, ReadOptions::new()).await.unwrap().events;
    assert_eq!(tagged.len(), 1000);
    assert_eq!(tagged, want);

    let stream: Vec<RecordedEvent> = store
        .read_stream_paged("s-1", ReadStreamOptions::new(), PAGE)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stream, want, "the stream holds the tagged events");
    let stream_back: Vec<u64> = store
        .read_stream_paged("s-1", ReadStreamOptions::new().backwards(), PAGE)
        .map_ok(|e| e.stream.unwrap().version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stream_back, (1..=1000).rev().collect::<Vec<_>>());
    let cat: Vec<RecordedEvent> = store
        .read_category_paged("s", ReadOptions::new(), PAGE)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(cat, want);
    assert!(
        counting.largest_read() <= bound,
        "a paged read fetched {} rows in one call (page {PAGE})",
        counting.largest_read()
    );

    // The measure tells: one unpaged read fetches far more in one call.
    store.read_all(ReadOptions::new()).await.unwrap();
    assert!(counting.largest_read() > 10 * bound);
}

#[tokio::test]
async fn a_paged_read_sees_events_appended_while_it_runs() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    for _ in 0..10 {
        store
            .append(vec![NewEvent::new("A", vec![])], None)
            .await
            .unwrap();
    }
    let mut paged = std::pin::pin!(store.read_all_paged(ReadOptions::new(), 4));
    let mut seen = Vec::new();
    while let Some(e) = paged.try_next().await.unwrap() {
        seen.push(e.position);
        if e.position == 2 {
            store
                .append(vec![NewEvent::new("B", vec![])], None)
                .await
                .unwrap();
        }
    }
    assert_eq!(seen, (1..=11).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_stream_delivers_concurrent_appends_in_order() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50u8 {
                    store
                        .append(vec![NewEvent::new("W", vec![w, i])], None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let sub = store
        .subscribe(SubscriptionOptions::new().batch_size(7))
        .await
        .unwrap();
    let got: Vec<u64> = sub.take(200).map(|e| e.unwrap().position).collect().await;
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    for w in writers {
        w.await.unwrap();
    }
}

/// Futures of `next`, `next_batch` and `StreamExt::next` dropped while a
/// read or a wait is in flight lose nothing: every event arrives once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_subscription_futures_lose_no_event() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300u16 {
                store
                    .append(vec![NewEvent::new("W", i.to_be_bytes().to_vec())], None)
                    .await
                    .unwrap();
                if i % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut sub = store
        .subscribe(SubscriptionOptions::new().batch_size(5))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut cancelled = 0;
    let mut round = 0u32;
    while got.len() < 300 {
        round += 1;
        let wait = Duration::from_micros(50 + u64::from(round % 7) * 40);
        let r = match round % 3 {
            0 => tokio::time::timeout(wait, sub.next())
                .await
                .map(|e| vec![e.unwrap()]),
            1 => tokio::time::timeout(wait, sub.next_batch(3))
                .await
                .map(|b| b.unwrap()),
            _ => tokio::time::timeout(wait, StreamExt::next(&mut sub))
                .await
                .map(|e| vec![e.unwrap().unwrap()]),
        };
        match r {
            Ok(events) => got.extend(events.into_iter().map(|e| e.position)),
            Err(_) => cancelled += 1,
        }
    }
    writer.await.unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    assert!(cancelled > 0, "no future was dropped mid-way");
    assert_eq!(sub.position(), 300);
}

#[tokio::test]
async fn read_stream_reports_version_and_consistent_through() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let e = || NewEvent::new("E", vec![]);
    store.append(vec![e()], None).await.unwrap(); // 1
    store
        .append_to_stream("s", ExpectedVersion::NoStream, vec![e(), e()])
        .await
        .unwrap(); // 2, 3
    store.append(vec![e()], None).await.unwrap(); // 4
    store
        .append_to_stream("s", ExpectedVersion::Exact(2), vec![e()])
        .await
        .unwrap(); // 5
    store.append(vec![e()], None).await.unwrap(); // 6

    let all = store
        .read_stream("s", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (positions(&all), all.version, all.consistent_through),
        (vec![2, 3, 5], 3, 6)
    );
    // Cut short by the limit: consistent through the last event returned.
    let first = store
        .read_stream("s", ReadStreamOptions::new().limit(2))
        .await
        .unwrap();
    assert_eq!(
        (positions(&first), first.version, first.consistent_through),
        (vec![2, 3], 3, 3)
    );
    // Time travel: through `until`; the version stays the current one.
    let then = store
        .read_stream("s", ReadStreamOptions::new().until(4))
        .await
        .unwrap();
    assert_eq!(
        (positions(&then), then.version, then.consistent_through),
        (vec![2, 3], 3, 4)
    );
    let back = store
        .read_stream("s", ReadStreamOptions::new().backwards().limit(1))
        .await
        .unwrap();
    assert_eq!(
        (positions(&back), back.version, back.consistent_through),
        (vec![5], 3, 6)
    );
    let none = store
        .read_stream("nothing", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (none.len(), none.version, none.consistent_through),
        (0, 0, 6)
    );
    // The version is the expected version of an append on this read.
    store
        .append_to_stream("s", ExpectedVersion::Exact(all.version), vec![e()])
        .await
        .unwrap();
}
