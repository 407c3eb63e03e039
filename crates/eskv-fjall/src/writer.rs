//! The writer thread: group commit through the oracle into one fjall batch.

use crate::options::Durability;
use crate::store::{Db, Shared};
use eskv_core::kv::WriteSet;
use eskv_core::oracle::{CommitOracle, Snapshot};
use eskv_core::{KvError, KvResult};
use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

pub(crate) struct CommitRequest {
    /// Kept registered until the writer has checked the request, even if
    /// the committing future is cancelled meanwhile: otherwise pruning could
    /// forget a write this request conflicts with.
    pub(crate) snapshot: Snapshot,
    pub(crate) writes: WriteSet,
    pub(crate) validated: Vec<Vec<u8>>,
    pub(crate) reply: oneshot::Sender<KvResult<()>>,
}

pub(crate) struct Writer {
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) oracle: Arc<CommitOracle>,
    pub(crate) durability: Durability,
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
    /// write them as one fjall batch (one journal append, one sync),
    /// answer each.
    fn commit_batch(&self, batch: Vec<CommitRequest>) {
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
        tracing::trace!(requests = admitted.len(), "fjall group commit");
        let outcome = self
            .shared
            .db()
            .and_then(|db| self.shared.call(|| self.write(&db, &admitted)));
        // Published whatever the outcome: after a failed commit the batch
        // may be in the journal (and is applied once the store reopens), so
        // every snapshot taken before must conflict on these keys. For a
        // commit that did not happen this only causes a retry.
        let seq = self.oracle.publish(pending, || ());
        match outcome {
            Ok(()) => {
                self.commits.send_replace(seq);
                for req in admitted {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                for req in admitted {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes the admitted requests as one batch. fjall makes a batch
    /// visible to snapshots only after its journal write (and, with
    /// `SyncData`, its sync) succeeded, so no reader sees a commit that a
    /// crash could still take back.
    fn write(&self, db: &Db, admitted: &[CommitRequest]) -> KvResult<()> {
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
