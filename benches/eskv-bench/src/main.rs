//! eskv's benchmark harness: every workload on every system,
//! interleaved, on the same disk, in one process run. Writes
//! `BENCHMARKS.md` and an SVG chart.
//!
//! ```text
//! cargo run --release -p eskv-bench -- [--quick] [--large] [--out BENCHMARKS.md]
//! cargo run --release -p eskv-bench -- --help   # every flag
//! ```
#![forbid(unsafe_code)]

mod common;
mod report;
mod sys_eskv;
#[cfg(feature = "etcd")]
mod sys_etcd;
mod sys_raw;
mod sys_raw_fjall;
mod sys_redb_tables;
#[cfg(feature = "umadb")]
mod sys_server;
mod sys_sqlite;
#[cfg(feature = "umadb")]
mod sys_uma;

use clap::Parser;
use common::{percentile, rss, run_for, Ev, Res, Store};
use indicatif::{ProgressBar, ProgressStyle};
use report::{Cell, Results, Unit};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys_eskv::Eskv;
use sys_raw::RawRedb;
use sys_raw_fjall::RawFjall;
use sys_redb_tables::RedbTables;
#[cfg(feature = "umadb")]
use sys_server::Served;
use sys_sqlite::{Layout, Sqlite};

/// System names, in table order.
pub const ESKV_REDB: &str = "eskv-redb";
/// eskv on its fjall backend (an LSM-tree directory).
pub const ESKV_FJALL: &str = "eskv-fjall";
pub const ESKV_MEM: &str = "eskv-mem";
/// Raw redb writing eskv's own key layout (the limit of eskv's layer).
pub const RAW_REDB: &str = "raw-redb-layout";
/// Raw redb with the tables a redb user would write (one record per event).
pub const RAW_REDB_TABLES: &str = "raw-redb-tables";
/// Raw fjall writing eskv's own key layout (the limit of eskv's layer on
/// fjall).
pub const RAW_FJALL: &str = "raw-fjall-layout";
pub const UMADB: &str = "umadb";
pub const UMADB_CACHE: &str = "umadb-mmap-cache";
pub const UMADB_SERVER: &str = "umadb-server";
/// eskv served by `eskv-server` on redb, driven like `umadb-server`.
pub const ESKV_SERVER: &str = "eskv-server";
/// eskv served by `eskv-server` on fjall, driven like `umadb-server`.
pub const ESKV_SERVER_FJALL: &str = "eskv-server-fjall";
/// The served eskv systems and the backend under each.
#[cfg(feature = "umadb")]
const ESKV_SERVED: [(&str, Served); 2] = [
    (ESKV_SERVER, Served::Redb),
    (ESKV_SERVER_FJALL, Served::Fjall),
];
/// SQLite with each event's tags in its own row plus a (tag, position)
/// index table: the SQLite row the targets are judged against.
pub const SQLITE_INLINE: &str = "sqlite-tags-inline";
/// SQLite with the tags only in a tags table, joined back on reads.
pub const SQLITE: &str = "sqlite-tags-joined";
pub const ESKV_ETCD: &str = "eskv-etcd";
pub const RAW_ETCD: &str = "raw-etcd";
pub const FSYNC: &str = "fsync-limit";
pub const SYSTEMS: [&str; 16] = [
    ESKV_REDB,
    ESKV_FJALL,
    ESKV_MEM,
    RAW_REDB,
    RAW_REDB_TABLES,
    RAW_FJALL,
    UMADB,
    UMADB_CACHE,
    UMADB_SERVER,
    ESKV_SERVER,
    ESKV_SERVER_FJALL,
    SQLITE_INLINE,
    SQLITE,
    ESKV_ETCD,
    RAW_ETCD,
    FSYNC,
];

/// The workloads the etcd systems run (writes on the 3-node
/// loopback cluster).
pub const ETCD_WORKLOADS: [&str; 4] = ["W1", "W2", "W4", "W4r"];

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    pub large: bool,
    /// Rounds per workload; systems take turns within each round.
    pub rounds: usize,
    /// Time each system gets per round.
    pub slice: Duration,
    pub writers: usize,
    pub w2_streams: u64,
    pub w4_batch: usize,
    /// W5: number of query tags (each on `per_tag` events).
    pub read_tags: u64,
    pub per_tag: u64,
    /// W7: events per stream.
    pub stream_len: u64,
    pub w8_sizes: Vec<u64>,
    pub w8_window: Duration,
    pub sub_events: usize,
    pub only: Option<Vec<String>>,
    /// Only these workloads (W1..W8, W4r, DISK, SUB, DIAG).
    pub workloads: Option<Vec<String>>,
    pub out: PathBuf,
    pub chart: PathBuf,
    pub dir: Option<PathBuf>,
    pub command: String,
    /// The commit checked out when the run started (the binary is built
    /// from the working tree by `cargo run`), with a note when it is dirty.
    pub commit: String,
    /// Internal: run W8 for this one system and print its cells.
    pub w8_child: Option<String>,
}

impl Config {
    fn read_events(&self) -> u64 {
        self.read_tags * self.per_tag
    }

    fn streams(&self) -> u64 {
        (self.read_events() / self.stream_len).max(1)
    }

    fn wants(&self, system: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == system))
    }

    fn runs(&self, workload: &str) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == workload))
    }
}

/// eskv's benchmark harness: every workload on every system, interleaved,
/// on the same disk, in one process run. Writes a markdown report and an
/// SVG chart.
#[derive(Debug, Parser)]
#[command(name = "eskv-bench", args_override_self = true)]
struct Args {
    /// CI-sized smoke run: every system and workload, small sizes, a few
    /// seconds each.
    #[arg(long)]
    quick: bool,
    /// W8 also at 10M events.
    #[arg(long)]
    large: bool,
    /// Markdown report [default: BENCHMARKS.md at the repository root].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// SVG chart [default: benches/results.svg next to the default report,
    /// else the report's path with .svg].
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Where the stores live [default: a temporary directory under
    /// target/].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Only these systems (names as in the report), comma-separated.
    #[arg(long, value_name = "A,B,..", value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Only these workloads (W1,W2,W3,W4,W4r,W5,W6,W7,DISK,W8,SUB,DIAG),
    /// comma-separated.
    #[arg(long, value_name = "W1,W2,..", value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Interleaving rounds per workload (at least 1).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Each system's turn per round, in milliseconds (at least 10).
    #[arg(long, value_name = "N")]
    slice_ms: Option<u64>,
    /// Internal: run W8 for this one system and print its cells (the
    /// harness starts itself so for each system).
    #[arg(long, value_name = "SYSTEM", hide = true)]
    w8_child: Option<String>,
}

fn parse_args() -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args {
        quick,
        large,
        out,
        chart,
        dir,
        systems: only,
        workloads,
        rounds,
        slice_ms: slice,
        w8_child,
    } = Args::parse();
    let default_out = root.join("BENCHMARKS.md");
    let chart = match (&chart, &out) {
        (Some(c), _) => c.clone(),
        (None, None) => root.join("benches/results.svg"),
        (None, Some(o)) => o.with_extension("svg"),
    };
    let out = out.unwrap_or(default_out);
    let mut command = String::from("cargo run --release -p eskv-bench --");
    for a in &args {
        command.push(' ');
        command.push_str(a);
    }
    let commit = head_commit(&root);
    let mut c = if quick {
        Config {
            quick,
            large,
            rounds: 1,
            slice: Duration::from_millis(300),
            writers: 64,
            w2_streams: 100,
            w4_batch: 100,
            read_tags: 500,
            per_tag: 20,
            stream_len: 1000,
            w8_sizes: vec![1_000, 5_000, 20_000],
            w8_window: Duration::from_millis(200),
            sub_events: 100,
            only,
            workloads: workloads.clone(),
            out,
            chart,
            dir,
            command: command.clone(),
            commit: commit.clone(),
            w8_child: w8_child.clone(),
        }
    } else {
        Config {
            quick,
            large,
            rounds: 5,
            slice: Duration::from_millis(1000),
            writers: 64,
            w2_streams: 1000,
            w4_batch: 100,
            read_tags: 10_000,
            per_tag: 20,
            stream_len: 1000,
            w8_sizes: vec![10_000, 100_000, 1_000_000],
            w8_window: Duration::from_millis(1500),
            sub_events: 2000,
            only,
            workloads: workloads.clone(),
            out,
            chart,
            dir,
            command: command.clone(),
            commit: commit.clone(),
            w8_child: w8_child.clone(),
        }
    };
    if large {
        c.w8_sizes.push(10_000_000);
    }
    if let Some(r) = rounds {
        c.rounds = r.max(1);
    }
    if let Some(s) = slice {
        c.slice = Duration::from_millis(s.max(10));
    }
    c
}

/// HEAD at the start of the run, plus how many tracked files outside
/// `benches/` and `BENCHMARKS.md` differ from it (uncommitted work is built
/// into the binary too).
fn head_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let p = l.get(3..).unwrap_or("");
            !p.starts_with("benches/") && p != "BENCHMARKS.md"
        })
        .count();
    if dirty == 0 {
        format!("{} (at the start of the run; clean)", head.trim())
    } else {
        format!(
            "{} (at the start of the run) plus uncommitted changes in {dirty} tracked file(s)",
            head.trim()
        )
    }
}

/// A small deterministic generator for query choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The disk's fsync limit: 4 KiB written at a rolling offset of a
/// preallocated file, then `fdatasync`, in a loop.
struct FsyncProbe {
    file: std::fs::File,
    offset: u64,
}

const PROBE_SPAN: u64 = 16 << 20;

impl FsyncProbe {
    fn open(dir: &Path) -> Res<FsyncProbe> {
        use std::io::Write;
        let path = dir.join("fsync-probe.bin");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("fsync probe: {e}"))?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..PROBE_SPAN >> 20 {
            file.write_all(&zeros)
                .map_err(|e| format!("fsync probe: {e}"))?;
        }
        file.sync_all().map_err(|e| format!("fsync probe: {e}"))?;
        Ok(FsyncProbe { file, offset: 0 })
    }

    fn commit(&mut self) -> Res<()> {
        use std::os::unix::fs::FileExt;
        let block = [0xa5u8; 4096];
        self.file
            .write_all_at(&block, self.offset)
            .map_err(|e| format!("fsync probe: {e}"))?;
        self.file
            .sync_data()
            .map_err(|e| format!("fsync probe: {e}"))?;
        self.offset = (self.offset + 4096) % PROBE_SPAN;
        Ok(())
    }
}

/// One participant of an interleaved workload: runs for the given budget
/// and returns (operations, elapsed).
type Turn<'a> = Box<dyn FnMut(Duration) -> Res<(u64, Duration)> + 'a>;

struct Harness {
    /// The etcd cluster, when the etcd systems run. Declared before `base`
    /// so that its nodes are killed before their directories are removed.
    #[cfg(feature = "etcd")]
    etcd: Option<sys_etcd::Cluster>,
    cfg: Config,
    pb: ProgressBar,
    results: Results,
    rt: tokio::runtime::Runtime,
    base: tempfile::TempDir,
    data: Arc<[u8]>,
    notes: Vec<String>,
}

impl Harness {
    fn log(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        self.pb.suspend(|| eprintln!("{msg}"));
    }

    fn step(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.pb.set_message(msg);
    }

    fn dir(&self, name: &str) -> Res<PathBuf> {
        let d = self.base.path().join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| format!("clean {name}: {e}"))?;
        }
        std::fs::create_dir_all(&d).map_err(|e| format!("mkdir {name}: {e}"))?;
        Ok(d)
    }

    fn remove(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.base.path().join(name));
    }

    fn record(&mut self, workload: &str, system: &str, cell: Cell) {
        self.log(format!("  {workload:<12} {system:<17} {}", cell.display()));
        self.results.put(workload, system, cell);
    }

    fn fail(&mut self, workload: &str, system: &str, mut e: String) {
        if e.len() > 300 {
            e.truncate(e.floor_char_boundary(300));
            e.push('…');
        }
        self.log(format!("  {workload:<12} {system:<17} FAILED: {e}"));
        self.results.put(workload, system, Cell::failed(e));
    }

    /// Runs `turns` in `rounds`, rotating who goes first, `slice` each;
    /// returns each one's total (operations, elapsed) or its error.
    fn interleave(
        &self,
        workload: &str,
        turns: &mut [(&'static str, Turn<'_>)],
    ) -> Vec<(&'static str, Res<(u64, Duration)>)> {
        let n = turns.len();
        let mut totals: Vec<Res<(u64, Duration)>> = vec![Ok((0, Duration::ZERO)); n];
        for round in 0..self.cfg.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let (name, turn) = &mut turns[i];
                self.step(format!(
                    "{workload} {name} (round {}/{})",
                    round + 1,
                    self.cfg.rounds
                ));
                if let Ok((ops, el)) = &totals[i] {
                    let (ops, el) = (*ops, *el);
                    totals[i] = turn(self.cfg.slice).map(|(o, e)| (ops + o, el + e));
                }
                self.pb.inc(1);
            }
        }
        turns.iter().map(|(n, _)| *n).zip(totals).collect()
    }

    /// Records interleaved totals as rates of `unit`; `per_op` is the
    /// events per operation.
    fn record_rates(
        &mut self,
        workload: &str,
        totals: Vec<(&'static str, Res<(u64, Duration)>)>,
        unit: Unit,
        per_op: u64,
    ) {
        for (name, r) in totals {
            match r {
                Ok((ops, el)) => {
                    let (per_op, unit) = if name == FSYNC {
                        (1, Unit::CommitsPerSec)
                    } else {
                        (per_op, unit)
                    };
                    let v = (ops * per_op) as f64 / el.as_secs_f64().max(1e-9);
                    self.record(workload, name, Cell::new(v, unit).with_ops(ops));
                }
                Err(e) => self.fail(workload, name, e),
            }
        }
    }

    /// Opens a fresh store of every selected system for the workloads
    /// `wls` (a failure to open is recorded under each of them).
    fn open_stores(&mut self, tag: &str, wls: &[&str]) -> Vec<(&'static str, Box<dyn Store>)> {
        let handle = self.rt.handle().clone();
        let mut out: Vec<(&'static str, Box<dyn Store>)> = Vec::new();
        let mut failed = Vec::new();
        let mut names = vec![
            ESKV_REDB,
            ESKV_FJALL,
            ESKV_MEM,
            RAW_REDB,
            RAW_REDB_TABLES,
            RAW_FJALL,
        ];
        if cfg!(feature = "umadb") {
            names.extend([UMADB, UMADB_CACHE]);
            // The served systems run W1 (and W3, in `concurrent`).
            if tag == "W1" {
                names.extend([UMADB_SERVER, ESKV_SERVER, ESKV_SERVER_FJALL]);
            }
        }
        names.extend([SQLITE_INLINE, SQLITE]);
        if self.etcd_endpoints().is_some() && ETCD_WORKLOADS.contains(&tag) {
            names.extend([ESKV_ETCD, RAW_ETCD]);
        }
        for name in names {
            if !self.cfg.wants(name) {
                continue;
            }
            let opened = self.open_one(&handle, tag, name);
            match opened {
                Ok(s) => out.push((name, s)),
                Err(e) => failed.push((name, e)),
            }
        }
        for (name, e) in failed {
            for wl in wls {
                self.fail(wl, name, e.clone());
            }
        }
        out
    }

    fn open_one(
        &self,
        handle: &tokio::runtime::Handle,
        tag: &str,
        name: &'static str,
    ) -> Res<Box<dyn Store>> {
        let dir = || self.dir(&format!("{tag}-{name}"));
        Ok(match name {
            ESKV_REDB => Box::new(Eskv::redb(handle, &dir()?.join("eskv.redb"))?),
            ESKV_FJALL => Box::new(Eskv::fjall(handle, &dir()?.join("eskv"))?),
            RAW_FJALL => Box::new(RawFjall::open(&dir()?.join("raw"))?),
            ESKV_MEM => Box::new(Eskv::memory(handle)?),
            RAW_REDB => Box::new(RawRedb::open(&dir()?.join("raw.redb"))?),
            RAW_REDB_TABLES => Box::new(RedbTables::open(&dir()?.join("tables.redb"))?),
            #[cfg(feature = "umadb")]
            UMADB => Box::new(sys_uma::Uma::open(&dir()?.join("uma.db"), false)?),
            #[cfg(feature = "umadb")]
            UMADB_CACHE => Box::new(sys_uma::Uma::open(&dir()?.join("uma.db"), true)?),
            #[cfg(feature = "umadb")]
            UMADB_SERVER => {
                let server = sys_uma::UmaServer::start(&dir()?.join("uma.db"))?;
                let url = server.url().to_owned();
                Box::new(sys_server::ServedStore::new(
                    handle,
                    &url,
                    Box::new(server),
                )?)
            }
            #[cfg(feature = "umadb")]
            ESKV_SERVER | ESKV_SERVER_FJALL => {
                let backend = ESKV_SERVED
                    .iter()
                    .find_map(|(n, b)| (*n == name).then_some(*b))
                    .expect("a served system");
                let server = sys_server::EskvServer::start(&dir()?, backend)?;
                let url = server.url().to_owned();
                Box::new(sys_server::ServedStore::new(
                    handle,
                    &url,
                    Box::new(server),
                )?)
            }
            SQLITE => Box::new(Sqlite::open(&dir()?.join("events.sqlite"))?),
            SQLITE_INLINE => Box::new(Sqlite::open_with(
                &dir()?.join("events.sqlite"),
                Layout::TagsInline,
            )?),
            #[cfg(feature = "etcd")]
            ESKV_ETCD => Box::new(Eskv::etcd(
                handle,
                &self.etcd_endpoints().ok_or("no etcd cluster")?,
                &format!("{tag}-{name}"),
            )?),
            #[cfg(feature = "etcd")]
            RAW_ETCD => Box::new(sys_etcd::RawEtcd::connect(
                handle,
                &self.etcd_endpoints().ok_or("no etcd cluster")?,
                &format!("{tag}-{name}"),
            )?),
            other => return Err(format!("{other} is not a store of this build")),
        })
    }

    /// The etcd cluster's client endpoints, if it runs.
    fn etcd_endpoints(&self) -> Option<Vec<String>> {
        #[cfg(feature = "etcd")]
        {
            self.etcd.as_ref().map(sys_etcd::Cluster::endpoints)
        }
        #[cfg(not(feature = "etcd"))]
        {
            None
        }
    }

    /// Starts the 3-node etcd cluster if an etcd system will run. Without
    /// an `etcd` binary the etcd systems are skipped with a printed line,
    /// unless `CI` is set: then that is an error.
    fn start_etcd(&mut self) -> Res<()> {
        let wanted = (self.cfg.wants(ESKV_ETCD) || self.cfg.wants(RAW_ETCD))
            && ETCD_WORKLOADS.iter().any(|w| self.cfg.runs(w));
        if !wanted {
            return Ok(());
        }
        #[cfg(not(feature = "etcd"))]
        {
            self.notes.push(
                "etcd was not built (feature `etcd` off): the eskv-etcd and raw-etcd rows are empty.".into(),
            );
            Ok(())
        }
        #[cfg(feature = "etcd")]
        {
            self.step("starting a 3-node etcd cluster on 127.0.0.1");
            let dir = self.dir("etcd-cluster")?;
            match sys_etcd::start_cluster(&dir) {
                Ok(c) => {
                    self.log(format!(
                        "etcd: 3-node cluster on {} ({})",
                        c.endpoints().join(", "),
                        sys_etcd::server_settings()
                    ));
                    self.etcd = Some(c);
                    Ok(())
                }
                Err(sys_etcd::LaunchError::Missing(e)) if std::env::var_os("CI").is_none() => {
                    self.log(format!(
                        "eskv-bench: SKIPPING eskv-etcd and raw-etcd: {e} (this fails when CI is set)"
                    ));
                    self.notes
                        .push(format!("eskv-etcd and raw-etcd were skipped: {e}."));
                    Ok(())
                }
                Err(sys_etcd::LaunchError::Missing(e) | sys_etcd::LaunchError::Failed(e)) => {
                    Err(format!("etcd cluster: {e}"))
                }
            }
        }
    }

    fn close_stores(&self, tag: &str, stores: Vec<(&'static str, Box<dyn Store>)>) {
        drop(stores);
        for s in [
            ESKV_REDB,
            ESKV_FJALL,
            RAW_REDB,
            RAW_REDB_TABLES,
            RAW_FJALL,
            UMADB,
            UMADB_CACHE,
            UMADB_SERVER,
            ESKV_SERVER,
            ESKV_SERVER_FJALL,
            SQLITE_INLINE,
            SQLITE,
        ] {
            self.remove(&format!("{tag}-{s}"));
        }
    }

    fn fsync_turn(&self, dir: &Path) -> Option<Res<FsyncProbe>> {
        self.cfg.wants(FSYNC).then(|| FsyncProbe::open(dir))
    }

    /// W1, W2, W4 and W4r: one writer each.
    fn single_writer(&mut self) -> Res<()> {
        let data = self.data.clone();
        for (wl, unit) in [
            ("W1", Unit::AppendsPerSec),
            ("W2", Unit::AppendsPerSec),
            ("W4", Unit::EventsPerSec),
            ("W4r", Unit::EventsPerSec),
        ] {
            if !self.cfg.runs(wl) {
                continue;
            }
            self.log(format!("{wl}: {}", report::describe(wl)));
            let mut stores = self.open_stores(wl, &[wl]);
            let probe_dir = self.dir(&format!("{wl}-fsync"))?;
            let mut probe = match self.fsync_turn(&probe_dir) {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    self.fail(wl, FSYNC, e);
                    None
                }
                None => None,
            };
            let batch = self.cfg.w4_batch;
            let streams = self.cfg.w2_streams;
            let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
            // Context switches of the whole process during each system's
            // turns, per operation (W1 and W2: per single append).
            let switches: Rc<RefCell<Vec<(&'static str, u64)>>> = Rc::default();
            for (name, store) in stores.iter_mut() {
                let data = data.clone();
                let mut n = 0u64;
                let mut state = vec![(0u64, 0u64); streams as usize];
                let mut turn: Turn<'_> = match wl {
                    "W1" => Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let ev = Ev::plain(n, &data);
                            let cond = format!("e:{n}");
                            n += 1;
                            store.append_cond(&ev, &cond)
                        })
                    }),
                    "W2" => Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let k = (n % streams) as usize;
                            let stream = format!("order-{k}");
                            let ev = Ev::of_stream(&stream, n, &data);
                            n += 1;
                            let (version, last) = state[k];
                            let pos = store.append_stream(&ev, &stream, version, last)?;
                            state[k] = (version + 1, pos);
                            Ok(())
                        })
                    }),
                    "W4r" => Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let evs: Vec<Ev> = (0..batch as u64)
                                .map(|i| Ev::repeating(n + i, &data))
                                .collect();
                            n += batch as u64;
                            store.append_batch(&evs)
                        })
                    }),
                    _ => Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let evs: Vec<Ev> =
                                (0..batch as u64).map(|i| Ev::plain(n + i, &data)).collect();
                            n += batch as u64;
                            store.append_batch(&evs)
                        })
                    }),
                };
                let (counted, name) = (switches.clone(), *name);
                let counting: Turn<'_> = Box::new(move |b| {
                    let before = common::context_switches();
                    let r = turn(b);
                    let spent = common::context_switches().saturating_sub(before);
                    let mut c = counted.borrow_mut();
                    match c.iter_mut().find(|(s, _)| *s == name) {
                        Some((_, total)) => *total += spent,
                        None => c.push((name, spent)),
                    }
                    r
                });
                turns.push((name, counting));
            }
            if let Some(p) = probe.as_mut() {
                turns.push((
                    FSYNC,
                    Box::new(move |b| run_for(b, u64::MAX, |_| p.commit())),
                ));
            }
            self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
            let totals = self.interleave(wl, &mut turns);
            drop(turns);
            if !wl.starts_with("W4") {
                let per_op: Vec<String> = switches
                    .borrow()
                    .iter()
                    .filter_map(|(s, spent)| {
                        let ops = totals.iter().find(|(n, _)| n == s)?.1.as_ref().ok()?.0;
                        let v = *spent as f64 / ops.max(1) as f64;
                        self.results
                            .put(&format!("{wl} switches"), s, Cell::new(v, Unit::PerOp));
                        Some(format!("{s} {v:.1}"))
                    })
                    .collect();
                let line = format!(
                    "{wl}: context switches per append (the whole process, voluntary + involuntary): {}",
                    per_op.join(", ")
                );
                self.log(format!("  {line}"));
                self.notes.push(line);
            }
            let batched = wl.starts_with("W4");
            let per_op = if batched { batch as u64 } else { 1 };
            self.record_rates(wl, totals, unit, per_op);
            if let (Some(fs), true) = (self.results.get(wl, FSYNC).map(|c| c.value), batched) {
                // The fsync limit in events per second at this batch size.
                self.results.put(
                    wl,
                    FSYNC,
                    Cell::new(fs * batch as f64, Unit::EventsPerSec)
                        .note(format!("{fs:.0} commits/s × {batch} events")),
                );
            }
            self.close_stores(wl, stores);
            self.remove(&format!("{wl}-fsync"));
        }
        Ok(())
    }

    /// Diagnostic, not a target: W1 on eskv-redb and raw redb with redb's
    /// fsync turned off (and eskv-mem), to show what the layer costs apart
    /// from the disk.
    fn no_fsync(&mut self) -> Res<()> {
        let wl = "DIAG W1 no-fsync";
        self.log(format!("{wl}: {}", report::describe("DIAG")));
        let handle = self.rt.handle().clone();
        let mut stores: Vec<(&'static str, Box<dyn Store>)> = Vec::new();
        if self.cfg.wants(ESKV_REDB) {
            let p = self.dir("D-eskv-redb")?.join("eskv.redb");
            stores.push((ESKV_REDB, Box::new(Eskv::redb_no_fsync(&handle, &p)?)));
        }
        if self.cfg.wants(ESKV_MEM) {
            stores.push((ESKV_MEM, Box::new(Eskv::memory(&handle)?)));
        }
        if self.cfg.wants(RAW_REDB) {
            let p = self.dir("D-raw-redb")?.join("raw.redb");
            stores.push((RAW_REDB, Box::new(RawRedb::open_no_fsync(&p)?)));
        }
        let data = self.data.clone();
        let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
        for (name, store) in stores.iter_mut() {
            let data = data.clone();
            let mut n = 0u64;
            turns.push((
                *name,
                Box::new(move |b| {
                    run_for(b, u64::MAX, |_| {
                        let ev = Ev::plain(n, &data);
                        let cond = format!("e:{n}");
                        n += 1;
                        store.append_cond(&ev, &cond)
                    })
                }),
            ));
        }
        self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
        let totals = self.interleave(wl, &mut turns);
        drop(turns);
        self.record_rates(wl, totals, Unit::AppendsPerSec, 1);
        drop(stores);
        self.remove("D-eskv-redb");
        self.remove("D-raw-redb");
        Ok(())
    }

    /// W3: 64 concurrent writers.
    fn concurrent(&mut self) -> Res<()> {
        let wl = "W3";
        self.log(format!("{wl}: {}", report::describe(wl)));
        let writers = self.cfg.writers;
        let data = self.data.clone();
        let handle = self.rt.handle().clone();
        let eskv_redb = if self.cfg.wants(ESKV_REDB) {
            Some(Eskv::redb(
                &handle,
                &self.dir("W3-eskv-redb")?.join("eskv.redb"),
            )?)
        } else {
            None
        };
        let eskv_fjall = if self.cfg.wants(ESKV_FJALL) {
            Some(Eskv::fjall(
                &handle,
                &self.dir("W3-eskv-fjall")?.join("eskv"),
            )?)
        } else {
            None
        };
        let raw_fjall = if self.cfg.wants(RAW_FJALL) {
            Some(RawFjall::open(
                &self.dir(&format!("W3-{RAW_FJALL}"))?.join("raw"),
            )?)
        } else {
            None
        };
        let eskv_mem = if self.cfg.wants(ESKV_MEM) {
            Some(Eskv::memory(&handle)?)
        } else {
            None
        };
        let raw = if self.cfg.wants(RAW_REDB) {
            Some(RawRedb::open(
                &self.dir(&format!("W3-{RAW_REDB}"))?.join("raw.redb"),
            )?)
        } else {
            None
        };
        let tables = if self.cfg.wants(RAW_REDB_TABLES) {
            Some(RedbTables::open(
                &self
                    .dir(&format!("W3-{RAW_REDB_TABLES}"))?
                    .join("tables.redb"),
            )?)
        } else {
            None
        };
        #[cfg(feature = "umadb")]
        let server = if self.cfg.wants(UMADB_SERVER) {
            Some(sys_uma::UmaServer::start(
                &self.dir("W3-umadb-server")?.join("uma.db"),
            )?)
        } else {
            None
        };
        #[cfg(feature = "umadb")]
        let eskv_servers = ESKV_SERVED
            .into_iter()
            .filter(|(name, _)| self.cfg.wants(name))
            .map(|(name, backend)| {
                let dir = self.dir(&format!("W3-{name}"))?;
                Ok((name, sys_server::EskvServer::start(&dir, backend)?))
            })
            .collect::<Res<Vec<_>>>()?;
        let sqlite = if self.cfg.wants(SQLITE) {
            Some(Sqlite::open(
                &self.dir(&format!("W3-{SQLITE}"))?.join("events.sqlite"),
            )?)
        } else {
            None
        };
        let sqlite_inline = if self.cfg.wants(SQLITE_INLINE) {
            Some(Sqlite::open_with(
                &self
                    .dir(&format!("W3-{SQLITE_INLINE}"))?
                    .join("events.sqlite"),
                Layout::TagsInline,
            )?)
        } else {
            None
        };
        let probe_dir = self.dir("W3-fsync")?;
        let mut probe = self.fsync_turn(&probe_dir).transpose()?;
        let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
        if let Some(s) = &eskv_redb {
            let d = data.clone();
            turns.push((ESKV_REDB, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &eskv_fjall {
            let d = data.clone();
            turns.push((ESKV_FJALL, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &raw_fjall {
            let d = data.clone();
            turns.push((RAW_FJALL, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &eskv_mem {
            let d = data.clone();
            turns.push((ESKV_MEM, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &raw {
            let d = data.clone();
            turns.push((RAW_REDB, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &tables {
            let d = data.clone();
            turns.push((
                RAW_REDB_TABLES,
                Box::new(move |b| s.concurrent(writers, b, &d)),
            ));
        }
        #[cfg(feature = "umadb")]
        if let Some(s) = &server {
            let d = data.clone();
            let h = handle.clone();
            turns.push((
                UMADB_SERVER,
                Box::new(move |b| sys_server::concurrent(&h, s.url(), writers, b, &d)),
            ));
        }
        #[cfg(feature = "umadb")]
        for (name, s) in &eskv_servers {
            let d = data.clone();
            let h = handle.clone();
            turns.push((
                *name,
                Box::new(move |b| sys_server::concurrent(&h, s.url(), writers, b, &d)),
            ));
        }
        if let Some(s) = &sqlite {
            let d = data.clone();
            turns.push((SQLITE, Box::new(move |b| s.concurrent(writers, b, &d))));
        }
        if let Some(s) = &sqlite_inline {
            let d = data.clone();
            turns.push((
                SQLITE_INLINE,
                Box::new(move |b| s.concurrent(writers, b, &d)),
            ));
        }
        if let Some(p) = probe.as_mut() {
            turns.push((
                FSYNC,
                Box::new(move |b| run_for(b, u64::MAX, |_| p.commit())),
            ));
        }
        self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
        let totals = self.interleave(wl, &mut turns);
        drop(turns);
        self.record_rates(wl, totals, Unit::AppendsPerSec, 1);
        drop((
            eskv_redb,
            eskv_fjall,
            raw_fjall,
            eskv_mem,
            raw,
            tables,
            sqlite,
            sqlite_inline,
            probe,
        ));
        #[cfg(feature = "umadb")]
        if let Some(s) = server {
            s.stop()?;
        }
        #[cfg(feature = "umadb")]
        for (_, s) in eskv_servers {
            s.stop()?;
        }
        for s in [
            ESKV_REDB,
            ESKV_FJALL,
            RAW_REDB,
            RAW_REDB_TABLES,
            RAW_FJALL,
            UMADB_SERVER,
            ESKV_SERVER,
            ESKV_SERVER_FJALL,
            SQLITE,
            SQLITE_INLINE,
            "fsync",
        ] {
            self.remove(&format!("W3-{s}"));
        }
        Ok(())
    }

    /// W5 to W7 on one read data set per system.
    fn reads(&mut self) -> Res<()> {
        let (n, tags, streams, per_tag, stream_len) = (
            self.cfg.read_events(),
            self.cfg.read_tags,
            self.cfg.streams(),
            self.cfg.per_tag,
            self.cfg.stream_len,
        );
        self.log(format!(
            "W5-W7: loading {n} events ({tags} tags × {per_tag} events, {streams} streams × {stream_len} events) into each system"
        ));
        let mut stores = self.open_stores("R", &["W5", "W6", "W7", "DISK"]);
        let data = self.data.clone();
        let chunk = 5_000u64;
        self.pb.inc_length(stores.len() as u64);
        let mut failed = Vec::new();
        for (name, store) in stores.iter_mut() {
            self.step(format!("loading {n} events into {name}"));
            let t = Instant::now();
            let mut i = 0;
            while i < n {
                let evs: Vec<Ev> = (i..(i + chunk).min(n))
                    .map(|j| Ev::dataset(j, tags, streams, &data))
                    .collect();
                if let Err(e) = store.load(&evs) {
                    failed.push((*name, e));
                    break;
                }
                i += chunk;
            }
            self.log(format!(
                "  loaded {name} in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            self.pb.inc(1);
        }
        for (name, e) in failed {
            for wl in ["W5", "W6", "W7", "DISK"] {
                self.fail(wl, name, e.clone());
            }
            stores.retain(|(s, _)| *s != name);
        }
        // DISK: the loaded stores' files while open (before any read).
        let on_disk: Vec<&'static str> = stores
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != ESKV_MEM)
            .collect();
        let disk_open: Vec<(&'static str, u64)> = on_disk
            .iter()
            .map(|s| {
                (
                    *s,
                    common::disk_allocated(&self.base.path().join(format!("R-{s}"))),
                )
            })
            .collect();
        let mut disk_used = Vec::new();
        for (name, store) in &stores {
            match store.used_bytes() {
                Ok(Some(b)) => disk_used.push((*name, b)),
                Ok(None) => {}
                Err(e) => self.log(format!("  DISK {name}: no in-use size: {e}")),
            }
        }

        if self.cfg.runs("W5") {
            // W5: one tag out of `tags`.
            self.log(format!("W5: {}", report::describe("W5")));
            let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
            for (name, store) in stores.iter_mut() {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
                turns.push((
                    *name,
                    Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let got = store.read_tag(&format!("tag:{}", rng.below(tags)))?;
                            if got as u64 != per_tag {
                                return Err(format!("W5 read {got} events, expected {per_tag}"));
                            }
                            Ok(())
                        })
                    }),
                ));
            }
            self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
            let totals = self.interleave("W5", &mut turns);
            drop(turns);
            self.record_rates("W5", totals, Unit::QueriesPerSec, 1);
        }
        if self.cfg.runs("W6") {
            // W6: the whole log.
            self.log(format!("W6: {}", report::describe("W6")));
            let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
            for (name, store) in stores.iter_mut() {
                turns.push((
                    *name,
                    Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let got = store.read_all()?;
                            if got as u64 != n {
                                return Err(format!("W6 read {got} events, expected {n}"));
                            }
                            Ok(())
                        })
                    }),
                ));
            }
            self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
            let totals = self.interleave("W6", &mut turns);
            drop(turns);
            self.record_rates("W6", totals, Unit::EventsPerSec, n);
        }
        if self.cfg.runs("W7") {
            // W7: one stream, latency.
            self.log(format!("W7: {}", report::describe("W7")));
            let mut lat: Vec<Rc<RefCell<Vec<Duration>>>> = Vec::new();
            let mut turns: Vec<(&'static str, Turn<'_>)> = Vec::new();
            for (name, store) in stores.iter_mut() {
                let l = Rc::new(RefCell::new(Vec::new()));
                lat.push(l.clone());
                let mut rng = Rng(0x2545_f491_4f6c_dd1d);
                turns.push((
                    *name,
                    Box::new(move |b| {
                        run_for(b, u64::MAX, |_| {
                            let s = format!("s-{}", rng.below(streams));
                            let t = Instant::now();
                            let got = store.read_stream(&s)?;
                            l.borrow_mut().push(t.elapsed());
                            if got as u64 != stream_len {
                                return Err(format!(
                                    "W7 read {got} events of {s}, expected {stream_len}"
                                ));
                            }
                            Ok(())
                        })
                    }),
                ));
            }
            self.pb.inc_length((turns.len() * self.cfg.rounds) as u64);
            let totals = self.interleave("W7", &mut turns);
            drop(turns);
            for ((name, r), l) in totals.into_iter().zip(lat) {
                match r {
                    Ok((ops, _)) => {
                        let mut v = l.borrow().clone();
                        v.sort();
                        let p50 = percentile(&v, 50.0).as_secs_f64() * 1e6;
                        let p99 = percentile(&v, 99.0).as_secs_f64() * 1e6;
                        self.record(
                            "W7",
                            name,
                            Cell::new(p50, Unit::Micros).with_p99(p99).with_ops(ops),
                        );
                    }
                    Err(e) => self.fail("W7", name, e),
                }
            }
        }
        drop(stores);
        if self.cfg.runs("DISK") {
            self.disk(n, &disk_open, &disk_used);
        }
        self.close_stores("R", Vec::new());
        Ok(())
    }

    /// DISK: the bytes on disk of each system's read data set (the same `n`
    /// events with the same tags and streams, loaded in the same batches),
    /// after the store is closed; `open` holds the allocated bytes measured
    /// while it was open, right after the load.
    fn disk(&mut self, n: u64, open: &[(&'static str, u64)], used: &[(&'static str, u64)]) {
        self.log(format!("DISK: {}", report::describe("DISK")));
        for &(name, open_bytes) in open {
            let dir = self.base.path().join(format!("R-{name}"));
            let allocated = common::disk_allocated(&dir);
            let apparent = common::disk_usage(&dir);
            let per = |b: u64| b as f64 / n.max(1) as f64;
            self.record(
                "DISK",
                name,
                Cell::new(allocated as f64, Unit::Bytes).note(format!(
                    "{:.0} B/event allocated after close; {:.0} B/event apparent size; {:.0} B/event allocated while open; {n} events",
                    per(allocated),
                    per(apparent),
                    per(open_bytes)
                )),
            );
            self.results.put(
                "DISK apparent",
                name,
                Cell::new(apparent as f64, Unit::Bytes),
            );
            self.results
                .put("DISK open", name, Cell::new(open_bytes as f64, Unit::Bytes));
        }
        for &(name, b) in used {
            self.log(format!(
                "  DISK in use  {name:<17} {:.0} B/event (the engine's own count of used pages)",
                b as f64 / n.max(1) as f64
            ));
            self.results
                .put("DISK used", name, Cell::new(b as f64, Unit::Bytes));
        }
    }

    /// W8: W1 and W4 as the store grows. Each system runs in a child
    /// process of this binary, one after another, so that the peak RSS
    /// measured is that system's alone (not memory an allocator kept from
    /// earlier workloads).
    fn growth(&mut self) -> Res<()> {
        self.log(format!("W8: {}", report::describe("W8")));
        let mut systems: Vec<&'static str> = vec![ESKV_REDB, ESKV_FJALL, RAW_REDB, RAW_FJALL];
        if cfg!(feature = "umadb") {
            systems.push(UMADB);
        }
        systems.push(SQLITE);
        systems.retain(|s| self.cfg.wants(s));
        self.pb.inc_length(systems.len() as u64);
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        for name in systems {
            self.step(format!("W8 {name} (child process)"));
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--w8-child")
                .arg(name)
                .arg("--dir")
                .arg(self.base.path());
            if self.cfg.quick {
                cmd.arg("--quick");
            }
            if self.cfg.large {
                cmd.arg("--large");
            }
            let out = cmd
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
                .map_err(|e| format!("W8 child for {name}: {e}"))?;
            let mut got = 0;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((wl, sys, cell)) = report::parse_cell(line) {
                    self.record(&wl, &sys, cell);
                    got += 1;
                }
            }
            if !out.status.success() || got == 0 {
                let err = String::from_utf8_lossy(&out.stderr);
                let err = err
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                self.fail(
                    "W8 RSS",
                    name,
                    format!("child process {}: {err}", out.status),
                );
            }
            self.pb.inc(1);
        }
        Ok(())
    }

    /// W8 for one system, in a child process: prints its cells on stdout.
    ///
    /// One store per size. The largest is filled first and warmed up alone,
    /// and the peak RSS is taken then, before the smaller stores open. Then
    /// W1 and W4 run in rounds that rotate over the sizes, so that the disk's
    /// noise falls on every size alike.
    fn growth_child(&mut self, name: &str) -> Res<()> {
        let name: &'static str = SYSTEMS
            .iter()
            .find(|s| **s == name)
            .ok_or_else(|| format!("unknown system {name}"))?;
        let mut sizes = self.cfg.w8_sizes.clone();
        sizes.sort_unstable();
        let rounds = self.cfg.rounds as u64;
        let slice = self.cfg.w8_window / self.cfg.rounds as u32;
        let batch = self.cfg.w4_batch as u64;
        let data = self.data.clone();
        let handle = self.rt.handle().clone();
        let (rss0, _) = rss();

        struct Sized {
            size: u64,
            store: Box<dyn Store>,
            /// Events written so far (also the tag counter).
            n: u64,
            w1: (u64, Duration),
            w4: (u64, Duration),
        }
        let w1 = |s: &mut Sized, budget: Duration, max: u64| -> Res<(u64, Duration)> {
            let (store, n) = (&mut s.store, &mut s.n);
            run_for(budget, max, |_| {
                let ev = Ev::plain(*n, &data);
                let cond = format!("e:{n}");
                *n += 1;
                store.append_cond(&ev, &cond)
            })
        };
        let w4 = |s: &mut Sized, budget: Duration, max: u64| -> Res<(u64, Duration)> {
            let (store, n) = (&mut s.store, &mut s.n);
            run_for(budget, max, |_| {
                let evs: Vec<Ev> = (*n..*n + batch).map(|i| Ev::plain(i, &data)).collect();
                *n += batch;
                store.append_batch(&evs)
            })
        };
        let open = |h: &Harness, size: u64| -> Res<Sized> {
            let mut store = h.open_one(&handle, &format!("W8-{}", report::count(size)), name)?;
            let mut n = 0;
            while n < size {
                let k = (size - n).min(10_000);
                let evs: Vec<Ev> = (n..n + k).map(|i| Ev::plain(i, &data)).collect();
                store.load(&evs)?;
                n += k;
            }
            Ok(Sized {
                size,
                store,
                n,
                w1: (0, Duration::ZERO),
                w4: (0, Duration::ZERO),
            })
        };

        // The largest store alone: fill, warm up, peak RSS.
        let largest = *sizes.last().ok_or("no W8 sizes")?;
        let mut big = open(self, largest)?;
        w1(&mut big, slice, (largest / 40).max(1))?;
        w4(&mut big, slice, (largest / 4000).max(1))?;
        let (_, peak) = rss();
        // Allocated blocks, as DISK counts them: fjall preallocates its
        // journal as a 64 MiB sparse file.
        let disk = common::disk_allocated(
            &self
                .base
                .path()
                .join(format!("W8-{}-{name}", report::count(largest))),
        );
        let mut stores = Vec::new();
        for &size in &sizes[..sizes.len() - 1] {
            stores.push(open(self, size)?);
        }
        stores.push(big);

        // Interleaved rounds. Each size gets at most a quarter of its size
        // in events for W1 and for W4, so it stays between size and
        // 1.5 × size while measured.
        let k = stores.len();
        for round in 0..rounds as usize {
            for j in 0..k {
                let s = &mut stores[(j + round) % k];
                let quota = (s.size / 4 / rounds).max(1);
                let (o, e) = w1(s, slice, quota)?;
                s.w1 = (s.w1.0 + o, s.w1.1 + e);
            }
            for j in 0..k {
                let s = &mut stores[(j + round) % k];
                let quota = (s.size / 4 / rounds / batch).max(2);
                let (o, e) = w4(s, slice, quota)?;
                s.w4 = (s.w4.0 + o, s.w4.1 + e);
            }
        }
        for s in &stores {
            let label = report::count(s.size);
            let cells = [
                (
                    format!("W8 W1@{label}"),
                    Cell::new(s.w1.0 as f64 / s.w1.1.as_secs_f64(), Unit::AppendsPerSec)
                        .with_ops(s.w1.0),
                ),
                (
                    format!("W8 W4@{label}"),
                    Cell::new(
                        (s.w4.0 * batch) as f64 / s.w4.1.as_secs_f64(),
                        Unit::EventsPerSec,
                    )
                    .with_ops(s.w4.0),
                ),
            ];
            for (wl, c) in cells {
                println!("{}", report::format_cell(&wl, name, &c));
            }
        }
        let events = stores.last().map_or(0, |s| s.n);
        drop(stores);
        let growth = peak.saturating_sub(rss0);
        let rss_cell = Cell::new(peak as f64, Unit::Bytes).note(format!(
            "+{} over the {} before opening; {events} events, {} on disk",
            report::bytes(growth as f64),
            report::bytes(rss0 as f64),
            report::bytes(disk as f64)
        ));
        println!("{}", report::format_cell("W8 RSS", name, &rss_cell));
        println!(
            "{}",
            report::format_cell("W8 delta", name, &Cell::new(growth as f64, Unit::Bytes))
        );
        println!(
            "{}",
            report::format_cell("W8 disk", name, &Cell::new(disk as f64, Unit::Bytes))
        );
        Ok(())
    }

    /// End-to-end subscription latency on eskv-redb: append, then the
    /// event's delivery through `Subscription::next`.
    fn subscription(&mut self) -> Res<()> {
        if !self.cfg.wants(ESKV_REDB) {
            return Ok(());
        }
        self.log(format!("SUB: {}", report::describe("SUB")));
        self.step("subscription latency on eskv-redb");
        self.pb.inc_length(1);
        let es = Eskv::redb(self.rt.handle(), &self.dir("SUB")?.join("eskv.redb"))?;
        let store = es.store().clone();
        let count = self.cfg.sub_events;
        let data = self.data.clone();
        let r = self.rt.block_on(async move {
            use eskv::{NewEvent, StartFrom, SubscriptionOptions};
            let mut sub = store
                .subscribe(SubscriptionOptions::new().start(StartFrom::End))
                .await
                .map_err(|e| e.to_string())?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let reader = tokio::spawn(async move {
                for _ in 0..count {
                    let e = sub.next().await.map_err(|e| e.to_string())?;
                    if tx.send((e.position, Instant::now())).is_err() {
                        break;
                    }
                }
                Ok::<(), String>(())
            });
            let mut to_delivery = Vec::with_capacity(count);
            let mut to_ack = Vec::with_capacity(count);
            for i in 0..count {
                let ev = Ev::plain(i as u64, &data);
                let e = NewEvent::new(common::EVENT_TYPE, ev.data.to_vec())
                    .with_tags(ev.tags.iter().cloned());
                let t0 = Instant::now();
                let res = store
                    .append(vec![e], None)
                    .await
                    .map_err(|e| e.to_string())?;
                to_ack.push(t0.elapsed());
                let (pos, at) = rx.recv().await.ok_or("subscription ended")?;
                if pos != res.last_position {
                    return Err(format!(
                        "delivered position {pos}, appended {}",
                        res.last_position
                    ));
                }
                to_delivery.push(at - t0);
            }
            reader.await.map_err(|e| e.to_string())??;
            Ok::<_, String>((to_delivery, to_ack))
        });
        drop(es);
        self.remove("SUB");
        self.pb.inc(1);
        match r {
            Ok((mut d, mut a)) => {
                d.sort();
                a.sort();
                let us = |x: Duration| x.as_secs_f64() * 1e6;
                self.record(
                    "SUB delivery",
                    ESKV_REDB,
                    Cell::new(us(percentile(&d, 50.0)), Unit::Micros)
                        .with_p99(us(percentile(&d, 99.0)))
                        .with_ops(d.len() as u64),
                );
                self.record(
                    "SUB ack",
                    ESKV_REDB,
                    Cell::new(us(percentile(&a, 50.0)), Unit::Micros)
                        .with_p99(us(percentile(&a, 99.0)))
                        .with_ops(a.len() as u64),
                );
            }
            Err(e) => self.fail("SUB delivery", ESKV_REDB, e),
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let cfg = parse_args();
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eskv-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> Res<()> {
    let started = Instant::now();
    let base = match &cfg.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            tempfile::Builder::new().prefix("eskv-bench-").tempdir_in(d)
        }
        None => {
            let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
            std::fs::create_dir_all(&t).map_err(|e| format!("mkdir {}: {e}", t.display()))?;
            tempfile::Builder::new().prefix("eskv-bench-").tempdir_in(t)
        }
    }
    .map_err(|e| format!("temporary directory: {e}"))?;
    let base_path = base
        .path()
        .canonicalize()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let child = cfg.w8_child.clone();
    let pb = if child.is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    let mut h = Harness {
        #[cfg(feature = "etcd")]
        etcd: None,
        pb,
        results: Results::default(),
        rt,
        data: common::payload(),
        notes: Vec::new(),
        base,
        cfg,
    };
    if let Some(name) = child {
        return h.growth_child(&name);
    }
    h.log(format!(
        "eskv-bench: {} run, stores under {}",
        if h.cfg.quick { "quick" } else { "full" },
        base_path.display()
    ));
    if !cfg!(feature = "umadb") {
        h.notes
            .push("UmaDB was not built (feature `umadb` off): its rows are empty.".into());
    }
    h.start_etcd()?;
    h.single_writer()?;
    // The etcd systems run only there: stop the cluster so that its idle
    // nodes do not share the CPUs with the later workloads.
    #[cfg(feature = "etcd")]
    {
        h.etcd = None;
    }
    if h.cfg.runs("W3") {
        h.concurrent()?;
    }
    if h.cfg.runs("DIAG") {
        h.no_fsync()?;
    }
    if ["W5", "W6", "W7", "DISK"].iter().any(|w| h.cfg.runs(w)) {
        h.reads()?;
    }
    if h.cfg.runs("W8") {
        h.growth()?;
    }
    if h.cfg.runs("SUB") {
        h.subscription()?;
    }
    h.pb.finish_and_clear();
    let elapsed = started.elapsed();
    let md = report::markdown(&h.cfg, &h.results, &h.notes, elapsed, &base_path);
    if let Some(p) = h.cfg.out.parent() {
        std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    }
    std::fs::write(&h.cfg.out, md).map_err(|e| format!("write {}: {e}", h.cfg.out.display()))?;
    if let Some(p) = h.cfg.chart.parent() {
        std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    }
    std::fs::write(&h.cfg.chart, report::svg(&h.cfg, &h.results))
        .map_err(|e| format!("write {}: {e}", h.cfg.chart.display()))?;
    eprintln!(
        "eskv-bench: wrote {} and {} in {:.0} s",
        h.cfg.out.display(),
        h.cfg.chart.display(),
        elapsed.as_secs_f64()
    );
    for line in report::target_lines(&h.results) {
        eprintln!("  {line}");
    }
    match h.results.failures() {
        0 => Ok(()),
        n => Err(format!(
            "{n} measurement(s) failed; the report lists them under Failures"
        )),
    }
}
