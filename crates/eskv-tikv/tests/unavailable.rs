//! An unreachable or silent PD gives a clear `Unavailable` within the
//! configured timeout. These run without a cluster.

use eskv_tikv::{TikvOptions, TikvStore};
use std::time::{Duration, Instant};

/// A PD that accepts TCP connections and never says a word: tikv-client on
/// its own would hang for about a minute here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_pd_times_out_with_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(sock); // keep it open, never answer
        }
    });

    let timeout = Duration::from_secs(1);
    let start = Instant::now();
    let err = TikvStore::connect(TikvOptions::new([addr.clone()]).connect_timeout(timeout))
        .await
        .expect_err("a silent PD must not connect");
    let elapsed = start.elapsed();
    println!("silent PD: {err} after {elapsed:?}");
    match &err {
        eskv_core::KvError::Unavailable { backend, message } => {
            assert_eq!(*backend, "tikv");
            assert!(
                message.contains(&addr),
                "message names the endpoint: {message}"
            );
            assert!(
                message.contains("1s"),
                "message names the timeout: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(
        elapsed >= timeout,
        "gave up before the timeout: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the client never reached the listener, so the test proved nothing"
    );
    server.abort();
}

/// Nothing listens on the port: the connection is refused and reported
/// fast, well before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unavailable_fast() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }; // dropped: the port is closed now
    let timeout = Duration::from_secs(10);
    let start = Instant::now();
    let err = TikvStore::connect(TikvOptions::new([addr.clone()]).connect_timeout(timeout))
        .await
        .expect_err("a closed port must not connect");
    let elapsed = start.elapsed();
    println!("closed port: {err} after {elapsed:?}");
    match &err {
        eskv_core::KvError::Unavailable { message, .. } => {
            assert!(message.contains(&addr), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn bad_options_are_invalid_input() {
    let err = TikvStore::connect(TikvOptions::new(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, eskv_core::KvError::InvalidInput { .. }),
        "{err:?}"
    );
    let mut o = TikvOptions::new(["127.0.0.1:1"]);
    o.remote.tls.ca = Some("/nonexistent/ca.pem".into());
    let err = TikvStore::connect(o).await.unwrap_err();
    assert!(
        matches!(err, eskv_core::KvError::InvalidInput { .. }),
        "{err:?}"
    );
    let o = TikvOptions::new(["127.0.0.1:1"]).tls(
        "/nonexistent/ca.pem",
        "/nonexistent/c.pem",
        "/nonexistent/k.pem",
    );
    let err = TikvStore::connect(o).await.unwrap_err();
    assert!(
        matches!(&err, eskv_core::KvError::InvalidInput { message } if message.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}
