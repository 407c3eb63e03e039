//! The shared conformance suite on the in-memory backend.

use eskv::{KvStore, MemoryStore};
use std::sync::Arc;

async fn fresh_store() -> Arc<dyn KvStore> {
    Arc::new(MemoryStore::new())
}

eskv_conformance::all_suites!(fresh_store);
