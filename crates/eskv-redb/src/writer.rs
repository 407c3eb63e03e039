//! The writer thread: checks each commit against the oracle and applies
//! batches of them in one redb write transaction.
use super::*;

pub(crate) struct CommitRequest {
    /// Kept registered until the writer has checked the request, even if
    /// the committing future is cancelled meanwhile: otherwise pruning could
    /// forget a write this request conflicts with.
    pub(crate) snapshot: Snapshot,
    pub(crate) writes: WriteSet,
    pub(crate) validated: Vec<Vec<u8>>,
    pub(crate) reply: oneshot::Sender<KvResult<()>>,
}

pub(crate) fn writer_gone() -> KvError {
    KvError::Unavailable {
        backend: BACKEND,
        message: "the redb writer thread stopped; reopen the store".into(),
    }
}

pub(crate) struct Writer {
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) oracle: Arc<CommitOracle>,
    pub(crate) durability: Durability,
    pub(crate) quick_repair: bool,
    pub(crate) max_batch: usize,
}

impl Writer {
    pub(crate) fn run(self, rx: mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    /// One group commit: admit conflict-free requests in arrival order,
    /// write them in one redb transaction, answer each.
    pub(crate) fn commit_batch(&self, batch: Vec<CommitRequest>) {
        let mut pending: HashSet<Vec<u8>> = HashSet::new();
        let mut admitted = Vec::with_capacity(batch.len());
        for req in batch {
            let keys = req
                .writes
                .keys()
                .map(Vec::as_slice)
                .chain(req.validated.iter().map(Vec::as_slice));
            let conflict = self
                .oracle
                .first_conflict(req.snapshot.seq(), keys, &pending);
            if let Some(k) = conflict {
                let _ = req.reply.send(Err(KvError::conflict(format!(
                    "key {} was changed by a transaction that committed after this one's snapshot",
                    eskv_core::display_key(&k)
                ))));
                continue;
            }
            if req.writes.is_empty() {
                let _ = req.reply.send(Ok(()));
                continue;
            }
            pending.extend(req.writes.keys().cloned());
            admitted.push(req);
        }
        if admitted.is_empty() {
            return;
        }
        tracing::trace!(requests = admitted.len(), "redb group commit");
        let outcome = self
            .shared
            .db()
            .and_then(|db| self.shared.call(|| self.write(&db, &admitted)));
        // Published whatever the outcome: after a failed commit the writes
        // may be on disk (and are, once the file is reopened), so every
        // snapshot taken before must conflict on these keys. For a commit
        // that did not happen this only causes a retry.
        let seq = self.oracle.publish(pending, || ());
        match outcome {
            Ok(()) => {
                self.commits.send_replace(seq);
                for req in admitted {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of the batch was applied, or (a failed redb commit)
                // the outcome is unknown: everyone gets the same answer.
                for req in admitted {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    pub(crate) fn write(&self, db: &Db, admitted: &[CommitRequest]) -> KvResult<()> {
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
