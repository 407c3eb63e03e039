//! `eskv serve` as a user runs it: the real binary, a real redb file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_eskv");

fn eskv(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .args(args)
        .env_remove("ESKV_STORE")
        .env_remove("ESKV_API_KEY");
    c
}

#[test]
fn serve_listens_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = eskv(
        d,
        &["--store", "redb:s.redb", "serve", "--listen", "127.0.0.1:0"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    std::net::TcpStream::connect(addr).expect("the server accepts connections");
    // A second server on the same address is refused clearly (exit 1).
    let busy = eskv(d, &["--store", "memory:", "serve", "--listen", addr])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("cannot listen"));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a graceful stop is a success");
    // The store was created and closed: another command opens it.
    let info = eskv(d, &["--store", "redb:s.redb", "info"])
        .output()
        .unwrap();
    assert_eq!(
        info.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
}

#[test]
fn serve_rejects_a_bad_auth_file_as_bad_input_and_documents_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("auth"), "# users\nbasic alice\n").unwrap();
    let out = eskv(d, &["--store", "memory:", "serve", "--auth-file", "auth"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth:2") && err.contains("basic USER PASSWORD"),
        "{err}"
    );

    let help = eskv(d, &["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--tls-cert",
        "--tls-key",
        "--auth-file",
        "--api-key",
        "--max-message-bytes",
        "--max-subscriptions-per-connection",
        "--max-concurrent-streams",
        "--stream-buffer",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}

/// A certificate or key that cannot be used is refused as bad input
/// before the store is created and before anything listens: no
/// `listening on` line, no file, and a message naming what is wrong.
#[test]
fn serve_refuses_bad_tls_files_before_listening_or_creating_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../eskv-server/tests/tls");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    std::fs::write(d.join("garbage.pem"), "not a pem file\n").unwrap();
    // A key that parses but belongs to no certificate here: the
    // certificate's PEM itself holds none, so use a fresh SEC1 key.
    let other_key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\nOF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\n1RTwjmYKQ0/lv1z8ZB4ECIc1fKhRSLrs3GPHlEZcSZDjB0KGsRnxqzYv\n-----END PRIVATE KEY-----\n";
    std::fs::write(d.join("other-key.pem"), other_key).unwrap();
    let cases: [(&str, std::path::PathBuf, std::path::PathBuf, &str); 4] = [
        ("missing", d.join("nope.pem"), key.clone(), "cannot read"),
        (
            "garbage cert",
            d.join("garbage.pem"),
            key.clone(),
            "no certificate",
        ),
        (
            "garbage key",
            cert.clone(),
            d.join("garbage.pem"),
            "no usable private key",
        ),
        (
            "mismatched key",
            cert.clone(),
            d.join("other-key.pem"),
            "does not go with",
        ),
    ];
    for (name, c, k, want) in cases {
        let out = eskv(
            d,
            &[
                "--store",
                "redb:s.redb",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                c.to_str().unwrap(),
                "--tls-key",
                k.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(!stdout.contains("listening"), "{name}: {stdout}");
        assert!(!d.join("s.redb").exists(), "{name}: the store was created");
    }
}
