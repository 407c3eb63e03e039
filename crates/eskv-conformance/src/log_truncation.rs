//! Conformance cases for truncating the log before a position
//! (`EventStore::truncate_log_before`, what `eskv archive
//! --before-position` removes): every event below the position is
//! released, DCB events without a stream included, and compaction removes
//! them with recorded holes that `verify` accepts.

use eskv_core::lifecycle::system_types;
use eskv_core::{
    AppendCondition, Error, EventStore, ExpectedVersion, KvStore, LogTruncation, NewEvent, Query,
    ReadOptions, ReadStreamOptions, RecordedEvent,
};
use std::sync::Arc;

type Store = Arc<dyn KvStore>;

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, t.as_bytes().to_vec())
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

async fn all(es: &EventStore) -> Vec<u64> {
    positions(&es.read_all(ReadOptions::new()).await.unwrap().events)
}

/// Appends, in this order: `a` v1 (1), DCB `Tick` tagged `k:1` (2), `b`
/// v1 (3), `a` v2 (4), DCB `Tick` tagged `k:2` (5), `a` v3 (6), `b` v2
/// (7), DCB `Tick` tagged `k:1` (8).
async fn fill(es: &EventStore) -> Vec<NewEvent> {
    let mut dcb = Vec::new();
    let plan: [(Option<&str>, &str); 8] = [
        (Some("a"), "k:a"),
        (None, "k:1"),
        (Some("b"), "k:b"),
        (Some("a"), "k:a"),
        (None, "k:2"),
        (Some("a"), "k:a"),
        (Some("b"), "k:b"),
        (None, "k:1"),
    ];
    for (stream, tag) in plan {
        let e = ev(if stream.is_some() { "Step" } else { "Tick" }).tag(tag);
        match stream {
            Some(s) => {
                es.append_to_stream(s, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap();
            }
            None => {
                dcb.push(e.clone());
                es.append(vec![e], None).await.unwrap();
            }
        }
    }
    dcb
}

/// Truncating the log before position 5 releases positions 1..=4 on every
/// read path at once (log, streams, DCB reads and conditions,
/// idempotency), a stream wholly below it reads as absent, compaction
/// removes exactly those rows and `verify` stays clean; the head and
/// every later event are untouched.
pub async fn log_truncation_releases_a_prefix(store: Store) {
    let es = EventStore::open(store).await.expect("open");
    let dcb = fill(&es).await;
    // Bad input first: nothing changes.
    let beyond = es.truncate_log_before(10, None).await;
    assert!(
        matches!(beyond, Err(Error::InvalidInput { .. })),
        "{beyond:?}"
    );
    let nothing = es.truncate_log_before(1, None).await;
    assert!(
        matches!(nothing, Err(Error::InvalidInput { .. })),
        "{nothing:?}"
    );
    assert_eq!(all(&es).await, [1, 2, 3, 4, 5, 6, 7, 8]);

    let done = es.truncate_log_before(5, Some("to archive.jsonl")).await;
    assert_eq!(done.unwrap(), LogTruncation::Truncated { position: 9 });
    assert_eq!(es.head().await.unwrap(), 9);
    let log = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(positions(&log), [5, 6, 7, 8, 9]);
    assert_eq!(log[4].event_type, system_types::LOG_TRUNCATED);
    let body: serde_json::Value = serde_json::from_slice(&log[4].data).unwrap();
    assert_eq!(body["before"], 5);
    assert_eq!(body["note"], "to archive.jsonl");
    // Paged and backwards reads agree.
    let page = es
        .read_all(ReadOptions::new().limit(2))
        .await
        .unwrap()
        .events;
    assert_eq!(positions(&page), [5, 6]);
    let back = es
        .read_all(ReadOptions::new().backwards().limit(10))
        .await
        .unwrap()
        .events;
    assert_eq!(positions(&back), [9, 8, 7, 6, 5]);
    // Streams: `a` keeps v3 (6); `b` keeps v2 (7), also with a limit.
    let a = es.read_stream("a", ReadStreamOptions::new()).await.unwrap();
    assert_eq!(positions(&a), [6]);
    let b = es
        .read_stream("b", ReadStreamOptions::new().limit(1))
        .await
        .unwrap();
    assert_eq!(positions(&b), [7]);
    // DCB reads skip released events; a condition ignores them.
    let q = Query::tags(["k:1"]);
    let r = es.read(&q, ReadOptions::new()).await.unwrap();
    assert_eq!(positions(&r.events), [8]);
    let q2 = Query::tags(["k:2"]);
    assert_eq!(
        positions(&es.read(&q2, ReadOptions::new()).await.unwrap().events),
        [5]
    );
    // The released DCB event's id is free again: a new event, not a replay.
    let again = es.append(vec![dcb[0].clone()], None).await.unwrap();
    assert_eq!(again.first_position, 10);
    let cond = AppendCondition::new(Query::tags(["k:gone"]), None);
    es.append(vec![ev("Fresh").tag("k:gone")], Some(cond.clone()))
        .await
        .unwrap();
    // Released never comes back; a lower cut writes nothing.
    assert_eq!(
        es.truncate_log_before(3, None).await.unwrap(),
        LogTruncation::AlreadyTruncated { before: 5 }
    );
    assert_eq!(es.head().await.unwrap(), 11);

    let report = es.compact().await.unwrap();
    assert_eq!(report.events_removed, 4, "{report:?}");
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
    assert_eq!(v.removed, 4, "{v}");
    assert_eq!(all(&es).await, [5, 6, 7, 8, 9, 10, 11]);
    // Compaction raised the streams' first versions; nothing else moved.
    let a = es.stream_info("a").await.unwrap();
    assert_eq!((a.version, a.first_version), (3, 3), "{a:?}");
    assert_eq!(
        positions(&es.read_stream("a", ReadStreamOptions::new()).await.unwrap()),
        [6]
    );
    // A second compaction finds nothing more.
    assert_eq!(es.compact().await.unwrap().events_removed, 0);
}

/// A stream whose every event lies below the truncation reads as absent:
/// `NoStream` accepts it and its version continues, as after a soft
/// delete.
pub async fn streams_below_the_truncation_read_as_absent(store: Store) {
    let es = EventStore::open(store).await.expect("open");
    es.append_to_stream("old", ExpectedVersion::NoStream, vec![ev("A"), ev("B")])
        .await
        .unwrap();
    es.append_to_stream("new", ExpectedVersion::NoStream, vec![ev("C")])
        .await
        .unwrap();
    es.truncate_log_before(3, None).await.unwrap();
    let info = es.stream_info("old").await.unwrap();
    assert!(!info.exists && info.version == 2, "{info:?}");
    assert_eq!(info.first_version, 3);
    let listed = es.list_streams("", None, 10).await.unwrap();
    assert!(listed.iter().any(|s| s.stream_id == "old" && !s.exists));
    assert!(es.stream_info("new").await.unwrap().exists);
    let r = es
        .append_to_stream("old", ExpectedVersion::NoStream, vec![ev("D")])
        .await
        .unwrap();
    assert_eq!(r.stream_version, Some(3));
    for compact in [false, true] {
        if compact {
            es.compact().await.unwrap();
        }
        let old = es
            .read_stream("old", ReadStreamOptions::new())
            .await
            .unwrap();
        assert_eq!(positions(&old), [5], "compacted: {compact}");
    }
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

/// The edges of a cut, exact before any compaction: a stream the cut
/// covers in part starts at its first version at or above the cut, and
/// deleting a stream the cut covers whole is [`Error::NotFound`] with
/// nothing written, as for any stream that reads as absent.
pub async fn log_cut_edges_are_exact_before_compaction(store: Store) {
    let es = EventStore::open(store).await.expect("open");
    fill(&es).await; // a: v1..v3 at 1, 4, 6; b: v1, v2 at 3, 7
    es.truncate_log_before(5, None).await.unwrap();
    for compact in [false, true] {
        if compact {
            es.compact().await.unwrap();
        }
        let a = es.stream_info("a").await.unwrap();
        assert_eq!((a.first_version, a.version), (3, 3), "compacted: {compact}");
        let b = es.stream_info("b").await.unwrap();
        assert_eq!((b.first_version, b.version), (2, 2), "compacted: {compact}");
    }
    es.append_to_stream("old", ExpectedVersion::NoStream, vec![ev("A")])
        .await
        .unwrap();
    es.append(vec![ev("Tick")], None).await.unwrap();
    let head = es.head().await.unwrap();
    es.truncate_log_before(head, None).await.unwrap();
    let head = es.head().await.unwrap();
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(1)] {
        let err = es.delete_stream("old", expected).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound { .. }),
            "{expected:?}: {err:?}"
        );
    }
    assert_eq!(
        es.head().await.unwrap(),
        head,
        "a refused delete wrote nothing"
    );
    // A tombstone still applies to it (the stream can never come back).
    es.tombstone_stream("old", ExpectedVersion::Any)
        .await
        .unwrap();
    assert!(es.stream_info("old").await.unwrap().tombstoned);
}

/// Defines one `#[tokio::test]` per case of this module (truncating the
/// log before a position), on stores from `$factory` (see
/// [`all_suites!`](crate::all_suites)).
#[macro_export]
macro_rules! log_truncation_tests {
    ($factory:path) => {
        $crate::log_truncation_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::log_truncation,
            [
                log_truncation_releases_a_prefix,
                streams_below_the_truncation_read_as_absent,
                log_cut_edges_are_exact_before_compaction,
            ]
        );
    };
}
