//! Requests the official clients never send, through a bare gRPC client
//! against a real eskv server on 127.0.0.1 over a redb file: a subscribing
//! DCB `Read` from a start past the head, and BatchAppend chunks that are
//! not final.

// The server's own generated messages (its `proto` module is private).
#[path = "../src/proto.rs"]
mod proto;

use eskv_core::{EventStore, EventStoreOptions, Limits};
use eskv_server::{Server, ServerConfig, ServerHandle};
use proto::event_store::client::streams::{batch_append_req, batch_append_resp, BatchAppendReq};
use proto::event_store::client::{uuid, StreamIdentifier, Uuid};
use proto::umadb::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

async fn redb_store(dir: &tempfile::TempDir, limits: Limits) -> EventStore {
    let kv = eskv_redb::RedbStore::open(dir.path().join("events.redb"))
        .await
        .unwrap();
    EventStore::open_with(Arc::new(kv), EventStoreOptions::default().limits(limits))
        .await
        .unwrap()
}

async fn start(store: EventStore) -> ServerHandle {
    Server::bind(store, ServerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
        .spawn()
}

async fn grpc(h: &ServerHandle) -> Grpc<Channel> {
    let ch = Channel::from_shared(format!("http://{}", h.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Grpc::new(ch)
}

fn dcb_event(n: u32) -> pb::Event {
    pb::Event {
        event_type: "Noted".into(),
        tags: vec![format!("n:{n}")],
        data: b"{}".to_vec(),
        ..Default::default()
    }
}

async fn dcb_append(g: &mut Grpc<Channel>, events: Vec<pb::Event>) -> u64 {
    g.ready().await.unwrap();
    let r: tonic::Response<pb::AppendResponse> = g
        .unary(
            tonic::Request::new(pb::AppendRequest {
                events,
                ..Default::default()
            }),
            PathAndQuery::from_static("/umadb.v1.DCB/Append"),
            ProstCodec::default(),
        )
        .await
        .unwrap();
    r.into_inner().position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_read_from_a_start_past_the_head_skips_events_before_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(redb_store(&dir, Limits::default()).await).await;
    let mut g = grpc(&server).await;
    assert_eq!(
        dcb_append(&mut g, (1..=10).map(dcb_event).collect()).await,
        10
    );

    g.ready().await.unwrap();
    let mut read: tonic::Streaming<pb::ReadResponse> = g
        .server_streaming(
            tonic::Request::new(pb::ReadRequest {
                start: Some(100),
                subscribe: Some(true),
                ..Default::default()
            }),
            PathAndQuery::from_static("/umadb.v1.DCB/Read"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    // Events 11..=105 arrive after the read started: only 100.. are its.
    for n in 11..=105 {
        dcb_append(&mut g, vec![dcb_event(n)]).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(10), read.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the subscription stays open");
        seen.extend(msg.events.iter().map(|e| e.position));
    }
    assert_eq!(seen, [100, 101, 102, 103, 104, 105]);
    drop(read);
    server.shutdown().await.unwrap();
}

fn corr(id: &str) -> Option<Uuid> {
    Some(Uuid {
        value: Some(uuid::Value::String(id.into())),
    })
}

fn proposed() -> batch_append_req::ProposedMessage {
    batch_append_req::ProposedMessage {
        id: Some(Uuid {
            value: Some(uuid::Value::String(::uuid::Uuid::new_v4().to_string())),
        }),
        metadata: [
            ("type".to_string(), "Noted".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ]
        .into(),
        custom_metadata: Vec::new(),
        data: b"{}".to_vec(),
    }
}

fn options(stream: &str) -> Option<batch_append_req::Options> {
    Some(batch_append_req::Options {
        stream_identifier: Some(StreamIdentifier {
            stream_name: stream.as_bytes().to_vec(),
        }),
        expected_stream_position: Some(batch_append_req::options::ExpectedStreamPosition::Any(())),
        deadline_option: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_answers_a_correlation_id_over_the_limit_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.max_events_per_append = 3;
    let server = start(redb_store(&dir, limits).await).await;
    let mut g = grpc(&server).await;
    let a = "8a3c1e5e-0000-4000-8000-00000000000a";
    let b = "8a3c1e5e-0000-4000-8000-00000000000b";
    let reqs = vec![
        // Over the limit before `is_final`: refused at once...
        BatchAppendReq {
            correlation_id: corr(a),
            options: options("too-big"),
            proposed_messages: (0..4).map(|_| proposed()).collect(),
            is_final: false,
        },
        // ...and the rest of that append is dropped, not a new append.
        BatchAppendReq {
            correlation_id: corr(a),
            options: None,
            proposed_messages: vec![proposed()],
            is_final: false,
        },
        BatchAppendReq {
            correlation_id: corr(a),
            options: None,
            proposed_messages: vec![proposed()],
            is_final: true,
        },
        BatchAppendReq {
            correlation_id: corr(b),
            options: options("fine"),
            proposed_messages: vec![proposed()],
            is_final: true,
        },
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for r in reqs {
        tx.send(r).await.unwrap();
    }
    drop(tx);
    g.ready().await.unwrap();
    let mut out: tonic::Streaming<proto::event_store::client::streams::BatchAppendResp> = g
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/event_store.client.streams.Streams/BatchAppend"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), out.message())
        .await
        .expect("the call ends within 10 s")
        .unwrap()
    {
        let id = match r.correlation_id.and_then(|c| c.value) {
            Some(uuid::Value::String(s)) => s,
            other => panic!("unexpected correlation id {other:?}"),
        };
        let ok = matches!(r.result, Some(batch_append_resp::Result::Success(_)));
        let msg = match r.result {
            Some(batch_append_resp::Result::Error(s)) => s.message,
            _ => String::new(),
        };
        answers.push((id, ok, msg));
    }
    answers.sort();
    assert_eq!(
        answers.len(),
        2,
        "one answer per correlation id: {answers:?}"
    );
    assert_eq!((answers[0].0.as_str(), answers[0].1), (a, false));
    assert!(answers[0].2.contains("limit"), "{answers:?}");
    assert_eq!((answers[1].0.as_str(), answers[1].1), (b, true));
    server.shutdown().await.unwrap();
}
