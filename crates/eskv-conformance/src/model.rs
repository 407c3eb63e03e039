//! Model-based test: random sequences of appends (plain, stream, DCB
//! conditional, replays) and reads run against the real store and against a
//! straightforward in-memory model; every result must agree.

use eskv_core::{
    AppendCondition, AppendRequest, AppendResult, Error, EventStore, ExpectedVersion, KvStore,
    NewEvent, Query, QueryItem, ReadOptions, ReadStreamOptions,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::HashMap;
use std::sync::Arc;

const TYPES: [&str; 3] = ["A", "B", "C"];
const TAGS: [&str; 3] = ["t1", "t2", "t3"];
const STREAMS: [&str; 3] = ["s-1", "s-2", "x-1"];

#[derive(Debug, Clone)]
struct GenEvent {
    ty: usize,
    tags: u8,
}

#[derive(Debug, Clone)]
struct GenItem {
    types: u8,
    tags: u8,
}

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    Exists,
    /// Current version plus this delta (0 = correct), clamped to >= 1.
    Exact(i8),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        events: Vec<GenEvent>,
        stream: Option<(usize, Expect)>,
        condition: Option<(Vec<GenItem>, Option<u8>)>,
    },
    Replay(usize),
    Read {
        items: Vec<GenItem>,
        after_back: Option<u8>,
        until_back: Option<u8>,
        backwards: bool,
        limit: Option<u8>,
        /// Then append under a condition built from the read, with
        /// `after = consistent_through`.
        decide: Option<GenEvent>,
    },
    ReadStream {
        stream: usize,
        backwards: bool,
        limit: Option<u8>,
    },
}

fn gen_item() -> impl Strategy<Value = GenItem> {
    (0u8..8, 0u8..8).prop_map(|(types, tags)| GenItem { types, tags })
}

fn gen_op() -> impl Strategy<Value = Op> {
    let event = (0usize..3, 0u8..8).prop_map(|(ty, tags)| GenEvent { ty, tags });
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::Exists),
        (-1i8..=1).prop_map(Expect::Exact)
    ];
    prop_oneof![
        4 => (
            proptest::collection::vec(event, 1..4),
            proptest::option::of((0usize..3, expect)),
            proptest::option::of((proptest::collection::vec(gen_item(), 1..3), proptest::option::of(0u8..4))),
        )
            .prop_map(|(events, stream, condition)| Op::Append { events, stream, condition }),
        1 => (0usize..8).prop_map(Op::Replay),
        2 => (
            proptest::collection::vec(gen_item(), 1..3),
            proptest::option::of(0u8..5),
            proptest::option::of(0u8..5),
            any::<bool>(),
            proptest::option::of(1u8..4),
            proptest::option::of((0usize..3, 0u8..8).prop_map(|(ty, tags)| GenEvent { ty, tags })),
        )
            .prop_map(|(items, after_back, until_back, backwards, limit, decide)| Op::Read {
                items,
                after_back,
                until_back,
                backwards,
                limit,
                decide,
            }),
        1 => (0usize..3, any::<bool>(), proptest::option::of(1u8..4))
            .prop_map(|(stream, backwards, limit)| Op::ReadStream { stream, backwards, limit }),
    ]
}

fn pick(mask: u8, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn query(items: &[GenItem]) -> Query {
    Query {
        items: items
            .iter()
            .map(|i| {
                QueryItem::new()
                    .types(pick(i.types, &TYPES))
                    .tags(pick(i.tags, &TAGS))
            })
            .collect(),
    }
}

#[derive(Debug, Clone)]
struct ModelEvent {
    ty: String,
    tags: Vec<String>,
    stream: Option<(String, u64)>,
}

#[derive(Default)]
struct Model {
    log: Vec<ModelEvent>,
    streams: HashMap<String, u64>,
    /// Successful appends, for replays: request and result.
    done: Vec<(AppendRequest, AppendResult)>,
}

/// What the model says an append returns: Ok, or the error's kind (and the
/// conflicting position for conditions).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(AppendResult),
    WrongVersion(Option<u64>),
    Condition(u64),
}

impl Model {
    fn append(&mut self, req: &AppendRequest) -> Outcome {
        let head = self.log.len() as u64;
        if let Some((s, expected)) = &req.stream {
            let actual = self.streams.get(s).copied();
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.is_none(),
                ExpectedVersion::StreamExists => actual.is_some(),
                ExpectedVersion::Exact(v) => actual == Some(*v),
            };
            if !ok {
                return Outcome::WrongVersion(actual);
            }
        }
        if let Some(c) = &req.condition {
            let after = c.after.unwrap_or(0);
            if let Some((i, _)) = self
                .log
                .iter()
                .enumerate()
                .skip(after as usize)
                .find(|(_, e)| c.fail_if_events_match.matches_parts(&e.ty, &e.tags))
            {
                return Outcome::Condition(i as u64 + 1);
            }
        }
        let mut version = None;
        for e in &req.events {
            let stream = req.stream.as_ref().map(|(s, _)| {
                let v = self.streams.entry(s.clone()).or_insert(0);
                *v += 1;
                version = Some(*v);
                (s.clone(), *v)
            });
            let mut tags = e.tags.clone();
            tags.sort();
            self.log.push(ModelEvent {
                ty: e.event_type.clone(),
                tags,
                stream,
            });
        }
        let r = AppendResult {
            first_position: head + 1,
            last_position: self.log.len() as u64,
            stream_version: version,
        };
        self.done.push((req.clone(), r));
        Outcome::Ok(r)
    }
}

fn outcome(r: Result<AppendResult, Error>) -> Outcome {
    match r {
        Ok(r) => Outcome::Ok(r),
        Err(Error::WrongExpectedVersion { actual, .. }) => Outcome::WrongVersion(actual),
        Err(Error::ConditionFailed { position, .. }) => Outcome::Condition(position),
        Err(e) => panic!("unexpected error from the store: {e:?}"),
    }
}

async fn run_case(es: EventStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append {
                events,
                stream,
                condition,
            } => {
                let events: Vec<NewEvent> = events
                    .iter()
                    .map(|g| {
                        NewEvent::new(TYPES[g.ty], vec![g.tags]).with_tags(pick(g.tags, &TAGS))
                    })
                    .collect();
                let mut req = AppendRequest::new(events);
                if let Some((s, e)) = stream {
                    let name = STREAMS[s];
                    let cur = m.streams.get(name).copied().unwrap_or(0);
                    let expected = match e {
                        Expect::Any => ExpectedVersion::Any,
                        Expect::NoStream => ExpectedVersion::NoStream,
                        Expect::Exists => ExpectedVersion::StreamExists,
                        Expect::Exact(d) => {
                            ExpectedVersion::Exact((cur as i64 + d as i64).max(1) as u64)
                        }
                    };
                    req = req.stream(name, expected);
                }
                if let Some((items, back)) = condition {
                    let head = m.log.len() as u64;
                    let after = back.map(|b| head.saturating_sub(b as u64));
                    req = req.condition(AppendCondition::new(query(&items), after));
                }
                let want = m.append(&req);
                let got = outcome(es.submit(req).await);
                prop_assert_eq!(got, want);
            }
            Op::Replay(i) => {
                if m.done.is_empty() {
                    continue;
                }
                let (req, original) = m.done[i % m.done.len()].clone();
                let got = es
                    .submit(req)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("replay failed: {e}")))?;
                prop_assert_eq!(got, original);
            }
            Op::Read {
                items,
                after_back,
                until_back,
                backwards,
                limit,
                decide,
            } => {
                let q = query(&items);
                let head = m.log.len() as u64;
                let mut opts = ReadOptions::new();
                if backwards {
                    // Down from `head - until_back`, ignoring events after
                    // `head - after_back`.
                    opts.backwards = true;
                    opts.from = until_back.map(|u| head.saturating_sub(u as u64));
                    opts.until = after_back.map(|b| head.saturating_sub(b as u64));
                } else {
                    // After `head - after_back`, up to `head - until_back`.
                    if let Some(b) = after_back {
                        opts = ReadOptions::after(head.saturating_sub(b as u64));
                    }
                    opts.until = until_back.map(|u| head.saturating_sub(u as u64));
                }
                opts.limit = limit.map(usize::from);
                let got = es
                    .read(&q, opts)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let top = opts.until.map_or(head, |u| u.min(head));
                let (lo, hi) = if backwards {
                    (1, opts.from.map_or(top, |f| f.min(top)))
                } else {
                    (opts.from.unwrap_or(1), top)
                };
                let matching: Vec<u64> = m
                    .log
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (i as u64 + 1, e))
                    .filter(|(_, e)| q.matches_parts(&e.ty, &e.tags))
                    .map(|(p, _)| p)
                    .collect();
                let mut want: Vec<u64> = matching
                    .iter()
                    .copied()
                    .filter(|p| *p >= lo && *p <= hi)
                    .collect();
                if backwards {
                    want.reverse();
                }
                let cut = opts.limit.is_some_and(|l| want.len() >= l);
                if let Some(l) = opts.limit {
                    want.truncate(l);
                }
                let got_pos: Vec<u64> = got.events.iter().map(|e| e.position).collect();
                prop_assert_eq!(&got_pos, &want);
                for e in &got.events {
                    let me = &m.log[e.position as usize - 1];
                    prop_assert_eq!(&e.event_type, &me.ty);
                    prop_assert_eq!(&e.tags, &me.tags);
                }
                // The contract of consistent_through, from the model.
                let through = match (backwards, cut, want.last()) {
                    (false, true, Some(last)) => *last,
                    _ => hi,
                };
                prop_assert_eq!(got.consistent_through, through);
                prop_assert!(through <= head);
                if !backwards {
                    // Forwards, the read returned every matching event from
                    // `from` through it.
                    let complete: Vec<u64> = matching
                        .iter()
                        .copied()
                        .filter(|p| *p >= lo && *p <= through)
                        .collect();
                    prop_assert_eq!(&complete, &got_pos);
                }
                if let Some(g) = decide {
                    // A decision on this read: the append must succeed only
                    // if no matching event exists after what the read saw
                    // (the model's exact answer), and a success after a
                    // forward read means the read saw every matching event
                    // from `from` on.
                    let e = NewEvent::new(TYPES[g.ty], vec![g.tags]).with_tags(pick(g.tags, &TAGS));
                    let req = AppendRequest::new(vec![e]).condition(AppendCondition::new(
                        q.clone(),
                        Some(got.consistent_through),
                    ));
                    let want = m.append(&req);
                    let ok = matches!(want, Outcome::Ok(_));
                    prop_assert_eq!(outcome(es.submit(req).await), want);
                    if ok && !backwards {
                        let unseen: Vec<u64> = matching
                            .iter()
                            .copied()
                            .filter(|p| *p >= lo && !got_pos.contains(p))
                            .collect();
                        prop_assert!(
                            unseen.is_empty(),
                            "a decision committed without seeing matching events {:?}",
                            unseen
                        );
                    }
                }
            }
            Op::ReadStream {
                stream,
                backwards,
                limit,
            } => {
                let name = STREAMS[stream];
                let mut opts = ReadStreamOptions::new();
                opts.backwards = backwards;
                opts.limit = limit.map(usize::from);
                let got = es
                    .read_stream(name, opts)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut want: Vec<(u64, u64)> = m
                    .log
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| match &e.stream {
                        Some((s, v)) if s == name => Some((i as u64 + 1, *v)),
                        _ => None,
                    })
                    .collect();
                if backwards {
                    want.reverse();
                }
                if let Some(l) = opts.limit {
                    want.truncate(l);
                }
                let got: Vec<(u64, u64)> = got
                    .iter()
                    .map(|e| (e.position, e.stream.as_ref().map_or(0, |s| s.version)))
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
    let all = es
        .read_all(ReadOptions::new())
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(all.events.len(), m.log.len());
    Ok(())
}

/// Runs `cases` generated op sequences, each in a fresh namespace of
/// `store`. Panics with the minimal failing sequence on a mismatch.
pub async fn run(store: Arc<dyn KvStore>, cases: u32) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = proptest::collection::vec(gen_op(), 1..24);
        let result = runner.run(&strategy, |ops| {
            handle.block_on(async {
                let ns = crate::unique_namespace(store.clone());
                let es = EventStore::open(ns)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                run_case(es, ops).await
            })
        });
        if let Err(e) = result {
            panic!("model-based test failed: {e}");
        }
    })
    .await
    .unwrap();
}
