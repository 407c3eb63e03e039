//! The writer thread of an oracle-backed embedded backend (redb, fjall):
//! it takes commit requests in arrival order, checks each against the
//! [`CommitOracle`], and writes the conflict-free ones of a group in one
//! engine transaction ([`WriteBatch::write`]), then answers each.
//!
//! Invariants:
//! - Requests are checked in arrival order; a request that conflicts with
//!   an earlier one of the same group (on any key that one writes) fails
//!   with `Conflict`, so the group is serializable in that order.
//! - The group's keys are published to the oracle whatever the outcome of
//!   the write: after a failed commit the writes may still be durable (and
//!   visible once the store reopens), so every snapshot taken before must
//!   conflict on them. For a commit that did not happen this only causes a
//!   retry.
//! - Every request gets exactly one answer; a failed write gives the whole
//!   group the same error.

use super::{CommitOracle, Snapshot};
use crate::kv::{KvError, KvResult, WriteSet};
use std::collections::HashSet;
use std::sync::{mpsc, Arc};
use tokio::sync::{oneshot, watch};

/// One transaction's commit, sent to the writer thread.
pub struct CommitRequest {
    /// Kept registered until the writer has checked the request, even if
    /// the committing future is cancelled meanwhile: otherwise pruning could
    /// forget a write this request conflicts with.
    pub snapshot: Snapshot,
    /// The transaction's writes (`None` deletes).
    pub writes: WriteSet,
    /// Keys read and validated, which must not have changed since the
    /// snapshot.
    pub validated: Vec<Vec<u8>>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<KvResult<()>>,
}

/// What an engine does with a group of admitted commits: apply all their
/// writes atomically, in order, in one engine transaction.
pub trait WriteBatch: Send + 'static {
    /// The backend's name, for tracing.
    const BACKEND: &'static str;

    /// Writes `admitted` (in order; later writes of a key win). An error
    /// after the engine may have made the writes durable must say so
    /// (`CommitOutcomeUnknown`, or `StorageFull` with `outcome_unknown`).
    fn write(&self, admitted: &[CommitRequest]) -> KvResult<()>;
}

/// The group-commit loop around an engine's [`WriteBatch`].
pub struct GroupWriter<E> {
    /// Announces the sequence number of each successful group.
    pub commits: watch::Sender<u64>,
    /// The store's oracle.
    pub oracle: Arc<CommitOracle>,
    /// Most requests written in one engine transaction.
    pub max_batch: usize,
    /// The engine.
    pub engine: E,
}

impl<E: WriteBatch> GroupWriter<E> {
    /// Starts the writer on its own thread named `name`; commits go to the
    /// returned sender. The thread ends when every sender is dropped.
    pub fn spawn(
        self,
        name: &str,
    ) -> KvResult<(mpsc::Sender<CommitRequest>, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || self.run(rx))
            .map_err(|e| KvError::backend(E::BACKEND, e))?;
        Ok((tx, thread))
    }

    /// Writes groups of up to `max_batch` requests, each group what had
    /// arrived when the previous one finished, until the senders are gone.
    pub fn run(self, rx: mpsc::Receiver<CommitRequest>) {
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
    /// write them in one engine transaction, answer each.
    pub fn commit_batch(&self, batch: Vec<CommitRequest>) {
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
                    crate::display_key(&k)
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
        tracing::trace!(
            backend = E::BACKEND,
            requests = admitted.len(),
            "group commit"
        );
        let outcome = self.engine.write(&admitted);
        // Published whatever the outcome (see the module docs).
        let seq = self.oracle.publish(pending, || ());
        match outcome {
            Ok(()) => {
                self.commits.send_replace(seq);
                for req in admitted {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of the group was applied, or the outcome is
                // unknown: everyone gets the same answer.
                for req in admitted {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Sends a transaction's commit to the writer thread (`None`: the store
/// has none) and waits for its outcome. A writer that is gone fails the
/// commit with `Unavailable`, before anything was written.
pub async fn submit(
    writer: Option<&mpsc::Sender<CommitRequest>>,
    backend: &'static str,
    snapshot: Snapshot,
    writes: WriteSet,
    validated: Vec<Vec<u8>>,
) -> KvResult<()> {
    let gone = || KvError::Unavailable {
        backend,
        message: format!("the {backend} writer thread stopped; reopen the store"),
    };
    let (reply, rx) = oneshot::channel();
    writer
        .ok_or_else(gone)?
        .send(CommitRequest {
            snapshot,
            writes,
            validated,
            reply,
        })
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}
