//! The engine side of the writer thread: a group of admitted commits
//! (see [`eskv_core::oracle::writer`]) in one redb write transaction.
use super::*;
use eskv_core::oracle::writer::{CommitRequest, WriteBatch};

/// Writes groups of commits into the store's file.
pub(crate) struct RedbBatch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) durability: Durability,
    pub(crate) quick_repair: bool,
}

impl WriteBatch for RedbBatch {
    const BACKEND: &'static str = BACKEND;

    fn write(&self, admitted: &[CommitRequest]) -> KvResult<()> {
        self.shared
            .db()
            .and_then(|db| self.shared.call(|| self.write_db(&db, admitted)))
    }
}

impl RedbBatch {
    fn write_db(&self, db: &Db, admitted: &[CommitRequest]) -> KvResult<()> {
        let s = &self.shared;
        // Only a writable store has a writer thread.
        let Db::Write(db) = db else {
            return Err(KvError::ReadOnly { backend: BACKEND });
        };
        let mut w = db.begin_write().map_err(|e| s.map_err(e))?;
        if self.durability == Durability::None {
            w.set_durability(redb::Durability::None)
                .map_err(|e| KvError::backend(BACKEND, e))?;
        }
        w.set_quick_repair(self.quick_repair);
        {
            let mut t = w.open_table(DATA).map_err(|e| s.map_err(e))?;
            for req in admitted {
                for (k, v) in &req.writes {
                    match v {
                        Some(v) => {
                            t.insert(k.as_slice(), v.as_slice())
                                .map_err(|e| s.map_err(e))?;
                        }
                        None => {
                            t.remove(k.as_slice()).map_err(|e| s.map_err(e))?;
                        }
                    }
                }
            }
        }
        // Past this point the outcome is unknown: redb may or may not have
        // made the new root durable before failing.
        w.commit().map_err(|e| match s.map_err(e) {
            KvError::StorageFull {
                backend,
                path,
                message,
                ..
            } => KvError::StorageFull {
                backend,
                path,
                message,
                outcome_unknown: true,
            },
            e => KvError::CommitOutcomeUnknown {
                backend: BACKEND,
                message: format!("redb commit failed: {e}"),
            },
        })
    }
}
