//! Conformance cases for the lifecycle of events: retention,
//! soft delete, tombstone, compaction, crypto-shredding, and what the log
//! promises afterwards. Run by [`all_suites!`](crate::all_suites) on every backend.

use eskv_core::lifecycle::system_types;
use eskv_core::{
    AppendCondition, Error, EventStore, EventStoreOptions, ExpectedVersion, ForgetOutcome, KvStore,
    NewEvent, Query, ReadOptions, ReadStreamOptions, Retention, StoreKey, SubscriptionFilter,
    SubscriptionOptions,
};
use std::sync::Arc;
use std::time::Duration;

type Store = Arc<dyn KvStore>;

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, t.as_bytes().to_vec())
}

fn key() -> StoreKey {
    StoreKey::from_bytes([42; 32])
}

async fn open(store: Store) -> EventStore {
    EventStore::open_with(store, EventStoreOptions::default().store_key(key()))
        .await
        .expect("open event store")
}

fn positions(events: &[eskv_core::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// Retention by count and truncation, set with expected-revision
/// semantics and shown in `stream_info`; released events vanish from every
/// read path at once, compaction removes them, and positions are kept.
pub async fn retention_releases_events_everywhere(store: Store) {
    let es = open(store).await;
    for i in 0..6 {
        es.append_to_stream(
            "order-1",
            ExpectedVersion::Any,
            vec![ev("Placed").tag(format!("n:{i}")).tag("order")],
        )
        .await
        .unwrap();
        es.append(vec![ev("Other")], None).await.unwrap();
    }
    // Positions 1, 3, 5, 7, 9, 11 are order-1 versions 1..=6.
    let r = es
        .set_retention(
            "order-1",
            Retention::new().max_count(2),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, 13, "the change is an event of the log");
    let info = es.stream_info("order-1").await.unwrap();
    assert_eq!(info.retention.max_count, Some(2));
    assert_eq!(info.metadata_revision, Some(1));
    assert_eq!(info.first_version, 5);
    assert!(info.exists && info.version == 6);
    // Stale revision: refused, nothing written.
    let stale = es
        .set_retention("order-1", Retention::new(), ExpectedVersion::NoStream)
        .await;
    assert!(
        matches!(stale, Err(Error::WrongExpectedVersion { .. })),
        "{stale:?}"
    );
    assert_eq!(es.head().await.unwrap(), 13);
    // Every read path skips versions 1..=4.
    let stream = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(positions(&stream), [9, 11]);
    let cat = es.read_category("order", ReadOptions::new()).await.unwrap();
    assert_eq!(positions(&cat.events), [9, 11]);
    let q = Query::tags(["order"]);
    assert_eq!(
        positions(&es.read(&q, ReadOptions::new()).await.unwrap().events),
        [9, 11]
    );
    let back = es
        .read(&q, ReadOptions::new().backwards().limit(5))
        .await
        .unwrap();
    assert_eq!(positions(&back.events), [11, 9]);
    let log = es.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(log.events.len(), 13 - 4);
    let sys = log.events.last().unwrap();
    assert_eq!(sys.event_type, system_types::RETENTION_SET);
    assert_eq!(sys.tags, ["$stream:order-1"]);
    // A limited read is never cut short by released events.
    let first = es.read_all(ReadOptions::new().limit(2)).await.unwrap();
    assert_eq!(positions(&first.events), [2, 4]);
    // DCB conditions see only live events: `n:0` was released.
    let free = es
        .append(
            vec![ev("X")],
            Some(AppendCondition::new(Query::tags(["n:0"]), None)),
        )
        .await;
    assert!(free.is_ok(), "{free:?}");
    let taken = es
        .append(
            vec![ev("X")],
            Some(AppendCondition::new(Query::tags(["n:5"]), None)),
        )
        .await;
    assert!(
        matches!(taken, Err(Error::ConditionFailed { position: 11, .. })),
        "{taken:?}"
    );
    // Truncation beyond the head is refused; up to it, fine.
    let beyond = es
        .set_retention(
            "order-1",
            Retention::new().truncate_before(8),
            ExpectedVersion::Exact(1),
        )
        .await;
    match beyond {
        Err(Error::InvalidInput { message }) => {
            assert!(message.contains("at most to 7"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Loosening keeps released what was released.
    es.set_retention("order-1", Retention::new(), ExpectedVersion::Exact(1))
        .await
        .unwrap();
    let stream = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(positions(&stream), [9, 11]);
    assert_eq!(
        es.stream_info("order-1")
            .await
            .unwrap()
            .retention
            .truncate_before,
        Some(5)
    );
    // Compaction removes the rows; the log keeps its positions.
    let head = es.head().await.unwrap();
    let report = es.compact().await.unwrap();
    assert_eq!(report.events_removed, 4);
    assert!(report.bytes_reclaimed > 0 && report.keys_removed >= 4 * 6);
    assert_eq!(
        es.compact().await.unwrap().events_removed,
        0,
        "nothing left"
    );
    assert_eq!(es.head().await.unwrap(), head);
    let after = es.append(vec![ev("Next")], None).await.unwrap();
    assert_eq!(after.first_position, head + 1, "positions are never reused");
    assert_eq!(es.stream_version_after("order-1", 0).await.unwrap(), 5);
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
    assert_eq!(v.removed, 4);
}

/// Soft delete: reads as absent, can be recreated, its version continues;
/// tombstone: never writable again. Both are events of the log.
pub async fn delete_and_tombstone(store: Store) {
    let es = open(store).await;
    es.append_to_stream("cart-1", ExpectedVersion::NoStream, vec![ev("A"), ev("B")])
        .await
        .unwrap();
    let wrong = es.delete_stream("cart-1", ExpectedVersion::Exact(1)).await;
    assert!(
        matches!(
            wrong,
            Err(Error::WrongExpectedVersion {
                actual: Some(2),
                ..
            })
        ),
        "{wrong:?}"
    );
    let d = es
        .delete_stream("cart-1", ExpectedVersion::Exact(2))
        .await
        .unwrap();
    let info = es.stream_info("cart-1").await.unwrap();
    assert!(
        !info.exists && info.deleted && !info.tombstoned && info.version == 2,
        "{info:?}"
    );
    assert!(es
        .read_stream("cart-1", ReadStreamOptions::new())
        .await
        .unwrap()
        .is_empty());
    let again = es.delete_stream("cart-1", ExpectedVersion::Any).await;
    assert!(matches!(again, Err(Error::NotFound { .. })), "{again:?}");
    // Recreated with NoStream; the version continues at 3.
    let r = es
        .append_to_stream("cart-1", ExpectedVersion::NoStream, vec![ev("C")])
        .await
        .unwrap();
    assert_eq!(r.stream_version, Some(3));
    let s = es
        .read_stream("cart-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].stream.as_ref().unwrap().version, 3);
    assert!(es.stream_info("cart-1").await.unwrap().exists);
    // Tombstone: appends fail forever, with a typed error.
    let t = es
        .tombstone_stream("cart-1", ExpectedVersion::Exact(3))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(3),
    ] {
        let w = es.append_to_stream("cart-1", expected, vec![ev("D")]).await;
        match w {
            Err(e @ Error::StreamTombstoned { .. }) => assert!(e.to_string().contains("cart-1")),
            other => panic!("{other:?}"),
        }
    }
    let retain = es
        .set_retention(
            "cart-1",
            Retention::new().max_count(1),
            ExpectedVersion::Any,
        )
        .await;
    assert!(
        matches!(retain, Err(Error::StreamTombstoned { .. })),
        "{retain:?}"
    );
    let info = es.stream_info("cart-1").await.unwrap();
    assert!(info.tombstoned && !info.exists);
    assert!(es
        .read_stream("cart-1", ReadStreamOptions::new())
        .await
        .unwrap()
        .is_empty());
    // Subscribers see both changes as events.
    let log = es.read_all(ReadOptions::new()).await.unwrap();
    let kinds: Vec<(u64, &str)> = log
        .events
        .iter()
        .map(|e| (e.position, e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (d.first_position, system_types::STREAM_DELETED),
            (t.first_position, system_types::STREAM_TOMBSTONED),
        ]
    );
    es.compact().await.unwrap();
    let still = es
        .append_to_stream("cart-1", ExpectedVersion::Any, vec![ev("E")])
        .await;
    assert!(
        matches!(still, Err(Error::StreamTombstoned { .. })),
        "after compaction too"
    );
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// `max_age` releases events by their own age.
pub async fn max_age_releases_old_events(store: Store) {
    let es = open(store).await;
    es.append_to_stream("tick-1", ExpectedVersion::Any, vec![ev("Old")])
        .await
        .unwrap();
    // Old is past the 3 s limit when the retention comes in (Old only ages
    // from there); New must stay younger than 3 s until the compaction
    // below, even on a loaded remote backend (a 40 ms limit, then a 1 s
    // one, left too little room on etcd under load).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    es.set_retention(
        "tick-1",
        Retention::new().max_age(Duration::from_millis(3000)),
        ExpectedVersion::Any,
    )
    .await
    .unwrap();
    es.append_to_stream("tick-1", ExpectedVersion::Any, vec![ev("New")])
        .await
        .unwrap();
    let s = es
        .read_stream("tick-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(
        s.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["New"]
    );
    assert_eq!(es.compact().await.unwrap().events_removed, 1);
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// Loosening `max_age` (or dropping it) does not bring back the events
/// it released: released never comes back, before compaction as after.
pub async fn loosened_max_age_keeps_released_events_released(store: Store) {
    let es = open(store).await;
    for t in ["Old1", "Old2"] {
        es.append_to_stream("tick-2", ExpectedVersion::Any, vec![ev(t)])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    es.set_retention(
        "tick-2",
        Retention::new().max_age(Duration::from_millis(2000)),
        ExpectedVersion::Any,
    )
    .await
    .unwrap();
    es.append_to_stream("tick-2", ExpectedVersion::Any, vec![ev("New")])
        .await
        .unwrap();
    let types = |es: EventStore| async move {
        es.read_stream("tick-2", ReadStreamOptions::new())
            .await
            .unwrap()
            .iter()
            .map(|e| e.event_type.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(types(es.clone()).await, ["New"]);
    for looser in [
        Retention::new().max_age(Duration::from_secs(3600)),
        Retention::new(),
    ] {
        es.set_retention("tick-2", looser, ExpectedVersion::Any)
            .await
            .unwrap();
        assert_eq!(types(es.clone()).await, ["New"], "the old events came back");
    }
    let info = es.stream_info("tick-2").await.unwrap();
    assert_eq!((info.version, info.first_version), (3, 3));
}

/// Crypto-shredding: the personal part reads back until `forget`, and is
/// marked erased afterwards on every read path, never an error; the rest
/// of the event is unchanged and the log stays gapless.
pub async fn forgotten_personal_data_reads_as_erased(store: Store) {
    let es = open(store.clone()).await;
    let e1 = ev("Registered")
        .tag("user:1")
        .with_personal_data("user-1", b"Ada Lovelace, ada@example.org".to_vec());
    es.append_to_stream("user-1", ExpectedVersion::NoStream, vec![e1.clone()])
        .await
        .unwrap();
    let e2 = ev("Registered").with_personal_data("user-2", b"Alan Turing".to_vec());
    es.append_to_stream("user-2", ExpectedVersion::NoStream, vec![e2])
        .await
        .unwrap();
    let before = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(
        before[0].personal.as_ref().unwrap().bytes(),
        Some(&b"Ada Lovelace, ada@example.org"[..])
    );
    let out = es.forget("user-1").await.unwrap();
    assert_eq!(out, ForgetOutcome::Forgotten { position: 3 });
    assert_eq!(
        es.forget("user-1").await.unwrap(),
        ForgetOutcome::AlreadyForgotten
    );
    let unknown = es.forget("user-404").await;
    assert!(
        matches!(unknown, Err(Error::UnknownSubject { .. })),
        "{unknown:?}"
    );
    // Every read path: erased, never an error, rest unchanged.
    let log = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(positions(&log), [1, 2, 3], "gapless");
    let forgotten = &log[0];
    let p = forgotten.personal.as_ref().unwrap();
    assert!(p.is_erased() && p.bytes().is_none() && p.subject() == "user-1");
    assert_eq!(forgotten.event_type, before[0].event_type);
    assert_eq!(forgotten.tags, before[0].tags);
    assert_eq!(forgotten.data, before[0].data);
    assert_eq!(forgotten.id, before[0].id);
    assert_eq!(
        log[1].personal.as_ref().unwrap().bytes(),
        Some(&b"Alan Turing"[..])
    );
    assert_eq!(log[2].event_type, system_types::SUBJECT_FORGOTTEN);
    let s = es
        .read_stream("user-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert!(s[0].personal.as_ref().unwrap().is_erased());
    let q = es
        .read(&Query::tags(["user:1"]), ReadOptions::new())
        .await
        .unwrap();
    assert!(q.events[0].personal.as_ref().unwrap().is_erased());
    let c = es.read_category("user", ReadOptions::new()).await.unwrap();
    assert!(c.events[0].personal.as_ref().unwrap().is_erased());
    let mut sub = es
        .subscribe(SubscriptionOptions::new().filter(SubscriptionFilter::Stream("user-1".into())))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert!(got.personal.as_ref().unwrap().is_erased());
    // Without the store key: erased parts still read; live ones are a
    // typed error, and so is a wrong key (refused at open).
    let keyless = EventStore::open(store.clone()).await.unwrap();
    let s = keyless
        .read_stream("user-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert!(s[0].personal.as_ref().unwrap().is_erased());
    let live = keyless
        .read_stream("user-2", ReadStreamOptions::new())
        .await;
    assert!(matches!(live, Err(Error::WrongStoreKey { .. })), "{live:?}");
    let wrong = EventStore::open_with(
        store.clone(),
        EventStoreOptions::default().store_key(StoreKey::from_bytes([1; 32])),
    )
    .await;
    assert!(
        matches!(wrong, Err(Error::WrongStoreKey { .. })),
        "{wrong:?}"
    );
    let no_key = keyless
        .append(
            vec![ev("X").with_personal_data("user-3", b"x".to_vec())],
            None,
        )
        .await;
    assert!(
        matches!(no_key, Err(Error::WrongStoreKey { .. })),
        "{no_key:?}"
    );
    // New personal data for a forgotten subject gets a new key.
    es.append(
        vec![ev("Returned").with_personal_data("user-1", b"Ada again".to_vec())],
        None,
    )
    .await
    .unwrap();
    let log = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert!(log[0].personal.as_ref().unwrap().is_erased());
    assert_eq!(
        log[3].personal.as_ref().unwrap().bytes(),
        Some(&b"Ada again"[..])
    );
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// Subscriptions and projections neither stall nor skip a live event
/// because of removals, while removals and compaction happen under them.
pub async fn subscriptions_skip_removed_events(store: Store) {
    let es = open(store).await;
    for i in 0..30 {
        let stream = if i % 3 == 0 { "keep-1" } else { "drop-1" };
        es.append_to_stream(stream, ExpectedVersion::Any, vec![ev("E")])
            .await
            .unwrap();
    }
    es.delete_stream("drop-1", ExpectedVersion::Any)
        .await
        .unwrap();
    let mut all = es
        .subscribe(
            SubscriptionOptions::new()
                .batch_size(3)
                .poll(Duration::from_millis(1), Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let mut cat = es
        .subscribe(
            SubscriptionOptions::new()
                .batch_size(2)
                .filter(SubscriptionFilter::Category("drop".into()))
                .poll(Duration::from_millis(1), Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let compactor = {
        let es = es.clone();
        tokio::spawn(async move { es.compact().await })
    };
    // Then one live event after everything.
    let last = es
        .append_to_stream("drop-1", ExpectedVersion::NoStream, vec![ev("Back")])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&last.first_position) {
        let e = tokio::time::timeout(Duration::from_secs(30), all.next())
            .await
            .expect("subscription stalled on removed events")
            .unwrap();
        seen.push(e.position);
    }
    let keep: Vec<u64> = (0..30).filter(|i| i % 3 == 0).map(|i| i + 1).collect();
    let mut want = keep.clone();
    want.push(31); // $stream-deleted
    want.push(last.first_position);
    assert_eq!(seen, want);
    let e = tokio::time::timeout(Duration::from_secs(30), cat.next())
        .await
        .expect("category subscription stalled")
        .unwrap();
    assert_eq!(
        e.position, last.first_position,
        "the recreated stream's first live event"
    );
    compactor.await.unwrap().unwrap();
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// The lifecycle model-based property test.
pub async fn lifecycle_model_based(store: Store) {
    crate::lifecycle_model::run(store, 24).await;
}

/// A soft-deleted (and a tombstoned) stream whose events were all
/// released and compacted away restores, from the source's live events,
/// with its version: recreating it continues after it, and `verify` is
/// clean.
pub async fn deleted_streams_restore_with_their_version(store: Store) {
    let src = EventStore::open(Arc::new(eskv_core::MemoryStore::new()))
        .await
        .unwrap();
    for s in ["gone", "dead"] {
        src.append_to_stream(s, ExpectedVersion::NoStream, vec![ev("A"), ev("B")])
            .await
            .unwrap();
    }
    src.delete_stream("gone", ExpectedVersion::Exact(2))
        .await
        .unwrap();
    src.tombstone_stream("dead", ExpectedVersion::Exact(2))
        .await
        .unwrap();
    src.compact().await.unwrap();
    let live = src.read_all(ReadOptions::new()).await.unwrap().events;
    assert!(live.iter().all(|e| e.stream.is_none()), "{live:?}");
    let dst = EventStore::open(store).await.unwrap();
    dst.import_after_removals(&live).await.unwrap();
    for s in ["gone", "dead"] {
        let (a, b) = (
            src.stream_info(s).await.unwrap(),
            dst.stream_info(s).await.unwrap(),
        );
        assert_eq!(
            (
                b.version,
                b.first_version,
                b.exists,
                b.deleted,
                b.tombstoned
            ),
            (
                a.version,
                a.first_version,
                a.exists,
                a.deleted,
                a.tombstoned
            ),
            "{s}: {b:?}"
        );
    }
    let r = dst
        .append_to_stream("gone", ExpectedVersion::NoStream, vec![ev("C")])
        .await
        .unwrap();
    assert_eq!(r.stream_version, Some(3));
    let v = eskv_core::verify::verify(&dst).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// Defines one `#[tokio::test]` per case of this module (retention, deletion, forgetting and what the log promises afterwards), on
/// stores from `$factory` (see [`all_suites!`](crate::all_suites)). With
/// `wrapped` first, the cases marked `#[direct_only]` are left out.
#[macro_export]
macro_rules! lifecycle_tests {
    ($factory:path) => {
        $crate::lifecycle_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::lifecycle,
            [
                retention_releases_events_everywhere,
                delete_and_tombstone,
                max_age_releases_old_events,
                loosened_max_age_keeps_released_events_released,
                forgotten_personal_data_reads_as_erased,
                subscriptions_skip_removed_events,
                lifecycle_model_based,
                deleted_streams_restore_with_their_version,
            ]
        );
    };
}
