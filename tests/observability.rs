//! Observability through real instruments: a `metrics` recorder (the
//! debugging recorder of metrics-util) sees eskv's counters, gauges and
//! histograms move, and a `tracing` fmt subscriber sees the event-level
//! spans with their fields. One test per binary: the recorder is global.

use eskv::observe::{
    APPENDS, BATCH_SIZE, COMMIT_SECONDS, CONFLICTS, EVENTS, PARKED, RETRIES, SUBSCRIPTION_LAG,
};
use eskv::{
    AppendCondition, EventStore, ExpectedVersion, HandlerOptions, MemoryStore, NewEvent, OnFailure,
    Projection, ProjectionOptions, ProjectionState, Query, ReadOptions, ReadStreamOptions,
    RecordedEvent, SubscriptionOptions,
};
use eskv_conformance::faults::{FaultConfig, FaultyStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::hash_map::{Entry, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything the fmt subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A metric's name and labels.
type MetricId = (String, Vec<(String, String)>);

/// What the recorder saw so far. Its snapshots drain it (counters are
/// swapped to 0), so they are summed here.
struct Seen {
    snap: Snapshotter,
    /// (name, labels) -> counter total, last gauge value, histogram values.
    values: Mutex<HashMap<MetricId, DebugValue>>,
}

impl Seen {
    /// The value of metric `name` whose labels include `label`.
    fn value(&self, name: &str, label: Option<(&str, &str)>) -> Option<DebugValue> {
        let mut values = self.values.lock().unwrap();
        for (k, _, _, v) in self.snap.snapshot().into_vec() {
            let labels = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let slot = values.entry((k.key().name().to_owned(), labels));
            match (slot, v) {
                (Entry::Occupied(mut o), DebugValue::Counter(n)) => {
                    if let DebugValue::Counter(old) = o.get_mut() {
                        *old += n;
                    }
                }
                (Entry::Occupied(mut o), DebugValue::Histogram(h)) => {
                    if let DebugValue::Histogram(old) = o.get_mut() {
                        old.extend(h);
                    }
                }
                (Entry::Occupied(mut o), v) => {
                    o.insert(v);
                }
                (Entry::Vacant(e), v) => {
                    e.insert(v);
                }
            }
        }
        values
            .iter()
            .find(|((n, labels), _)| {
                n == name && label.is_none_or(|(l, v)| labels.iter().any(|(a, b)| a == l && b == v))
            })
            .map(|(_, v)| match v {
                DebugValue::Counter(n) => DebugValue::Counter(*n),
                DebugValue::Gauge(g) => DebugValue::Gauge(*g),
                DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
            })
    }

    fn counter(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        match self.value(name, label) {
            Some(DebugValue::Counter(n)) => n,
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn histogram_len(&self, name: &str) -> usize {
        match self.value(name, None) {
            Some(DebugValue::Histogram(v)) => v.len(),
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }
}

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

#[test]
fn a_real_recorder_and_subscriber_see_eskv_move() {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snap: recorder.snapshotter(),
        values: Mutex::default(),
    };
    recorder.install().unwrap();
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EventStore::open(Arc::new(MemoryStore::new()))
            .await
            .unwrap();

        // Ten concurrent appends: group commits.
        let appends: Vec<_> = (0..10)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let kind = if i == 3 { "Poison" } else { "Mail" };
                    store.append(vec![NewEvent::new(kind, vec![])], None).await
                })
            })
            .collect();
        for a in appends {
            a.await.unwrap().unwrap();
        }
        assert_eq!(seen.counter(APPENDS, Some(("outcome", "appended"))), 10);
        assert_eq!(seen.counter(EVENTS, None), 10);
        assert!(seen.histogram_len(BATCH_SIZE) >= 1);
        assert!(seen.histogram_len(COMMIT_SECONDS) >= 1);

        // Conflicts of both kinds.
        store
            .append_to_stream(
                "s-1",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("A", vec![])],
            )
            .await
            .unwrap();
        assert!(store
            .append_to_stream(
                "s-1",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("A", vec![])]
            )
            .await
            .is_err());
        let unique = AppendCondition::none_match(Query::of(["A"], []));
        assert!(store
            .append(vec![NewEvent::new("A", vec![])], Some(unique))
            .await
            .is_err());
        assert_eq!(
            seen.counter(CONFLICTS, Some(("kind", "expected_version"))),
            1
        );
        assert_eq!(seen.counter(CONFLICTS, Some(("kind", "condition"))), 1);
        assert_eq!(seen.counter(APPENDS, Some(("outcome", "conflict"))), 2);

        // Retries: a backend that conflicts on every second commit.
        let mut faults = FaultConfig::none(7);
        faults.conflict = 0.5;
        let flaky = EventStore::open(FaultyStore::wrap(Arc::new(MemoryStore::new()), faults))
            .await
            .unwrap();
        for _ in 0..10 {
            flaky
                .append(vec![NewEvent::new("F", vec![])], None)
                .await
                .unwrap();
        }
        assert!(seen.counter(RETRIES, None) >= 1);

        // A subscription that parks the poison event and reports its lag.
        let sub = store
            .subscribe(SubscriptionOptions::named("mailer").batch_size(4))
            .await
            .unwrap();
        let handler = |e: RecordedEvent| async move {
            match e.event_type.as_str() {
                "Poison" => Err("cannot send"),
                _ => Ok(()),
            }
        };
        let opts = HandlerOptions::default()
            .max_attempts(1)
            .on_failure(OnFailure::Park);
        // Stop once the checkpoint reaches the head (every event handled or
        // parked), however slow the machine.
        let head = store.head().await.unwrap();
        let caught_up = {
            let store = store.clone();
            async move {
                while store.checkpoint("mailer").await.unwrap() < Some(head) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), sub.run(handler, opts, caught_up))
            .await
            .expect("the subscription catches up")
            .unwrap();
        assert_eq!(seen.counter(PARKED, Some(("subscription", "mailer"))), 1);
        match seen.value(SUBSCRIPTION_LAG, Some(("subscription", "mailer"))) {
            Some(DebugValue::Gauge(lag)) => assert_eq!(lag.into_inner(), 0.0),
            other => panic!("{other:?}"),
        }

        // A subscription behind the head reports how far: pages of 2
        // over 10 events, lag 8 after the first page, 0 at the end.
        let behind = EventStore::open(Arc::new(MemoryStore::new()))
            .await
            .unwrap();
        let ticks = (0..10).map(|_| NewEvent::new("Tick", vec![])).collect();
        behind.append(ticks, None).await.unwrap();
        let mut laggard = behind
            .subscribe(SubscriptionOptions::named("laggard").batch_size(2))
            .await
            .unwrap();
        let lag = || match seen.value(SUBSCRIPTION_LAG, Some(("subscription", "laggard"))) {
            Some(DebugValue::Gauge(lag)) => lag.into_inner(),
            other => panic!("{other:?}"),
        };
        let first = laggard.next().await.unwrap();
        assert_eq!(first.position, 1);
        assert_eq!(lag(), 8.0);
        for p in 2..=10 {
            assert_eq!(laggard.next().await.unwrap().position, p);
        }
        assert_eq!(lag(), 0.0);

        // An append refused before it is queued is counted as rejected.
        let rejected = seen.counter(APPENDS, Some(("outcome", "rejected")));
        assert!(store.append(vec![], None).await.is_err());
        assert_eq!(
            seen.counter(APPENDS, Some(("outcome", "rejected"))),
            rejected + 1
        );

        // Reads and a projection, for their spans.
        store
            .read_stream("s-1", ReadStreamOptions::new())
            .await
            .unwrap();
        store.read_all(ReadOptions::new()).await.unwrap();
        store
            .catch_up_projection(&Count, &ProjectionOptions::default())
            .await
            .unwrap();
    });

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    for needle in [
        "eskv.append{",
        "outcome=\"appended\"",
        "outcome=\"conflict\"",
        "batch_size=",
        "first_position=",
        "last_position=",
        "stream=\"s-1\"",
        "eskv.read{kind=\"stream\" count=1}",
        "name=\"laggard\" position=2 lag=8",
        "eskv.read{kind=\"log\" count=11}",
        "eskv.subscription{name=\"mailer\"",
        "lag=",
        "eskv.projection{name=\"count\" batch=11 checkpoint=11}",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the trace:\n{text}");
    }
}
