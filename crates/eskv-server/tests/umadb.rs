//! The official UmaDB Rust client (`umadb-client`), unchanged, against a
//! real eskv server on 127.0.0.1 over a redb file.

use eskv_core::EventStore;
use eskv_server::{Credential, Server, ServerConfig, ServerHandle, TlsConfig};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use umadb_client::{AsyncUmaDbClient, UmaDbClient};
use umadb_dcb::{
    DcbAppendCondition, DcbError, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem,
    TrackingInfo,
};
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

async fn client(h: &ServerHandle) -> AsyncUmaDbClient {
    UmaDbClient::new(format!("http://{}", h.local_addr()))
        .connect_async()
        .await
        .unwrap()
}

fn event(t: &str, tags: &[&str]) -> DcbEvent {
    DcbEvent {
        event_type: t.into(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        data: format!("{{\"t\":\"{t}\"}}").into_bytes(),
        uuid: Some(Uuid::new_v4()),
        metadata: Vec::new(),
    }
}

fn query(types: &[&str], tags: &[&str]) -> DcbQuery {
    DcbQuery {
        items: vec![DcbQueryItem {
            types: types.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }],
    }
}

/// The parts of an event a client can compare (DcbEvent has no `==`).
type Parts = (
    String,
    Vec<String>,
    Vec<u8>,
    Option<Uuid>,
    Vec<(String, String)>,
);

fn parts(e: &DcbEvent) -> Parts {
    (
        e.event_type.clone(),
        e.tags.clone(),
        e.data.clone(),
        e.uuid,
        e.metadata.clone(),
    )
}

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umadb_client_appends_reads_subscribes_and_sees_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(redb_store(&dir).await, local()).await;
    let a = client(&server).await;
    let b = client(&server).await;

    // A decision: read the boundary, append on the condition that it did
    // not change.
    let boundary = query(&["StudentSubscribed"], &["course:c1"]);
    let (seen, head) = a
        .read_with_head(Some(boundary.clone()), None, false, None)
        .await
        .unwrap();
    assert!(seen.is_empty());
    assert_eq!(head, None, "an empty store has no head");
    assert_eq!(a.head().await.unwrap(), None);
    let first = event("StudentSubscribed", &["course:c1", "student:s1"]);
    let cond = DcbAppendCondition {
        fail_if_events_match: boundary.clone(),
        after: head,
    };
    let p1 = a
        .append(vec![first.clone()], Some(cond.clone()), None)
        .await
        .unwrap();
    assert_eq!(p1, 1);

    // Another client decided on the same stale read: its condition fails
    // as UmaDB's integrity error.
    let late = event("StudentSubscribed", &["course:c1", "student:s2"]);
    match b.append(vec![late.clone()], Some(cond.clone()), None).await {
        Err(DcbError::IntegrityError(m)) => assert!(m.contains("condition"), "{m}"),
        other => panic!("expected an integrity error, got {other:?}"),
    }

    // The first client retries its append (same UUID, same content), as
    // after a lost reply: idempotent, the original position, nothing new.
    assert_eq!(
        a.append(vec![first.clone()], Some(cond.clone()), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(a.head().await.unwrap(), Some(1));
    // The same UUID with other content is refused, not dropped.
    let mut reused = first.clone();
    reused.data = b"{}".to_vec();
    assert!(matches!(
        a.append(vec![reused], None, None).await,
        Err(DcbError::IntegrityError(_))
    ));

    // Events read back exactly as written: metadata pairs in order (with a
    // duplicate key), tags in the client's order, no UUID when none given.
    let mut odd = event("CourseDefined", &["course:c2", "a:first-is-not-sorted"]);
    odd.tags = vec!["zeta".into(), "alpha".into()];
    odd.metadata = vec![
        ("b".into(), "2".into()),
        ("a".into(), "1".into()),
        ("a".into(), "again".into()),
    ];
    let mut anonymous = event("CourseDefined", &["course:c3"]);
    anonymous.uuid = None;
    anonymous.metadata = vec![("k".into(), "v".into())];
    let p3 = b
        .append(vec![odd.clone(), anonymous.clone()], None, None)
        .await
        .unwrap();
    assert_eq!(p3, 3);

    // Reads both ways.
    let (all, head) = a.read_with_head(None, None, false, None).await.unwrap();
    assert_eq!(head, Some(3));
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(parts(&all[0].event), parts(&first));
    assert_eq!(parts(&all[1].event), parts(&odd));
    assert_eq!(parts(&all[2].event), parts(&anonymous));
    let (back, _) = a.read_with_head(None, None, true, Some(2)).await.unwrap();
    assert_eq!(back.iter().map(|e| e.position).collect::<Vec<_>>(), [3, 2]);
    let (from2, _) = a.read_with_head(None, Some(2), false, None).await.unwrap();
    assert_eq!(from2.iter().map(|e| e.position).collect::<Vec<_>>(), [2, 3]);
    let (by_tag, _) = a
        .read_with_head(Some(query(&[], &["zeta"])), None, false, None)
        .await
        .unwrap();
    assert_eq!(by_tag.len(), 1);
    assert_eq!(by_tag[0].position, 2);

    // A live subscription sees what another client appends.
    let mut sub = a
        .subscribe(Some(query(&["StudentSubscribed"], &[])), None)
        .await
        .unwrap();
    let caught_up = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(caught_up.position, 1);
    let fresh = event("StudentSubscribed", &["course:c9", "student:s9"]);
    let p4 = b.append(vec![fresh.clone()], None, None).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription saw the other client's append")
        .unwrap()
        .unwrap();
    assert_eq!((live.position, parts(&live.event)), (p4, parts(&fresh)));

    // Tracking info: recorded with an append, monotonic per source.
    assert_eq!(a.get_tracking_info("upstream").await.unwrap(), None);
    let tracked = event("Projected", &["x:1"]);
    let t = |p| {
        Some(TrackingInfo {
            source: "upstream".into(),
            position: p,
        })
    };
    a.append(vec![tracked.clone()], None, t(7)).await.unwrap();
    assert_eq!(a.get_tracking_info("upstream").await.unwrap(), Some(7));
    // A retry of that append is idempotent; an older position is refused.
    a.append(vec![tracked], None, t(7)).await.unwrap();
    assert!(matches!(
        a.append(vec![event("Projected", &["x:2"])], None, t(7))
            .await,
        Err(DcbError::IntegrityError(_))
    ));
    a.append(vec![event("Projected", &["x:3"])], None, t(9))
        .await
        .unwrap();
    assert_eq!(a.get_tracking_info("upstream").await.unwrap(), Some(9));
    let (tracked_back, _) = a
        .read_with_head(Some(query(&["Projected"], &[])), None, false, None)
        .await
        .unwrap();
    assert_eq!(tracked_back.len(), 2);
    assert_eq!(
        tracked_back[0].event.tags,
        ["x:1"],
        "the tracking tag stays hidden"
    );

    drop(sub);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_and_pick_a_tenant_that_sees_only_its_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_dir();
    let config = local()
        .tls(TlsConfig {
            cert: tls.join("cert.pem"),
            key: tls.join("key.pem"),
        })
        .credential(Credential::token("key-of-a", Some("tenant-a")))
        .credential(Credential::token("key-of-b", Some("tenant-b")));
    let server = start(redb_store(&dir).await, config).await;
    let url = format!("https://localhost:{}", server.local_addr().port());
    let ca = tls.join("cert.pem").display().to_string();
    let connect = |key: Option<&str>| {
        let mut c = UmaDbClient::new(url.clone()).ca_path(ca.clone());
        if let Some(k) = key {
            c = c.api_key(k.into());
        }
        async move { c.connect_async().await.unwrap() }
    };

    // No key, or a wrong one: UmaDB's authentication error, and nothing
    // about the store in the message.
    for key in [None, Some("not-a-key")] {
        let c = connect(key).await;
        match c.head().await {
            Err(DcbError::AuthenticationError(m)) => {
                assert_eq!(m, "missing or invalid credentials")
            }
            other => panic!("expected an authentication error, got {other:?}"),
        }
        assert!(matches!(
            c.append(vec![event("X", &[])], None, None).await,
            Err(DcbError::AuthenticationError(_))
        ));
    }

    let a = connect(Some("key-of-a")).await;
    let b = connect(Some("key-of-b")).await;
    a.append(vec![event("Secret", &["owner:a"])], None, None)
        .await
        .unwrap();
    // Tenant b sees an empty store, and its uniqueness condition on a's
    // tag passes: a's event is not in its world at all.
    assert_eq!(b.head().await.unwrap(), None);
    let (seen, _) = b.read_with_head(None, None, false, None).await.unwrap();
    assert!(seen.is_empty());
    let none_of_a = DcbAppendCondition {
        fail_if_events_match: query(&[], &["owner:a"]),
        after: None,
    };
    assert_eq!(
        b.append(
            vec![event("Mine", &["owner:a"])],
            Some(none_of_a.clone()),
            None
        )
        .await
        .unwrap(),
        1
    );
    // ...while in a's namespace the same condition fails.
    assert!(matches!(
        a.append(vec![event("Mine", &[])], Some(none_of_a), None)
            .await,
        Err(DcbError::IntegrityError(_))
    ));
    let (a_events, _) = a.read_with_head(None, None, false, None).await.unwrap();
    assert_eq!(a_events.len(), 1);
    assert_eq!(a_events[0].event.event_type, "Secret");
    server.shutdown().await.unwrap();
}
