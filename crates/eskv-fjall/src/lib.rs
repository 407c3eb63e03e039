//! Embedded [fjall] backend for eskv: a log-structured (LSM-tree) store
//! whose commit is one sequential journal append.
//!
//! ```
//! use eskv_core::{KvStore, KvStoreExt};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eskv_core::KvResult<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = eskv_fjall::FjallStore::open(dir.path().join("events")).await?;
//! let mut txn = store.begin().await?;
//! txn.put(b"greeting".to_vec(), b"hello".to_vec());
//! txn.commit().await?;
//! assert_eq!(store.get_latest(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! A store is a directory (fjall's journal, tables and lock file), created
//! on first open. An existing directory must be empty or hold an eskv
//! store: opening never writes among other files.
//!
//! # How it meets the `KvStore` contract
//!
//! - **Snapshots** are fjall snapshots (MVCC by sequence number, never
//!   blocked by the writer), registered with a [`CommitOracle`] under the
//!   commit number they see.
//! - **Writes** are buffered in a [`WriteBuffer`] and sent at commit to one
//!   dedicated writer thread; a lone commit whose caller may block its
//!   thread (a multi-threaded runtime's `block_on`, or no runtime) is
//!   checked and written on the caller's thread instead, under the same
//!   lock, saving the hand-off to the writer and back.
//! - **Group commit.** The writer thread drains every commit request that
//!   is waiting, checks each against the oracle (and against the requests
//!   admitted before it in the same batch), and writes the admitted ones as
//!   one atomic fjall batch: one journal append and, with
//!   [`Durability::Immediate`], one `fdatasync` (fjall's
//!   `PersistMode::SyncData`). Each request keeps its own outcome: a
//!   conflict fails only that request. fjall publishes a batch to new
//!   snapshots only after the sync, so no reader sees a commit that a
//!   crash could take back.
//! - **Reads run where they are called** when they are small (point reads,
//!   scans of at most a thousand rows: served from the memtable, the block
//!   cache or one `pread`); larger scans run on `spawn_blocking`.
//!
//! The directory is locked by fjall, so this process is the only writer
//! and the in-process oracle sees every commit. fjall's own optimistic
//! transactions are not used: they check reads as well as writes (stricter
//! than the contract, so they would report conflicts eskv does not have)
//! and sync once per transaction, where the oracle lets one sync cover a
//! whole group.
//!
//! # Read-only
//!
//! [`FjallStore::open_read_only`] (or [`FjallOptions::read_only`]) opens an
//! existing store without ever writing to its directory: fjall recovers a
//! database by writing to it, so a read-only open copies the directory to
//! a private temporary directory (removed on close) and reads the copy.
//! Opening therefore costs a copy of the store. While a read-only handle
//! is open it holds a shared lock on the store: any number of read-only
//! handles (in any processes) may share it, a writer meeting them (or a
//! read-only open meeting a writer) fails with [`KvError::StoreLocked`], and
//! commits that write fail with [`KvError::ReadOnly`].
//!
//! # Damage, full disks and crashes
//!
//! - **Crashes.** An acknowledged commit is in the synced journal; a crash
//!   can only leave the batch being written partly in the journal, and
//!   fjall drops that incomplete last batch when it reopens (it is atomic:
//!   all of it or nothing).
//! - **Damage.** Tables and journal batches carry checksums. A damaged
//!   table block, or a journal batch whose checksum does not match, is
//!   [`KvError::Corrupt`] naming the directory, never a panic (a panic
//!   inside fjall is caught at this backend's one error-mapping site and
//!   becomes `Corrupt` too). Known limit: fjall reads a journal whose
//!   *structure* is damaged (a changed length or entry tag) as a torn
//!   tail and drops it and everything after it, like a crash would; keep
//!   backups (`eskv export`) for stores you cannot lose.
//! - **I/O failures** (a full disk) are reported with their first cause:
//!   [`KvError::StorageFull`] with the directory, or a backend error naming
//!   it. fjall refuses every write after a failed journal write
//!   ("poisoned"); this backend then reopens the database on the next
//!   operation, so the store recovers without a restart once the cause is
//!   gone.
//! - **Memory**: fjall's block cache is [`DEFAULT_CACHE_SIZE`] (64 MiB)
//!   unless [`FjallOptions::cache_size`] says otherwise, plus the memtable
//!   ([`FjallOptions::max_memtable_size`], 16 MiB by default, and up to
//!   that much again while one is being flushed).
//! - **Disk**: tables (compressed), plus the journals whose data is not in
//!   tables yet; journals past [`FjallOptions::max_journal_size`]
//!   ([`DEFAULT_MAX_JOURNAL_SIZE`], 64 MiB) make fjall flush the keyspaces
//!   that hold them, so a store keeps about one journal.
//!
//! [`CommitOracle`]: eskv_core::oracle::CommitOracle
//! [`WriteBuffer`]: eskv_core::WriteBuffer
//! [`KvError::StoreLocked`]: eskv_core::KvError::StoreLocked
//! [`KvError::ReadOnly`]: eskv_core::KvError::ReadOnly
//! [`KvError::Corrupt`]: eskv_core::KvError::Corrupt
//! [`KvError::StorageFull`]: eskv_core::KvError::StorageFull
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod options;
mod store;
mod txn;
mod writer;

/// The fjall crate this backend is built on.
pub use fjall;
pub use options::{
    Durability, FjallOptions, DEFAULT_CACHE_SIZE, DEFAULT_MAX_JOURNAL_SIZE, DEFAULT_MEMTABLE_SIZE,
};
pub use store::FjallStore;
