//! The command line: clap's types for every command and its flags.

use clap::{Args, Parser, Subcommand, ValueEnum};
use eskv::ExpectedVersion;
use eskv_cli::spec::parse_expected;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const AFTER_HELP: &str = "\
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
       tenant name, query or expected version, invalid --data, events the
       store refuses (bad type or tag, unknown type in strict mode, over a
       limit), or an import file that is not a whole export
  3    rejected by the store's state: wrong expected version, DCB
       condition failed, ids reused, a tombstoned stream, or deleting a
       stream that does not exist
  4    check found damage or an unfinished import (the report is on stdout)
  101  internal error (a bug in eskv: please report it)";

/// The eskv event store tool.
#[derive(Debug, Parser)]
#[command(name = "eskv", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Store URL: redb:PATH, fjall:PATH, memory:, tikv://HOST:PORT[,...][/PREFIX] or
    /// etcd://HOST:PORT[,...][/PREFIX].
    #[arg(
        long,
        global = true,
        env = "ESKV_STORE",
        default_value = "redb:./events.redb",
        value_name = "URL"
    )]
    pub(crate) store: String,
    /// Print JSON (lines) even when stdout is a terminal.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// How long to wait for a redb file that another process holds.
    #[arg(
        long,
        global = true,
        env = "ESKV_LOCK_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub(crate) lock_timeout: u64,
    /// Work on this tenant's namespace of the store instead of its root:
    /// the events of `eskv serve --auth-file` credentials with that tenant.
    /// `eskv info` lists the tenants; `copy` and `check` without --tenant
    /// cover the root and every tenant.
    #[arg(long, global = true, env = "ESKV_TENANT", value_name = "NAME")]
    pub(crate) tenant: Option<String>,
    /// The key of the store's personal data (64 hex digits), the one it
    /// was written with. `read` and `tail` need it on a store that holds
    /// personal data (they show only the data subject of a personal part,
    /// never its content), and `import` and `copy` need it for data that
    /// has personal parts (their keys stay wrapped); `export` and `forget`
    /// do not.
    #[arg(
        long,
        global = true,
        env = "ESKV_STORE_KEY",
        hide_env_values = true,
        value_name = "HEX"
    )]
    pub(crate) store_key: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct RetentionArgs {
    /// The stream.
    pub(crate) stream: String,
    /// Keep only the last N events.
    #[arg(long, value_name = "N")]
    pub(crate) max_count: Option<u64>,
    /// Keep only events younger than this (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) max_age: Option<Duration>,
    /// Release every version below V.
    #[arg(long, value_name = "V")]
    pub(crate) truncate_before: Option<u64>,
    /// Expected metadata revision: any, no-stream (never set), or a number.
    #[arg(long, default_value = "any", value_parser = parse_expected)]
    pub(crate) expected: ExpectedVersion,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["stream", "before_position"])))]
pub(crate) struct ArchiveArgs {
    /// Archive this stream (all of it, or with --before-version the versions below one).
    #[arg(long, value_name = "STREAM")]
    pub(crate) stream: Option<String>,
    /// With --stream: archive the versions below V only.
    #[arg(long, value_name = "V", requires = "stream")]
    pub(crate) before_version: Option<u64>,
    /// Archive every event at a position below P, with or without a stream.
    #[arg(long, value_name = "P")]
    pub(crate) before_position: Option<u64>,
    /// The archive file to write (must not exist, unless it is this
    /// archive's file from an earlier run).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The stream.
    pub(crate) stream: String,
    /// Expected stream version: any, exists, or a number.
    #[arg(long, default_value = "any", value_parser = parse_expected)]
    pub(crate) expected: ExpectedVersion,
    /// Never allow the stream to be written again.
    #[arg(long)]
    pub(crate) tombstone: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Show the head (the last position written: system events and
    /// removed events included; `check` counts the live events), the
    /// stream count, the registered types, the tenants (with --tenant:
    /// that tenant's figures) and the file size.
    Info,
    /// View and manage the event type registry (for strict mode).
    Types {
        #[command(subcommand)]
        action: Option<TypesAction>,
    },
    /// Check the store's integrity; exit code 0 when clean, 4 with a report
    /// when not.
    ///
    /// Reports the live events (what `read` and `export` return), the
    /// events still stored in the log (released ones included until
    /// `compact` removes them), streams, head and keys read. Without
    /// --tenant it checks the root and every tenant, one report each.
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
    /// Write the store as JSON lines (a backup), one namespace per file.
    ///
    /// The root namespace, or with --tenant NAME that tenant's. A store with tenants is refused unless --root-only says
    /// that the root alone is wanted: back up each tenant with
    /// `eskv --tenant NAME export` (`eskv info` lists them; `copy` takes
    /// them all at once).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Export the root namespace alone, leaving the store's tenants
        /// out.
        #[arg(long)]
        root_only: bool,
    },
    /// Restore an export into an empty store (with --tenant NAME, into
    /// that tenant's namespace, which must be empty).
    Import {
        /// Read from this file instead of stdin.
        #[arg(long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// Take the subject keys of personal data the file does not carry
        /// (an archive keeps them in its store) from this store, the one
        /// the archive came from; opened with --store-key.
        #[arg(long, value_name = "URL")]
        keys_from: Option<String>,
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
    ///
    /// The root and every tenant, each into the same namespace of the
    /// target, each verified and reported on its own line; with --tenant
    /// NAME that tenant alone.
    Copy {
        /// Source store URL.
        #[arg(long, value_name = "URL")]
        from: String,
        /// Target store URL (must be empty).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The target's store key (64 hex digits), when it differs from
        /// --store-key: subject keys are re-wrapped under it.
        #[arg(
            long,
            env = "ESKV_TO_STORE_KEY",
            hide_env_values = true,
            value_name = "HEX"
        )]
        to_store_key: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AppendArgs {
    /// Event type (append one event from flags instead of stdin).
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) event_type: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG", requires = "event_type")]
    pub(crate) tags: Vec<String>,
    /// Payload as JSON, stored byte for byte as written (it must be one
    /// valid JSON document).
    #[arg(
        long,
        value_name = "JSON",
        requires = "event_type",
        conflicts_with = "data_text"
    )]
    pub(crate) data: Option<String>,
    /// Payload as plain text.
    #[arg(long, value_name = "TEXT", requires = "event_type")]
    pub(crate) data_text: Option<String>,
    /// Event id (a ULID), for idempotent retries; generated when absent.
    #[arg(long, value_name = "ULID", requires = "event_type")]
    pub(crate) id: Option<String>,
    /// Correlation id.
    #[arg(long, value_name = "ID", requires = "event_type")]
    pub(crate) correlation_id: Option<String>,
    /// Causation id.
    #[arg(long, value_name = "ID", requires = "event_type")]
    pub(crate) causation_id: Option<String>,
    /// A metadata entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", requires = "event_type")]
    pub(crate) meta: Vec<String>,
    /// Append to this stream.
    #[arg(long, value_name = "STREAM")]
    pub(crate) stream: Option<String>,
    /// Expected stream version: any, no-stream, exists or a version number.
    #[arg(
        long,
        value_name = "VERSION",
        requires = "stream",
        default_value = "any"
    )]
    pub(crate) expected: String,
    /// DCB condition: fail if an event matching 'types=A,B;tags=x,y' exists
    /// (after --after). Repeat to OR several items.
    #[arg(long = "fail-if", value_name = "ITEM")]
    pub(crate) fail_if: Vec<String>,
    /// Only events after this position count for --fail-if (normally the
    /// head of the read your decision was based on).
    #[arg(long, value_name = "POSITION", requires = "fail_if")]
    pub(crate) after: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only this stream.
    #[arg(long, value_name = "STREAM", conflicts_with_all = ["query", "category", "stream_prefix"])]
    pub(crate) stream: Option<String>,
    /// Only events matching a DCB query item 'types=A,B;tags=x,y' (repeat
    /// to OR several items).
    #[arg(long, value_name = "ITEM", conflicts_with = "category")]
    pub(crate) query: Vec<String>,
    /// Only events of a category (streams named CATEGORY-...).
    #[arg(long, value_name = "CATEGORY", conflicts_with = "stream_prefix")]
    pub(crate) category: Option<String>,
    /// Only events of streams whose id starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub(crate) stream_prefix: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// First global position to read (backwards: the highest).
    #[arg(long, value_name = "POSITION")]
    pub(crate) from: Option<u64>,
    /// With --stream: first stream version to read (backwards: the highest).
    #[arg(long, value_name = "VERSION", requires = "stream")]
    pub(crate) from_version: Option<u64>,
    /// Read newest first.
    #[arg(long)]
    pub(crate) backwards: bool,
    /// Read at most this many events.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
    /// Ignore events after this global position (the store as it was then).
    #[arg(long, value_name = "POSITION")]
    pub(crate) until: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Start at this global position (default: only events appended from
    /// now on).
    #[arg(long, value_name = "POSITION")]
    pub(crate) from: Option<u64>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct StreamsArgs {
    /// Only streams whose id starts with this.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub(crate) prefix: String,
    /// List at most this many.
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TypesAction {
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
pub(crate) enum OnOff {
    On,
    Off,
}
