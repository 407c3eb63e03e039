//! The eskv demo: course subscriptions decided with DCB, an order stream
//! with expected versions, a live projection, and a restart that resumes
//! from its checkpoint — all on an embedded redb file, no setup.
//!
//! ```sh
//! cargo run --release --example demo            # uses ./eskv-demo.redb
//! cargo run --release --example demo -- my.redb # or a file of your choice
//! ```

use eskv::redb::RedbStore;
use eskv::{
    AppendCondition, Error, EventStore, ExpectedVersion, NewEvent, Projection, ProjectionOptions,
    ProjectionState, Query, QueryItem, ReadOptions, ReadStreamOptions, RecordedEvent,
    SubscriptionFilter, SubscriptionOptions,
};
use std::sync::Arc;
use std::time::Duration;

const CAPACITY: usize = 3;

/// Enrolment counts per course, kept exactly once in the same store.
struct Enrolments;

#[async_trait::async_trait]
impl Projection for Enrolments {
    fn name(&self) -> &str {
        "enrolments"
    }
    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::Query(Query::of(["StudentSubscribed"], Vec::<String>::new()))
    }
    async fn apply(&self, e: &RecordedEvent, state: &mut ProjectionState<'_>) -> eskv::Result<()> {
        for course in e.tags.iter().filter(|t| t.starts_with("course:")) {
            let n: u64 = state.get_json(course.as_bytes()).await?.unwrap_or(0);
            state.put_json(course.as_bytes(), &(n + 1))?;
        }
        Ok(())
    }
}

/// The DCB decision "may `student` subscribe to `course`?": read the
/// boundary, decide, append on the condition that the boundary did not
/// change since the read.
async fn subscribe(
    store: &EventStore,
    course: &str,
    student: &str,
) -> eskv::Result<Result<u64, String>> {
    let course_tag = format!("course:{course}");
    let student_tag = format!("student:{student}");
    let boundary = Query::item(
        QueryItem::new()
            .types(["CourseDefined", "StudentSubscribed"])
            .tags([&course_tag]),
    )
    .or(QueryItem::new()
        .types(["StudentSubscribed"])
        .tags([&student_tag]));
    let mut retries = 0;
    loop {
        let seen = store.read(&boundary, ReadOptions::new()).await?;
        let taken = seen
            .events
            .iter()
            .filter(|e| e.event_type == "StudentSubscribed" && e.tags.contains(&course_tag))
            .count();
        let mine = seen
            .events
            .iter()
            .filter(|e| e.event_type == "StudentSubscribed" && e.tags.contains(&student_tag))
            .count();
        let again = seen.events.iter().any(|e| {
            e.event_type == "StudentSubscribed"
                && e.tags.contains(&course_tag)
                && e.tags.contains(&student_tag)
        });
        if again {
            return Ok(Err(format!("{student} is already in {course}")));
        }
        if taken >= CAPACITY {
            return Ok(Err(format!("{course} is full ({taken}/{CAPACITY})")));
        }
        if mine >= 2 {
            return Ok(Err(format!("{student} already has 2 courses")));
        }
        let event = NewEvent::json(
            "StudentSubscribed",
            &serde_json::json!({"course": course, "student": student}),
        )?
        .with_tags([course_tag.clone(), student_tag.clone()]);
        match store
            .append(
                vec![event],
                Some(AppendCondition::new(
                    boundary.clone(),
                    Some(seen.consistent_through),
                )),
            )
            .await
        {
            Ok(r) => return Ok(Ok(r.first_position)),
            Err(Error::ConditionFailed { position, .. }) => {
                retries += 1;
                println!(
                    "    · {student} → {course}: decision rejected, event {position} changed the boundary; re-deciding (retry {retries})"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main]
async fn main() -> eskv::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "eskv-demo.redb".into());
    let _ = std::fs::remove_file(&path);
    println!("eskv demo on {path}\n");

    let kv = Arc::new(RedbStore::open(&path).await?);
    let store = EventStore::open(kv).await?;
    store
        .register_event_types([
            "CourseDefined",
            "StudentSubscribed",
            "OrderPlaced",
            "OrderPaid",
            "OrderShipped",
        ])
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
                vec![
                    NewEvent::json("CourseDefined", &serde_json::json!({"capacity": CAPACITY}))?
                        .with_tags([format!("course:{course}")]),
                ],
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
        match r? {
            Ok(pos) => println!("   ✔ {student} → {course} at position {pos}"),
            Err(why) => println!("   ✘ {student} → {course} refused: {why}"),
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
    let store = EventStore::open(Arc::new(RedbStore::open(&path).await?)).await?;
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
