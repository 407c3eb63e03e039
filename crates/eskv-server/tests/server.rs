//! Operations: health, limits, and graceful shutdown, through the
//! official UmaDB client against a real server over redb.

use eskv_core::EventStore;
use eskv_server::{Server, ServerConfig, ServerLimits};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use umadb_client::UmaDbClient;
use umadb_dcb::{DcbError, DcbEvent, DcbEventStoreAsync};

async fn redb_store(path: &std::path::Path) -> EventStore {
    let kv = eskv_redb::RedbStore::open(path).await.unwrap();
    EventStore::open(Arc::new(kv)).await.unwrap()
}

fn event(data: Vec<u8>) -> DcbEvent {
    DcbEvent {
        event_type: "Noted".into(),
        tags: vec!["t:1".into()],
        data,
        uuid: Some(uuid::Uuid::new_v4()),
        metadata: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_bound_messages_and_subscriptions_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ServerLimits::default()
        .max_message_bytes(64 << 10)
        .max_subscriptions_per_connection(2);
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap()).limits(limits);
    let server = Server::bind(redb_store(&dir.path().join("e.redb")).await, config)
        .await
        .unwrap()
        .spawn();
    let url = format!("http://{}", server.local_addr());
    let c = UmaDbClient::new(url.clone()).connect_async().await.unwrap();

    // A message over the limit is refused whole; one under it is fine.
    assert!(c
        .append(vec![event(vec![b'x'; 100 << 10])], None, None)
        .await
        .is_err());
    assert_eq!(c.head().await.unwrap(), None, "nothing was written");
    c.append(vec![event(vec![b'x'; 32 << 10])], None, None)
        .await
        .unwrap();
    // Reads of many events stay under the limit: they are split.
    for _ in 0..4 {
        c.append(vec![event(vec![b'y'; 30 << 10])], None, None)
            .await
            .unwrap();
    }
    let (all, _) = c.read_with_head(None, None, false, None).await.unwrap();
    assert_eq!(all.len(), 5);

    // Two subscriptions per connection; the third is refused until one
    // closes. Another connection has its own allowance.
    let s1 = c.subscribe(None, None).await.unwrap();
    let mut s2 = c.subscribe(None, None).await.unwrap();
    let third = c.subscribe(None, None).await;
    let third = match third {
        Ok(mut s) => s.next().await.map(|r| r.map(|_| ())),
        Err(e) => Some(Err(e)),
    };
    match third {
        Some(Err(DcbError::Io(e))) => assert!(e.to_string().contains("subscriptions"), "{e}"),
        other => panic!("expected the subscription limit, got {other:?}"),
    }
    let other = UmaDbClient::new(url).connect_async().await.unwrap();
    let mut s3 = other.subscribe(None, None).await.unwrap();
    assert_eq!(s3.next().await.unwrap().unwrap().position, 1);
    drop(s1);
    assert_eq!(s2.next().await.unwrap().unwrap().position, 1);
    let mut reopened = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        // The slot is given back once the server sees the stream closed.
        match c.subscribe(None, None).await {
            Ok(mut s) => match s.next().await {
                Some(Ok(e)) => {
                    reopened = Some(e.position);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(reopened, Some(1));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscriptions_finishes_cleanly_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.redb");
    let server = Server::bind(
        redb_store(&path).await,
        ServerConfig::new("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap()
    .spawn();
    let c = UmaDbClient::new(format!("http://{}", server.local_addr()))
        .connect_async()
        .await
        .unwrap();
    for service in ["", "umadb.v1.DCB", "event_store.client.streams.Streams"] {
        let status = c.check_health(service).await.unwrap();
        assert_eq!(format!("{status:?}"), "Serving", "{service:?}");
    }
    c.append(vec![event(b"{}".to_vec())], None, None)
        .await
        .unwrap();
    let mut sub = c.subscribe(None, None).await.unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap().position, 1);
    // Shutdown does not wait for the live subscription: the server ends
    // it, and returns.
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("graceful shutdown completes with a subscription open")
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    drop((sub, c));
    // The store was closed: the file opens again, with the event in it.
    let store = redb_store(&path).await;
    assert_eq!(store.head().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_an_open_batch_append_or_a_client_that_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.redb");
    let limits = ServerLimits::default().stream_buffer(1);
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap()).limits(limits);
    let server = Server::bind(redb_store(&path).await, config)
        .await
        .unwrap()
        .spawn();
    let port = server.local_addr().port();
    let kurrent = kurrentdb::Client::new(
        format!("kurrentdb://127.0.0.1:{port}?tls=false")
            .parse()
            .unwrap(),
    )
    .unwrap();
    // More than the client's HTTP/2 windows hold: a subscription that is
    // not read blocks the server's sends.
    let big = serde_json::json!({ "pad": "x".repeat(200 << 10) });
    for _ in 0..4 {
        let events = (0..10)
            .map(|_| kurrentdb::EventData::json("Big", &big).unwrap())
            .collect::<Vec<_>>();
        kurrent
            .append_to_stream("big", &Default::default(), events)
            .await
            .unwrap();
    }
    // A BatchAppend call, used once and held open.
    let batch = kurrent.batch_append(&Default::default()).await.unwrap();
    batch
        .append_to_stream(
            "batched",
            kurrentdb::StreamState::Any,
            vec![kurrentdb::EventData::json("Small", &serde_json::json!({})).unwrap()],
        )
        .await
        .unwrap();
    // A catch-up subscription and a subscribing DCB read, each read once
    // and then left alone.
    let mut sub = kurrent.subscribe_to_all(&Default::default()).await;
    sub.next().await.unwrap();
    let dcb = UmaDbClient::new(format!("http://127.0.0.1:{port}"))
        .connect_async()
        .await
        .unwrap();
    let mut dcb_sub = dcb.subscribe(None, None).await.unwrap();
    dcb_sub.next().await.unwrap().unwrap();
    // Let the server fill its queues and the windows.
    tokio::time::sleep(Duration::from_millis(500)).await;

    tokio::time::timeout(Duration::from_secs(15), server.shutdown())
        .await
        .expect("shutdown finishes with a batch append open and clients not reading")
        .unwrap();
    drop((batch, sub, dcb_sub, dcb, kurrent));
    let store = redb_store(&path).await;
    assert_eq!(store.head().await.unwrap(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_batch_append_and_a_subscription_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.redb");
    // No help from the grace: the calls themselves must end.
    let limits = ServerLimits::default()
        .stream_buffer(1)
        .shutdown_grace(Duration::from_secs(600));
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap()).limits(limits);
    let server = Server::bind(redb_store(&path).await, config)
        .await
        .unwrap()
        .spawn();
    let port = server.local_addr().port();
    let kurrent = kurrentdb::Client::new(
        format!("kurrentdb://127.0.0.1:{port}?tls=false")
            .parse()
            .unwrap(),
    )
    .unwrap();
    let events = (0..200)
        .map(|_| kurrentdb::EventData::json("Small", &serde_json::json!({})).unwrap())
        .collect::<Vec<_>>();
    kurrent
        .append_to_stream("small", &Default::default(), events)
        .await
        .unwrap();
    let batch = kurrent.batch_append(&Default::default()).await.unwrap();
    batch
        .append_to_stream(
            "batched",
            kurrentdb::StreamState::Any,
            vec![kurrentdb::EventData::json("Small", &serde_json::json!({})).unwrap()],
        )
        .await
        .unwrap();
    let mut sub = kurrent.subscribe_to_all(&Default::default()).await;
    sub.next().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown ends the open calls itself")
        .unwrap();
    drop((batch, sub, kurrent));
}
