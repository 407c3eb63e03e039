//! Settings of a redb store: durability and page cache.
use super::*;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync before a commit returns (the default): an acknowledged commit
    /// survives power loss.
    #[default]
    Immediate,
    /// No fsync: an acknowledged commit survives a process crash only once a
    /// later `Immediate` commit (or a clean close) has flushed it. For tests
    /// and throwaway data.
    None,
}

/// The default size of redb's page cache: 64 MiB.
///
/// redb's own default is 1 GiB, which a long-running process fills (it sat
/// at 1.1 GB resident) and a full `check` of a large store fills too. The
/// cache sits above the operating system's page cache, which keeps the
/// file's hot pages anyway: a miss in redb's cache costs a `pread` and a
/// copy, not a disk read. 64 MiB holds the upper levels of every b-tree
/// and the tail of the log (where appends and live subscriptions work) for
/// stores of many gigabytes; a process that scans large stores repeatedly
/// and has memory to spare can raise it with [`RedbOptions::cache_size`].
pub const DEFAULT_CACHE_SIZE: usize = 64 << 20;

/// Options for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedbOptions {
    /// Commit durability. Default: [`Durability::Immediate`].
    pub durability: Durability,
    /// redb page cache size in bytes. Default: [`DEFAULT_CACHE_SIZE`]
    /// (64 MiB).
    pub cache_size: usize,
    /// Most commit requests one group commit may carry. Default: 1024.
    pub max_batch: usize,
    /// Record redb's allocator state with every commit (redb's
    /// quick-repair mode, a two-phase commit), so that reopening after a
    /// crash does not walk and checksum the whole file. Default: `true`.
    ///
    /// Without it, reopening after an unclean exit rebuilds the allocator
    /// state from every page, which takes time proportional to the file
    /// and fails outright ("all roots are corrupted") on a file with one
    /// damaged page, even a page that nothing needs to read.
    ///
    /// The cost is a slower commit (two fsyncs instead of one): measured
    /// at 13–15 ms against 3.4–5.9 ms for one durable append on its own;
    /// group commit spreads it over every append of a batch.
    pub quick_repair: bool,
    /// Open an existing store without writing to it (see the crate docs).
    /// Default: false.
    pub read_only: bool,
    /// How long opening waits for a file held by another handle before it
    /// fails with [`KvError::StoreLocked`]. Default: 2 s, which covers a
    /// handle of this process that is still closing (a group commit's
    /// task finishing after its appends were answered); `Duration::ZERO`
    /// fails at once.
    pub lock_wait: std::time::Duration,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Durability::Immediate,
            cache_size: DEFAULT_CACHE_SIZE,
            max_batch: 1024,
            quick_repair: true,
            lock_wait: std::time::Duration::from_secs(2),
            read_only: false,
        }
    }
}

impl RedbOptions {
    /// Sets the durability.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the page cache size in bytes.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Turns redb's quick-repair mode on or off (see
    /// [`RedbOptions::quick_repair`]).
    pub fn quick_repair(mut self, on: bool) -> Self {
        self.quick_repair = on;
        self
    }

    /// Sets how long opening waits for a file held by another handle.
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Opens read-only (see the crate docs).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the largest group-commit batch.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
}

/// A redb builder for `options`.
pub(crate) fn builder(options: &RedbOptions) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(options.cache_size);
    b
}
