//! Deciders through the public API: concurrent DCB and stream deciders
//! keep their invariants on memory and redb, typed rejections, bounded
//! retries, and a proptest of sequential decisions against a model.

use eskv::prelude::*;
use eskv::testing::given;
use eskv::{
    Boundary, DecideError, DecideOptions, Decision, DomainEvent, Error, EventStore, MemoryStore,
    Metadata, Query, QueryItem, ReadOptions, ReadStreamOptions,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Course {
    #[eskv(type = "CourseDefined")]
    Defined {
        #[tag("course")]
        course: String,
        capacity: u32,
    },
    #[eskv(type = "StudentSubscribed")]
    Subscribed {
        #[tag("course")]
        course: String,
        #[tag("student")]
        student: String,
    },
    #[eskv(type = "StudentUnsubscribed")]
    Unsubscribed {
        #[tag("course")]
        course: String,
        #[tag("student")]
        student: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    NoSuchCourse,
    AlreadyDefined,
    Full,
    AlreadySubscribed,
    NotSubscribed,
}

#[derive(Default)]
struct CourseState {
    capacity: Option<u32>,
    students: BTreeSet<String>,
}

fn fold(s: &mut CourseState, e: &Course) {
    match e {
        Course::Defined { capacity, .. } => s.capacity = Some(*capacity),
        Course::Subscribed { student, .. } => {
            s.students.insert(student.clone());
        }
        Course::Unsubscribed { student, .. } => {
            s.students.remove(student);
        }
    }
}

fn course_boundary(course: &str) -> Query {
    Query::item(
        QueryItem::new()
            .types(Course::EVENT_TYPES.iter().copied())
            .tags([format!("course:{course}")]),
    )
}

/// Subscribe as a [`Decision`] command.
struct Subscribe {
    course: String,
    student: String,
}

impl Decision for Subscribe {
    type Event = Course;
    type State = CourseState;
    type Error = Refused;
    fn boundary(&self) -> Boundary {
        course_boundary(&self.course).into()
    }
    fn evolve(&self, s: &mut CourseState, e: &Course) {
        fold(s, e)
    }
    fn decide(&self, s: &CourseState) -> Result<Vec<Course>, Refused> {
        let cap = s.capacity.ok_or(Refused::NoSuchCourse)?;
        if s.students.contains(&self.student) {
            return Err(Refused::AlreadySubscribed);
        }
        if s.students.len() as u32 >= cap {
            return Err(Refused::Full);
        }
        Ok(vec![Course::Subscribed {
            course: self.course.clone(),
            student: self.student.clone(),
        }])
    }
}

async fn define(
    store: &EventStore,
    course: &str,
    capacity: u32,
) -> Result<(), DecideError<Refused>> {
    store
        .decide(course_boundary(course), fold, |s| match s.capacity {
            Some(_) => Err(Refused::AlreadyDefined),
            None => Ok(vec![Course::Defined {
                course: course.into(),
                capacity,
            }]),
        })
        .await
        .map(drop)
}

async fn unsubscribe(
    store: &EventStore,
    course: &str,
    student: &str,
) -> Result<(), DecideError<Refused>> {
    store
        .decide(course_boundary(course), fold, |s| {
            if !s.students.contains(student) {
                return Err(Refused::NotSubscribed);
            }
            Ok(vec![Course::Unsubscribed {
                course: course.into(),
                student: student.into(),
            }])
        })
        .await
        .map(drop)
}

async fn subscribed(store: &EventStore, course: &str) -> BTreeSet<String> {
    let mut s = CourseState::default();
    for e in store
        .read(&course_boundary(course), ReadOptions::new())
        .await
        .unwrap()
        .events
    {
        fold(&mut s, &e.to_typed().unwrap());
    }
    s.students
}

/// 10 tasks compete for 3 seats: exactly 3 win, the other 7 are refused
/// with `Full`, and the store holds exactly the winners.
async fn capacity_holds_under_concurrency(store: EventStore) {
    define(&store, "c1", 3).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = Subscribe {
                course: "c1".into(),
                student: format!("s{i}"),
            };
            (format!("s{i}"), store.execute(&cmd).await)
        }));
    }
    let mut winners = BTreeSet::new();
    let mut refused = 0;
    for t in tasks {
        let (student, r) = t.await.unwrap();
        match r {
            Ok(d) => {
                let appended = d.appended.expect("a winning decision appends");
                let at = store
                    .read_all(ReadOptions::after(appended.first_position - 1).limit(1))
                    .await
                    .unwrap();
                assert_eq!(
                    at.events[0].to_typed::<Course>().unwrap(),
                    Course::Subscribed {
                        course: "c1".into(),
                        student: student.clone()
                    }
                );
                winners.insert(student);
            }
            Err(DecideError::Rejected(Refused::Full)) => refused += 1,
            Err(e) => panic!("unexpected outcome for {student}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 3, "exactly the capacity wins");
    assert_eq!(refused, 7);
    assert_eq!(subscribed(&store, "c1").await, winners);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dcb_deciders_memory() {
    for _ in 0..5 {
        let store = EventStore::open(Arc::new(MemoryStore::new()))
            .await
            .unwrap();
        capacity_holds_under_concurrency(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dcb_deciders_redb() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let store = EventStore::open_redb(dir.path().join(format!("c{i}.redb")))
            .await
            .unwrap();
        capacity_holds_under_concurrency(store).await;
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Account {
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

#[derive(Debug, PartialEq)]
struct Insufficient {
    balance: u64,
}

async fn withdraw(
    store: &EventStore,
    id: &str,
    amount: u64,
) -> Result<(), DecideError<Insufficient>> {
    store
        .decide_stream(
            &format!("account-{id}"),
            |balance: &mut u64, e: &Account| match e {
                Account::Deposited { amount } => *balance += amount,
                Account::Withdrawn { amount } => *balance -= amount,
            },
            |&balance| {
                if balance < amount {
                    return Err(Insufficient { balance });
                }
                Ok(vec![Account::Withdrawn { amount }])
            },
        )
        .await
        .map(drop)
}

async fn stream_balance_holds(store: EventStore) {
    store
        .append_to_stream(
            "account-a",
            eskv::ExpectedVersion::NoStream,
            vec![Account::Deposited { amount: 50 }.to_new_event().unwrap()],
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { withdraw(&store, "a", 10).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(DecideError::Rejected(Insufficient { balance: 0 })) => refused += 1,
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!((ok, refused), (5, 5));
    let history = store
        .read_stream("account-a", ReadStreamOptions::new())
        .await
        .unwrap();
    let withdrawn = history
        .iter()
        .filter(|e| e.to_typed::<Account>().unwrap() == Account::Withdrawn { amount: 10 })
        .count();
    assert_eq!((history.len(), withdrawn), (6, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stream_deciders_memory_and_redb() {
    stream_balance_holds(
        EventStore::open(Arc::new(MemoryStore::new()))
            .await
            .unwrap(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    stream_balance_holds(
        EventStore::open_redb(dir.path().join("a.redb"))
            .await
            .unwrap(),
    )
    .await;
}

/// A decision that, while deciding, lets a rival append on its boundary
/// `conflicts` times: the decider re-decides after each, and gives up
/// after `max_attempts`.
async fn with_rivals(
    conflicts: u32,
    max_attempts: u32,
) -> Result<eskv::Decided<Course>, DecideError<Refused>> {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    define(&store, "c1", 100).await.unwrap();
    let calls = AtomicU32::new(0);
    let rival = store.clone();
    store
        .decider(DecideOptions::new().max_attempts(max_attempts))
        .decide(course_boundary("c1"), fold, |s| {
            if calls.fetch_add(1, Ordering::SeqCst) < conflicts {
                let n = s.students.len();
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async {
                        let e = Course::Subscribed {
                            course: "c1".into(),
                            student: format!("rival{n}"),
                        };
                        rival
                            .append(vec![e.to_new_event().unwrap()], None)
                            .await
                            .unwrap();
                    })
                });
            }
            Ok(vec![Course::Subscribed {
                course: "c1".into(),
                student: "me".into(),
            }])
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_redecide_then_give_up() {
    let d = with_rivals(2, 5).await.unwrap();
    assert_eq!(
        d.attempts, 3,
        "two conflicts, then the third decision holds"
    );
    assert!(d.appended.is_some());

    match with_rivals(10, 3).await {
        Err(DecideError::RetriesExhausted {
            attempts: 3,
            last: Error::ConditionFailed { .. },
        }) => {}
        other => panic!("expected RetriesExhausted after 3 attempts, got {other:?}"),
    }
}

#[tokio::test]
async fn rejections_empty_decisions_decode_errors_and_metadata() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    // The domain error comes back typed.
    let r = store
        .execute(&Subscribe {
            course: "nope".into(),
            student: "s".into(),
        })
        .await;
    assert!(matches!(
        r,
        Err(DecideError::Rejected(Refused::NoSuchCourse))
    ));
    assert_eq!(
        store.head().await.unwrap(),
        0,
        "a rejection appends nothing"
    );

    // An empty decision appends nothing and succeeds.
    let d = store
        .decide(course_boundary("c1"), fold, |_| Ok::<_, Refused>(vec![]))
        .await
        .unwrap();
    assert_eq!((d.events.len(), d.appended, d.attempts), (0, None, 1));

    // Metadata from the options lands on every appended event.
    store
        .decider(DecideOptions::new().metadata(Metadata::new().correlation_id("req-1")))
        .decide(course_boundary("c1"), fold, |_| {
            Ok::<_, Refused>(vec![Course::Defined {
                course: "c1".into(),
                capacity: 1,
            }])
        })
        .await
        .unwrap();
    let all = store.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(
        all.events[0].metadata.correlation_id.as_deref(),
        Some("req-1")
    );
    assert_eq!(all.events[0].tags, ["course:c1"]);

    // An event of a type the enum does not know, on the boundary: typed
    // decode error naming its position.
    store
        .append(
            vec![eskv::NewEvent::new("CourseRenamed", b"{}".to_vec()).with_tags(["course:c1"])],
            None,
        )
        .await
        .unwrap();
    let r = store
        .decide(Query::tags(["course:c1"]), fold, |_| {
            Ok::<_, Refused>(vec![])
        })
        .await;
    match r {
        Err(DecideError::Decode(eskv::DecodeError::UnknownType {
            event_type,
            position: Some(2),
            ..
        })) => assert_eq!(event_type, "CourseRenamed"),
        other => panic!("expected an unknown-type error, got {other:?}"),
    }
    let msg =
        DecideError::<String>::Decode(eskv::DecodeError::unknown_type::<Course>("X")).to_string();
    assert!(
        msg.contains("CourseDefined, StudentSubscribed, StudentUnsubscribed"),
        "{msg}"
    );
}

#[tokio::test]
async fn given_when_then() {
    let defined = Course::Defined {
        course: "c1".into(),
        capacity: 1,
    };
    let sub = |s: &str| Course::Subscribed {
        course: "c1".into(),
        student: s.into(),
    };
    let cmd = |s: &str| Subscribe {
        course: "c1".into(),
        student: s.into(),
    };
    given([defined.clone()])
        .when(cmd("s1"))
        .await
        .then([sub("s1")])
        .await;
    given([defined.clone(), sub("s1")])
        .when(cmd("s2"))
        .await
        .then_error(Refused::Full);
    given([defined, sub("s1")])
        .when(cmd("s1"))
        .await
        .then_error(Refused::AlreadySubscribed);
    given([])
        .when(cmd("s1"))
        .await
        .then_error(Refused::NoSuchCourse);
}

#[tokio::test]
#[should_panic(expected = "the decision's events")]
async fn given_when_then_fails_on_other_events() {
    let defined = Course::Defined {
        course: "c1".into(),
        capacity: 1,
    };
    given([defined])
        .when(Subscribe {
            course: "c1".into(),
            student: "s1".into(),
        })
        .await
        .then([Course::Subscribed {
            course: "c1".into(),
            student: "someone else".into(),
        }])
        .await;
}

/// Stream-boundary commands: the given events go to the command's stream.
struct Withdraw(u64);
impl Decision for Withdraw {
    type Event = Account;
    type State = u64;
    type Error = Insufficient;
    fn boundary(&self) -> Boundary {
        Boundary::Stream("account-x".into())
    }
    fn evolve(&self, b: &mut u64, e: &Account) {
        match e {
            Account::Deposited { amount } => *b += amount,
            Account::Withdrawn { amount } => *b -= amount,
        }
    }
    fn decide(&self, &b: &u64) -> Result<Vec<Account>, Insufficient> {
        if b < self.0 {
            return Err(Insufficient { balance: b });
        }
        Ok(vec![Account::Withdrawn { amount: self.0 }])
    }
}

#[tokio::test]
async fn given_when_then_on_a_stream() {
    given([Account::Deposited { amount: 5 }])
        .when(Withdraw(5))
        .await
        .then([Account::Withdrawn { amount: 5 }])
        .await;
    let t = given([Account::Deposited { amount: 5 }])
        .when(Withdraw(6))
        .await;
    assert_eq!(
        t.store()
            .read_stream("account-x", ReadStreamOptions::new())
            .await
            .unwrap()
            .len(),
        1
    );
    t.then_error(Insufficient { balance: 5 });
}

#[derive(Debug, Clone)]
enum Op {
    Define(u8, u32),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u32..4).prop_map(|(c, n)| Op::Define(c, n)),
        (0u8..3, 0u8..5).prop_map(|(c, s)| Op::Subscribe(c, s)),
        (0u8..3, 0u8..5).prop_map(|(c, s)| Op::Unsubscribe(c, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Sequential decisions agree with a plain model: same refusals, same
    /// final enrolment per course.
    #[test]
    fn deciders_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = EventStore::open(Arc::new(MemoryStore::new())).await.unwrap();
            let mut model: BTreeMap<String, (u32, BTreeSet<String>)> = BTreeMap::new();
            for op in &ops {
                let (got, want) = match op {
                    Op::Define(c, n) => {
                        let c = format!("c{c}");
                        let want = if model.contains_key(&c) {
                            Err(Refused::AlreadyDefined)
                        } else {
                            model.insert(c.clone(), (*n, BTreeSet::new()));
                            Ok(())
                        };
                        (define(&store, &c, *n).await, want)
                    }
                    Op::Subscribe(c, s) => {
                        let (c, s) = (format!("c{c}"), format!("s{s}"));
                        let want = match model.get_mut(&c) {
                            None => Err(Refused::NoSuchCourse),
                            Some((_, set)) if set.contains(&s) => Err(Refused::AlreadySubscribed),
                            Some((cap, set)) if set.len() as u32 >= *cap => Err(Refused::Full),
                            Some((_, set)) => {
                                set.insert(s.clone());
                                Ok(())
                            }
                        };
                        let got = store.execute(&Subscribe { course: c, student: s }).await.map(drop);
                        (got, want)
                    }
                    Op::Unsubscribe(c, s) => {
                        let (c, s) = (format!("c{c}"), format!("s{s}"));
                        let want = match model.get_mut(&c).map(|(_, set)| set.remove(&s)) {
                            Some(true) => Ok(()),
                            _ => Err(Refused::NotSubscribed),
                        };
                        (unsubscribe(&store, &c, &s).await, want)
                    }
                };
                let got = got.map_err(|e| e.rejected().expect("only domain refusals"));
                assert_eq!(got, want, "after {op:?}");
            }
            for (c, (_, set)) in &model {
                assert_eq!(&subscribed(&store, c).await, set, "course {c}");
            }
        });
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Meter {
    #[eskv(type = "MeterRead", version = 2)]
    Read { kwh: u64 },
}

struct ReadMeter(u64);
impl Decision for ReadMeter {
    type Event = Meter;
    type State = ();
    type Error = Refused;
    fn boundary(&self) -> Boundary {
        Boundary::Stream("meter-2".into())
    }
    fn evolve(&self, _: &mut (), _: &Meter) {}
    fn decide(&self, _: &()) -> Result<Vec<Meter>, Refused> {
        Ok(vec![Meter::Read { kwh: self.0 }])
    }
}

/// A decision keeps the schema version of a versioned event type: the
/// store has no upcasters, so an event stored as version 1 would fail
/// the next decision's fold with `DecodeError::OldVersion`.
#[tokio::test]
async fn decisions_keep_the_schema_version_of_their_events() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let decider = store.decider(DecideOptions::new().metadata(Metadata::new().correlation_id("r")));
    for kwh in [3, 4] {
        decider
            .decide_stream(
                "meter-1",
                |total: &mut u64, e: &Meter| match e {
                    Meter::Read { kwh } => *total += kwh,
                },
                |_| Ok::<_, Refused>(vec![Meter::Read { kwh }]),
            )
            .await
            .unwrap();
    }
    // The test kit's store has no upcasters either.
    given([Meter::Read { kwh: 1 }])
        .when(ReadMeter(2))
        .await
        .then([Meter::Read { kwh: 2 }])
        .await;
    let events = store.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.schema_version(), 2, "{e:?}");
        assert_eq!(e.metadata.correlation_id.as_deref(), Some("r"));
    }
}

/// A stream whose events all aged out under `max_age` (not yet
/// compacted) still has its version: the decider expects that version,
/// not "no stream", and its append goes through on the first attempt.
#[tokio::test]
async fn a_stream_decision_expects_the_version_of_a_stream_whose_events_aged_out() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    store
        .append_to_stream(
            "account-y",
            eskv::ExpectedVersion::NoStream,
            vec![
                eskv::NewEvent::typed(&Account::Deposited { amount: 5 }, Metadata::new()).unwrap(),
            ],
        )
        .await
        .unwrap();
    store
        .set_retention(
            "account-y",
            eskv::Retention::new().max_age(std::time::Duration::from_millis(1)),
            eskv::ExpectedVersion::Any,
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let read = store
        .read_stream("account-y", ReadStreamOptions::new())
        .await
        .unwrap();
    assert!(read.is_empty(), "the event aged out: {read:?}");
    assert_eq!(read.version, 1);
    let d = store
        .decider(DecideOptions::new().max_attempts(3))
        .decide_stream(
            "account-y",
            |b: &mut u64, e: &Account| {
                if let Account::Deposited { amount } = e {
                    *b += amount
                }
            },
            |_| Ok::<_, Refused>(vec![Account::Deposited { amount: 7 }]),
        )
        .await
        .unwrap();
    assert_eq!(d.attempts, 1);
    assert_eq!(d.appended.unwrap().stream_version, Some(2));
}
