//! The eskv demo: course subscriptions decided with DCB, an order stream
//! with expected versions, a live projection, and a restart that resumes
//! from its checkpoint — all on an embedded redb file, no setup.
//!
//! ```sh
//! cargo run --release --example demo            # uses ./eskv-demo.redb
//! cargo run --release --example demo -- my.redb # or a file of your choice
//! ```

use eskv::prelude::*;
use eskv::{
    DecideError, Decided, DomainEvent, EventStore, ExpectedVersion, NewEvent, Projection,
    ProjectionOptions, ProjectionState, Query, QueryItem, ReadStreamOptions, RecordedEvent,
    SubscriptionFilter, SubscriptionOptions,
};
use std::time::Duration;

const CAPACITY: usize = 3;

/// Enrolment counts per course, kept exactly once in the same store.
struct Enrolments;

impl Projection for Enrolments {
    fn name(&self) -> &str {
        "enrolments"
    }
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::Query(Query::types(["StudentSubscribed"]))
    }
    async fn apply(&self, e: &RecordedEvent, state: &mut ProjectionState<'_>) -> eskv::Result<()> {
        for course in e.tags.iter().filter(|t| t.starts_with("course:")) {
            let n: u64 = state.get_json(course.as_bytes()).await?.unwrap_or(0);
            state.put_json(course.as_bytes(), &(n + 1))?;
        }
        Ok(())
    }
}

/// The course events, typed: each variant's type name, tags and payload.
#[derive(Debug, DomainEvent)]
enum CourseEvent {
    #[eskv(type = "CourseDefined")]
    Defined {
        #[tag("course")]
        course: String,
        capacity: usize,
    },
    #[eskv(type = "StudentSubscribed")]
    Subscribed {
        #[tag("course")]
        course: String,
        #[tag("student")]
        student: String,
    },
}

/// What the decision needs to know, folded from its boundary.
#[derive(Default)]
struct Seen {
    capacity: usize,
    taken: usize,
    mine: usize,
    again: bool,
}

/// The DCB decision "may `student` subscribe to `course`?": the decider
/// reads the boundary, folds it, decides, and appends on the condition that
/// the boundary did not change since the read — re-deciding when it did.
async fn subscribe(
    store: &EventStore,
    course: &str,
    student: &str,
) -> Result<Decided<CourseEvent>, DecideError<String>> {
    let boundary = Query::of(
        ["CourseDefined", "StudentSubscribed"],
        vec![format!("course:{course}")],
    )
    .or(QueryItem::new()
        .types(["StudentSubscribed"])
        .tags([format!("student:{student}")]));
    let fold = |s: &mut Seen, e: &CourseEvent| match e {
        CourseEvent::Defined { capacity, .. } => s.capacity = *capacity,
        CourseEvent::Subscribed {
            course: c,
            student: st,
        } => {
            s.taken += usize::from(c == course);
            s.mine += usize::from(st == student);
            s.again |= c == course && st == student;
        }
    };
    let decision = store.decide(boundary, fold, |s| match s {
        s if s.again => Err(format!("{student} is already in {course}")),
        s if s.taken >= s.capacity => Err(format!("{course} is full ({}/{})", s.taken, s.capacity)),
        s if s.mine >= 2 => Err(format!("{student} already has 2 courses")),
        _ => Ok(vec![CourseEvent::Subscribed {
            course: course.into(),
            student: student.into(),
        }]),
    });
    decision.await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "eskv-demo.redb".into());
    let _ = std::fs::remove_file(&path);
    println!("eskv demo on {path}\n");

    let store = EventStore::open_redb(&path).await?;
    store
        .register_event_types(CourseEvent::EVENT_TYPES.iter().copied().chain([
            "OrderPlaced",
            "OrderPaid",
            "OrderShipped",
        ]))
        .await?;
    store.set_strict_types(true).await?;
    println!("1. Strict event types are on; a misspelled type is refused:");
    match store
        .append(vec![NewEvent::new("OrderPayed", Vec::new())], None)
        .await
    {
        Err(e) => println!("   {e}\n"),
        Ok(_) => unreachable!("strict mode let a misspelled type through"),
    }

    // A live projection runs in the background while the deciders work.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let projector = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_projection(&Enrolments, ProjectionOptions::default(), async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };

    println!("2. Two courses with capacity {CAPACITY}; 8 students try to subscribe at once (concurrent deciders):");
    for course in ["rust", "dcb"] {
        store
            .append(
                vec![CourseEvent::Defined {
                    course: course.into(),
                    capacity: CAPACITY,
                }
                .to_new_event()?],
                None,
            )
            .await?;
    }
    let mut deciders = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let course = if i % 3 == 0 { "dcb" } else { "rust" };
        let student = format!("s{}", i % 6);
        deciders.push(tokio::spawn(async move {
            let r = subscribe(&store, course, &student).await;
            (course, student, r)
        }));
    }
    for d in deciders {
        let (course, student, r) = d.await.expect("decider panicked");
        match r {
            Ok(d) => println!(
                "   ✔ {student} → {course} at position {}{}",
                d.appended.map_or(0, |a| a.first_position),
                match d.attempts {
                    1 => String::new(),
                    n => format!(
                        " (decided {n} times: concurrent subscriptions changed the boundary)"
                    ),
                }
            ),
            Err(DecideError::Rejected(why)) => println!("   ✘ {student} → {course} refused: {why}"),
            Err(e) => return Err(e.into()),
        }
    }

    println!("\n3. An order stream with expected versions (optimistic locking):");
    let placed = store
        .append_to_stream(
            "order-42",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("OrderPlaced", b"{}".to_vec())],
        )
        .await?;
    println!(
        "   OrderPlaced → stream version {}",
        placed.stream_version.unwrap_or(0)
    );
    let v = placed.stream_version.unwrap_or(0);
    let (a, b) = tokio::join!(
        store.append_to_stream(
            "order-42",
            ExpectedVersion::Exact(v),
            vec![NewEvent::new("OrderPaid", b"{}".to_vec())]
        ),
        store.append_to_stream(
            "order-42",
            ExpectedVersion::Exact(v),
            vec![NewEvent::new("OrderShipped", b"{}".to_vec())]
        ),
    );
    for r in [a, b] {
        match r {
            Ok(r) => println!(
                "   ✔ won the race → version {}",
                r.stream_version.unwrap_or(0)
            ),
            Err(e) => println!("   ✘ lost the race: {e}"),
        }
    }
    let history = store
        .read_stream("order-42", ReadStreamOptions::new())
        .await?;
    println!(
        "   order-42 now reads: {}",
        history
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    );

    // Let the projection catch up, then show it.
    let head = store.head().await?;
    while store
        .projection_checkpoint("enrolments")
        .await?
        .unwrap_or(0)
        < head
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(());
    projector.await.expect("projector panicked")?;
    println!("\n4. The live projection (written exactly once, in the store itself):");
    for (k, v) in store
        .read_model("enrolments")
        .scan_prefix(b"course:")
        .await?
    {
        println!(
            "   {} → {} students",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }

    println!("\n5. A named subscription processes 3 events, stops, and resumes after a restart:");
    let mut sub = store
        .subscribe(SubscriptionOptions::named("mailer"))
        .await?;
    for _ in 0..3 {
        let e = sub.next().await?;
        println!("   mailer handled #{} {}", e.position, e.event_type);
        sub.ack(e.position).await?;
    }
    drop(sub);
    drop(store);
    // Reopen the file, as a restarted process would.
    let store = EventStore::open_redb(&path).await?;
    let mut sub = store
        .subscribe(SubscriptionOptions::named("mailer"))
        .await?;
    let next = sub.next().await?;
    println!(
        "   after the restart the mailer resumes at #{} (its checkpoint was {})",
        next.position,
        store.checkpoint("mailer").await?.unwrap_or(0)
    );

    let head = store.head().await?;
    println!("\nDone: {head} events in {path}, positions 1..={head} with no gaps.");
    Ok(())
}
