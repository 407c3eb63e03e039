//! Event-layer cases under injected faults (see [`crate::faults`]): the
//! idempotent retry must resolve every failed or ambiguous commit without
//! duplicates or losses.

use crate::counting::CountingStore;
use crate::faults::{FaultConfig, FaultyStore};
use eskv_core::verify::verify;
use eskv_core::{
    AppendCondition, AppendRequest, AppendResult, Error, EventStore, EventStoreOptions,
    ExpectedVersion, KvStore, NewEvent, Query, ReadOptions, Ulid,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A backend under test.
pub type Store = Arc<dyn KvStore>;

const WRITERS: u64 = 8;
const APPENDS: u64 = 40;

/// The seed of the fault generator: `ESKV_FAULT_SEED` or a fixed default.
pub fn fault_seed() -> u64 {
    std::env::var("ESKV_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00FA_0175)
}

/// The wrapper the fault suite puts around a backend for the event-layer
/// cases: every commit fault kind at 4% each (20% of commits fail).
pub fn faulty(store: Store) -> Store {
    FaultyStore::wrap(store, FaultConfig::uniform(fault_seed(), 0.04))
}

/// The wrapper the fault suite puts around a backend for the KV and
/// subscription cases: the fault injector with no faults, so every rule of
/// those suites must hold through it unchanged (it forwards every method).
pub fn transparent(store: Store) -> Store {
    FaultyStore::wrap(store, FaultConfig::none(fault_seed()))
}

/// The fault injector reaches the backend's own implementations of the
/// methods with default bodies: the event layer's batched reads arrive at
/// the backend as `read_many` (not as the default's `get_many` and
/// `scan`), and the backend's commit notifications show through.
pub async fn fault_wrapper_reaches_the_backends_own_methods(store: Store) {
    let probe = CountingStore::new(store.clone());
    let wrapped = faulty(Arc::new(probe.clone()));
    assert_eq!(
        wrapped.commit_watch().is_some(),
        store.commit_watch().is_some(),
        "the fault wrapper must show the backend's commit watch as it is"
    );
    let mut watch = wrapped.commit_watch();
    let es = EventStore::open_with(wrapped, EventStoreOptions::default().max_retries(64))
        .await
        .expect("open through the faults");
    for i in 0..10 {
        let tag = format!("probe:{i}");
        let e = NewEvent::new("Probe", vec![i as u8]).with_tags([tag.clone()]);
        let cond = AppendCondition::none_match(Query::of(["Probe"], vec![tag]));
        submit(&es, AppendRequest::new(vec![e]).condition(cond))
            .await
            .expect("a conditional append through the faults");
    }
    let c = probe.counts();
    assert!(
        c.read_manys >= 10,
        "every append batch reads through read_many, which must reach the backend: {c}"
    );
    if let Some(w) = watch.as_mut() {
        assert!(
            w.has_changed().expect("watch open"),
            "commits must be published through the wrapper's commit watch"
        );
    }
}

#[derive(Debug)]
enum Outcome {
    Acked(AppendResult),
    Rejected,
}

#[derive(Debug)]
struct Done {
    ids: Vec<Ulid>,
    kind: &'static str,
    stream: Option<String>,
    outcome: Outcome,
}

/// Submits `req` until it succeeds or is rejected for good, retrying
/// retryable errors with the same event ids, as a client should.
async fn submit(es: &EventStore, req: AppendRequest) -> Result<AppendResult, Error> {
    let mut last = None;
    for _ in 0..8 {
        match es.submit(req.clone()).await {
            Err(e) if e.is_retryable() => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| Error::invalid("no attempt made")))
}

async fn writer(es: EventStore, w: u64) -> Vec<Done> {
    let mut out = Vec::new();
    let mut version = 0u64;
    let stream = format!("fw-{w}");
    for i in 0..APPENDS {
        let tag = format!("writer:{w}");
        let (kind, req) = match i % 4 {
            0 => {
                let n = 1 + (w + i) % 3;
                let events = (0..n)
                    .map(|_| NewEvent::new("Plain", vec![w as u8]).with_tags([tag.clone()]))
                    .collect();
                ("plain", AppendRequest::new(events))
            }
            1 => {
                let expected = if version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                };
                let events = (0..1 + i % 2)
                    .map(|_| NewEvent::new("Moved", vec![w as u8]).with_tags([tag.clone()]))
                    .collect();
                (
                    "stream",
                    AppendRequest::new(events).stream(stream.clone(), expected),
                )
            }
            2 => {
                // Writers race for 16 shared user names.
                let user = format!("user:{}", (w * 7 + i) % 16);
                let q = Query::of(["Claimed"], vec![user.clone()]);
                let seen = es.read(&q, ReadOptions::new()).await.expect("read");
                // Free: claim it if still free after what we read. Taken:
                // try anyway over the whole log, which must be rejected.
                let after = seen.events.is_empty().then_some(seen.consistent_through);
                let e = NewEvent::new("Claimed", vec![w as u8]).with_tags([user]);
                (
                    "claim",
                    AppendRequest::new(vec![e]).condition(AppendCondition::new(q, after)),
                )
            }
            _ => {
                // A batch whose condition holds (its tag is fresh).
                let fresh = format!("batch:{w}:{i}");
                let events = (0..5 + (w + i) % 6)
                    .map(|_| NewEvent::new("Batch", vec![w as u8]).with_tags([fresh.clone()]))
                    .collect();
                (
                    "batch",
                    AppendRequest::new(events)
                        .condition(AppendCondition::none_match(Query::of([], vec![fresh]))),
                )
            }
        };
        let ids: Vec<Ulid> = req.events.iter().map(|e| e.id).collect();
        let on_stream = req.stream.as_ref().map(|(s, _)| s.clone());
        let outcome = match submit(&es, req).await {
            Ok(r) => {
                if let Some(v) = r.stream_version {
                    version = v;
                }
                Outcome::Acked(r)
            }
            Err(Error::ConditionFailed { .. }) if kind == "claim" => Outcome::Rejected,
            Err(e) => panic!("writer {w}, {kind} append {i}: {e:?}"),
        };
        out.push(Done {
            ids,
            kind,
            stream: on_stream,
            outcome,
        });
    }
    out
}

/// Eight concurrent writers do plain, stream, conditional and batch appends
/// through an event store over the fault-injecting wrapper. Afterwards, on
/// the clean inner store: every acknowledged append is present exactly once
/// at its positions, rejected ones left nothing, no id is stored twice, no
/// event exists that nobody appended, positions are gapless, each user name
/// was claimed at most once, and `verify` is clean.
pub async fn appends_survive_injected_faults(store: Store) {
    let seed = fault_seed();
    let faulty = FaultyStore::new(store.clone(), FaultConfig::uniform(seed, 0.08));
    let es = EventStore::open_with(
        Arc::new(faulty.clone()),
        EventStoreOptions::default().max_retries(64),
    )
    .await
    .expect("open through the faults");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(es.clone(), w)))
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.extend(t.await.expect("writer"));
    }
    let counts = faulty.counts();

    let clean = EventStore::open(store).await.expect("open the inner store");
    let report = verify(&clean).await.expect("verify");
    assert!(report.is_clean(), "{report}");
    let all = clean.read_all(ReadOptions::new()).await.expect("read");
    let mut at: HashMap<Ulid, u64> = HashMap::new();
    for (i, e) in all.events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap in the log");
        assert!(
            at.insert(e.id, e.position).is_none(),
            "id {} stored twice",
            e.id
        );
    }
    let mut acked_events = 0u64;
    let mut stream_events: BTreeMap<String, u64> = BTreeMap::new();
    let (mut acked, mut rejected) = (0, 0);
    for d in &done {
        match &d.outcome {
            Outcome::Acked(r) => {
                acked += 1;
                assert_eq!(
                    r.positions().count(),
                    d.ids.len(),
                    "{}: result size",
                    d.kind
                );
                for (p, id) in r.positions().zip(&d.ids) {
                    assert_eq!(
                        at.get(id),
                        Some(&p),
                        "acknowledged {} event {id} lost or moved",
                        d.kind
                    );
                }
                acked_events += d.ids.len() as u64;
                if let Some(s) = &d.stream {
                    *stream_events.entry(s.clone()).or_default() += d.ids.len() as u64;
                    let last = &all.events[r.last_position as usize - 1];
                    assert_eq!(
                        last.stream.as_ref().map(|x| x.version),
                        r.stream_version,
                        "stream version of an acknowledged append"
                    );
                }
            }
            Outcome::Rejected => {
                rejected += 1;
                for id in &d.ids {
                    assert!(!at.contains_key(id), "a rejected append left {id}");
                }
            }
        }
    }
    assert_eq!(
        all.consistent_through, acked_events,
        "the log holds events that were not acknowledged (duplicates or phantoms)"
    );
    for (s, n) in &stream_events {
        assert_eq!(clean.stream_info(s).await.expect("info").version, *n, "{s}");
    }
    let mut claimed = HashSet::new();
    for e in all.events.iter().filter(|e| e.event_type == "Claimed") {
        for t in &e.tags {
            assert!(claimed.insert(t.clone()), "'{t}' claimed twice");
        }
    }
    eprintln!(
        "appends_survive_injected_faults (ESKV_FAULT_SEED={seed}): {acked} appends acknowledged ({acked_events} events), {rejected} claims rejected, {} user names claimed; injected {counts}",
        claimed.len()
    );
    assert!(
        counts.covers_every_kind() && counts.ambiguous > 0,
        "every fault kind must have been injected: {counts}"
    );
    assert_eq!(acked + rejected, (WRITERS * APPENDS) as usize);
}

/// Defines the fault-injection tests on stores from `$factory` (see
/// [`all_suites!`](crate::all_suites)): `appends_survive_injected_faults`
/// and `fault_wrapper_reaches_the_backends_own_methods` on the backend;
/// the event cases through [`faulty`] (every commit fault kind at 4%,
/// seeded by `ESKV_FAULT_SEED`), whose invariants must hold when commits
/// fail, conflict, time out or lose their answer; and the KV and
/// subscription cases through [`transparent`] (the same wrapper injecting
/// nothing), which must change nothing. Cases marked `#[direct_only]` in
/// their lists are left out of the wrapped runs.
#[macro_export]
macro_rules! fault_tests {
    ($factory:path) => {
        $crate::__cases!(
            direct,
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
            $crate::kv_tests!(wrapped, transparent_store);
        }
        mod subscriptions_through_the_wrapper {
            use super::*;
            $crate::subscription_tests!(wrapped, transparent_store);
        }
        mod events_under_faults {
            use super::*;
            $crate::event_tests!(wrapped, faulty_store);
        }
    };
}
