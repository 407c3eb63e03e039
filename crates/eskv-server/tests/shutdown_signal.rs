//! `shutdown_signal` honours a SIGTERM sent after it is called but before
//! its future is first polled (the window between `eskv serve` printing
//! "listening on" and serving). Its own test binary: the signal goes to
//! the whole process.

#[cfg(unix)]
#[tokio::test]
async fn sigterm_before_the_first_poll_is_caught() {
    use std::time::Duration;
    let stop = eskv_server::shutdown_signal();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // Without a handler installed by the call, SIGTERM's default action
    // would have ended this process before the assertion below.
    tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .expect("the SIGTERM sent before the first poll stops the server");
}
