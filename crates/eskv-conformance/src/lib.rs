//! The conformance suite every eskv backend runs.
//!
//! Each case is a `pub async fn case(store)` that panics on a violation.
//! A backend runs them all with one macro call in its tests:
//!
//! ```ignore
//! async fn fresh_store() -> std::sync::Arc<dyn eskv_core::KvStore> { /* … */ }
//! eskv_conformance::kv_suite!(fresh_store);
//! eskv_conformance::event_suite!(fresh_store);
//! ```
//!
//! The factory must return an empty store (or an empty namespace of a shared
//! one, see [`unique_namespace`]) on every call. Differences between backends
//! are read from [`eskv_core::Capabilities`], never skipped silently.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod kv;

use eskv_core::{KvStore, Namespaced};
use std::sync::Arc;

/// Scopes `store` to a fresh random namespace, for backends shared between
/// tests (servers). The prefix is printed so a failed run can be inspected.
pub fn unique_namespace(store: Arc<dyn KvStore>) -> Arc<dyn KvStore> {
    let ns = format!("test-{}", ulid::Ulid::generate());
    Arc::new(Namespaced::new(store, &ns))
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($factory:path, $module:path, [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                use $module as cases;
                let store = $factory().await;
                cases::$case(store).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per KV-level case. `$factory` is an
/// `async fn() -> Arc<dyn KvStore>` returning an empty store.
#[macro_export]
macro_rules! kv_suite {
    ($factory:path) => {
        mod kv_conformance {
            use super::*;
            $crate::__cases!(
                $factory,
                $crate::kv,
                [
                    snapshot_isolation,
                    read_your_own_writes,
                    scans,
                    validation_conflicts,
                    write_write_conflicts,
                    atomic_commit,
                    concurrent_counter,
                    namespaces_isolated,
                    large_value,
                    empty_keys_and_values,
                    read_only_and_drop,
                ]
            );
        }
    };
}
