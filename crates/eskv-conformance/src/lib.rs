//! The conformance suite every eskv backend runs.
//!
//! Each case is a `pub async fn case(store)` that panics on a violation.
//! Each case module declares its own list of cases, once, next to them, as
//! a macro that defines one test per case ([`kv_tests!`],
//! [`event_tests!`], [`lifecycle_tests!`], [`subscription_tests!`],
//! [`fault_tests!`], [`read_call_tests!`], [`log_truncation_tests!`]). [`all_suites!`] composes them, so a backend runs
//! everything with one call in its tests:
//!
//! ```ignore
//! async fn fresh_store() -> std::sync::Arc<dyn eskv_core::KvStore> { /* … */ }
//! eskv_conformance::all_suites!(fresh_store);
//! ```
//!
//! A case marked `#[direct_only]` in its module's list runs on the backend
//! itself but not again through the fault-injection wrappers of
//! [`fault_tests!`]: it counts the backend's own calls, or it is long
//! enough that a second run would cost more CI time than it tells.
//!
//! The factory must return an empty store (or an empty namespace of a shared
//! one, see [`unique_namespace`]) on every call. Differences between backends
//! are read from [`eskv_core::Capabilities`], never skipped silently.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod counting;
pub mod crash;
pub mod events;
pub mod fault_cases;
pub mod faults;
pub mod kv;
pub mod lifecycle;
pub mod lifecycle_model;
pub mod limited;
pub mod log_truncation;
pub mod model;
pub mod read_calls;
pub mod serial;
pub mod subscriptions;

use eskv_core::{KvStore, Namespaced};
use std::sync::Arc;

/// Scopes `store` to a fresh random namespace, for backends shared between
/// tests (servers). The prefix is printed so a failed run can be inspected.
pub fn unique_namespace(store: Arc<dyn KvStore>) -> Arc<dyn KvStore> {
    let ns = format!("test-{}", ulid::Ulid::generate());
    Arc::new(Namespaced::new(store, &ns))
}

/// Defines one `#[tokio::test]` per case of a case list. `direct` defines
/// every case; `wrapped` skips those marked `#[direct_only]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($mode:ident, $factory:path, $module:path, []) => {};
    (direct, $factory:path, $module:path, [#[direct_only] $case:ident $(, $($rest:tt)*)?]) => {
        $crate::__case!($factory, $module, $case);
        $crate::__cases!(direct, $factory, $module, [$($($rest)*)?]);
    };
    (wrapped, $factory:path, $module:path, [#[direct_only] $case:ident $(, $($rest:tt)*)?]) => {
        $crate::__cases!(wrapped, $factory, $module, [$($($rest)*)?]);
    };
    ($mode:ident, $factory:path, $module:path, [$case:ident $(, $($rest:tt)*)?]) => {
        $crate::__case!($factory, $module, $case);
        $crate::__cases!($mode, $factory, $module, [$($($rest)*)?]);
    };
}

/// One case as a test on a fresh store from `$factory`.
#[doc(hidden)]
#[macro_export]
macro_rules! __case {
    ($factory:path, $module:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            use $module as cases;
            let store = $factory().await;
            cases::$case(store).await;
        }
    };
}

/// Every suite on one backend: the KV contract, the event layer with its
/// lifecycle, subscriptions and projections, and the fault-injection
/// cases, which run the other lists again through the fault wrappers.
/// `$factory` is an `async fn() -> Arc<dyn KvStore>` returning an empty
/// store (or an empty namespace of a shared one, see
/// [`unique_namespace`]) on every call.
#[macro_export]
macro_rules! all_suites {
    ($factory:path) => {
        mod kv_conformance {
            use super::*;
            $crate::kv_tests!(direct, $factory);
        }
        mod event_conformance {
            use super::*;
            $crate::event_tests!(direct, $factory);
            $crate::lifecycle_tests!(direct, $factory);
            $crate::read_call_tests!(direct, $factory);
            $crate::log_truncation_tests!(direct, $factory);
        }
        mod subscription_conformance {
            use super::*;
            $crate::subscription_tests!(direct, $factory);
        }
        mod fault_conformance {
            use super::*;
            $crate::fault_tests!($factory);
        }
    };
}
