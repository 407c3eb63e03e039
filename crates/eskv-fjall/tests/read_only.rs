//! Read-only opens: nothing in the directory is written (fjall's recovery
//! runs on a private copy), writes are refused with a typed error, and a
//! store held by a writer is reported as locked, and the other way round.

use eskv_core::{EventStore, KvStore, KvStoreExt, NewEvent, ReadOptions};
use eskv_fjall::{FjallOptions, FjallStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every file under `dir` with its content.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn no_wait() -> FjallOptions {
    FjallOptions::default().lock_wait(Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_opens_never_write_and_share_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    {
        let s = FjallStore::open(&path).await.unwrap();
        let mut t = s.begin().await.unwrap();
        t.put(b"k".to_vec(), b"v".to_vec());
        t.commit().await.unwrap();
    }
    let before = contents(&path);
    let a = FjallStore::open_read_only(&path).await.unwrap();
    let b = FjallStore::open_read_only(&path).await.unwrap();
    assert!(a.is_read_only());
    assert_eq!(a.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(b.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    let mut t = a.begin().await.unwrap();
    t.put(b"k".to_vec(), b"w".to_vec());
    assert!(matches!(
        t.commit().await,
        Err(eskv_core::KvError::ReadOnly { .. })
    ));
    a.begin().await.unwrap().commit().await.unwrap();
    match FjallStore::open_with(&path, no_wait()).await {
        Err(e @ eskv_core::KvError::StoreLocked { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("kv"), "{e}");
        }
        other => panic!("expected StoreLocked, got {other:?}"),
    }
    drop((a, b));
    assert_eq!(
        contents(&path),
        before,
        "a read-only open changed the store"
    );
    // Readers gone: a writer opens again.
    FjallStore::open(&path).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_by_a_writer_is_locked_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    let w = FjallStore::open(&path).await.unwrap();
    for e in [
        FjallStore::open_with(&path, no_wait()).await.err(),
        FjallStore::open_with(&path, no_wait().read_only(true))
            .await
            .err(),
    ] {
        match e {
            Some(eskv_core::KvError::StoreLocked { path: p }) => assert_eq!(p, path),
            other => panic!("expected StoreLocked, got {other:?}"),
        }
    }
    drop(w);
    FjallStore::open_read_only(&path).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_left_by_a_crash_reads_read_only_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    let crashed = dir.path().join("crashed");
    {
        let es = EventStore::open(Arc::new(FjallStore::open(&path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..20u8 {
            es.append(vec![NewEvent::new("Tick", vec![i])], None)
                .await
                .unwrap();
        }
        // What a SIGKILL leaves: the directory as it is while open.
        copy(&path, &crashed);
    }
    let before = contents(&crashed);
    let es = EventStore::open(Arc::new(
        FjallStore::open_read_only(&crashed).await.unwrap(),
    ))
    .await
    .unwrap();
    let all = es.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(all.events.len(), 20);
    assert!(es
        .append(vec![NewEvent::new("Late", vec![])], None)
        .await
        .is_err());
    drop(es);
    assert_eq!(contents(&crashed), before, "recovery wrote to the store");
}

#[tokio::test]
async fn read_only_open_of_nothing_or_a_foreign_directory_fails_typed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = FjallStore::open_read_only(dir.path().join("missing")).await;
    assert!(
        matches!(&missing, Err(eskv_core::KvError::Backend { .. })),
        "{missing:?}"
    );
    assert!(
        !dir.path().join("missing").exists(),
        "created by a read-only open"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &target);
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), &target).unwrap();
        } else {
            std::fs::write(&target, b"").unwrap();
        }
    }
}
