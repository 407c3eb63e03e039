//! Edges of the lifecycle found in review, through the public API on a
//! memory store and a redb file: import input near `u64::MAX` is refused
//! (an append after it would wrap the head), compaction changes nothing a
//! reader sees of a stream's retention metadata, and a restore keeps the
//! lifecycle of streams whose `$stream-*` events lie below the log cut.

use eskv::export::{EventLine, ExportLine, ExportWriter, Header, Importer, LogPager};
use eskv::{
    Error, EventStore, ExpectedVersion, KvStore, MemoryStore, NewEvent, ReadOptions, RecordedEvent,
    RedbStore, Retention, StreamRef,
};
use std::io::BufRead;
use std::sync::Arc;

fn new_id() -> eskv::Ulid {
    eskv::Ulid::generate()
}

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, br#"{}"#.to_vec())
}

/// A memory store, and a redb file in a temporary directory (kept alive
/// by the returned guard).
async fn stores() -> Vec<(&'static str, EventStore, Option<tempfile::TempDir>)> {
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let redb: Arc<dyn KvStore> = Arc::new(
        RedbStore::open(dir.path().join("events.redb"))
            .await
            .unwrap(),
    );
    vec![
        ("memory", EventStore::open(mem).await.unwrap(), None),
        ("redb", EventStore::open(redb).await.unwrap(), Some(dir)),
    ]
}

fn recorded(position: u64, event_type: &str, data: &[u8]) -> RecordedEvent {
    RecordedEvent {
        position,
        id: new_id(),
        event_type: event_type.to_owned(),
        tags: Vec::new(),
        data: data.to_vec(),
        metadata: Default::default(),
        recorded_at_ms: 1,
        stream: None,
        personal: None,
    }
}

fn in_stream(mut e: RecordedEvent, stream: &str, version: u64) -> RecordedEvent {
    e.stream = Some(StreamRef {
        stream_id: stream.to_owned(),
        version,
    });
    e
}

fn is_invalid<T: std::fmt::Debug>(r: &eskv::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidInput { .. }))
}

/// Positions, stream versions and the numbers in `$stream-*` and
/// `$log-truncated` bodies above the import ceiling are refused with
/// nothing written; the store then appends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_numbers_an_append_would_overflow() {
    let max = u64::MAX;
    let near = max - 5;
    for (name, es, _dir) in stores().await {
        let ceiling = es.options().limits.import_ceiling();
        assert!(ceiling < max && ceiling > max / 2, "{name}: {ceiling}");
        let cases: Vec<(&str, Vec<RecordedEvent>)> = vec![
            ("position MAX", vec![recorded(max, "A", b"{}")]),
            ("position near MAX", vec![recorded(near, "A", b"{}")]),
            (
                "version MAX",
                vec![in_stream(recorded(1, "A", b"{}"), "s", max)],
            ),
            (
                "deleted version MAX",
                vec![recorded(
                    1,
                    "$stream-deleted",
                    format!(r#"{{"stream":"s","version":{max}}}"#).as_bytes(),
                )],
            ),
            (
                "tombstoned version MAX",
                vec![recorded(
                    1,
                    "$stream-tombstoned",
                    format!(r#"{{"stream":"s","version":{max}}}"#).as_bytes(),
                )],
            ),
            (
                "retention revision MAX",
                vec![recorded(
                    1,
                    "$stream-retention-set",
                    format!(r#"{{"stream":"s","revision":{max},"truncate_before":1}}"#).as_bytes(),
                )],
            ),
            (
                "log cut MAX",
                vec![recorded(
                    1,
                    "$log-truncated",
                    format!(r#"{{"before":{max}}}"#).as_bytes(),
                )],
            ),
        ];
        for (case, events) in cases {
            let r = es.import_after_removals(&events).await;
            assert!(is_invalid(&r), "{name}, {case}: {r:?}");
            assert_eq!(
                es.head().await.unwrap(),
                0,
                "{name}, {case}: nothing written"
            );
        }
        // The ceiling itself is still accepted, and appends after it work
        // (or fail with a typed error, never wrap).
        es.import_after_removals(&[in_stream(recorded(ceiling, "A", b"{}"), "s", ceiling)])
            .await
            .unwrap();
        let r = es
            .append_to_stream("s", ExpectedVersion::Exact(ceiling), vec![ev("B")])
            .await
            .unwrap();
        assert_eq!(r.first_position, ceiling + 1, "{name}");
        assert_eq!(r.stream_version, Some(ceiling + 1), "{name}");
        es.delete_stream("s", ExpectedVersion::Any).await.unwrap();
        assert_eq!(es.head().await.unwrap(), ceiling + 2, "{name}");
    }
}

/// At the end of the number range, appends and lifecycle changes fail
/// with a typed error instead of wrapping the head or a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_never_wrap_after_an_import_at_the_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let redb: Arc<dyn KvStore> =
        Arc::new(RedbStore::open(dir.path().join("end.redb")).await.unwrap());
    let mem: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    for (name, kv) in [("memory", mem), ("redb", redb)] {
        let mut limits = eskv::Limits::default();
        limits.max_events_per_append = 1;
        let es = EventStore::open_with(kv, eskv::EventStoreOptions::default().limits(limits))
            .await
            .unwrap();
        let ceiling = es.options().limits.import_ceiling();
        assert_eq!(ceiling, u64::MAX - 2, "{name}");
        es.import_after_removals(&[in_stream(recorded(ceiling, "A", b"{}"), "s", ceiling)])
            .await
            .unwrap();
        // One append fits; the next would need position u64::MAX.
        es.append_to_stream("s", ExpectedVersion::Any, vec![ev("B")])
            .await
            .unwrap();
        let full = |r: &eskv::Result<_>| matches!(r, Err(Error::LimitExceeded { .. }));
        let r = es.append(vec![ev("C")], None).await;
        assert!(full(&r), "{name}: {r:?}");
        let r = es
            .append_to_stream("s", ExpectedVersion::Any, vec![ev("C")])
            .await;
        assert!(full(&r), "{name}: {r:?}");
        let r = es.delete_stream("s", ExpectedVersion::Any).await;
        assert!(full(&r), "{name}: {r:?}");
        let r = es
            .set_retention("s", Retention::new().max_count(1), ExpectedVersion::Any)
            .await;
        assert!(full(&r), "{name}: {r:?}");
        assert_eq!(
            es.head().await.unwrap(),
            u64::MAX - 1,
            "{name}: nothing written"
        );
        let info = es.stream_info("s").await.unwrap();
        assert_eq!(info.version, u64::MAX - 1, "{name}");
        let all = es.read_all(ReadOptions::new()).await.unwrap().events;
        assert_eq!(all.len(), 2, "{name}");
    }
}

/// The export importer refuses a line at `u64::MAX` with a clear error
/// (it computed `position + 1` before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importer_refuses_a_position_at_the_end_of_the_number_range() {
    for (name, es, _dir) in stores().await {
        let mut imp = Importer::new(es.clone()).await.unwrap();
        let line = EventLine::parse(&format!(
            r#"{{"position":{},"id":"{}","type":"A","data":{{}}}}"#,
            u64::MAX,
            new_id()
        ))
        .unwrap();
        let r = imp.push(&line).await;
        assert!(is_invalid(&r), "{name}: {r:?}");
        let line = EventLine::parse(&format!(
            r#"{{"position":1,"id":"{}","type":"A","stream":"s","version":{},"data":{{}}}}"#,
            new_id(),
            u64::MAX
        ))
        .unwrap();
        let r = imp.push(&line).await;
        assert!(is_invalid(&r), "{name}: {r:?}");
        assert!(imp.abandon().await, "{name}");
        assert_eq!(es.head().await.unwrap(), 0, "{name}");
    }
}

/// Compacting a truncated log changes nothing a reader sees of a stream's
/// metadata: no revision, no retention appear, and `NoStream` still
/// sets the first retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_compaction_creates_no_visible_metadata() {
    for (name, es, _dir) in stores().await {
        es.append_to_stream("s", ExpectedVersion::NoStream, vec![ev("A")])
            .await
            .unwrap();
        es.append_to_stream("s", ExpectedVersion::Any, vec![ev("B")])
            .await
            .unwrap();
        es.truncate_log_before(2, None).await.unwrap();
        let before = es.stream_info("s").await.unwrap();
        assert_eq!(before.metadata_revision, None, "{name}");
        let report = es.compact().await.unwrap();
        assert_eq!(report.events_removed, 1, "{name}: {report:?}");
        let after = es.stream_info("s").await.unwrap();
        assert_eq!(after.metadata_revision, None, "{name}: {after:?}");
        assert_eq!(after.retention, Retention::new(), "{name}: {after:?}");
        assert_eq!(
            (after.version, after.first_version, after.exists),
            (before.version, before.first_version, before.exists),
            "{name}"
        );
        es.set_retention(
            "s",
            Retention::new().max_count(5),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
        let set = es.stream_info("s").await.unwrap();
        assert_eq!(set.metadata_revision, Some(1), "{name}");
        assert_eq!(set.retention.max_count, Some(5), "{name}");
        let v = eskv::verify::verify(&es).await.unwrap();
        assert!(v.is_clean(), "{name}: {v}");
    }
}

/// Exports `src` into a file as `eskv export` does, and imports the file
/// into the empty `dst` as `eskv import` does.
async fn export_and_import(src: &EventStore, dst: &EventStore, dir: &std::path::Path) {
    let path = dir.join("backup.jsonl");
    let header = Header::of(src).await.unwrap();
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = ExportWriter::new(file, &header, Some(src.clone())).unwrap();
    let mut pager = LogPager::new(src, header.head).await.unwrap();
    loop {
        let page = pager.next_page().await.unwrap();
        if page.is_empty() {
            break;
        }
        w.events(&page).await.unwrap();
    }
    w.finish().unwrap();
    let mut imp = Importer::new(dst.clone()).await.unwrap();
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    for line in file.lines() {
        match ExportLine::parse(&line.unwrap()).unwrap() {
            ExportLine::Header(h) => imp.header(&h).await.unwrap(),
            ExportLine::Key(k) => imp.push_key(&k).unwrap(),
            ExportLine::Event(e) => imp.push(&e).await.unwrap(),
            ExportLine::Trailer(end) => imp.trailer(&end).unwrap(),
        }
    }
    imp.finish().await.unwrap();
}

/// A tombstone, a soft delete and a retention whose `$stream-*` events lie
/// below the log cut survive an export and import (before and after the
/// source was compacted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_below_the_log_cut_survives_export_and_import() {
    for compact in [false, true] {
        for (name, src, _dir) in stores().await {
            let name = format!("{name}, compacted: {compact}");
            // 1: a v1, 2: tombstone a, 3: b v1, 4: delete b, 5: r v1,
            // 6: retention of r, 7: r v2, 8: a DCB event.
            src.append_to_stream("a", ExpectedVersion::NoStream, vec![ev("A")])
                .await
                .unwrap();
            src.tombstone_stream("a", ExpectedVersion::Any)
                .await
                .unwrap();
            src.append_to_stream("b", ExpectedVersion::NoStream, vec![ev("B")])
                .await
                .unwrap();
            src.delete_stream("b", ExpectedVersion::Any).await.unwrap();
            src.append_to_stream("r", ExpectedVersion::NoStream, vec![ev("R")])
                .await
                .unwrap();
            src.set_retention(
                "r",
                Retention::new().max_count(1),
                ExpectedVersion::NoStream,
            )
            .await
            .unwrap();
            src.append_to_stream("r", ExpectedVersion::Any, vec![ev("R")])
                .await
                .unwrap();
            src.append(vec![ev("X")], None).await.unwrap();
            src.truncate_log_before(7, None).await.unwrap();
            if compact {
                src.compact().await.unwrap();
                let v = eskv::verify::verify(&src).await.unwrap();
                assert!(v.is_clean(), "{name}: {v}");
            }
            let tmp = tempfile::tempdir().unwrap();
            let dst = EventStore::open(Arc::new(MemoryStore::new()))
                .await
                .unwrap();
            export_and_import(&src, &dst, tmp.path()).await;

            for s in ["a", "b", "r"] {
                let (x, y) = (
                    src.stream_info(s).await.unwrap(),
                    dst.stream_info(s).await.unwrap(),
                );
                assert_eq!(
                    (x.version, x.exists, x.deleted, x.tombstoned),
                    (y.version, y.exists, y.deleted, y.tombstoned),
                    "{name}, {s}: {y:?}"
                );
                assert_eq!(x.retention, y.retention, "{name}, {s}");
                assert_eq!(x.metadata_revision, y.metadata_revision, "{name}, {s}");
            }
            let refused = dst
                .append_to_stream("a", ExpectedVersion::NoStream, vec![ev("A")])
                .await;
            assert!(
                matches!(refused, Err(Error::StreamTombstoned { .. })),
                "{name}: {refused:?}"
            );
            let b = dst
                .append_to_stream("b", ExpectedVersion::NoStream, vec![ev("B")])
                .await
                .unwrap();
            assert_eq!(b.stream_version, Some(2), "{name}: the version continues");
            let positions = |es: EventStore| async move {
                es.read_all(ReadOptions::new().until(9))
                    .await
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.position)
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                positions(src.clone()).await,
                positions(dst.clone()).await,
                "{name}"
            );
            let v = eskv::verify::verify(&dst).await.unwrap();
            assert!(v.is_clean(), "{name}: {v}");
        }
    }
}

/// Kept lifecycle events below the cut restore without breaking the
/// streams they name: a stream recreated after a delete, whose first new
/// versions lie below the cut, imports (its versions jump past the
/// released ones), and a stream wholly below the cut whose retention
/// names a `truncate_before` stays writable and readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_lifecycle_events_restore_with_the_streams_they_name() {
    for compact in [false, true] {
        for (name, src, _dir) in stores().await {
            let name = format!("{name}, compacted: {compact}");
            // 1-3: t v1..v3, 4: retention of t (truncate_before 3),
            // 5: s v1, 6: delete s, 7: s v2, 8: s v3, 9: a DCB event.
            src.append_to_stream(
                "t",
                ExpectedVersion::NoStream,
                vec![ev("T"), ev("T"), ev("T")],
            )
            .await
            .unwrap();
            src.set_retention(
                "t",
                Retention::new().truncate_before(3),
                ExpectedVersion::NoStream,
            )
            .await
            .unwrap();
            src.append_to_stream("s", ExpectedVersion::NoStream, vec![ev("S")])
                .await
                .unwrap();
            src.delete_stream("s", ExpectedVersion::Any).await.unwrap();
            for _ in 0..2 {
                src.append_to_stream("s", ExpectedVersion::Any, vec![ev("S")])
                    .await
                    .unwrap();
            }
            src.append(vec![ev("X")], None).await.unwrap();
            src.truncate_log_before(8, None).await.unwrap();
            if compact {
                src.compact().await.unwrap();
            }
            let tmp = tempfile::tempdir().unwrap();
            let dst = EventStore::open(Arc::new(MemoryStore::new()))
                .await
                .unwrap();
            export_and_import(&src, &dst, tmp.path()).await;
            let (x, y) = (
                src.stream_info("s").await.unwrap(),
                dst.stream_info("s").await.unwrap(),
            );
            assert_eq!(
                (x.version, x.first_version, x.exists),
                (y.version, y.first_version, y.exists),
                "{name}: {y:?}"
            );
            let (x, y) = (
                src.stream_info("t").await.unwrap(),
                dst.stream_info("t").await.unwrap(),
            );
            assert_eq!((x.exists, &x.retention), (y.exists, &y.retention), "{name}");
            assert_eq!(x.metadata_revision, y.metadata_revision, "{name}");
            for es in [&src, &dst] {
                let r = es
                    .append_to_stream("t", ExpectedVersion::NoStream, vec![ev("T")])
                    .await
                    .unwrap();
                let read = es
                    .read_stream("t", eskv::ReadStreamOptions::new())
                    .await
                    .unwrap();
                assert_eq!(read.len(), 1, "{name}: {r:?} is readable");
            }
            let v = eskv::verify::verify(&dst).await.unwrap();
            assert!(v.is_clean(), "{name}: {v}");
        }
    }
}

/// The first version a read returns of `stream`, or its version + 1 when
/// a read returns nothing.
async fn first_read_version(es: &EventStore, stream: &str) -> u64 {
    let read = es
        .read_stream(stream, eskv::ReadStreamOptions::new())
        .await
        .unwrap();
    read.first()
        .map_or(read.version + 1, |e| e.stream.as_ref().unwrap().version)
}

/// `stream_info` and `list_streams` say the first version a read returns:
/// past the events `max_age` released (they said 1 until compaction) and,
/// in a listing, past the log's cut (only `stream_info` said so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_listings_agree_with_reads_on_the_first_version() {
    let stores = stores().await;
    for (_, es, _) in &stores {
        es.append_to_stream(
            "cut",
            ExpectedVersion::NoStream,
            vec![ev("X"), ev("X"), ev("X")],
        )
        .await
        .unwrap();
        es.truncate_log_before(2, None).await.unwrap();
        es.append_to_stream("aged", ExpectedVersion::NoStream, vec![ev("A"), ev("B")])
            .await
            .unwrap();
        es.append_to_stream("gone", ExpectedVersion::NoStream, vec![ev("G")])
            .await
            .unwrap();
    }
    // Ages A, B and G past a max_age of 3 s; C, appended after, stays
    // within it for 3 s more.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let max_age = Retention::new().max_age(std::time::Duration::from_secs(3));
    for (name, es, _) in &stores {
        es.append_to_stream("aged", ExpectedVersion::Exact(2), vec![ev("C")])
            .await
            .unwrap();
        for s in ["aged", "gone"] {
            es.set_retention(s, max_age.clone(), ExpectedVersion::NoStream)
                .await
                .unwrap();
        }
        let listed = es.list_streams("", None, 10).await.unwrap();
        for (stream, want) in [("cut", 2), ("aged", 3), ("gone", 2)] {
            let read = first_read_version(es, stream).await;
            assert_eq!(read, want, "{name}: the read of {stream}");
            let info = es.stream_info(stream).await.unwrap();
            assert_eq!(info.first_version, want, "{name}: stream_info {info:?}");
            let entry = listed.iter().find(|i| i.stream_id == stream).unwrap();
            assert_eq!(entry, &info, "{name}: list_streams");
        }
    }
}
