//! Requests a single append sends to etcd, counted by the server itself
//! (its `grpc_server_started_total` metric for the KV service) on a
//! one-node cluster of this test's own, so no other test's requests count.

#[cfg(eskv_etcd_bin)]
mod support;

#[cfg(eskv_etcd_bin)]
mod round_trips {
    use super::support::start;
    use eskv_core::{AppendCondition, EventStore, ExpectedVersion, NewEvent, Query};
    use eskv_etcd::{EtcdOptions, EtcdStore};
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;

    /// KV requests (range, put, delete, txn) the member at `endpoint` has
    /// received so far, from its `/metrics` page.
    fn kv_requests(endpoint: &str) -> u64 {
        let mut conn = std::net::TcpStream::connect(endpoint).expect("metrics connection");
        write!(
            conn,
            "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut page = String::new();
        conn.read_to_string(&mut page).unwrap();
        let counted: Vec<u64> = page
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_started_total{")
                    && l.contains("grpc_service=\"etcdserverpb.KV\"")
            })
            .map(|l| {
                let v = l.rsplit(' ').next().unwrap_or_default();
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("metric value in {l:?}")) as u64
            })
            .collect();
        assert!(!counted.is_empty(), "no KV request metric in:\n{page}");
        counted.iter().sum()
    }

    /// A conditional append (W1's uniqueness pattern) is one read and one
    /// commit: the condition's probe rides in the batch's read, and so do
    /// the keys the append writes (the commit compares their revisions
    /// without reading them first). So does a stream append, whatever its
    /// expected version, and a many-event append: every row an append
    /// creates is written with `put_new`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conditional_append_is_one_read_and_one_commit() {
        let cluster = start(1, false);
        let endpoint = cluster.endpoints()[0].clone();
        let options = EtcdOptions::new(vec![endpoint.clone()])
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(10));
        let kv = EtcdStore::connect(options).await.unwrap();
        let store = EventStore::open(Arc::new(kv)).await.unwrap();
        let append = |n: u32| {
            let tag = format!("user:{n}");
            let event = NewEvent::new("Registered", b"{}".to_vec()).tag(tag.clone());
            let cond = AppendCondition::new(Query::tags([tag]), None);
            let store = &store;
            async move { store.append(vec![event], Some(cond)).await.unwrap() }
        };
        // The first appends learn the head.
        for n in 0..3 {
            append(n).await;
        }
        for n in 3..8 {
            let before = kv_requests(&endpoint);
            append(n).await;
            let sent = kv_requests(&endpoint) - before;
            assert_eq!(sent, 2, "append {n}: {sent} requests to etcd");
        }
        let mut version = None;
        for n in 0..4u64 {
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let before = kv_requests(&endpoint);
            store
                .append_to_stream(
                    "order-1",
                    expected,
                    vec![NewEvent::new("Placed", b"{}".to_vec())],
                )
                .await
                .unwrap();
            let sent = kv_requests(&endpoint) - before;
            if n > 0 {
                assert_eq!(sent, 2, "stream append {n}: {sent} requests to etcd");
            }
            version = Some(n + 1);
        }
        // No expected version, and a 25-event append (within etcd's default
        // 128 operations per transaction): still one read
        // and one commit (every new row is written with put_new).
        let before = kv_requests(&endpoint);
        store
            .append_to_stream(
                "order-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Shipped", b"{}".to_vec())],
            )
            .await
            .unwrap();
        let sent = kv_requests(&endpoint) - before;
        assert_eq!(
            sent, 2,
            "stream append, any version: {sent} requests to etcd"
        );
        let events: Vec<NewEvent> = (0..25)
            .map(|i| NewEvent::new("Bulk", b"{}".to_vec()).tag(format!("bulk:{i}")))
            .collect();
        let before = kv_requests(&endpoint);
        store.append(events, None).await.unwrap();
        let sent = kv_requests(&endpoint) - before;
        assert_eq!(sent, 2, "25-event append: {sent} requests to etcd");
    }
}

/// Stands in when no etcd binary was found at build time (see the
/// conformance test binary).
#[cfg(not(eskv_etcd_bin))]
#[test]
#[cfg_attr(
    not(eskv_ci),
    ignore = "etcd round-trip count skipped: no etcd binary; apt-get install etcd-server (or set ETCD_BIN)"
)]
fn etcd_round_trips_need_etcd_binary() {
    panic!(
        "no etcd binary was found when these tests were built: install it \
         (apt-get install etcd-server) or set ETCD_BIN, then rebuild"
    );
}
