//! What etcd refuses, and what eskv makes of it, each on a one-node
//! cluster of the test's own started with the settings it needs: a full
//! database (`--quota-backend-bytes`), a request over the server's gRPC
//! limit, a user granted only the namespace's keys, and a token issued
//! before the auth store changed.

#[cfg(eskv_etcd_bin)]
mod support;

#[cfg(eskv_etcd_bin)]
mod server_refusals {
    use super::support::auth::Admin;
    use super::support::start_with;
    use eskv_core::{Error, EventStore, KvError, KvStoreExt, NewEvent, ReadOptions};
    use eskv_etcd::{EtcdOptions, EtcdStore};
    use std::sync::Arc;
    use std::time::Duration;

    fn options(endpoint: &str) -> EtcdOptions {
        EtcdOptions::new([endpoint.to_string()])
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(10))
    }

    /// Once the database reaches `--quota-backend-bytes`, etcd raises its
    /// NOSPACE alarm and refuses writes: the append that meets it fails
    /// with `StorageFull` (not retryable, a message that says what to do;
    /// outcome unknown, as etcd may apply a `Txn` before its quota check
    /// answers NOSPACE), later appends are refused too, and every
    /// acknowledged event still reads back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_database_is_storage_full_and_keeps_what_was_acknowledged() {
        let cluster = start_with(1, &["--quota-backend-bytes", "8388608"]);
        let endpoint = cluster.endpoints()[0].clone();
        let kv = EtcdStore::connect(options(&endpoint)).await.unwrap();
        let store = EventStore::open(Arc::new(kv)).await.unwrap();
        const EVENT: usize = 256 * 1024;
        let fill = |n: usize| b'a' + (n % 26) as u8;
        // (position, id) of every acknowledged append.
        let mut acked = Vec::new();
        let (err, refused) = loop {
            let n = acked.len();
            assert!(n < 200, "8 MiB quota, yet {n} appends of 256 KiB succeeded");
            let event = NewEvent::new("Big", vec![fill(n); EVENT]).tag(format!("n:{n}"));
            let id = event.id;
            match store.append(vec![event], None).await {
                Ok(r) => acked.push((r.last_position, id)),
                Err(e) => break (e, id),
            }
        };
        println!("after {} appends: {err}", acked.len());
        assert!(
            acked.len() >= 4,
            "only {} appends before {err}",
            acked.len()
        );
        match &err {
            Error::StorageFull {
                backend: "etcd",
                outcome_unknown: true,
                path,
                message,
            } => {
                assert!(path.contains(&endpoint), "{path}");
                for advice in ["--quota-backend-bytes", "compact", "defrag", "alarm disarm"] {
                    assert!(message.contains(advice), "{advice}: {message}");
                }
            }
            other => panic!("expected StorageFull with an unknown outcome, got {other:?}"),
        }
        assert!(!err.is_retryable(), "{err:?}");
        // The alarm stays raised: the next append is refused the same way.
        let small = NewEvent::new("Small", b"{}".to_vec());
        let small_id = small.id;
        let again = store.append(vec![small], None).await.unwrap_err();
        assert!(matches!(again, Error::StorageFull { .. }), "{again:?}");
        assert!(!again.is_retryable());
        // Every acknowledged event reads back, in place; anything after
        // them is one of the refused appends (their outcome was unknown).
        let log = store.read_all(ReadOptions::new()).await.unwrap();
        let read: Vec<_> = log.events.iter().map(|e| (e.position, e.id)).collect();
        assert!(read.len() >= acked.len(), "{read:?}");
        assert_eq!(read[..acked.len()], acked[..]);
        for (_, id) in &read[acked.len()..] {
            assert!(*id == refused || *id == small_id, "{id} was never appended");
        }
        for (n, e) in log.events.iter().take(acked.len()).enumerate() {
            assert_eq!(e.data.len(), EVENT);
            assert!(e.data.iter().all(|&b| b == fill(n)), "event {n}'s data");
        }
    }

    /// Limits declared above the server's let an oversized request reach
    /// it. Just over `--max-request-bytes` etcd refuses it; over that plus
    /// gRPC's 512 KiB of overhead gRPC does. Both are the same
    /// `InvalidInput`, pointing at `server_limits`, and nothing is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_servers_limits_is_invalid_input() {
        let cluster = start_with(1, &[]);
        let endpoint = cluster.endpoints()[0].clone();
        // The server runs with the default 1.5 MiB; the options claim 8 MiB.
        let kv = EtcdStore::connect(options(&endpoint).server_limits(128, 8 << 20))
            .await
            .unwrap();
        let advice = |e: &KvError| match e {
            KvError::InvalidInput { message } => {
                assert!(message.contains("server_limits"), "{message}");
                message.split_once("); ").unwrap().1.to_string()
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        let by_etcd = kv
            .put_one(b"by-etcd".to_vec(), vec![1; 1800 * 1024])
            .await
            .unwrap_err();
        println!("etcd: {by_etcd}");
        let by_grpc = kv
            .put_one(b"by-grpc".to_vec(), vec![2; 3 << 20])
            .await
            .unwrap_err();
        println!("gRPC: {by_grpc}");
        assert_eq!(advice(&by_etcd), advice(&by_grpc));
        assert!(!by_grpc.is_retryable());
        assert_eq!(kv.get_latest(b"by-etcd").await.unwrap(), None);
        assert_eq!(kv.get_latest(b"by-grpc").await.unwrap(), None);
        // The connection is still good.
        kv.put_one(b"small".to_vec(), vec![3; 1024]).await.unwrap();
    }

    /// The raw key prefix of namespace `ns`, as the store computes it.
    async fn namespace_prefix(endpoint: &str, ns: &str) -> Vec<u8> {
        let kv = EtcdStore::connect(options(endpoint).key_prefix(ns))
            .await
            .unwrap();
        kv.prefix().expect("a namespace").to_vec()
    }

    /// Users `app` (read-write on namespace `app` only) and `root`, then
    /// auth enabled; returns the administrator, logged in as root.
    async fn namespace_user(endpoint: &str) -> Admin {
        let prefix = namespace_prefix(endpoint, "app").await;
        let mut admin = Admin::connect(endpoint).await;
        admin.user_add("app", "app-secret").await;
        admin.role_add("app-rw").await;
        admin.grant_prefix("app-rw", &prefix).await;
        admin.grant_role("app", "app-rw").await;
        admin.enable_auth("root-secret").await;
        admin
    }

    async fn append_one(store: &EventStore, n: u32) {
        let event = NewEvent::new("Registered", b"{}".to_vec()).tag(format!("user:{n}"));
        store
            .append(vec![event], None)
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e}"));
    }

    /// On a shared cluster with authentication a user is typically granted
    /// its namespace's keys and nothing else: that is enough to connect,
    /// append and read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_granted_only_its_namespace_connects_and_appends() {
        let cluster = start_with(1, &[]);
        let endpoint = cluster.endpoints()[0].clone();
        namespace_user(&endpoint).await;
        let kv = EtcdStore::connect(
            options(&endpoint)
                .key_prefix("app")
                .auth("app", "app-secret"),
        )
        .await
        .expect("connect with permissions on the namespace only");
        let store = EventStore::open(Arc::new(kv)).await.unwrap();
        append_one(&store, 1).await;
        append_one(&store, 2).await;
        let log = store.read_all(ReadOptions::new()).await.unwrap();
        assert_eq!(log.events.len(), 2);
        // The user really is confined to it.
        let err = EtcdStore::connect(options(&endpoint).auth("app", "app-secret"))
            .await
            .expect_err("no permission outside the namespace");
        assert!(
            matches!(&err, KvError::InvalidInput { message } if message.contains("permission denied")),
            "{err:?}"
        );
    }

    /// A JWT carries the auth store's revision at issue; once users, roles
    /// or permissions change, etcd refuses it ("revision of auth store is
    /// old") and the client must fetch a new one and send the call again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_older_than_the_auth_store_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("jwt.key");
        std::fs::write(&key, b"eskv test key for HS256 tokens, 32+ bytes").unwrap();
        let token = format!("jwt,priv-key={},sign-method=HS256", key.display());
        let cluster = start_with(1, &["--auth-token", &token]);
        let endpoint = cluster.endpoints()[0].clone();
        let mut admin = namespace_user(&endpoint).await;
        let kv = EtcdStore::connect(
            options(&endpoint)
                .key_prefix("app")
                .auth("app", "app-secret"),
        )
        .await
        .unwrap();
        let store = EventStore::open(Arc::new(kv)).await.unwrap();
        append_one(&store, 1).await;
        // Any change to the auth store makes every token issued so far old.
        admin.role_add("unrelated").await;
        append_one(&store, 2).await;
        // Reads too (the root token is old as well: log in again first).
        admin.login("root", "root-secret").await;
        admin.user_add("someone", "else").await;
        let log = store.read_all(ReadOptions::new()).await.unwrap();
        assert_eq!(log.events.len(), 2);
    }
}

/// Stands in when no etcd binary was found at build time (see the
/// conformance test binary).
#[cfg(not(eskv_etcd_bin))]
#[test]
#[cfg_attr(
    not(eskv_ci),
    ignore = "etcd server refusal tests skipped: no etcd binary; apt-get install etcd-server (or set ETCD_BIN)"
)]
fn etcd_server_refusals_need_etcd_binary() {
    panic!(
        "no etcd binary was found when these tests were built: install it \
         (apt-get install etcd-server) or set ETCD_BIN, then rebuild"
    );
}
