//! Read-only opens: nothing is written, writes
//! are refused with a typed error, a file held by a writer is reported as
//! locked (typed, not retryable).

use eskv_core::{Error, KvStore, KvStoreExt};
use eskv_redb::RedbStore;

fn bytes(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn read_only_opens_never_write_and_share_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let s = RedbStore::open(&path).await.unwrap();
        let mut t = s.begin().await.unwrap();
        t.put(b"k".to_vec(), b"v".to_vec());
        t.commit().await.unwrap();
    }
    let before = bytes(&path);
    let a = RedbStore::open_read_only(&path).await.unwrap();
    let b = RedbStore::open_read_only(&path).await.unwrap();
    assert!(a.is_read_only());
    assert_eq!(a.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(b.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    let mut t = a.begin().await.unwrap();
    t.put(b"k".to_vec(), b"w".to_vec());
    assert!(matches!(
        t.commit().await,
        Err(eskv_core::KvError::ReadOnly { .. })
    ));
    // A commit that writes nothing is fine.
    a.begin().await.unwrap().commit().await.unwrap();
    // A writer cannot open the file while readers hold it.
    match RedbStore::open(&path).await {
        Err(e @ eskv_core::KvError::StoreLocked { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("kv.redb"), "{e}");
        }
        other => panic!("expected StoreLocked, got {other:?}"),
    }
    drop((a, b));
    assert_eq!(bytes(&path), before, "a read-only open changed the file");
}

#[tokio::test]
async fn a_file_held_by_a_writer_is_locked_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let w = RedbStore::open(&path).await.unwrap();
    for e in [
        RedbStore::open(&path).await.err(),
        RedbStore::open_read_only(&path).await.err(),
    ] {
        match e {
            Some(eskv_core::KvError::StoreLocked { path: p }) => assert_eq!(p, path),
            other => panic!("expected StoreLocked, got {other:?}"),
        }
    }
    drop(w);
    RedbStore::open_read_only(&path).await.unwrap();
}

#[tokio::test]
async fn read_only_refuses_what_is_not_an_eskv_store_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("x");
            w.open_table(def).unwrap().insert("a", "b").unwrap();
        }
        w.commit().unwrap();
    }
    let before = bytes(&other);
    let e = RedbStore::open_read_only(&other).await.unwrap_err();
    assert!(matches!(e, eskv_core::KvError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not an eskv store"), "{e}");
    assert_eq!(bytes(&other), before);
    let missing = dir.path().join("missing.redb");
    assert!(RedbStore::open_read_only(&missing).await.is_err());
    assert!(!missing.exists());
}

/// The event layer opened on a read-only store writes nothing, not even
/// its format marker, and reads what is there.
#[tokio::test]
async fn the_event_store_opens_a_read_only_store_without_writing() {
    use eskv_core::{EventStore, NewEvent, ReadOptions};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // A kv store the event layer never opened (no event format marker) ...
    let bare = dir.path().join("bare.redb");
    drop(RedbStore::open(&bare).await.unwrap());
    // ... and one with events.
    let full = dir.path().join("full.redb");
    {
        let es = EventStore::open(Arc::new(RedbStore::open(&full).await.unwrap()))
            .await
            .unwrap();
        es.append(vec![NewEvent::new("A", b"{}".to_vec())], None)
            .await
            .unwrap();
    }
    for (path, events) in [(&bare, 0), (&full, 1)] {
        let before = bytes(path);
        let kv = RedbStore::open_read_only(path).await.unwrap();
        let es = EventStore::open(Arc::new(kv)).await.unwrap();
        assert_eq!(
            es.read_all(ReadOptions::new()).await.unwrap().events.len(),
            events
        );
        let e = es
            .append(vec![NewEvent::new("B", b"{}".to_vec())], None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ReadOnly { .. }), "{e}");
        drop(es);
        assert_eq!(bytes(path), before, "{}", path.display());
    }
}

/// A file a crash left open needs recovery, which writes: a read-only open
/// recovers a private copy, reads every commit, and leaves the file as it is.
#[tokio::test]
async fn a_crashed_file_is_recovered_in_a_private_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let crashed = dir.path().join("crashed.redb");
    {
        let s = RedbStore::open(&path).await.unwrap();
        let mut t = s.begin().await.unwrap();
        t.put(b"k".to_vec(), b"v".to_vec());
        t.commit().await.unwrap();
        // What a SIGKILL leaves: the file as it is while still open.
        std::fs::copy(&path, &crashed).unwrap();
    }
    assert!(matches!(
        redb::Database::builder().open_read_only(&crashed),
        Err(redb::DatabaseError::RepairAborted)
    ));
    let before = bytes(&crashed);
    let s = RedbStore::open_read_only(&crashed).await.unwrap();
    assert!(s.is_read_only());
    assert_eq!(s.get_latest(b"k").await.unwrap(), Some(b"v".to_vec()));
    let mut t = s.begin().await.unwrap();
    t.put(b"k".to_vec(), b"w".to_vec());
    assert!(matches!(
        t.commit().await,
        Err(eskv_core::KvError::ReadOnly { .. })
    ));
    drop(s);
    assert_eq!(bytes(&crashed), before, "a read-only open changed the file");
}
