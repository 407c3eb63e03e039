//! Options for opening a fjall store.

use std::time::Duration;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` of the journal before a commit returns (the default,
    /// fjall's `PersistMode::SyncData`): an acknowledged commit survives
    /// power loss. One sync covers a whole group commit.
    #[default]
    Immediate,
    /// The journal is handed to the operating system but not synced
    /// (`PersistMode::Buffer`): an acknowledged commit survives a crash of
    /// the process, not of the machine, until a later `Immediate` commit
    /// or a clean close syncs it. For tests and throwaway data.
    None,
}

/// The default size of fjall's block cache: 64 MiB (fjall's own default
/// is 32 MiB).
///
/// The cache holds decompressed data, index and filter blocks of the
/// tables on disk; the newest writes live in the memtable (bounded by
/// [`FjallOptions::max_memtable_size`]) and the operating system's page
/// cache keeps the files' hot pages anyway.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

/// The default memtable size: 16 MiB. A memtable is flushed to a table on
/// disk when it reaches this size, and the journal it came from is then
/// deleted; it bounds both memory and the replay work after a crash.
pub const DEFAULT_MEMTABLE_SIZE: u64 = 16 << 20;

/// The default and smallest bound on the journals kept on disk: 64 MiB
/// (fjall's own default is 512 MiB).
///
/// fjall starts a new journal file past 64 MB and deletes an old one once
/// every keyspace has flushed the data it holds to tables. A keyspace
/// written rarely (the store's format marker lives in one) would keep its
/// first journal, and every journal after it, until the journals reach
/// this bound; fjall then flushes that keyspace. With 64 MiB a store keeps
/// about one journal beside its tables instead of up to 512 MiB of
/// journals whose data is already in tables.
pub const DEFAULT_MAX_JOURNAL_SIZE: u64 = 64 << 20;

/// Options for [`FjallStore::open_with`](crate::FjallStore::open_with).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FjallOptions {
    /// Commit durability. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// fjall block cache size in bytes. Default: [`DEFAULT_CACHE_SIZE`].
    pub cache_size: u64,
    /// Memtable size in bytes before it is flushed to disk. Default:
    /// [`DEFAULT_MEMTABLE_SIZE`].
    pub max_memtable_size: u64,
    /// Journal bytes on disk past which fjall flushes the keyspaces that
    /// keep old journals alive. Default and minimum:
    /// [`DEFAULT_MAX_JOURNAL_SIZE`].
    pub max_journal_size: u64,
    /// Most commit requests one group commit may carry. Default: 1024.
    pub max_batch: usize,
    /// Open an existing store without writing to it (see the crate docs).
    /// Default: false.
    pub read_only: bool,
    /// How long opening waits for a directory held by another handle
    /// before it fails with [`KvError::StoreLocked`](eskv_core::KvError::StoreLocked).
    /// Default: 2 s, which covers a handle of this process that is still
    /// closing; `Duration::ZERO` fails at once.
    pub lock_wait: Duration,
    /// Delete the directory when the last handle closes (fjall's temporary
    /// mode), for tests and scratch stores. A temporary store does not
    /// reopen itself after an I/O failure (closing would delete it).
    /// Default: false.
    pub temporary: bool,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            durability: Durability::Immediate,
            cache_size: DEFAULT_CACHE_SIZE,
            max_memtable_size: DEFAULT_MEMTABLE_SIZE,
            max_journal_size: DEFAULT_MAX_JOURNAL_SIZE,
            max_batch: 1024,
            read_only: false,
            lock_wait: Duration::from_secs(2),
            temporary: false,
        }
    }
}

impl FjallOptions {
    /// Sets the durability.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the block cache size in bytes.
    pub fn cache_size(mut self, bytes: u64) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Sets the memtable size in bytes (at least 1 MiB).
    pub fn max_memtable_size(mut self, bytes: u64) -> Self {
        self.max_memtable_size = bytes.max(1 << 20);
        self
    }

    /// Sets the bound on journal bytes kept on disk (at least
    /// [`DEFAULT_MAX_JOURNAL_SIZE`], fjall's minimum).
    pub fn max_journal_size(mut self, bytes: u64) -> Self {
        self.max_journal_size = bytes.max(DEFAULT_MAX_JOURNAL_SIZE);
        self
    }

    /// Sets the largest group-commit batch.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Opens read-only (see the crate docs).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Deletes the directory when the last handle closes (see
    /// [`FjallOptions::temporary`]).
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Sets how long opening waits for a directory held by another handle.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }
}
