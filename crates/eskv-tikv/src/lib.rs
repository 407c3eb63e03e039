//! [TiKV] backend for eskv, over `tikv-client` optimistic transactions.
//!
//! ```no_run
//! use eskv_core::{KvStore, KvStoreExt};
//! use eskv_tikv::{TikvOptions, TikvStore};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::KvResult<()> {
//! let options = TikvOptions::new(["127.0.0.1:2379"])
//!     .connect_timeout(Duration::from_secs(5))
//!     .key_prefix("my-app");
//! let store = TikvStore::connect(options).await?;
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots.** [`KvStore::begin`](eskv_core::KvStore::begin) starts an optimistic TiKV
//!   transaction, which takes its start timestamp from PD (one round trip).
//!   Every read runs at that timestamp: snapshot isolation. Each read runs
//!   in its own read-only snapshot at that timestamp, dropped when it
//!   returns, because tikv-client caches everything a transaction (or a
//!   snapshot) reads until it ends.
//! - **Scans** are planned so that each request reads about one page from
//!   about one region, although tikv-client sends a request's whole limit
//!   to every region its range overlaps: after a first small request, the
//!   plan narrows each request's key range to a window estimated to hold
//!   one page (see `docs/DESIGN.md`, "Long scans on TiKV").
//! - **Buffered writes** live in an [`eskv_core::WriteBuffer`] until commit.
//!   tikv-client can buffer writes itself, but its scan merge lets a buffered
//!   key past a limit-truncated snapshot page jump the queue; the shared
//!   buffer gets that case right, and it also rejects empty keys.
//! - **Validation set.** At commit, validated keys go to `lock_keys`. In an
//!   optimistic transaction that adds a `Lock` mutation to the prewrite, and
//!   TiKV's prewrite fails with a write conflict if any committed write to
//!   that key is newer than the start timestamp — including the creation of
//!   a key that was absent, and a delete.
//! - **Write-write conflicts.** Written keys are prewritten as `Put`/`Del`
//!   mutations, which get the same newer-version check; a written key needs
//!   no extra lock (tikv-client skips locks on mutated keys for that reason).
//! - **Commit** is Percolator two-phase commit: prewrite (one round trip per
//!   region batch, in parallel), a commit timestamp from PD, and the commit
//!   of the primary key. Secondary keys are committed in the background.
//!   So a commit costs about three round trips.
//! - **Drop is rollback.** Transactions are opened with the drop check off
//!   ([`CheckLevel::None`](tikv_client::CheckLevel::None)); nothing reaches TiKV before commit, so dropping
//!   an uncommitted transaction leaves nothing behind. A commit that fails
//!   with a known outcome is rolled back explicitly so its prewrite locks do
//!   not wait for their TTL.
//!
//! # Garbage collection
//!
//! TiKV keeps every version of every key until PD's GC safe point passes
//! it, and on a cluster without TiDB nothing moves the safe point: the
//! versions of the keys eskv rewrites constantly (the head on every append,
//! stream metadata, checkpoints, leases) pile up forever.
//! [`TikvStore::spawn_gc`] runs a background task that every 10 minutes
//! (by default) sets the safe point to PD's time less a lifetime (default
//! 10 minutes, [`DEFAULT_GC_LIFETIME`]); [`TikvStore::collect_garbage`]
//! runs one round. Neither runs unless called: the safe point is
//! cluster-wide, so only the owner of the cluster may move it (never do on
//! a cluster managed by TiDB, which runs its own GC).
//!
//! ```no_run
//! # use eskv_tikv::{GcOptions, TikvOptions, TikvStore};
//! # async fn f() -> eskv_core::KvResult<()> {
//! let store = TikvStore::connect(TikvOptions::new(["127.0.0.1:2379"])).await?;
//! let _gc = store.spawn_gc(GcOptions::default())?; // stops when dropped
//! # Ok(()) }
//! ```
//!
//! Once this process runs GC, its transactions older than the lifetime
//! (less the request timeout) fail with a retryable [`KvError::Conflict`](eskv_core::KvError::Conflict)
//! instead of reading a snapshot whose versions may be gone.
//!
//! # Errors
//!
//! Every native error goes through one mapping function:
//!
//! | tikv-client error | eskv error |
//! | --- | --- |
//! | `KeyError` with `conflict`, `retryable`, `deadlock`, `txn_not_found` or `commit_ts_expired` (also nested in `MultipleKeyErrors`, `ExtractedErrors`, `PessimisticLockError`) | [`KvError::Conflict`](eskv_core::KvError::Conflict) |
//! | `KeyError` with `already_exist`, `DuplicateKeyInsertion` | [`KvError::Conflict`](eskv_core::KvError::Conflict) ("key already exists") |
//! | `UndeterminedError` | [`KvError::CommitOutcomeUnknown`](eskv_core::KvError::CommitOutcomeUnknown) |
//! | gRPC transport, I/O, region and leader errors left over after the client's own backoff; gRPC statuses `Unavailable`, `DeadlineExceeded`, `Cancelled`, `Unknown`, `Aborted`, `ResourceExhausted` | [`KvError::Unavailable`](eskv_core::KvError::Unavailable) (during commit: [`KvError::CommitOutcomeUnknown`](eskv_core::KvError::CommitOutcomeUnknown), since the primary may have been committed) |
//! | gRPC status `Internal` | [`KvError::Backend`](eskv_core::KvError::Backend) (during commit: [`KvError::CommitOutcomeUnknown`](eskv_core::KvError::CommitOutcomeUnknown)) |
//! | anything else | [`KvError::Backend`](eskv_core::KvError::Backend) |
//!
//! Every call is wrapped in `tokio::time::timeout`: tikv-client can hang for
//! a minute on a PD that accepts connections and never answers. A timeout is
//! [`KvError::Unavailable`](eskv_core::KvError::Unavailable), or [`KvError::CommitOutcomeUnknown`](eskv_core::KvError::CommitOutcomeUnknown) during commit.
//!
//! [TiKV]: https://tikv.org
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod gc;
mod options;
mod paging;
mod store;
mod txn;

pub use eskv_core::kv::remote::{RemoteOptions, TlsFiles};
pub use gc::{GcOptions, GcOutcome, DEFAULT_GC_LIFETIME, MIN_GC_LIFETIME};
pub use options::TikvOptions;
pub use store::{GcTask, TikvStore};

const BACKEND: &str = "tikv";

/// Largest value eskv writes to TiKV. TiKV's default `raft-entry-max-size`
/// is 8 MiB and its gRPC responses are capped at 10 MiB by default; 4 MiB
/// leaves room for keys and for a few values per scan page.
pub const MAX_VALUE_SIZE: usize = 4 << 20;

/// Most bytes one transaction may write (TiDB's default transaction size
/// limit is 100 MB; locks of huge transactions block readers for long).
pub const MAX_TXN_BYTES: usize = 64 << 20;
