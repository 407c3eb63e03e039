//! Corruption detection on real redb files: a flipped byte in a stored
//! envelope surfaces as `Error::Corrupt { position }` on every read path and
//! in `verify`, never as wrong data or a panic; files that are not eskv
//! stores are refused with `Error::Corrupt` and a clear message.

use eskv_core::verify::verify;
use eskv_core::{
    layout, Error, EventStore, ExpectedVersion, KvStore, KvStoreExt, NewEvent, Query, ReadOptions,
    ReadStreamOptions,
};
use eskv_redb::{RedbOptions, RedbStore};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens the file, waiting while the previous handle's writer thread is
/// still closing it.
async fn reopen(path: &Path) -> eskv_core::KvResult<RedbStore> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RedbStore::open_with(path, RedbOptions::default()).await {
            Err(
                eskv_core::KvError::Unavailable { .. } | eskv_core::KvError::StoreLocked { .. },
            ) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

fn ev(t: &str, i: usize) -> NewEvent {
    NewEvent::new(t, format!("{{\"i\":{i}}}").into_bytes()).with_tags([format!("n:{i}")])
}

fn is_corrupt_at(r: &eskv_core::Result<impl std::fmt::Debug>, p: u64) -> bool {
    matches!(r, Err(Error::Corrupt { position: Some(q), .. }) if *q == p)
}

/// Flips `mask` into byte `at` of the envelope at `pos`, through a raw KV
/// transaction of a freshly opened store; returns the original value.
async fn flip(path: &Path, pos: u64, at: impl Fn(usize) -> usize, mask: u8) -> Vec<u8> {
    let kv = reopen(path).await.unwrap();
    let key = layout::log_key(pos);
    let original = kv.get_latest(&key).await.unwrap().expect("event stored");
    let mut damaged = original.clone();
    let i = at(damaged.len());
    damaged[i] ^= mask;
    let mut txn = kv.begin().await.unwrap();
    txn.put(key, damaged);
    txn.commit().await.unwrap();
    original
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_surface_as_corrupt_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..10 {
            es.append_to_stream("order-1", ExpectedVersion::Any, vec![ev("Placed", i)])
                .await
                .unwrap();
        }
        assert!(verify(&es).await.unwrap().is_clean());
    } // every handle dropped: the writer thread closes the file

    // One byte in four different parts of four envelopes: the format
    // byte, the checksum, the body, the last byte.
    type Flip = (u64, fn(usize) -> usize, u8);
    let damaged: [Flip; 4] = [
        (2, |_| 0, 0x01),
        (4, |_| 2, 0x80),
        (6, |n| n / 2, 0x04),
        (8, |n| n - 1, 0x40),
    ];
    for (pos, at, mask) in damaged {
        flip(&path, pos, at, mask).await;
    }

    let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
        .await
        .unwrap();
    for (pos, _, _) in damaged {
        // Every read path that touches the event reports it...
        let one = es
            .read_all(ReadOptions::new().from(pos).limit(1))
            .await
            .map(|r| r.events);
        assert!(is_corrupt_at(&one, pos), "read_all at {pos}: {one:?}");
        let by_tag = es
            .read(
                &Query::of([], vec![format!("n:{}", pos - 1)]),
                ReadOptions::new(),
            )
            .await
            .map(|r| r.events);
        assert!(is_corrupt_at(&by_tag, pos), "query at {pos}: {by_tag:?}");
        let in_stream = es
            .read_stream(
                "order-1",
                ReadStreamOptions::new().from_version(pos).limit(1),
            )
            .await;
        assert!(
            is_corrupt_at(&in_stream, pos),
            "stream at {pos}: {in_stream:?}"
        );
        let in_category = es
            .read_category("order", ReadOptions::new().from(pos).limit(1))
            .await
            .map(|r| r.events);
        assert!(
            is_corrupt_at(&in_category, pos),
            "category at {pos}: {in_category:?}"
        );
    }
    // ...while undamaged events still read back exactly.
    for pos in [1u64, 3, 5, 7, 9, 10] {
        let r = es
            .read_all(ReadOptions::new().from(pos).limit(1))
            .await
            .unwrap();
        assert_eq!(r.events.len(), 1);
        let e = &r.events[0];
        assert_eq!(e.position, pos);
        assert_eq!(e.data, format!("{{\"i\":{}}}", pos - 1).into_bytes());
        assert_eq!(e.stream.as_ref().map(|s| s.version), Some(pos));
    }
    // The whole log fails at the first damaged position.
    assert!(is_corrupt_at(
        &es.read_all(ReadOptions::new()).await.map(|r| r.events),
        2
    ));

    let report = verify(&es).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.events, 10);
    assert_eq!(report.violations.len(), 4, "{report}");
    for (pos, _, _) in damaged {
        let key = layout::log_key(pos);
        assert!(
            report
                .at_position(pos)
                .any(|v| v.key.as_deref() == Some(&key[..])),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_misplaced_envelopes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
            .await
            .unwrap();
        es.append((0..4).map(|i| ev("A", i)).collect(), None)
            .await
            .unwrap();
    }
    {
        let kv = reopen(&path).await.unwrap();
        let v1 = kv.get_latest(&layout::log_key(1)).await.unwrap().unwrap();
        let v2 = kv.get_latest(&layout::log_key(2)).await.unwrap().unwrap();
        let mut txn = kv.begin().await.unwrap();
        txn.put(layout::log_key(2), v1.clone()); // a valid envelope, wrong key
        txn.put(layout::log_key(3), v2[..v2.len() / 2].to_vec()); // torn
        txn.put(layout::log_key(4), Vec::new()); // empty
        txn.commit().await.unwrap();
    }
    let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
        .await
        .unwrap();
    for pos in 2..=4 {
        let r = es
            .read_all(ReadOptions::new().from(pos).limit(1))
            .await
            .map(|r| r.events);
        assert!(is_corrupt_at(&r, pos), "{pos}: {r:?}");
    }
    let report = verify(&es).await.unwrap();
    assert_eq!(report.violations.len(), 3, "{report}");
    assert!(report
        .at_position(2)
        .any(|v| v.message.contains("envelope says position 1")));
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Opening must fail with `Corrupt` and name the file; anything else (a
/// panic, a backend error, a store that opens) fails the test.
async fn assert_refused(path: &Path, why: &str) -> String {
    match RedbStore::open(path).await {
        Err(eskv_core::KvError::Corrupt {
            position: None,
            message,
        }) => {
            assert!(!message.is_empty(), "{why}");
            eprintln!("{why}: {message}");
            message
        }
        Err(other) => panic!("{why}: expected Error::Corrupt, got {other:?}"),
        Ok(_) => panic!("{why}: the file opened as an eskv store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for (i, len) in [1usize, 100, 4096, 64 * 1024, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("garbage-{i}.redb"));
        let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let msg = assert_refused(&path, &format!("{len} random bytes")).await;
        assert!(
            msg.contains("garbage-") || msg.contains("redb"),
            "the message should say what is wrong: {msg}"
        );
    }
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database\n".repeat(1000)).unwrap();
    assert_refused(&text, "a text file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_eskv_file_is_refused_or_detected() {
    // A valid store whose file loses its tail or gets bytes scribbled over
    // its middle: open either refuses it or the damage is caught later;
    // nothing panics and no wrong data comes back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..50 {
            es.append(vec![ev("A", i)], None).await.unwrap();
        }
    }
    // Reopening succeeds once the writer thread has closed the file.
    drop(reopen(&path).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let scribbled = dir.path().join("scribbled.redb");
    let mut s = bytes.clone();
    let mut seed = 42u64;
    for b in &mut s[..4096.min(bytes.len())] {
        *b = xorshift(&mut seed) as u8;
    }
    std::fs::write(&scribbled, &s).unwrap();
    let mut paths = vec![truncated, scribbled];
    // Data pages: scribble 512 bytes at several offsets past the header.
    for k in 1..8 {
        let at = bytes.len() * k / 8;
        let mut m = bytes.clone();
        for b in &mut m[at..(at + 512).min(bytes.len())] {
            *b = xorshift(&mut seed) as u8;
        }
        let p = dir.path().join(format!("middle-{k}.redb"));
        std::fs::write(&p, &m).unwrap();
        paths.push(p);
    }
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let outcome = tokio::spawn({
            let p = p.clone();
            async move {
                match RedbStore::open(&p).await {
                    Err(e) => Err(eskv_core::Error::from(e)),
                    Ok(kv) => {
                        let es = EventStore::open(Arc::new(kv)).await?;
                        let r = verify(&es).await?;
                        let all = es.read_all(ReadOptions::new()).await?;
                        Ok((r, all.events.len()))
                    }
                }
            }
        })
        .await
        .expect("no panic on a damaged file");
        match outcome {
            Err(Error::Corrupt { message, .. }) => eprintln!("{name}: refused: {message}"),
            Err(Error::Backend { source, .. }) => {
                let m = source.to_string();
                assert!(!m.contains("panicked"), "{name}: redb panicked: {m}");
                eprintln!("{name}: refused by the backend: {m}")
            }
            Err(other) => panic!("{name}: unexpected error kind {other:?}"),
            Ok((report, n)) if report.is_clean() => {
                // redb recovered a consistent older state, or the damage
                // hit free space.
                eprintln!("{name}: opened; {n} events, verify clean");
            }
            Ok((report, n)) => {
                // redb does not checksum the pages of a cleanly closed
                // file, so damage inside a leaf (here index entries) opens
                // without complaint; then the checker must find it, and
                // say where it is. Which page the fixed offsets hit
                // depends on the value sizes (id entries grew to 28 bytes
                // in eskv-events/2).
                assert!(
                    report
                        .violations
                        .iter()
                        .all(|v| v.key.is_some() || v.position.is_some()),
                    "{name}: damage found but not located: {report}"
                );
                eprintln!(
                    "{name}: opened; {n} events, damage detected: {} violation(s)",
                    report.violations.len()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_eskv_redb_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    // A redb database of another application.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let w = db.begin_write().unwrap();
        {
            let users: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("users");
            let mut t = w.open_table(users).unwrap();
            t.insert("ann", 1).unwrap();
        }
        w.commit().unwrap();
    }
    let msg = assert_refused(&other, "another application's redb file").await;
    assert!(msg.contains("not an eskv store"), "{msg}");
    // Refusing it wrote nothing: the other application's data is intact.
    {
        let db = redb::Database::create(&other).unwrap();
        let r = redb::ReadableDatabase::begin_read(&db).unwrap();
        let names: Vec<String> = r
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert_eq!(names, ["users"]);
    }

    // Same table name, other key and value types.
    let typed = dir.path().join("typed.redb");
    {
        let db = redb::Database::create(&typed).unwrap();
        let w = db.begin_write().unwrap();
        {
            let data: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("eskv_data");
            w.open_table(data).unwrap().insert(1, 2).unwrap();
        }
        w.commit().unwrap();
    }
    let msg = assert_refused(&typed, "an eskv_data table of other types").await;
    assert!(msg.contains("not an eskv store"), "{msg}");

    // An eskv KV file of an unknown future format.
    let future = dir.path().join("future.redb");
    {
        let db = redb::Database::create(&future).unwrap();
        let w = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("eskv_meta");
            w.open_table(meta)
                .unwrap()
                .insert("format", &b"eskv-kv/99"[..])
                .unwrap();
        }
        w.commit().unwrap();
    }
    let msg = assert_refused(&future, "a future eskv KV format").await;
    assert!(msg.contains("eskv-kv/99"), "{msg}");

    // A valid KV file whose event layer is of another format.
    let layout_path = dir.path().join("layout.redb");
    {
        let kv = reopen(&layout_path).await.unwrap();
        kv.put_one(layout::format_key(), b"eskv-events/99".to_vec())
            .await
            .unwrap();
    }
    let kv: Arc<dyn KvStore> = Arc::new(reopen(&layout_path).await.unwrap());
    match EventStore::open(kv).await {
        Err(Error::IncompatibleFormat { found, .. }) => assert_eq!(found, "eskv-events/99"),
        other => panic!("expected IncompatibleFormat, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file_becomes_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    std::fs::write(&path, b"").unwrap();
    let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
        .await
        .unwrap();
    let r = es.append(vec![ev("A", 0)], None).await.unwrap();
    assert_eq!(r.first_position, 1);
    assert!(verify(&es).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_inside_the_file_is_detected() {
    // Damage below the KV API: flip one byte of an event's payload in the
    // file itself (every copy of it). Either redb's own page checksum or
    // the envelope's CRC32C must catch it: reads fail with Corrupt, and
    // never return the damaged payload.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let es = EventStore::open(Arc::new(reopen(&path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..50 {
            es.append(vec![ev("A", i)], None).await.unwrap();
        }
    }
    drop(reopen(&path).await.unwrap()); // closed cleanly once this opens
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"{\"i\":17}";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "payload not found in the file");
    for &i in &hits {
        bytes[i + 6] = b'8'; // {"i":18}: plausible, wrong data
    }
    std::fs::write(&path, &bytes).unwrap();

    let opened = match reopen(&path).await {
        Err(e) => {
            assert!(matches!(e, eskv_core::KvError::Corrupt { .. }), "{e:?}");
            eprintln!("refused at open: {e}");
            return;
        }
        Ok(kv) => kv,
    };
    let es = EventStore::open(Arc::new(opened)).await.unwrap();
    let r = es.read_all(ReadOptions::new().from(18).limit(1)).await;
    eprintln!("read of position 18: {r:?}");
    match r {
        Err(Error::Corrupt { position, .. }) => assert!(matches!(position, None | Some(18))),
        other => panic!("damaged event read back: {other:?}"),
    }
    match verify(&es).await {
        Err(Error::Corrupt { .. }) => {}
        Ok(report) => assert!(!report.is_clean(), "verify missed the damage"),
        Err(other) => panic!("{other:?}"),
    }
}
