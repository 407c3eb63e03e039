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
                .contains("accepted forms: redb:PATH, memory:, tikv://"),
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
    assert!(lines[0].starts_with(r#"{"eskv_export":1,"head":5,"#));
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
    assert_eq!(events[0]["data"]["title"], "Maths");
    assert_eq!(events[0]["metadata"]["correlation_id"], "req-1");
    assert_eq!(events[0]["metadata"]["extra"]["user"], "alice");
    assert_eq!(events[2]["data_text"], "not json, but text");
    assert_eq!(events[3]["data_base64"], "AP+AAQ==");
    assert_eq!(events[4]["version"], 2);
    // --data is stored compacted, spelling kept.
    assert!(read_a.contains(r#""data":[1,2.50,null]"#), "{read_a}");

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
    let mut tail = cmd(d, &["--store", &s, "tail"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
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

/// A one-node etcd on loopback, started by this test and killed on drop.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd if its binary is installed (`ETCD_BIN` or `etcd` on PATH).
fn start_etcd() -> Option<Etcd> {
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    if Command::new(&bin).arg("--version").output().is_err() {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server, or set ETCD_BIN)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&bin)
        .args(["--name", "cli-test"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("cli-test={peer_url}")])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd {
        child,
        url: format!("etcd://127.0.0.1:{client}/cli-test"),
        _dir: dir,
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(etcd)
}

/// `copy` from redb into etcd and back: the way a user outgrows one
/// machine. etcd takes at most 128 operations per transaction, so the
/// import has to split its appends; `tail` there uses a live subscription.
#[test]
fn copy_from_redb_to_etcd_and_back() {
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
    let path = d.join("dmg.redb");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use eskv::KvStore;
            let kv = eskv::redb::RedbStore::open(&path).await.unwrap();
            let mut t = kv.begin().await.unwrap();
            t.delete(eskv::layout::type_key("OrderPlaced", 1));
            t.commit().await.unwrap();
        });
    let r = fails(d, &["--store", &s, "check"], None);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("check found 1 problem"), "{}", r.stderr);
    assert!(r.stdout.contains("\"position\":1"), "{}", r.stdout);
    assert!(r.stdout.contains("\"clean\":false"), "{}", r.stdout);
}
