//! One-line opening of a store on a redb file.

use eskv_core::{EventStore, Result};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Opens an [`EventStore`] on a redb file in one line (feature `redb`):
/// `EventStore::open_redb(path)`. Bring it into scope with
/// `use eskv::prelude::*;` (or `use eskv::OpenRedb;`).
///
/// ```
/// use eskv::prelude::*;
/// use eskv::EventStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("events.redb");
/// let store = EventStore::open_redb(&path).await?;
/// assert_eq!(store.head().await?, 0);
/// # Ok(()) }
/// ```
pub trait OpenRedb: Sized {
    /// Opens (or creates) the redb file at `path` with default options and
    /// an event store on it. For redb options use
    /// [`RedbStore::open_with`](crate::RedbStore::open_with) and
    /// [`EventStore::open`].
    fn open_redb(path: impl AsRef<Path>) -> impl Future<Output = Result<Self>> + Send;
}

impl OpenRedb for EventStore {
    fn open_redb(path: impl AsRef<Path>) -> impl Future<Output = Result<Self>> + Send {
        let path = path.as_ref().to_path_buf();
        async move { EventStore::open(Arc::new(eskv_redb::RedbStore::open(path).await?)).await }
    }
}
