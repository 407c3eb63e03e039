//! [etcd] backend for eskv: reads at a pinned revision, one compare-and-swap
//! `Txn` per commit.
//!
//! ```no_run
//! use eskv_core::{KvStore, KvStoreExt};
//! use eskv_etcd::{EtcdOptions, EtcdStore};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::KvResult<()> {
//! let options = EtcdOptions::new(["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"])
//!     .connect_timeout(Duration::from_secs(3))
//!     .key_prefix("my-app");
//! let store = EtcdStore::connect(options).await?; // probes the cluster
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots.** [`KvStore::begin`] costs nothing. The first read of a
//!   transaction is a linearizable read at the newest revision; the revision
//!   in its response header becomes the transaction's *pin*, and every later
//!   read asks for that revision. etcd's MVCC store answers from the pinned
//!   revision until it is compacted; a read at a compacted revision fails
//!   with a retryable [`KvError::Conflict`].
//! - **Buffered writes** live in an [`eskv_core::WriteBuffer`]; scans merge
//!   them over the snapshot.
//! - **Commit** is one etcd `Txn`: `If` every written and every validated key
//!   still has the `mod_revision` it had at the pin, `Then` apply the puts
//!   and deletes. A key absent at the pin is compared with `mod_revision ==
//!   0`, which holds only while it is still absent (etcd compares a missing
//!   key as all zeros). So creating, changing and deleting a key after the
//!   pin are all caught, and a failed compare is a retryable
//!   [`KvError::Conflict`].
//! - **Keys not read before commit.** The transaction knows the pinned
//!   `mod_revision` of every key it read, and takes a key written with
//!   [`KvTransaction::put_new`](eskv_core::KvTransaction::put_new) as absent
//!   at the pin (`mod_revision` 0). For any other written or validated key
//!   it never read, commit first reads the keys' metadata at the pin (one
//!   extra round trip for all such keys): comparing with `mod_revision <=
//!   pin` instead would miss a key deleted after the pin. A transaction
//!   that never read anything has no pin: its snapshot is the commit itself
//!   and its `Txn` carries no compares.
//! - **Round trips:** one per read, one per commit, plus one when the commit
//!   writes or validates keys the transaction neither read nor wrote with
//!   `put_new`. The event layer reads the head, ids and stream heads of a
//!   batch in one read and writes every new row with `put_new` (positions
//!   above the head, stream versions above the stream's), so an append,
//!   conditional or to a stream, is two round trips: one read, one commit.
//! - **Unknown outcomes.** A commit whose answer is lost (timeout, dropped
//!   connection, leader change) returns [`KvError::CommitOutcomeUnknown`].
//!
//! # Limits
//!
//! etcd caps a `Txn` at `--max-txn-ops` operations (128 by default; the
//! compares, the `Then` list and the `Else` list are each held to it) and a
//! request at `--max-request-bytes` (1.5 MiB by default). [`EtcdOptions`]
//! carries the server's settings (defaults: etcd's defaults), and the store
//! declares them in its [`Capabilities`] so that oversized transactions are
//! rejected with [`KvError::LimitExceeded`] before anything is sent; they are
//! never half-applied. If the server runs with larger limits, raise them in
//! the options too. Options that declare more than the server takes let an
//! oversized request through to it; whether etcd or gRPC refuses it, the
//! store returns [`KvError::InvalidInput`] naming
//! [`EtcdOptions::server_limits`], and nothing is written.
//!
//! # Operating etcd for eskv
//!
//! - **Compaction.** etcd keeps every revision until it is compacted, and
//!   its database stops taking writes at `--quota-backend-bytes` (2 GiB by
//!   default). Run it with automatic compaction, for example
//!   `--auto-compaction-mode=periodic --auto-compaction-retention=1h`, and
//!   defragment now and then. A transaction older than the retention can
//!   fail with a retryable conflict; eskv's transactions last milliseconds.
//! - **Throughput.** Every commit is one Raft entry, applied in revision
//!   order by one apply loop and fsynced by the leader and a quorum, so
//!   commits are serialized cluster-wide; the event layer's group commit
//!   puts many appends into one `Txn`.
//! - **Size.** etcd suits stores up to a few GB; use TiKV beyond that.
//! - **A full database.** Once the database reaches `--quota-backend-bytes`,
//!   etcd raises its NOSPACE alarm and refuses writes: they fail with
//!   [`KvError::StorageFull`] (not retryable) until an operator compacts
//!   and defragments (`etcdctl compact`, `etcdctl defrag`) or raises the
//!   quota, then disarms the alarm (`etcdctl alarm disarm`). Reads still
//!   work. The commit that meets the quota has `outcome_unknown` set: etcd
//!   may have applied it before answering NOSPACE (retry it with the same
//!   event ids once there is space).
//! - **Authentication.** With [`EtcdOptions::auth`] the store needs
//!   read-write on its namespace's keys only: the prefix
//!   [`EtcdStore::prefix`], which for `key_prefix("app")` is the bytes
//!   `n\x15\x03app` (`"n"`, the name's length, the name), so in a shell
//!   `etcdctl role grant-permission app-role readwrite --prefix
//!   $'n\x15\x03app'`. When users, roles or permissions change, the
//!   client fetches a new token and sends the refused call again.
//!
//!
//! # Crate layout
//!
//! | module | what |
//! |---|---|
//! | `config` | [`EtcdOptions`]: endpoints, TLS, auth, timeouts, server limits |
//! | [`client`] | [`EtcdClient`]: the unary gRPC calls eskv makes, no `protoc` needed |
//! | [`proto`] | the etcd v3 messages those calls carry |
//! | `error` | the one error-mapping site, timeouts and resending |
//! | `backend` | [`EtcdStore`] and its transaction |
//!
//! [etcd]: https://etcd.io
//! [`KvStore::begin`]: eskv_core::KvStore::begin
//! [`KvError::Conflict`]: eskv_core::KvError::Conflict
//! [`KvError::CommitOutcomeUnknown`]: eskv_core::KvError::CommitOutcomeUnknown
//! [`KvError::LimitExceeded`]: eskv_core::KvError::LimitExceeded
//! [`KvError::StorageFull`]: eskv_core::KvError::StorageFull
//! [`KvError::InvalidInput`]: eskv_core::KvError::InvalidInput
//! [`Capabilities`]: eskv_core::Capabilities
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
pub mod client;
mod config;
mod error;
pub mod proto;

pub use backend::EtcdStore;
pub use client::{ClientError, EtcdClient};
pub use config::EtcdOptions;
pub use eskv_core::kv::remote::{RemoteOptions, TlsFiles};

const BACKEND: &str = "etcd";

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Bytes of a request kept free for protobuf framing and the compares.
const REQUEST_HEADROOM: usize = 64 * 1024;

/// Rows per scan request; longer scans page through the range.
const SCAN_PAGE: usize = 128;
