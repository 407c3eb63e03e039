//! `eskv archive`: the library operation on the in-memory, redb and etcd
//! backends, and the real binary on redb files, with crashes (the process
//! aborted between steps) and bad input.

use eskv::export::{self as transfer, Importer};
use eskv::{
    Error, EventStore, EventStoreOptions, ExpectedVersion, KvStore, MemoryStore, NewEvent,
    ReadOptions, ReadStreamOptions, RecordedEvent, RedbStore, StoreKey,
};
use eskv_cli::archive::{archive, ArchiveStep, Archived, Scope};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_eskv");

fn ev(t: &str, tag: &str) -> NewEvent {
    NewEvent::new(t, format!("{{\"t\":\"{tag}\"}}").into_bytes()).tag(tag)
}

/// `order-1` v1..=4 at 1, 3, 5, 7; DCB `Tick`s at 2, 4, 6, 8.
async fn fill(es: &EventStore) {
    for i in 0..4 {
        es.append_to_stream("order-1", ExpectedVersion::Any, vec![ev("Placed", "o:1")])
            .await
            .unwrap();
        es.append(vec![ev("Tick", &format!("k:{i}"))], None)
            .await
            .unwrap();
    }
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

async fn all(es: &EventStore) -> Vec<RecordedEvent> {
    es.read_all(ReadOptions::new()).await.unwrap().events
}

/// Restores an archive file into a fresh in-memory store, as `eskv
/// import` does, and returns its events.
async fn restore(file: &Path) -> Vec<RecordedEvent> {
    let es = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let mut imp = Importer::new(es.clone()).await.unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    for l in text.lines() {
        match transfer::ExportLine::parse(l).unwrap() {
            transfer::ExportLine::Header(h) => imp.header(&h).await.unwrap(),
            transfer::ExportLine::Key(k) => imp.push_key(&k).unwrap(),
            transfer::ExportLine::Event(e) => imp.push(&e).await.unwrap(),
            transfer::ExportLine::Trailer(end) => imp.trailer(&end).unwrap(),
        }
    }
    imp.finish().await.unwrap();
    let v = eskv::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
    all(&es).await
}

async fn archives_stream_and_position_range(kv: Arc<dyn KvStore>, dir: &Path) {
    let es = EventStore::open(kv).await.unwrap();
    fill(&es).await;
    let before = all(&es).await;

    // A stream's versions below 3.
    let f1 = dir.join("order.jsonl");
    let mut steps = Vec::new();
    let scope = Scope::Stream {
        stream: "order-1".into(),
        before_version: Some(3),
    };
    let done = archive(&es, &scope, &f1, |s| steps.push(s)).await.unwrap();
    assert_eq!(
        steps,
        [
            ArchiveStep::Written,
            ArchiveStep::Verified,
            ArchiveStep::Renamed,
            ArchiveStep::Released
        ]
    );
    assert_eq!((done.events, done.already), (2, false));
    assert!(!dir.join("order.jsonl.partial").exists());
    let stream = es
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(positions(&stream), [5, 7]);
    // Again: nothing to do, nothing written.
    let head = es.head().await.unwrap();
    let again = archive(&es, &scope, &f1, |_| {}).await.unwrap();
    assert!(again.already && again.position.is_none(), "{again:?}");
    assert_eq!(es.head().await.unwrap(), head);

    // Every event before position 5: the DCB ticks at 2 and 4 (1 and 3
    // are archived already).
    let f2 = dir.join("log.jsonl");
    let scope2 = Scope::BeforePosition(5);
    let done = archive(&es, &scope2, &f2, |_| {}).await.unwrap();
    assert_eq!(done.events, 2);
    assert_eq!(done.scope, Archived::Log { before_position: 5 });
    let live: Vec<u64> = positions(&all(&es).await)
        .into_iter()
        .filter(|p| *p <= 8)
        .collect();
    assert_eq!(live, [5, 6, 7, 8]);
    es.compact().await.unwrap();
    let v = eskv::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
    assert_eq!(v.removed, 4, "{v}");

    // Each file restores exactly the events it took.
    let back1 = restore(&f1).await;
    assert_eq!(
        back1,
        before[..3].iter().step_by(2).cloned().collect::<Vec<_>>()
    );
    let back2 = restore(&f2).await;
    assert_eq!(back2, vec![before[1].clone(), before[3].clone()]);
}

/// Restores an archive file with personal data into a fresh in-memory
/// store opened with `key`, taking subject keys from `keys_from`.
async fn restore_keyed(
    file: &Path,
    key: &StoreKey,
    keys_from: Option<&EventStore>,
) -> (EventStore, eskv::Result<()>) {
    let es = EventStore::open_with(
        Arc::new(MemoryStore::new()),
        EventStoreOptions::default().store_key(key.clone()),
    )
    .await
    .unwrap();
    let mut imp = Importer::new(es.clone()).await.unwrap();
    if let Some(k) = keys_from {
        imp = imp.keys_from(k.clone());
    }
    let res = async {
        for l in std::fs::read_to_string(file).unwrap().lines() {
            match transfer::ExportLine::parse(l).unwrap() {
                transfer::ExportLine::Header(h) => imp.header(&h).await?,
                transfer::ExportLine::Key(k) => imp.push_key(&k)?,
                transfer::ExportLine::Event(e) => imp.push(&e).await?,
                transfer::ExportLine::Trailer(end) => imp.trailer(&end)?,
            }
        }
        imp.finish().await.map(|_| ())
    }
    .await;
    if res.is_err() {
        assert!(imp.abandon().await);
    }
    (es, res)
}

/// Archives of personal data hold it sealed and no keys: restoring one
/// takes the keys from its store, so a forget there shreds the archive.
async fn archives_personal_data(kv: Arc<dyn KvStore>, dir: &Path) {
    let key = StoreKey::generate();
    let es = EventStore::open_with(kv, EventStoreOptions::default().store_key(key.clone()))
        .await
        .unwrap();
    for (s, text) in [("user-1", "Ada Lovelace"), ("user-2", "Grace Hopper")] {
        es.append_to_stream(
            s,
            ExpectedVersion::NoStream,
            vec![ev("Registered", "u").with_personal_data(s, text.as_bytes().to_vec())],
        )
        .await
        .unwrap();
    }
    es.append(vec![ev("Tick", "k")], None).await.unwrap();
    let scope = Scope::Stream {
        stream: "user-1".into(),
        before_version: None,
    };
    let f1 = dir.join("user-1.jsonl");
    archive(&es, &scope, &f1, |_| {}).await.unwrap();
    let text = std::fs::read_to_string(&f1).unwrap();
    assert!(
        !text.contains("Ada") && text.contains("\"sealed\""),
        "{text}"
    );
    assert!(!text.contains("eskv_subject_key"), "{text}");
    // Without the store it came from, the keys are missing: refused, and
    // nothing is written.
    let (bare, res) = restore_keyed(&f1, &key, None).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { message } if message.contains("--keys-from")),
        "{err:?}"
    );
    assert_eq!(bare.head().await.unwrap(), 0);
    // With it, readable (under another store key too: re-wrapped).
    for k in [key.clone(), StoreKey::generate()] {
        let (back, res) = restore_keyed(&f1, &k, Some(&es)).await;
        res.unwrap();
        let got = all(&back).await;
        assert_eq!(
            got[0].personal.as_ref().unwrap().bytes(),
            Some(&b"Ada Lovelace"[..])
        );
    }
    // Forgotten in the store after archiving: the archive restores erased.
    let f2 = dir.join("log.jsonl");
    archive(&es, &Scope::BeforePosition(3), &f2, |_| {})
        .await
        .unwrap();
    es.forget("user-2").await.unwrap();
    let (back, res) = restore_keyed(&f2, &key, Some(&es)).await;
    res.unwrap();
    let got = all(&back).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].personal.as_ref().unwrap().is_erased());
    let v = eskv::verify::verify(&back).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

#[tokio::test]
async fn memory_archives_personal_data_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    archives_personal_data(Arc::new(MemoryStore::new()), dir.path()).await;
}

#[tokio::test]
async fn redb_archives_personal_data_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kv = RedbStore::open(dir.path().join("p.redb")).await.unwrap();
    archives_personal_data(Arc::new(kv), dir.path()).await;
}

#[tokio::test]
async fn memory_archives_a_stream_and_a_position_range() {
    let dir = tempfile::tempdir().unwrap();
    archives_stream_and_position_range(Arc::new(MemoryStore::new()), dir.path()).await;
}

#[tokio::test]
async fn redb_archives_a_stream_and_a_position_range() {
    let dir = tempfile::tempdir().unwrap();
    let kv = RedbStore::open(dir.path().join("e.redb")).await.unwrap();
    archives_stream_and_position_range(Arc::new(kv), dir.path()).await;
}

/// On a real one-node etcd started by this test (the binary from
/// `ETCD_BIN` or the `PATH`; without one the test says it skipped, and
/// fails under `CI`).
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_archives_a_stream_and_a_position_range() {
    use eskv_etcd_launcher::{Cluster, ClusterOptions, LaunchError};
    let cluster = match Cluster::launch(ClusterOptions::new(1)) {
        Ok(c) => c,
        Err(LaunchError::Missing(m)) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (not a pass): etcd archive test: {m}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let options = eskv::etcd::EtcdOptions::new(cluster.endpoints()).key_prefix("archive-test");
    let kv = eskv::etcd::EtcdStore::connect(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    archives_stream_and_position_range(Arc::new(kv), dir.path()).await;
    let options = eskv::etcd::EtcdOptions::new(cluster.endpoints()).key_prefix("archive-personal");
    let kv = eskv::etcd::EtcdStore::connect(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    archives_personal_data(Arc::new(kv), dir.path()).await;
}

#[tokio::test]
async fn bad_archives_are_refused_and_release_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let es = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    fill(&es).await;
    let f = d.join("a.jsonl");
    let cases: Vec<(Scope, &str)> = vec![
        (Scope::BeforePosition(10), "beyond the head"),
        (Scope::BeforePosition(1), "from 2 to"),
        (
            Scope::Stream {
                stream: "nope".into(),
                before_version: None,
            },
            "nothing was ever appended",
        ),
        (
            Scope::Stream {
                stream: "order-1".into(),
                before_version: Some(9),
            },
            "at version 4",
        ),
    ];
    for (scope, want) in cases {
        let e = archive(&es, &scope, &f, |_| {}).await.unwrap_err();
        let typed = e.chain().find_map(|c| c.downcast_ref::<eskv::Error>());
        assert!(
            matches!(
                typed,
                Some(eskv::Error::InvalidInput { .. } | eskv::Error::NotFound { .. })
            ),
            "{e:#}"
        );
        assert!(format!("{e:#}").contains(want), "{e:#}");
        assert!(!f.exists());
    }
    // An existing file that is not this archive.
    std::fs::write(&f, "precious\n").unwrap();
    let e = archive(&es, &Scope::BeforePosition(3), &f, |_| {})
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("exists"), "{e:#}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "precious\n");
    // An archive of another scope is not overwritten either.
    let g = d.join("g.jsonl");
    archive(&es, &Scope::BeforePosition(2), &g, |_| {})
        .await
        .unwrap();
    let e = archive(&es, &Scope::BeforePosition(4), &g, |_| {})
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("archives the log before position 2"),
        "{e:#}"
    );
    // A directory that does not exist.
    let e = archive(
        &es,
        &Scope::BeforePosition(4),
        &d.join("no/such.jsonl"),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("cannot create"), "{e:#}");
    // Only the first archive released anything: position 1.
    assert_eq!(
        positions(&all(&es).await)[..3],
        [2, 3, 4],
        "nothing else was released"
    );
    assert_eq!(es.log_truncated_before().await.unwrap(), 2);
}

// ---------------------------------------------------------------- binary

fn eskv(dir: &Path, args: &[&str], crash_after: Option<&str>) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .args(args)
        .env_remove("ESKV_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match crash_after {
        Some(s) => c.env("ESKV_ARCHIVE_CRASH_AFTER", s),
        None => c.env_remove("ESKV_ARCHIVE_CRASH_AFTER"),
    };
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = eskv(dir, args, None);
    assert_eq!(code, Some(0), "eskv {args:?}: {err}{out}");
    out
}

fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seed(dir: &Path, store: &str) {
    for i in 0..4 {
        ok(
            dir,
            &[
                "--store",
                store,
                "append",
                "--type",
                "Placed",
                "--tag",
                "o:1",
                "--data",
                &format!("{{\"i\":{i}}}"),
                "--stream",
                "order-1",
            ],
        );
        ok(
            dir,
            &[
                "--store",
                store,
                "append",
                "--type",
                "Tick",
                "--tag",
                &format!("k:{i}"),
            ],
        );
    }
}

/// The process is aborted after each step in turn; the same command run
/// again finishes the job, the store then reads without the archived
/// events, `check` is clean, and the file imports into a fresh store with
/// exactly the events the store had.
#[test]
fn a_crashed_archive_is_finished_by_running_it_again() {
    for (i, crash) in ["written", "verified", "renamed", "released"]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = "redb:e.redb";
        seed(d, store);
        let original = lines(&ok(d, &["--store", store, "read"]));
        let (stream_scope, expect): (bool, Vec<u64>) = if i % 2 == 0 {
            (true, vec![1, 3, 5, 7])
        } else {
            (false, vec![1, 2, 3, 4, 5])
        };
        let args: Vec<&str> = if stream_scope {
            vec![
                "--store", store, "archive", "--stream", "order-1", "--out", "a.jsonl",
            ]
        } else {
            vec![
                "--store",
                store,
                "archive",
                "--before-position",
                "6",
                "--out",
                "a.jsonl",
            ]
        };
        let (code, _, _) = eskv(d, &args, Some(crash));
        assert_ne!(code, Some(0), "the process was aborted after {crash}");
        let after_crash = lines(&ok(d, &["--store", store, "read"]));
        if crash == "released" {
            assert!(after_crash.len() < original.len());
        } else {
            assert_eq!(
                after_crash, original,
                "nothing released before the release ({crash})"
            );
        }
        // Run it again: it finishes (or, after the release, says so).
        let done = lines(&ok(d, &args));
        assert_eq!(done[0]["events"], expect.len(), "{crash}: {done:?}");
        assert_eq!(done[0]["already"], crash == "released", "{crash}");
        assert!(!d.join("a.jsonl.partial").exists());
        // And once more: nothing to do.
        let head = lines(&ok(d, &["--store", store, "info"]))[0]["head"].clone();
        let again = lines(&ok(d, &args));
        assert_eq!(again[0]["already"], true);
        assert_eq!(lines(&ok(d, &["--store", store, "info"]))[0]["head"], head);
        // The store lost exactly the archived events.
        let left: Vec<u64> = lines(&ok(d, &["--store", store, "read"]))
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .filter(|p| *p <= 8)
            .collect();
        let want: Vec<u64> = (1..=8).filter(|p| !expect.contains(p)).collect();
        assert_eq!(left, want, "{crash}");
        ok(d, &["--store", store, "compact"]);
        ok(d, &["--store", store, "check"]);
        // The file brings them back.
        ok(
            d,
            &["--store", "redb:back.redb", "import", "--in", "a.jsonl"],
        );
        let back = lines(&ok(d, &["--store", "redb:back.redb", "read"]));
        let want: Vec<Value> = original
            .iter()
            .filter(|e| expect.contains(&e["position"].as_u64().unwrap()))
            .cloned()
            .collect();
        assert_eq!(back, want, "{crash}");
        ok(d, &["--store", "redb:back.redb", "check"]);
    }
}

#[test]
fn archive_bad_input_exits_with_typed_codes_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = "redb:e.redb";
    seed(d, store);
    let original = ok(d, &["--store", store, "read"]);
    std::fs::write(d.join("taken.jsonl"), "mine\n").unwrap();
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    let cases: [(&[&str], i32); 6] = [
        (
            &["archive", "--before-position", "99", "--out", "x.jsonl"],
            2,
        ),
        (&["archive", "--stream", "nope", "--out", "x.jsonl"], 3),
        (
            &[
                "archive",
                "--stream",
                "order-1",
                "--before-version",
                "7",
                "--out",
                "x.jsonl",
            ],
            2,
        ),
        (
            &["archive", "--before-position", "3", "--out", "taken.jsonl"],
            2,
        ),
        (&["archive", "--before-version", "2", "--out", "x.jsonl"], 2),
        (
            &[
                "archive",
                "--before-position",
                "3",
                "--out",
                "no/dir/x.jsonl",
            ],
            1,
        ),
    ];
    for (args, code) in cases {
        let mut full = vec!["--store", store];
        full.extend_from_slice(args);
        let (got, out, err) = eskv(d, &full, None);
        assert_eq!(got, Some(code), "eskv {full:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!d.join("x.jsonl").exists());
    }
    // A read-only directory (skipped when running as root, who may write).
    let (got, _, err) = eskv(
        d,
        &[
            "--store",
            store,
            "archive",
            "--before-position",
            "3",
            "--out",
            "ro/x.jsonl",
        ],
        None,
    );
    if std::fs::write(ro.join("probe"), "").is_err() {
        assert_eq!(got, Some(1), "{err}");
        assert!(err.contains("cannot create"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(d.join("taken.jsonl")).unwrap(),
        "mine\n"
    );
    if got != Some(0) {
        assert_eq!(ok(d, &["--store", store, "read"]), original);
    }
    let help = ok(d, &["archive", "--help"]);
    assert!(
        help.contains("--before-position") && help.contains("crash"),
        "{help}"
    );
}

/// An export carries the lifecycle as its system events; an import
/// replays them into lifecycle records, so a restored store keeps its
/// retention, deletions, tombstones and log truncation (before, a
/// tombstoned stream could be written again after a restore).
#[tokio::test]
async fn lifecycle_records_survive_export_and_import() {
    use eskv::Retention;
    let src = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    fill(&src).await;
    src.set_retention(
        "order-1",
        Retention::new().max_count(3),
        ExpectedVersion::NoStream,
    )
    .await
    .unwrap();
    for s in ["gone", "dead"] {
        src.append_to_stream(s, ExpectedVersion::NoStream, vec![ev("A", "x")])
            .await
            .unwrap();
    }
    src.delete_stream("gone", ExpectedVersion::Any)
        .await
        .unwrap();
    src.tombstone_stream("dead", ExpectedVersion::Any)
        .await
        .unwrap();
    src.truncate_log_before(3, None).await.unwrap();
    let dst = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let header = transfer::Header::of(&src).await.unwrap();
    let mut imp = Importer::new(dst.clone()).await.unwrap();
    transfer::copy(&src, &mut imp, &header, |_| {})
        .await
        .unwrap();
    for s in ["order-1", "gone", "dead"] {
        let (a, b) = (
            src.stream_info(s).await.unwrap(),
            dst.stream_info(s).await.unwrap(),
        );
        assert_eq!(a.retention, b.retention, "{s}");
        assert_eq!(a.tombstoned, b.tombstoned, "{s}");
        assert_eq!(a.exists, b.exists, "{s}");
        assert_eq!(a.metadata_revision, b.metadata_revision, "{s}");
    }
    let refused = dst
        .append_to_stream("dead", ExpectedVersion::Any, vec![ev("A", "x")])
        .await;
    assert!(
        matches!(refused, Err(eskv::Error::StreamTombstoned { .. })),
        "{refused:?}"
    );
    assert_eq!(dst.log_truncated_before().await.unwrap(), 3);
    // Retention keeps working after the restore: max_count 3 of 5.
    dst.append_to_stream("order-1", ExpectedVersion::Any, vec![ev("Placed", "o:1")])
        .await
        .unwrap();
    let s = dst
        .read_stream("order-1", ReadStreamOptions::new())
        .await
        .unwrap();
    assert_eq!(s.len(), 3);
    // One appended, the oldest live version released by max_count.
    assert_eq!(all(&src).await.len(), all(&dst).await.len());
    let v = eskv::verify::verify(&dst).await.unwrap();
    assert!(v.is_clean(), "{v}");
}
