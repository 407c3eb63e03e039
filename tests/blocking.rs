//! The blocking facade from plain `#[test]`s (no async anywhere), on memory
//! and on a redb file, including several threads sharing one store.

use eskv::blocking::EventStore;
use eskv::{
    Boundary, DecideError, DecideOptions, Decision, DomainEvent, ExpectedVersion, Query,
    ReadOptions, ReadStreamOptions,
};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Ev {
    Placed {
        #[tag("order")]
        order: String,
    },
    Seat {
        #[tag("room")]
        room: String,
        #[tag("person")]
        person: String,
    },
}

struct Place(&'static str);
impl Decision for Place {
    type Event = Ev;
    type State = bool;
    type Error = &'static str;
    fn boundary(&self) -> Boundary {
        Boundary::Stream(format!("order-{}", self.0))
    }
    fn evolve(&self, placed: &mut bool, _: &Ev) {
        *placed = true;
    }
    fn decide(&self, &placed: &bool) -> Result<Vec<Ev>, &'static str> {
        if placed {
            return Err("already placed");
        }
        Ok(vec![Ev::Placed {
            order: self.0.into(),
        }])
    }
}

fn exercise(store: &EventStore) {
    let placed = Ev::Placed { order: "1".into() }.to_new_event().unwrap();
    let r = store
        .append_to_stream("order-1", ExpectedVersion::NoStream, vec![placed])
        .unwrap();
    assert_eq!(r.stream_version, Some(1));
    let again = store.append_to_stream(
        "order-1",
        ExpectedVersion::NoStream,
        vec![Ev::Placed { order: "1".into() }.to_new_event().unwrap()],
    );
    assert!(matches!(
        again,
        Err(eskv::Error::WrongExpectedVersion { .. })
    ));
    store
        .append(
            vec![Ev::Placed { order: "2".into() }.to_new_event().unwrap()],
            None,
        )
        .unwrap();
    assert_eq!(store.head().unwrap(), 2);
    let order2 = store
        .read(&Query::tags(["order:2"]), ReadOptions::new())
        .unwrap();
    assert_eq!(order2.events.len(), 1);
    assert_eq!(
        store
            .read_stream("order-1", ReadStreamOptions::new())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.read_all(ReadOptions::new()).unwrap().events.len(), 2);

    // Stream decision via a command, and via closures.
    let d = store.execute(&Place("3"), DecideOptions::new()).unwrap();
    assert_eq!(d.appended.unwrap().stream_version, Some(1));
    let again = store.execute(&Place("3"), DecideOptions::new());
    assert!(matches!(
        again,
        Err(DecideError::Rejected("already placed"))
    ));
    let r = store.decide_stream(
        "order-3",
        |n: &mut u32, _: &Ev| *n += 1,
        |&n| {
            Ok::<_, ()>(vec![Ev::Placed {
                order: format!("3.{n}"),
            }])
        },
    );
    assert_eq!(r.unwrap().appended.unwrap().stream_version, Some(2));
}

/// Four threads, five seats each wanted, three seats: exactly three win.
fn threads_share_one_store(store: &EventStore) {
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..5)
                        .filter(|i| {
                            store
                                .decide(
                                    Query::of(["Seat"], ["room:r1"]),
                                    |n: &mut usize, _: &Ev| *n += 1,
                                    |&n| {
                                        if n >= 3 {
                                            return Err("full");
                                        }
                                        Ok(vec![Ev::Seat {
                                            room: "r1".into(),
                                            person: format!("p{t}-{i}"),
                                        }])
                                    },
                                )
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 3);
    let seats = store
        .read(&Query::of(["Seat"], ["room:r1"]), ReadOptions::new())
        .unwrap();
    assert_eq!(seats.events.len(), 3);
}

#[test]
fn blocking_store_in_memory() {
    let store = EventStore::memory().unwrap();
    exercise(&store);
    threads_share_one_store(&store);
}

#[test]
fn blocking_store_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    {
        let store = EventStore::open_redb(&path).unwrap();
        exercise(&store);
        threads_share_one_store(&store);
    }
    // Reopened, the events are there.
    let store = EventStore::open_redb(&path).unwrap();
    assert_eq!(store.head().unwrap(), 7);
}

/// Version 2 of a deposit: cents and a currency.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Money {
    #[eskv(type = "Deposited", version = 2)]
    Deposited { cents: i64, currency: String },
}

/// The blocking store takes options: an upcaster registered there applies
/// to every read, and typed reads of old events succeed through it.
#[test]
fn blocking_store_with_options_upcasts() {
    use eskv::{EventStoreOptions, KvStore, MemoryStore, NewEvent};
    use std::sync::Arc;
    let kv = Arc::new(MemoryStore::new());
    let old = {
        let kv = kv.clone();
        EventStore::open(move || async move { Ok(kv as Arc<dyn KvStore>) }).unwrap()
    };
    let v1 = NewEvent::json("Deposited", &serde_json::json!({"cents": 5})).unwrap();
    old.append(vec![v1], None).unwrap();
    drop(old);
    let options = EventStoreOptions::default().upcast_json("Deposited", 1, |mut v| {
        v["currency"] = "EUR".into();
        Ok(v)
    });
    let store =
        EventStore::open_with(move || async move { Ok(kv as Arc<dyn KvStore>) }, options).unwrap();
    let events = store.read_all(ReadOptions::new()).unwrap().events;
    assert_eq!(
        events[0].to_typed::<Money>().unwrap(),
        Money::Deposited {
            cents: 5,
            currency: "EUR".into()
        }
    );
}

/// A store URL opens a blocking store as `eskv::open` opens an async one:
/// what one handle wrote, a read-only handle opened by URL reads back and
/// refuses to change; a path without a backend is refused with the forms.
#[test]
fn store_urls_open_blocking_stores() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("events.redb").display());
    {
        let store = eskv::blocking::open(&url).unwrap();
        store
            .append_to_stream(
                "order-1",
                ExpectedVersion::NoStream,
                vec![eskv::NewEvent::new("Placed", b"{}".to_vec())],
            )
            .unwrap();
    }
    let options = eskv::OpenOptions::default().read_only(true);
    let store = eskv::blocking::open_url(&url.parse().unwrap(), &options).unwrap();
    let read = store
        .read_stream("order-1", ReadStreamOptions::new())
        .unwrap();
    assert_eq!(read.version, 1);
    let refused = store.append_to_stream(
        "order-1",
        ExpectedVersion::Exact(1),
        vec![eskv::NewEvent::new("Placed", b"{}".to_vec())],
    );
    assert!(
        matches!(refused, Err(eskv::Error::ReadOnly { .. })),
        "{refused:?}"
    );
    let err = eskv::blocking::open("events.redb").unwrap_err();
    assert!(
        matches!(&err, eskv::Error::InvalidInput { .. }) && err.to_string().contains("redb:PATH"),
        "{err}"
    );
}
