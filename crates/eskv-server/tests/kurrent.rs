//! The official KurrentDB Rust client (`kurrentdb`), unchanged, against a
//! real eskv server on 127.0.0.1 over a redb file, with a
//! `kurrentdb://host:port?tls=false` connection string.

use eskv_core::EventStore;
use eskv_server::{Credential, Server, ServerConfig, ServerHandle};
use kurrentdb::{
    AppendToStreamOptions, Client, CurrentRevision, DeleteStreamOptions, EventData, Position,
    ReadAllOptions, ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions,
    SubscribeToStreamOptions, SubscriptionEvent, SubscriptionFilter, TombstoneStreamOptions,
};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

async fn redb_store(dir: &tempfile::TempDir) -> EventStore {
    let kv = eskv_redb::RedbStore::open(dir.path().join("events.redb"))
        .await
        .unwrap();
    EventStore::open(Arc::new(kv)).await.unwrap()
}

async fn start(store: EventStore, config: ServerConfig) -> ServerHandle {
    Server::bind(store, config).await.unwrap().spawn()
}

fn local() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0".parse().unwrap())
}

fn client(h: &ServerHandle, user: Option<&str>) -> Client {
    let auth = user.map_or(String::new(), |u| format!("{u}@"));
    let url = format!(
        "kurrentdb://{auth}127.0.0.1:{}?tls=false",
        h.local_addr().port()
    );
    Client::new(url.parse().unwrap()).unwrap()
}

fn ev(t: &str, n: u32) -> EventData {
    EventData::json(t, &serde_json::json!({ "n": n }))
        .unwrap()
        .id(Uuid::new_v4())
}

/// What the client returned for one event (its `RecordedEvent` is not
/// `Clone`).
#[derive(Debug)]
struct Got {
    id: Uuid,
    stream_id: String,
    revision: u64,
    event_type: String,
    data: Vec<u8>,
    metadata: std::collections::HashMap<String, String>,
    custom_metadata: Vec<u8>,
    is_json: bool,
    position: Position,
}

impl Got {
    fn of(e: &kurrentdb::RecordedEvent) -> Self {
        Got {
            id: e.id,
            stream_id: e.stream_id().to_owned(),
            revision: e.revision,
            event_type: e.event_type.clone(),
            data: e.data.to_vec(),
            metadata: e.metadata.clone(),
            custom_metadata: e.custom_metadata.to_vec(),
            is_json: e.is_json,
            position: e.position,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.data).unwrap()
    }
}

async fn read_stream(c: &Client, s: &str, opts: &ReadStreamOptions) -> Vec<Got> {
    let mut r = c.read_stream(s, opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next().await.unwrap() {
        out.push(Got::of(e.get_original_event()));
    }
    out
}

async fn read_all(c: &Client, opts: &ReadAllOptions) -> Vec<Got> {
    let mut r = c.read_all(opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next().await.unwrap() {
        out.push(Got::of(e.get_original_event()));
    }
    out
}

async fn next_event(sub: &mut kurrentdb::Subscription) -> Got {
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .unwrap();
    Got::of(e.get_original_event())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurrentdb_client_appends_reads_and_subscribes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(redb_store(&dir).await, local()).await;
    let a = client(&server, None);
    let b = client(&server, None);

    // Expected revisions: revisions count from 0.
    let first = ev("OrderPlaced", 1).metadata(b"\x00raw custom bytes\xff".to_vec().into());
    let first_id = Uuid::new_v4();
    let first = first.id(first_id);
    let w = a
        .append_to_stream(
            "order-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![first.clone()],
        )
        .await
        .unwrap();
    assert_eq!(w.next_expected_version, 0);
    assert_eq!(w.position.commit, 1);
    let w = a
        .append_to_stream(
            "order-1",
            &AppendToStreamOptions::default().stream_state(StreamState::StreamRevision(0)),
            vec![ev("OrderPaid", 2), ev("OrderShipped", 3)],
        )
        .await
        .unwrap();
    assert_eq!(w.next_expected_version, 2);
    // A stale writer gets the wrong-expected-version error, with the
    // stream's actual revision.
    match b
        .append_to_stream(
            "order-1",
            &AppendToStreamOptions::default().stream_state(StreamState::StreamRevision(0)),
            vec![ev("OrderCancelled", 4)],
        )
        .await
    {
        Err(kurrentdb::Error::WrongExpectedVersion { current, expected }) => {
            assert_eq!(current, CurrentRevision::Current(2));
            assert_eq!(expected, StreamState::StreamRevision(0));
        }
        other => panic!("expected a wrong expected version, got {other:?}"),
    }
    assert!(matches!(
        b.append_to_stream(
            "order-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![ev("OrderPlaced", 5)],
        )
        .await,
        Err(kurrentdb::Error::WrongExpectedVersion {
            current: CurrentRevision::Current(2),
            ..
        })
    ));
    assert!(matches!(
        b.append_to_stream(
            "order-2",
            &AppendToStreamOptions::default().stream_state(StreamState::StreamExists),
            vec![ev("OrderPlaced", 6)],
        )
        .await,
        Err(kurrentdb::Error::WrongExpectedVersion {
            current: CurrentRevision::NoStream,
            ..
        })
    ));
    // An idempotent retry: the same event id and content again, with the
    // same expected revision, succeeds without writing twice.
    let retry = a
        .append_to_stream(
            "order-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![first.clone()],
        )
        .await
        .unwrap();
    assert_eq!(retry.next_expected_version, 0);
    b.append_to_stream(
        "order-2",
        &AppendToStreamOptions::default(),
        vec![ev("OrderPlaced", 7)],
    )
    .await
    .unwrap();

    // Reads both ways; ids, content type and custom metadata byte-exact.
    let fwd = read_stream(&a, "order-1", &ReadStreamOptions::default()).await;
    assert_eq!(
        fwd.iter()
            .map(|e| (e.revision, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [(0, "OrderPlaced"), (1, "OrderPaid"), (2, "OrderShipped")]
    );
    assert_eq!(fwd[0].id, first_id);
    assert!(fwd[0].is_json);
    assert_eq!(&fwd[0].custom_metadata[..], b"\x00raw custom bytes\xff");
    assert_eq!(
        fwd[0].metadata.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(fwd[0].json(), serde_json::json!({"n": 1}));
    let back = read_stream(
        &a,
        "order-1",
        &ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(2),
    )
    .await;
    assert_eq!(back.iter().map(|e| e.revision).collect::<Vec<_>>(), [2, 1]);
    let from1 = read_stream(
        &a,
        "order-1",
        &ReadStreamOptions::default().position(StreamPosition::Position(1)),
    )
    .await;
    assert_eq!(from1.iter().map(|e| e.revision).collect::<Vec<_>>(), [1, 2]);
    let missing = a
        .read_stream("nope", &ReadStreamOptions::default())
        .await
        .unwrap()
        .next()
        .await;
    assert!(
        matches!(missing, Err(kurrentdb::Error::ResourceNotFound)),
        "{missing:?}"
    );
    let binary = EventData::binary("Blob", vec![1u8, 2, 3].into()).id(Uuid::new_v4());
    a.append_to_stream("blob-1", &AppendToStreamOptions::default(), vec![binary])
        .await
        .unwrap();
    let blob = read_stream(&a, "blob-1", &ReadStreamOptions::default()).await;
    assert!(!blob[0].is_json);
    assert_eq!(&blob[0].data[..], [1, 2, 3]);

    let all = read_all(&a, &ReadAllOptions::default()).await;
    assert_eq!(
        all.iter().map(|e| e.position.commit).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let all_back = read_all(
        &a,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(2),
    )
    .await;
    assert_eq!(
        all_back
            .iter()
            .map(|e| e.position.commit)
            .collect::<Vec<_>>(),
        [5, 4]
    );
    let from3 = read_all(
        &a,
        &ReadAllOptions::default().position(StreamPosition::Position(Position {
            commit: 3,
            prepare: 3,
        })),
    )
    .await;
    assert_eq!(
        from3.iter().map(|e| e.position.commit).collect::<Vec<_>>(),
        [3, 4, 5]
    );

    // Catch-up subscription to a stream: history, then another client's
    // append, live.
    let mut sub = a
        .subscribe_to_stream(
            "order-2",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    assert_eq!(next_event(&mut sub).await.event_type, "OrderPlaced");
    b.append_to_stream(
        "order-2",
        &AppendToStreamOptions::default().stream_state(StreamState::StreamRevision(0)),
        vec![ev("OrderPaid", 8)],
    )
    .await
    .unwrap();
    let live = next_event(&mut sub).await;
    assert_eq!((live.revision, live.event_type.as_str()), (1, "OrderPaid"));

    // Resuming: a stream subscription from revision r starts after it; a
    // $all subscription from position p starts after p.
    let mut resumed = a
        .subscribe_to_stream(
            "order-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(1)),
        )
        .await;
    assert_eq!(next_event(&mut resumed).await.revision, 2);
    let mut resumed_all = a
        .subscribe_to_all(
            &SubscribeToAllOptions::default().position(StreamPosition::Position(Position {
                commit: 4,
                prepare: 4,
            })),
        )
        .await;
    assert_eq!(next_event(&mut resumed_all).await.position.commit, 5);
    drop((resumed, resumed_all));

    // $all with a server-side filter on the event type prefix: only
    // matching events, plus checkpoints.
    let filter = SubscriptionFilter::on_event_type().add_prefix("OrderPa");
    let mut all_sub = a
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(filter))
        .await;
    let mut got = Vec::new();
    let mut checkpoints = 0;
    while got.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), all_sub.next_subscription_event())
            .await
            .expect("subscription events within 10 s")
            .unwrap();
        match e {
            SubscriptionEvent::EventAppeared(e) => {
                got.push(e.get_original_event().event_type.clone())
            }
            SubscriptionEvent::Checkpoint(_) => checkpoints += 1,
            SubscriptionEvent::CaughtUp(_) => {
                b.append_to_stream(
                    "order-3",
                    &AppendToStreamOptions::default(),
                    vec![ev("OrderPaid", 9)],
                )
                .await
                .unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(got, ["OrderPaid", "OrderPaid", "OrderPaid"]);
    assert!(
        checkpoints >= 1,
        "a filtered $all subscription sends checkpoints"
    );

    // Stream-name prefix filter on $all.
    let by_stream = SubscriptionFilter::on_stream_name().add_prefix("blob-");
    let mut blob_sub = a
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(by_stream))
        .await;
    assert_eq!(next_event(&mut blob_sub).await.stream_id, "blob-1");

    drop((sub, all_sub, blob_sub));
    server.shutdown().await.unwrap();
}

/// What a read of a whole stream ended with: its events, or the error.
async fn read_stream_result(c: &Client, s: &str) -> Result<Vec<Got>, kurrentdb::Error> {
    let mut r = c.read_stream(s, &ReadStreamOptions::default()).await?;
    let mut out = Vec::new();
    while let Some(e) = r.next().await? {
        out.push(Got::of(e.get_original_event()));
    }
    Ok(out)
}

fn delete_at(state: StreamState) -> DeleteStreamOptions {
    DeleteStreamOptions::default().stream_state(state)
}

fn tombstone_at(state: StreamState) -> TombstoneStreamOptions {
    TombstoneStreamOptions::default().stream_state(state)
}

/// A delete or tombstone refused for its expected revision, as the client
/// reports KurrentDB's status: the message names expected and actual.
/// (The client's `tonic` is another major version than the server's, so
/// the code is compared by name.)
fn assert_wrong_version<T: std::fmt::Debug>(
    r: kurrentdb::Result<T>,
    expected: impl std::fmt::Display,
    actual: i64,
) {
    match r {
        Err(kurrentdb::Error::Grpc { code, message })
            if format!("{code:?}") == "FailedPrecondition"
                && message.contains("WrongExpectedVersion")
                && message.contains(&format!(
                    "Expected version: {expected}, Actual version: {actual}"
                )) => {}
        other => panic!("expected a wrong expected version {expected}/{actual}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurrentdb_client_deletes_and_tombstones_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(redb_store(&dir).await, local()).await;
    let c = client(&server, None);
    let appended = c
        .append_to_stream(
            "cart-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![ev("ItemAdded", 1), ev("ItemAdded", 2)],
        )
        .await
        .unwrap();
    assert_eq!(appended.next_expected_version, 1);

    // Expected revisions: a stale one, and no_stream on a live stream.
    assert_wrong_version(
        c.delete_stream("cart-1", &delete_at(StreamState::StreamRevision(0)))
            .await,
        0,
        1,
    );
    assert_wrong_version(
        c.delete_stream("cart-1", &delete_at(StreamState::NoStream))
            .await,
        -1,
        1,
    );
    assert_eq!(read_stream_result(&c, "cart-1").await.unwrap().len(), 2);

    // Soft delete at the right revision: the position is the system event's.
    let deleted = c
        .delete_stream("cart-1", &delete_at(StreamState::StreamRevision(1)))
        .await
        .unwrap()
        .expect("a delete that wrote has a position");
    assert!(deleted.commit > appended.position.commit);
    assert_eq!(deleted.commit, deleted.prepare);
    match read_stream_result(&c, "cart-1").await {
        Err(kurrentdb::Error::ResourceNotFound) => {}
        other => panic!("a soft-deleted stream reads as not found, got {other:?}"),
    }
    // $all shows the lifecycle event where the delete said, and the client
    // reads past it.
    let all = read_all(&c, &ReadAllOptions::default()).await;
    let marker = all
        .iter()
        .find(|e| e.event_type == "$stream-deleted")
        .expect("the delete's system event is in $all");
    assert_eq!(marker.position.commit, deleted.commit);
    assert_eq!(marker.json()["stream"], "cart-1");
    assert!(marker.stream_id.starts_with('$'), "{}", marker.stream_id);
    assert!(
        all.iter().all(|e| e.stream_id != "cart-1"),
        "$all skips the deleted stream's events"
    );
    // Nothing left to delete: `any` succeeds without writing, as in
    // KurrentDB; `stream_exists` is told the stream is deleted.
    assert_eq!(
        c.delete_stream("cart-1", &delete_at(StreamState::Any))
            .await
            .unwrap(),
        None
    );
    match c
        .delete_stream("cart-1", &delete_at(StreamState::StreamExists))
        .await
    {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("stream_exists on a deleted stream is deleted, got {other:?}"),
    }
    // A stream that never existed: an exact revision is refused with an
    // actual version of -1.
    assert_wrong_version(
        c.delete_stream("never-1", &delete_at(StreamState::StreamRevision(0)))
            .await,
        0,
        -1,
    );

    // Appending re-creates it; revisions continue after the deleted ones.
    let again = c
        .append_to_stream(
            "cart-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![ev("ItemAdded", 3)],
        )
        .await
        .unwrap();
    assert_eq!(again.next_expected_version, 2);
    let live = read_stream_result(&c, "cart-1").await.unwrap();
    assert_eq!(
        live.iter()
            .map(|e| (e.revision, e.json()["n"].as_u64()))
            .collect::<Vec<_>>(),
        [(2, Some(3))]
    );

    // Tombstone: refused at a stale revision, then final.
    assert_wrong_version(
        c.tombstone_stream("cart-1", &tombstone_at(StreamState::StreamRevision(1)))
            .await,
        1,
        2,
    );
    let tombstoned = c
        .tombstone_stream("cart-1", &tombstone_at(StreamState::StreamRevision(2)))
        .await
        .unwrap()
        .expect("a tombstone has a position");
    assert!(tombstoned.commit > again.position.commit);
    match read_stream_result(&c, "cart-1").await {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("a tombstoned stream reads as deleted, got {other:?}"),
    }
    for state in [StreamState::Any, StreamState::NoStream] {
        match c
            .append_to_stream(
                "cart-1",
                &AppendToStreamOptions::default().stream_state(state),
                vec![ev("ItemAdded", 4)],
            )
            .await
        {
            Err(kurrentdb::Error::ResourceDeleted) => {}
            other => panic!("appending to a tombstoned stream is deleted, got {other:?}"),
        }
    }
    match c
        .delete_stream("cart-1", &delete_at(StreamState::Any))
        .await
    {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("deleting a tombstoned stream is deleted, got {other:?}"),
    }
    match c
        .tombstone_stream("cart-1", &tombstone_at(StreamState::Any))
        .await
    {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("tombstoning twice is deleted, got {other:?}"),
    }
    // Tombstoning a stream that never existed reserves its name.
    c.tombstone_stream("never-2", &tombstone_at(StreamState::NoStream))
        .await
        .unwrap();
    match c
        .append_to_stream(
            "never-2",
            &AppendToStreamOptions::default(),
            vec![ev("X", 1)],
        )
        .await
    {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("a tombstoned name stays deleted, got {other:?}"),
    }

    // A stream subscription ends with the stream-deleted error: at once on
    // a tombstoned stream, and when a live one's stream is tombstoned.
    let sub_err = |mut sub: kurrentdb::Subscription| async move {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an answer within 10 s")
    };
    let dead = c
        .subscribe_to_stream("cart-1", &SubscribeToStreamOptions::default())
        .await;
    match sub_err(dead).await {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("subscribing to a tombstoned stream is deleted, got {other:?}"),
    }
    c.append_to_stream(
        "cart-2",
        &AppendToStreamOptions::default(),
        vec![ev("ItemAdded", 1)],
    )
    .await
    .unwrap();
    let mut live = c
        .subscribe_to_stream(
            "cart-2",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    assert_eq!(next_event(&mut live).await.stream_id, "cart-2");
    c.tombstone_stream("cart-2", &tombstone_at(StreamState::StreamRevision(0)))
        .await
        .unwrap();
    match sub_err(live).await {
        Err(kurrentdb::Error::ResourceDeleted) => {}
        other => panic!("a live subscription ends when its stream is tombstoned, got {other:?}"),
    }

    // A $all subscription from the start delivers the lifecycle events in
    // order with everything else.
    let mut sub = c
        .subscribe_to_all(&SubscribeToAllOptions::default().position(StreamPosition::Start))
        .await;
    // (The deleted and tombstoned streams' own events are skipped.)
    let mut types = Vec::new();
    while types.iter().filter(|t| *t == "$stream-tombstoned").count() < 3 {
        types.push(next_event(&mut sub).await.event_type);
    }
    assert_eq!(
        types,
        [
            "$stream-deleted",
            "$stream-tombstoned",
            "$stream-tombstoned",
            "$stream-tombstoned"
        ]
    );
    drop(sub);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_authenticate_and_pick_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = local()
        .credential(Credential::basic("alice", "pw-a", Some("tenant-a")))
        .credential(Credential::basic("bob", "pw-b", Some("tenant-b")));
    let server = start(redb_store(&dir).await, config).await;
    for user in [None, Some("alice:wrong"), Some("mallory:pw-a")] {
        let c = client(&server, user);
        let r = c
            .append_to_stream("x-1", &AppendToStreamOptions::default(), vec![ev("X", 0)])
            .await;
        assert!(
            matches!(r, Err(kurrentdb::Error::AccessDenied)),
            "{user:?}: {r:?}"
        );
    }
    let alice = client(&server, Some("alice:pw-a"));
    let bob = client(&server, Some("bob:pw-b"));
    alice
        .append_to_stream(
            "account-1",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![ev("Opened", 1)],
        )
        .await
        .unwrap();
    // Bob's tenant has no such stream: he cannot read alice's events, and
    // his "new stream" append does not collide with hers.
    let r = bob
        .read_stream("account-1", &ReadStreamOptions::default())
        .await
        .unwrap()
        .next()
        .await;
    assert!(
        matches!(r, Err(kurrentdb::Error::ResourceNotFound)),
        "{r:?}"
    );
    assert!(read_all(&bob, &ReadAllOptions::default()).await.is_empty());
    bob.append_to_stream(
        "account-1",
        &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
        vec![ev("Opened", 2)],
    )
    .await
    .unwrap();
    let mine = read_all(&alice, &ReadAllOptions::default()).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].json()["n"], 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_tombstone_report_the_clients_own_huge_expected_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(redb_store(&dir).await, local()).await;
    let c = client(&server, None);
    c.append_to_stream(
        "huge-1",
        &AppendToStreamOptions::default(),
        vec![ev("ItemAdded", 1), ev("ItemAdded", 2)],
    )
    .await
    .unwrap();
    // Revisions past i64::MAX: no overflow, and never reported as one of
    // the legacy negative numbers (-2 is "any").
    for rev in [i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
        assert_wrong_version(
            c.delete_stream("huge-1", &delete_at(StreamState::StreamRevision(rev)))
                .await,
            rev,
            1,
        );
        assert_wrong_version(
            c.tombstone_stream("huge-1", &tombstone_at(StreamState::StreamRevision(rev)))
                .await,
            rev,
            1,
        );
    }
    assert_eq!(read_stream_result(&c, "huge-1").await.unwrap().len(), 2);
    server.shutdown().await.unwrap();
}
