//! The DCB course-subscription decision in a few lines of user code:
//! typed events, and a decider that reads the consistency boundary, folds
//! it, decides, and appends on the condition that the boundary has not
//! changed since the read (re-deciding when it has).
//!
//! ```sh
//! cargo run --example dcb_courses
//! ```

use eskv::{DecideError, DomainEvent, EventStore, MemoryStore, Query};
use std::sync::Arc;

#[derive(Debug, DomainEvent)]
enum CourseEvent {
    #[eskv(type = "StudentSubscribed")]
    Subscribed {
        #[tag("course")]
        course: String,
        #[tag("student")]
        student: String,
    },
}

async fn subscribe(
    store: &EventStore,
    course: &str,
    student: &str,
    capacity: usize,
) -> Result<(), DecideError<&'static str>> {
    let boundary = Query::of(["StudentSubscribed"], vec![format!("course:{course}")]);
    let fold = |taken: &mut Vec<String>, CourseEvent::Subscribed { student, .. }: &_| {
        taken.push(student.clone())
    };
    let decision = store.decide(boundary, fold, |taken| match taken {
        t if t.iter().any(|s| s == student) => Err("already subscribed"),
        t if t.len() >= capacity => Err("course full"),
        _ => Ok(vec![CourseEvent::Subscribed {
            course: course.into(),
            student: student.into(),
        }]),
    });
    decision.await.map(drop)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            (i, subscribe(&store, "c1", &format!("s{i}"), 3).await)
        }));
    }
    for t in tasks {
        let (i, outcome) = t.await.expect("task panicked");
        match outcome {
            Ok(()) => println!("student s{i}: subscribed"),
            Err(DecideError::Rejected(why)) => println!("student s{i}: {why}"),
            Err(e) => return Err(e.into()),
        }
    }
    let n = store
        .read(
            &Query::of(["StudentSubscribed"], ["course:c1"]),
            eskv::ReadOptions::new(),
        )
        .await?
        .events
        .len();
    assert_eq!(n, 3);
    println!("course c1 has {n} students: never more than its capacity");
    Ok(())
}
