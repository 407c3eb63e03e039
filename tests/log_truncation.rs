//! Truncating the log before a position (the library side of `eskv
//! archive --before-position`) on the in-memory and redb backends.

use eskv::{KvStore, MemoryStore, RedbStore};
use eskv_conformance::log_truncation as cases;
use std::sync::Arc;

async fn redb() -> (tempfile::TempDir, Arc<dyn KvStore>) {
    let dir = tempfile::tempdir().unwrap();
    let kv = RedbStore::open(dir.path().join("events.redb"))
        .await
        .unwrap();
    (dir, Arc::new(kv))
}

#[tokio::test]
async fn memory_log_truncation_releases_a_prefix() {
    cases::log_truncation_releases_a_prefix(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_streams_below_the_truncation_read_as_absent() {
    cases::streams_below_the_truncation_read_as_absent(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redb_log_truncation_releases_a_prefix() {
    let (_dir, kv) = redb().await;
    cases::log_truncation_releases_a_prefix(kv).await;
}

#[tokio::test]
async fn redb_streams_below_the_truncation_read_as_absent() {
    let (_dir, kv) = redb().await;
    cases::streams_below_the_truncation_read_as_absent(kv).await;
}
