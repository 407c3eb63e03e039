//! The writer of an oracle-backed embedded backend (redb, fjall): it
//! takes commit requests in arrival order, checks each against the
//! [`CommitOracle`], and writes the conflict-free ones of a group in one
//! engine transaction ([`WriteBatch::write`]), then answers each.
//!
//! Groups are written by the writer thread, or, for a lone commit whose
//! caller may block its thread (see [`submit`]), by the caller itself:
//! a single writer then pays no hand-off to the thread and back.
//!
//! Invariants:
//! - One group at a time is checked and written (the engine lock), by the
//!   thread or in place; a commit runs in place only while no request
//!   waits for the thread, so it never overtakes one.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
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

impl<E: WriteBatch + Sync> GroupWriter<E> {
    /// Starts the writer on its own thread named `name`; commits go
    /// through the returned [`CommitSender`]. The thread ends when every
    /// clone of the sender is dropped.
    pub fn spawn(self, name: &str) -> KvResult<(CommitSender, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let group = Arc::new(Group {
            writer: self,
            engine_lock: Mutex::new(()),
            queued: AtomicUsize::new(0),
        });
        let thread_group = group.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || thread_group.run(rx))
            .map_err(|e| KvError::backend(E::BACKEND, e))?;
        Ok((CommitSender { tx, group }, thread))
    }
}

impl<E: WriteBatch> GroupWriter<E> {
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

/// A writer's request queue and the lock that orders its group commits.
struct Group<E> {
    writer: GroupWriter<E>,
    /// Held while one group is checked and written, by the writer thread
    /// or by a caller committing in place: groups never interleave.
    engine_lock: Mutex<()>,
    /// Requests sent to the writer thread and not yet taken into a group.
    queued: AtomicUsize,
}

impl<E: WriteBatch> Group<E> {
    fn lock_engine(&self) -> MutexGuard<'_, ()> {
        // The guarded unit has no state of its own to leave inconsistent.
        self.engine_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes groups of up to `max_batch` requests, each group what had
    /// arrived when the previous one finished, until the senders are gone.
    fn run(&self, rx: mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.writer.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let _engine = self.lock_engine();
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            self.writer.commit_batch(batch);
        }
    }
}

/// The engine-specific group behind a [`CommitSender`].
trait Commit: Send + Sync {
    /// Commits `req` on this thread if no group is being written and none
    /// is waiting for the writer thread; gives it back otherwise.
    fn commit_in_place(&self, req: CommitRequest) -> Option<CommitRequest>;
    /// Requests sent to the writer thread and not yet taken.
    fn queued(&self) -> &AtomicUsize;
}

impl<E: WriteBatch + Sync> Commit for Group<E> {
    fn commit_in_place(&self, req: CommitRequest) -> Option<CommitRequest> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Some(req);
        }
        let Ok(_engine) = self.engine_lock.try_lock() else {
            return Some(req);
        };
        self.writer.commit_batch(vec![req]);
        None
    }

    fn queued(&self) -> &AtomicUsize {
        &self.queued
    }
}

/// Where a store's commits go: to its writer thread, or, when the caller
/// may block its thread and the writer is idle, straight to the engine on
/// the caller's thread (the same check and write, under the same lock,
/// without the two thread hand-offs).
#[derive(Clone)]
pub struct CommitSender {
    tx: mpsc::Sender<CommitRequest>,
    group: Arc<dyn Commit>,
}

impl std::fmt::Debug for CommitSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitSender").finish_non_exhaustive()
    }
}

/// True when blocking this thread for a commit (an fsync) stalls no
/// other task: it runs no task (a multi-threaded runtime's `block_on`, or
/// no runtime at all). A runtime's worker threads, and a current-thread
/// runtime whose `block_on` also drives its spawned tasks, hand the
/// commit to the writer thread instead.
fn may_block_here() -> bool {
    if tokio::task::try_id().is_some() {
        return false;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
        Err(_) => true,
    }
}

/// Commits a transaction through `writer` (`None`: the store has none)
/// and waits for its outcome. A writer that is gone fails the commit with
/// `Unavailable`, before anything was written.
///
/// Cancellation: a commit made in place is done within one poll; one sent
/// to the writer thread is checked and written whether or not its caller
/// still waits.
pub async fn submit(
    writer: Option<&CommitSender>,
    backend: &'static str,
    snapshot: Snapshot,
    writes: WriteSet,
    validated: Vec<Vec<u8>>,
) -> KvResult<()> {
    let gone = || KvError::Unavailable {
        backend,
        message: format!("the {backend} writer thread stopped; reopen the store"),
    };
    let writer = writer.ok_or_else(gone)?;
    let (reply, mut rx) = oneshot::channel();
    let mut req = CommitRequest {
        snapshot,
        writes,
        validated,
        reply,
    };
    if may_block_here() {
        match writer.group.commit_in_place(req) {
            // Answered before `commit_in_place` returned.
            None => return rx.try_recv().map_err(|_| gone())?,
            Some(r) => req = r,
        }
    }
    let queued = writer.group.queued();
    queued.fetch_add(1, Ordering::AcqRel);
    if writer.tx.send(req).is_err() {
        queued.fetch_sub(1, Ordering::AcqRel);
        return Err(gone());
    }
    rx.await.map_err(|_| gone())?
}
