//! `eskv`: look inside an eskv event store, append to it, back it up,
//! check it and move it between backends. Run `eskv --help`.
#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use eskv::{
    AppendCondition, AppendRequest, EventStore, ExpectedVersion, LogFilter, Query, ReadOptions,
    ReadStreamOptions, RecordedEvent, StartFrom, SubscriptionFilter, SubscriptionOptions,
};
use eskv_cli::line::{Digest, EventLine, MetaLine};
use eskv_cli::open::{self, Access};
use eskv_cli::spec::{parse_expected, parse_query_item};
use eskv_cli::transfer::{self, ExportLine, Importer};
use eskv_cli::url::StoreUrl;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::fmt;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

const AFTER_HELP: &str = "\
Store URLs (--store, or the ESKV_STORE environment variable):
  redb:PATH                                  an embedded file (the default: redb:./events.redb)
  fjall:PATH                                 an embedded fjall store, a directory
  memory:                                    an empty in-memory store, gone at exit
  tikv://HOST:PORT[,HOST:PORT...][/PREFIX]   a TiKV cluster, by its PD endpoints
  etcd://HOST:PORT[,HOST:PORT...][/PREFIX]   an etcd cluster
  The port defaults to 2379; /PREFIX keeps the store under a key namespace.

Output: JSON lines when stdout is not a terminal or with --json, else a table.

Exit codes (errors are one line on stderr):
  0    success
  1    error: the store cannot be opened, read or written (missing, locked by
       another process, damaged, unreachable), or another I/O error
  2    bad usage or bad input: unknown flag, missing argument, bad store URL,
       query or expected version, invalid --data, or events the store refuses
       (bad type or tag, unknown type in strict mode, over a limit)
  3    rejected by the store's state: wrong expected version, DCB
       condition failed, ids reused, a tombstoned stream, or deleting a
       stream that does not exist
  4    check found damage or an unfinished import (the report is on stdout)
  101  internal error (a bug in eskv: please report it)";

/// The eskv event store tool.
#[derive(Debug, Parser)]
#[command(name = "eskv", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Store URL: redb:PATH, fjall:PATH, memory:, tikv://HOST:PORT[,...][/PREFIX] or
    /// etcd://HOST:PORT[,...][/PREFIX].
    #[arg(
        long,
        global = true,
        env = "ESKV_STORE",
        default_value = "redb:./events.redb",
        value_name = "URL"
    )]
    store: String,
    /// Print JSON (lines) even when stdout is a terminal.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for a redb file that another process holds.
    #[arg(
        long,
        global = true,
        env = "ESKV_LOCK_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    lock_timeout: u64,
    /// The store key for personal data (64 hex digits): needed to append
    /// or read the personal parts of events.
    #[arg(
        long,
        global = true,
        env = "ESKV_STORE_KEY",
        hide_env_values = true,
        value_name = "HEX"
    )]
    store_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct RetentionArgs {
    /// The stream.
    stream: String,
    /// Keep only the last N events.
    #[arg(long, value_name = "N")]
    max_count: Option<u64>,
    /// Keep only events younger than this (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_age: Option<Duration>,
    /// Release every version below V.
    #[arg(long, value_name = "V")]
    truncate_before: Option<u64>,
    /// Expected metadata revision: any, no-stream (never set), or a number.
    #[arg(long, default_value = "any", value_parser = parse_expected)]
    expected: ExpectedVersion,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["stream", "before_position"])))]
struct ArchiveArgs {
    /// Archive this stream (all of it, or with --before-version the versions below one).
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// With --stream: archive the versions below V only.
    #[arg(long, value_name = "V", requires = "stream")]
    before_version: Option<u64>,
    /// Archive every event at a position below P, with or without a stream.
    #[arg(long, value_name = "P")]
    before_position: Option<u64>,
    /// The archive file to write (must not exist, unless it is this
    /// archive's file from an earlier run).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// The stream.
    stream: String,
    /// Expected stream version: any, exists, or a number.
    #[arg(long, default_value = "any", value_parser = parse_expected)]
    expected: ExpectedVersion,
    /// Never allow the stream to be written again.
    #[arg(long)]
    tombstone: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append events atomically: one from flags, or JSON lines on stdin.
    ///
    /// Each stdin line is {"type":..,"tags":[..],"data":<JSON>,"id":?,"metadata":?}
    /// (data_text or data_base64 for payloads that are not JSON). All lines
    /// form one atomic append. Prints the positions as JSON.
    Append(AppendArgs),
    /// Read events: a stream, a DCB query, a category, or the whole log.
    ///
    /// Each JSON line holds position, id, type, stream and version (for
    /// stream events), tags, the payload, metadata (when set) and
    /// recorded_at (RFC 3339, UTC). The payload is in "data" when it is
    /// single-line JSON (verbatim), in "data_text" when it is other UTF-8
    /// text, and in "data_base64" otherwise.
    Read(ReadArgs),
    /// Follow new events live, with the same filters as read, until Ctrl-C.
    Tail(TailArgs),
    /// List streams.
    Streams(StreamsArgs),
    /// Show the head, the event and stream counts and the file size.
    Info,
    /// View and manage the event type registry (for strict mode).
    Types {
        #[command(subcommand)]
        action: Option<TypesAction>,
    },
    /// Check the store's integrity; exit code 0 when clean, 4 with a report
    /// when not.
    Check,
    /// Remove what retention, deletion and tombstones released, reporting
    /// events and bytes removed; on redb then return the space to the file
    /// system (once no other process holds the file).
    Compact,
    /// Set a stream's retention: events outside it stop being returned at
    /// once, and `compact` removes them.
    Retention(RetentionArgs),
    /// Soft-delete a stream (it reads as absent and can be recreated; its
    /// version continues), or with --tombstone close it for good.
    DeleteStream(DeleteArgs),
    /// Forget a data subject: destroy the key of its personal data, so it
    /// reads as erased everywhere from now on.
    Forget {
        /// The data subject id given to with_personal_data.
        subject: String,
    },
    /// Move a stream, or every event before a position, into a verified
    /// archive file, then release them in the store.
    ///
    /// Writes FILE.partial in the export format (`import` restores it into
    /// an empty store), syncs it, reads it back and checks it against the
    /// store, renames it to FILE, then releases the events in one
    /// transaction (a stream's retention, or the log's truncation, a
    /// `$log-truncated` event naming the file). Run `compact` afterwards to
    /// give the space back. After a crash, run the same command again: it
    /// finishes the job without losing or duplicating events; after
    /// success it writes nothing and says so ("already": true). An existing
    /// FILE that is not an archive of this scope is refused.
    Archive(ArchiveArgs),
    /// Write the whole store as JSON lines (a backup).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Restore an export into an empty store.
    Import {
        /// Read from this file instead of stdin.
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Serve the store over gRPC to UmaDB and KurrentDB clients until
    /// SIGTERM or Ctrl-C.
    ///
    /// Speaks UmaDB's DCB protocol (umadb.v1.DCB) and KurrentDB's streams
    /// protocol (with its server-features and gossip calls), plus gRPC
    /// health, on one port. On SIGTERM/SIGINT it refuses new appends,
    /// ends subscriptions, finishes the requests in flight, then closes
    /// the store.
    Serve(eskv_cli::serve::ServeArgs),
    /// Copy a whole store into an empty one (for example redb to TiKV),
    /// then verify counts and checksums.
    Copy {
        /// Source store URL.
        #[arg(long, value_name = "URL")]
        from: String,
        /// Target store URL (must be empty).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Args)]
struct AppendArgs {
    /// Event type (append one event from flags instead of stdin).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG", requires = "event_type")]
    tags: Vec<String>,
    /// Payload as JSON, stored byte for byte as written (it must be one
    /// valid JSON document).
    #[arg(
        long,
        value_name = "JSON",
        requires = "event_type",
        conflicts_with = "data_text"
    )]
    data: Option<String>,
    /// Payload as plain text.
    #[arg(long, value_name = "TEXT", requires = "event_type")]
    data_text: Option<String>,
    /// Event id (a ULID), for idempotent retries; generated when absent.
    #[arg(long, value_name = "ULID", requires = "event_type")]
    id: Option<String>,
    /// Correlation id.
    #[arg(long, value_name = "ID", requires = "event_type")]
    correlation_id: Option<String>,
    /// Causation id.
    #[arg(long, value_name = "ID", requires = "event_type")]
    causation_id: Option<String>,
    /// A metadata entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", requires = "event_type")]
    meta: Vec<String>,
    /// Append to this stream.
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
    /// Expected stream version: any, no-stream, exists or a version number.
    #[arg(
        long,
        value_name = "VERSION",
        requires = "stream",
        default_value = "any"
    )]
    expected: String,
    /// DCB condition: fail if an event matching 'types=A,B;tags=x,y' exists
    /// (after --after). Repeat to OR several items.
    #[arg(long = "fail-if", value_name = "ITEM")]
    fail_if: Vec<String>,
    /// Only events after this position count for --fail-if (normally the
    /// head of the read your decision was based on).
    #[arg(long, value_name = "POSITION", requires = "fail_if")]
    after: Option<u64>,
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only this stream.
    #[arg(long, value_name = "STREAM", conflicts_with_all = ["query", "category", "stream_prefix"])]
    stream: Option<String>,
    /// Only events matching a DCB query item 'types=A,B;tags=x,y' (repeat
    /// to OR several items).
    #[arg(long, value_name = "ITEM", conflicts_with = "category")]
    query: Vec<String>,
    /// Only events of a category (streams named CATEGORY-...).
    #[arg(long, value_name = "CATEGORY", conflicts_with = "stream_prefix")]
    category: Option<String>,
    /// Only events of streams whose id starts with this.
    #[arg(long, value_name = "PREFIX")]
    stream_prefix: Option<String>,
}

#[derive(Debug, Args)]
struct ReadArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// First global position to read (backwards: the highest).
    #[arg(long, value_name = "POSITION")]
    from: Option<u64>,
    /// With --stream: first stream version to read (backwards: the highest).
    #[arg(long, value_name = "VERSION", requires = "stream")]
    from_version: Option<u64>,
    /// Read newest first.
    #[arg(long)]
    backwards: bool,
    /// Read at most this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Ignore events after this global position (the store as it was then).
    #[arg(long, value_name = "POSITION")]
    until: Option<u64>,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Start at this global position (default: only events appended from
    /// now on).
    #[arg(long, value_name = "POSITION")]
    from: Option<u64>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Debug, Args)]
struct StreamsArgs {
    /// Only streams whose id starts with this.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    prefix: String,
    /// List at most this many.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum TypesAction {
    /// List the registered types and the strict-mode setting (the default).
    List,
    /// Register event types.
    Add {
        /// The types.
        #[arg(required = true, value_name = "TYPE")]
        types: Vec<String>,
    },
    /// Turn strict mode on (unregistered types are rejected) or off.
    Strict {
        /// on or off.
        mode: OnOff,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// An error with its own exit code.
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: 2,
        message: message.into(),
    }
    .into()
}

/// The last panic's message and place, for the internal-error report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    // The hook only remembers the message: a panic inside a backend (redb
    // trusts page contents and can panic on a damaged page) is caught and
    // reported as `Corrupt` there, and the store must then close normally,
    // or a readable file could be left needing a repair. A panic that
    // reaches `main` is reported below as an internal error (exit 101).
    std::panic::set_hook(Box::new(|info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{}{at}", one_line(&msg)));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // A server uses every core; the other commands need little.
    let workers = match cli.command {
        Command::Serve(_) => std::thread::available_parallelism().map_or(2, |n| n.get()),
        _ => 2,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(cli))));
    // Close stores before the process exits.
    rt.shutdown_timeout(Duration::from_secs(5));
    let Ok(res) = res else {
        let msg = LAST_PANIC
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| "unknown panic".into());
        let _ = writeln!(
            io::stderr(),
            "error: internal error in eskv (please report it): {msg}"
        );
        return ExitCode::from(101);
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

/// Prints clap's error as one line (help and version go to stdout whole).
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = write!(io::stdout(), "{e}");
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = writeln!(
                io::stderr(),
                "error: no command given; the commands are append, read, tail, streams, info, types, check, export, import and copy (see 'eskv --help')"
            );
            ExitCode::from(2)
        }
        _ => {
            let _ = writeln!(io::stderr(), "error: {}", clap_message(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

/// clap's whole message on one line: every line up to its usage summary
/// (the arguments a "required arguments were not provided" error names
/// are on the lines after the first), then the usage.
fn clap_message(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut usage_line = None;
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = l.strip_prefix("Usage: ") {
            usage_line = Some(u.to_owned());
        } else if l.starts_with("For more information") {
        } else {
            let l = l.strip_prefix("error: ").unwrap_or(l);
            match parts.last_mut() {
                Some(p) if p.ends_with(':') => {
                    p.push(' ');
                    p.push_str(l);
                }
                Some(p) if l.starts_with('-') || l.starts_with('<') => {
                    p.push_str(", ");
                    p.push_str(l);
                }
                _ => parts.push(l.to_owned()),
            }
        }
    }
    let mut msg = if parts.is_empty() {
        "bad usage".to_owned()
    } else {
        parts.join("; ")
    };
    if let Some(u) = usage_line {
        msg.push_str(&format!(" (usage: {u}; see 'eskv --help')"));
    } else {
        msg.push_str(" (see 'eskv --help')");
    }
    one_line(&msg)
}

/// The exit code for an error of the store (see the README's table).
fn store_error_code(e: &eskv::Error) -> Option<u8> {
    match e {
        eskv::Error::WrongExpectedVersion { .. }
        | eskv::Error::ConditionFailed { .. }
        | eskv::Error::IdempotencyViolation { .. }
        | eskv::Error::StreamTombstoned { .. }
        | eskv::Error::NotFound { .. } => Some(3),
        eskv::Error::InvalidInput { .. }
        | eskv::Error::LimitExceeded { .. }
        | eskv::Error::UnknownEventType { .. }
        | eskv::Error::UnknownSubject { .. }
        | eskv::Error::WrongStoreKey { .. } => Some(2),
        _ => None,
    }
}

/// Prints an error as one line and picks the exit code.
fn report(e: anyhow::Error) -> ExitCode {
    if e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    }) {
        // The reader went away (`eskv read | head`): not an error.
        return ExitCode::SUCCESS;
    }
    let code = e
        .chain()
        .find_map(|c| {
            if let Some(x) = c.downcast_ref::<Exit>() {
                return Some(x.code);
            }
            c.downcast_ref::<eskv::Error>().and_then(store_error_code)
        })
        .unwrap_or(1);
    // The chain, without causes that their error already quotes.
    let mut msg = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if msg.contains(&t) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&t);
    }
    let _ = writeln!(io::stderr(), "error: {}", one_line(&msg));
    ExitCode::from(code)
}

fn one_line(s: &str) -> String {
    strip_source_locations(
        &s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Removes source locations some client libraries put in their messages
/// ("[/home/u/.cargo/registry/src/.../cluster.rs:209]: "): they say
/// nothing to the person reading the error.
fn strip_source_locations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        let inner = &rest[open + 1..close];
        let is_location = inner.rsplit_once(':').is_some_and(|(file, line)| {
            file.ends_with(".rs") && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
        });
        if is_location {
            out.push_str(&rest[..open]);
            rest = &rest[close + 1..];
            rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
        } else {
            out.push_str(&rest[..=close]);
            rest = &rest[close + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn parse_url(s: &str) -> Result<StoreUrl> {
    s.parse::<StoreUrl>().map_err(|e| usage(e.to_string()))
}

async fn run(cli: Cli) -> Result<()> {
    open::set_lock_wait(Duration::from_secs(cli.lock_timeout));
    if let Some(k) = &cli.store_key {
        open::set_store_key(Some(
            open::parse_store_key(k).map_err(|e| usage(e.to_string()))?,
        ));
    }
    let url = parse_url(&cli.store)?;
    let mut out = Out::new(cli.json);
    match cli.command {
        Command::Append(a) => append(&url, a, &mut out).await?,
        Command::Read(a) => read(&url, a, &mut out).await?,
        Command::Tail(a) => tail(&url, a, &mut out).await?,
        Command::Streams(a) => streams(&url, a, &mut out).await?,
        Command::Info => info(&url, &mut out).await?,
        Command::Types { action } => {
            types(&url, action.unwrap_or(TypesAction::List), &mut out).await?
        }
        Command::Check => check(&url, &mut out).await?,
        Command::Compact => compact(&url, &mut out).await?,
        Command::Retention(a) => {
            let store = open::open(&url, Access::Create).await?;
            let mut r = eskv::Retention::new();
            r.max_count = a.max_count;
            r.max_age = a.max_age;
            r.truncate_before = a.truncate_before;
            let done = store.set_retention(&a.stream, r, a.expected).await?;
            out.value(&json!({ "stream": a.stream, "position": done.first_position }))?;
        }
        Command::DeleteStream(a) => {
            let store = open::open(&url, Access::Create).await?;
            let done = if a.tombstone {
                store.tombstone_stream(&a.stream, a.expected).await?
            } else {
                store.delete_stream(&a.stream, a.expected).await?
            };
            out.value(&json!({ "stream": a.stream, "position": done.first_position, "tombstoned": a.tombstone }))?;
        }
        Command::Forget { subject } => {
            let store = open::open(&url, Access::Create).await?;
            let v = match store.forget(&subject).await? {
                eskv::ForgetOutcome::Forgotten { position } => {
                    json!({ "subject": subject, "forgotten": true, "position": position })
                }
                _ => json!({ "subject": subject, "forgotten": true, "already": true }),
            };
            out.value(&v)?;
        }
        Command::Archive(a) => archive(&url, a, &mut out).await?,
        Command::Export { out: file } => export(&url, file, &mut out).await?,
        Command::Import { input } => import(&url, input, &mut out).await?,
        Command::Copy { from, to } => copy(&parse_url(&from)?, &parse_url(&to)?, &mut out).await?,
        Command::Serve(a) => eskv_cli::serve::serve(&url, a).await?,
    }
    out.flush()?;
    Ok(())
}

/// Standard output: JSON lines or human text.
struct Out {
    w: BufWriter<io::Stdout>,
    json: bool,
}

impl Out {
    fn new(force_json: bool) -> Self {
        Out {
            w: BufWriter::new(io::stdout()),
            json: force_json || !io::stdout().is_terminal(),
        }
    }

    fn line(&mut self, s: &str) -> io::Result<()> {
        self.w.write_all(s.as_bytes())?;
        self.w.write_all(b"\n")
    }

    fn value(&mut self, v: &serde_json::Value) -> io::Result<()> {
        self.line(&v.to_string())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

// ---------------------------------------------------------------- append

fn event_from_flags(a: &AppendArgs, event_type: &str) -> Result<EventLine> {
    let data = match &a.data {
        // Checked as written, stored as written: nothing is taken out.
        Some(d) => {
            serde_json::from_str::<&serde_json::value::RawValue>(d)
                .map_err(|e| usage(format!("--data is not valid JSON: {e}")))?;
            Some(d.clone())
        }
        None => None,
    };
    let mut extra = std::collections::BTreeMap::new();
    for m in &a.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| usage(format!("--meta '{m}' is not KEY=VALUE")))?;
        extra.insert(k.to_owned(), v.to_owned());
    }
    Ok(EventLine {
        position: None,
        id: a.id.clone(),
        event_type: event_type.to_owned(),
        stream: None,
        version: None,
        tags: a.tags.clone(),
        data: None,
        // The exact bytes (including any line breaks or surrounding
        // spaces); `read` shows single-line JSON as "data" again.
        data_text: data.or_else(|| a.data_text.clone()),
        data_base64: None,
        metadata: MetaLine {
            correlation_id: a.correlation_id.clone(),
            causation_id: a.causation_id.clone(),
            extra,
        },
        recorded_at: None,
    })
}

fn events_from_stdin() -> Result<Vec<EventLine>> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err(usage(
            "no events: give --type (and --tag, --data) or pipe JSON lines on stdin",
        ));
    }
    let mut lines = Vec::new();
    for (i, l) in stdin.lock().lines().enumerate() {
        let l = l.context("cannot read stdin")?;
        if l.trim().is_empty() {
            continue;
        }
        let e = EventLine::parse(&l).map_err(|e| usage(format!("stdin line {}: {e}", i + 1)))?;
        if e.position.is_some()
            || e.stream.is_some()
            || e.version.is_some()
            || e.recorded_at.is_some()
        {
            return Err(usage(format!(
                "stdin line {}: position, stream, version and recorded_at are set by the store (use --stream for a stream append, `eskv import` to restore a backup)",
                i + 1
            )));
        }
        lines.push(e);
    }
    if lines.is_empty() {
        return Err(usage("no events on stdin"));
    }
    Ok(lines)
}

async fn append(url: &StoreUrl, a: AppendArgs, out: &mut Out) -> Result<()> {
    let lines = match &a.event_type {
        Some(t) => vec![event_from_flags(&a, t)?],
        None => events_from_stdin()?,
    };
    let mut events = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        events.push(l.to_new_event().map_err(|e| {
            usage(if lines.len() == 1 {
                e
            } else {
                format!("stdin event {}: {e}", i + 1)
            })
        })?);
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let mut req = AppendRequest::new(events);
    if let Some(s) = &a.stream {
        req = req.stream(s.clone(), parse_expected(&a.expected).map_err(usage)?);
    }
    if !a.fail_if.is_empty() {
        req = req.condition(AppendCondition::new(parse_query(&a.fail_if)?, a.after));
    }
    let store = open::open(url, Access::Create).await?;
    let done = store.submit(req).await.map_err(|e| {
        if store_error_code(&e) == Some(3) {
            anyhow::Error::new(e).context("append rejected")
        } else {
            e.into()
        }
    })?;
    let mut v = json!({
        "first_position": done.first_position,
        "last_position": done.last_position,
        "ids": ids,
    });
    if let (Some(s), Some(ver)) = (&a.stream, done.stream_version) {
        v["stream"] = json!(s);
        v["stream_version"] = json!(ver);
    }
    out.value(&v)?;
    Ok(())
}

fn parse_query(items: &[String]) -> Result<Query> {
    let items = items
        .iter()
        .map(|s| parse_query_item(s).map_err(|e| usage(format!("query '{s}': {e}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Query { items })
}

// ------------------------------------------------------------------ read

/// What to read.
enum Target {
    Log(LogFilter),
    Category(String),
    Stream(String),
}

fn target(f: &FilterArgs) -> Result<Target> {
    if let Some(s) = &f.stream {
        return Ok(Target::Stream(s.clone()));
    }
    if let Some(c) = &f.category {
        if !f.query.is_empty() {
            return Err(usage("--category and --query cannot be combined"));
        }
        return Ok(Target::Category(c.clone()));
    }
    Ok(Target::Log(LogFilter {
        query: if f.query.is_empty() {
            None
        } else {
            Some(parse_query(&f.query)?)
        },
        stream_prefix: f.stream_prefix.clone(),
    }))
}

/// Reads by position (every target but a stream).
async fn fetch(store: &EventStore, t: &Target, opts: ReadOptions) -> Result<eskv::ReadResult> {
    Ok(match t {
        Target::Log(f) => store.read_all_filtered(f, opts).await?,
        Target::Category(c) => store.read_category(c, opts).await?,
        Target::Stream(_) => unreachable!("streams are read by version"),
    })
}

const READ_PAGE: u64 = 512;

/// Collects output rows so a table can be aligned per page.
struct Printer<'a> {
    out: &'a mut Out,
    rows: Vec<EventLine>,
    /// Events printed.
    count: u64,
}

impl<'a> Printer<'a> {
    fn new(out: &'a mut Out) -> Self {
        Printer {
            out,
            rows: Vec::new(),
            count: 0,
        }
    }

    /// On a terminal, says so when nothing was printed.
    fn finish(&mut self) -> io::Result<()> {
        if self.count == 0 && !self.out.json {
            self.out.line("no events")?;
        }
        self.out.flush()
    }

    fn event(&mut self, e: &RecordedEvent) -> io::Result<()> {
        self.count += 1;
        let line = EventLine::from_recorded(e);
        if self.out.json {
            self.out.line(&line.to_json())
        } else {
            self.rows.push(line);
            Ok(())
        }
    }

    /// Prints buffered table rows.
    fn page(&mut self) -> io::Result<()> {
        if !self.rows.is_empty() {
            let t = table(&self.rows, None);
            self.out.w.write_all(t.as_bytes())?;
            self.rows.clear();
        }
        self.out.flush()
    }
}

/// How wide `s` is on a terminal (wide characters take two columns).
fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` cut to at most `n` terminal columns, with "…" when cut.
fn cut(s: &str, n: usize) -> String {
    if width(s) <= n {
        return s.to_owned();
    }
    let mut t = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > n {
            break;
        }
        t.push(c);
        w += cw;
    }
    t.push('…');
    t
}

/// `s` padded with spaces to `n` terminal columns.
fn pad(s: &str, n: usize, right: bool) -> String {
    let fill = " ".repeat(n.saturating_sub(width(s)));
    if right {
        fill + s
    } else {
        format!("{s}{fill}")
    }
}

const TABLE_HEAD: [&str; 6] = ["POS", "TYPE", "STREAM@VER", "TAGS", "RECORDED", "DATA"];
/// Most columns a table cell takes (DATA, the last, included).
const TABLE_MAX: [usize; 6] = [12, 32, 32, 40, 24, 60];
/// The widths `tail` uses from its first line on, before it has seen any
/// rows: wide enough for most values (longer ones are cut with "…").
const TAIL_WIDTHS: [usize; 5] = [8, 24, 24, 32, 24];

/// Rows as a table: aligned by terminal width, with a header. `fixed`
/// gives the widths of the first five columns (for `tail`, whose rows
/// arrive one by one); otherwise they fit the rows.
fn table(rows: &[EventLine], fixed: Option<[usize; 5]>) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let stream = match (&r.stream, r.version) {
                (Some(s), Some(v)) => format!("{s}@{v}"),
                _ => "-".into(),
            };
            let data = if let Some(d) = &r.data {
                d.get().to_owned()
            } else if let Some(t) = &r.data_text {
                format!("{t:?}")
            } else if let Some(b) = &r.data_base64 {
                format!("base64:{b}")
            } else {
                String::new()
            };
            let tags = if r.tags.is_empty() {
                "-".to_owned()
            } else {
                r.tags.join(",")
            };
            [
                r.position.map_or(String::new(), |p| p.to_string()),
                r.event_type.clone(),
                stream,
                tags,
                r.recorded_at.clone().unwrap_or_default(),
                data,
            ]
        })
        .collect();
    let mut w = [0; 6];
    match fixed {
        Some(f) => w[..5].copy_from_slice(&f),
        None => {
            for (i, h) in TABLE_HEAD.iter().enumerate() {
                w[i] = cells
                    .iter()
                    .map(|c| width(&c[i]))
                    .fold(width(h), usize::max)
                    .min(TABLE_MAX[i]);
            }
        }
    }
    let mut s = String::new();
    let mut row = |r: [&str; 6]| {
        let mut l = pad(&cut(r[0], w[0]), w[0], true);
        for i in 1..6 {
            l.push_str("  ");
            if i == 5 {
                l.push_str(&cut(r[i], TABLE_MAX[5]));
            } else {
                l.push_str(&pad(&cut(r[i], w[i]), w[i], false));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    row(TABLE_HEAD);
    for c in &cells {
        row([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]].map(String::as_str));
    }
    s
}

async fn read(url: &StoreUrl, a: ReadArgs, out: &mut Out) -> Result<()> {
    let t = target(&a.filter)?;
    let store = open::open(url, Access::Existing).await?;
    let mut p = Printer::new(out);
    read_into(&store, &t, &a, &mut p).await?;
    p.finish()?;
    Ok(())
}

async fn read_into(
    store: &EventStore,
    t: &Target,
    a: &ReadArgs,
    p: &mut Printer<'_>,
) -> Result<()> {
    let mut left = a.limit.unwrap_or(u64::MAX);
    if left == 0 {
        return Ok(());
    }
    if let Target::Stream(s) = t {
        let head = store.head().await?;
        let until = a.until.map_or(head, |u| u.min(head));
        let mut version = a.from_version;
        loop {
            let page = left.min(READ_PAGE);
            let mut o = ReadStreamOptions::new().limit(page as usize).until(until);
            o.backwards = a.backwards;
            o.from_version = version;
            let events = store.read_stream(s, o).await?;
            for e in &events {
                let skip = a.from.is_some_and(|f| {
                    if a.backwards {
                        e.position > f
                    } else {
                        e.position < f
                    }
                });
                if !skip && left > 0 {
                    p.event(e)?;
                    left -= 1;
                }
            }
            p.page()?;
            let Some(last) = events.last().and_then(|e| e.stream.as_ref()) else {
                break;
            };
            if (events.len() as u64) < page || left == 0 {
                break;
            }
            version = Some(if a.backwards {
                if last.version <= 1 {
                    break;
                }
                last.version - 1
            } else {
                last.version + 1
            });
        }
        return Ok(());
    }
    let mut opts = ReadOptions {
        from: a.from,
        backwards: a.backwards,
        limit: None,
        until: a.until,
    };
    // Every page reads up to the head as it is now: one consistent view
    // (events at or below it never change).
    let head = store.head().await?;
    opts.until = Some(opts.until.map_or(head, |u| u.min(head)));
    loop {
        let page = left.min(READ_PAGE);
        opts.limit = Some(page as usize);
        let res = fetch(store, t, opts).await?;
        for e in &res.events {
            p.event(e)?;
        }
        p.page()?;
        left -= res.events.len() as u64;
        let Some(last) = res.events.last() else {
            break;
        };
        if (res.events.len() as u64) < page || left == 0 {
            break;
        }
        opts.from = Some(if a.backwards {
            if last.position <= 1 {
                break;
            }
            last.position - 1
        } else {
            last.position + 1
        });
    }
    Ok(())
}

// ------------------------------------------------------------------ tail

async fn tail(url: &StoreUrl, a: TailArgs, out: &mut Out) -> Result<()> {
    let t = target(&a.filter)?;
    let mut left = a.limit.unwrap_or(u64::MAX);
    if left == 0 {
        return Ok(());
    }
    let follow = async {
        if matches!(url, StoreUrl::Redb { .. } | StoreUrl::Fjall { .. }) {
            tail_poll(url, &t, a.from, &mut left, out).await
        } else {
            tail_subscribe(url, &t, a.from, &mut left, out).await
        }
    };
    tokio::select! {
        r = follow => r,
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C"),
    }
}

/// Prints one tailed event; false when the limit is reached.
fn tail_print(out: &mut Out, e: &RecordedEvent, left: &mut u64) -> io::Result<bool> {
    let line = EventLine::from_recorded(e);
    if out.json {
        out.line(&line.to_json())?;
    } else {
        let t = table(std::slice::from_ref(&line), Some(TAIL_WIDTHS));
        // Skip the header row after the first event.
        let body = t.split_once('\n').map_or(t.as_str(), |(_, b)| b);
        out.w.write_all(body.as_bytes())?;
    }
    out.flush()?;
    *left -= 1;
    Ok(*left > 0)
}

/// Live subscription (TiKV, etcd, memory).
async fn tail_subscribe(
    url: &StoreUrl,
    t: &Target,
    from: Option<u64>,
    left: &mut u64,
    out: &mut Out,
) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let (filter, prefix) = match t {
        Target::Stream(s) => (SubscriptionFilter::Stream(s.clone()), None),
        Target::Category(c) => (SubscriptionFilter::Category(c.clone()), None),
        Target::Log(f) => (
            f.query
                .clone()
                .map_or(SubscriptionFilter::All, SubscriptionFilter::Query),
            f.stream_prefix.clone(),
        ),
    };
    let start = match from {
        Some(p) => StartFrom::After(p.saturating_sub(1)),
        None => StartFrom::End,
    };
    if !out.json {
        out.w.write_all(table(&[], Some(TAIL_WIDTHS)).as_bytes())?;
        out.flush()?;
    }
    let mut sub = store
        .subscribe(SubscriptionOptions::new().filter(filter).start(start))
        .await?;
    // Subscriptions filter by query, stream or category; a stream prefix
    // is checked here.
    let by_prefix = LogFilter {
        query: None,
        stream_prefix: prefix,
    };
    loop {
        let e = sub.next().await?;
        if by_prefix.matches(&e) && !tail_print(out, &e, left)? {
            return Ok(());
        }
    }
}

/// Polling tail for redb and fjall: the store has one user at a time, so it is
/// opened briefly for every poll and other processes can append between
/// polls.
async fn tail_poll(
    url: &StoreUrl,
    t: &Target,
    from: Option<u64>,
    left: &mut u64,
    out: &mut Out,
) -> Result<()> {
    let mut cursor = match from {
        Some(p) => p.saturating_sub(1),
        None => open::open(url, Access::Existing).await?.head().await?,
    };
    if !out.json {
        out.w.write_all(table(&[], Some(TAIL_WIDTHS)).as_bytes())?;
        out.flush()?;
    }
    let mut next_version = 1;
    let idle = Duration::from_millis(200);
    loop {
        if let Some(store) = open::try_open(url, Access::Existing).await? {
            loop {
                let events = match t {
                    Target::Stream(s) => {
                        store
                            .read_stream(
                                s,
                                ReadStreamOptions::new()
                                    .from_version(next_version)
                                    .limit(READ_PAGE as usize),
                            )
                            .await?
                            .events
                    }
                    _ => {
                        fetch(
                            &store,
                            t,
                            ReadOptions::after(cursor).limit(READ_PAGE as usize),
                        )
                        .await?
                        .events
                    }
                };
                for e in &events {
                    if let Some(s) = &e.stream {
                        next_version = next_version.max(s.version + 1);
                    }
                    if e.position > cursor {
                        cursor = e.position;
                        if !tail_print(out, e, left)? {
                            return Ok(());
                        }
                    }
                }
                if (events.len() as u64) < READ_PAGE {
                    break;
                }
            }
            drop(store);
        }
        tokio::time::sleep(idle).await;
    }
}

// ---------------------------------------------------- streams, info, types

async fn streams(url: &StoreUrl, a: StreamsArgs, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut after: Option<String> = None;
    let mut rows: Vec<[String; 3]> = Vec::new();
    while left > 0 {
        let n = left.min(1024) as usize;
        let page = store.list_streams(&a.prefix, after.as_deref(), n).await?;
        for s in &page {
            if out.json {
                out.value(&json!({
                    "stream": s.stream_id,
                    "version": s.version,
                    "last_position": s.last_position,
                }))?;
            } else {
                rows.push([
                    s.stream_id.clone(),
                    s.version.to_string(),
                    s.last_position.map_or("-".into(), |p| p.to_string()),
                ]);
            }
        }
        left -= page.len() as u64;
        match page.last() {
            Some(s) if page.len() == n => after = Some(s.stream_id.clone()),
            _ => break,
        }
    }
    if !out.json && rows.is_empty() {
        out.line("no streams")?;
    } else if !out.json {
        let w0 = rows.iter().map(|r| width(&r[0])).max().unwrap_or(0).max(6);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(7);
        out.line(&format!(
            "{:<w0$}  {:>w1$}  LAST_POSITION",
            "STREAM", "VERSION"
        ))?;
        for r in rows {
            out.line(&format!(
                "{}  {:>w1$}  {}",
                pad(&r[0], w0, false),
                r[1],
                r[2]
            ))?;
        }
    }
    Ok(())
}

async fn info(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let head = store.head().await?;
    let streams = transfer::count_streams(&store).await?;
    let types = store.event_types().await?;
    let strict = store.strict_types().await?;
    let unfinished = store.import_in_progress().await?;
    drop(store);
    let size = open::file_size(url);
    if out.json {
        let mut v = json!({
            "store": url.to_string(),
            "backend": url.backend(),
            "head": head,
            "events": head,
            "streams": streams,
            "types": types.len(),
            "strict": strict,
        });
        if let Some(s) = size {
            v["file_size"] = json!(s);
        }
        if let Some(m) = &unfinished {
            v["import_in_progress"] = json!({
                "expected_events": m.expected_events,
                "message": m.to_string(),
            });
        }
        out.value(&v)?;
    } else {
        out.line(&format!("store:     {url}"))?;
        out.line(&format!("head:      {head}"))?;
        out.line(&format!("events:    {head}"))?;
        out.line(&format!("streams:   {streams}"))?;
        out.line(&format!(
            "types:     {} registered, strict mode {}",
            types.len(),
            if strict { "on" } else { "off" }
        ))?;
        if let Some(s) = size {
            out.line(&format!("file size: {s} bytes ({})", human_bytes(s)))?;
        }
        if let Some(m) = &unfinished {
            out.line(&format!("warning:   {m}"))?;
        }
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

async fn types(url: &StoreUrl, action: TypesAction, out: &mut Out) -> Result<()> {
    let access = match action {
        TypesAction::List => Access::Existing,
        _ => Access::Create,
    };
    let store = open::open(url, access).await?;
    match action {
        TypesAction::List => {}
        TypesAction::Add { types } => store.register_event_types(types).await?,
        TypesAction::Strict { mode } => store.set_strict_types(matches!(mode, OnOff::On)).await?,
    }
    let types = store.event_types().await?;
    let strict = store.strict_types().await?;
    if out.json {
        out.value(&json!({ "types": types, "strict": strict }))?;
    } else {
        for t in &types {
            out.line(t)?;
        }
        out.line(&format!(
            "({} registered; strict mode {})",
            types.len(),
            if strict {
                "on: other types are rejected"
            } else {
                "off"
            }
        ))?;
    }
    Ok(())
}

// ----------------------------------------------------------------- check

async fn check(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let pb = spinner("checking", "keys read");
    let r = eskv::verify::verify_with_progress(&store, |keys| pb.set_position(keys)).await;
    pb.finish_and_clear();
    let r = r?;
    if out.json {
        let violations: Vec<_> = r
            .violations
            .iter()
            .map(|v| {
                json!({
                    "position": v.position,
                    "key": v.key.as_deref().map(eskv::display_key),
                    "message": v.message,
                })
            })
            .collect();
        out.value(&json!({
            "clean": r.is_clean(),
            "events": r.events,
            "streams": r.streams,
            "head": r.head,
            "keys": r.keys,
            "violations": violations,
            "omitted": r.omitted,
        }))?;
    } else {
        out.line(&r.to_string())?;
    }
    if r.is_clean() {
        Ok(())
    } else {
        out.flush()?;
        Err(Exit {
            code: 4,
            message: format!(
                "check found {} problem(s) in {url} (report on stdout)",
                r.violations.len() as u64 + r.omitted
            ),
        }
        .into())
    }
}

/// `eskv compact`: removes released rows (with progress), then on redb
/// closes the store and compacts the file.
async fn compact(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Create).await?;
    let pb = spinner("compacting", "events removed");
    let report = store
        .compact_with_progress(|r| pb.set_position(r.events_removed))
        .await;
    pb.finish_and_clear();
    let report = report?;
    drop(store);
    let mut file = serde_json::Value::Null;
    #[cfg(feature = "redb")]
    if let StoreUrl::Redb { path, .. } = url {
        // The store is closed; wait for other handles like every open does.
        let start = std::time::Instant::now();
        let f = loop {
            match eskv::redb::compact_file(path).await {
                Err(eskv::Error::StoreLocked { .. }) if start.elapsed() < open::lock_wait() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        file = json!({
            "bytes_before": f.bytes_before,
            "bytes_after": f.bytes_after,
            "bytes_returned": f.bytes_reclaimed(),
        });
    }
    if out.json {
        out.value(&json!({
            "streams_examined": report.streams_examined,
            "events_removed": report.events_removed,
            "keys_removed": report.keys_removed,
            "bytes_reclaimed": report.bytes_reclaimed,
            "transactions": report.transactions,
            "file": file,
        }))?;
    } else {
        out.line(&format!(
            "removed {} {} ({} keys, {} bytes) from {} streams in {} transactions",
            report.events_removed,
            events_word(report.events_removed),
            report.keys_removed,
            report.bytes_reclaimed,
            report.streams_examined,
            report.transactions
        ))?;
        if let Some(b) = file.get("bytes_returned") {
            out.line(&format!("file: {} bytes returned to the file system", b))?;
        }
    }
    Ok(())
}

// ------------------------------------------------- export, import, copy

/// "event" or "events".
fn events_word(n: u64) -> &'static str {
    if n == 1 {
        "event"
    } else {
        "events"
    }
}

/// A rate as a person reads it: a whole number per second.
fn rate_text(per_sec: f64) -> String {
    if per_sec.is_finite() {
        format!("{:.0}/s", per_sec)
    } else {
        "-/s".to_owned()
    }
}

/// A progress style with a whole-number rate as `{rate}`.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&rate_text(s.per_sec()));
            },
        )
        .progress_chars("=> ")
}

/// A progress bar over `len` events on stderr, when it is a terminal
/// (hidden otherwise).
fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(style(&format!(
        "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {} ({{rate}}, eta {{eta}})",
        events_word(len)
    )));
    pb.set_message(what.to_owned());
    pb.tick();
    pb
}

/// Progress without a known total ("checking 12345 keys read"), on stderr
/// when it is a terminal.
fn spinner(what: &str, unit: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(style(&format!(
        "{{spinner}} {{msg}}: {{pos}} {unit} ({{rate}}, {{elapsed}})"
    )));
    pb.set_message(what.to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn note(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

/// `eskv archive` (see `eskv_cli::archive`). The test hook
/// `ESKV_ARCHIVE_CRASH_AFTER=written|verified|renamed` aborts the process
/// right after that step, as a crash would.
async fn archive(url: &StoreUrl, a: ArchiveArgs, out: &mut Out) -> Result<()> {
    use eskv_cli::archive::{ArchiveStep, Scope};
    let scope = match (a.stream, a.before_position) {
        (Some(stream), None) => Scope::Stream {
            stream,
            before_version: a.before_version,
        },
        (None, Some(p)) => Scope::BeforePosition(p),
        _ => return Err(usage("give either --stream or --before-position")),
    };
    let crash_after = std::env::var("ESKV_ARCHIVE_CRASH_AFTER").ok();
    #[cfg(feature = "redb")]
    if let StoreUrl::Redb { path, .. } = url {
        if !path.is_file() {
            bail!("there is no store at {url}: nothing to archive");
        }
    }
    let store = open::open(url, Access::Create).await?;
    let pb = spinner("archiving", "steps");
    let done = eskv_cli::archive::archive(&store, &scope, &a.out, |s| {
        pb.inc(1);
        let name = match s {
            ArchiveStep::Written => "written",
            ArchiveStep::Verified => "verified",
            ArchiveStep::Renamed => "renamed",
            ArchiveStep::Released => "released",
        };
        if crash_after.as_deref() == Some(name) {
            std::process::abort();
        }
    })
    .await;
    pb.finish_and_clear();
    let done = done.with_context(|| format!("cannot archive into '{}'", a.out.display()))?;
    out.value(&json!({
        "file": done.file.display().to_string(),
        "scope": done.scope,
        "events": done.events,
        "crc32c": done.crc32c,
        "already": done.already,
        "position": done.position,
    }))?;
    note(&if done.already {
        format!(
            "already archived: {} holds {} ({} {}); nothing to do",
            done.file.display(),
            eskv_cli::archive::scope_text(&done.scope),
            done.events,
            events_word(done.events)
        )
    } else {
        format!(
            "archived {} {} of {} to {} (crc32c {}); run `eskv compact` to give the space back",
            done.events,
            events_word(done.events),
            eskv_cli::archive::scope_text(&done.scope),
            done.file.display(),
            done.crc32c
        )
    });
    Ok(())
}

async fn export(url: &StoreUrl, file: Option<PathBuf>, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let header = transfer::header(&store).await?;
    let (mut w, tmp): (Box<dyn Write + '_>, Option<PathBuf>) = match &file {
        Some(f) => {
            let mut tmp = f.clone().into_os_string();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let fh = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create '{}'", tmp.display()))?;
            (Box::new(BufWriter::new(fh)), Some(tmp))
        }
        None => (Box::new(&mut out.w), None),
    };
    let pb = progress(header.head, "export");
    let res: Result<Digest> = async {
        writeln!(w, "{}", serde_json::to_string(&header)?)?;
        let mut pager = transfer::LogPager::new(store.clone(), header.head);
        let mut digest = Digest::default();
        loop {
            let page = pager.next_page().await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                let line = EventLine::from_recorded(e).to_json();
                digest.add(&line);
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
            pb.set_position(digest.events);
        }
        let end = transfer::Trailer {
            eskv_export_end: transfer::End {
                events: digest.events,
                crc32c: digest.hex(),
            },
        };
        writeln!(w, "{}", serde_json::to_string(&end)?)?;
        w.flush()?;
        Ok(digest)
    }
    .await;
    pb.finish_and_clear();
    drop(w);
    let digest = match res {
        Ok(d) => d,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
    };
    if let (Some(t), Some(f)) = (&tmp, &file) {
        std::fs::rename(t, f).with_context(|| format!("cannot rename '{}'", t.display()))?;
        note(&format!(
            "exported {} events to {} (crc32c {})",
            digest.events,
            f.display(),
            digest.hex()
        ));
    }
    Ok(())
}

/// Reads an export (or plain event lines), checking its structure: the
/// header only first, positions in order, the trailer's count and
/// checksum. With an importer the events are also written.
async fn read_export(
    reader: Box<dyn BufRead + '_>,
    name: &str,
    mut importer: Option<&mut Importer>,
    pb: &mut ProgressBar,
) -> Result<Digest> {
    let mut header: Option<transfer::Header> = None;
    let mut trailer_seen = false;
    let mut digest = Digest::default();
    let mut any = false;
    // The last position seen: positions increase, and may skip the holes
    // removals left in the source.
    let mut last = 0u64;
    for (i, l) in reader.lines().enumerate() {
        let n = i + 1;
        let l = l.with_context(|| format!("cannot read {name}"))?;
        if l.trim().is_empty() {
            continue;
        }
        if trailer_seen {
            bail!("{name} line {n}: text after the export's last line");
        }
        let first = !any;
        any = true;
        match ExportLine::parse(&l).map_err(|e| anyhow!("{name} line {n}: {e}"))? {
            ExportLine::Header(h) => {
                if !first {
                    bail!("{name} line {n}: an export header may only be the first line");
                }
                if let Some(imp) = importer.as_deref_mut() {
                    imp.header(&h).await?;
                    *pb = progress(h.head, "import");
                } else {
                    *pb = progress(h.head, "checking the file");
                }
                header = Some(h);
            }
            ExportLine::Event(e) => {
                let in_order = e.position.is_some_and(|p| p > last)
                    && header.as_ref().is_none_or(|h| e.position <= Some(h.head));
                if !in_order {
                    bail!(
                        "{name} line {n}: expected an event after position {last}, found {}; import needs the events of the log in position order (the output of `eskv export`)",
                        e.position.map_or("none".to_owned(), |p| p.to_string())
                    );
                }
                last = e.position.unwrap_or(last);
                digest.add(&e.to_json());
                if let Some(imp) = importer.as_deref_mut() {
                    imp.push(&e)
                        .await
                        .with_context(|| format!("{name} line {n}"))?;
                }
                if digest.events % 256 == 0 {
                    pb.set_position(digest.events);
                }
            }
            ExportLine::Trailer(end) => {
                if header.is_none() {
                    bail!("{name} line {n}: an export trailer without a header");
                }
                transfer::check_trailer(&end, &digest)
                    .with_context(|| format!("{name} line {n}"))?;
                trailer_seen = true;
            }
        }
    }
    if !any {
        bail!("{name} is empty: there is nothing to import");
    }
    if let Some(h) = &header {
        if !trailer_seen {
            bail!(
                "{name} is truncated: it ends after {} of {} events, without the export's last line",
                digest.events,
                h.head
            );
        }
        // Fewer events than the head: holes left by removals.
        if digest.events > h.head {
            bail!(
                "{name} is inconsistent: its header promises at most {} events, it holds {}",
                h.head,
                digest.events
            );
        }
    }
    Ok(digest)
}

async fn import(url: &StoreUrl, input: Option<PathBuf>, out: &mut Out) -> Result<()> {
    let open_file = |f: &PathBuf| -> Result<Box<dyn BufRead>> {
        Ok(Box::new(io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot open '{}'", f.display()))?,
        )))
    };
    let name = input
        .as_ref()
        .map_or("stdin".to_owned(), |f| f.display().to_string());
    let reader: Box<dyn BufRead> = match &input {
        Some(f) => {
            // Check the whole file before writing anything.
            let mut pb = ProgressBar::hidden();
            let checked = read_export(open_file(f)?, &name, None, &mut pb).await;
            pb.finish_and_clear();
            checked?;
            open_file(f)?
        }
        None => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                return Err(usage("no input: pass --in FILE or pipe an export on stdin"));
            }
            // Peek at the first line so that empty input creates nothing.
            let mut lock = stdin.lock();
            let mut start = Vec::new();
            loop {
                let mut l = String::new();
                if lock.read_line(&mut l).context("cannot read stdin")? == 0 {
                    bail!("stdin is empty: there is nothing to import");
                }
                start.extend_from_slice(l.as_bytes());
                if !l.trim().is_empty() {
                    break;
                }
            }
            Box::new(io::Read::chain(io::Cursor::new(start), lock))
        }
    };
    let store = open::open(url, Access::Create).await?;
    let mut importer = Importer::new(store.clone())
        .await
        .with_context(|| format!("cannot import into {url}"))?;
    let mut pb = ProgressBar::hidden();
    let res = read_export(reader, &name, Some(&mut importer), &mut pb).await;
    let res = match res {
        Ok(d) => importer.finish().await.map(|i| (d, i.digest)),
        Err(e) => Err(e),
    };
    pb.finish_and_clear();
    let (digest, written) = match res {
        Ok(r) => r,
        Err(e) => {
            return Err(transfer::failed(e, &importer)
                .await
                .context(format!("import into {url} failed")))
        }
    };
    let pb = progress(digest.events, "verifying");
    let verified = transfer::digest_store(&store, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let (check, streams) = verified?;
    if check != digest || written != digest {
        bail!(
            "import into {url} does not read back the same: {} events with crc32c {} read, {} with {} imported",
            check.events,
            check.hex(),
            digest.events,
            digest.hex()
        );
    }
    out.value(&json!({
        "events": digest.events,
        "streams": streams,
        "crc32c": digest.hex(),
        "verified": true,
    }))?;
    Ok(())
}

async fn copy(from: &StoreUrl, to: &StoreUrl, out: &mut Out) -> Result<()> {
    if from == to && *from != StoreUrl::Memory {
        return Err(usage(format!(
            "--from and --to are the same store ({from})"
        )));
    }
    let source = open::open(from, Access::Existing).await.context("source")?;
    let target = open::open(to, Access::Create).await.context("target")?;
    let header = transfer::header(&source).await?;
    let pb = progress(header.head, "copy");
    let copied = transfer::copy(&source, &target, &header, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let digest = copied.map_err(|e| e.context(format!("copy into {to} failed")))?;
    let source_streams = transfer::count_streams(&source).await?;
    let pb = progress(digest.events, "verifying");
    let verified = transfer::digest_store(&target, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let (target_digest, target_streams) = verified?;
    let target_types = target.event_types().await?;
    let summary = json!({
        "from": from.to_string(),
        "to": to.to_string(),
        "events": digest.events,
        "streams": source_streams,
        "source_crc32c": digest.hex(),
        "target_events": target_digest.events,
        "target_streams": target_streams,
        "target_crc32c": target_digest.hex(),
        "verified": target_digest == digest && target_streams == source_streams,
    });
    out.value(&summary)?;
    if target_digest != digest || target_streams != source_streams {
        out.flush()?;
        bail!(
            "the copy does not match its source: {} events / {} streams / crc32c {} in {from}, {} / {} / {} in {to}",
            digest.events,
            source_streams,
            digest.hex(),
            target_digest.events,
            target_streams,
            target_digest.hex()
        );
    }
    if let Some(t) = header.types.iter().find(|t| !target_types.contains(t)) {
        bail!("the copy lost registered type '{t}'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_keep_the_arguments_they_name() {
        let text = "error: the following required arguments were not provided:\n  --to <URL>\n  --from <URL>\n\nUsage: eskv copy --from <URL> --to <URL>\n\nFor more information, try '--help'.\n";
        let m = clap_message(text);
        assert_eq!(
            m,
            "the following required arguments were not provided: --to <URL>, --from <URL> (usage: eskv copy --from <URL> --to <URL>; see 'eskv --help')"
        );
    }

    #[test]
    fn source_locations_are_dropped_and_other_brackets_kept() {
        assert_eq!(
            strip_source_locations(
                "cannot reach PD a:1: [/x/.cargo/registry/src/tikv-client-0.4.0/src/pd/cluster.rs:209]: PD cluster failed"
            ),
            "cannot reach PD a:1: PD cluster failed"
        );
        assert_eq!(strip_source_locations("tags [a, b]: x"), "tags [a, b]: x");
        assert_eq!(strip_source_locations("open [ end"), "open [ end");
    }

    #[test]
    fn rates_are_whole_numbers_and_one_event_is_singular() {
        assert_eq!(rate_text(1234.5678), "1235/s");
        assert_eq!(rate_text(f64::INFINITY), "-/s");
        assert_eq!(events_word(1), "event");
        assert_eq!(events_word(0), "events");
        assert_eq!(events_word(2), "events");
    }

    #[test]
    fn cells_are_cut_and_padded_by_display_width() {
        assert_eq!(width("東京"), 4);
        assert_eq!(pad("東京", 6, false), "東京  ");
        assert_eq!(pad("7", 3, true), "  7");
        let c = cut("東京東京東京", 5);
        assert!(width(&c) <= 5, "{c}");
        assert!(c.ends_with('…'));
        assert_eq!(cut("short", 10), "short");
    }
}
