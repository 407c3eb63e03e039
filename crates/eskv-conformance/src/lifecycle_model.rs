//! Model-based test of the lifecycle of events: random appends
//! (with personal parts), retention changes, soft deletes, tombstones,
//! forgets, id reuse, DCB conditions and compactions run against the real
//! store and a plain in-memory model. After every step every read path
//! (log, paged log, streams, category, DCB query, stream info) must agree
//! with the model: positions never reused or renumbered, removed events
//! skipped, personal parts erased exactly when forgotten, and paged reads
//! (what subscribers do) never cut short by a removal. The store passes
//! `verify` at the end, after a final compaction.

use eskv_core::lifecycle::system_types;
use eskv_core::{
    AppendCondition, Error, EventStore, EventStoreOptions, ExpectedVersion, ForgetOutcome, KvStore,
    NewEvent, Query, ReadOptions, ReadStreamOptions, RecordedEvent, Retention, StoreKey, Ulid,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::HashMap;
use std::sync::Arc;

const STREAMS: [&str; 3] = ["s-1", "s-2", "x-1"];
const TAGS: [&str; 2] = ["t1", "t2"];
const SUBJECTS: [&str; 2] = ["u1", "u2"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: Option<usize>,
        n: usize,
        tags: u8,
        personal: Option<usize>,
    },
    Retain {
        stream: usize,
        max_count: Option<u64>,
        truncate_back: Option<u64>,
    },
    Delete(usize),
    Tombstone(usize),
    Forget(usize),
    ReuseId(usize),
    Condition(usize),
    Compact,
}

fn gen_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::option::of(0usize..3), 1usize..4, 0u8..4, proptest::option::of(0usize..2))
            .prop_map(|(stream, n, tags, personal)| Op::Append { stream, n, tags, personal }),
        2 => (0usize..3, proptest::option::of(1u64..4), proptest::option::of(0u64..4))
            .prop_map(|(stream, max_count, truncate_back)| Op::Retain { stream, max_count, truncate_back }),
        1 => (0usize..3).prop_map(Op::Delete),
        1 => (0usize..3).prop_map(Op::Tombstone),
        1 => (0usize..2).prop_map(Op::Forget),
        1 => (0usize..64).prop_map(Op::ReuseId),
        1 => (0usize..2).prop_map(Op::Condition),
        1 => Just(Op::Compact),
    ]
}

#[derive(Debug, Clone)]
struct MEvent {
    id: Ulid,
    ty: String,
    tags: Vec<String>,
    stream: Option<(String, u64)>,
    /// Subject, bytes, key generation.
    personal: Option<(String, Vec<u8>, u64)>,
}

#[derive(Debug, Clone, Default)]
struct MStream {
    version: u64,
    floor: u64,
    max_count: Option<u64>,
    tomb: bool,
    revision: Option<u64>,
}

impl MStream {
    fn first_live(&self) -> u64 {
        if self.tomb {
            return self.version + 1;
        }
        let by_count = self
            .max_count
            .map_or(1, |n| (self.version + 1).saturating_sub(n));
        by_count.max(self.floor).max(1)
    }

    fn absent(&self) -> bool {
        self.version == 0 || self.first_live() > self.version
    }
}

#[derive(Debug, Clone, Default)]
struct MSubject {
    generation: u64,
    forgotten_upto: u64,
}

#[derive(Default)]
struct Model {
    log: Vec<MEvent>,
    streams: HashMap<String, MStream>,
    subjects: HashMap<String, MSubject>,
}

impl Model {
    fn live(&self, e: &MEvent) -> bool {
        match &e.stream {
            None => true,
            Some((s, v)) => *v >= self.streams[s].first_live(),
        }
    }

    fn live_events(&self) -> Vec<(u64, &MEvent)> {
        self.log
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .filter(|(_, e)| self.live(e))
            .collect()
    }

    fn system(&mut self, ty: &str, tag: String) {
        self.log.push(MEvent {
            id: Ulid::nil(),
            ty: ty.into(),
            tags: vec![tag],
            stream: None,
            personal: None,
        });
    }

    fn stream(&mut self, s: &str) -> &mut MStream {
        self.streams.entry(s.to_owned()).or_default()
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Compares one event with the model's.
fn same(got: &RecordedEvent, pos: u64, want: &MEvent, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.position, pos);
    prop_assert_eq!(&got.event_type, &want.ty);
    prop_assert_eq!(&got.tags, &want.tags);
    let stream = got
        .stream
        .as_ref()
        .map(|s| (s.stream_id.clone(), s.version));
    prop_assert_eq!(&stream, &want.stream);
    match (&got.personal, &want.personal) {
        (None, None) => {}
        (Some(p), Some((subject, bytes, generation))) => {
            prop_assert_eq!(p.subject(), subject.as_str());
            let erased = *generation <= m.subjects[subject].forgotten_upto;
            if erased {
                prop_assert!(
                    p.is_erased(),
                    "forgotten personal part still readable at {}",
                    pos
                );
                prop_assert_eq!(p.bytes(), None);
            } else {
                prop_assert_eq!(p.bytes(), Some(bytes.as_slice()));
            }
        }
        (g, w) => prop_assert!(false, "personal part {:?}, model {:?}", g, w),
    }
    Ok(())
}

async fn check(es: &EventStore, m: &Model) -> Result<(), TestCaseError> {
    let live = m.live_events();
    // The log, whole and in pages of 2 (the subscriber's way).
    let all = es.read_all(ReadOptions::new()).await.map_err(fail)?;
    prop_assert_eq!(all.events.len(), live.len());
    for (got, (pos, want)) in all.events.iter().zip(&live) {
        same(got, *pos, want, m)?;
    }
    prop_assert_eq!(all.consistent_through, m.log.len() as u64);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let r = es
            .read_all(ReadOptions::after(after).limit(2))
            .await
            .map_err(fail)?;
        paged.extend(r.events.iter().map(|e| e.position));
        after = r.consistent_through;
        if r.events.len() < 2 {
            break;
        }
    }
    let want: Vec<u64> = live.iter().map(|(p, _)| *p).collect();
    prop_assert_eq!(&paged, &want, "paged log reads");
    prop_assert_eq!(after, m.log.len() as u64, "a short page means caught up");
    // Streams and their info.
    for s in STREAMS {
        let got = es
            .read_stream(s, ReadStreamOptions::new())
            .await
            .map_err(fail)?;
        let want: Vec<&(u64, &MEvent)> = live
            .iter()
            .filter(|(_, e)| e.stream.as_ref().is_some_and(|(x, _)| x == s))
            .collect();
        prop_assert_eq!(got.len(), want.len(), "stream {}", s);
        for (g, (p, w)) in got.iter().zip(want.iter().copied()) {
            same(g, *p, w, m)?;
        }
        let limited = es
            .read_stream(s, ReadStreamOptions::new().limit(1))
            .await
            .map_err(fail)?;
        prop_assert_eq!(
            limited.first().map(|e| e.position),
            want.first().map(|(p, _)| *p)
        );
        let back = es
            .read_stream(s, ReadStreamOptions::new().backwards().limit(1))
            .await
            .map_err(fail)?;
        prop_assert_eq!(
            back.first().map(|e| e.position),
            want.last().map(|(p, _)| *p)
        );
        let info = es.stream_info(s).await.map_err(fail)?;
        let ms = m.streams.get(s).cloned().unwrap_or_default();
        prop_assert_eq!(info.version, ms.version);
        prop_assert_eq!(info.exists, !ms.absent(), "stream {} exists", s);
        prop_assert_eq!(info.tombstoned, ms.tomb);
        prop_assert_eq!(info.metadata_revision, ms.revision);
    }
    // A category and a DCB query, forwards in pages and backwards.
    let cat = es
        .read_category("s", ReadOptions::new().limit(100))
        .await
        .map_err(fail)?;
    let want: Vec<u64> = live
        .iter()
        .filter(|(_, e)| e.stream.as_ref().is_some_and(|(x, _)| x.starts_with("s-")))
        .map(|(p, _)| *p)
        .collect();
    let got: Vec<u64> = cat.events.iter().map(|e| e.position).collect();
    prop_assert_eq!(got, want, "category");
    for t in TAGS {
        let q = Query::tags([t]);
        let want: Vec<u64> = live
            .iter()
            .filter(|(_, e)| e.tags.iter().any(|x| x == t))
            .map(|(p, _)| *p)
            .collect();
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let r = es
                .read(&q, ReadOptions::after(after).limit(2))
                .await
                .map_err(fail)?;
            got.extend(r.events.iter().map(|e| e.position));
            after = r.consistent_through;
            if r.events.len() < 2 {
                break;
            }
        }
        prop_assert_eq!(&got, &want, "query on {} in pages", t);
        let back = es
            .read(&q, ReadOptions::new().backwards().limit(2))
            .await
            .map_err(fail)?;
        let mut top: Vec<u64> = want.iter().rev().take(2).copied().collect();
        top.truncate(2);
        let got: Vec<u64> = back.events.iter().map(|e| e.position).collect();
        prop_assert_eq!(got, top, "query on {} backwards", t);
    }
    Ok(())
}

async fn run_case(es: EventStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append {
                stream,
                n,
                tags,
                personal,
            } => {
                let tags: Vec<String> = TAGS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| tags & (1 << i) != 0)
                    .map(|(_, t)| t.to_string())
                    .collect();
                let mut events = Vec::new();
                for i in 0..n {
                    let mut e = NewEvent::new("E", vec![i as u8]).with_tags(tags.clone());
                    if let Some(s) = personal {
                        e = e
                            .with_personal_data(SUBJECTS[s], format!("secret {}", m.log.len() + i));
                    }
                    events.push(e);
                }
                let got = match stream {
                    Some(s) => {
                        es.append_to_stream(STREAMS[s], ExpectedVersion::Any, events.clone())
                            .await
                    }
                    None => es.append(events.clone(), None).await,
                };
                if let Some(s) = stream {
                    if m.stream(STREAMS[s]).tomb {
                        prop_assert!(
                            matches!(got, Err(Error::StreamTombstoned { .. })),
                            "{:?}",
                            got
                        );
                        continue;
                    }
                }
                let r = got.map_err(fail)?;
                prop_assert_eq!(r.first_position, m.log.len() as u64 + 1);
                let generation = personal.map(|s| {
                    let sub = m.subjects.entry(SUBJECTS[s].to_owned()).or_default();
                    if sub.generation <= sub.forgotten_upto {
                        sub.generation += 1;
                    }
                    sub.generation
                });
                for e in events {
                    let stream = stream.map(|s| {
                        let st = m.stream(STREAMS[s]);
                        st.version += 1;
                        (STREAMS[s].to_owned(), st.version)
                    });
                    let personal = e.personal.as_ref().map(|p| {
                        (
                            p.subject().to_owned(),
                            p.bytes().unwrap_or_default().to_vec(),
                            generation.unwrap_or(0),
                        )
                    });
                    m.log.push(MEvent {
                        id: e.id,
                        ty: e.event_type,
                        tags: e.tags,
                        stream,
                        personal,
                    });
                }
            }
            Op::Retain {
                stream,
                max_count,
                truncate_back,
            } => {
                let s = STREAMS[stream];
                let st = m.stream(s).clone();
                let mut r = Retention::new();
                if let Some(c) = max_count {
                    r = r.max_count(c);
                }
                if let Some(b) = truncate_back {
                    r = r.truncate_before((st.version + 1).saturating_sub(b).max(1));
                }
                let expected = st
                    .revision
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let got = es.set_retention(s, r.clone(), expected).await;
                if st.tomb {
                    prop_assert!(
                        matches!(got, Err(Error::StreamTombstoned { .. })),
                        "{:?}",
                        got
                    );
                    continue;
                }
                got.map_err(fail)?;
                let floor = st.first_live().max(r.truncate_before.unwrap_or(0));
                let ms = m.stream(s);
                ms.floor = floor;
                ms.max_count = r.max_count;
                ms.revision = Some(st.revision.map_or(1, |v| v + 1));
                m.system(system_types::RETENTION_SET, format!("$stream:{s}"));
                // A stale revision is refused.
                let stale = es
                    .set_retention(s, Retention::new(), ExpectedVersion::NoStream)
                    .await;
                prop_assert!(
                    matches!(stale, Err(Error::WrongExpectedVersion { .. })),
                    "{:?}",
                    stale
                );
            }
            Op::Delete(i) => {
                let s = STREAMS[i];
                let st = m.stream(s).clone();
                let got = es.delete_stream(s, ExpectedVersion::Any).await;
                if st.tomb {
                    prop_assert!(
                        matches!(got, Err(Error::StreamTombstoned { .. })),
                        "{:?}",
                        got
                    );
                } else if st.absent() {
                    prop_assert!(matches!(got, Err(Error::NotFound { .. })), "{:?}", got);
                } else {
                    got.map_err(fail)?;
                    let ms = m.stream(s);
                    ms.floor = st.version + 1;
                    ms.revision = Some(st.revision.map_or(1, |v| v + 1));
                    m.system(system_types::STREAM_DELETED, format!("$stream:{s}"));
                }
            }
            Op::Tombstone(i) => {
                let s = STREAMS[i];
                let st = m.stream(s).clone();
                let got = es.tombstone_stream(s, ExpectedVersion::Any).await;
                if st.tomb {
                    prop_assert!(
                        matches!(got, Err(Error::StreamTombstoned { .. })),
                        "{:?}",
                        got
                    );
                } else {
                    got.map_err(fail)?;
                    let ms = m.stream(s);
                    ms.floor = st.first_live();
                    ms.tomb = true;
                    ms.revision = Some(st.revision.map_or(1, |v| v + 1));
                    m.system(system_types::STREAM_TOMBSTONED, format!("$stream:{s}"));
                }
            }
            Op::Forget(i) => {
                let subject = SUBJECTS[i];
                let got = es.forget(subject).await;
                match m.subjects.get_mut(subject) {
                    None => prop_assert!(
                        matches!(got, Err(Error::UnknownSubject { .. })),
                        "{:?}",
                        got
                    ),
                    Some(sub) if sub.generation <= sub.forgotten_upto => {
                        prop_assert_eq!(got.map_err(fail)?, ForgetOutcome::AlreadyForgotten)
                    }
                    Some(sub) => {
                        sub.forgotten_upto = sub.generation;
                        let pos = m.log.len() as u64 + 1;
                        prop_assert_eq!(
                            got.map_err(fail)?,
                            ForgetOutcome::Forgotten { position: pos }
                        );
                        m.system(
                            system_types::SUBJECT_FORGOTTEN,
                            format!("$subject:{subject}"),
                        );
                    }
                }
            }
            Op::ReuseId(i) => {
                let users: Vec<usize> = (0..m.log.len())
                    .filter(|j| !m.log[*j].id.is_nil())
                    .collect();
                if users.is_empty() {
                    continue;
                }
                let j = users[i % users.len()];
                let id = m.log[j].id;
                // The latest event holding this id decides.
                let holder = m.log.iter().rposition(|e| e.id == id).unwrap_or(j);
                let e = NewEvent::new("Reused", b"other".to_vec()).with_id(id);
                let got = es.append(vec![e.clone()], None).await;
                if m.live(&m.log[holder]) && m.log[holder].ty == "Reused" {
                    // The very same single-event append again: a replay.
                    let r = got.map_err(fail)?;
                    prop_assert_eq!(r.first_position, holder as u64 + 1);
                } else if m.live(&m.log[holder]) {
                    prop_assert!(
                        matches!(got, Err(Error::IdempotencyViolation { .. })),
                        "{:?}",
                        got
                    );
                } else {
                    // The id of a released event is free again.
                    let r = got.map_err(fail)?;
                    prop_assert_eq!(r.first_position, m.log.len() as u64 + 1);
                    m.log.push(MEvent {
                        id,
                        ty: "Reused".into(),
                        tags: Vec::new(),
                        stream: None,
                        personal: None,
                    });
                }
            }
            Op::Condition(t) => {
                let q = Query::tags([TAGS[t]]);
                let e = NewEvent::new("Checked", Vec::new());
                let got = es
                    .append(vec![e.clone()], Some(AppendCondition::new(q, None)))
                    .await;
                let hit = m
                    .live_events()
                    .into_iter()
                    .find(|(_, e)| e.tags.iter().any(|x| x == TAGS[t]))
                    .map(|(p, _)| p);
                match hit {
                    Some(p) => prop_assert!(
                        matches!(got, Err(Error::ConditionFailed { position, .. }) if position == p),
                        "condition should fail at {}: {:?}",
                        p,
                        got
                    ),
                    None => {
                        got.map_err(fail)?;
                        m.log.push(MEvent {
                            id: e.id,
                            ty: e.event_type,
                            tags: Vec::new(),
                            stream: None,
                            personal: None,
                        });
                    }
                }
            }
            Op::Compact => {
                es.compact().await.map_err(fail)?;
            }
        }
        check(&es, &m).await?;
    }
    es.compact().await.map_err(fail)?;
    check(&es, &m).await?;
    let report = eskv_core::verify::verify(&es).await.map_err(fail)?;
    prop_assert!(report.is_clean(), "verify after compaction: {}", report);
    prop_assert_eq!(
        report.head,
        m.log.len() as u64,
        "positions are never reused"
    );
    Ok(())
}

/// Runs `cases` generated op sequences, each in a fresh namespace.
pub async fn run(store: Arc<dyn KvStore>, cases: u32) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = proptest::collection::vec(gen_op(), 1..20);
        let result = runner.run(&strategy, |ops| {
            handle.block_on(async {
                let ns = crate::unique_namespace(store.clone());
                let opts = EventStoreOptions::default().store_key(StoreKey::from_bytes([7; 32]));
                let es = EventStore::open_with(ns, opts).await.map_err(fail)?;
                run_case(es, ops).await
            })
        });
        if let Err(e) = result {
            panic!("lifecycle model-based test failed: {e}");
        }
    })
    .await
    .unwrap();
}
