//! The spans every backend's transactions open, so traces look the same
//! whatever the backend.

use super::ScanOptions;
use crate::kv::{KvError, KvResult};

/// The span every backend opens for a scan.
pub fn scan_span(backend: &'static str, opts: ScanOptions) -> tracing::Span {
    tracing::trace_span!(
        "kv.scan",
        backend,
        limit = opts.limit,
        reverse = opts.reverse
    )
}

/// The span every backend opens while a transaction begins.
pub fn begin_span(backend: &'static str) -> tracing::Span {
    tracing::trace_span!("kv.begin", backend)
}

/// Records a commit's outcome on the current span and in a trace event.
/// Every backend routes its commit through this, so the "commit" span and
/// its `outcome` field look the same everywhere.
pub async fn traced_commit<F>(backend: &'static str, writes: usize, fut: F) -> KvResult<()>
where
    F: std::future::Future<Output = KvResult<()>>,
{
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "kv.commit",
        backend,
        writes,
        outcome = tracing::field::Empty
    );
    let res = fut.instrument(span.clone()).await;
    let outcome = match &res {
        Ok(()) => "ok",
        Err(KvError::Conflict { .. }) => "conflict",
        Err(KvError::CommitOutcomeUnknown { .. }) => "unknown",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
    tracing::trace!(parent: &span, outcome, "commit finished");
    res
}
