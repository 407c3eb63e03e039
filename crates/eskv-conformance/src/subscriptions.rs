//! Subscription, consumer-group, projection and snapshot conformance cases.

use crate::faults::{FaultConfig, FaultyStore};
use eskv_core::{
    ConsumerGroup, Error, EventStore, ExpectedVersion, GroupOptions, HandlerOptions, KvStore,
    NewEvent, OnFailure, Projection, ProjectionOptions, ProjectionState, Query, RecordedEvent,
    Snapshot, SnapshotKey, StartFrom, SubscriptionFilter, SubscriptionOptions,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Store = Arc<dyn KvStore>;

async fn open(store: Store) -> EventStore {
    EventStore::open(store).await.expect("open event store")
}

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, Vec::new())
}

const WAIT: Duration = Duration::from_secs(30);

/// Catch-up then live: a subscription started on existing history sees
/// every event exactly once and in order while 8 writers append.
pub async fn catch_up_then_live(store: Store) {
    let es = open(store).await;
    for _ in 0..20 {
        es.append(vec![ev("History")], None).await.unwrap();
    }
    let mut sub = es
        .subscribe(
            SubscriptionOptions::new()
                .batch_size(7)
                .poll(Duration::from_millis(1), Duration::from_millis(50)),
        )
        .await
        .unwrap();
    const WRITERS: u64 = 8;
    const EACH: u64 = 12;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let es = es.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let events = (0..1 + (i % 2)).map(|_| ev(&format!("W{w}"))).collect();
                es.append(events, None).await.unwrap();
            }
        }));
    }
    let total = 20 + WRITERS * EACH + WRITERS * (EACH / 2);
    let mut expected = 1;
    while expected <= total {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("live delivery stalled")
            .unwrap();
        assert_eq!(
            e.position, expected,
            "gap, duplicate or reordering in delivery"
        );
        expected += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(sub.position(), total);
    assert!(sub.try_next_batch(10).await.unwrap().is_empty());
}

/// A subscriber on one `EventStore` handle is woken by appends made
/// through another handle over the same KV store: at once on backends that
/// report commits (`KvStore::commit_watch`), within the poll interval on
/// the others.
pub async fn wakes_across_handles(store: Store) {
    let a = open(store.clone()).await;
    let b = open(store.clone()).await;
    let (min, max) = if store.commit_watch().is_some() {
        // Only a real wake-up can beat this timer.
        (Duration::from_secs(20), Duration::from_secs(20))
    } else {
        (Duration::from_millis(5), Duration::from_millis(50))
    };
    let mut sub = a
        .subscribe(
            SubscriptionOptions::new()
                .start(StartFrom::End)
                .poll(min, max),
        )
        .await
        .unwrap();
    let waiter = tokio::spawn(async move { sub.next().await.unwrap().position });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = b.append(vec![ev("Elsewhere")], None).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the subscriber was not woken by another handle's append")
        .unwrap();
    assert_eq!(got, r.first_position);
}

/// Query, stream and category filters deliver exactly the matching events,
/// in order, across history and live appends.
pub async fn filtered_subscriptions(store: Store) {
    let es = open(store).await;
    let append = |es: EventStore, i: u64| async move {
        let stream = format!(
            "{}-{}",
            if i.is_multiple_of(2) { "cart" } else { "order" },
            i % 3
        );
        es.append_to_stream(
            &stream,
            ExpectedVersion::Any,
            vec![ev(if i.is_multiple_of(3) {
                "Special"
            } else {
                "Plain"
            })
            .with_tags([format!("n:{}", i % 4)])],
        )
        .await
        .unwrap();
    };
    for i in 0..30 {
        append(es.clone(), i).await;
    }
    let poll = (Duration::from_millis(1), Duration::from_millis(50));
    let mut by_query = es
        .subscribe(
            SubscriptionOptions::new()
                .filter(SubscriptionFilter::Query(Query::of(["Special"], ["n:0"])))
                .batch_size(3)
                .poll(poll.0, poll.1),
        )
        .await
        .unwrap();
    let mut by_stream = es
        .subscribe(
            SubscriptionOptions::new()
                .filter(SubscriptionFilter::Stream("order-1".into()))
                .batch_size(2)
                .poll(poll.0, poll.1),
        )
        .await
        .unwrap();
    let mut by_category = es
        .subscribe(
            SubscriptionOptions::new()
                .filter(SubscriptionFilter::Category("cart".into()))
                .batch_size(4)
                .poll(poll.0, poll.1),
        )
        .await
        .unwrap();
    let writer = {
        let es = es.clone();
        tokio::spawn(async move {
            for i in 30..60 {
                append(es.clone(), i).await;
            }
        })
    };
    writer.await.unwrap();
    let all = es
        .read_all(eskv_core::ReadOptions::new())
        .await
        .unwrap()
        .events;
    let want = |f: &dyn Fn(&RecordedEvent) -> bool| {
        all.iter()
            .filter(|e| f(e))
            .map(|e| e.position)
            .collect::<Vec<_>>()
    };
    let q = want(&|e| e.event_type == "Special" && e.tags.contains(&"n:0".to_string()));
    let s = want(&|e| e.stream.as_ref().unwrap().stream_id == "order-1");
    let c = want(&|e| e.stream.as_ref().unwrap().stream_id.starts_with("cart-"));
    assert!(!q.is_empty() && !s.is_empty() && !c.is_empty());
    for (sub, want) in [
        (&mut by_query, q),
        (&mut by_stream, s),
        (&mut by_category, c),
    ] {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let e = tokio::time::timeout(WAIT, sub.next())
                .await
                .expect("stalled")
                .unwrap();
            got.push(e.position);
        }
        assert_eq!(got, want);
        assert!(
            sub.try_next_batch(10).await.unwrap().is_empty(),
            "extra events delivered"
        );
    }
}

/// A named subscription resumes after its last acknowledged event. A
/// consumer killed mid-batch re-sees only unacknowledged events, and
/// nothing is lost.
pub async fn checkpoint_resume_is_at_least_once(store: Store) {
    let es = open(store).await;
    for i in 0..40 {
        es.append(vec![ev(&format!("E{i}"))], None).await.unwrap();
    }
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let release = Arc::new(tokio::sync::Notify::new());
    // First consumer: batches of 10; it blocks forever inside the third
    // batch, then is killed (aborted) there.
    let sub = es
        .subscribe(SubscriptionOptions::named("billing").batch_size(10))
        .await
        .unwrap();
    let task = {
        let seen = seen.clone();
        let release = release.clone();
        tokio::spawn(sub.run(
            move |e: RecordedEvent| {
                let seen = seen.clone();
                let release = release.clone();
                async move {
                    seen.lock().unwrap().push(e.position);
                    if e.position == 25 {
                        release.notify_one();
                        std::future::pending::<()>().await;
                    }
                    Ok::<(), Error>(())
                }
            },
            HandlerOptions::default(),
            std::future::pending(),
        ))
    };
    tokio::time::timeout(WAIT, release.notified())
        .await
        .expect("consumer never reached event 25");
    task.abort();
    let _ = task.await;
    assert_eq!(
        es.checkpoint("billing").await.unwrap(),
        Some(20),
        "acked up to the last full batch"
    );
    // Restart: resumes after 20; 21..25 are seen again (they were never acked).
    let mut sub = es
        .subscribe(SubscriptionOptions::named("billing"))
        .await
        .unwrap();
    let mut again = Vec::new();
    while again.len() < 20 {
        again.push(
            tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
                .position,
        );
    }
    assert_eq!(again, (21..=40).collect::<Vec<_>>());
    sub.ack(40).await.unwrap();
    let first = seen.lock().unwrap().clone();
    assert_eq!(first, (1..=25).collect::<Vec<_>>());
    // Checkpoints never move back, nor past the head.
    es.save_checkpoint("billing", 5).await.unwrap();
    assert_eq!(es.checkpoint("billing").await.unwrap(), Some(40));
    assert!(matches!(
        es.save_checkpoint("billing", 41).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(es.checkpoints().await.unwrap().contains_key("billing"));
}

/// A handler that keeps failing parks the event and moves on; parked
/// events can be listed and replayed. `OnFailure::Stop` stops instead.
pub async fn dead_letters(store: Store) {
    let es = open(store).await;
    for i in 0..6 {
        es.append(vec![ev(if i == 2 { "Poison" } else { "Fine" })], None)
            .await
            .unwrap();
    }
    let handled: Arc<Mutex<Vec<u64>>> = Arc::default();
    let h = handled.clone();
    let handler = move |e: RecordedEvent| {
        let h = h.clone();
        async move {
            if e.event_type == "Poison" {
                return Err(Error::invalid("cannot digest poison"));
            }
            h.lock().unwrap().push(e.position);
            Ok(())
        }
    };
    let sub = es
        .subscribe(SubscriptionOptions::named("dlq"))
        .await
        .unwrap();
    let opts = HandlerOptions::default()
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(2));
    let es2 = es.clone();
    let stop = async move {
        while es2.checkpoint("dlq").await.unwrap() != Some(6) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, sub.run(handler, opts.clone(), stop))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*handled.lock().unwrap(), [1, 2, 4, 5, 6]);
    let parked = es.parked("dlq").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].event.position, parked[0].attempts), (3, 3));
    assert!(parked[0].error.contains("poison"));
    // Replay with a fixed handler removes it.
    let fixed = |_: RecordedEvent| async { Ok::<(), Error>(()) };
    assert_eq!(es.replay_parked("dlq", &fixed).await.unwrap(), 1);
    assert!(es.parked("dlq").await.unwrap().is_empty());
    // Stop policy: the runner ends with the error.
    let sub = es
        .subscribe(SubscriptionOptions::named("strict"))
        .await
        .unwrap();
    let always_fail = |_: RecordedEvent| async { Err::<(), _>(Error::invalid("no")) };
    let res = tokio::time::timeout(
        WAIT,
        sub.run(
            always_fail,
            opts.on_failure(OnFailure::Stop),
            std::future::pending(),
        ),
    )
    .await
    .unwrap();
    assert!(res.is_err());
    assert_eq!(es.checkpoint("strict").await.unwrap(), None);
}

/// A consumer group splits partitions between members: every event is
/// processed, per-partition (per-stream) order holds, and when one member
/// dies the others take over its partitions after the lease TTL.
pub async fn consumer_group_takeover(store: Store) {
    let es = open(store).await;
    let log: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let handler_for = |member: &str| {
        let log = log.clone();
        let member = member.to_string();
        move |e: RecordedEvent| {
            let log = log.clone();
            let member = member.clone();
            async move {
                let s = e.stream.unwrap();
                log.lock().unwrap().push((member, s.stream_id, s.version));
                Ok::<(), Error>(())
            }
        }
    };
    let opts = GroupOptions::default()
        .partitions(8)
        .lease_ttl(Duration::from_secs(3));
    let mut members = Vec::new();
    let mut stops = Vec::new();
    for m in ["m1", "m2", "m3"] {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let g = ConsumerGroup::new(es.clone(), "grp", m, opts.clone()).unwrap();
        members.push(tokio::spawn(g.run(handler_for(m), async move {
            let _ = rx.await;
        })));
        stops.push(tx);
    }
    let write = |es: EventStore, round: u64| async move {
        let mut tasks = Vec::new();
        for s in 0..12 {
            let es = es.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    es.append_to_stream(
                        &format!("acct-{s}"),
                        ExpectedVersion::Any,
                        vec![ev(&format!("R{round}"))],
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    // Let the members see each other and balance their leases before the
    // work arrives: wait until every member holds a partition. (The lease
    // is long enough that a stalled renewal on a loaded machine does not
    // hand a live member's partition to another.)
    tokio::time::timeout(WAIT, async {
        loop {
            let owners: HashSet<String> = es
                .group_partitions("grp")
                .await
                .unwrap()
                .into_values()
                .filter_map(|p| p.owner)
                .collect();
            if owners.len() == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the members did not balance their partitions");
    write(es.clone(), 1).await;
    let wait_all = |n: usize| {
        let log = log.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                loop {
                    let distinct: HashSet<(String, u64)> = log
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(_, s, v)| (s.clone(), *v))
                        .collect();
                    if distinct.len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the group did not process every event");
        }
    };
    wait_all(60).await;
    let owners: HashSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(m, _, _)| m.clone())
        .collect();
    assert!(
        owners.len() >= 2,
        "work was not split between members: {owners:?}"
    );
    // Kill m1 without a goodbye (its leases stay until they expire).
    let dead = members.remove(0);
    dead.abort();
    let _ = dead.await;
    // Its partition tasks are aborted with it; let any poll in flight end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stops.remove(0);
    write(es.clone(), 2).await;
    wait_all(120).await;
    // Per stream, each member saw versions in increasing order.
    let mut per: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for (m, s, v) in log.lock().unwrap().iter() {
        per.entry((m.clone(), s.clone())).or_default().push(*v);
    }
    for ((m, s), vs) in per {
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "{m} saw {s} out of order: {vs:?}"
        );
    }
    let late: HashSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, v)| *v > 5)
        .map(|(m, _, _)| m.clone())
        .collect();
    assert!(!late.contains("m1"), "a dead member processed events");
    for s in stops {
        let _ = s.send(());
    }
    for m in members {
        tokio::time::timeout(WAIT, m)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

struct Enrolments {
    fail_once_at: Option<u64>,
    failed: AtomicU32,
}

impl Projection for Enrolments {
    fn name(&self) -> &str {
        "enrolments"
    }
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::Query(Query::of(["StudentSubscribed"], Vec::<String>::new()))
    }
    async fn apply(
        &self,
        e: &RecordedEvent,
        state: &mut ProjectionState<'_>,
    ) -> eskv_core::Result<()> {
        let course = e
            .tags
            .iter()
            .find(|t| t.starts_with("course:"))
            .cloned()
            .unwrap_or_default();
        let n: u64 = state.get_json(course.as_bytes()).await?.unwrap_or(0);
        state.put_json(course.as_bytes(), &(n + 1))?;
        // An injected failure after the handler wrote, before the commit.
        if Some(e.position) == self.fail_once_at && self.failed.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Err(Error::Unavailable {
                backend: "test",
                message: "injected failure between handler and commit".into(),
            });
        }
        Ok(())
    }
}

async fn enrolment_model(store: Store, fail_once_at: Option<u64>) -> BTreeMap<String, u64> {
    let es = open(store).await;
    for i in 0..30u64 {
        es.append(
            vec![NewEvent::new(
                if i % 5 == 0 {
                    "CourseDefined"
                } else {
                    "StudentSubscribed"
                },
                Vec::new(),
            )
            .with_tags([format!("course:c{}", i % 3), format!("student:s{i}")])],
            None,
        )
        .await
        .unwrap();
    }
    let p = Enrolments {
        fail_once_at,
        failed: AtomicU32::new(0),
    };
    let opts = ProjectionOptions::default().batch_size(4).handler(
        HandlerOptions::default().backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    let cp = es.catch_up_projection(&p, &opts).await.unwrap();
    assert_eq!(cp, 30);
    // Live: more events while the projection runs.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let es = es.clone();
        tokio::spawn(async move {
            let p = Enrolments {
                fail_once_at: None,
                failed: AtomicU32::new(0),
            };
            es.run_projection(&p, ProjectionOptions::default().batch_size(4), async move {
                let _ = rx.await;
            })
            .await
        })
    };
    for i in 30..40u64 {
        es.append(
            vec![NewEvent::new("StudentSubscribed", Vec::new())
                .with_tags([format!("course:c{}", i % 3)])],
            None,
        )
        .await
        .unwrap();
    }
    tokio::time::timeout(WAIT, async {
        while es.projection_checkpoint("enrolments").await.unwrap() != Some(40) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("live projection stalled");
    let _ = tx.send(());
    runner.await.unwrap().unwrap();
    let model = es.read_model("enrolments");
    let mut out = BTreeMap::new();
    for (k, v) in model.scan_prefix(b"course:").await.unwrap() {
        out.insert(
            String::from_utf8(k).unwrap(),
            serde_json::from_slice(&v).unwrap(),
        );
    }
    // Rebuild gives the same model and reports progress.
    let mut reports = 0;
    let rebuilt = es
        .rebuild_projection(&p, &opts, |pos, target| {
            assert!(pos <= target);
            reports += 1;
        })
        .await
        .unwrap();
    assert_eq!(rebuilt, 40);
    assert!(reports > 0);
    let mut again = BTreeMap::new();
    for (k, v) in model.scan_prefix(b"course:").await.unwrap() {
        again.insert(
            String::from_utf8(k).unwrap(),
            serde_json::from_slice(&v).unwrap(),
        );
    }
    assert_eq!(again, out, "rebuild changed the read model");
    out
}

/// An exactly-once projection gives the same read model with and without
/// an injected failure between handler and commit, and with lost commit
/// acknowledgements.
pub async fn exactly_once_projection(store: Store) {
    let a: Store = crate::unique_namespace(store.clone());
    let b: Store = crate::unique_namespace(store.clone());
    let c: Store = FaultyStore::wrap(crate::unique_namespace(store), FaultConfig::lost_acks(4));
    let clean = enrolment_model(a, None).await;
    let with_failure = enrolment_model(b, Some(12)).await;
    let with_lost_acks = enrolment_model(c, None).await;
    assert_eq!(clean.values().sum::<u64>(), 34, "{clean:?}");
    assert_eq!(with_failure, clean);
    assert_eq!(with_lost_acks, clean);
}

/// Snapshots: stored with the position they cover, ignored when their
/// schema version is unknown, and loading is snapshot plus tail.
pub async fn snapshots(store: Store) {
    let es = open(store).await;
    for i in 0..5 {
        es.append_to_stream("acct-1", ExpectedVersion::Any, vec![ev(&format!("D{i}"))])
            .await
            .unwrap();
    }
    let key = SnapshotKey::Stream("acct-1".into());
    let (none, all) = es.load_with_snapshot(&key, 1).await.unwrap();
    assert!(none.is_none());
    assert_eq!(all.len(), 5);
    es.save_snapshot(
        &key,
        &Snapshot {
            position: 3,
            schema_version: 1,
            data: b"sum=3".to_vec(),
        },
    )
    .await
    .unwrap();
    let (snap, tail) = es.load_with_snapshot(&key, 1).await.unwrap();
    assert_eq!(snap.unwrap().data, b"sum=3");
    assert_eq!(tail.iter().map(|e| e.position).collect::<Vec<_>>(), [4, 5]);
    let (other, tail) = es.load_with_snapshot(&key, 2).await.unwrap();
    assert!(
        other.is_none(),
        "a snapshot of another schema version must be ignored"
    );
    assert_eq!(tail.len(), 5);
    let qkey = SnapshotKey::Query(Query::of(["D1"], Vec::<String>::new()));
    es.save_snapshot(
        &qkey,
        &Snapshot {
            position: 5,
            schema_version: 7,
            data: vec![1],
        },
    )
    .await
    .unwrap();
    assert_eq!(
        es.load_snapshot(&qkey, 7).await.unwrap().unwrap().position,
        5
    );
    assert!(matches!(
        es.save_snapshot(
            &key,
            &Snapshot {
                position: 99,
                schema_version: 1,
                data: vec![]
            }
        )
        .await,
        Err(Error::InvalidInput { .. })
    ));
}

/// Deleting a stream drops its snapshot: the stream appended to again
/// loads as new, as it does without a snapshot. Truncation keeps it (the
/// state of the events it released lives on in the snapshot).
pub async fn snapshots_of_deleted_and_truncated_streams(store: Store) {
    let es = open(store).await;
    let snap = |position| Snapshot {
        position,
        schema_version: 1,
        data: b"state".to_vec(),
    };
    for s in ["acct-1", "acct-2", "acct-3"] {
        for _ in 0..3 {
            es.append_to_stream(s, ExpectedVersion::Any, vec![ev("D")])
                .await
                .unwrap();
        }
    }
    let last = |s: &str| {
        let es = es.clone();
        let s = s.to_owned();
        async move { es.stream_info(&s).await.unwrap().last_position.unwrap() }
    };
    // Deleted, then recreated: no snapshot, only the new event.
    let key = SnapshotKey::Stream("acct-1".into());
    es.save_snapshot(&key, &snap(last("acct-1").await))
        .await
        .unwrap();
    es.delete_stream("acct-1", ExpectedVersion::Any)
        .await
        .unwrap();
    let again = es
        .append_to_stream("acct-1", ExpectedVersion::NoStream, vec![ev("D")])
        .await
        .unwrap();
    let (with, events) = es.load_with_snapshot(&key, 1).await.unwrap();
    assert_eq!(with, None, "a snapshot of the deleted events");
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [again.last_position]);
    // Tombstoned: no snapshot either.
    let key = SnapshotKey::Stream("acct-2".into());
    es.save_snapshot(&key, &snap(last("acct-2").await))
        .await
        .unwrap();
    es.tombstone_stream("acct-2", ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(es.load_snapshot(&key, 1).await.unwrap(), None);
    // Truncated before its last version: the snapshot stays.
    let key = SnapshotKey::Stream("acct-3".into());
    let at = last("acct-3").await;
    es.save_snapshot(&key, &snap(at)).await.unwrap();
    es.set_retention(
        "acct-3",
        eskv_core::Retention::new().truncate_before(3),
        ExpectedVersion::Any,
    )
    .await
    .unwrap();
    let (with, events) = es.load_with_snapshot(&key, 1).await.unwrap();
    assert_eq!(with.map(|s| s.position), Some(at));
    assert!(events.is_empty(), "{events:?}");
}

/// Waits until `done` holds, panicking with `what` after [`WAIT`]; fails
/// early if one of `tasks` (consumer-group members) already stopped.
async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    tasks: &[tokio::task::JoinHandle<T>],
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !done() {
        if let Some(t) = tasks.iter().find(|t| t.is_finished()) {
            panic!("{what}: a member stopped early ({t:?})");
        }
        assert!(start.elapsed() < WAIT, "{what}: timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A handler that records positions and (for `Poison` events) fails.
fn recorder(
    seen: Arc<Mutex<Vec<u64>>>,
) -> impl Fn(
    RecordedEvent,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>
       + Send
       + Sync
       + 'static {
    move |e: RecordedEvent| {
        let seen = seen.clone();
        Box::pin(async move {
            if e.event_type == "Poison" {
                return Err(Error::invalid("cannot digest poison"));
            }
            seen.lock().unwrap().push(e.position);
            Ok(())
        })
    }
}

/// A consumer group's partition state never shares a key with a named
/// subscription, whatever the names: named subscription `billing#0` and
/// partition 0 of group `billing` have separate checkpoints, and so do
/// their dead letters.
pub async fn checkpoint_keys_never_collide(store: Store) {
    let es = open(store).await;
    for i in 0..6 {
        es.append(vec![ev(&format!("E{i}"))], None).await.unwrap();
    }
    es.save_checkpoint("billing#0", 6).await.unwrap();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let opts = GroupOptions::default()
        .partitions(1)
        .lease_ttl(Duration::from_secs(5));
    let g = ConsumerGroup::new(es.clone(), "billing", "m1", opts.clone()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let member = tokio::spawn(g.run(recorder(seen.clone()), async move {
        let _ = rx.await;
    }));
    es.append(vec![ev("E6")], None).await.unwrap();
    wait_until(
        "the group never reached event 7",
        std::slice::from_ref(&member),
        || seen.lock().unwrap().contains(&7),
    )
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        (1..=7).collect::<Vec<_>>(),
        "a fresh group must start from the beginning, not from another subscription's checkpoint"
    );
    // The handler sees an event before its checkpoint commits: wait for
    // the checkpoint, so that shutting down does not cut the ack short.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parts = es.group_partitions("billing").await.unwrap();
        if parts.get(&0).and_then(|p| p.checkpoint) == Some(7) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 0 of group 'billing' never checkpointed event 7: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tx.send(());
    member.await.unwrap().unwrap();
    assert_eq!(
        es.checkpoint("billing#0").await.unwrap(),
        Some(6),
        "the group's acknowledgements moved a named subscription's checkpoint"
    );

    // Dead letters: partition 0 of group `dlq` parks a poison event; the
    // named subscription `dlq#0` has none.
    es.append(vec![ev("Poison")], None).await.unwrap();
    let poison = es.head().await.unwrap();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let g = ConsumerGroup::new(
        es.clone(),
        "dlq",
        "m1",
        opts.handler(
            HandlerOptions::default()
                .max_attempts(1)
                .on_failure(OnFailure::Park),
        ),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let member = tokio::spawn(g.run(recorder(seen.clone()), async move {
        let _ = rx.await;
    }));
    es.append(vec![ev("After")], None).await.unwrap();
    wait_until(
        "the group never got past the poison event",
        std::slice::from_ref(&member),
        || seen.lock().unwrap().contains(&(poison + 1)),
    )
    .await;
    let _ = tx.send(());
    member.await.unwrap().unwrap();
    assert!(
        es.parked("dlq#0").await.unwrap().is_empty(),
        "a group partition's dead letter shows up under a named subscription"
    );
    let parked = es.group_parked("dlq").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((parked[0].0, parked[0].1.event.position), (0, poison));
    let partitions = es.group_partitions("billing").await.unwrap();
    assert_eq!(partitions[&0].checkpoint, Some(7));
    assert!(es.checkpoints().await.unwrap().keys().eq(["billing#0"]));
    let fixed = |_: RecordedEvent| async { Ok::<(), Error>(()) };
    assert_eq!(es.replay_group_parked("dlq", &fixed).await.unwrap(), 1);
    assert!(es.group_parked("dlq").await.unwrap().is_empty());
}

/// Transient `Unavailable` reads (here: 20% of transactions fail to
/// begin) neither stop a subscription runner nor a consumer-group member:
/// reads are retried like appends, and every event is handled in order.
pub async fn subscribers_survive_unavailable_reads(store: Store) {
    let faulty = crate::faults::FaultyStore::new(
        store,
        crate::faults::FaultConfig::none(crate::fault_cases::fault_seed()).begin_unavailable(0.2),
    );
    let es = open(Arc::new(faulty.clone())).await;
    for i in 0..30u64 {
        es.append_to_stream(
            &format!("acct-{}", i % 7),
            ExpectedVersion::Any,
            vec![ev("Flaky")],
        )
        .await
        .unwrap();
    }
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let sub = es
        .subscribe(
            SubscriptionOptions::named("flaky")
                .batch_size(4)
                .poll(Duration::from_millis(1), Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let handler = {
        let seen = seen.clone();
        let done = done.clone();
        move |e: RecordedEvent| {
            let seen = seen.clone();
            let done = done.clone();
            async move {
                seen.lock().unwrap().push(e.position);
                if e.position == 30 {
                    done.notify_one();
                }
                Ok::<(), Error>(())
            }
        }
    };
    tokio::time::timeout(
        WAIT,
        sub.run(handler, HandlerOptions::default(), done.notified()),
    )
    .await
    .expect("the runner stalled")
    .expect("a transient read error stopped the subscription runner");
    assert_eq!(*seen.lock().unwrap(), (1..=30).collect::<Vec<_>>());

    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let g = ConsumerGroup::new(
        es.clone(),
        "flaky-group",
        "m1",
        GroupOptions::default()
            .partitions(4)
            .lease_ttl(Duration::from_millis(300)),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let member = tokio::spawn(g.run(recorder(seen.clone()), async move {
        let _ = rx.await;
    }));
    wait_until(
        "the group did not handle every event",
        std::slice::from_ref(&member),
        || seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == 30,
    )
    .await;
    let _ = tx.send(());
    member
        .await
        .unwrap()
        .expect("a transient read error stopped the group member");
    assert!(
        faulty.counts().begin_unavailable > 10,
        "too few faults were injected to mean anything: {}",
        faulty.counts()
    );
}

/// Starting after a position past the head is rejected with a typed error
/// (as checkpoints past the head are): it would silently skip the next
/// events appended.
pub async fn subscription_start_past_head_is_rejected(store: Store) {
    let es = open(store).await;
    for _ in 0..3 {
        es.append(vec![ev("Early")], None).await.unwrap();
    }
    let res = es
        .subscribe(SubscriptionOptions::new().start(StartFrom::After(8)))
        .await;
    assert!(
        matches!(res, Err(Error::InvalidInput { .. })),
        "a start past the head was accepted: {res:?}"
    );
    let res = es
        .subscribe(SubscriptionOptions::named("late").start(StartFrom::After(4)))
        .await;
    assert!(matches!(res, Err(Error::InvalidInput { .. })), "{res:?}");
    // At the head is fine, and delivers the next event.
    let mut sub = es
        .subscribe(SubscriptionOptions::new().start(StartFrom::After(3)))
        .await
        .unwrap();
    let r = es.append(vec![ev("Next")], None).await.unwrap();
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.position, r.first_position);
}

/// Commits that append no events (checkpoints here) do not make idle
/// subscribers read: reads stay O(commits), not O(subscribers × commits).
/// Appends still wake every subscriber, also through another handle.
pub async fn checkpoint_commits_do_not_wake_subscribers(store: Store) {
    const SUBSCRIBERS: usize = 20;
    const COMMITS: u64 = 100;
    let counted = crate::limited::Limited::new(store);
    let kv: Store = Arc::new(counted.clone());
    let a = open(kv.clone()).await;
    let b = open(kv.clone()).await;
    a.append(vec![ev("First")], None).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..SUBSCRIBERS {
        // Timers far beyond the test: only a wake-up makes them read.
        let mut sub = a
            .subscribe(
                SubscriptionOptions::new()
                    .start(StartFrom::End)
                    .poll(Duration::from_secs(120), Duration::from_secs(120)),
            )
            .await
            .unwrap();
        waiters.push(tokio::spawn(
            async move { sub.next().await.unwrap().position },
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = counted.begins();
    let t = std::time::Instant::now();
    for i in 0..COMMITS {
        b.save_checkpoint(&format!("cp-{i}"), 1).await.unwrap();
        // Commits spaced as in a live system, so wake-ups do not coalesce.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = t.elapsed();
    // Let the woken subscribers (if any) do their reads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads = counted.begins() - before - COMMITS;
    eprintln!(
        "checkpoint_commits_do_not_wake_subscribers: {SUBSCRIBERS} idle subscribers, {COMMITS} checkpoint commits in {elapsed:?}: {reads} other reads ({:.2} per commit)",
        reads as f64 / COMMITS as f64
    );
    assert!(
        reads <= COMMITS + SUBSCRIBERS as u64,
        "{reads} reads by idle subscribers for {COMMITS} checkpoint commits"
    );
    let writer = if kv.commit_watch().is_some() { &b } else { &a };
    let r = writer.append(vec![ev("Second")], None).await.unwrap();
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("an append did not wake a subscriber")
            .unwrap();
        assert_eq!(got, r.first_position);
    }
}

/// One read-model key per event.
struct Keyed;

impl Projection for Keyed {
    fn name(&self) -> &str {
        "keyed"
    }
    async fn apply(
        &self,
        e: &RecordedEvent,
        state: &mut ProjectionState<'_>,
    ) -> eskv_core::Result<()> {
        state.put_json(format!("k/{:08}", e.position).as_bytes(), &e.position)
    }
}

/// Appends `n` events in appends of 10 (small enough for etcd).
async fn append_many(es: &EventStore, n: u64) {
    for _ in 0..n / 10 {
        es.append((0..10).map(|_| ev("Counted")).collect(), None)
            .await
            .unwrap();
    }
}

/// Checks the read model of [`Keyed`]: one key per position `1..=n`.
async fn check_keyed(es: &EventStore, n: u64) {
    let rows = es.read_model("keyed").scan_prefix(b"k/").await.unwrap();
    let got: Vec<u64> = rows
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "wrong read model");
}

/// Read-model generations of projection `name` present in the store.
async fn generations(kv: &Store, name: &str) -> std::collections::BTreeSet<u64> {
    use eskv_core::layout::{self, StateKey};
    let mut txn = kv.begin().await.unwrap();
    let rows = txn
        .scan(
            layout::read_model_range_from(name, 0),
            eskv_core::ScanOptions::default(),
        )
        .await
        .unwrap();
    rows.iter()
        .map(|(k, _)| match layout::parse_state_key(k).unwrap() {
            StateKey::ReadModel { generation, .. } => generation,
            other => panic!("{other:?} among read-model keys"),
        })
        .collect()
}

/// Rebuilding a projection whose read model has more keys than a
/// transaction may hold (here 1,100 keys, 128 operations per transaction,
/// as on etcd), while a live runner applies new events and a writer
/// appends them: readers always see a complete model that only grows (the
/// old generation until the new one has caught up, then the new one), and
/// the old generation is deleted in batches.
pub async fn projection_rebuild_large_read_model(store: Store) {
    const EVENTS: u64 = 1_100;
    const MORE: u64 = 200;
    let kv: Store = Arc::new(crate::limited::Limited::new(store).max_ops(128));
    let es = open(kv.clone()).await;
    append_many(&es, EVENTS).await;
    let opts = ProjectionOptions::default().batch_size(50);
    assert_eq!(es.catch_up_projection(&Keyed, &opts).await.unwrap(), EVENTS);
    check_keyed(&es, EVENTS).await;
    let before = generations(&kv, "keyed").await;
    assert_eq!(before.len(), 1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let es = es.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let model = es.read_model("keyed");
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.push(model.scan_prefix(b"k/").await.unwrap().len() as u64);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let (stop_runner, runner_stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let es = es.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            es.run_projection(&Keyed, opts, async move {
                let _ = runner_stopped.await;
            })
            .await
        })
    };
    let writer = {
        let es = es.clone();
        tokio::spawn(async move { append_many(&es, MORE).await })
    };
    let rebuilt = es.rebuild_projection(&Keyed, &opts, |_, _| {}).await;
    writer.await.unwrap();
    assert!(rebuilt.expect("rebuild failed") >= EVENTS);
    tokio::time::timeout(WAIT, async {
        while es.projection_checkpoint("keyed").await.unwrap() != Some(EVENTS + MORE) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the live runner did not catch up after the rebuild");
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let _ = stop_runner.send(());
    runner.await.unwrap().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|&n| n >= EVENTS) && seen.windows(2).all(|w| w[0] <= w[1]),
        "a reader saw a partial or shrinking read model during the rebuild: {:?}",
        seen.windows(2)
            .find(|w| w[0] > w[1] || w[1] < EVENTS)
            .or(seen
                .first()
                .filter(|&&n| n < EVENTS)
                .map(std::slice::from_ref))
    );
    check_keyed(&es, EVENTS + MORE).await;
    let after = generations(&kv, "keyed").await;
    assert_eq!(after.len(), 1, "generations left behind: {after:?}");
    assert_ne!(after, before, "the rebuild did not switch generations");
}

/// A rebuild whose commit acknowledgements get lost, and one that is
/// killed half-way, leave exactly one generation: the live one, complete.
pub async fn projection_rebuild_survives_lost_acks_and_restarts(store: Store) {
    const EVENTS: u64 = 300;
    let small: Store = Arc::new(crate::limited::Limited::new(store).max_ops(128));
    let lossy: Store = FaultyStore::wrap(small.clone(), FaultConfig::lost_acks(u64::MAX));
    let es = open(lossy.clone()).await;
    append_many(&es, EVENTS).await;
    let opts = ProjectionOptions::default().batch_size(40);
    assert_eq!(es.catch_up_projection(&Keyed, &opts).await.unwrap(), EVENTS);
    for round in 0..3 {
        let r = es.rebuild_projection(&Keyed, &opts, |_, _| {}).await;
        assert_eq!(r.unwrap(), EVENTS, "round {round}");
        check_keyed(&es, EVENTS).await;
        let g = generations(&small, "keyed").await;
        assert_eq!(g.len(), 1, "round {round}: generations left behind: {g:?}");
    }
    // Kill a rebuild after its first batch; the next rebuild (or clean-up)
    // finds and deletes what it left.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let killed = {
        let es = es.clone();
        let opts = opts.clone();
        let mut tx = Some(tx);
        tokio::spawn(async move {
            es.rebuild_projection(&Keyed, &opts, move |_, _| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            })
            .await
        })
    };
    let _ = rx.await;
    killed.abort();
    let _ = killed.await;
    check_keyed(&es, EVENTS).await;
    assert_eq!(
        es.rebuild_projection(&Keyed, &opts, |_, _| {})
            .await
            .unwrap(),
        EVENTS
    );
    check_keyed(&es, EVENTS).await;
    let g = generations(&small, "keyed").await;
    assert_eq!(
        g.len(),
        1,
        "after a killed rebuild: generations left: {g:?}"
    );
}

/// Consumer groups with more partitions than a transaction may hold
/// operations (300 partitions, 128 operations, as on etcd) rebalance and
/// release in transactions sized to the backend.
pub async fn large_consumer_groups(store: Store) {
    const PARTITIONS: u32 = 300;
    let kv: Store = Arc::new(crate::limited::Limited::new(store).max_ops(128));
    let es = open(kv).await;
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let opts = GroupOptions::default()
        .partitions(PARTITIONS)
        .lease_ttl(Duration::from_secs(3));
    let mut members = Vec::new();
    let mut stops = Vec::new();
    for m in ["m1", "m2"] {
        let g = ConsumerGroup::new(es.clone(), "big", m, opts.clone()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        members.push(tokio::spawn(g.run(recorder(seen.clone()), async move {
            let _ = rx.await;
        })));
        stops.push(tx);
    }
    // Events without a stream are partitioned by event id: spread wide.
    for _ in 0..6 {
        es.append((0..10).map(|_| ev("Spread")).collect(), None)
            .await
            .unwrap();
    }
    wait_until("the group did not handle every event", &members, || {
        seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == 60
    })
    .await;
    for s in stops {
        let _ = s.send(());
    }
    for m in members {
        tokio::time::timeout(WAIT, m)
            .await
            .unwrap()
            .unwrap()
            .expect("a member of a large group failed");
    }
    // Both released their leases on the way out.
    let left = es.group_partitions("big").await.unwrap();
    assert!(
        left.values().all(|p| p.owner.is_none()),
        "leases left after release: {}",
        left.values().filter(|p| p.owner.is_some()).count()
    );
}

/// A parked event the store removed since (its stream deleted) is a
/// hole, not damage: the list leaves it out, the other parked events
/// stay listed, and a replay drops its entry.
pub async fn dead_letters_of_removed_events(store: Store) {
    let es = open(store).await;
    for stream in ["cart-1", "cart-2"] {
        es.append_to_stream(stream, ExpectedVersion::Any, vec![ev("Poison")])
            .await
            .unwrap();
    }
    let sub = es
        .subscribe(SubscriptionOptions::named("dlq"))
        .await
        .unwrap();
    let opts = HandlerOptions::default()
        .max_attempts(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(1));
    let refuse = |_: RecordedEvent| async { Err::<(), _>(Error::invalid("poison")) };
    let es2 = es.clone();
    let stop = async move {
        while es2.checkpoint("dlq").await.unwrap() != Some(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, sub.run(refuse, opts, stop))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(es.parked("dlq").await.unwrap().len(), 2);
    es.delete_stream("cart-1", ExpectedVersion::Any)
        .await
        .unwrap();
    let parked = es.parked("dlq").await.unwrap();
    let positions: Vec<u64> = parked.iter().map(|p| p.event.position).collect();
    assert_eq!(positions, [2], "the deleted stream's event is not listed");
    // A replay that fixes nothing still drops the removed event's entry.
    assert_eq!(es.replay_parked("dlq", &refuse).await.unwrap(), 0);
    let fixed = |_: RecordedEvent| async { Ok::<(), Error>(()) };
    assert_eq!(es.replay_parked("dlq", &fixed).await.unwrap(), 1);
    assert!(es.parked("dlq").await.unwrap().is_empty());
}

/// Defines one `#[tokio::test]` per case of this module (subscriptions, consumer groups, projections and snapshots), on
/// stores from `$factory` (see [`all_suites!`](crate::all_suites)). With
/// `wrapped` first, the cases marked `#[direct_only]` are left out.
#[macro_export]
macro_rules! subscription_tests {
    ($factory:path) => {
        $crate::subscription_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::subscriptions,
            [
                catch_up_then_live,
                wakes_across_handles,
                filtered_subscriptions,
                checkpoint_resume_is_at_least_once,
                dead_letters,
                dead_letters_of_removed_events,
                consumer_group_takeover,
                exactly_once_projection,
                snapshots,
                snapshots_of_deleted_and_truncated_streams,
                #[direct_only]
                checkpoint_keys_never_collide,
                #[direct_only]
                subscribers_survive_unavailable_reads,
                #[direct_only]
                subscription_start_past_head_is_rejected,
                #[direct_only]
                checkpoint_commits_do_not_wake_subscribers,
                #[direct_only]
                projection_rebuild_large_read_model,
                #[direct_only]
                projection_rebuild_survives_lost_acks_and_restarts,
                #[direct_only]
                large_consumer_groups,
            ]
        );
    };
}
