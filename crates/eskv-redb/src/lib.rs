//! Embedded [redb] backend for eskv.
//!
//! ```
//! use eskv_core::{KvStore, KvStoreExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::KvResult<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = eskv_redb::RedbStore::open(dir.path().join("kv.redb")).await?;
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots** are redb read transactions (MVCC, never blocked by the
//!   writer), registered with a [`CommitOracle`] under the commit number
//!   they see.
//! - **Writes** are buffered by the core's [`BufferedTxn`] (which also
//!   answers reads of this transaction's own writes) and sent at commit to
//!   one dedicated writer thread; a lone commit whose caller may block its
//!   thread (a multi-threaded runtime's `block_on`, or no runtime) is
//!   checked and written on the caller's thread instead, under the same
//!   lock, saving the hand-off to the writer and back.
//! - **Group commit.** The writer thread drains every commit request that
//!   is waiting, checks each against the oracle (and against the requests
//!   admitted before it in the same batch), applies the admitted ones in one
//!   redb write transaction and makes it durable with one fsync. Each request
//!   keeps its own outcome: a conflict fails only that request.
//! - **Never blocks the runtime.** Reads run in place under
//!   `block_in_place` on a multi-threaded runtime (its other tasks move to
//!   another thread; no hop to the blocking pool and back), else on
//!   `spawn_blocking`; commits made from a task go to the writer thread.
//!
//! The file is opened in redb's exclusive-writer mode, so this process is the
//! only writer and the in-process oracle sees every commit.
//!
//! # Read-only
//!
//! [`RedbStore::open_read_only`] (or [`RedbOptions::read_only`]) opens an
//! existing store without ever writing to its file: the file may be
//! read-only, any number of read-only handles (in any processes) may share
//! it, no writer thread is started, and commits that write fail with
//! [`KvError::ReadOnly`]. A file that was not closed cleanly needs recovery,
//! which writes; a read-only open then recovers a private temporary copy
//! and reads that, leaving the file as it is. A file held by a writer, or
//! a writer meeting read-only handles, fails with [`KvError::StoreLocked`]
//! naming the file.
//!
//! # Damage, full disks and crashes
//!
//! - **A panic inside redb** (redb trusts page contents and can panic on a
//!   damaged page) is caught at the backend's one error-mapping site and
//!   becomes [`KvError::Corrupt`] naming the file; nothing is written.
//! - **Quick repair** ([`RedbOptions::quick_repair`], on by default): every
//!   commit records redb's allocator state with a two-phase commit, so
//!   reopening after a crash or a kill loads that state instead of walking
//!   and checksumming the whole file. A file with a damaged page that a
//!   crash left open therefore still opens, and reopening takes a few
//!   milliseconds instead of a walk of the file.
//! - **I/O failures** (a full disk) are reported with their first cause:
//!   [`KvError::StorageFull`] with the file's path, or a backend error naming
//!   it. redb refuses every operation after an I/O failure ("previous I/O
//!   error"); this backend then reopens the file on the next operation, so
//!   the store recovers without a restart once the cause is gone. A
//!   read-only store reopens the same way, read-only again (a file that
//!   needs recovery is copied and recovered afresh): it never writes.
//! - **Memory**: redb's page cache is [`DEFAULT_CACHE_SIZE`] (64 MiB) unless
//!   [`RedbOptions::cache_size`] says otherwise; redb's own default is 1 GiB.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compact_file;
pub use compact_file::{compact_file, FileCompaction};
mod error;
mod options;
mod store;
mod txn;
mod writer;
use options::*;
pub use options::{Durability, RedbOptions, DEFAULT_CACHE_SIZE};
pub use store::RedbStore;
use store::*;
use txn::*;
use writer::*;

use async_trait::async_trait;
use eskv_core::kv::{BufferedTxn, KvSnapshot, ReadMany, VisitRow, VisitValue, WriteSet};
use eskv_core::oracle::reopen::ReopenSlot;
use eskv_core::oracle::writer::{CommitSender, GroupWriter};
use eskv_core::oracle::{CommitOracle, Snapshot};
use eskv_core::{
    Capabilities, KeyRange, KvError, KvPair, KvResult, KvStore, KvTransaction, ScanOptions,
};
use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The redb crate this backend is built on, for implementing
/// [`redb::StorageBackend`] for [`RedbStore::open_with_backend`].
pub use redb;

const BACKEND: &str = "redb";
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("eskv_data");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("eskv_meta");
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"eskv-kv/1";
