//! eskv's tracing spans and metrics, printed.
//!
//! ```sh
//! cargo run --example observability --features metrics
//! ```
//!
//! A `tracing-subscriber` fmt layer prints every `eskv.*` span as it
//! closes, with its fields (stream, events, positions, outcome, batch size;
//! read kind and count; subscription position and lag; projection batch
//! and checkpoint). A `metrics-util` debugging recorder collects eskv's
//! counters, gauges and histograms, printed at the end. In production,
//! install any `metrics` exporter (Prometheus, StatsD, ...) instead.

use eskv::{
    AppendCondition, EventStore, ExpectedVersion, MemoryStore, NewEvent, Projection,
    ProjectionOptions, ProjectionState, Query, ReadOptions, RecordedEvent, SubscriptionOptions,
};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::sync::Arc;
use tracing_subscriber::fmt::format::FmtSpan;

struct Count;

impl Projection for Count {
    fn name(&self) -> &str {
        "count"
    }
    async fn apply(&self, _: &RecordedEvent, s: &mut ProjectionState<'_>) -> eskv::Result<()> {
        let n: u64 = s.get_json(b"n").await?.unwrap_or(0);
        s.put_json(b"n", &(n + 1))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    tracing_subscriber::fmt()
        // Reads and subscription pages are debug-level spans.
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .init();

    let store = EventStore::open(Arc::new(MemoryStore::new())).await?;

    // Concurrent appends share group commits (see batch_size).
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let e = NewEvent::json("Ordered", &serde_json::json!({ "n": i }))?;
                store
                    .append_to_stream(&format!("order-{i}"), ExpectedVersion::NoStream, vec![e])
                    .await
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    // Two conflicts: a stale expected version, a failed DCB condition.
    let again = NewEvent::new("Ordered", b"{}".to_vec());
    let _ = store
        .append_to_stream("order-1", ExpectedVersion::NoStream, vec![again])
        .await;
    let unique = AppendCondition::none_match(Query::of(["Ordered"], []));
    let _ = store
        .append(vec![NewEvent::new("Ordered", b"{}".to_vec())], Some(unique))
        .await;

    // Reads, a subscription (with its lag), a projection.
    store.read_all(ReadOptions::new().limit(3)).await?;
    let mut sub = store
        .subscribe(SubscriptionOptions::named("mailer").batch_size(5))
        .await?
        .take(8);
    while let Some(event) = sub.next().await {
        let _ = event?;
    }
    store
        .catch_up_projection(&Count, &ProjectionOptions::default())
        .await?;

    println!("\nmetrics:");
    let mut rows: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(g) => g.to_string(),
                DebugValue::Histogram(h) => format!(
                    "{} samples, max {}",
                    h.len(),
                    h.iter().max().map_or(0.0, |m| m.into_inner())
                ),
            };
            format!("  {}{{{}}} {value}", key.key().name(), labels.join(","))
        })
        .collect();
    rows.sort();
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
