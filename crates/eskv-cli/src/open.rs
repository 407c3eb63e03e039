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
    /// For redb this means the file must exist; nothing is created.
    Existing,
    /// Create the store on first use (`append`, `import`, `copy --to`...).
    Create,
}

/// How long to wait for a redb file that another eskv process has open
/// (for example a `tail`, which opens it briefly on every poll).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens the store behind `url`.
pub async fn open(url: &StoreUrl, access: Access) -> Result<EventStore> {
    match url {
        StoreUrl::Memory => Ok(EventStore::open(Arc::new(MemoryStore::new())).await?),
        StoreUrl::Redb { path } => open_redb(path, access).await,
        StoreUrl::Tikv { endpoints, prefix } => open_tikv(endpoints, prefix.as_deref()).await,
        StoreUrl::Etcd { endpoints, prefix } => open_etcd(endpoints, prefix.as_deref()).await,
    }
}

/// Tries once: like [`open`], but a redb file held by another process is
/// reported as `Ok(None)` instead of being waited for.
pub async fn try_open(url: &StoreUrl, access: Access) -> Result<Option<EventStore>> {
    #[cfg(feature = "redb")]
    if let StoreUrl::Redb { path } = url {
        check_exists(path, access)?;
        return match open_redb_once(path).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_locked(&e) => Ok(None),
            Err(e) => Err(redb_context(e, path)),
        };
    }
    open(url, access).await.map(Some)
}

/// The size in bytes of the file behind `url`, for file-based stores.
pub fn file_size(url: &StoreUrl) -> Option<u64> {
    match url {
        StoreUrl::Redb { path } => std::fs::metadata(path).ok().map(|m| m.len()),
        _ => None,
    }
}

#[cfg_attr(not(feature = "redb"), allow(dead_code))]
fn check_exists(path: &std::path::Path, access: Access) -> Result<()> {
    if access == Access::Existing && !path.exists() {
        bail!(
            "no eskv store at '{}': the file does not exist (append or import creates it)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(feature = "redb")]
fn is_locked(e: &eskv::Error) -> bool {
    matches!(e, eskv::Error::Unavailable { message, .. } if message.contains("already open"))
}

#[cfg(feature = "redb")]
fn redb_context(e: eskv::Error, path: &std::path::Path) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("cannot open '{}'", path.display()))
}

#[cfg(feature = "redb")]
async fn open_redb_once(path: &std::path::Path) -> eskv::Result<EventStore> {
    let kv = eskv::redb::RedbStore::open(path).await?;
    EventStore::open(Arc::new(kv)).await
}

#[cfg(feature = "redb")]
async fn open_redb(path: &std::path::Path, access: Access) -> Result<EventStore> {
    check_exists(path, access)?;
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match open_redb_once(path).await {
            Ok(s) => return Ok(s),
            Err(e) if is_locked(&e) && start.elapsed() < LOCK_WAIT => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) if is_locked(&e) => {
                bail!(
                    "cannot open '{}': another process has kept it open for {}s (redb files have one user at a time)",
                    path.display(),
                    LOCK_WAIT.as_secs()
                )
            }
            Err(e) => return Err(redb_context(e, path)),
        }
    }
}

#[cfg(not(feature = "redb"))]
async fn open_redb(_: &std::path::Path, _: Access) -> Result<EventStore> {
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
    Ok(EventStore::open(Arc::new(kv)).await?)
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
    Ok(EventStore::open(Arc::new(kv)).await?)
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
