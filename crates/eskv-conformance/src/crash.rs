//! Crash consistency under SIGKILL, for any embedded backend: a child process appends continuously (single
//! appends, batches, DCB conditional appends, stream appends with expected
//! versions, from four concurrent tasks) and reports every append it tries
//! and every acknowledgement on a pipe. The harness SIGKILLs it at a random
//! moment, reopens the file, runs `verify`, and checks that every
//! acknowledged event is present at its acknowledged position, that no
//! append is partly visible, that rejected appends left nothing, that no
//! event exists that nobody appended, and that positions stay gapless.
//!
//! The child is the backend's test binary itself, re-executed with
//! `ESKV_CRASH_CHILD` set and filtered to the ignored `crash_child` test;
//! [`crash_suite!`](crate::crash_suite) defines both tests from an opener.
//!
//! - `ESKV_CRASH_ROUNDS` (default 50): kill-and-reopen rounds. Every
//!   `rounds_per_file` rounds (50 unless the backend's test says otherwise)
//!   start on a fresh store, so long runs keep a steady pace: each round
//!   verifies the whole store, and a backend that appends faster grows it
//!   faster.
//! - `ESKV_CRASH_SEED`: replay a run (the seed is printed).

use eskv_core::verify::verify;
use eskv_core::KvStore;
use eskv_core::{
    AppendCondition, Error, EventStore, ExpectedVersion, NewEvent, Query, ReadOptions, Ulid,
};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ESKV_CRASH_CHILD";
const TASKS: u64 = 4;

/// xorshift64*: tiny, seeded, reproducible.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Opens (or creates) a durable store at a path: each backend's test
/// passes its own.
pub type Opener = fn(PathBuf) -> BoxFuture<'static, eskv_core::Result<Arc<dyn KvStore>>>;

async fn open_retrying(open: Opener, path: &Path) -> Arc<dyn KvStore> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(path.to_path_buf()).await {
            Ok(s) => return s,
            Err(Error::Unavailable { .. } | Error::StoreLocked { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// The child: appends until killed.
// ---------------------------------------------------------------------------

/// One output line, written and flushed whole.
fn say(out: &Mutex<std::io::Stdout>, line: String) {
    let out = out.lock().unwrap_or_else(|p| p.into_inner());
    let mut w = out.lock();
    // A failed write means the parent is gone; the kill is coming.
    let _ = w.write_all(line.as_bytes());
    let _ = w.write_all(b"\n");
    let _ = w.flush();
}

fn ids_text(events: &[NewEvent]) -> String {
    events
        .iter()
        .map(|e| e.id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn child_task(es: EventStore, out: Arc<Mutex<std::io::Stdout>>, task: u64, seed: u64) {
    let mut rng = Rng::new(seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let round = seed >> 32;
    // Stream versions this task owns, read after the last crash.
    let mut versions = HashMap::new();
    for j in 0..3 {
        let s = format!("acct-{task}-{j}");
        let info = es.stream_info(&s).await.expect("stream info");
        versions.insert(s, info.version);
    }
    for n in 0u64.. {
        let key = format!("{task}.{n}");
        let pick = rng.below(100);
        let payload = |i: u64| format!("{{\"task\":{task},\"n\":{n},\"i\":{i}}}").into_bytes();
        let (kind, req) = if pick < 30 {
            let e = NewEvent::new("Single", payload(0)).with_tags([format!("task:{task}")]);
            ("single", eskv_core::AppendRequest::new(vec![e]))
        } else if pick < 55 {
            let k = 1 + rng.below(20);
            let events = (0..k)
                .map(|i| NewEvent::new("Batch", payload(i)).with_tags([format!("batch:{key}")]))
                .collect();
            ("batch", eskv_core::AppendRequest::new(events))
        } else if pick < 80 {
            // Uniqueness: claim a user name shared by 5 consecutive rounds
            // and by all four tasks, only if nobody holds it.
            let user = format!("user:{}-{}", round / 5, rng.below(24));
            let q = Query::of(["Claimed"], vec![user.clone()]);
            let after = if rng.below(2) == 0 {
                match es.read(&q, ReadOptions::new()).await {
                    Ok(r) if !r.events.is_empty() => continue, // taken
                    Ok(r) => Some(r.consistent_through),
                    Err(e) => {
                        say(&out, format!("ERR {key} read: {e}"));
                        std::process::exit(3);
                    }
                }
            } else {
                None
            };
            let e = NewEvent::new("Claimed", payload(0)).with_tags([user]);
            let req =
                eskv_core::AppendRequest::new(vec![e]).condition(AppendCondition::new(q, after));
            ("claim", req)
        } else {
            let s = format!("acct-{task}-{}", rng.below(3));
            let v = versions[&s];
            let expected = if v == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(v)
            };
            let k = 1 + rng.below(4);
            let events = (0..k)
                .map(|i| NewEvent::new("Moved", payload(i)).with_tags([format!("acct:{s}")]))
                .collect();
            (
                "stream",
                eskv_core::AppendRequest::new(events).stream(s, expected),
            )
        };
        let stream = req.stream.as_ref().map(|(s, _)| s.clone());
        say(&out, format!("TRY {key} {kind} {}", ids_text(&req.events)));
        match es.submit(req).await {
            Ok(r) => {
                if let (Some(s), Some(v)) = (&stream, r.stream_version) {
                    versions.insert(s.clone(), v);
                }
                say(
                    &out,
                    format!(
                        "ACK {key} {} {} {}",
                        r.first_position,
                        r.last_position,
                        r.stream_version.map_or("-".to_string(), |v| v.to_string())
                    ),
                );
            }
            Err(Error::ConditionFailed { position, .. }) if kind == "claim" => {
                say(&out, format!("REJ {key} condition {position}"));
            }
            Err(e) => {
                say(&out, format!("ERR {key} {e}"));
                std::process::exit(3);
            }
        }
    }
}

fn run_child(open: Opener, path: &str) {
    let seed: u64 = std::env::var("ESKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let kv = open_retrying(open, Path::new(path)).await;
        let es = EventStore::open(kv).await.expect("open");
        // libtest has printed "test crash_child ... " without a newline.
        say(&out, "\nREADY".into());
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(child_task(es.clone(), out.clone(), t, seed)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// The child process's entry point (the ignored `crash_child` test); does
/// nothing unless re-executed by [`consistency`].
pub fn child(open: Opener) {
    match std::env::var(CHILD_ENV) {
        Ok(path) => run_child(open, &path),
        Err(_) => eprintln!("crash_child only runs as the child of crash_consistency"),
    }
}

// ---------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Tried {
    round: u64,
    kind: String,
    ids: Vec<Ulid>,
    ack: Option<(u64, u64, Option<u64>)>,
    rejected: bool,
    /// First position once the append was seen in the log: it must stay.
    present_at: Option<u64>,
}

#[derive(Default)]
struct Figures {
    rounds: u64,
    killed_before_ready: u64,
    acked_appends: u64,
    acked_events: u64,
    unacked_present: u64,
    unacked_absent: u64,
    rejected: u64,
    events_checked: u64,
}

/// Reads the child's complete lines until EOF; a torn last line is dropped.
fn read_lines(stdout: std::process::ChildStdout, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) if buf.last() == Some(&b'\n') => {
                let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
            Ok(_) => return, // torn by the kill
        }
    }
}

fn parse_ids(s: &str) -> Vec<Ulid> {
    s.split(',')
        .map(|x| x.parse().expect("ulid from the child"))
        .collect()
}

fn record(line: &str, round: u64, tried: &mut BTreeMap<(u64, String), Tried>) {
    let mut parts = line.split(' ');
    let tag = parts.next().unwrap_or("");
    match tag {
        "READY" => {}
        "TRY" => {
            let key = parts.next().expect("key").to_string();
            let kind = parts.next().expect("kind").to_string();
            let ids = parse_ids(parts.next().expect("ids"));
            tried.insert(
                (round, key),
                Tried {
                    round,
                    kind,
                    ids,
                    ack: None,
                    rejected: false,
                    present_at: None,
                },
            );
        }
        "ACK" => {
            let key = parts.next().expect("key").to_string();
            let first: u64 = parts.next().and_then(|x| x.parse().ok()).expect("first");
            let last: u64 = parts.next().and_then(|x| x.parse().ok()).expect("last");
            let version = parts.next().and_then(|x| x.parse().ok());
            let t = tried
                .get_mut(&(round, key))
                .expect("an ACK follows its TRY");
            t.ack = Some((first, last, version));
        }
        "REJ" => {
            let key = parts.next().expect("key").to_string();
            tried
                .get_mut(&(round, key))
                .expect("REJ after TRY")
                .rejected = true;
        }
        "ERR" => panic!("round {round}: the child failed: {line}"),
        _ => {} // the test harness's own output
    }
}

/// Checks the reopened store against everything the children reported.
async fn check_round(
    open: Opener,
    path: &Path,
    round: u64,
    tried: &mut BTreeMap<(u64, String), Tried>,
    last_head: &mut u64,
    f: &mut Figures,
) {
    let kv = open_retrying(open, path).await;
    let es = EventStore::open(kv).await.expect("reopen");
    let report = verify(&es).await.expect("verify runs");
    assert!(report.is_clean(), "round {round}: {report}");

    let all = es.read_all(ReadOptions::new()).await.expect("read log");
    let head = all.consistent_through;
    assert!(
        head >= *last_head,
        "round {round}: head went back from {last_head} to {head}"
    );
    *last_head = head;
    assert_eq!(all.events.len() as u64, head, "round {round}: log size");
    let mut at: HashMap<Ulid, u64> = HashMap::with_capacity(all.events.len());
    for (i, e) in all.events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "round {round}: gap");
        assert!(
            at.insert(e.id, e.position).is_none(),
            "round {round}: id {} twice",
            e.id
        );
    }
    f.events_checked += head;

    let mut explained = 0u64;
    for ((r, key), t) in tried.iter_mut() {
        let present: Vec<Option<u64>> = t.ids.iter().map(|id| at.get(id).copied()).collect();
        let n = present.iter().flatten().count();
        if let Some((first, last, version)) = t.ack {
            assert_eq!(
                last - first + 1,
                t.ids.len() as u64,
                "{r}/{key}: acknowledged range size"
            );
            for (i, p) in present.iter().enumerate() {
                assert_eq!(
                    *p,
                    Some(first + i as u64),
                    "round {round}: acknowledged event {} of {r}/{key} ({}) lost or moved",
                    t.ids[i],
                    t.kind
                );
            }
            if let Some(v) = version {
                let e = &all.events[last as usize - 1];
                assert_eq!(e.stream.as_ref().map(|s| s.version), Some(v));
            }
        } else if t.rejected {
            assert_eq!(
                n, 0,
                "round {round}: rejected append {r}/{key} left {n} events"
            );
        } else {
            assert!(
                n == 0 || n == t.ids.len(),
                "round {round}: append {r}/{key} ({}) is partly visible: {n} of {}",
                t.kind,
                t.ids.len()
            );
            if n > 0 {
                let first = present[0].unwrap_or(0);
                for (i, p) in present.iter().enumerate() {
                    assert_eq!(*p, Some(first + i as u64), "{r}/{key}: not contiguous");
                }
            }
        }
        if n > 0 {
            let first = present[0].unwrap_or(0);
            if let Some(was) = t.present_at {
                assert_eq!(was, first, "round {round}: {r}/{key} moved");
            }
            t.present_at = Some(first);
            explained += n as u64;
        } else {
            assert!(
                t.present_at.is_none(),
                "round {round}: {r}/{key} was visible after round {} and is gone",
                t.round
            );
        }
    }
    assert_eq!(
        explained, head,
        "round {round}: the log holds events no child appended"
    );

    // DCB uniqueness across crashes: each user name claimed at most once.
    let mut claims: HashMap<&str, u64> = HashMap::new();
    for e in all.events.iter().filter(|e| e.event_type == "Claimed") {
        for t in &e.tags {
            let c = claims.entry(t.as_str()).or_default();
            *c += 1;
            assert_eq!(*c, 1, "round {round}: '{t}' claimed twice");
        }
    }
}

/// Adds one file's appends to the figures.
fn tally(tried: &BTreeMap<(u64, String), Tried>, f: &mut Figures) {
    for t in tried.values() {
        if t.ack.is_some() {
            f.acked_appends += 1;
            f.acked_events += t.ids.len() as u64;
        } else if t.rejected {
            f.rejected += 1;
        } else if t.present_at.is_some() {
            f.unacked_present += 1;
        } else {
            f.unacked_absent += 1;
        }
    }
}

/// The harness (the `crash_consistency` test): SIGKILLs children that
/// append to stores named `crash-N.<extension>` and checks every reopened
/// store (see the [module docs](self)).
pub fn consistency(open: Opener, extension: &str, rounds_per_file: u64) {
    let rounds_per_file = rounds_per_file.max(1);
    let rounds: u64 = std::env::var("ESKV_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("ESKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("crash_consistency: {rounds} rounds, ESKV_CRASH_SEED={seed}");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().join(format!("crash-0.{extension}"));
    let exe = std::env::current_exe().expect("test binary path");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut tried: BTreeMap<(u64, String), Tried> = BTreeMap::new();
    let mut f = Figures::default();
    let mut last_head = 0u64;
    let mut final_heads = 0u64;
    for round in 0..rounds {
        if round > 0 && round % rounds_per_file == 0 {
            tally(&tried, &mut f);
            tried.clear();
            final_heads += last_head;
            last_head = 0;
            path = dir
                .path()
                .join(format!("crash-{}.{extension}", round / rounds_per_file));
        }
        // Every 8th round dies early: while opening (and recovering) the file.
        let early = round % 8 == 7;
        let child_seed = (round << 32) | (rng.next() & 0xFFFF_FFFF);
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env("ESKV_CRASH_SEED", child_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || read_lines(stdout, tx));

        let mut lines = Vec::new();
        let delay = if early {
            Duration::from_millis(rng.below(15))
        } else {
            // Wait for READY, then let it run 10–150 ms.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(l) if l == "READY" => {
                        lines.push(l);
                        break;
                    }
                    Ok(l) => lines.push(l),
                    Err(e) => {
                        let _ = child.kill();
                        panic!("round {round}: the child never got ready: {e:?}");
                    }
                }
            }
            Duration::from_millis(10 + rng.below(141))
        };
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap the child");
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());
        if !lines.iter().any(|l| l == "READY") {
            f.killed_before_ready += 1;
        }
        assert!(
            status.code() != Some(3),
            "round {round}: the child reported an error"
        );
        for l in &lines {
            record(l, round, &mut tried);
        }
        rt.block_on(check_round(
            open,
            &path,
            round,
            &mut tried,
            &mut last_head,
            &mut f,
        ));
        f.rounds += 1;
    }

    tally(&tried, &mut f);
    final_heads += last_head;
    eprintln!(
        "crash_consistency: {} kill/reopen rounds survived ({} killed before ready) in {:.1?}; \
         {} acknowledged appends ({} events) all present at their positions; \
         {} unacknowledged appends fully present, {} fully absent, none partial; \
         {} rejected conditional appends absent; {} events in the final files; {} event checks; verify clean every round",
        f.rounds,
        f.killed_before_ready,
        started.elapsed(),
        f.acked_appends,
        f.acked_events,
        f.unacked_present,
        f.unacked_absent,
        f.rejected,
        final_heads,
        f.events_checked
    );
    assert_eq!(f.rounds, rounds);
    assert!(
        f.acked_appends >= rounds,
        "the children did too little work to prove anything: {} acknowledged appends",
        f.acked_appends
    );
}

/// Defines the `crash_consistency` test and its ignored `crash_child` at
/// the top level of a test file (the harness re-executes the binary with
/// the exact filter `crash_child`). `$open` is a [`crash::Opener`](Opener);
/// `$extension` names the stores (`crash-0.<extension>`); `$rounds_per_file`
/// (default 50) is how many rounds share one store.
#[macro_export]
macro_rules! crash_suite {
    ($open:path, $extension:expr) => {
        $crate::crash_suite!($open, $extension, 50);
    };
    ($open:path, $extension:expr, $rounds_per_file:expr) => {
        /// The child process of `crash_consistency`, which runs it.
        #[test]
        #[ignore = "the child process of crash_consistency, which runs it"]
        fn crash_child() {
            $crate::crash::child($open);
        }

        /// SIGKILL at random moments, reopen, check (see `eskv_conformance::crash`).
        #[test]
        fn crash_consistency() {
            $crate::crash::consistency($open, $extension, $rounds_per_file);
        }
    };
}
