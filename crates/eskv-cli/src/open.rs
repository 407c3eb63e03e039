//! Opening an [`EventStore`] from a [`StoreUrl`].

use crate::url::StoreUrl;
use anyhow::{anyhow, bail, Context as _, Result};
use eskv::{EventStore, MemoryStore};
use std::sync::Arc;
use std::time::Duration;

/// Whether opening may create a store that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The store must exist (commands that only look: `read`, `check`...).
    /// For redb this means the file must exist and not be empty; it is
    /// opened read-only, so its bytes are never changed (it may be a
    /// read-only file), and nothing is created.
    Existing,
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

/// Parses a store key written as 64 hexadecimal digits.
pub fn parse_store_key(hex: &str) -> Result<eskv::StoreKey> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "a store key is 64 hexadecimal digits (32 bytes); this one has {} characters",
            hex.len()
        );
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(eskv::StoreKey::from_bytes(bytes))
}

/// The event store options every open uses.
fn store_options() -> eskv::EventStoreOptions {
    let mut o = eskv::EventStoreOptions::default();
    if let Some(k) = STORE_KEY.lock().unwrap_or_else(|p| p.into_inner()).clone() {
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

/// Opens the store behind `url`.
pub async fn open(url: &StoreUrl, access: Access) -> Result<EventStore> {
    match url {
        StoreUrl::Memory => {
            Ok(EventStore::open_with(Arc::new(MemoryStore::new()), store_options()).await?)
        }
        StoreUrl::Redb { path, cache } => open_redb(path, *cache, access).await,
        StoreUrl::Tikv { endpoints, prefix } => open_tikv(endpoints, prefix.as_deref()).await,
        StoreUrl::Etcd { endpoints, prefix } => open_etcd(endpoints, prefix.as_deref()).await,
    }
}

/// Tries once: like [`open`], but a redb file held by another process is
/// reported as `Ok(None)` instead of being waited for.
pub async fn try_open(url: &StoreUrl, access: Access) -> Result<Option<EventStore>> {
    #[cfg(feature = "redb")]
    if let StoreUrl::Redb { path, cache } = url {
        check_exists(path, access)?;
        return match open_redb_once(path, *cache, access).await {
            Ok(s) => Ok(Some(s)),
            Err(eskv::Error::StoreLocked { .. }) => Ok(None),
            Err(e) => Err(redb_context(e, path)),
        };
    }
    open(url, access).await.map(Some)
}

/// The size in bytes of the file behind `url`, for file-based stores.
pub fn file_size(url: &StoreUrl) -> Option<u64> {
    match url {
        StoreUrl::Redb { path, .. } => std::fs::metadata(path).ok().map(|m| m.len()),
        _ => None,
    }
}

#[cfg_attr(not(feature = "redb"), allow(dead_code))]
fn check_exists(path: &std::path::Path, access: Access) -> Result<()> {
    if access != Access::Existing {
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
#[cfg(feature = "redb")]
fn redb_context(e: eskv::Error, path: &std::path::Path) -> anyhow::Error {
    let named = e.to_string().contains(&path.display().to_string());
    let e = anyhow::Error::new(e);
    if named {
        e
    } else {
        e.context(format!("cannot open '{}'", path.display()))
    }
}

#[cfg(feature = "redb")]
async fn open_redb_once(
    path: &std::path::Path,
    cache: Option<usize>,
    access: Access,
) -> eskv::Result<EventStore> {
    let mut options = eskv::redb::RedbOptions::default()
        // This tool waits for a held file itself (--lock-timeout).
        .lock_wait(Duration::ZERO)
        .read_only(matches!(access, Access::Existing));
    if let Some(c) = cache {
        options = options.cache_size(c);
    }
    let kv = eskv::redb::RedbStore::open_with(path, options).await?;
    EventStore::open_with(Arc::new(kv), store_options()).await
}

#[cfg(feature = "redb")]
async fn open_redb(
    path: &std::path::Path,
    cache: Option<usize>,
    access: Access,
) -> Result<EventStore> {
    check_exists(path, access)?;
    let start = std::time::Instant::now();
    let wait = lock_wait();
    let mut pause = Duration::from_millis(5);
    loop {
        match open_redb_once(path, cache, access).await {
            Ok(s) => return Ok(s),
            Err(eskv::Error::StoreLocked { .. }) if start.elapsed() < wait => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e @ eskv::Error::StoreLocked { .. }) => {
                bail!(
                    "{e} (waited {}s; a redb file has one writer or any number of readers at a time; --lock-timeout SECONDS waits longer)",
                    wait.as_secs_f64()
                )
            }
            Err(e) => return Err(redb_context(e, path)),
        }
    }
}

#[cfg(not(feature = "redb"))]
async fn open_redb(_: &std::path::Path, _: Option<usize>, _: Access) -> Result<EventStore> {
    Err(not_built("redb"))
}

#[cfg(feature = "tikv")]
async fn open_tikv(endpoints: &[String], prefix: Option<&str>) -> Result<EventStore> {
    let mut opts = eskv::tikv::TikvOptions::new(endpoints.iter().cloned());
    if let Some(p) = prefix {
        opts = opts.key_prefix(p);
    }
    let kv = eskv::tikv::TikvStore::connect(opts)
        .await
        .with_context(|| format!("cannot connect to TiKV at {}", endpoints.join(",")))?;
    Ok(EventStore::open_with(Arc::new(kv), store_options()).await?)
}

#[cfg(not(feature = "tikv"))]
async fn open_tikv(_: &[String], _: Option<&str>) -> Result<EventStore> {
    Err(not_built("tikv"))
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: &[String], prefix: Option<&str>) -> Result<EventStore> {
    let mut opts = eskv::etcd::EtcdOptions::new(endpoints.iter().cloned());
    if let Some(p) = prefix {
        opts = opts.key_prefix(p);
    }
    let kv = eskv::etcd::EtcdStore::connect(opts)
        .await
        .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
    Ok(EventStore::open_with(Arc::new(kv), store_options()).await?)
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_: &[String], _: Option<&str>) -> Result<EventStore> {
    Err(not_built("etcd"))
}

#[allow(dead_code)]
fn not_built(backend: &str) -> anyhow::Error {
    anyhow!(
        "this eskv was built without the {backend} backend; rebuild it with `--features {backend}`"
    )
}
