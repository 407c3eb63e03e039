//! Event-layer conformance cases: ordering, locking, DCB and idempotency,
//! run through the public [`EventStore`] API on any backend.

use crate::faults::{FaultConfig, FaultyStore};
use eskv_core::{
    AppendCondition, AppendRequest, Error, EventStore, ExpectedVersion, KvStore, LogFilter,
    NewEvent, Query, QueryItem, ReadOptions, ReadStreamOptions, RecordedEvent, Retention,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

type Store = Arc<dyn KvStore>;

async fn open(store: Store) -> EventStore {
    EventStore::open(store).await.expect("open event store")
}

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, t.as_bytes().to_vec())
}

/// A stream longer than one read page (1,024 versions), its events
/// interleaved with another stream's, reads whole and in part, forwards
/// and backwards, with limits and `until`; once a retention releases its
/// first versions, every read starts at the first live one.
pub async fn long_stream_reads(store: Store) {
    let es = open(store).await;
    let n = 2_600u64;
    let mut positions = Vec::new();
    // Appends of 20 events stay within etcd's default 128 operations per
    // transaction.
    for _ in 0..n / 20 {
        let batch: Vec<NewEvent> = (0..20).map(|_| ev("Long")).collect();
        let r = es
            .append_to_stream("long-1", ExpectedVersion::Any, batch)
            .await
            .unwrap();
        positions.extend(r.first_position..=r.last_position);
        es.append_to_stream("other-1", ExpectedVersion::Any, vec![ev("Other")])
            .await
            .unwrap();
    }
    let versions = |r: &eskv_core::StreamRead| -> Vec<u64> {
        r.events
            .iter()
            .map(|e| e.stream.as_ref().unwrap().version)
            .collect()
    };
    let read = |o: ReadStreamOptions| {
        let es = es.clone();
        async move { es.read_stream("long-1", o).await.unwrap() }
    };
    let all = read(ReadStreamOptions::new()).await;
    assert_eq!(versions(&all), (1..=n).collect::<Vec<_>>());
    assert_eq!(all.version, n);
    let got: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert_eq!(got, positions);
    let back = read(ReadStreamOptions::new().backwards()).await;
    assert_eq!(versions(&back), (1..=n).rev().collect::<Vec<_>>());
    let part = read(ReadStreamOptions::new().from_version(1_000).limit(1_500)).await;
    assert_eq!(versions(&part), (1_000..2_500).collect::<Vec<_>>());
    let part = read(
        ReadStreamOptions::new()
            .backwards()
            .from_version(2_500)
            .limit(2_100),
    )
    .await;
    assert_eq!(versions(&part), (401..=2_500).rev().collect::<Vec<_>>());
    // `until` stops at the event of version 2,222.
    let until = positions[2_221];
    let part = read(ReadStreamOptions::new().until(until)).await;
    assert_eq!(versions(&part), (1..=2_222).collect::<Vec<_>>());
    let part = read(ReadStreamOptions::new().backwards().until(until)).await;
    assert_eq!(versions(&part), (1..=2_222).rev().collect::<Vec<_>>());

    es.set_retention(
        "long-1",
        Retention::new().max_count(1_300),
        ExpectedVersion::Any,
    )
    .await
    .unwrap();
    let live = read(ReadStreamOptions::new()).await;
    assert_eq!(versions(&live), (1_301..=n).collect::<Vec<_>>());
    let live = read(ReadStreamOptions::new().limit(1_100)).await;
    assert_eq!(versions(&live), (1_301..2_401).collect::<Vec<_>>());
    let live = read(ReadStreamOptions::new().backwards()).await;
    assert_eq!(versions(&live), (1_301..=n).rev().collect::<Vec<_>>());
}

/// Stream versions are 1..n contiguous; reads by version work forwards,
/// backwards, from a version and with a limit; stream info and listing
/// agree; categories index streams by their id up to the first `-`.
pub async fn stream_versions_and_reads(store: Store) {
    let es = open(store).await;
    let r = es
        .append_to_stream(
            "order-1",
            ExpectedVersion::NoStream,
            vec![ev("Placed"), ev("Paid")],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.first_position, r.last_position, r.stream_version),
        (1, 2, Some(2))
    );
    es.append_to_stream("invoice-9", ExpectedVersion::Any, vec![ev("Issued")])
        .await
        .unwrap();
    let r = es
        .append_to_stream("order-1", ExpectedVersion::Exact(2), vec![ev("Shipped")])
        .await
        .unwrap();
    assert_eq!((r.first_position, r.stream_version), (4, Some(3)));
    es.append_to_stream("order-2", ExpectedVersion::NoStream, vec![ev("Placed")])
        .await
        .unwrap();

    let all = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .unwrap();
    let versions: Vec<u64> = all
        .iter()
        .map(|e| e.stream.as_ref().unwrap().version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    let types: Vec<&str> = all.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Placed", "Paid", "Shipped"]);
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 4]
    );

    let back = es
        .read_stream("order-1", ReadStreamOptions::new().backwards().limit(2))
        .await
        .unwrap();
    assert_eq!(
        back.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Shipped", "Paid"]
    );
    let from2 = es
        .read_stream("order-1", ReadStreamOptions::new().from_version(2))
        .await
        .unwrap();
    assert_eq!(from2.len(), 2);
    let back_from2 = es
        .read_stream(
            "order-1",
            ReadStreamOptions::new().from_version(2).backwards(),
        )
        .await
        .unwrap();
    assert_eq!(
        back_from2.iter().map(|e| e.position).collect::<Vec<_>>(),
        [2, 1]
    );
    let until3 = es
        .read_stream("order-1", ReadStreamOptions::new().until(3))
        .await
        .unwrap();
    assert_eq!(
        until3.len(),
        2,
        "time travel must hide events after position 3"
    );
    assert!(es
        .read_stream("nope", ReadStreamOptions::new())
        .await
        .unwrap()
        .is_empty());

    let info = es.stream_info("order-1").await.unwrap();
    assert!(info.exists);
    assert_eq!((info.version, info.last_position), (3, Some(4)));
    let none = es.stream_info("order-404").await.unwrap();
    assert!(!none.exists && none.version == 0 && none.last_position.is_none());

    let listed = es.list_streams("order-", None, 10).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| s.stream_id.as_str())
            .collect::<Vec<_>>(),
        ["order-1", "order-2"]
    );
    let page2 = es
        .list_streams("order-", Some("order-1"), 10)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].stream_id, "order-2");
    // Paging from a stream below the prefix stays inside the prefix.
    let below = es
        .list_streams("order-", Some("invoice-9"), 10)
        .await
        .unwrap();
    assert_eq!(below.len(), 2);
    let above = es
        .list_streams("invoice", Some("order-1"), 10)
        .await
        .unwrap();
    assert!(above.is_empty(), "{above:?}");
    let one = es.list_streams("", None, 1).await.unwrap();
    assert_eq!(one[0].stream_id, "invoice-9");

    let cat = es.read_category("order", ReadOptions::new()).await.unwrap();
    assert_eq!(
        cat.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 4, 5]
    );
    let cat_back = es
        .read_category("order", ReadOptions::new().backwards().limit(1))
        .await
        .unwrap();
    assert_eq!(cat_back.events[0].position, 5);
    let by_prefix = es
        .read_all_filtered(&LogFilter::stream_prefix("invoice"), ReadOptions::new())
        .await
        .unwrap();
    assert_eq!(by_prefix.events.len(), 1);
    assert_eq!(by_prefix.events[0].position, 3);
}

/// Expected-version semantics, and the lock under contention: 32
/// concurrent appenders with the same expected version, exactly one wins.
pub async fn expected_version_locking(store: Store) {
    let es = open(store).await;
    let err = es
        .append_to_stream("s-1", ExpectedVersion::StreamExists, vec![ev("A")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongExpectedVersion { actual: None, .. }),
        "{err:?}"
    );
    let err = es
        .append_to_stream("s-1", ExpectedVersion::Exact(1), vec![ev("A")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }));
    es.append_to_stream("s-1", ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    let err = es
        .append_to_stream("s-1", ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap_err();
    match err {
        Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(
                (stream.as_str(), expected, actual),
                ("s-1", ExpectedVersion::NoStream, Some(1))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    es.append_to_stream("s-1", ExpectedVersion::StreamExists, vec![ev("B")])
        .await
        .unwrap();
    es.append_to_stream("s-1", ExpectedVersion::Any, vec![ev("C")])
        .await
        .unwrap();
    assert_eq!(es.stream_info("s-1").await.unwrap().version, 3);
    assert_eq!(
        es.head().await.unwrap(),
        3,
        "rejected appends must not write"
    );

    let mut tasks = Vec::new();
    for i in 0..32 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            es.append_to_stream(
                "s-1",
                ExpectedVersion::Exact(3),
                vec![ev(&format!("Racer{i}"))],
            )
            .await
        }));
    }
    let mut wins = 0;
    let mut losses = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.stream_version, Some(4));
            }
            Err(Error::WrongExpectedVersion {
                actual: Some(4), ..
            }) => losses += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((wins, losses), (1, 31));
    assert_eq!(es.stream_info("s-1").await.unwrap().version, 4);
    assert_eq!(es.head().await.unwrap(), 4);
}

/// Global positions are gapless and in commit order under concurrent
/// writers, and a concurrent reader following the log never finds an event
/// behind its cursor (no skipped events).
pub async fn gapless_positions_under_concurrency(store: Store) {
    let es = open(store).await;
    const WRITERS: usize = 8;
    const APPENDS: usize = 15;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let es = es.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut cursor = 0u64;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = es.read_all(ReadOptions::after(cursor)).await.unwrap();
                for e in &page.events {
                    assert_eq!(e.position, cursor + 1, "reader saw a gap or a reordering");
                    cursor = e.position;
                    seen.push(e.id);
                }
                assert!(page.consistent_through >= cursor);
                if finished && page.events.is_empty() {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let es = es.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..APPENDS {
                let n = 1 + (w + i) % 3;
                let events: Vec<NewEvent> = (0..n)
                    .map(|_| ev("Tick").with_tags([format!("writer:{w}")]))
                    .collect();
                let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                let r = if i % 2 == 0 {
                    es.append(events, None).await.unwrap()
                } else {
                    es.append_to_stream(&format!("w-{w}"), ExpectedVersion::Any, events)
                        .await
                        .unwrap()
                };
                assert_eq!(r.last_position - r.first_position + 1, n as u64);
                acked.push((r, ids));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let all = es.read_all(ReadOptions::new()).await.unwrap();
    let total: u64 = acked
        .iter()
        .map(|(r, _)| r.last_position - r.first_position + 1)
        .sum();
    assert_eq!(all.consistent_through, total);
    assert_eq!(all.events.len() as u64, total);
    for (i, e) in all.events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap in the global log");
    }
    for (r, ids) in &acked {
        for (p, id) in r.positions().zip(ids) {
            assert_eq!(
                all.events[p as usize - 1].id,
                *id,
                "acknowledged event not at its position"
            );
        }
    }
    assert_eq!(
        seen.len() as u64,
        total,
        "the following reader missed events"
    );
    for w in 0..WRITERS {
        let s = es
            .read_stream(&format!("w-{w}"), ReadStreamOptions::new())
            .await
            .unwrap();
        for (i, e) in s.iter().enumerate() {
            assert_eq!(e.stream.as_ref().unwrap().version, i as u64 + 1);
        }
    }
    let back = es
        .read_all(ReadOptions::new().backwards().limit(3))
        .await
        .unwrap();
    assert_eq!(
        back.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [total, total - 1, total - 2]
    );
}

/// DCB query semantics and condition exactness in both directions: a
/// matching event after `after` fails the append; a match at or before
/// `after`, or a non-matching event after it, never does.
pub async fn dcb_condition_exactness(store: Store) {
    let es = open(store).await;
    es.append(
        vec![
            ev("CourseDefined").with_tags(["course:c1"]),
            ev("StudentSubscribed").with_tags(["course:c1", "student:s1"]),
            ev("StudentSubscribed").with_tags(["course:c2", "student:s1"]),
            ev("Unrelated"),
        ],
        None,
    )
    .await
    .unwrap();

    let q = |types: &[&str], tags: &[&str]| Query::of(types, tags);
    let positions =
        |r: eskv_core::ReadResult| r.events.iter().map(|e| e.position).collect::<Vec<_>>();
    // Reads: types ORed within an item, tags ANDed, items ORed.
    assert_eq!(
        positions(
            es.read(
                &q(&["StudentSubscribed"], &["course:c1"]),
                ReadOptions::new()
            )
            .await
            .unwrap()
        ),
        [2]
    );
    assert_eq!(
        positions(
            es.read(&q(&[], &["student:s1"]), ReadOptions::new())
                .await
                .unwrap()
        ),
        [2, 3]
    );
    assert_eq!(
        positions(
            es.read(
                &q(&["CourseDefined", "StudentSubscribed"], &["course:c1"]),
                ReadOptions::new()
            )
            .await
            .unwrap()
        ),
        [1, 2]
    );
    assert!(es
        .read(&q(&[], &["course:c1", "course:c2"]), ReadOptions::new())
        .await
        .unwrap()
        .events
        .is_empty());
    let two_items =
        Query::item(QueryItem::new().types(["Unrelated"])).or(QueryItem::new().tags(["course:c2"]));
    assert_eq!(
        positions(es.read(&two_items, ReadOptions::new()).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        positions(es.read(&Query::all(), ReadOptions::after(2)).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        positions(
            es.read(
                &q(&["StudentSubscribed"], &[]),
                ReadOptions::new().backwards().limit(1)
            )
            .await
            .unwrap()
        ),
        [3]
    );
    let r = es
        .read(&q(&[], &["student:s1"]), ReadOptions::new())
        .await
        .unwrap();
    assert_eq!(r.consistent_through, 4);
    let got = &r.events[0];
    assert_eq!(
        got.tags,
        ["course:c1", "student:s1"],
        "all tags must come back"
    );

    let cond = |query: Query, after: Option<u64>| Some(AppendCondition::new(query, after));
    // Match after `after`: fails, naming the first matching position.
    let err = es
        .append(
            vec![ev("X")],
            cond(q(&["StudentSubscribed"], &["student:s1"]), Some(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConditionFailed {
                position: 2,
                after: Some(1)
            }
        ),
        "{err:?}"
    );
    // Match only at or before `after`: succeeds.
    es.append(
        vec![ev("X")],
        cond(q(&["StudentSubscribed"], &["course:c2"]), Some(3)),
    )
    .await
    .unwrap();
    // Only non-matching events after `after`: succeeds (no false conflict).
    es.append(vec![ev("X")], cond(q(&["CourseDefined"], &[]), Some(1)))
        .await
        .unwrap();
    es.append(
        vec![ev("X")],
        cond(
            q(&["StudentSubscribed"], &["course:c1", "student:s2"]),
            None,
        ),
    )
    .await
    .unwrap();
    // Type matches but a tag is missing: no conflict.
    es.append(
        vec![ev("X")],
        cond(q(&["StudentSubscribed"], &["course:c3"]), None),
    )
    .await
    .unwrap();
    // Query::all with after = head: nothing after, succeeds; after = head-1 fails.
    let head = es.head().await.unwrap();
    es.append(vec![ev("Y")], cond(Query::all(), Some(head)))
        .await
        .unwrap();
    let err = es
        .append(vec![ev("Y")], cond(Query::all(), Some(head)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConditionFailed { position, .. } if position == head + 1));
    // A failed append wrote nothing.
    assert_eq!(es.head().await.unwrap(), head + 1);
    // A match behind many non-matching entries of the same tag index (more
    // than one read page) is still found, and its position is exact.
    // (In appends of 10, within every backend's transaction limits.)
    let noise = |n: usize| {
        (0..n)
            .map(|_| ev("Noise").with_tags(["busy"]))
            .collect::<Vec<_>>()
    };
    for _ in 0..10 {
        es.append(noise(10), None).await.unwrap();
    }
    let needle = es
        .append(vec![ev("Needle").with_tags(["busy"])], None)
        .await
        .unwrap();
    for _ in 0..5 {
        es.append(noise(10), None).await.unwrap();
    }
    let err = es
        .append(
            vec![ev("Y")],
            cond(q(&["Needle"], &["busy"]), Some(head + 1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConditionFailed { position, .. } if position == needle.first_position),
        "{err:?}"
    );
    es.append(
        vec![ev("Y")],
        cond(q(&["Needle"], &["busy"]), Some(needle.first_position)),
    )
    .await
    .unwrap();
    let head = es.head().await.unwrap();
    // `after` beyond the head is a client bug, reported as such.
    let err = es
        .append(vec![ev("Y")], cond(Query::all(), Some(head + 100)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
}

/// Uniqueness: a condition without `after` fails if a match exists
/// anywhere; concurrent claims of one name let exactly one through.
pub async fn dcb_uniqueness(store: Store) {
    let es = open(store).await;
    let claim = |name: &str| {
        let tag = format!("username:{name}");
        (
            NewEvent::new("UsernameClaimed", name.as_bytes().to_vec()).with_tags([tag.clone()]),
            Some(AppendCondition::none_match(Query::of(
                ["UsernameClaimed"],
                vec![tag],
            ))),
        )
    };
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let es = es.clone();
        let (e, c) = claim("ann");
        tasks.push(tokio::spawn(async move { es.append(vec![e], c).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::ConditionFailed { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1, "a username was claimed more than once");
    let (e, c) = claim("bob");
    es.append(vec![e], c).await.unwrap();
    let (e, c) = claim("bob");
    assert!(matches!(
        es.append(vec![e], c).await,
        Err(Error::ConditionFailed { .. })
    ));
}

/// The course-subscription scenario with 50 concurrent deciders: a course
/// never exceeds its capacity and a student subscribes to a course at most
/// once. Each decider reads its boundary, decides, and appends with the
/// read's head as `after`, retrying the decision when the condition fails.
pub async fn dcb_course_subscriptions(store: Store) {
    let es = open(store).await;
    const CAPACITY: usize = 5;
    for c in ["c1", "c2"] {
        es.append(
            vec![
                NewEvent::new("CourseDefined", CAPACITY.to_string().into_bytes())
                    .with_tags([format!("course:{c}")]),
            ],
            None,
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let es = es.clone();
        // 12 students, 2 courses: plenty of duplicates and a full course.
        let student = format!("student:s{}", i % 12);
        let course = format!("course:c{}", 1 + i % 2);
        tasks.push(tokio::spawn(async move {
            loop {
                let boundary = Query::item(
                    QueryItem::new()
                        .types(["CourseDefined", "StudentSubscribed"])
                        .tags([course.clone()]),
                )
                .or(QueryItem::new()
                    .types(["StudentSubscribed"])
                    .tags([student.clone()]));
                let seen = es.read(&boundary, ReadOptions::new()).await.unwrap();
                let in_course = seen
                    .events
                    .iter()
                    .filter(|e| e.event_type == "StudentSubscribed" && e.tags.contains(&course))
                    .count();
                let already = seen.events.iter().any(|e| {
                    e.event_type == "StudentSubscribed"
                        && e.tags.contains(&course)
                        && e.tags.contains(&student)
                });
                if in_course >= CAPACITY || already {
                    return false;
                }
                let e = NewEvent::new("StudentSubscribed", Vec::new())
                    .with_tags([course.clone(), student.clone()]);
                match es
                    .append(
                        vec![e],
                        Some(AppendCondition::new(
                            boundary,
                            Some(seen.consistent_through),
                        )),
                    )
                    .await
                {
                    Ok(_) => return true,
                    Err(Error::ConditionFailed { .. }) => continue,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    let subs = es
        .read(
            &Query::of(["StudentSubscribed"], Vec::<String>::new()),
            ReadOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(subs.events.len(), admitted);
    let mut per_course: HashMap<String, usize> = HashMap::new();
    let mut pairs = BTreeSet::new();
    for e in &subs.events {
        let course = e
            .tags
            .iter()
            .find(|t| t.starts_with("course:"))
            .unwrap()
            .clone();
        let student = e
            .tags
            .iter()
            .find(|t| t.starts_with("student:"))
            .unwrap()
            .clone();
        *per_course.entry(course.clone()).or_default() += 1;
        assert!(
            pairs.insert((course, student)),
            "a student subscribed twice to one course"
        );
    }
    for (c, n) in per_course {
        assert!(n <= CAPACITY, "course {c} over capacity: {n}");
        assert_eq!(
            n, CAPACITY,
            "enough distinct students wanted {c}; it should be full"
        );
    }
}

/// Concurrent appends whose conditions do not overlap never conflict.
pub async fn dcb_unrelated_appends_never_conflict(store: Store) {
    let es = open(store).await;
    let mut tasks = Vec::new();
    for w in 0..24 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            let tag = format!("account:{w}");
            let q = Query::of(["Deposited"], vec![tag.clone()]);
            let mut failures = 0;
            for _ in 0..4 {
                let seen = es.read(&q, ReadOptions::new()).await.unwrap();
                let e = NewEvent::new("Deposited", Vec::new()).with_tags([tag.clone()]);
                match es
                    .append(
                        vec![e],
                        Some(AppendCondition::new(
                            q.clone(),
                            Some(seen.consistent_through),
                        )),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(Error::ConditionFailed { .. }) => failures += 1,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.unwrap();
    }
    assert_eq!(failures, 0, "appends with disjoint conditions conflicted");
    assert_eq!(es.head().await.unwrap(), 96);
}

/// Appending the same event ids again returns the original result and
/// writes nothing, for stream and DCB appends; partial overlaps and
/// reorderings are rejected; concurrent duplicates store one copy.
pub async fn idempotent_appends(store: Store) {
    let es = open(store).await;
    let batch = vec![ev("A"), ev("B")];
    let first = es
        .append_to_stream("idem-1", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    es.append(vec![ev("Other")], None).await.unwrap();
    // Same ids, stale expected version: still the original result.
    let again = es
        .append_to_stream("idem-1", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(es.head().await.unwrap(), 3);

    let cond = Some(AppendCondition::none_match(Query::of(
        ["C"],
        Vec::<String>::new(),
    )));
    let dcb = vec![ev("C")];
    let r1 = es.append(dcb.clone(), cond.clone()).await.unwrap();
    // The condition now matches the event itself, yet the replay succeeds.
    let r2 = es.append(dcb.clone(), cond).await.unwrap();
    assert_eq!(r1, r2);
    assert_eq!(es.head().await.unwrap(), 4);

    // A retry of only part of the original append is not a replay.
    assert!(matches!(
        es.append_to_stream("idem-1", ExpectedVersion::Any, vec![batch[0].clone()])
            .await,
        Err(Error::IdempotencyViolation { .. })
    ));
    assert!(matches!(
        es.append_to_stream("idem-1", ExpectedVersion::Any, vec![batch[1].clone()])
            .await,
        Err(Error::IdempotencyViolation { .. })
    ));
    let partial = vec![batch[0].clone(), ev("New")];
    let err = es.append(partial, None).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyViolation { .. }), "{err:?}");
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    assert!(matches!(
        es.append_to_stream("idem-1", ExpectedVersion::Any, reordered)
            .await,
        Err(Error::IdempotencyViolation { .. })
    ));
    let other_stream = es
        .append_to_stream("idem-2", ExpectedVersion::Any, batch.clone())
        .await;
    assert!(matches!(
        other_stream,
        Err(Error::IdempotencyViolation { .. })
    ));
    let dup_inside = vec![batch[0].clone(), batch[0].clone()];
    assert!(matches!(
        es.append(dup_inside, None).await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(es.head().await.unwrap(), 4, "rejected appends wrote");

    // Concurrent duplicates: one copy, same answer for all.
    let same = vec![ev("Dup")];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let es = es.clone();
        let same = same.clone();
        tasks.push(tokio::spawn(
            async move { es.append(same, None).await.unwrap() },
        ));
    }
    let mut results = BTreeSet::new();
    for t in tasks {
        results.insert(t.await.unwrap());
    }
    assert_eq!(results.len(), 1);
    assert_eq!(es.head().await.unwrap(), 5);
}

/// A commit whose acknowledgement is lost (the backend applied it but the
/// caller got "outcome unknown") is resolved by the idempotent retry: the
/// append returns its result and the events are stored exactly once.
pub async fn lost_acknowledgement_is_resolved(store: Store) {
    let flaky = FaultyStore::new(store, FaultConfig::lost_acks(3));
    let es = open(Arc::new(flaky.clone())).await;
    let mut results = Vec::new();
    for i in 0..6 {
        let r = es
            .append_to_stream(
                "acks",
                ExpectedVersion::Any,
                vec![ev(&format!("E{i}")), ev("Pair")],
            )
            .await
            .unwrap();
        results.push(r);
    }
    let all = es.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(
        all.events.len(),
        12,
        "a lost acknowledgement duplicated or lost events"
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.first_position, 2 * i as u64 + 1);
        assert_eq!(r.stream_version, Some(2 * i as u64 + 2));
    }
    assert_eq!(
        flaky.counts().ambiguous,
        3,
        "the case must lose acknowledgements to test anything: {}",
        flaky.counts()
    );
}

/// Every read takes an upper bound; folding up to it rebuilds the past.
pub async fn time_travel_reads(store: Store) {
    let es = open(store).await;
    for i in 0..10 {
        es.append(
            vec![ev("Counted").with_tags([format!("n:{}", i % 2)])],
            None,
        )
        .await
        .unwrap();
    }
    let past = es.read_all(ReadOptions::new().until(4)).await.unwrap();
    assert_eq!(past.events.len(), 4);
    let past_q = es
        .read(
            &Query::of(Vec::<String>::new(), ["n:0"]),
            ReadOptions::new().until(5),
        )
        .await
        .unwrap();
    assert_eq!(
        past_q.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 3, 5]
    );
    let back = es
        .read_all(ReadOptions::new().backwards().until(6).limit(2))
        .await
        .unwrap();
    assert_eq!(
        back.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [6, 5]
    );
    let from_past_head = es.read_all(ReadOptions::after(10)).await.unwrap();
    assert!(from_past_head.events.is_empty());
    assert_eq!(from_past_head.consistent_through, 10);
}

/// Strict mode rejects unregistered types, naming the nearest registered one.
pub async fn strict_event_types(store: Store) {
    let es = open(store).await;
    es.append(vec![ev("Anything")], None).await.unwrap();
    es.register_event_types(["OrderPlaced", "OrderShipped"])
        .await
        .unwrap();
    es.set_strict_types(true).await.unwrap();
    assert!(es.strict_types().await.unwrap());
    let err = es.append(vec![ev("OrderPlacd")], None).await.unwrap_err();
    match &err {
        Error::UnknownEventType {
            event_type,
            nearest,
        } => {
            assert_eq!(event_type, "OrderPlacd");
            assert_eq!(nearest.as_deref(), Some("OrderPlaced"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("OrderPlaced"));
    es.append(vec![ev("OrderPlaced"), ev("OrderShipped")], None)
        .await
        .unwrap();
    assert_eq!(
        es.event_types().await.unwrap(),
        ["OrderPlaced", "OrderShipped"]
    );
    // A second handle (fresh cache) sees the persisted registry and flag.
    let es2 = EventStore::open(es.kv().clone()).await.unwrap();
    assert!(matches!(
        es2.append(vec![ev("Nope")], None).await,
        Err(Error::UnknownEventType { .. })
    ));
    es2.append(vec![ev("OrderShipped")], None).await.unwrap();
    es.set_strict_types(false).await.unwrap();
    es.append(vec![ev("Nope")], None).await.unwrap();
    assert_eq!(es.head().await.unwrap(), 5);
}

/// Invalid input gets a typed error and writes nothing.
pub async fn bad_input_is_rejected(store: Store) {
    let es = open(store).await;
    es.append(vec![ev("Seed")], None).await.unwrap();
    let limits = es.options().limits.clone();
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, AppendRequest)> = vec![
        ("no events", AppendRequest::new(vec![])),
        ("empty type", AppendRequest::new(vec![ev("")])),
        (
            "type with space",
            AppendRequest::new(vec![ev("Order Placed")]),
        ),
        (
            "type with control char",
            AppendRequest::new(vec![ev("Order\u{7}")]),
        ),
        (
            "type starting with a digit",
            AppendRequest::new(vec![ev("1Order")]),
        ),
        (
            "oversized type",
            AppendRequest::new(vec![ev(&long(limits.max_type_len + 1))]),
        ),
        (
            "empty tag",
            AppendRequest::new(vec![ev("A").with_tags([""])]),
        ),
        (
            "tag with control char",
            AppendRequest::new(vec![ev("A").with_tags(["a\nb"])]),
        ),
        (
            "oversized tag",
            AppendRequest::new(vec![ev("A").with_tags([long(limits.max_tag_len + 1)])]),
        ),
        (
            "too many tags",
            AppendRequest::new(vec![
                ev("A").with_tags((0..=limits.max_tags_per_event).map(|i| format!("t{i}")))
            ]),
        ),
        (
            "oversized event",
            AppendRequest::new(vec![NewEvent::new(
                "A",
                vec![0u8; limits.max_event_bytes + 1],
            )]),
        ),
        (
            "empty stream id",
            AppendRequest::new(vec![ev("A")]).stream("", ExpectedVersion::Any),
        ),
        (
            "stream id with control char",
            AppendRequest::new(vec![ev("A")]).stream("a\u{0}b", ExpectedVersion::Any),
        ),
        (
            "reserved stream id",
            AppendRequest::new(vec![ev("A")]).stream("$all", ExpectedVersion::Any),
        ),
        (
            "oversized stream id",
            AppendRequest::new(vec![ev("A")])
                .stream(long(limits.max_stream_id_len + 1), ExpectedVersion::Any),
        ),
        (
            "expected version zero",
            AppendRequest::new(vec![ev("A")]).stream("s", ExpectedVersion::Exact(0)),
        ),
        (
            "query with no items",
            AppendRequest::new(vec![ev("A")])
                .condition(AppendCondition::none_match(Query { items: vec![] })),
        ),
        (
            "query with an invalid type",
            AppendRequest::new(vec![ev("A")]).condition(AppendCondition::none_match(Query::of(
                ["bad type"],
                Vec::<String>::new(),
            ))),
        ),
        (
            "after past the head",
            AppendRequest::new(vec![ev("A")])
                .condition(AppendCondition::new(Query::all(), Some(1_000))),
        ),
    ];
    let dup = ev("A");
    let mut cases = cases;
    cases.push((
        "duplicate id in one append",
        AppendRequest::new(vec![dup.clone(), dup]),
    ));
    cases.push((
        "too many events",
        AppendRequest::new(
            (0..=limits.max_events_per_append)
                .map(|_| ev("A"))
                .collect(),
        ),
    ));
    for (name, req) in cases {
        match es.submit(req).await {
            Err(Error::InvalidInput { message }) => assert!(!message.is_empty(), "{name}"),
            Err(Error::LimitExceeded { limit, actual, .. }) => assert!(actual > limit, "{name}"),
            other => panic!("{name}: expected a typed rejection, got {other:?}"),
        }
    }
    assert!(matches!(
        es.read(&Query { items: vec![] }, ReadOptions::new()).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        es.read_stream("", ReadStreamOptions::new()).await,
        Err(Error::InvalidInput { .. })
    ));
    let all = es.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(
        (all.consistent_through, all.events.len()),
        (1, 1),
        "a rejected append wrote something"
    );
}

/// Payload helpers: JSON and typed payloads round-trip; metadata and the
/// recorded time come back.
pub async fn payloads_and_metadata(store: Store) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Placed {
        order: String,
        total_cents: u64,
    }
    let es = open(store).await;
    let meta = eskv_core::Metadata::new()
        .correlation_id("c-1")
        .causation_id("cmd-9")
        .with("user", "ann");
    let e = NewEvent::json(
        "OrderPlaced",
        &Placed {
            order: "o1".into(),
            total_cents: 1250,
        },
    )
    .unwrap()
    .with_metadata(meta.clone());
    let id = e.id;
    es.append_to_stream("order-o1", ExpectedVersion::NoStream, vec![e])
        .await
        .unwrap();
    let got = es
        .read_stream("order-o1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].metadata, meta);
    assert_eq!(
        got[0].json::<Placed>().unwrap(),
        Placed {
            order: "o1".into(),
            total_cents: 1250
        }
    );
    assert!(got[0].recorded_at_ms > 1_600_000_000_000);
    assert!(matches!(
        got[0].json::<Vec<u8>>(),
        Err(Error::InvalidInput { .. })
    ));
}

/// Runs the model-based check (see [`crate::model`]) with a fresh
/// namespace per generated case.
pub async fn model_based(store: Store) {
    crate::model::run(store, 24).await;
}

/// Group commit keeps outcomes separate: in one burst, appends that fail
/// their checks do not take down the others.
pub async fn group_commit_isolates_outcomes(store: Store) {
    let es = open(store).await;
    es.append_to_stream("g-1", ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            let expected = if i % 4 == 0 {
                ExpectedVersion::Exact(99)
            } else {
                ExpectedVersion::Any
            };
            es.append_to_stream(&format!("g-{}", i % 3), expected, vec![ev("B")])
                .await
        }));
    }
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::WrongExpectedVersion { .. }) => bad += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, bad), (30, 10));
    assert_eq!(es.head().await.unwrap(), 31);
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for s in es.list_streams("g-", None, 10).await.unwrap() {
        versions.insert(s.stream_id, s.version);
    }
    assert_eq!(versions.values().sum::<u64>(), 31);
}

/// `import` restores events exactly (ids, positions, stream versions,
/// metadata, recorded times), all or nothing, and only as a continuation
/// of the target's log.
pub async fn import_restores_exactly(store: Store) {
    let src = open(crate::unique_namespace(store.clone())).await;
    let dst = open(crate::unique_namespace(store)).await;
    for i in 0..12 {
        let e = ev(&format!("E{i}"))
            .with_tags([format!("k:{}", i % 3)])
            .with_metadata(eskv_core::Metadata::new().correlation_id(format!("c{i}")));
        if i % 2 == 0 {
            src.append_to_stream(&format!("s-{}", i % 4), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        } else {
            src.append(vec![e], None).await.unwrap();
        }
    }
    let all = src.read_all(ReadOptions::new()).await.unwrap().events;
    // Not a continuation: rejected, nothing written.
    let err = dst.import(&all[1..]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert_eq!(dst.head().await.unwrap(), 0);
    assert_eq!(dst.import(&all[..5]).await.unwrap(), 5);
    assert_eq!(dst.import(&all[5..]).await.unwrap(), 12);
    assert_eq!(dst.read_all(ReadOptions::new()).await.unwrap().events, all);
    assert_eq!(
        dst.stream_info("s-0").await.unwrap(),
        src.stream_info("s-0").await.unwrap()
    );
    assert_eq!(
        dst.read(
            &Query::of(Vec::<String>::new(), ["k:1"]),
            ReadOptions::new()
        )
        .await
        .unwrap(),
        src.read(
            &Query::of(Vec::<String>::new(), ["k:1"]),
            ReadOptions::new()
        )
        .await
        .unwrap()
    );
    // Appends continue normally afterwards.
    let r = dst
        .append_to_stream("s-0", ExpectedVersion::Exact(3), vec![ev("After")])
        .await
        .unwrap();
    assert_eq!((r.first_position, r.stream_version), (13, Some(4)));
    // Importing the same events again is refused (ids exist).
    let mut again = all[..1].to_vec();
    again[0].position = 14;
    assert!(matches!(
        dst.import(&again).await,
        Err(Error::IdempotencyViolation { .. })
    ));
}

fn positions(events: &[eskv_core::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// Issue 13, item 6: the position a read returns is safe to pass back as
/// the `after` of a condition, also when the read was cut short by `limit`
/// or `until`: a matching event the decision did not see always fails the
/// append.
pub async fn read_position_is_safe_to_pass_back(store: Store) {
    let es = open(store).await;
    let seat = || ev("Seat").tag("course:c1");
    let q = Query::of(["Seat"], ["course:c1"]);
    es.append(vec![seat()], None).await.unwrap(); // 1
    es.append(vec![ev("Other")], None).await.unwrap(); // 2
    es.append(vec![seat()], None).await.unwrap(); // 3
    es.append(vec![ev("Other")], None).await.unwrap(); // 4

    // Forwards, cut short by a limit or by `until`: the decision saw the
    // event at 1 only, so the one at 3 must fail the condition.
    for (what, opts, through) in [
        ("limit", ReadOptions::new().limit(1), 1),
        ("until", ReadOptions::new().until(2), 2),
        ("from + limit", ReadOptions::new().from(1).limit(1), 1),
    ] {
        let seen = es.read(&q, opts).await.unwrap();
        assert_eq!(positions(&seen.events), [1], "{what}");
        assert_eq!(seen.consistent_through, through, "{what}");
        let err = es
            .append(
                vec![seat()],
                Some(AppendCondition::new(
                    q.clone(),
                    Some(seen.consistent_through),
                )),
            )
            .await
            .expect_err("a decision that saw 1 of 2 matching events committed");
        assert!(
            matches!(err, Error::ConditionFailed { position: 3, .. }),
            "{what}: {err:?}"
        );
    }
    // The same through the log and category reads (no query: the log
    // itself is the boundary).
    let seen = es.read_all(ReadOptions::new().limit(2)).await.unwrap();
    assert_eq!(positions(&seen.events), [1, 2]);
    assert_eq!(seen.consistent_through, 2);
    // A paged read continues after it and misses nothing.
    let next = es
        .read_all(ReadOptions::after(seen.consistent_through).limit(2))
        .await
        .unwrap();
    assert_eq!(positions(&next.events), [3, 4]);
    let err = es
        .append(
            vec![ev("Late")],
            Some(AppendCondition::new(
                Query::all(),
                Some(seen.consistent_through),
            )),
        )
        .await
        .expect_err("read_all: a decision that saw 2 of 4 events committed");
    assert!(
        matches!(err, Error::ConditionFailed { position: 3, .. }),
        "{err:?}"
    );
    assert_eq!(es.head().await.unwrap(), 4, "a rejected append wrote");

    // A complete read: passing its position back succeeds, and a second
    // decision on the same read then fails.
    let seen = es.read(&q, ReadOptions::new()).await.unwrap();
    assert_eq!(positions(&seen.events), [1, 3]);
    assert_eq!(
        seen.consistent_through, 4,
        "a complete read is consistent through the head"
    );
    let cond = AppendCondition::new(q.clone(), Some(seen.consistent_through));
    es.append(vec![seat()], Some(cond.clone())).await.unwrap(); // 5
    assert!(matches!(
        es.append(vec![seat()], Some(cond)).await,
        Err(Error::ConditionFailed { position: 5, .. })
    ));

    // Backwards: the upper end of the range read. The latest matching
    // event was seen, so a decision on it commits unless a newer one
    // appears; older events are not the condition's business.
    let seen = es
        .read(&q, ReadOptions::new().backwards().limit(1))
        .await
        .unwrap();
    assert_eq!(positions(&seen.events), [5]);
    assert_eq!(seen.consistent_through, 5);
    // Backwards from 2: events 3 and 5 lie above what was read.
    let below = es
        .read(&q, ReadOptions::new().backwards().from(2))
        .await
        .unwrap();
    assert_eq!(positions(&below.events), [1]);
    assert_eq!(below.consistent_through, 2);
    assert!(matches!(
        es.append(
            vec![seat()],
            Some(AppendCondition::new(
                q.clone(),
                Some(below.consistent_through)
            ))
        )
        .await,
        Err(Error::ConditionFailed { position: 3, .. })
    ));
    es.append(
        vec![seat()],
        Some(AppendCondition::new(
            q.clone(),
            Some(seen.consistent_through),
        )),
    )
    .await
    .unwrap();
    // limit(0) reads nothing: consistent only through the position
    // before `from`.
    let none = es
        .read(&q, ReadOptions::new().from(3).limit(0))
        .await
        .unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.consistent_through, 2);
}

/// Issue 13, item 7: a replay must repeat the events' content, not only
/// their ids, types and stream. Re-using an id with other data, tags or
/// metadata is an `IdempotencyViolation` naming the id, and writes nothing.
pub async fn replay_with_other_content_is_rejected(store: Store) {
    let es = open(store).await;
    let original = ev("A")
        .with_tags(["k:1"])
        .with_metadata(eskv_core::Metadata::new().correlation_id("c1"));
    let first = es
        .append_to_stream("rc-1", ExpectedVersion::NoStream, vec![original.clone()])
        .await
        .unwrap();
    let id = original.id;
    let mut other_data = original.clone();
    other_data.data = b"something else".to_vec();
    let other_tags = original.clone().with_tags(["k:2"]);
    let no_tags = original.clone().with_tags(Vec::<String>::new());
    let other_meta = original
        .clone()
        .with_metadata(eskv_core::Metadata::new().correlation_id("c2"));
    for (what, e) in [
        ("data", other_data),
        ("tags", other_tags),
        ("no tags", no_tags),
        ("metadata", other_meta),
    ] {
        let r = es
            .append_to_stream("rc-1", ExpectedVersion::Any, vec![e])
            .await;
        match r {
            Err(Error::IdempotencyViolation { message }) => {
                assert!(message.contains(&id.to_string()), "{what}: {message}");
            }
            other => panic!("{what}: a replay with other content gave {other:?}"),
        }
    }
    // Also inside one group commit: the same id twice with other data.
    let mut twin = original.clone();
    twin.data = b"twin".to_vec();
    let fresh = ev("B");
    let mut fresh_twin = fresh.clone();
    fresh_twin.data = b"twin".to_vec();
    let (a, b) = tokio::join!(
        es.append(vec![fresh.clone()], None),
        es.append(vec![fresh_twin], None)
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "two appends of one id with different data: exactly one may commit ({a:?}, {b:?})"
    );
    assert_eq!(es.head().await.unwrap(), 2, "a rejected replay wrote");
    // The exact replay still returns the original result.
    let again = es
        .append_to_stream("rc-1", ExpectedVersion::NoStream, vec![original])
        .await
        .unwrap();
    assert_eq!(again, first);
    assert!(matches!(
        es.append_to_stream("rc-1", ExpectedVersion::Any, vec![twin])
            .await,
        Err(Error::IdempotencyViolation { .. })
    ));
    assert_eq!(es.head().await.unwrap(), 2);
}

/// Issue 13, item 10: the types of one query item are bounded like the
/// items of a query; too many is a typed error, for reads and conditions,
/// and nothing is written.
pub async fn query_item_types_are_limited(store: Store) {
    let es = open(store).await;
    let max = es.options().limits.max_types_per_query_item;
    let types: Vec<String> = (0..=max).map(|i| format!("T{i}")).collect();
    let big = Query::of(types.clone(), Vec::<String>::new());
    match es.read(&big, ReadOptions::new()).await {
        Err(Error::LimitExceeded { limit, actual, .. }) => {
            assert_eq!((limit, actual), (max as u64, max as u64 + 1))
        }
        other => panic!("a query item with {} types: {other:?}", max + 1),
    }
    assert!(matches!(
        es.read_all_filtered(&LogFilter::query(big.clone()), ReadOptions::new())
            .await,
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        es.append(vec![ev("A")], Some(AppendCondition::none_match(big)))
            .await,
        Err(Error::LimitExceeded { .. })
    ));
    // An item needing more tags than an event can carry never matches.
    let max_tags = es.options().limits.max_tags_per_event;
    let tags: Vec<String> = (0..=max_tags).map(|i| format!("k:{i}")).collect();
    assert!(matches!(
        es.read(&Query::of(["A"], tags), ReadOptions::new()).await,
        Err(Error::LimitExceeded { .. })
    ));
    assert_eq!(es.head().await.unwrap(), 0, "a rejected append wrote");
    // At the limit it works.
    let ok = Query::of(types[..max].to_vec(), Vec::<String>::new());
    es.read(&ok, ReadOptions::new()).await.unwrap();
    es.append(vec![ev("A")], Some(AppendCondition::none_match(ok)))
        .await
        .unwrap();
}

/// Issue 13, item 9: callers that give up (their futures dropped by a
/// timeout or an abort) never let two group-commit batches run at once,
/// and every acknowledged append is stored exactly once.
pub async fn cancelled_appends_never_overlap_batches(store: Store) {
    use crate::serial::BatchRecorder;
    use std::time::Duration;
    let recorder = Arc::new(BatchRecorder::new(store, Duration::from_millis(2)));
    let es = open(recorder.clone()).await;
    let mut tasks = Vec::new();
    for t in 0..12u64 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut sent = Vec::new();
            for i in 0..12u64 {
                let e = ev("C").with_tags([format!("t:{t}")]);
                sent.push(e.id);
                // Most calls give up after a few hundred microseconds:
                // some before a leader takes them, some while they lead.
                let budget = Duration::from_micros(((t * 7 + i * 13) % 9) * 150);
                let fut = es.append(vec![e.clone()], None);
                if i % 4 == 3 {
                    acked.push((e.id, fut.await.expect("append without timeout")));
                } else if let Ok(r) = tokio::time::timeout(budget, fut).await {
                    acked.push((e.id, r.expect("append")));
                }
            }
            (acked, sent)
        }));
    }
    // A few whole tasks are aborted mid-flight too.
    let mut aborted = Vec::new();
    for _ in 0..4 {
        let es = es.clone();
        aborted.push(tokio::spawn(async move {
            loop {
                es.append(vec![ev("X")], None).await.expect("append");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for a in &aborted {
        a.abort();
    }
    let mut acked = Vec::new();
    let mut sent = BTreeSet::new();
    for t in tasks {
        let (a, s) = t.await.unwrap();
        acked.extend(a);
        sent.extend(s);
    }
    for a in aborted {
        let _ = a.await;
    }
    // Let batches already taken finish before reading.
    es.append(vec![ev("Last")], None).await.unwrap();

    let overlaps = recorder.overlaps();
    assert!(
        overlaps.is_empty(),
        "{} of {} batches overlapped another, e.g. {:?}",
        overlaps.len(),
        recorder.batches(),
        overlaps.first()
    );
    let all = es.read_all(ReadOptions::new()).await.unwrap();
    let head = es.head().await.unwrap();
    assert_eq!(
        positions(&all.events),
        (1..=head).collect::<Vec<_>>(),
        "the log has gaps"
    );
    let mut at: HashMap<ulid::Ulid, Vec<u64>> = HashMap::new();
    for e in &all.events {
        at.entry(e.id).or_default().push(e.position);
    }
    assert!(
        at.values().all(|p| p.len() == 1),
        "an event is stored twice"
    );
    for (id, r) in &acked {
        assert_eq!(
            at.get(id).map(Vec::as_slice),
            Some(&[r.first_position][..]),
            "acknowledged append {id} is not where its answer said"
        );
    }
    assert!(
        acked.len() < sent.len(),
        "no append was cancelled; the test did not test anything"
    );
}

/// Issue 13, item 7: the layout is `eskv-events/2`. A store written in an
/// older layout (id entries without content digests) is refused at open
/// with a typed error saying how to move the data, and is not changed; a
/// newer one is refused too; a marker that is not eskv's is corrupt.
pub async fn other_layout_formats_are_refused(store: Store) {
    use eskv_core::{layout, KvStoreExt};
    async fn put_marker(kv: &Store, marker: &[u8]) {
        // Retried: the store may inject retryable commit faults.
        for _ in 0..100 {
            match kv.put_one(layout::format_key(), marker.to_vec()).await {
                Err(e) if e.is_retryable() => continue,
                r => return r.unwrap(),
            }
        }
        panic!("could not write the format marker");
    }
    assert_eq!(eskv_core::layout::FORMAT, b"eskv-events/2");
    for (marker, newer) in [(&b"eskv-events/1"[..], false), (b"eskv-events/3", true)] {
        let kv = crate::unique_namespace(store.clone());
        put_marker(&kv, marker).await;
        match EventStore::open(kv.clone()).await {
            Err(e @ Error::IncompatibleFormat { .. }) => {
                let Error::IncompatibleFormat {
                    found, supported, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(found.as_bytes(), marker);
                assert_eq!(supported, "eskv-events/2");
                let msg = e.to_string();
                if newer {
                    assert!(msg.contains("newer"), "{msg}");
                } else {
                    assert!(
                        msg.contains("export") && msg.contains("import"),
                        "the error must say what to do: {msg}"
                    );
                }
                assert!(!e.is_retryable());
            }
            other => panic!("opening a store of layout {marker:?}: {other:?}"),
        }
        assert_eq!(
            kv.get_latest(&layout::format_key())
                .await
                .unwrap()
                .as_deref(),
            Some(marker),
            "a refused open changed the marker"
        );
        assert_eq!(
            kv.get_latest(&layout::head_key()).await.unwrap(),
            None,
            "a refused open wrote"
        );
    }
    let kv = crate::unique_namespace(store.clone());
    put_marker(&kv, b"not-eskv").await;
    assert!(matches!(
        EventStore::open(kv).await,
        Err(Error::Corrupt { .. })
    ));
    // A fresh store gets the current marker.
    let kv = crate::unique_namespace(store);
    EventStore::open(kv.clone()).await.unwrap();
    assert_eq!(
        kv.get_latest(&layout::format_key())
            .await
            .unwrap()
            .as_deref(),
        Some(layout::FORMAT)
    );
}

/// Backwards reads with a limit on a backend whose reverse scans cost
/// O(range) (etcd sorts the whole range to answer a descending read):
/// the event layer reads "the last N" through forward windows instead,
/// sends no reverse scan with a limit, and returns exactly what a reverse
/// scan returns.
pub async fn backwards_reads_avoid_costly_reverse_scans(store: Store) {
    let store = crate::unique_namespace(store);
    let costly = crate::limited::Limited::new(store.clone()).costly_reverse_scans();
    let plain = EventStore::open(store).await.unwrap();
    let windowed = EventStore::open(Arc::new(costly.clone())).await.unwrap();
    // 300 events over 3 streams of one category; a sparse tag on every
    // 37th, so index windows have to grow.
    for i in 0..300u64 {
        let mut e = ev(if i % 2 == 0 { "Even" } else { "Odd" });
        if i % 37 == 0 {
            e = e.tag("rare:x");
        }
        plain
            .append_to_stream(&format!("acct-{}", i % 3), ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let positions = |evs: &[RecordedEvent]| evs.iter().map(|e| e.position).collect::<Vec<_>>();
    let before = costly.reverse_scans();
    for limit in [1usize, 5, 64, 150, 400] {
        let back = ReadOptions::new().backwards().limit(limit);
        let from = ReadOptions::new().backwards().from(200).limit(limit);
        for opts in [back, from] {
            let a = plain.read_all(opts).await.unwrap();
            let b = windowed.read_all(opts).await.unwrap();
            assert_eq!(
                positions(&b.events),
                positions(&a.events),
                "read_all {opts:?}"
            );
            assert_eq!(
                b.consistent_through, a.consistent_through,
                "read_all {opts:?}"
            );
            for q in [
                Query::of(["Odd"], Vec::<String>::new()),
                Query::of(Vec::<String>::new(), ["rare:x"]),
            ] {
                let a = plain.read(&q, opts).await.unwrap();
                let b = windowed.read(&q, opts).await.unwrap();
                assert_eq!(
                    positions(&b.events),
                    positions(&a.events),
                    "read {q:?} {opts:?}"
                );
            }
            let a = plain.read_category("acct", opts).await.unwrap();
            let b = windowed.read_category("acct", opts).await.unwrap();
            assert_eq!(
                positions(&b.events),
                positions(&a.events),
                "category {opts:?}"
            );
        }
        let s = ReadStreamOptions::new().backwards().limit(limit);
        let a = plain.read_stream("acct-1", s).await.unwrap();
        let b = windowed.read_stream("acct-1", s).await.unwrap();
        assert_eq!(positions(&b), positions(&a), "read_stream {limit}");
        assert!(!a.is_empty());
        let s = s.from_version(40);
        let a = plain.read_stream("acct-1", s).await.unwrap();
        let b = windowed.read_stream("acct-1", s).await.unwrap();
        assert_eq!(positions(&b), positions(&a), "read_stream from 40, {limit}");
    }
    let none = ReadStreamOptions::new().backwards().limit(3);
    assert!(windowed
        .read_stream("acct-9", none)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        costly.reverse_scans() - before,
        0,
        "a backend with costly reverse scans was sent reverse scans with a limit"
    );
}

/// Defines one `#[tokio::test]` per case of this module (ordering, locking, DCB, idempotency, model-based), on
/// stores from `$factory` (see [`all_suites!`](crate::all_suites)). With
/// `wrapped` first, the cases marked `#[direct_only]` are left out.
#[macro_export]
macro_rules! event_tests {
    ($factory:path) => {
        $crate::event_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::events,
            [
                stream_versions_and_reads,
                long_stream_reads,
                expected_version_locking,
                gapless_positions_under_concurrency,
                dcb_condition_exactness,
                dcb_uniqueness,
                dcb_course_subscriptions,
                dcb_unrelated_appends_never_conflict,
                idempotent_appends,
                lost_acknowledgement_is_resolved,
                time_travel_reads,
                strict_event_types,
                bad_input_is_rejected,
                payloads_and_metadata,
                group_commit_isolates_outcomes,
                import_restores_exactly,
                model_based,
                read_position_is_safe_to_pass_back,
                #[direct_only]
                backwards_reads_avoid_costly_reverse_scans,
                replay_with_other_content_is_rejected,
                query_item_types_are_limited,
                cancelled_appends_never_overlap_batches,
                other_layout_formats_are_refused,
            ]
        );
    };
}
