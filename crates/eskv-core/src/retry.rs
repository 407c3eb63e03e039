//! Retries of transactions that failed with a retryable error.

use crate::error::Result;
use std::time::Duration;

/// Runs `f` until it succeeds, fails with a non-retryable error, or the
/// budget is spent; backs off with jitter between attempts.
pub(crate) async fn retry<T, F, Fut>(max_retries: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && attempt < max_retries => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "retrying");
                crate::observe::retried();
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap_us = (200u64 << attempt.min(8)).min(100_000);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_micros(h.finish() % cap_us + 50)
}
