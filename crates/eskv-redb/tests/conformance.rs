//! The shared conformance suite on real redb files.

use eskv_core::KvStore;
use eskv_redb::{RedbOptions, RedbStore};
use std::sync::Arc;

async fn fresh_store() -> Arc<dyn KvStore> {
    let dir = tempfile::tempdir().unwrap();
    // The file stays usable after its directory entry is removed (the
    // store holds it open), so the temp dir can go now.
    let store = RedbStore::open_with(dir.path().join("conformance.redb"), RedbOptions::default())
        .await
        .unwrap();
    Arc::new(store)
}

eskv_conformance::all_suites!(fresh_store);
