//! The shared conformance suite on the in-memory backend.

use eskv::{KvStore, MemoryStore};
use std::sync::Arc;

async fn fresh_store() -> Arc<dyn KvStore> {
    Arc::new(MemoryStore::new())
}

eskv_conformance::kv_suite!(fresh_store);
eskv_conformance::event_suite!(fresh_store);
eskv_conformance::subscription_suite!(fresh_store);
eskv_conformance::fault_suite!(fresh_store);
