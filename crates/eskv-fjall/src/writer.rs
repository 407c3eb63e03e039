//! The engine side of the writer thread: a group of admitted commits
//! (see [`eskv_core::oracle::writer`]) as one fjall batch (one journal
//! append, one sync).

use crate::error::BACKEND;
use crate::options::Durability;
use crate::store::{Db, Shared};
use eskv_core::oracle::writer::{CommitRequest, WriteBatch};
use eskv_core::KvResult;
use std::sync::Arc;

/// Writes groups of commits into the store's keyspace.
pub(crate) struct FjallBatch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) durability: Durability,
}

impl WriteBatch for FjallBatch {
    const BACKEND: &'static str = BACKEND;

    fn write(&self, admitted: &[CommitRequest]) -> KvResult<()> {
        self.shared
            .db()
            .and_then(|db| self.shared.call(|| self.write_db(&db, admitted)))
    }
}

impl FjallBatch {
    /// Writes the admitted requests as one batch. fjall makes a batch
    /// visible to snapshots only after its journal write (and, with
    /// `SyncData`, its sync) succeeded, so no reader sees a commit that a
    /// crash could still take back.
    fn write_db(&self, db: &Db, admitted: &[CommitRequest]) -> KvResult<()> {
        let mode = match self.durability {
            Durability::Immediate => fjall::PersistMode::SyncData,
            Durability::None => fjall::PersistMode::Buffer,
        };
        let mut b = db.db.batch().durability(Some(mode));
        for req in admitted {
            for (k, v) in &req.writes {
                match v {
                    Some(v) => b.insert(&db.data, k.as_slice(), v.as_slice()),
                    None => b.remove(&db.data, k.as_slice()),
                }
            }
        }
        b.commit().map_err(|e| self.shared.map_commit_err(e))
    }
}
