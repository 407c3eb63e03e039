//! The lifecycle of events on a real redb file: personal data is never in
//! the file in clear and its key is gone after `forget` and a compaction,
//! and deleted events give their space back to the file system.

use eskv_core::{
    EventStore, EventStoreOptions, ExpectedVersion, KvStore, KvStoreExt, NewEvent, ReadOptions,
    StoreKey,
};
use eskv_redb::RedbStore;
use std::sync::Arc;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn open(path: &std::path::Path) -> EventStore {
    let kv: Arc<dyn KvStore> = Arc::new(RedbStore::open(path).await.unwrap());
    EventStore::open_with(
        kv,
        EventStoreOptions::default().store_key(StoreKey::from_bytes([9; 32])),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_plaintext_and_key_are_gone_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gdpr.redb");
    let secret = b"PLAINTEXT-Ada-Lovelace-ada@example.org";
    let es = open(&path).await;
    for i in 0..20 {
        let e = NewEvent::new("Registered", format!("public-{i}").into_bytes())
            .tag("user:ada")
            .with_personal_data("user-ada", secret.to_vec());
        es.append_to_stream("user-ada", ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    es.append(
        vec![NewEvent::new("Other", b"x".to_vec()).with_personal_data("user-bob", b"bob".to_vec())],
        None,
    )
    .await
    .unwrap();
    let wrapped = es
        .kv()
        .get_latest(&eskv_core::layout::subject_key("user-ada"))
        .await
        .unwrap()
        .unwrap();
    let before = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(
        before[0].personal.as_ref().unwrap().bytes(),
        Some(&secret[..])
    );
    drop(es);
    let file = std::fs::read(&path).unwrap();
    assert!(
        !contains(&file, secret),
        "personal data is stored encrypted only"
    );
    assert!(
        contains(&file, b"public-7"),
        "non-personal data is in clear"
    );
    // The wrapped key's ciphertext (past its generation and nonce).
    let key_bytes = &wrapped[wrapped.len() - 32..];
    assert!(contains(&file, key_bytes), "the wrapped key is in the file");

    let es = open(&path).await;
    es.forget("user-ada").await.unwrap();
    es.compact().await.unwrap();
    let after = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(after.len(), before.len() + 1, "the log stays gapless");
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (a.position, &a.event_type, &a.tags, &a.data),
            (b.position, &b.event_type, &b.tags, &b.data)
        );
        assert_eq!(a.stream, b.stream);
    }
    assert!(after[..20]
        .iter()
        .all(|e| e.personal.as_ref().unwrap().is_erased()));
    assert_eq!(
        after[20].personal.as_ref().unwrap().bytes(),
        Some(&b"bob"[..])
    );
    drop(es);
    let report = eskv_redb::compact_file(&path).await.unwrap();
    assert!(report.bytes_after <= report.bytes_before);
    let file = std::fs::read(&path).unwrap();
    assert!(!contains(&file, secret));
    assert!(
        !contains(&file, key_bytes),
        "the destroyed key is gone from the file"
    );
    let es = open(&path).await;
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_events_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("space.redb");
    let es = open(&path).await;
    let payload = vec![b'p'; 2048];
    for _ in 0..20 {
        let events = (0..50)
            .map(|_| NewEvent::new("Big", payload.clone()).tag("big"))
            .collect();
        es.append_to_stream("bulk-1", ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    es.append_to_stream(
        "keep-1",
        ExpectedVersion::Any,
        vec![NewEvent::new("Small", b"s".to_vec())],
    )
    .await
    .unwrap();
    es.delete_stream("bulk-1", ExpectedVersion::Exact(1000))
        .await
        .unwrap();
    let mut reports = 0;
    let report = es.compact_with_progress(|_| reports += 1).await.unwrap();
    assert_eq!(report.events_removed, 1000);
    assert!(report.bytes_reclaimed > 1000 * 2048, "{report:?}");
    assert!(reports >= 2, "progress is reported");
    drop(es);
    let file = eskv_redb::compact_file(&path).await.unwrap();
    assert!(
        file.bytes_after * 2 < file.bytes_before,
        "the file shrinks: {file:?}"
    );
    let es = open(&path).await;
    let log = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(log.len(), 2, "the kept event and the deletion");
    assert_eq!(log[0].position, 1001);
    let v = eskv_core::verify::verify(&es).await.unwrap();
    assert!(v.is_clean(), "{v}");
    // Held by a handle: the file compaction waits for it to close.
    let held = eskv_redb::compact_file(&path).await;
    assert!(
        matches!(held, Err(eskv_core::Error::StoreLocked { .. })),
        "{held:?}"
    );
}
