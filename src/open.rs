//! Opening a store in one line: from a URL on any backend ([`open`]), or
//! on a redb file ([`OpenRedb`]).

use crate::url::StoreUrl;
use eskv_core::{Error, EventStore, EventStoreOptions, MemoryStore, Result};
#[cfg(feature = "redb")]
use std::future::Future;
#[cfg(feature = "redb")]
use std::path::Path;
use std::sync::Arc;

/// Opens the event store behind a store URL: `redb:PATH` or `fjall:PATH`
/// (created on first use; `?cache=SIZE` sets the page cache), `memory:`,
/// `etcd://HOST:PORT[,...][/PREFIX]` or `tikv://PD:PORT[,...][/PREFIX]`
/// (see [`crate::url`]). Each backend needs its feature (`redb` is on by
/// default).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let url = format!("redb:{}", dir.path().join("events.redb").display());
/// let store = eskv::open(&url).await?;
/// assert_eq!(store.head().await?, 0);
///
/// let err = eskv::open("events.redb").await.unwrap_err();
/// assert!(err.to_string().contains("redb:PATH"), "{err}");
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<EventStore> {
    open_url(&parse_store_url(url)?, &OpenOptions::default()).await
}

/// A store URL given as text, or [`Error::InvalidInput`] saying which
/// forms there are.
pub(crate) fn parse_store_url(url: &str) -> Result<StoreUrl> {
    url.parse().map_err(|e| Error::invalid(format!("{e}")))
}

/// How [`open_url`] opens a store.
///
/// ```
/// use eskv::{OpenOptions, EventStoreOptions};
/// use std::time::Duration;
/// let o = OpenOptions::default()
///     .store(EventStoreOptions::default())
///     .read_only(true)
///     .lock_wait(Duration::from_secs(5));
/// assert!(o.read_only);
/// assert_eq!(o.lock_wait, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// The event store's own options (limits, retries, the store key for
    /// personal data...).
    pub store: EventStoreOptions,
    /// Open an embedded store read-only: it must exist, its bytes are
    /// never changed, and appends fail with [`Error::ReadOnly`] (a fjall
    /// store is copied to a private directory for this, since its
    /// recovery writes). Remote stores ignore it.
    pub read_only: bool,
    /// How long to wait for an embedded store (redb, fjall) that another
    /// handle of this process is still closing (the backend's default
    /// when `None`).
    pub lock_wait: Option<std::time::Duration>,
}

impl OpenOptions {
    /// Sets the event store's options (see [`OpenOptions::store`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv::Result<()> {
    /// use eskv::{open_url, OpenOptions, EventStoreOptions, Limits, NewEvent};
    /// let mut limits = Limits::default();
    /// limits.max_tags_per_event = 1;
    /// let opts = OpenOptions::default().store(EventStoreOptions::default().limits(limits));
    /// let store = open_url(&"memory:".parse().unwrap(), &opts).await?;
    /// let two_tags = NewEvent::new("Tick", vec![]).with_tags(["a", "b"]);
    /// let refused = store.append(vec![two_tags], None).await;
    /// assert!(matches!(refused, Err(eskv::Error::LimitExceeded { .. })));
    /// # Ok(()) }
    /// ```
    pub fn store(mut self, options: EventStoreOptions) -> Self {
        self.store = options;
        self
    }

    /// Opens read-only (see [`OpenOptions::read_only`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv::Result<()> {
    /// use eskv::{open_url, OpenOptions, NewEvent};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let url = format!("redb:{}", dir.path().join("events.redb").display()).parse().unwrap();
    /// open_url(&url, &OpenOptions::default()).await?; // creates the file
    /// # tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    /// let ro = open_url(&url, &OpenOptions::default().read_only(true)).await?;
    /// let refused = ro.append(vec![NewEvent::new("Tick", vec![])], None).await;
    /// assert!(matches!(refused, Err(eskv::Error::ReadOnly { .. })));
    /// # Ok(()) }
    /// ```
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Sets [`OpenOptions::lock_wait`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = eskv::OpenOptions::default().lock_wait(Duration::from_millis(200));
    /// assert_eq!(o.lock_wait, Some(Duration::from_millis(200)));
    /// ```
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }
}

/// Opens the store behind a parsed URL with `options`. A URL whose
/// backend this build lacks is [`Error::InvalidInput`] naming the feature.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> eskv::Result<()> {
/// use eskv::{open_url, OpenOptions, StoreUrl};
/// let store = open_url(&StoreUrl::Memory, &OpenOptions::default()).await?;
/// assert_eq!(store.head().await?, 0);
/// # Ok(()) }
/// ```
pub async fn open_url(url: &StoreUrl, options: &OpenOptions) -> Result<EventStore> {
    match url {
        StoreUrl::Memory => {
            EventStore::open_with(Arc::new(MemoryStore::new()), options.store.clone()).await
        }
        StoreUrl::Redb { path, cache } => {
            #[cfg(feature = "redb")]
            {
                let mut o = eskv_redb::RedbOptions::default().read_only(options.read_only);
                if let Some(c) = cache {
                    o = o.cache_size(*c);
                }
                if let Some(w) = options.lock_wait {
                    o = o.lock_wait(w);
                }
                let kv = eskv_redb::RedbStore::open_with(path, o).await?;
                EventStore::open_with(Arc::new(kv), options.store.clone()).await
            }
            #[cfg(not(feature = "redb"))]
            {
                let _ = (path, cache, options);
                Err(not_built("redb"))
            }
        }
        StoreUrl::Fjall { path, cache } => {
            #[cfg(feature = "fjall")]
            {
                let mut o = eskv_fjall::FjallOptions::default().read_only(options.read_only);
                if let Some(c) = cache {
                    o = o.cache_size(*c as u64);
                }
                if let Some(w) = options.lock_wait {
                    o = o.lock_wait(w);
                }
                let kv = eskv_fjall::FjallStore::open_with(path, o).await?;
                EventStore::open_with(Arc::new(kv), options.store.clone()).await
            }
            #[cfg(not(feature = "fjall"))]
            {
                let _ = (path, cache, options);
                Err(not_built("fjall"))
            }
        }
        StoreUrl::Etcd { endpoints, prefix } => {
            #[cfg(feature = "etcd")]
            {
                let mut o = eskv_etcd::EtcdOptions::new(endpoints.iter().cloned());
                if let Some(p) = prefix {
                    o = o.key_prefix(p);
                }
                EventStore::open_with(
                    Arc::new(eskv_etcd::EtcdStore::connect(o).await?),
                    options.store.clone(),
                )
                .await
            }
            #[cfg(not(feature = "etcd"))]
            {
                let _ = (endpoints, prefix);
                Err(not_built("etcd"))
            }
        }
        StoreUrl::Tikv { endpoints, prefix } => {
            #[cfg(feature = "tikv")]
            {
                let mut o = eskv_tikv::TikvOptions::new(endpoints.iter().cloned());
                if let Some(p) = prefix {
                    o = o.key_prefix(p);
                }
                EventStore::open_with(
                    Arc::new(eskv_tikv::TikvStore::connect(o).await?),
                    options.store.clone(),
                )
                .await
            }
            #[cfg(not(feature = "tikv"))]
            {
                let _ = (endpoints, prefix);
                Err(not_built("tikv"))
            }
        }
    }
}

/// The error for a URL whose backend this build left out.
#[allow(dead_code)]
fn not_built(backend: &str) -> Error {
    Error::invalid(format!(
        "this build of eskv has no {backend} backend; enable the `{backend}` feature of the eskv crate"
    ))
}

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
#[cfg(feature = "redb")]
pub trait OpenRedb: Sized {
    /// Opens (or creates) the redb file at `path` with default options and
    /// an event store on it. For redb options use
    /// [`RedbStore::open_with`](crate::RedbStore::open_with) and
    /// [`EventStore::open`].
    fn open_redb(path: impl AsRef<Path>) -> impl Future<Output = Result<Self>> + Send;
}

#[cfg(feature = "redb")]
impl OpenRedb for EventStore {
    fn open_redb(path: impl AsRef<Path>) -> impl Future<Output = Result<Self>> + Send {
        let path = path.as_ref().to_path_buf();
        async move { EventStore::open(Arc::new(eskv_redb::RedbStore::open(path).await?)).await }
    }
}
