//! Runs the real `eskv` binary on real redb files, as a user would.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_eskv");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .args(args)
        .env_remove("ESKV_STORE")
        // A panic must never show a backtrace, even when asked for one.
        .env("RUST_BACKTRACE", "1");
    c
}

fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut c = cmd(dir, args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().expect("the eskv binary runs");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_owned();
        // Write from a thread so a large input cannot deadlock with output.
        std::thread::spawn(move || {
            let _ = w.write_all(input.as_bytes());
        });
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs and expects success.
fn ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let r = run(dir, args, stdin);
    assert_eq!(r.code, 0, "eskv {args:?} failed: {}{}", r.stderr, r.stdout);
    r.stdout
}

/// Runs and expects one clean error line.
fn fails(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let r = run(dir, args, stdin);
    assert_ne!(r.code, 0, "eskv {args:?} should fail: {}", r.stdout);
    assert_clean_error(&r, args);
    r
}

fn assert_clean_error(r: &Run, args: &[&str]) {
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "eskv {args:?}: not one line: {:?}",
        r.stderr
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {}", r.stderr);
    for bad in [
        "panicked",
        "backtrace",
        "RUST_BACKTRACE",
        "thread '",
        "internal error",
    ] {
        assert!(!r.stderr.contains(bad), "eskv {args:?}: {:?}", r.stderr);
    }
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn store(name: &str) -> String {
    format!("redb:{name}")
}

/// A store with stream events, DCB events, text, binary and metadata.
fn seed(dir: &Path, s: &str) {
    ok(
        dir,
        &[
            "--store",
            s,
            "types",
            "add",
            "CourseDefined",
            "StudentSubscribed",
            "Note",
            "Blob",
        ],
        None,
    );
    ok(
        dir,
        &[
            "--store",
            s,
            "append",
            "--type",
            "CourseDefined",
            "--tag",
            "course:c1",
            "--data",
            "{\"capacity\": 2,\n \"title\": \"Maths\"}",
            "--stream",
            "course-c1",
            "--expected",
            "no-stream",
            "--correlation-id",
            "req-1",
            "--meta",
            "user=alice",
        ],
        None,
    );
    let lines = concat!(
        r#"{"type":"StudentSubscribed","tags":["course:c1","student:s1"],"data":{"student":"s1"}}"#,
        "\n",
        r#"{"type":"Note","tags":["course:c1"],"data_text":"not json, but text"}"#,
        "\n\n",
        r#"{"type":"Blob","data_base64":"AP+AAQ==","metadata":{"causation_id":"x"}}"#,
        "\n"
    );
    ok(dir, &["--store", s, "append"], Some(lines));
    ok(
        dir,
        &[
            "--store",
            s,
            "append",
            "--type",
            "CourseDefined",
            "--stream",
            "course-c1",
            "--expected",
            "1",
            "--data",
            "[1, 2.50, null]",
        ],
        None,
    );
    ok(dir, &["--store", s, "types", "strict", "on"], None);
}

#[test]
fn append_with_flags_and_stdin_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("a.redb");
    let out = ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "CourseDefined",
            "--tag",
            "course:c1",
            "--data",
            r#"{"capacity":10}"#,
            "--stream",
            "course-c1",
            "--expected",
            "no-stream",
        ],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["first_position"], 1);
    assert_eq!(v["last_position"], 1);
    assert_eq!(v["stream_version"], 1);
    assert_eq!(v["ids"].as_array().unwrap().len(), 1);

    let input = concat!(
        r#"{"type":"StudentSubscribed","tags":["course:c1","student:s1"],"data":{"student": "s1"}}"#,
        "\n",
        r#"{"type":"StudentSubscribed","tags":["course:c1","student:s2"],"data":{"student":"s2"},"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV"}"#,
        "\n"
    );
    let v: Value = serde_json::from_str(&ok(d, &["--store", &s, "append"], Some(input))).unwrap();
    assert_eq!(
        (v["first_position"].as_u64(), v["last_position"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(v.get("stream_version").is_none());

    let all = json_lines(&ok(d, &["--store", &s, "read", "--json"], None));
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["type"], "CourseDefined");
    assert_eq!(all[0]["stream"], "course-c1");
    assert_eq!(all[0]["version"], 1);
    assert_eq!(all[0]["data"]["capacity"], 10);
    assert_eq!(all[2]["id"], "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(
        all[2]["tags"],
        serde_json::json!(["course:c1", "student:s2"])
    );
    assert!(all[1]["recorded_at"].as_str().unwrap().ends_with('Z'));
    // The payload is stored and shown verbatim.
    let raw = ok(
        d,
        &["--store", &s, "read", "--from", "2", "--limit", "1"],
        None,
    );
    assert!(raw.contains(r#""data":{"student": "s1"}"#), "{raw}");

    let q = json_lines(&ok(
        d,
        &[
            "--store",
            &s,
            "read",
            "--query",
            "types=StudentSubscribed;tags=student:s2",
        ],
        None,
    ));
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["position"], 3);
    let q = json_lines(&ok(
        d,
        &[
            "--store",
            &s,
            "read",
            "--query",
            "tags=student:s2",
            "--query",
            "types=CourseDefined",
        ],
        None,
    ));
    assert_eq!(
        q.iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3]
    );
    let st = json_lines(&ok(
        d,
        &["--store", &s, "read", "--stream", "course-c1"],
        None,
    ));
    assert_eq!(st.len(), 1);
    let cat = json_lines(&ok(
        d,
        &["--store", &s, "read", "--category", "course"],
        None,
    ));
    assert_eq!(cat.len(), 1);
    let back = json_lines(&ok(
        d,
        &["--store", &s, "read", "--backwards", "--limit", "2"],
        None,
    ));
    assert_eq!(
        back.iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2]
    );
    let until = json_lines(&ok(d, &["--store", &s, "read", "--until", "2"], None));
    assert_eq!(until.len(), 2);

    // ESKV_STORE picks the store too.
    let out = cmd(d, &["read", "--limit", "1"])
        .env("ESKV_STORE", &s)
        .output()
        .unwrap();
    assert_eq!(json_lines(&String::from_utf8(out.stdout).unwrap()).len(), 1);

    let streams = json_lines(&ok(d, &["--store", &s, "streams"], None));
    assert_eq!(
        streams,
        [serde_json::json!({"stream":"course-c1","version":1,"last_position":1})]
    );
    let info: Value = serde_json::from_str(&ok(d, &["--store", &s, "info"], None)).unwrap();
    assert_eq!(info["head"], 3);
    // The head counts every position written; info gives no event count
    // it cannot stand behind (`check` counts the live events).
    assert_eq!(info.get("events"), None, "{info}");
    assert_eq!(info["streams"], 1);
    assert!(info["file_size"].as_u64().unwrap() > 0);
}

#[test]
fn rejected_appends_exit_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("dcb.redb");
    let cond = [
        "--fail-if",
        "types=StudentSubscribed;tags=course:c1,student:s1",
    ];
    let mut args = vec![
        "--store",
        &s,
        "append",
        "--type",
        "StudentSubscribed",
        "--tag",
        "course:c1",
        "--tag",
        "student:s1",
    ];
    args.extend(cond);
    ok(d, &args, None);
    // The same decision again conflicts: the boundary now holds an event.
    let r = fails(d, &args, None);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("append condition failed"), "{}", r.stderr);
    // With --after at the head it is still rejected; after a later head it is not.
    let mut after = args.clone();
    after.extend(["--after", "0"]);
    assert_eq!(fails(d, &after, None).code, 3);
    let mut later = args.clone();
    later.extend(["--after", "1"]);
    ok(d, &later, None);

    ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "OrderPlaced",
            "--stream",
            "order-1",
            "--expected",
            "no-stream",
        ],
        None,
    );
    let r = fails(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "OrderPlaced",
            "--stream",
            "order-1",
            "--expected",
            "no-stream",
        ],
        None,
    );
    assert_eq!(r.code, 3);
    assert!(
        r.stderr
            .contains("wrong expected version on stream 'order-1'"),
        "{}",
        r.stderr
    );
    let r = fails(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "OrderShipped",
            "--stream",
            "order-1",
            "--expected",
            "5",
        ],
        None,
    );
    assert_eq!(r.code, 3);
    ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "OrderShipped",
            "--stream",
            "order-1",
            "--expected",
            "1",
        ],
        None,
    );
    assert_eq!(json_lines(&ok(d, &["--store", &s, "read"], None)).len(), 4);
}

#[test]
fn bad_store_urls_name_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for url in [
        "events.redb",
        "postgres://x",
        "tikv://",
        "etcd://h:0",
        "redb:",
        "tikv:pd:2379",
    ] {
        let r = fails(d, &["--store", url, "info"], None);
        assert_eq!(r.code, 2, "{url}");
        assert!(
            r.stderr
                .contains("accepted forms: redb:PATH, fjall:PATH, memory:, tikv://"),
            "{}",
            r.stderr
        );
    }
    let r = cmd(d, &["info"])
        .env("ESKV_STORE", "nonsense")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    let r = fails(d, &["copy", "--from", "redb:a.redb", "--to", "bogus"], None);
    assert!(r.stderr.contains("invalid store URL 'bogus'"));
    // A store that is not there is not created by a read.
    let r = fails(d, &["--store", "redb:missing.redb", "read"], None);
    assert!(r.stderr.contains("does not exist"));
    assert!(!d.join("missing.redb").exists());
}

#[test]
fn export_import_round_trip_is_exact_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (store("a.redb"), store("b.redb"), store("c.redb"));
    seed(d, &a);
    let export = ok(d, &["--store", &a, "export"], None);
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines.len(), 7, "{export}");
    assert!(lines[0].starts_with(r#"{"eskv_export":2,"head":5,"#));
    assert!(lines[6].starts_with(r#"{"eskv_export_end":{"events":5,"crc32c":""#));

    // stdin → b
    let sum: Value =
        serde_json::from_str(&ok(d, &["--store", &b, "import"], Some(&export))).unwrap();
    assert_eq!(sum["events"], 5);
    assert_eq!(sum["verified"], true);
    ok(d, &["--store", &b, "check"], None);
    let read_a = ok(d, &["--store", &a, "read"], None);
    assert_eq!(read_a, ok(d, &["--store", &b, "read"], None));
    assert_eq!(export, ok(d, &["--store", &b, "export"], None));
    let read_a_stream = ok(d, &["--store", &a, "read", "--stream", "course-c1"], None);
    assert_eq!(
        read_a_stream,
        ok(d, &["--store", &b, "read", "--stream", "course-c1"], None)
    );
    assert_eq!(
        ok(d, &["--store", &a, "streams"], None),
        ok(d, &["--store", &b, "streams"], None)
    );
    assert_eq!(
        ok(d, &["--store", &a, "types"], None),
        ok(d, &["--store", &b, "types"], None)
    );

    // Payload kinds came through.
    let events = json_lines(&read_a);
    // --data is stored as written: JSON over two lines comes back as text.
    assert_eq!(
        events[0]["data_text"],
        "{\"capacity\": 2,\n \"title\": \"Maths\"}"
    );
    assert_eq!(events[0]["metadata"]["correlation_id"], "req-1");
    assert_eq!(events[0]["metadata"]["extra"]["user"], "alice");
    assert_eq!(events[2]["data_text"], "not json, but text");
    assert_eq!(events[3]["data_base64"], "AP+AAQ==");
    assert_eq!(events[4]["version"], 2);
    // --data is stored byte for byte.
    assert!(read_a.contains(r#""data":[1, 2.50, null]"#), "{read_a}");

    // File → c, via --out and --in.
    ok(d, &["--store", &a, "export", "--out", "backup.jsonl"], None);
    assert_eq!(
        std::fs::read_to_string(d.join("backup.jsonl")).unwrap(),
        export
    );
    ok(d, &["--store", &c, "import", "--in", "backup.jsonl"], None);
    ok(d, &["--store", &c, "check"], None);
    assert_eq!(read_a, ok(d, &["--store", &c, "read"], None));

    // Importing again is refused: the target is not empty.
    let r = fails(d, &["--store", &c, "import", "--in", "backup.jsonl"], None);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);

    // A damaged or truncated file is refused before anything is written.
    let truncated: String = export.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("trunc.jsonl"), &truncated).unwrap();
    let r = fails(
        d,
        &["--store", "redb:t.redb", "import", "--in", "trunc.jsonl"],
        None,
    );
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    assert!(!d.join("t.redb").exists());
    std::fs::write(d.join("bad.jsonl"), export.replace("Maths", "Music")).unwrap();
    let r = fails(
        d,
        &["--store", "redb:t.redb", "import", "--in", "bad.jsonl"],
        None,
    );
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    let r = fails(d, &["--store", "redb:t.redb", "import"], Some(""));
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    let r = fails(
        d,
        &["--store", "redb:t.redb", "import"],
        Some("{\"type\":\"A\"}\n"),
    );
    assert!(r.stderr.contains("position"), "{}", r.stderr);
}

#[test]
fn copy_between_redb_files_verifies_counts_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (store("a.redb"), store("b.redb"));
    seed(d, &a);
    let out = ok(d, &["copy", "--from", &a, "--to", &b], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"], 5);
    assert_eq!(v["streams"], 1);
    assert_eq!(v["verified"], true);
    assert_eq!(v["source_crc32c"], v["target_crc32c"]);
    ok(d, &["--store", &b, "check"], None);
    assert_eq!(
        ok(d, &["--store", &a, "export"], None),
        ok(d, &["--store", &b, "export"], None)
    );
    // Strict mode came along: an unknown type is still rejected.
    let r = fails(d, &["--store", &b, "append", "--type", "Nope"], None);
    assert!(r.stderr.contains("unknown event type"));
    // Into a store that has events: refused.
    let r = fails(d, &["copy", "--from", &a, "--to", &b], None);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    let r = fails(d, &["copy", "--from", &a, "--to", &a], None);
    assert_eq!(r.code, 2);
    // A dry run into memory.
    ok(d, &["copy", "--from", &a, "--to", "memory:"], None);
}

#[test]
fn strict_types_reject_unknown_types_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("t.redb");
    ok(
        d,
        &["--store", &s, "types", "add", "OrderPlaced", "OrderShipped"],
        None,
    );
    let v: Value =
        serde_json::from_str(&ok(d, &["--store", &s, "types", "strict", "on"], None)).unwrap();
    assert_eq!(v["strict"], true);
    assert_eq!(
        v["types"],
        serde_json::json!(["OrderPlaced", "OrderShipped"])
    );
    let r = fails(d, &["--store", &s, "append", "--type", "OrderPlacd"], None);
    assert!(
        r.stderr.contains("did you mean 'OrderPlaced'"),
        "{}",
        r.stderr
    );
    ok(d, &["--store", &s, "append", "--type", "OrderPlaced"], None);
    ok(d, &["--store", &s, "types", "strict", "off"], None);
    ok(d, &["--store", &s, "append", "--type", "OrderPlacd"], None);
    let list: Value =
        serde_json::from_str(&ok(d, &["--store", &s, "types", "list"], None)).unwrap();
    assert_eq!(list["strict"], false);
}

#[test]
fn every_error_is_one_line_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("e.redb");
    ok(d, &["--store", &s, "append", "--type", "A"], None);
    std::fs::write(
        d.join("garbage.redb"),
        b"this is not a redb file at all, just text",
    )
    .unwrap();
    std::fs::write(d.join("plain.txt"), "hello\n").unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["read", "--bogus"],
        vec!["read", "--limit", "many"],
        vec!["--store", &s, "read", "--query", "colour=red"],
        vec!["--store", &s, "read", "--stream", "a", "--category", "b"],
        vec![
            "--store",
            &s,
            "append",
            "--type",
            "A",
            "--data",
            "{not json",
        ],
        vec!["--store", &s, "append", "--type", "A", "--id", "not-a-ulid"],
        vec!["--store", &s, "append", "--type", "bad type!"],
        vec![
            "--store",
            &s,
            "append",
            "--type",
            "A",
            "--stream",
            "s",
            "--expected",
            "0",
        ],
        vec![
            "--store",
            &s,
            "append",
            "--type",
            "A",
            "--stream",
            "s",
            "--expected",
            "soon",
        ],
        vec!["--store", &s, "append", "--type", "A", "--meta", "novalue"],
        vec!["--store", &s, "append"],
        vec![
            "--store",
            &s,
            "append",
            "--type",
            "A",
            "--fail-if",
            "types=",
        ],
        vec!["--store", "redb:garbage.redb", "info"],
        vec!["--store", "redb:garbage.redb", "check"],
        vec!["--store", "redb:plain.txt", "read"],
        vec!["--store", "redb:missing.redb", "export"],
        vec!["--store", "redb:missing.redb", "check"],
        vec!["--store", &s, "import", "--in", "missing.jsonl"],
        vec!["--store", &s, "import", "--in", "plain.txt"],
        vec!["--store", &s, "export", "--out", "no/such/dir/x.jsonl"],
        vec!["--store", "tikv://127.0.0.1:1", "info", "--json"],
    ];
    for args in &cases {
        let r = run(d, args, None);
        assert_ne!(r.code, 0, "eskv {args:?} should fail");
        assert_clean_error(&r, args);
    }
    for (input, why) in [
        ("{\"type\":\"A\"}\nnot json\n", "stdin line 2"),
        ("{\"type\":\"A\",\"typo\":1}\n", "unknown field"),
        ("{\"data\":1}\n", "no \"type\""),
        ("{\"type\":\"A\",\"position\":3}\n", "set by the store"),
    ] {
        let r = fails(d, &["--store", &s, "append"], Some(input));
        assert!(r.stderr.contains(why), "{}", r.stderr);
    }
    // Nothing was appended by any failing command.
    assert_eq!(json_lines(&ok(d, &["--store", &s, "read"], None)).len(), 1);
}

#[test]
fn large_logs_page_and_a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("big.redb");
    let n = 1300;
    let input: String = (0..n)
        .map(|i| {
            format!(
                "{{\"type\":\"Tick\",\"tags\":[\"t:{}\"],\"data\":{{\"i\":{i},\"pad\":\"{}\"}}}}\n",
                i % 7,
                "x".repeat(100)
            )
        })
        .collect();
    ok(d, &["--store", &s, "append"], Some(&input));
    let all = json_lines(&ok(d, &["--store", &s, "read"], None));
    assert_eq!(all.len(), n);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e["position"] == i as u64 + 1));
    let back = json_lines(&ok(
        d,
        &["--store", &s, "read", "--backwards", "--limit", "700"],
        None,
    ));
    assert_eq!(back.len(), 700);
    assert_eq!(back[0]["position"], n as u64);
    assert_eq!(back[699]["position"], n as u64 - 699);
    let tagged = json_lines(&ok(
        d,
        &["--store", &s, "read", "--query", "tags=t:3"],
        None,
    ));
    assert_eq!(tagged.len(), (0..n).filter(|i| i % 7 == 3).count());

    let t = store("big2.redb");
    ok(d, &["copy", "--from", &s, "--to", &t], None);
    ok(d, &["--store", &t, "check"], None);

    // `eskv read | head -1`: the reader leaves early.
    let mut child = cmd(d, &["--store", &s, "read"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"position\":1,"));
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(err, "");
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn tail_follows_appends_from_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("tail.redb");
    ok(d, &["--store", &s, "append", "--type", "Before"], None);
    let mut tail = cmd(
        d,
        &[
            "--store",
            &s,
            "tail",
            "--from",
            "1",
            "--limit",
            "3",
            "--query",
            "types=Before,After",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ok(d, &["--store", &s, "append", "--type", "Other"], None);
    ok(d, &["--store", &s, "append", "--type", "After"], None);
    ok(
        d,
        &["--store", &s, "append", "--type", "After", "--tag", "x"],
        None,
    );
    let status =
        wait_with_timeout(&mut tail, Duration::from_secs(30)).expect("tail exits after --limit");
    let mut out = String::new();
    tail.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let got = json_lines(&out);
    assert_eq!(
        got.iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3, 4]
    );
}

#[test]
fn tail_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("int.redb");
    ok(d, &["--store", &s, "append", "--type", "A"], None);
    let mut tail = cmd(d, &["--store", &s, "tail", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first event printed means tail listens for Ctrl-C (it installs
    // the handler before it prints); no fixed sleep to guess that.
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tail prints the stored event");
    assert!(first.contains('A'), "{first}");
    let sent = Command::new("kill")
        .args(["-INT", &tail.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status =
        wait_with_timeout(&mut tail, Duration::from_secs(10)).expect("tail stops on SIGINT");
    let mut err = String::new();
    tail.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(err, "");
}

#[test]
fn fjall_stores_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, f) = (store("a.redb"), "fjall:events".to_string());
    seed(d, &a);
    // Looking at a store that does not exist creates nothing.
    let r = fails(d, &["--store", &f, "read"], None);
    assert!(r.stderr.contains("no eskv store"), "{}", r.stderr);
    assert!(!d.join("events").exists());
    let v: Value = serde_json::from_str(&ok(d, &["copy", "--from", &a, "--to", &f], None)).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(
        ok(d, &["--store", &a, "export"], None),
        ok(d, &["--store", &f, "export"], None)
    );
    ok(
        d,
        &[
            "--store",
            &f,
            "append",
            "--type",
            "CourseDefined",
            "--data",
            "{}",
        ],
        None,
    );
    let v: Value = serde_json::from_str(&ok(d, &["--store", &f, "check", "--json"], None)).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["events"], 6);
    let v: Value = serde_json::from_str(&ok(d, &["--store", &f, "info", "--json"], None)).unwrap();
    assert_eq!(v["backend"], "fjall");
    assert!(v["file_size"].as_u64().unwrap() > 0);
    // A directory of other files is refused, and left as it was.
    std::fs::create_dir(d.join("other")).unwrap();
    std::fs::write(d.join("other/notes.txt"), b"x").unwrap();
    let r = fails(
        d,
        &[
            "--store",
            "fjall:other",
            "append",
            "--type",
            "CourseDefined",
        ],
        None,
    );
    assert!(
        r.stderr.contains("neither empty nor a fjall database"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(d.join("other")).unwrap().count(), 1);
}

#[test]
fn check_reports_clean_stores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("c.redb");
    seed(d, &s);
    let v: Value = serde_json::from_str(&ok(d, &["--store", &s, "check", "--json"], None)).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["events"], 5);
    assert_eq!(v["violations"], serde_json::json!([]));
}

/// A one-node etcd on loopback from the shared launcher (fresh ports, a
/// retry if one was taken meanwhile; killed on drop), with the store URL
/// the CLI takes. `None`, saying so, when no etcd binary is installed.
struct Etcd {
    _cluster: eskv_etcd_launcher::Cluster,
    url: String,
}

fn start_etcd() -> Option<Etcd> {
    use eskv_etcd_launcher::{Cluster, ClusterOptions, LaunchError};
    match Cluster::launch(ClusterOptions::new(1)) {
        Ok(cluster) => Some(Etcd {
            url: format!("etcd://{}/cli-test", cluster.nodes[0].endpoint()),
            _cluster: cluster,
        }),
        Err(LaunchError::Missing(why)) => {
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// `copy` from redb into etcd and back: the way a user outgrows one
/// machine. etcd takes at most 128 operations per transaction, so the
/// import has to split its appends; `tail` there uses a live subscription.
#[test]
fn copy_from_redb_to_etcd_and_back() {
    if !cfg!(feature = "etcd") {
        eprintln!("skipped: eskv built without the etcd feature");
        return;
    }
    let Some(etcd) = start_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = store("a.redb");
    seed(d, &a);
    let input: String = (0..300)
        .map(|i| {
            format!("{{\"type\":\"Note\",\"tags\":[\"n:{i}\",\"all\"],\"data\":{{\"i\":{i}}}}}\n")
        })
        .collect();
    ok(d, &["--store", &a, "append"], Some(&input));
    let e = &etcd.url;
    let start = Instant::now();
    let v = loop {
        // The first connection may race the server's start.
        let r = run(d, &["copy", "--from", &a, "--to", e], None);
        if r.code == 0 || start.elapsed() > Duration::from_secs(20) {
            assert_eq!(r.code, 0, "{}", r.stderr);
            break serde_json::from_str::<Value>(&r.stdout).unwrap();
        }
        assert!(r.stderr.contains("unavailable"), "{}", r.stderr);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["events"], 305);
    assert_eq!(v["verified"], true);
    ok(d, &["--store", e, "check"], None);
    assert_eq!(
        ok(d, &["--store", &a, "read"], None),
        ok(d, &["--store", e, "read"], None)
    );
    let tailed = ok(
        d,
        &["--store", e, "tail", "--from", "300", "--limit", "6"],
        None,
    );
    assert_eq!(json_lines(&tailed).len(), 6);
    let b = store("b.redb");
    ok(d, &["copy", "--from", e, "--to", &b], None);
    assert_eq!(
        ok(d, &["--store", &a, "export"], None),
        ok(d, &["--store", &b, "export"], None)
    );
}

/// Changes the keys of the redb store at `path` behind eskv's back, in
/// one committed transaction (to damage it on purpose).
fn edit_redb(path: &Path, edit: impl FnOnce(&mut dyn eskv::KvTransaction)) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use eskv::KvStore;
            let kv = eskv::redb::RedbStore::open(path).await.unwrap();
            let mut t = kv.begin().await.unwrap();
            edit(&mut *t);
            t.commit().await.unwrap();
        });
}

/// A store whose index lost an entry: `check` exits 4 and says where.
#[test]
fn check_reports_damage_with_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("dmg.redb");
    ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "OrderPlaced",
            "--tag",
            "order:1",
        ],
        None,
    );
    ok(d, &["--store", &s, "check"], None);
    edit_redb(&d.join("dmg.redb"), |t| {
        t.delete(eskv::layout::type_key("OrderPlaced", 1))
    });
    let r = fails(d, &["--store", &s, "check"], None);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("check found 1 problem"), "{}", r.stderr);
    assert!(r.stdout.contains("\"position\":1"), "{}", r.stdout);
    assert!(r.stdout.contains("\"clean\":false"), "{}", r.stdout);
}

/// A log entry that no longer decodes: `check` still reports (exit 4),
/// and says why it could not count the live events instead of leaving
/// `events` null with no reason.
#[test]
fn check_says_why_live_events_could_not_be_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("garbled.redb");
    ok(d, &["--store", &s, "append", "--type", "OrderPlaced"], None);
    edit_redb(&d.join("garbled.redb"), |t| {
        t.put(eskv::layout::log_key(1), b"not an event".to_vec())
    });
    let r = run(d, &["--store", &s, "check", "--json"], None);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["clean"], false, "{v}");
    assert_eq!(v["events"], Value::Null, "{v}");
    let why = v["events_error"].as_str().unwrap_or_default();
    assert!(why.contains("at position 1"), "{v}");
}

// ------------------------------------------------------------ hardening

/// A hash of a file's bytes, to show a command left it alone.
fn file_hash(path: &Path) -> (u64, u32) {
    let bytes = std::fs::read(path).unwrap();
    (bytes.len() as u64, crc32c::crc32c(&bytes))
}

/// Runs `eskv` on a pseudo-terminal (with `script`), so that it prints
/// what a person sees: tables, "no events", progress. Returns what the
/// terminal showed (stdout and stderr together) and the exit code, or None
/// when `script` is not installed.
fn on_terminal(dir: &Path, args: &[&str]) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to run eskv on a terminal");
        return None;
    }
    let quoted: Vec<String> = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qefc", &quoted.join(" "), "/dev/null"])
        .current_dir(dir)
        .env_remove("ESKV_STORE")
        .env("COLUMNS", "200")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    ))
}

/// Item 23: `--data` is checked as the user wrote it, and stored byte for
/// byte.
#[test]
fn data_is_validated_as_written_and_stored_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("data.redb");
    // Whitespace between tokens is not decoration: "1 2" is not a number.
    for bad in [
        r#"{"n": 1 2, "b": tr ue}"#,
        "[1 2]",
        "tr ue",
        "{\"a\": 1}\n{}",
    ] {
        let r = fails(
            d,
            &["--store", &s, "append", "--type", "A", "--data", bad],
            None,
        );
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("--data is not valid JSON"),
            "{}",
            r.stderr
        );
    }
    assert!(
        !d.join("data.redb").exists(),
        "a rejected append created the store"
    );
    let kept = [
        r#"{"a": 1, "s": "x  y", "n": 2.50}"#,
        "{\"capacity\": 2,\n \"title\": \"Maths\"}",
    ];
    for good in kept {
        ok(
            d,
            &["--store", &s, "append", "--type", "A", "--data", good],
            None,
        );
    }
    let events = json_lines(&ok(d, &["--store", &s, "read"], None));
    assert_eq!(events.len(), 2);
    // Single-line JSON comes back verbatim as "data" ...
    let raw = ok(d, &["--store", &s, "read", "--limit", "1"], None);
    assert!(raw.contains(&format!("\"data\":{}", kept[0])), "{raw}");
    // ... and JSON over several lines as the exact text.
    assert_eq!(events[1]["data_text"], kept[1]);
}

/// Item 24: exit codes follow the README's table; every row is exercised,
/// and the table in `eskv --help` is the same.
#[test]
fn exit_codes_follow_the_readme_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let ops = &readme[readme.find("## Operations").expect("an Operations section")..];
    let ops = &ops[..ops[3..].find("\n## ").map_or(ops.len(), |i| i + 3)];
    // The table: "| code | meaning |" rows.
    let documented: Vec<u8> = ops
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 3 && l.starts_with('|'))
                .then(|| cells[1].parse::<u8>().ok())
                .flatten()
        })
        .collect();
    assert_eq!(
        documented,
        [0, 1, 2, 3, 4, 101],
        "README exit code table:\n{ops}"
    );
    let help = ok(Path::new("."), &["--help"], None);
    for code in &documented {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "eskv --help does not list exit code {code}:\n{help}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("codes.redb");
    // 0: success.
    ok(
        d,
        &["--store", &s, "append", "--type", "A", "--tag", "t:1"],
        None,
    );
    ok(d, &["--store", &s, "types", "add", "A"], None);
    let before = file_hash(&d.join("codes.redb"));

    // 1: an error that is not the input's fault.
    std::fs::create_dir(d.join("adir")).unwrap();
    for (args, want) in [
        (vec!["--store", "redb:adir", "read"], "adir"),
        (
            vec!["--store", "redb:adir", "append", "--type", "A"],
            "adir",
        ),
        (
            vec!["--store", "redb:missing.redb", "read"],
            "does not exist",
        ),
    ] {
        let r = fails(d, &args, None);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains("invalid input"),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.matches("adir").count().min(1),
            r.stderr.matches("adir").count(),
            "{args:?}: the path is repeated: {}",
            r.stderr
        );
    }
    if cfg!(feature = "tikv") {
        let r = fails(d, &["--store", "tikv://127.0.0.1:1", "info"], None);
        assert_eq!(r.code, 1, "{}", r.stderr);
        for noise in [".cargo", "registry", ".rs:"] {
            assert!(!r.stderr.contains(noise), "source paths in: {}", r.stderr);
        }
    }

    // 2: bad usage or bad input, including input the store refuses.
    let big = format!(
        "{{\"type\":\"A\",\"data_text\":\"{}\"}}\n",
        "x".repeat(1_100_000)
    );
    let usage: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["read", "--bogus"], None, "--bogus"),
        (
            vec!["--store", "nonsense", "info"],
            None,
            "invalid store URL",
        ),
        (
            vec!["--store", &s, "read", "--query", "colour=red"],
            None,
            "colour",
        ),
        (
            vec![
                "--store",
                &s,
                "append",
                "--type",
                "A",
                "--stream",
                "x",
                "--expected",
                "soon",
            ],
            None,
            "soon",
        ),
        (
            vec!["--store", &s, "append", "--type", "A", "--data", "{"],
            None,
            "--data",
        ),
        (
            vec!["--store", &s, "append", "--type", "bad type!"],
            None,
            "bad type!",
        ),
        (
            vec!["--store", &s, "append", "--type", "A", "--tag", ""],
            None,
            "tag",
        ),
        (vec!["--store", &s, "append"], Some(&big), "limit"),
        (vec!["copy", "--from", &s], None, "--to"),
        (vec!["--store", &s, "types", "add"], None, "TYPE"),
    ];
    for (args, stdin, want) in &usage {
        let r = fails(d, args, *stdin);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{args:?} should name {want:?}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("append rejected"),
            "{args:?}: {}",
            r.stderr
        );
    }
    ok(d, &["--store", &s, "types", "strict", "on"], None);
    let r = fails(d, &["--store", &s, "append", "--type", "B"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown event type 'B'"), "{}", r.stderr);
    ok(d, &["--store", &s, "types", "strict", "off"], None);

    // 3: an append refused by the store's state.
    let r = fails(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "A",
            "--fail-if",
            "types=A",
        ],
        None,
    );
    assert_eq!(r.code, 3, "{}", r.stderr);

    // 4: check found damage.
    let bad = store("bad.redb");
    ok(
        d,
        &["--store", &bad, "append", "--type", "A", "--tag", "t:1"],
        None,
    );
    edit_redb(&d.join("bad.redb"), |t| {
        t.delete(eskv::layout::tag_key("t:1", 1))
    });
    assert_eq!(fails(d, &["--store", &bad, "check"], None).code, 4);
    // (101, an internal error, has no way to be triggered: there is no
    // known panic; `every_error_is_one_line_without_a_panic` checks none
    // of the failures above is one.)
    let _ = before;
}

/// Item 24: a failed import says whether it wrote anything.
#[test]
fn a_failed_import_says_what_it_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("imp.redb");
    let line = |p: u64, t: &str| {
        format!("{{\"position\":{p},\"id\":\"{}\",\"type\":\"{t}\",\"tags\":[],\"data\":{{}},\"recorded_at\":\"2025-01-01T00:00:00.000Z\"}}\n", eskv::Ulid::from_parts(1, u128::from(p)))
    };
    let bad = format!("{}{}", line(1, "A"), line(2, "bad type!"));
    let r = fails(d, &["--store", &s, "import"], Some(&bad));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!r.stderr.contains("still there"), "{}", r.stderr);
    assert!(r.stderr.contains("no events were imported"), "{}", r.stderr);
    // Nothing was written, so the same store takes a good import.
    let good = format!("{}{}", line(1, "A"), line(2, "B"));
    ok(d, &["--store", &s, "import"], Some(&good));
    ok(d, &["--store", &s, "check"], None);
}

/// Item 25: a redb file held by another process is reported as such,
/// after a bounded wait, with a typed error rather than a guessed one.
#[test]
fn a_store_held_by_another_process_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("locked.redb");
    ok(d, &["--store", &s, "append", "--type", "A"], None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = rt
        .block_on(eskv::redb::RedbStore::open(d.join("locked.redb")))
        .unwrap();
    for args in [
        vec!["--store", &s, "append", "--type", "A"],
        vec!["--store", &s, "read"],
        vec!["--store", &s, "check"],
    ] {
        let start = Instant::now();
        let r = cmd(d, &args)
            .env("ESKV_LOCK_TIMEOUT", "1")
            .output()
            .unwrap();
        let r = Run {
            code: r.status.code().unwrap_or(-1),
            stdout: String::from_utf8(r.stdout).unwrap(),
            stderr: String::from_utf8(r.stderr).unwrap(),
        };
        assert_clean_error(&r, &args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("locked.redb is in use by another process"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{args:?} waited too long"
        );
    }
    drop(held);
    assert_eq!(json_lines(&ok(d, &["--store", &s, "read"], None)).len(), 1);
}

/// Item 26: tables on a terminal are aligned by display width, `tail`'s
/// header matches its rows, an empty result says so.
#[test]
fn terminal_tables_align_and_say_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("tty.redb");
    ok(
        d,
        &["--store", &s, "append", "--type", "Short", "--tag", "a"],
        None,
    );
    ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "AMuchLongerEventTypeName",
            "--tag",
            "城市:東京",
            "--tag",
            "x",
            "--stream",
            "顧客-1",
        ],
        None,
    );
    ok(
        d,
        &[
            "--store",
            &s,
            "append",
            "--type",
            "C",
            "--data-text",
            "résumé",
        ],
        None,
    );
    let Some((code, empty)) = on_terminal(d, &["--store", &s, "read", "--from", "100"]) else {
        return;
    };
    assert_eq!(code, 0, "{empty}");
    assert!(empty.contains("no events"), "{empty:?}");
    for args in [
        vec!["--store", &s, "read"],
        vec!["--store", &s, "tail", "--from", "1", "--limit", "3"],
    ] {
        let (code, out) = on_terminal(d, &args).unwrap();
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 4, "{args:?}: {out}");
        assert!(
            lines[0].starts_with("POS") || lines[0].trim_start().starts_with("POS"),
            "{out}"
        );
        // Every column starts at the same display column as its header.
        let col = |l: &str, i: usize| -> usize {
            // display column where the i-th cell (two-space separated) starts
            let mut seen = 0;
            let mut width = 0;
            let mut prev_space = 0;
            let mut started = false;
            for ch in l.chars() {
                if ch == ' ' {
                    prev_space += 1;
                } else {
                    if started && prev_space >= 2 {
                        seen += 1;
                        if seen == i {
                            return width;
                        }
                    }
                    started = true;
                    prev_space = 0;
                }
                width += unicode_width::UnicodeWidthChar::width(ch).unwrap_or(0);
            }
            usize::MAX
        };
        // TYPE, STREAM@VER, TAGS, RECORDED start where the header's do.
        for i in [1, 2, 3, 4] {
            let h = col(lines[0], i);
            for l in &lines[1..] {
                let c = col(l, i);
                // A cell that is empty ("-" for no stream is never empty)
                // would shift the count; tags may be empty: skip beyond it.
                if i >= 3 && l.contains("  -  ") && c != h {
                    continue;
                }
                assert_eq!(
                    c, h,
                    "{args:?}: column {i} of {l:?} vs header {:?}\n{out}",
                    lines[0]
                );
            }
        }
    }
}

/// Item 26: `check`, `import` and `copy` show progress on a terminal, with
/// a whole-number rate and "1 event" in the singular.
#[test]
fn long_commands_show_progress_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("p.redb");
    ok(d, &["--store", &s, "append", "--type", "A"], None);
    ok(d, &["--store", &s, "export", "--out", "one.jsonl"], None);
    let Some((code, out)) = on_terminal(d, &["--store", &s, "check"]) else {
        return;
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checking"), "no progress from check: {out:?}");
    for args in [
        vec!["--store", "redb:q.redb", "import", "--in", "one.jsonl"],
        vec!["copy", "--from", &s, "--to", "redb:r.redb"],
    ] {
        let (code, out) = on_terminal(d, &args).unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("verifying"),
            "{args:?}: no verify progress: {out:?}"
        );
        assert!(!out.contains("1 events"), "{args:?}: {out:?}");
        let four_decimals = out
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|n| n.split_once('.').is_some_and(|(_, f)| f.len() >= 3));
        assert!(!four_decimals, "{args:?}: a rate with decimals: {out:?}");
    }
}

/// Item 14: commands that only read leave the file's bytes unchanged,
/// create nothing, and open the file read-only.
#[test]
fn read_only_commands_never_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("ro.redb");
    seed(d, &s);
    let path = d.join("ro.redb");
    let before = file_hash(&path);
    let reads: Vec<Vec<&str>> = vec![
        vec!["check"],
        vec!["info"],
        vec!["read"],
        vec!["read", "--stream", "course-c1"],
        vec!["export"],
        vec!["streams"],
        vec!["types", "list"],
        vec!["tail", "--from", "1", "--limit", "2"],
    ];
    for r in &reads {
        let mut args = vec!["--store", s.as_str()];
        args.extend(r);
        ok(d, &args, None);
        assert_eq!(file_hash(&path), before, "eskv {r:?} changed the file");
    }
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perm.set_mode(0o444);
    std::fs::set_permissions(&path, perm).unwrap();
    for r in &reads {
        let mut args = vec!["--store", s.as_str()];
        args.extend(r);
        ok(d, &args, None);
    }
    assert_eq!(file_hash(&path), before);
    ok(d, &["copy", "--from", &s, "--to", "memory:"], None);
    assert_eq!(file_hash(&path), before);

    // Another application's redb file: refused, untouched.
    let other = d.join("other.redb");
    {
        use eskv::redb::redb;
        let db = redb::Database::create(&other).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("settings");
            let mut t = w.open_table(def).unwrap();
            t.insert("colour", "blue").unwrap();
        }
        w.commit().unwrap();
    }
    let other_before = file_hash(&other);
    for cmd in ["check", "info", "read", "export"] {
        let r = fails(d, &["--store", "redb:other.redb", cmd], None);
        assert!(
            r.stderr.contains("not an eskv store"),
            "{cmd}: {}",
            r.stderr
        );
        assert_eq!(
            file_hash(&other),
            other_before,
            "eskv {cmd} changed another application's file"
        );
    }

    // A 0-byte file is not a store, and stays 0 bytes.
    std::fs::write(d.join("empty.redb"), b"").unwrap();
    for cmd in ["check", "info", "read", "export", "streams"] {
        let r = fails(d, &["--store", "redb:empty.redb", cmd], None);
        assert!(r.stderr.contains("empty"), "{cmd}: {}", r.stderr);
        assert_eq!(
            std::fs::metadata(d.join("empty.redb")).unwrap().len(),
            0,
            "{cmd}"
        );
    }
    // A missing file is not created.
    for cmd in ["check", "info", "read", "export", "streams", "types"] {
        let r = fails(d, &["--store", "redb:none.redb", cmd], None);
        assert!(r.stderr.contains("does not exist"), "{cmd}: {}", r.stderr);
        assert!(!d.join("none.redb").exists(), "{cmd}");
    }
}

/// Item 15: an import killed half-way leaves a store that `check`, `info`
/// and a second `import` all recognise as unfinished.
#[test]
fn an_interrupted_import_is_never_taken_for_a_healthy_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An export big enough that the import is still writing when killed.
    let n = 150_000u64;
    let mut export = String::with_capacity(n as usize * 160);
    let mut digest = eskv_cli::line::Digest::default();
    export.push_str(&format!(
        "{{\"eskv_export\":1,\"head\":{n},\"types\":[],\"strict\":false}}\n"
    ));
    for p in 1..=n {
        let l = format!(
            "{{\"position\":{p},\"id\":\"{}\",\"type\":\"Tick\",\"tags\":[\"t:{}\"],\"data\":{{\"i\":{p}}},\"recorded_at\":\"2025-01-01T00:00:00.000Z\"}}",
            eskv::Ulid::from_parts(1, u128::from(p)),
            p % 13
        );
        digest.add(&l);
        export.push_str(&l);
        export.push('\n');
    }
    export.push_str(&format!(
        "{{\"eskv_export_end\":{{\"events\":{n},\"crc32c\":\"{}\"}}}}\n",
        digest.hex()
    ));
    std::fs::write(d.join("big.jsonl"), &export).unwrap();
    let s = store("cut.redb");
    let path = d.join("cut.redb");
    let mut child = cmd(d, &["--store", &s, "import", "--in", "big.jsonl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has written a good part, then SIGKILL it.
    let start = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import finished before it could be killed: make the input bigger"
        );
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 4 << 20) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the import wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(!status.success());

    let r = fails(d, &["--store", &s, "check"], None);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stdout.contains("import"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("to write {n} events")),
        "{}",
        r.stdout
    );
    let info: Value = serde_json::from_str(&ok(d, &["--store", &s, "info"], None)).unwrap();
    assert_eq!(info["import_in_progress"]["expected_events"], n, "{info}");
    assert!(info["head"].as_u64().unwrap() < n, "{info}");
    let r = fails(d, &["--store", &s, "import", "--in", "big.jsonl"], None);
    assert!(r.stderr.contains("did not finish"), "{}", r.stderr);
}

/// A damaged page makes redb panic inside a read. `check` must report the
/// damage (exit 4, or 1 for a file that does not open at all), never exit
/// 101 as an internal error, and must leave the file as it found it, so
/// that a file that could be read stays readable.
#[test]
fn damaged_pages_are_reported_never_internal_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("good.redb");
    seed(d, &s);
    let good = std::fs::read(d.join("good.redb")).unwrap();
    let pages = good.len() / 4096;
    assert!(
        pages >= 4,
        "store too small to damage page by page: {pages} pages"
    );
    let mut codes = std::collections::BTreeMap::new();
    for page in 1..pages {
        let mut bad = good.clone();
        // Scribble over the middle of the page: enough to break whatever
        // b-tree node or value lives there.
        let at = page * 4096 + 64;
        for b in &mut bad[at..at + 512] {
            *b ^= 0x5a;
        }
        let name = format!("bad-{page}.redb");
        std::fs::write(d.join(&name), &bad).unwrap();
        let r = run(d, &["--store", &store(&name), "check"], None);
        assert!(
            [0, 1, 4].contains(&r.code),
            "page {page}: check exited {} (stderr: {})",
            r.code,
            r.stderr
        );
        assert!(
            !r.stderr.contains("internal error in eskv"),
            "page {page}: a damaged page was reported as an internal error: {}",
            r.stderr
        );
        assert_eq!(
            std::fs::read(d.join(&name)).unwrap(),
            bad,
            "page {page}: check changed the damaged file"
        );
        *codes.entry(r.code).or_insert(0) += 1;
    }
    // The damage was seen: not every damaged copy passed as clean.
    assert!(
        codes.keys().any(|&c| c != 0),
        "no damaged page was noticed: {codes:?}"
    );
}

/// The store URL sets redb's page cache; a size that
/// does not parse is bad usage (exit 2) and creates nothing.
#[test]
fn redb_cache_size_in_the_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = "redb:c.redb?cache=16MiB";
    seed(d, s);
    assert!(d.join("c.redb").exists(), "the path stops before ?cache=");
    let out = ok(d, &["--store", s, "read"], None);
    assert!(out.contains("CourseDefined"), "{out}");
    ok(d, &["--store", "redb:c.redb?cache=1GiB", "check"], None);
    let r = run(d, &["--store", "redb:n.redb?cache=64MB", "info"], None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not a size"), "{}", r.stderr);
    assert!(!d.join("n.redb").exists());
}

#[test]
fn delete_compact_and_forget_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("life.redb");
    let payload = "x".repeat(2000);
    let lines: String = (0..300)
        .map(|_| format!("{{\"type\":\"Big\",\"data_text\":\"{payload}\"}}\n"))
        .collect();
    ok(
        d,
        &["--store", &s, "append", "--stream", "bulk-1"],
        Some(&lines),
    );
    ok(
        d,
        &[
            "--store", &s, "append", "--type", "Kept", "--stream", "keep-1", "--data", "1",
        ],
        None,
    );
    ok(
        d,
        &[
            "--store",
            &s,
            "delete-stream",
            "bulk-1",
            "--expected",
            "300",
        ],
        None,
    );
    let again = fails(d, &["--store", &s, "delete-stream", "bulk-1"], None);
    assert_eq!(again.code, 3, "{}", again.stderr);
    let out = json_lines(&ok(d, &["--store", &s, "--json", "compact"], None));
    assert_eq!(out[0]["events_removed"], 300);
    let file = &out[0]["file"];
    assert!(
        file["bytes_after"].as_u64().unwrap() * 2 < file["bytes_before"].as_u64().unwrap(),
        "{file}"
    );
    let log = json_lines(&ok(d, &["--store", &s, "read"], None));
    let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Kept", "$stream-deleted"]);
    assert_eq!(log[0]["position"], 301, "positions are kept");
    ok(d, &["--store", &s, "check"], None);
    ok(
        d,
        &["--store", &s, "delete-stream", "keep-1", "--tombstone"],
        None,
    );
    let closed = fails(
        d,
        &[
            "--store", &s, "append", "--type", "Kept", "--stream", "keep-1", "--data", "2",
        ],
        None,
    );
    assert_eq!(closed.code, 3);
    assert!(closed.stderr.contains("tombstoned"), "{}", closed.stderr);
    ok(
        d,
        &[
            "--store",
            &s,
            "retention",
            "other-1",
            "--max-count",
            "5",
            "--expected",
            "no-stream",
        ],
        None,
    );
    let unknown = fails(d, &["--store", &s, "forget", "user-9"], None);
    assert_eq!(unknown.code, 2);
    assert!(unknown.stderr.contains("user-9"), "{}", unknown.stderr);
    let bad_key = fails(d, &["--store", &s, "--store-key", "abc", "read"], None);
    assert_eq!(bad_key.code, 2, "{}", bad_key.stderr);
}

/// A redb store written through the library with personal data of
/// `user-1` under the store key of 32 bytes `key`.
fn personal_store(path: &Path, key: u8) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let es = keyed(path, key).await;
        es.append_to_stream(
            "user-1",
            eskv::ExpectedVersion::NoStream,
            vec![eskv::NewEvent::new("Registered", b"{}".to_vec())
                .with_personal_data("user-1", b"Ada Lovelace".to_vec())],
        )
        .await
        .unwrap();
        es.append(vec![eskv::NewEvent::new("Tick", b"{}".to_vec())], None)
            .await
            .unwrap();
    });
}

async fn keyed(path: &Path, key: u8) -> eskv::EventStore {
    let kv = eskv::redb::RedbStore::open(path).await.unwrap();
    let opts = eskv::EventStoreOptions::default().store_key(eskv::StoreKey::from_bytes([key; 32]));
    eskv::EventStore::open_with(std::sync::Arc::new(kv), opts)
        .await
        .unwrap()
}

/// The personal part of the first event of `path`, read with `key`.
fn first_personal(path: &Path, key: u8) -> Option<Vec<u8>> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let es = keyed(path, key).await;
        let log = es.read_all(eskv::ReadOptions::new()).await.unwrap().events;
        log[0]
            .personal
            .as_ref()
            .unwrap()
            .bytes()
            .map(<[u8]>::to_vec)
    })
}

#[test]
fn personal_data_exports_imports_and_copies_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ab, cd) = ("ab".repeat(32), "cd".repeat(32));
    personal_store(&d.join("p.redb"), 0xab);
    let p = store("p.redb");
    let no_key = fails(d, &["--store", &p, "read"], None);
    assert!(no_key.stderr.contains("store key"), "{}", no_key.stderr);
    // A backup needs no store key: nothing is decrypted, and nothing
    // personal is written in clear.
    ok(d, &["--store", &p, "export", "--out", "p.jsonl"], None);
    let text = std::fs::read_to_string(d.join("p.jsonl")).unwrap();
    assert!(!text.contains("Ada"), "{text}");
    assert!(
        text.contains("\"eskv_subject_key\"") && text.contains("\"sealed\""),
        "{text}"
    );
    // The wrong key: exit 2, nothing imported.
    let wrong = fails(
        d,
        &[
            "--store",
            &store("w.redb"),
            "--store-key",
            &cd,
            "import",
            "--in",
            "p.jsonl",
        ],
        None,
    );
    assert_eq!(wrong.code, 2, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("store key"), "{}", wrong.stderr);
    // Found when the file is checked, before the target is created.
    assert!(!d.join("w.redb").exists(), "{}", wrong.stderr);
    // The right key: readable again.
    let imported = json_lines(&ok(
        d,
        &[
            "--store",
            &store("r.redb"),
            "--store-key",
            &ab,
            "import",
            "--in",
            "p.jsonl",
        ],
        None,
    ));
    assert_eq!(imported[0]["verified"], true);
    assert_eq!(
        first_personal(&d.join("r.redb"), 0xab).as_deref(),
        Some(&b"Ada Lovelace"[..])
    );
    // A copy into a store with another key re-wraps the subject key.
    let copied = json_lines(&ok(
        d,
        &[
            "--store-key",
            &ab,
            "copy",
            "--from",
            &p,
            "--to",
            &store("c.redb"),
            "--to-store-key",
            &cd,
        ],
        None,
    ));
    assert_eq!(copied[0]["verified"], true, "{copied:?}");
    assert_eq!(
        first_personal(&d.join("c.redb"), 0xcd).as_deref(),
        Some(&b"Ada Lovelace"[..])
    );
    // Forgotten: exported erased, and restored erased.
    let forgot = json_lines(&ok(
        d,
        &["--store", &p, "--store-key", &ab, "forget", "user-1"],
        None,
    ));
    assert_eq!(forgot[0]["forgotten"], true);
    ok(d, &["--store", &p, "export", "--out", "f.jsonl"], None);
    let text = std::fs::read_to_string(d.join("f.jsonl")).unwrap();
    assert!(
        text.contains("\"erased\":true") && !text.contains("\"sealed\""),
        "{text}"
    );
    ok(
        d,
        &[
            "--store",
            &store("f.redb"),
            "--store-key",
            &ab,
            "import",
            "--in",
            "f.jsonl",
        ],
        None,
    );
    assert_eq!(first_personal(&d.join("f.redb"), 0xab), None);

    // An archive leaves the keys in its store: its import needs
    // --keys-from, and a forget there shreds the archived copy.
    personal_store(&d.join("q.redb"), 0xab);
    let q = store("q.redb");
    ok(
        d,
        &[
            "--store", &q, "archive", "--stream", "user-1", "--out", "a.jsonl",
        ],
        None,
    );
    let text = std::fs::read_to_string(d.join("a.jsonl")).unwrap();
    assert!(
        !text.contains("Ada") && !text.contains("eskv_subject_key"),
        "{text}"
    );
    let keyless = fails(
        d,
        &[
            "--store",
            &store("a1.redb"),
            "--store-key",
            &ab,
            "import",
            "--in",
            "a.jsonl",
        ],
        None,
    );
    assert_eq!(keyless.code, 2, "{}", keyless.stderr);
    assert!(keyless.stderr.contains("--keys-from"), "{}", keyless.stderr);
    for (target, forget_first, want) in [
        ("a2.redb", false, Some(&b"Ada Lovelace"[..])),
        ("a3.redb", true, None),
    ] {
        if forget_first {
            ok(
                d,
                &["--store", &q, "--store-key", &ab, "forget", "user-1"],
                None,
            );
        }
        ok(
            d,
            &[
                "--store",
                &store(target),
                "--store-key",
                &ab,
                "import",
                "--in",
                "a.jsonl",
                "--keys-from",
                &q,
            ],
            None,
        );
        assert_eq!(
            first_personal(&d.join(target), 0xab).as_deref(),
            want,
            "{target}"
        );
    }
}

#[test]
fn exports_of_stores_with_removals_import_with_their_holes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("src.redb");
    for i in 0..4 {
        let stream = if i % 2 == 0 { "gone-1" } else { "kept-1" };
        ok(
            d,
            &[
                "--store", &s, "append", "--type", "E", "--stream", stream, "--data", "1",
            ],
            None,
        );
    }
    ok(
        d,
        &[
            "--store",
            &s,
            "retention",
            "kept-1",
            "--truncate-before",
            "2",
        ],
        None,
    );
    ok(d, &["--store", &s, "delete-stream", "gone-1"], None);
    ok(d, &["--store", &s, "compact"], None);
    ok(d, &["--store", &s, "export", "--out", "x.jsonl"], None);
    let t = store("dst.redb");
    ok(d, &["--store", &t, "import", "--in", "x.jsonl"], None);
    let a = ok(d, &["--store", &s, "read"], None);
    let b = ok(d, &["--store", &t, "read"], None);
    assert_eq!(a, b, "the same events at the same positions");
    let positions: Vec<u64> = json_lines(&b)
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [4, 5, 6]);
    ok(d, &["--store", &t, "check"], None);
    // The stream continues where it was.
    let r = json_lines(&ok(
        d,
        &[
            "--store",
            &t,
            "append",
            "--type",
            "E",
            "--stream",
            "kept-1",
            "--expected",
            "2",
            "--data",
            "1",
        ],
        None,
    ));
    assert_eq!(r[0]["stream_version"], 3, "{r:?}");
}

/// Commands that change a store never create one: a mistyped path is an
/// error that names it, and leaves no file or directory behind.
#[test]
fn commands_that_change_a_store_refuse_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, store) in [
        ("evnets.redb", store("evnets.redb")),
        ("evnets-fjall", "fjall:evnets-fjall".to_owned()),
    ] {
        for args in [
            vec!["compact"],
            vec!["retention", "sensor-1", "--max-count", "1000"],
            vec!["delete-stream", "sensor-1"],
            vec!["forget", "user-1"],
            vec!["archive", "--before-position", "2", "--out", "a.jsonl"],
        ] {
            let mut all = vec!["--store", store.as_str()];
            all.extend(&args);
            let r = fails(d, &all, None);
            assert!(r.stderr.contains(name), "{all:?}: {}", r.stderr);
            assert!(r.stderr.contains("no eskv store"), "{all:?}: {}", r.stderr);
            assert!(!d.join(name).exists(), "{all:?} created {name}");
        }
    }
}

/// `eskv` without a command names every command `eskv --help` lists.
#[test]
fn no_command_names_every_command() {
    let help = ok(Path::new("."), &["--help"], None);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 15, "{help}");
    let r = fails(Path::new("."), &[], None);
    assert_eq!(r.code, 2);
    for c in &commands {
        assert!(r.stderr.contains(c), "{c} missing from: {}", r.stderr);
    }
}

/// An archive whose personal data comes after plain events (and after a
/// hole, which makes the import write what it has so far) is refused
/// before anything is written when its keys are missing: the target is
/// left as it was, not half-imported.
#[test]
fn an_import_missing_subject_keys_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ab = "ab".repeat(32);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let es = keyed(&d.join("src.redb"), 0xab).await;
        for (stream, personal) in [("user-1", false), ("other", false), ("user-1", true)] {
            let mut e = eskv::NewEvent::new("Registered", b"{}".to_vec());
            if personal {
                e = e.with_personal_data("user-1", b"Ada Lovelace".to_vec());
            }
            es.append_to_stream(stream, eskv::ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
    });
    let src = store("src.redb");
    ok(
        d,
        &[
            "--store", &src, "archive", "--stream", "user-1", "--out", "a.jsonl",
        ],
        None,
    );
    let r = fails(
        d,
        &[
            "--store",
            &store("t.redb"),
            "--store-key",
            &ab,
            "import",
            "--in",
            "a.jsonl",
        ],
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--keys-from"), "{}", r.stderr);
    assert!(
        !d.join("t.redb").exists(),
        "the refused import created its target"
    );
    ok(
        d,
        &[
            "--store",
            &store("t.redb"),
            "--store-key",
            &ab,
            "import",
            "--in",
            "a.jsonl",
            "--keys-from",
            &src,
        ],
        None,
    );
    assert_eq!(
        json_lines(&ok(
            d,
            &["--store", &store("t.redb"), "--store-key", &ab, "read"],
            None
        ))
        .len(),
        2
    );
}

/// Errors name the command line's flags (`--store-key`, `--after`), not
/// the library's API, and `--store-key`'s help says what needs it.
#[test]
fn store_key_and_after_errors_name_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ab, cd) = ("ab".repeat(32), "cd".repeat(32));
    personal_store(&d.join("p.redb"), 0xab);
    let p = store("p.redb");
    let no_key = fails(d, &["--store", &p, "read"], None);
    let wrong = fails(d, &["--store", &p, "--store-key", &cd, "read"], None);
    assert_eq!(wrong.code, 2, "{}", wrong.stderr);
    for r in [&no_key, &wrong] {
        assert!(
            r.stderr.contains("--store-key") && r.stderr.contains("ESKV_STORE_KEY"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("EventStoreOptions"), "{}", r.stderr);
    }
    ok(d, &["--store", &p, "--store-key", &ab, "read"], None);
    let r = fails(
        d,
        &[
            "--store",
            &p,
            "--store-key",
            &ab,
            "append",
            "--type",
            "Tick",
            "--fail-if",
            "types=Nope",
            "--after",
            "999",
        ],
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--after 999"), "{}", r.stderr);
    assert!(!r.stderr.contains("consistent_through"), "{}", r.stderr);
    // The help: the tool never appends personal parts, and `read` shows
    // only their subject.
    let help = ok(Path::new("."), &["--help"], None);
    let at = help
        .find("--store-key <HEX>")
        .expect("--store-key in the help");
    let text = &help[at..];
    let text = &text[..text[3..].find("\n  -").map_or(text.len(), |i| i + 3)];
    assert!(!text.contains("append"), "{text}");
    assert!(
        text.contains("read") && text.contains("subject") && text.contains("export"),
        "{text}"
    );
}

/// Bad import files are bad input (exit 2) and create no target; an
/// import that would fail on the store key or on --keys-from creates no
/// target either.
#[test]
fn bad_import_files_exit_2_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("src.redb");
    seed(d, &s);
    ok(d, &["--store", &s, "export", "--out", "good.jsonl"], None);
    let good = std::fs::read_to_string(d.join("good.jsonl")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert!(lines.len() >= 5, "{good}");
    let mut duplicated = lines.clone();
    duplicated.insert(2, lines[2]);
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let cases: Vec<(&str, String)> = vec![
        ("truncated", good[..good.len() / 2].to_owned()),
        ("garbage", "garbage, not an export\n".to_owned()),
        ("binary", "\u{0}\u{1}\u{2}".to_owned()),
        ("empty", String::new()),
        ("duplicated", duplicated.join("\n") + "\n"),
        ("out-of-order", swapped.join("\n") + "\n"),
        ("no-trailer", lines[..lines.len() - 1].join("\n") + "\n"),
    ];
    for (name, text) in &cases {
        let file = format!("{name}.jsonl");
        if *name == "binary" {
            std::fs::write(d.join(&file), [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
        } else {
            std::fs::write(d.join(&file), text).unwrap();
        }
        let target = format!("{name}.redb");
        let r = fails(
            d,
            &["--store", &store(&target), "import", "--in", &file],
            None,
        );
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(!d.join(&target).exists(), "{name}: the target was created");
        // The same on stdin, which is read once: exit 2 when nothing was
        // written, 1 when the import wrote events before it met the fault.
        if *name != "binary" {
            let r = fails(d, &["--store", &store(&target), "import"], Some(text));
            let wrote = r.stderr.contains("marked as an unfinished import");
            assert_eq!(
                r.code,
                if wrote { 1 } else { 2 },
                "stdin {name}: {}",
                r.stderr
            );
        }
    }

    // The wrong store key, and a --keys-from store that is not there:
    // refused before the target is created.
    personal_store(&d.join("p.redb"), 0xab);
    ok(
        d,
        &["--store", &store("p.redb"), "export", "--out", "p.jsonl"],
        None,
    );
    let cd = "cd".repeat(32);
    for args in [
        vec!["--store-key", &cd, "import", "--in", "p.jsonl"],
        vec!["import", "--in", "p.jsonl"],
        vec![
            "import",
            "--in",
            "good.jsonl",
            "--keys-from",
            "redb:nonexistent.redb",
        ],
    ] {
        let mut all = vec!["--store", "redb:k.redb"];
        all.extend(&args);
        let r = fails(d, &all, None);
        assert!(
            !d.join("k.redb").exists(),
            "{args:?} left the target behind: {}",
            r.stderr
        );
    }
}

/// `check` counts the live events (what `read` and `export` return), as
/// `info --help` says, and says how many are still stored until `compact`.
#[test]
fn check_counts_live_events_as_the_help_says() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = store("live.redb");
    for stream in ["s", "s", "s", "t"] {
        ok(
            d,
            &["--store", &s, "append", "--type", "A", "--stream", stream],
            None,
        );
    }
    ok(d, &["--store", &s, "delete-stream", "s"], None);
    let live = json_lines(&ok(d, &["--store", &s, "read"], None)).len();
    assert_eq!(live, 2, "t's event and the deletion");
    let help = ok(d, &["info", "--help"], None);
    assert!(help.contains("`check` counts the live events"), "{help}");
    let v: Value = serde_json::from_str(&ok(d, &["--store", &s, "check"], None)).unwrap();
    assert_eq!(v["events"], live, "{v}");
    assert_eq!(v["stored_events"], 5, "{v}");
    ok(d, &["--store", &s, "compact"], None);
    let v: Value = serde_json::from_str(&ok(d, &["--store", &s, "check"], None)).unwrap();
    assert_eq!(
        (&v["events"], &v["stored_events"]),
        (&live.into(), &live.into()),
        "{v}"
    );
}

/// `copy` sees through spellings of one file: `--to redb:./x` when
/// `--from redb:x` is bad usage at once, not a wait for the file's lock.
#[test]
fn copy_to_the_same_file_by_another_spelling_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    let s = store("events.redb");
    seed(d, &s);
    let abs = format!("redb:{}", d.join("events.redb").display());
    for to in [
        "redb:./events.redb",
        "redb:sub/../events.redb",
        abs.as_str(),
    ] {
        let start = Instant::now();
        let r = fails(
            d,
            &["--lock-timeout", "5", "copy", "--from", &s, "--to", to],
            None,
        );
        assert_eq!(r.code, 2, "{to}: {}", r.stderr);
        assert!(r.stderr.contains("same store"), "{to}: {}", r.stderr);
        assert!(start.elapsed() < Duration::from_secs(4), "{to}: waited");
    }
    // A target that does not exist yet, spelled with a directory.
    let out = ok(
        d,
        &["copy", "--from", &s, "--to", "redb:./sub/../copy.redb"],
        None,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["verified"],
        true
    );
}
