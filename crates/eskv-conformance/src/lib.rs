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

/// Expands to one `#[tokio::test]` per event-layer case (ordering, locking,
/// DCB, idempotency, model-based). `$factory` as for [`kv_suite!`].
#[macro_export]
macro_rules! event_suite {
    ($factory:path) => {
        mod event_conformance {
            use super::*;
            $crate::__cases!(
                $factory,
                $crate::events,
                [
                    stream_versions_and_reads,
                    expected_version_locking,
                    gapless_positions_under_concurrency,
                    dcb_condition_exactness,
                    dcb_uniqueness,
                    dcb_course_subscriptions,
                    dcb_unrelated_appends_never_conflict,
                    idempotent_appends,
                    lost_acknowledgement_is_resolved,
                    time_travel_reads,
                    strict_event_types,
                    bad_input_is_rejected,
                    payloads_and_metadata,
                    group_commit_isolates_outcomes,
                    import_restores_exactly,
                    model_based,
                    read_position_is_safe_to_pass_back,
                    backwards_reads_avoid_costly_reverse_scans,
                    replay_with_other_content_is_rejected,
                    query_item_types_are_limited,
                    cancelled_appends_never_overlap_batches,
                    other_layout_formats_are_refused,
                ]
            );
            $crate::__cases!(
                $factory,
                $crate::lifecycle,
                [
                    retention_releases_events_everywhere,
                    delete_and_tombstone,
                    max_age_releases_old_events,
                    forgotten_personal_data_reads_as_erased,
                    subscriptions_skip_removed_events,
                    lifecycle_model_based,
                ]
            );
        }
    };
}

/// Expands to one `#[tokio::test]` per subscription, consumer-group,
/// projection and snapshot case. `$factory` as for [`kv_suite!`].
#[macro_export]
macro_rules! subscription_suite {
    ($factory:path) => {
        mod subscription_conformance {
            use super::*;
            $crate::__cases!(
                $factory,
                $crate::subscriptions,
                [
                    catch_up_then_live,
                    wakes_across_handles,
                    filtered_subscriptions,
                    checkpoint_resume_is_at_least_once,
                    dead_letters,
                    consumer_group_takeover,
                    exactly_once_projection,
                    snapshots,
                    checkpoint_keys_never_collide,
                    subscribers_survive_unavailable_reads,
                    subscription_start_past_head_is_rejected,
                    checkpoint_commits_do_not_wake_subscribers,
                    projection_rebuild_large_read_model,
                    projection_rebuild_survives_lost_acks_and_restarts,
                    large_consumer_groups,
                ]
            );
        }
    };
}

/// Expands to the fault-injection cases: `appends_survive_injected_faults`
/// and `fault_wrapper_reaches_the_backends_own_methods` on the backend; the
/// event-layer cases run through [`fault_cases::faulty`] (every commit
/// fault kind at 4%, seeded by `ESKV_FAULT_SEED`): their invariants must
/// hold when commits fail, conflict, time out or lose their answer; and the
/// KV and subscription cases run through [`fault_cases::transparent`] (the
/// same wrapper injecting nothing), which must change nothing. `$factory`
/// as for [`kv_suite!`].
#[macro_export]
macro_rules! fault_suite {
    ($factory:path) => {
        mod fault_conformance {
            use super::*;
            $crate::__cases!(
                $factory,
                $crate::fault_cases,
                [
                    appends_survive_injected_faults,
                    fault_wrapper_reaches_the_backends_own_methods,
                ]
            );
            async fn faulty_store() -> $crate::fault_cases::Store {
                $crate::fault_cases::faulty($factory().await)
            }
            async fn transparent_store() -> $crate::fault_cases::Store {
                $crate::fault_cases::transparent($factory().await)
            }
            mod kv_through_the_wrapper {
                use super::*;
                $crate::__cases!(
                    transparent_store,
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
            mod subscriptions_through_the_wrapper {
                use super::*;
                $crate::__cases!(
                    transparent_store,
                    $crate::subscriptions,
                    [
                        catch_up_then_live,
                        wakes_across_handles,
                        filtered_subscriptions,
                        checkpoint_resume_is_at_least_once,
                        dead_letters,
                        consumer_group_takeover,
                        exactly_once_projection,
                        snapshots,
                    ]
                );
            }
            mod events_under_faults {
                use super::*;
                $crate::__cases!(
                    faulty_store,
                    $crate::events,
                    [
                        stream_versions_and_reads,
                        expected_version_locking,
                        gapless_positions_under_concurrency,
                        dcb_condition_exactness,
                        dcb_uniqueness,
                        dcb_course_subscriptions,
                        dcb_unrelated_appends_never_conflict,
                        idempotent_appends,
                        lost_acknowledgement_is_resolved,
                        time_travel_reads,
                        strict_event_types,
                        bad_input_is_rejected,
                        payloads_and_metadata,
                        group_commit_isolates_outcomes,
                        import_restores_exactly,
                        model_based,
                        read_position_is_safe_to_pass_back,
                        replay_with_other_content_is_rejected,
                        query_item_types_are_limited,
                        cancelled_appends_never_overlap_batches,
                        other_layout_formats_are_refused,
                    ]
                );
            }
        }
    };
}
