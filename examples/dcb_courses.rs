//! The DCB course-subscription decision in a few lines of user code:
//! read the consistency boundary, decide, append on the condition that the
//! boundary has not changed since the read.
//!
//! ```sh
//! cargo run --example dcb_courses
//! ```

use eskv::{
    AppendCondition, Error, EventStore, MemoryStore, NewEvent, Query, QueryItem, ReadOptions,
};
use std::sync::Arc;

async fn subscribe(
    store: &EventStore,
    course: &str,
    student: &str,
    capacity: usize,
) -> eskv::Result<bool> {
    let boundary = Query::item(
        QueryItem::new()
            .types(["StudentSubscribed"])
            .tags([format!("course:{course}")]),
    );
    loop {
        let seen = store.read(&boundary, ReadOptions::new()).await?;
        let already = seen
            .events
            .iter()
            .any(|e| e.tags.contains(&format!("student:{student}")));
        if already || seen.events.len() >= capacity {
            return Ok(false);
        }
        let event = NewEvent::new("StudentSubscribed", Vec::new())
            .with_tags([format!("course:{course}"), format!("student:{student}")]);
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
            Ok(_) => return Ok(true),
            Err(Error::ConditionFailed { .. }) => continue, // someone else decided first: decide again
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main]
async fn main() -> eskv::Result<()> {
    let store = EventStore::open(Arc::new(MemoryStore::new())).await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            (i, subscribe(&store, "c1", &format!("s{i}"), 3).await)
        }));
    }
    for t in tasks {
        let (i, admitted) = t.await.expect("task panicked");
        println!(
            "student s{i}: {}",
            if admitted? {
                "subscribed"
            } else {
                "course full"
            }
        );
    }
    let n = store
        .read(
            &Query::of(["StudentSubscribed"], ["course:c1"]),
            ReadOptions::new(),
        )
        .await?
        .events
        .len();
    assert_eq!(n, 3);
    println!("course c1 has {n} students: never more than its capacity");
    Ok(())
}
