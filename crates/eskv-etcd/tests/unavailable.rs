//! An unreachable or silent etcd gives a clear `Unavailable` at open,
//! within the connect timeout. These need no etcd binary.

use eskv_etcd::{EtcdOptions, EtcdStore};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unavailable_fast() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }; // closed now
    let start = Instant::now();
    let err = EtcdStore::connect(
        EtcdOptions::new([addr.clone()]).connect_timeout(Duration::from_secs(10)),
    )
    .await
    .expect_err("nothing listens there");
    let elapsed = start.elapsed();
    println!("closed port: {err} after {elapsed:?}");
    match &err {
        eskv_core::KvError::Unavailable { backend, message } => {
            assert_eq!(*backend, "etcd");
            assert!(message.contains(&addr), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

/// A server that accepts TCP connections and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_unavailable_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let timeout = Duration::from_secs(1);
    let start = Instant::now();
    let err = EtcdStore::connect(EtcdOptions::new([addr.clone()]).connect_timeout(timeout))
        .await
        .expect_err("a silent server must not pass the probe");
    let elapsed = start.elapsed();
    println!("silent server: {err} after {elapsed:?}");
    assert!(
        matches!(&err, eskv_core::KvError::Unavailable { message, .. } if message.contains(&addr)),
        "{err:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    server.abort();
}

#[tokio::test]
async fn bad_options_are_invalid_input() {
    let err = EtcdStore::connect(EtcdOptions::new(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, eskv_core::KvError::InvalidInput { .. }),
        "{err:?}"
    );
    let mut o = EtcdOptions::new(["127.0.0.1:1"]);
    o.user = Some("root".into());
    let err = EtcdStore::connect(o).await.unwrap_err();
    assert!(
        matches!(err, eskv_core::KvError::InvalidInput { .. }),
        "{err:?}"
    );
    let err = EtcdStore::connect(EtcdOptions::new(["127.0.0.1:1"]).tls_ca("/nonexistent/ca.pem"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, eskv_core::KvError::InvalidInput { message } if message.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}
