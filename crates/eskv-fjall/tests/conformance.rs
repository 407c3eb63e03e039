//! The shared conformance suite on real fjall directories.

use eskv_core::KvStore;
use eskv_fjall::{FjallOptions, FjallStore};
use std::sync::Arc;

async fn fresh_store() -> Arc<dyn KvStore> {
    // fjall keeps creating files in the directory (journals, tables), so
    // it must outlive the test: the store deletes it when it closes.
    let dir = tempfile::tempdir().unwrap().keep();
    let store = FjallStore::open_with(dir, FjallOptions::default().temporary(true))
        .await
        .unwrap();
    Arc::new(store)
}

eskv_conformance::all_suites!(fresh_store);
