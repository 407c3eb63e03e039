//! Returning a redb file's free pages to the file system.
//!
//! Removing rows (`EventStore::compact`) frees pages inside the file, which
//! redb reuses for later writes; the file itself keeps its high-water
//! mark. [`compact_file`] runs redb's own compaction, which moves pages
//! down and truncates the file. It needs the file to itself, so it runs
//! when no handle (of this or any process) holds it.

use crate::{builder, Db, RedbOptions, Shared, BACKEND};
use eskv_core::oracle::reopen::ReopenSlot;
use eskv_core::{Error, Result};
use std::path::Path;

/// What [`compact_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileCompaction {
    /// File size before, in bytes.
    pub bytes_before: u64,
    /// File size after, in bytes.
    pub bytes_after: u64,
}

impl FileCompaction {
    /// Bytes returned to the file system.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// Compacts the redb file at `path` in place (redb's `Database::compact`,
/// until it finds nothing more to move), returning free pages to the file
/// system. Fails with [`Error::StoreLocked`] while another handle holds the
/// file: close every `RedbStore` on it first (the CLI's `eskv compact` does
/// so after removing rows).
pub async fn compact_file(path: impl AsRef<Path>) -> Result<FileCompaction> {
    let path = path.as_ref().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| Error::backend(BACKEND, format!("cannot read {}: {e}", p.display())))
        };
        let bytes_before = size(&path)?;
        let p = path.clone();
        let shared = Shared {
            slot: ReopenSlot::new(BACKEND, path.display().to_string(), false),
            path: path.clone(),
            opener: Box::new(move |s: &Shared| {
                builder(&RedbOptions::default())
                    .open(&p)
                    .map(Db::Write)
                    .map_err(|e| s.open_error(e))
            }),
            read_only: false,
        };
        let db = shared.reopen()?;
        let Db::Write(mut db) = db else {
            return Err(Error::backend(BACKEND, "opened read-only"));
        };
        shared.call(|| {
            while db.compact().map_err(|e| shared.map_err(e))? {}
            Ok(())
        })?;
        drop(db);
        Ok(FileCompaction {
            bytes_before,
            bytes_after: size(&path)?,
        })
    })
    .await
    .map_err(|e| Error::backend(BACKEND, e))?
}
