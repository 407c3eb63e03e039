//! Opening an [`EventStore`] from a [`StoreUrl`].

use crate::url::StoreUrl;
use anyhow::{bail, Context as _, Result};
use eskv::{EventStore, OpenOptions};
use std::time::Duration;

/// Whether opening may create a store that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The store must exist (commands that only look: `read`, `check`...).
    /// For redb this means the file must exist and not be empty; it is
    /// opened read-only, so its bytes are never changed (it may be a
    /// read-only file), and nothing is created.
    Existing,
    /// The store must exist, and is opened for writing: commands that
    /// change what is there (`compact`, `retention`, `delete-stream`,
    /// `forget`, `archive`), so a mistyped path is an error instead of a
    /// new empty store.
    Change,
    /// Create the store on first use (`append`, `import`, `copy --to`...).
    Create,
}

/// How long to wait, by default, for a redb file that another process has
/// open (for example a `tail`, which opens it briefly on every poll).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

static LOCK_WAIT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(LOCK_WAIT.as_millis() as u64);

static STORE_KEY: std::sync::Mutex<Option<eskv::StoreKey>> = std::sync::Mutex::new(None);

/// Sets the store key (for personal data) every [`open`] passes on.
pub fn set_store_key(key: Option<eskv::StoreKey>) {
    *STORE_KEY.lock().unwrap_or_else(|p| p.into_inner()) = key;
}

/// Parses a store key written as 64 hexadecimal digits
/// ([`eskv::StoreKey::from_hex`]).
pub fn parse_store_key(hex: &str) -> Result<eskv::StoreKey> {
    Ok(eskv::StoreKey::from_hex(hex)?)
}

static TENANT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Sets the tenant whose namespace every [`open`] (and [`open_keyed`],
/// [`try_open`]) opens instead of the root namespace (`--tenant`); see
/// [`crate::tenant`].
pub fn set_tenant(tenant: Option<String>) {
    *TENANT.lock().unwrap_or_else(|p| p.into_inner()) = tenant;
}

/// The tenant set with [`set_tenant`].
pub fn tenant() -> Option<String> {
    TENANT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The store key set with [`set_store_key`].
pub fn store_key() -> Option<eskv::StoreKey> {
    STORE_KEY.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The event store options of an open with `key` for `access`. Only
/// commands that may create a store bind it to `key` (record its check
/// where none is: `import` and `copy` write personal data under it, and
/// `serve` takes it from clients); the others check the key where one is
/// recorded and bind nothing, so a mistyped `--store-key` given to `read`,
/// `check` or `compact` never locks the application's own key out.
/// Tenants opened from the root (`crate::tenant::open_in`) inherit this.
fn store_options(key: Option<eskv::StoreKey>, access: Access) -> eskv::EventStoreOptions {
    let mut o = eskv::EventStoreOptions::default().bind_store_key(access == Access::Create);
    if let Some(k) = key {
        o = o.store_key(k);
    }
    o
}

/// Sets how long [`open`] waits for a redb file held by another process
/// (default [`LOCK_WAIT`]).
pub fn set_lock_wait(wait: Duration) {
    LOCK_WAIT_MS.store(
        wait.as_millis().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// How long opens wait for a redb file another process holds.
pub fn lock_wait() -> Duration {
    Duration::from_millis(LOCK_WAIT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Opens the store behind `url`: the library's [`eskv::open_url`], with
/// the checks and waits of a command-line tool around a redb file, and the
/// endpoints named when a cluster cannot be reached. With a tenant set
/// ([`set_tenant`]) it is that tenant's namespace, which must exist unless
/// `access` is [`Access::Create`].
pub async fn open(url: &StoreUrl, access: Access) -> Result<EventStore> {
    open_keyed(url, access, store_key()).await
}

/// [`open`] with `key` as the store key instead of the one set with
/// [`set_store_key`] (`copy --to-store-key`).
pub async fn open_keyed(
    url: &StoreUrl,
    access: Access,
    key: Option<eskv::StoreKey>,
) -> Result<EventStore> {
    let root = open_root_keyed(url, access, key).await?;
    scope(url, root, access).await
}

/// The namespace [`set_tenant`] chose of the store `root` opened.
async fn scope(url: &StoreUrl, root: EventStore, access: Access) -> Result<EventStore> {
    match tenant() {
        None => Ok(root),
        Some(t) if access == Access::Create => Ok(crate::tenant::open_in(&root, &t).await?),
        Some(t) => crate::tenant::open_existing(&root, &t, &url.to_string()).await,
    }
}

/// [`open_keyed`] on the root namespace, whatever tenant is set (for the
/// commands that go through every tenant: `copy`, `check`).
pub async fn open_root_keyed(
    url: &StoreUrl,
    access: Access,
    key: Option<eskv::StoreKey>,
) -> Result<EventStore> {
    match url {
        StoreUrl::Redb { path, .. } | StoreUrl::Fjall { path, .. } => {
            open_embedded(url, path, access, key).await
        }
        StoreUrl::Memory => {
            let options = OpenOptions::default().store(store_options(key, access));
            Ok(eskv::open_url(url, &options).await?)
        }
        StoreUrl::Tikv { endpoints, .. } | StoreUrl::Etcd { endpoints, .. } => {
            let options = OpenOptions::default().store(store_options(key, access));
            eskv::open_url(url, &options).await.with_context(|| {
                format!(
                    "cannot connect to {} at {}",
                    url.backend(),
                    endpoints.join(",")
                )
            })
        }
    }
}

/// Tries once: like [`open`], but an embedded store held by another
/// process is reported as `Ok(None)` instead of being waited for.
pub async fn try_open(url: &StoreUrl, access: Access) -> Result<Option<EventStore>> {
    if let StoreUrl::Redb { path, .. } | StoreUrl::Fjall { path, .. } = url {
        check_exists(url, path, access)?;
        return match open_embedded_once(url, access, store_key()).await {
            Ok(s) => scope(url, s, access).await.map(Some),
            Err(eskv::Error::StoreLocked { .. }) => Ok(None),
            Err(e) => Err(path_context(e, path)),
        };
    }
    open(url, access).await.map(Some)
}

/// The size in bytes of the file behind `url`, for file-based stores.
pub fn file_size(url: &StoreUrl) -> Option<u64> {
    match url {
        StoreUrl::Redb { path, .. } => std::fs::metadata(path).ok().map(|m| m.len()),
        StoreUrl::Fjall { path, .. } => dir_size(path).ok(),
        _ => None,
    }
}

/// Bytes on disk under a directory (allocated blocks: fjall preallocates
/// its journal as a sparse file).
fn dir_size(path: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            allocated(&m)
        };
    }
    Ok(total)
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

fn check_exists(url: &StoreUrl, path: &std::path::Path, access: Access) -> Result<()> {
    if matches!(url, StoreUrl::Fjall { .. }) {
        if access != Access::Create && !path.join("version").is_file() {
            bail!(
                "no eskv store at '{}': it is not a fjall store directory (append or import creates one)",
                path.display()
            );
        }
        return Ok(());
    }
    if access == Access::Create {
        if path.is_dir() {
            bail!(
                "cannot open '{}': it is a directory, not an eskv store file",
                path.display()
            );
        }
        return Ok(());
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no eskv store at '{}': the file does not exist (append or import creates it)",
            path.display()
        ),
        Err(e) => bail!("cannot open '{}': {e}", path.display()),
    };
    if meta.is_dir() {
        bail!(
            "cannot open '{}': it is a directory, not an eskv store file",
            path.display()
        );
    }
    if meta.len() == 0 {
        bail!(
            "no eskv store at '{}': the file is empty (0 bytes); append or import writes a store into it",
            path.display()
        );
    }
    Ok(())
}

/// Names the file, unless the error already does.
fn path_context(e: eskv::Error, path: &std::path::Path) -> anyhow::Error {
    let named = e.to_string().contains(&path.display().to_string());
    let e = anyhow::Error::new(e);
    if named {
        e
    } else {
        e.context(format!("cannot open '{}'", path.display()))
    }
}

async fn open_embedded_once(
    url: &StoreUrl,
    access: Access,
    key: Option<eskv::StoreKey>,
) -> eskv::Result<EventStore> {
    let options = OpenOptions::default()
        .store(store_options(key, access))
        // This tool waits for a held store itself (--lock-timeout).
        .lock_wait(Duration::ZERO)
        // A read-only redb open never changes the file; a read-only fjall
        // open copies the whole store (its recovery writes), too costly
        // for every `tail` poll, so fjall opens normally.
        .read_only(matches!(access, Access::Existing) && matches!(url, StoreUrl::Redb { .. }));
    eskv::open_url(url, &options).await
}

async fn open_embedded(
    url: &StoreUrl,
    path: &std::path::Path,
    access: Access,
    key: Option<eskv::StoreKey>,
) -> Result<EventStore> {
    check_exists(url, path, access)?;
    let start = std::time::Instant::now();
    let wait = lock_wait();
    let mut pause = Duration::from_millis(5);
    loop {
        match open_embedded_once(url, access, key.clone()).await {
            Ok(s) => return Ok(s),
            Err(eskv::Error::StoreLocked { .. }) if start.elapsed() < wait => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e @ eskv::Error::StoreLocked { .. }) => {
                let holders = match url {
                    StoreUrl::Fjall { .. } => "a fjall store has one user at a time",
                    _ => "a redb file has one writer or any number of readers at a time",
                };
                bail!(
                    "{e} (waited {}s; {holders}; --lock-timeout SECONDS waits longer)",
                    wait.as_secs_f64()
                )
            }
            Err(e) => return Err(path_context(e, path)),
        }
    }
}
