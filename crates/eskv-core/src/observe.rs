//! Observability: the names of eskv's `tracing` spans and metrics, and the
//! one place that records metrics.
//!
//! **Spans** (`tracing`, target `eskv_core`):
//!
//! | span | level | fields |
//! |---|---|---|
//! | `eskv.append` | info | `stream`, `events`, `first_position`, `last_position`, `outcome` (`appended`, `replayed`, `conflict`, `rejected`, `failed`), `batch_size` (appends in its group commit) |
//! | `eskv.read` | debug | `kind` (`query`, `log`, `category`, `stream`), `count` |
//! | `eskv.subscription` | debug | `name`, `position` (last event of the page), `lag` (events behind the head), `count` |
//! | `eskv.projection` | info | `name`, `batch` (events applied), `checkpoint` |
//!
//! plus the backends' `kv.begin`, `kv.scan` and `kv.commit` spans.
//!
//! **Metrics** (with the `metrics` feature, through the
//! [`metrics`](https://docs.rs/metrics) facade: install any recorder):
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | [`APPENDS`] | counter | `outcome` | append requests, by outcome: `appended`, `replayed` (an idempotent retry), `conflict`, `rejected` (refused before writing: invalid input, a limit, an idempotency violation, an unknown event type), `failed` (the backend) |
//! | [`EVENTS`] | counter | | events appended |
//! | [`CONFLICTS`] | counter | `kind` (`condition`, `expected_version`) | appends refused by a DCB condition or an expected version |
//! | [`RETRIES`] | counter | | retried transactions (conflicts with other processes, unknown commit outcomes, unavailability) |
//! | [`BATCH_SIZE`] | histogram | | appends per group commit |
//! | [`COMMIT_SECONDS`] | histogram | | time from taking a batch to its answer, retries included |
//! | [`SUBSCRIPTION_LAG`] | gauge | `subscription` | log positions between the last event of a subscription's latest page and the store's head when that page was read |
//! | [`PARKED`] | counter | `subscription` | events parked as dead letters |
//!
//! Without the feature, recording compiles to nothing.
//!
//! ```
//! assert_eq!(eskv_core::observe::APPENDS, "eskv_appends_total");
//! ```

use crate::error::{Error, Result};
use crate::store::AppendResult;
use std::time::Duration;

/// Counter of append requests; label `outcome`.
pub const APPENDS: &str = "eskv_appends_total";
/// Counter of events appended.
pub const EVENTS: &str = "eskv_events_appended_total";
/// Counter of appends refused by a condition or expected version; label `kind`.
pub const CONFLICTS: &str = "eskv_append_conflicts_total";
/// Counter of retried transactions.
pub const RETRIES: &str = "eskv_retries_total";
/// Histogram of appends per group commit.
pub const BATCH_SIZE: &str = "eskv_group_commit_batch_size";
/// Histogram of group-commit latency, in seconds.
pub const COMMIT_SECONDS: &str = "eskv_commit_seconds";
/// Gauge of a subscription's lag behind the head; label `subscription`.
pub const SUBSCRIPTION_LAG: &str = "eskv_subscription_lag";
/// Counter of parked (dead-lettered) events; label `subscription`.
pub const PARKED: &str = "eskv_parked_events_total";

/// The `outcome` of an append, as the span and the metric name it.
pub(crate) fn outcome(r: &Result<AppendResult>, replayed: bool) -> &'static str {
    match r {
        Ok(_) if replayed => "replayed",
        Ok(_) => "appended",
        Err(Error::ConditionFailed { .. } | Error::WrongExpectedVersion { .. }) => "conflict",
        Err(Error::IdempotencyViolation { .. } | Error::UnknownEventType { .. }) => "rejected",
        Err(_) => "failed",
    }
}

/// One append request answered.
pub(crate) fn append_done(r: &Result<AppendResult>, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(APPENDS, "outcome" => outcome).increment(1);
        match r {
            Ok(a) if outcome == "appended" => {
                metrics::counter!(EVENTS).increment(a.last_position - a.first_position + 1)
            }
            Err(Error::ConditionFailed { .. }) => {
                metrics::counter!(CONFLICTS, "kind" => "condition").increment(1)
            }
            Err(Error::WrongExpectedVersion { .. }) => {
                metrics::counter!(CONFLICTS, "kind" => "expected_version").increment(1)
            }
            _ => {}
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (r, outcome);
}

/// One group commit answered.
pub(crate) fn batch_done(size: usize, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!(BATCH_SIZE).record(size as f64);
        metrics::histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (size, took);
}

/// One transaction retried.
pub(crate) fn retried() {
    #[cfg(feature = "metrics")]
    metrics::counter!(RETRIES).increment(1);
}

/// A subscription's lag after reading a page.
pub(crate) fn subscription_lag(name: Option<&str>, lag: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(SUBSCRIPTION_LAG, "subscription" => name.unwrap_or("").to_owned())
        .set(lag as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, lag);
}

/// An event parked by `consumer`.
pub(crate) fn parked(consumer: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(PARKED, "subscription" => consumer.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = consumer;
}
