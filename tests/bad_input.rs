//! The bad-input matrix: every invalid input the public API can receive,
//! with the typed error each must produce, on a real redb store. After
//! every rejected call the store must be unchanged: the same keys and
//! values (a digest of the whole key space), the same head, `verify` clean.
//!
//! Non-UTF-8 tags cannot be expressed: every tag, type, stream id and name
//! in the typed API is a `String`, so the only byte-level inputs are event
//! payloads (opaque) and the raw `KvStore` API (below the event layer).
//! Bytes that matter to the key codec (`\x00`, `\x01`, `\x02`) are control
//! characters and rejected; `\xff` cannot occur in UTF-8 at all.
//!
//! Store URLs (for example a TiKV URL that does not parse) are parsed by
//! the CLI crate, which depends on this one; their cases live there.

use eskv::verify::verify;
use eskv::{
    AppendCondition, AppendRequest, Error, EventStore, EventStoreOptions, ExpectedVersion,
    KeyRange, KvStore, KvStoreExt, Limits, Metadata, Namespaced, NewEvent, Query, QueryItem,
    ReadOptions, ReadStreamOptions, RecordedEvent, Retention, ScanOptions, SnapshotKey, StartFrom,
    StoreKey, SubscriptionFilter, SubscriptionOptions, Ulid,
};
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// The typed rejection a case must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Invalid,
    Limit,
    WrongVersion,
    ConditionFailed,
    Idempotency,
    UnknownType,
    UnknownSubject,
    Tombstoned,
    WrongStoreKey,
    NotFound,
}

fn kind(e: &Error) -> Option<Want> {
    Some(match e {
        Error::InvalidInput { message } if !message.is_empty() => Want::Invalid,
        Error::LimitExceeded { limit, actual, .. } if actual > limit => Want::Limit,
        Error::WrongExpectedVersion { .. } => Want::WrongVersion,
        Error::ConditionFailed { .. } => Want::ConditionFailed,
        Error::IdempotencyViolation { .. } => Want::Idempotency,
        Error::UnknownEventType { .. } => Want::UnknownType,
        Error::UnknownSubject { subject } if !subject.is_empty() => Want::UnknownSubject,
        Error::StreamTombstoned { stream } if !stream.is_empty() => Want::Tombstoned,
        Error::WrongStoreKey { message } if message.contains("EventStoreOptions::store_key") => {
            Want::WrongStoreKey
        }
        Error::NotFound { .. } => Want::NotFound,
        _ => return None,
    })
}

type BoxFut = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

struct Case {
    name: String,
    want: Want,
    run: Box<dyn Fn(EventStore) -> BoxFut>,
}

fn case<T, F, Fut>(name: impl Into<String>, want: Want, f: F) -> Case
where
    T: 'static,
    F: Fn(EventStore) -> Fut + 'static,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    Case {
        name: name.into(),
        want,
        run: Box::new(move |es| {
            let fut = f(es);
            Box::pin(async move { fut.await.map(|_| ()) })
        }),
    }
}

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, b"{}".to_vec())
}

fn one(e: NewEvent) -> AppendRequest {
    AppendRequest::new(vec![e])
}

fn x(n: usize) -> String {
    "x".repeat(n)
}

/// A digest of every key and value in the store.
async fn digest(kv: &dyn KvStore) -> (u64, usize) {
    let all = kv
        .scan_latest(
            KeyRange {
                start: Bound::Unbounded,
                end: Bound::Unbounded,
            },
            ScanOptions::default(),
        )
        .await
        .unwrap();
    let mut h = DefaultHasher::new();
    all.hash(&mut h);
    (h.finish(), all.len())
}

struct Seeded {
    es: EventStore,
    head: u64,
    /// Events at positions 1..=4.
    events: Vec<RecordedEvent>,
    _dir: tempfile::TempDir,
}

/// A strict-mode redb store: order-1 has versions 1-2 (positions 1-2),
/// position 3 has no stream, order-2 is at position 4.
async fn seeded() -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let kv = eskv::redb::RedbStore::open(dir.path().join("bad.redb"))
        .await
        .unwrap();
    let es = EventStore::open_with(
        Arc::new(kv),
        EventStoreOptions::default().store_key(StoreKey::from_bytes([5; 32])),
    )
    .await
    .unwrap();
    es.register_event_types(["Placed", "Paid", "Seed", "A"])
        .await
        .unwrap();
    es.set_strict_types(true).await.unwrap();
    es.append_to_stream(
        "order-1",
        ExpectedVersion::NoStream,
        vec![ev("Placed").with_tags(["course:c1"]), ev("Paid")],
    )
    .await
    .unwrap();
    es.append(vec![ev("Seed").with_tags(["x"])], None)
        .await
        .unwrap();
    es.append_to_stream("order-2", ExpectedVersion::NoStream, vec![ev("Placed")])
        .await
        .unwrap();
    let events = es.read_all(ReadOptions::new()).await.unwrap().events;
    // A tombstoned stream (positions 5 and 6) for the lifecycle cases.
    es.append_to_stream("closed-1", ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    es.tombstone_stream("closed-1", ExpectedVersion::Exact(1))
        .await
        .unwrap();
    Seeded {
        head: 6,
        es,
        events,
        _dir: dir,
    }
}

fn matrix(s: &Seeded) -> Vec<Case> {
    use Want::*;
    let l = Limits::default();
    let head = s.head;
    let existing = s.events.clone();
    let mut c: Vec<Case> = Vec::new();

    // ---- appends: the request itself -----------------------------------
    c.push(case("no events", Invalid, |es| async move {
        es.submit(AppendRequest::new(vec![])).await
    }));
    let max_events = l.max_events_per_append;
    c.push(case("too many events", Limit, move |es| async move {
        es.submit(AppendRequest::new(
            (0..=max_events).map(|_| ev("A")).collect(),
        ))
        .await
    }));
    let dup = ev("A");
    c.push(case("duplicate id in one append", Invalid, move |es| {
        let d = dup.clone();
        async move { es.submit(AppendRequest::new(vec![d.clone(), d])).await }
    }));

    // ---- event types ---------------------------------------------------
    for (name, t, want) in [
        ("empty type", String::new(), Invalid),
        ("type with a space", "Order Placed".into(), Invalid),
        ("type starting with a digit", "1Placed".into(), Invalid),
        ("type starting with '_'", "_Placed".into(), Invalid),
        ("non-ASCII type", "Plâced".into(), Invalid),
        ("type with a control char", "Placed\u{7}".into(), Invalid),
        ("type with NUL", "Pla\0ced".into(), Invalid),
        (
            "type with a tuple-codec byte",
            "Pla\u{2}ced".into(),
            Invalid,
        ),
        ("oversized type", format!("A{}", x(l.max_type_len)), Limit),
    ] {
        c.push(case(name, want, move |es| {
            let t = t.clone();
            async move { es.submit(one(ev(&t))).await }
        }));
    }

    // ---- tags ----------------------------------------------------------
    for (name, tag, want) in [
        ("empty tag", String::new(), Invalid),
        ("tag with a newline", "a\nb".into(), Invalid),
        ("tag with NUL", "a\0b".into(), Invalid),
        ("tag with \\x01", "a\u{1}b".into(), Invalid),
        (
            "tag with \\x02 (tuple string code)",
            "\u{2}b".into(),
            Invalid,
        ),
        ("tag with DEL", "a\u{7f}".into(), Invalid),
        ("tag with a C1 control", "a\u{85}".into(), Invalid),
        ("oversized tag", x(l.max_tag_len + 1), Limit),
        (
            "oversized multibyte tag",
            "é".repeat(l.max_tag_len / 2 + 1),
            Limit,
        ),
    ] {
        c.push(case(name, want, move |es| {
            let tag = tag.clone();
            async move { es.submit(one(ev("A").with_tags([tag]))).await }
        }));
    }
    let max_tags = l.max_tags_per_event;
    c.push(case("too many tags", Limit, move |es| async move {
        es.submit(one(
            ev("A").with_tags((0..=max_tags).map(|i| format!("t{i}")))
        ))
        .await
    }));

    // ---- sizes ---------------------------------------------------------
    let max_event = l.max_event_bytes;
    c.push(case("oversized payload", Limit, move |es| async move {
        es.submit(one(NewEvent::new("A", vec![0u8; max_event + 1])))
            .await
    }));
    c.push(case("oversized metadata", Limit, move |es| async move {
        let m = Metadata::new().with("blob", x(max_event + 1));
        es.submit(one(ev("A").with_metadata(m))).await
    }));
    let max_append = l.max_append_bytes;
    c.push(case("oversized append", Limit, move |es| async move {
        let n = max_append / max_event + 1;
        es.submit(AppendRequest::new(
            (0..n)
                .map(|_| NewEvent::new("A", vec![0u8; max_event]))
                .collect(),
        ))
        .await
    }));

    // ---- streams and expected versions ---------------------------------
    for (name, stream, want) in [
        ("empty stream id", String::new(), Invalid),
        (
            "stream id with a control char",
            "order\u{1b}-1".into(),
            Invalid,
        ),
        ("stream id with NUL", "order-1\0".into(), Invalid),
        ("stream id with \\x02", "order-\u{2}1".into(), Invalid),
        ("reserved stream id", "$all".into(), Invalid),
        ("oversized stream id", x(l.max_stream_id_len + 1), Limit),
    ] {
        c.push(case(name, want, move |es| {
            let s = stream.clone();
            async move {
                es.append_to_stream(&s, ExpectedVersion::Any, vec![ev("A")])
                    .await
            }
        }));
    }
    for (name, stream, expected, want) in [
        (
            "expected version 0",
            "order-1",
            ExpectedVersion::Exact(0),
            Invalid,
        ),
        (
            "expected version 0 on a new stream",
            "new-1",
            ExpectedVersion::Exact(0),
            Invalid,
        ),
        (
            "expected version behind",
            "order-1",
            ExpectedVersion::Exact(1),
            WrongVersion,
        ),
        (
            "expected version ahead",
            "order-1",
            ExpectedVersion::Exact(3),
            WrongVersion,
        ),
        (
            "expected version u64::MAX",
            "order-1",
            ExpectedVersion::Exact(u64::MAX),
            WrongVersion,
        ),
        (
            "no stream, but it exists",
            "order-1",
            ExpectedVersion::NoStream,
            WrongVersion,
        ),
        (
            "stream exists, but it does not",
            "new-1",
            ExpectedVersion::StreamExists,
            WrongVersion,
        ),
        (
            "exact version of a missing stream",
            "new-1",
            ExpectedVersion::Exact(1),
            WrongVersion,
        ),
    ] {
        c.push(case(name, want, move |es| async move {
            es.append_to_stream(stream, expected, vec![ev("A")]).await
        }));
    }

    // ---- DCB conditions ------------------------------------------------
    let cond =
        |q: Query, after: Option<u64>| one(ev("A")).condition(AppendCondition::new(q, after));
    let max_items = l.max_query_items;
    let conditions: Vec<(&str, AppendRequest, Want)> = vec![
        (
            "condition with no query items",
            cond(Query { items: vec![] }, None),
            Invalid,
        ),
        (
            "condition with too many items",
            cond(
                Query {
                    items: (0..=max_items)
                        .map(|i| QueryItem::new().tags([format!("t{i}")]))
                        .collect(),
                },
                None,
            ),
            Limit,
        ),
        (
            "condition with too many types in one item",
            cond(
                Query::of(
                    (0..=l.max_types_per_query_item).map(|i| format!("T{i}")),
                    Vec::<String>::new(),
                ),
                None,
            ),
            Limit,
        ),
        (
            "condition with an invalid type",
            cond(Query::of(["bad type"], Vec::<String>::new()), None),
            Invalid,
        ),
        (
            "condition with a control-char tag",
            cond(Query::of(Vec::<String>::new(), ["a\0"]), None),
            Invalid,
        ),
        (
            "condition after head + 1",
            cond(Query::all(), Some(head + 1)),
            Invalid,
        ),
        (
            "condition after u64::MAX",
            cond(Query::all(), Some(u64::MAX)),
            Invalid,
        ),
        (
            "condition that matches (a typed rejection)",
            cond(Query::of(["Seed"], ["x"]), Some(2)),
            ConditionFailed,
        ),
    ];
    for (name, req, want) in conditions {
        c.push(case(name, want, move |es| {
            let r = req.clone();
            async move { es.submit(r).await }
        }));
    }

    // ---- idempotency and strict types ----------------------------------
    let (e1, e2) = (existing[0].clone(), existing[1].clone());
    let partial = NewEvent::new("Paid", b"{}".to_vec()).with_id(e2.id);
    c.push(case(
        "partial replay of existing ids",
        Idempotency,
        move |es| {
            let p = partial.clone();
            async move { es.submit(AppendRequest::new(vec![p, ev("Paid")])).await }
        },
    ));
    let reordered = vec![
        NewEvent::new("Paid", b"{}".to_vec()).with_id(e2.id),
        NewEvent::new("Placed", b"{}".to_vec()).with_id(e1.id),
    ];
    c.push(case("replay in another order", Idempotency, move |es| {
        let r = reordered.clone();
        async move {
            es.append_to_stream("order-1", ExpectedVersion::Any, r)
                .await
        }
    }));
    let retyped = NewEvent::new("Paid", b"{}".to_vec()).with_id(e1.id);
    c.push(case(
        "an existing id with another type",
        Idempotency,
        move |es| {
            let r = retyped.clone();
            async move {
                es.append_to_stream("order-1", ExpectedVersion::Any, vec![r])
                    .await
            }
        },
    ));
    let moved = NewEvent::new("Placed", b"{}".to_vec()).with_id(e1.id);
    c.push(case(
        "an existing id to another stream",
        Idempotency,
        move |es| {
            let r = moved.clone();
            async move {
                es.append_to_stream("order-9", ExpectedVersion::Any, vec![r])
                    .await
            }
        },
    ));
    c.push(case(
        "unknown type in strict mode",
        UnknownType,
        |es| async move {
            match es.submit(one(ev("Plaecd"))).await {
                Err(Error::UnknownEventType { nearest, .. })
                    if nearest.as_deref() != Some("Placed") =>
                {
                    Err(Error::invalid(format!(
                        "nearest should be Placed, got {nearest:?}"
                    )))
                }
                other => other,
            }
        },
    ));

    // ---- reads -----------------------------------------------------------
    c.push(case("read with no query items", Invalid, |es| async move {
        es.read(&Query { items: vec![] }, ReadOptions::new()).await
    }));
    c.push(case(
        "read with too many items",
        Limit,
        move |es| async move {
            let q = Query {
                items: (0..=max_items)
                    .map(|i| QueryItem::new().types([format!("T{i}")]))
                    .collect(),
            };
            es.read(&q, ReadOptions::new()).await
        },
    ));
    c.push(case("read with an invalid tag", Invalid, |es| async move {
        es.read(&Query::of(Vec::<String>::new(), [""]), ReadOptions::new())
            .await
    }));
    c.push(case(
        "filtered read with an invalid query",
        Invalid,
        |es| async move {
            es.read_all_filtered(
                &eskv::LogFilter::query(Query::of(["no spaces allowed"], Vec::<String>::new())),
                ReadOptions::new(),
            )
            .await
        },
    ));
    for (name, stream) in [
        ("read_stream of an empty id", ""),
        ("read_stream of a reserved id", "$ce-order"),
        ("read_stream with NUL", "order-1\0"),
    ] {
        c.push(case(name, Invalid, move |es| async move {
            es.read_stream(stream, ReadStreamOptions::new()).await
        }));
        c.push(case(
            format!("stream_info: {name}"),
            Invalid,
            move |es| async move { es.stream_info(stream).await },
        ));
    }
    c.push(case(
        "read_category of an empty name",
        Invalid,
        |es| async move { es.read_category("", ReadOptions::new()).await },
    ));
    c.push(case(
        "read_category with a control char",
        Invalid,
        |es| async move { es.read_category("ord\u{8}er", ReadOptions::new()).await },
    ));

    // ---- registry and import -------------------------------------------
    c.push(case("register an invalid type", Invalid, |es| async move {
        es.register_event_types(["Good", "bad type"]).await
    }));
    // Fresh ids: the same events again at their own positions would be an
    // idempotent replay of the original import, not an error.
    let tail: Vec<_> = existing[1..]
        .iter()
        .cloned()
        .map(|mut e| {
            e.id = Ulid::generate();
            e
        })
        .collect();
    c.push(case(
        "import that is not a continuation",
        Invalid,
        move |es| {
            let t = tail.clone();
            async move { es.import(&t).await }
        },
    ));
    let mut dup_ids = existing[0].clone();
    dup_ids.position = head + 1;
    c.push(case(
        "import of ids already stored",
        Idempotency,
        move |es| {
            let e = dup_ids.clone();
            async move { es.import(&[e]).await }
        },
    ));
    let mut twice = existing[2].clone();
    twice.id = Ulid::generate();
    twice.position = head + 1;
    c.push(case("import with one id twice", Invalid, move |es| {
        let mut b = twice.clone();
        b.position = head + 2;
        let a = twice.clone();
        async move { es.import(&[a, b]).await }
    }));
    let mut bad_type = existing[2].clone();
    bad_type.id = Ulid::generate();
    bad_type.position = head + 1;
    bad_type.event_type = "bad type".into();
    c.push(case("import with an invalid type", Invalid, move |es| {
        let e = bad_type.clone();
        async move { es.import(&[e]).await }
    }));
    let mut far_future = existing[2].clone();
    far_future.id = Ulid::generate();
    far_future.position = head + 1;
    far_future.recorded_at_ms = eskv::recorded_at::MAX_MS + 1;
    c.push(case(
        "import with a recording time after year 9999",
        Invalid,
        move |es| {
            let e = far_future.clone();
            async move { es.import(&[e]).await }
        },
    ));
    let mut bad_version = existing[3].clone();
    bad_version.id = Ulid::generate();
    bad_version.position = head + 1;
    c.push(case(
        "import with a wrong stream version",
        Invalid,
        move |es| {
            let e = bad_version.clone(); // order-2 version 1 again
            async move { es.import(&[e]).await }
        },
    ));

    // ---- subscriptions, checkpoints, snapshots -------------------------
    for (name, sub) in [
        ("subscription with an empty name", ""),
        ("subscription name with a newline", "mail\ner"),
        (
            "oversized subscription name",
            "s".repeat(257).leak() as &str,
        ),
    ] {
        c.push(case(
            format!("checkpoint: {name}"),
            Invalid,
            move |es| async move { es.checkpoint(sub).await },
        ));
        c.push(case(
            format!("save_checkpoint: {name}"),
            Invalid,
            move |es| async move { es.save_checkpoint(sub, 1).await },
        ));
        c.push(case(
            format!("subscribe: {name}"),
            Invalid,
            move |es| async move {
                es.subscribe(SubscriptionOptions::named(sub))
                    .await
                    .map(|_| ())
            },
        ));
    }
    c.push(case(
        "checkpoint past the head",
        Invalid,
        move |es| async move { es.save_checkpoint("mailer", head + 1).await },
    ));
    c.push(case(
        "resume an unnamed subscription",
        Invalid,
        |es| async move {
            es.subscribe(SubscriptionOptions::new().start(StartFrom::Checkpoint))
                .await
                .map(|_| ())
        },
    ));
    c.push(case(
        "subscribe to an invalid stream",
        Invalid,
        |es| async move {
            es.subscribe(SubscriptionOptions::new().filter(SubscriptionFilter::Stream("".into())))
                .await
                .map(|_| ())
        },
    ));
    c.push(case(
        "subscribe with an empty query",
        Invalid,
        |es| async move {
            es.subscribe(
                SubscriptionOptions::new()
                    .filter(SubscriptionFilter::Query(Query { items: vec![] })),
            )
            .await
            .map(|_| ())
        },
    ));
    c.push(case(
        "snapshot past the head",
        Invalid,
        move |es| async move {
            let snap = eskv::Snapshot {
                position: head + 1,
                schema_version: 1,
                data: vec![],
            };
            es.save_snapshot(&SnapshotKey::Named("s".into()), &snap)
                .await
        },
    ));

    // ---- lifecycle: retention, deletion, forgetting, store keys --------
    c.push(case(
        "forget an unknown subject",
        UnknownSubject,
        |es| async move { es.forget("user-never-stored").await },
    ));
    c.push(case(
        "forget an invalid subject",
        Invalid,
        |es| async move { es.forget("user\n1").await },
    ));
    c.push(case("truncate beyond the head", Invalid, |es| async move {
        es.set_retention(
            "order-1",
            Retention::new().truncate_before(4),
            ExpectedVersion::Any,
        )
        .await
    }));
    c.push(case(
        "retention keeping no event",
        Invalid,
        |es| async move {
            es.set_retention(
                "order-1",
                Retention::new().max_count(0),
                ExpectedVersion::Any,
            )
            .await
        },
    ));
    for (name, age) in [
        ("retention max_age of zero", std::time::Duration::ZERO),
        (
            "retention max_age under a millisecond",
            std::time::Duration::from_micros(999),
        ),
        (
            "retention max_age beyond u64::MAX ms",
            std::time::Duration::from_secs(u64::MAX),
        ),
    ] {
        c.push(case(name, Invalid, move |es| async move {
            es.set_retention(
                "order-1",
                Retention::new().max_age(age),
                ExpectedVersion::Any,
            )
            .await
        }));
    }
    c.push(case(
        "stale retention revision",
        WrongVersion,
        |es| async move {
            es.set_retention(
                "order-1",
                Retention::new().max_count(1),
                ExpectedVersion::Exact(3),
            )
            .await
        },
    ));
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
    ] {
        c.push(case(
            format!("write to a tombstoned stream expecting {expected}"),
            Tombstoned,
            move |es| async move {
                es.append_to_stream("closed-1", expected, vec![ev("A")])
                    .await
            },
        ));
    }
    c.push(case(
        "retention on a tombstoned stream",
        Tombstoned,
        |es| async move {
            es.set_retention(
                "closed-1",
                Retention::new().max_count(1),
                ExpectedVersion::Any,
            )
            .await
        },
    ));
    c.push(case(
        "tombstone a tombstoned stream",
        Tombstoned,
        |es| async move { es.tombstone_stream("closed-1", ExpectedVersion::Any).await },
    ));
    c.push(case(
        "delete a stream that never existed",
        NotFound,
        |es| async move { es.delete_stream("never-1", ExpectedVersion::Any).await },
    ));
    c.push(case(
        "delete with a wrong expected version",
        WrongVersion,
        |es| async move { es.delete_stream("order-1", ExpectedVersion::Exact(1)).await },
    ));
    c.push(case("a wrong store key", WrongStoreKey, |es| async move {
        let opts = EventStoreOptions::default().store_key(StoreKey::from_bytes([6; 32]));
        EventStore::open_with(es.kv().clone(), opts).await
    }));
    c.push(case(
        "personal data without a store key",
        WrongStoreKey,
        |es| async move {
            let keyless = EventStore::open(es.kv().clone()).await?;
            keyless
                .append(
                    vec![ev("A").with_personal_data("user-1", b"Ada".to_vec())],
                    None,
                )
                .await
        },
    ));
    c.push(case(
        "personal data of an invalid subject",
        Invalid,
        |es| async move {
            es.append(vec![ev("A").with_personal_data("", b"Ada".to_vec())], None)
                .await
        },
    ));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_input_gets_its_typed_error_and_changes_nothing() {
    let s = seeded().await;
    let es = s.es.clone();
    let before = digest(es.kv().as_ref()).await;
    assert!(verify(&es).await.unwrap().is_clean());
    let cases = matrix(&s);
    let mut names = std::collections::HashSet::new();
    let mut tried = 0;
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
        let res = (c.run)(es.clone()).await;
        match res {
            Err(e) => assert_eq!(
                kind(&e),
                Some(c.want),
                "{}: expected {:?}, got {e:?}",
                c.name,
                c.want
            ),
            Ok(()) => panic!("{}: accepted, expected {:?}", c.name, c.want),
        }
        assert_eq!(
            digest(es.kv().as_ref()).await,
            before,
            "{}: the store changed",
            c.name
        );
        assert_eq!(es.head().await.unwrap(), s.head, "{}", c.name);
        tried += 1;
    }
    let report = verify(&es).await.unwrap();
    assert!(report.is_clean(), "{report}");
    eprintln!("bad input: {tried} invalid inputs rejected with their typed errors, store unchanged after each");
    assert!(tried >= 80, "{tried} cases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_inputs_that_are_not_errors() {
    // Reads past the head are empty, never an error; limits of 0 read
    // nothing; the largest valid inputs are accepted.
    let s = seeded().await;
    let es = &s.es;
    let l = Limits::default();
    let r = es.read_all(ReadOptions::after(s.head + 100)).await.unwrap();
    assert!(r.events.is_empty() && r.consistent_through == s.head);
    let r = es
        .read_all(ReadOptions::new().from(u64::MAX))
        .await
        .unwrap();
    assert!(r.events.is_empty());
    let r = es.read_all(ReadOptions::new().limit(0)).await.unwrap();
    assert!(r.events.is_empty());
    let r = es
        .read_stream("order-1", ReadStreamOptions::new().from_version(u64::MAX))
        .await
        .unwrap();
    assert!(r.is_empty());
    let r = es
        .read_stream("never-written", ReadStreamOptions::new())
        .await;
    assert!(r.unwrap().is_empty());
    assert!(!es.stream_info("never-written").await.unwrap().exists);

    es.register_event_types([format!("T{}", x(l.max_type_len - 1))])
        .await
        .unwrap();
    let biggest = NewEvent::new(format!("T{}", x(l.max_type_len - 1)), vec![7u8; 1000])
        .with_tags((0..l.max_tags_per_event).map(|i| format!("{i}{}", x(l.max_tag_len - 3))));
    let r = es
        .append_to_stream(
            &x(l.max_stream_id_len),
            ExpectedVersion::NoStream,
            vec![biggest],
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, s.head + 1);
    assert!(verify(es).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_ids_round_trip_and_stay_isolated() {
    // Valid but unusual ids: each reads back exactly and sees only its own
    // events; a stream id that is a prefix of another sees nothing of it.
    let s = seeded().await;
    let es = &s.es;
    let crafted = [
        "a",
        "a\u{ff}",
        "a\u{ff}\u{ff}",
        "a-",
        "a-b-c",
        "a/../b",
        "\u{fffd}",
        "\u{202e}reversed",
        "\u{10ffff}",
        "🦀-crab",
        "a b",
        "a\u{2}b".trim_matches('\u{2}'), // stays "a\u{2}b": rejected below
    ];
    let mut accepted = 0;
    for id in crafted {
        let e = ev("A").with_tags([id.to_string()]);
        match es
            .append_to_stream(id, ExpectedVersion::NoStream, vec![e.clone()])
            .await
        {
            Ok(_) => accepted += 1,
            Err(Error::InvalidInput { .. }) => {
                assert!(id.chars().any(char::is_control), "{id:?} rejected");
                continue;
            }
            Err(other) => panic!("{id:?}: {other:?}"),
        }
        let back = es.read_stream(id, ReadStreamOptions::new()).await.unwrap();
        assert_eq!(back.len(), 1, "{id:?} sees other streams' events");
        assert_eq!(back[0].id, e.id);
        assert_eq!(back[0].stream.as_ref().unwrap().stream_id, id);
        assert_eq!(back[0].tags, [id.to_string()]);
        let by_tag = es
            .read(&Query::of(Vec::<String>::new(), [id]), ReadOptions::new())
            .await
            .unwrap();
        assert_eq!(by_tag.events.len(), 1, "tag {id:?} sees other tags");
        let info = es.stream_info(id).await.unwrap();
        assert_eq!(info.version, 1);
    }
    assert_eq!(accepted, crafted.len() - 1);
    let listed: Vec<String> = es
        .list_streams("a", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stream_id)
        .collect();
    assert_eq!(
        listed,
        [
            "a",
            "a b",
            "a-",
            "a-b-c",
            "a/../b",
            "a\u{ff}",
            "a\u{ff}\u{ff}"
        ]
    );
    assert!(verify(es).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_namespaces_cannot_escape() {
    // Namespaces whose names differ only by codec bytes, or are prefixes of
    // each other: none sees another's events, keys, or head.
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::new(
        eskv::redb::RedbStore::open(dir.path().join("ns.redb"))
            .await
            .unwrap(),
    );
    let names = ["", "t", "t\0", "t\0x", "t\u{ff}", "tt", "t\u{1}", "\0", "n"];
    let mut stores = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let ns: Arc<dyn KvStore> = Arc::new(Namespaced::new(kv.clone(), n));
        let es = EventStore::open(ns.clone()).await.unwrap();
        let events: Vec<NewEvent> = (0..=i)
            .map(|_| ev("A").with_tags([format!("ns:{i}")]))
            .collect();
        es.append_to_stream("s-1", ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        // A raw key crafted to look like another namespace's key.
        let mut crafted = vec![0xFF];
        crafted.extend_from_slice(b"x\0");
        crafted.extend_from_slice(&eskv::layout::head_key());
        ns.put_one(crafted, vec![9]).await.unwrap();
        stores.push((n, es, ns));
    }
    for (i, (n, es, ns)) in stores.iter().enumerate() {
        let all = es.read_all(ReadOptions::new()).await.unwrap();
        assert_eq!(
            all.consistent_through,
            i as u64 + 1,
            "namespace {n:?}: head"
        );
        assert_eq!(all.events.len(), i + 1, "namespace {n:?}: events");
        assert!(all.events.iter().all(|e| e.tags == [format!("ns:{i}")]));
        assert_eq!(es.stream_info("s-1").await.unwrap().version, i as u64 + 1);
        let keys = ns
            .scan_latest(
                KeyRange {
                    start: Bound::Unbounded,
                    end: Bound::Unbounded,
                },
                ScanOptions::default(),
            )
            .await
            .unwrap();
        let crafted = keys
            .iter()
            .filter(|(k, _)| k.first() == Some(&0xFF))
            .count();
        assert_eq!(crafted, 1, "namespace {n:?} sees another's crafted key");
        // The crafted key is a stray to the checker, and the only one.
        let r = verify(es).await.unwrap();
        assert_eq!(r.violations.len(), 1, "namespace {n:?}: {r}");
    }
}

async fn open_err(path: &Path) -> Error {
    match eskv::redb::RedbStore::open(path).await {
        Err(e) => e.into(),
        Ok(_) => panic!("{} opened", path.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(
        &garbage,
        (0..8192u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database\n").unwrap();
    let other = dir.path().join("other.redb");
    {
        use eskv::redb::redb;
        let db = redb::Database::create(&other).unwrap();
        let w = db.begin_write().unwrap();
        {
            let t: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("users");
            w.open_table(t).unwrap().insert("ann", "admin").unwrap();
        }
        w.commit().unwrap();
    }
    for (name, path, needle) in [
        ("random bytes", &garbage, "redb"),
        ("a text file", &text, "redb"),
        (
            "another application's redb file",
            &other,
            "not an eskv store",
        ),
    ] {
        match open_err(path).await {
            Error::Corrupt {
                position: None,
                message,
            } => {
                assert!(message.contains(needle), "{name}: {message}")
            }
            e => panic!("{name}: expected Corrupt, got {e:?}"),
        }
    }
    // Paths that cannot hold a store: an error naming the path. (Today
    // these come back as `Corrupt`, which overstates them.)
    let missing = dir.path().join("no/such/dir/x.redb");
    for (name, path) in [
        ("a missing directory", &missing),
        ("a directory", &dir.path().to_path_buf()),
    ] {
        let e = open_err(path).await;
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "{name}: the error should name the path: {e}"
        );
    }
    // An empty file is a new store.
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let es = EventStore::open(Arc::new(eskv::redb::RedbStore::open(&empty).await.unwrap()))
        .await
        .unwrap();
    assert_eq!(es.head().await.unwrap(), 0);
}

/// A data subject id over its limit is reported as a subject id, with
/// its own limit (the tag limit less the `$subject:` prefix), not as a
/// tag the user never passed.
#[tokio::test]
async fn an_overlong_subject_id_names_its_own_limit() {
    let es = EventStore::open(Arc::new(eskv::MemoryStore::new()))
        .await
        .unwrap();
    let id = "u".repeat(300);
    for e in [
        es.forget(&id).await.unwrap_err(),
        es.append(vec![ev("A").with_personal_data(&id, b"Ada".to_vec())], None)
            .await
            .unwrap_err(),
    ] {
        match e {
            Error::LimitExceeded {
                what,
                limit,
                actual,
            } => {
                assert!(what.contains("data subject id"), "{what}");
                assert_eq!((limit, actual), (247, 300));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// An event carrying a time RFC 3339 cannot write (after year 9999; only a
/// hand-built `RecordedEvent` can) is a serde error, not a panic, and the
/// latest writable time round-trips.
#[test]
fn a_recording_time_after_9999_is_a_serde_error_not_a_panic() {
    let mut e = RecordedEvent {
        position: 1,
        id: Ulid::nil(),
        event_type: "A".into(),
        tags: vec![],
        data: b"{}".to_vec(),
        metadata: Metadata::default(),
        recorded_at_ms: eskv::recorded_at::MAX_MS,
        stream: None,
        personal: None,
    };
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains("9999-12-31T23:59:59.999Z"), "{json}");
    let back: RecordedEvent = serde_json::from_str(&json).unwrap();
    assert_eq!(back.recorded_at_ms, eskv::recorded_at::MAX_MS);
    e.recorded_at_ms += 1;
    let err = std::panic::catch_unwind(|| serde_json::to_string(&e))
        .expect("no panic")
        .unwrap_err();
    assert!(err.to_string().contains("after 9999"), "{err}");
    let line = eskv::export::EventLine::from_recorded(&e).to_json();
    let refused = eskv::export::EventLine::parse(&line)
        .and_then(|l| l.to_imported())
        .unwrap_err();
    assert!(refused.contains("recorded_at"), "{refused}");
}
