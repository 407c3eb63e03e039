//! Damage on disk: damaged table blocks, a damaged journal batch, and
//! directories that are not eskv stores. Every eskv operation on a damaged
//! store must answer normally or with `Error::Corrupt` naming the store
//! (never a panic, never another error kind), an acknowledged batch whose
//! journal bytes were changed must be refused (never silently dropped),
//! and no operation may make a readable store unreadable: a process killed
//! while it has the damaged store open (simulated by copying the directory
//! while the store is open) leaves a store that exports as much as before.

use eskv_core::verify::verify;
use eskv_core::{Error, EventStore, ExpectedVersion, KvStore, KvStoreExt, NewEvent, ReadOptions};
use eskv_fjall::{FjallOptions, FjallStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The table files (fjall's `keyspaces/<id>/tables/<n>`) of the store.
fn tables(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
        .collect()
}

/// 3,000 events of 1 KB with a 1 MiB memtable: most of them end up in
/// tables on disk, the rest in the journal.
async fn build(path: &Path) {
    let options = FjallOptions::default().max_memtable_size(1 << 20);
    let es = EventStore::open(Arc::new(
        FjallStore::open_with(path, options).await.unwrap(),
    ))
    .await
    .unwrap();
    for i in 0..300u64 {
        let events = (0..10u64)
            .map(|j| {
                NewEvent::new("Moved", vec![(i * 10 + j) as u8; 1000])
                    .with_tags([format!("t:{}", (i + j) % 13)])
            })
            .collect();
        es.append_to_stream(&format!("s-{}", i % 7), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    // Flushes run in the background: wait until tables hold most data.
    for _ in 0..200 {
        let bytes: u64 = tables(path)
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        if bytes > 1 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What an export of the whole log sees: the number of events, or the error.
async fn export(path: &Path) -> Result<usize, String> {
    let p = path.to_path_buf();
    tokio::spawn(async move {
        let kv = FjallStore::open(&p).await?;
        let es = EventStore::open(Arc::new(kv)).await?;
        es.read_all(ReadOptions::new())
            .await
            .map(|r| r.events.len())
    })
    .await
    .map_err(|e| format!("panicked: {e}"))?
    .map_err(|e| e.to_string())
}

/// Checks that an operation's error is `Corrupt` naming the store.
fn check_error(
    what: &str,
    r: &eskv_core::Result<impl std::fmt::Debug>,
    store: &str,
    bad: &mut Vec<String>,
) {
    match r {
        Ok(_) => {}
        Err(Error::Corrupt { message, .. }) => {
            if !message.contains(store) && message.contains("fjall") {
                bad.push(format!(
                    "{store}: {what}: Corrupt without the store: {message}"
                ));
            }
        }
        Err(e) => bad.push(format!(
            "{store}: {what}: expected Error::Corrupt, got {e:?}"
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_tables_are_corrupt_and_never_make_the_store_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    build(&clean).await;
    let tables = tables(&clean);
    assert!(!tables.is_empty(), "no table was flushed");
    let (mut wrong, mut lost, mut damaged_reads, mut cases) = (Vec::new(), Vec::new(), 0, 0);
    // Four places in each of up to four tables (the first and last pairs:
    // oldest and newest data): data blocks, index, trailer.
    let picked: Vec<&PathBuf> = if tables.len() > 4 {
        [0, 1, tables.len() - 2, tables.len() - 1]
            .iter()
            .map(|&i| &tables[i])
            .collect()
    } else {
        tables.iter().collect()
    };
    for table in picked {
        let len = std::fs::metadata(table).unwrap().len() as usize;
        let rel = table.strip_prefix(&clean).unwrap().to_path_buf();
        for step in 0..4 {
            let at = (len * step / 4 + len / 8).min(len.saturating_sub(32));
            cases += 1;
            let name = format!("case-{cases}");
            let path = dir.path().join(&name);
            copy(&clean, &path);
            let mut bytes = std::fs::read(path.join(&rel)).unwrap();
            for b in &mut bytes[at..(at + 32).min(len)] {
                *b ^= 0x5A;
            }
            std::fs::write(path.join(&rel), &bytes).unwrap();
            let before = export(&path).await;
            if before.is_err() {
                damaged_reads += 1;
            }
            let crashed = dir.path().join(format!("crashed-{cases}"));
            let (p, c, n) = (path.clone(), crashed.clone(), name.clone());
            let run = tokio::spawn(async move {
                let mut bad = Vec::new();
                let kv = match FjallStore::open(&p).await {
                    Ok(kv) => kv,
                    Err(e) => {
                        check_error("open", &Err::<(), eskv_core::Error>(e.into()), &n, &mut bad);
                        return bad;
                    }
                };
                match EventStore::open(Arc::new(kv)).await {
                    Err(e) => check_error("event store open", &Err::<(), _>(e), &n, &mut bad),
                    Ok(es) => {
                        check_error("verify", &verify(&es).await, &n, &mut bad);
                        check_error(
                            "read_all",
                            &es.read_all(ReadOptions::new()).await,
                            &n,
                            &mut bad,
                        );
                        let e = NewEvent::new("Late", b"{}".to_vec());
                        check_error("append", &es.append(vec![e], None).await, &n, &mut bad);
                        copy(&p, &c); // the process dies here
                    }
                }
                bad
            })
            .await;
            match run {
                Ok(bad) => wrong.extend(bad),
                Err(e) => wrong.push(format!("{name}: a panic escaped: {e}")),
            }
            if before.is_ok() && crashed.exists() {
                if let Err(e) = export(&crashed).await {
                    lost.push(format!(
                        "{name}: exported before, unreadable after a crash: {e}"
                    ));
                }
            }
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::remove_dir_all(&crashed);
        }
    }
    eprintln!(
        "{cases} damaged tables: {damaged_reads} exports refused as damaged, {} wrong errors, {} stores lost after a crash",
        wrong.len(),
        lost.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(lost.is_empty(), "{}", lost.join("\n"));
    assert!(damaged_reads > 0, "no damage was ever detected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_value_in_an_acknowledged_journal_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let payload = vec![b'q'; 300];
    {
        let es = EventStore::open(Arc::new(FjallStore::open(&path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..10u8 {
            let mut p = payload.clone();
            p[0] = i;
            es.append(vec![NewEvent::new("Tick", p)], None)
                .await
                .unwrap();
        }
    }
    // Change one byte inside the payload of the fifth event (an
    // acknowledged batch with five after it).
    let jnl = files(&path)
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .unwrap();
    let mut bytes = std::fs::read(&jnl).unwrap();
    let mut marker = payload.clone();
    marker[0] = 4;
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
        .expect("the payload is stored as it is");
    bytes[at + 100] ^= 0x01;
    std::fs::write(&jnl, &bytes).unwrap();
    match FjallStore::open(&path).await {
        Err(eskv_core::KvError::Corrupt { message, .. }) => {
            assert!(
                message.contains("store") && message.contains("journal"),
                "{message}"
            )
        }
        Ok(kv) => {
            // Not silently dropped: the batch and the five after it.
            let es = EventStore::open(Arc::new(kv)).await.unwrap();
            let all = es.read_all(ReadOptions::new()).await;
            panic!(
                "a damaged journal opened: {:?}",
                all.map(|r| r.events.len())
            );
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_that_are_not_eskv_stores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Other files: never turned into a store.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    match FjallStore::open(&other).await {
        Err(eskv_core::KvError::Corrupt { message, .. }) => {
            assert!(message.contains("other"), "{message}")
        }
        r => panic!("expected Corrupt, got {r:?}"),
    }
    assert_eq!(files(&other).len(), 1, "files were added");

    // A fjall database of someone else's.
    let foreign = dir.path().join("foreign");
    {
        let db = eskv_fjall::fjall::Database::builder(&foreign)
            .open()
            .unwrap();
        let ks = db
            .keyspace("items", eskv_fjall::fjall::KeyspaceCreateOptions::default)
            .unwrap();
        ks.insert("a", "b").unwrap();
    }
    match FjallStore::open(&foreign).await {
        Err(eskv_core::KvError::Corrupt { message, .. }) => {
            assert!(message.contains("not an eskv store"), "{message}")
        }
        r => panic!("expected Corrupt, got {r:?}"),
    }

    // A garbage version marker.
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("version"), b"nonsense").unwrap();
    assert!(matches!(
        FjallStore::open(&garbage).await,
        Err(eskv_core::KvError::Corrupt { .. })
    ));

    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        FjallStore::open(&file).await,
        Err(eskv_core::KvError::InvalidInput { .. })
    ));

    // An empty directory becomes a store.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let s = FjallStore::open(&empty).await.unwrap();
    s.put_one(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    assert_eq!(s.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    let _ = s.capabilities();
}
