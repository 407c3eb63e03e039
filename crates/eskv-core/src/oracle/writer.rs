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
        // Each request's early answer (a conflict, or nothing to write),
        // or `None` when admitted; checked against the keys of the
        // requests admitted before it, borrowed from the batch.
        let mut early = Vec::with_capacity(batch.len());
        let mut pending: HashSet<&[u8]> = HashSet::new();
        for req in &batch {
            let keys = req
                .writes
                .keys()
                .map(Vec::as_slice)
                .chain(req.validated.iter().map(Vec::as_slice));
            let conflict = self
                .oracle
                .first_conflict(req.snapshot.seq(), keys, &pending);
            early.push(match conflict {
                Some(k) => Some(Err(KvError::conflict(format!(
                    "key {} was changed by a transaction that committed after this one's snapshot",
                    crate::display_key(&k)
                )))),
                None if req.writes.is_empty() => Some(Ok(())),
                None => {
                    pending.extend(req.writes.keys().map(Vec::as_slice));
                    None
                }
            });
        }
        drop(pending);
        let mut admitted = Vec::with_capacity(batch.len());
        for (req, answer) in batch.into_iter().zip(early) {
            match answer {
                Some(a) => {
                    let _ = req.reply.send(a);
                }
                None => admitted.push(req),
            }
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
        // Published whatever the outcome (see the module docs); the
        // written keys move to the oracle, no longer needed here.
        // Each admitted request still holds its snapshot.
        let committers = admitted.len();
        let written = admitted
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.writes).into_keys());
        let seq = self.oracle.publish(written, committers, || ());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    type Data = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

    /// An engine that applies groups to a map and records the thread
    /// that wrote each group.
    #[derive(Clone, Default)]
    struct MapEngine {
        data: Data,
        threads: Arc<Mutex<Vec<String>>>,
    }

    impl WriteBatch for MapEngine {
        const BACKEND: &'static str = "test";

        fn write(&self, admitted: &[CommitRequest]) -> KvResult<()> {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            self.threads.lock().unwrap().push(name);
            let mut data = self.data.lock().unwrap();
            for req in admitted {
                for (k, v) in &req.writes {
                    match v {
                        Some(v) => data.insert(k.clone(), v.clone()),
                        None => data.remove(k),
                    };
                }
            }
            Ok(())
        }
    }

    struct Store {
        sender: CommitSender,
        oracle: Arc<CommitOracle>,
        engine: MapEngine,
        _thread: std::thread::JoinHandle<()>,
    }

    fn store() -> Arc<Store> {
        let oracle = CommitOracle::new();
        let engine = MapEngine::default();
        let (sender, thread) = GroupWriter {
            commits: watch::channel(0).0,
            oracle: oracle.clone(),
            max_batch: 64,
            engine: engine.clone(),
        }
        .spawn("test-writer")
        .unwrap();
        Arc::new(Store {
            sender,
            oracle,
            engine,
            _thread: thread,
        })
    }

    impl Store {
        /// Reads `key` at a fresh snapshot and commits `f(value)` to it,
        /// validating the read.
        async fn update(&self, key: &[u8], f: impl Fn(u64) -> u64) -> KvResult<()> {
            let (snap, old) = self
                .oracle
                .snapshot(|| self.engine.data.lock().unwrap().get(key).cloned());
            let old = old.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
            let mut writes = WriteSet::new();
            writes.insert(key.to_vec(), Some(f(old).to_be_bytes().to_vec()));
            submit(Some(&self.sender), "test", snap, writes, vec![key.to_vec()]).await
        }

        fn last_writer_thread(&self) -> String {
            self.engine.threads.lock().unwrap().last().cloned().unwrap()
        }

        fn value(&self, key: &[u8]) -> u64 {
            let v = self.engine.data.lock().unwrap().get(key).cloned().unwrap();
            u64::from_be_bytes(v.try_into().unwrap())
        }
    }

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-worker")
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_lone_commit_outside_any_task_is_written_on_the_callers_thread() {
        let s = store();
        let caller = std::thread::current().name().unwrap().to_owned();
        multi_thread().block_on(s.update(b"k", |v| v + 1)).unwrap();
        assert_eq!(s.last_writer_thread(), caller);
        // No runtime at all: the caller may block too.
        futures::executor::block_on(s.update(b"k", |v| v + 1)).unwrap();
        assert_eq!(s.last_writer_thread(), caller);
        assert_eq!(s.value(b"k"), 2);
    }

    #[test]
    fn commits_from_tasks_and_current_thread_runtimes_go_to_the_writer_thread() {
        let s = store();
        let rt = multi_thread();
        let s2 = s.clone();
        rt.block_on(
            async move { tokio::spawn(async move { s2.update(b"k", |v| v + 1).await }).await },
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.last_writer_thread(), "test-writer");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        current.block_on(s.update(b"k", |v| v + 1)).unwrap();
        assert_eq!(s.last_writer_thread(), "test-writer");
        assert_eq!(s.value(b"k"), 2);
    }

    #[test]
    fn a_commit_in_place_conflicts_with_a_write_after_its_snapshot() {
        let s = store();
        let rt = multi_thread();
        let (stale, _) = s.oracle.snapshot(|| ());
        rt.block_on(s.update(b"k", |v| v + 1)).unwrap();
        let mut writes = WriteSet::new();
        writes.insert(b"k".to_vec(), Some(7u64.to_be_bytes().to_vec()));
        let r = rt.block_on(submit(
            Some(&s.sender),
            "test",
            stale,
            writes,
            vec![b"k".to_vec()],
        ));
        assert!(matches!(r, Err(KvError::Conflict { .. })), "{r:?}");
        assert_eq!(s.value(b"k"), 1);
    }

    /// Within one group, a request that writes or validates a key an
    /// earlier admitted request of the group writes fails with a
    /// conflict; the others are written together.
    #[test]
    fn a_group_admits_in_order_and_rejects_later_overlaps() {
        let oracle = CommitOracle::new();
        let engine = MapEngine::default();
        let writer = GroupWriter {
            commits: watch::channel(0).0,
            oracle: oracle.clone(),
            max_batch: 64,
            engine: engine.clone(),
        };
        // A reader whose snapshot predates the group.
        let (reader, ()) = oracle.snapshot(|| ());
        let mut answers = Vec::new();
        let mut request = |write: &[u8], validate: &[u8]| {
            let (snapshot, ()) = oracle.snapshot(|| ());
            let (reply, rx) = oneshot::channel();
            answers.push(rx);
            let mut writes = WriteSet::new();
            writes.insert(write.to_vec(), Some(write.to_vec()));
            CommitRequest {
                snapshot,
                writes,
                validated: vec![validate.to_vec()],
                reply,
            }
        };
        let batch = vec![
            request(b"a", b"a"),
            request(b"a", b"x"),
            request(b"b", b"a"),
            request(b"c", b"c"),
        ];
        writer.commit_batch(batch);
        let outcomes: Vec<bool> = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap().is_ok())
            .collect();
        assert_eq!(outcomes, [true, false, false, true]);
        let data = engine.data.lock().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [b"a", b"c"]);
        assert_eq!(
            *engine.threads.lock().unwrap(),
            [std::thread::current().name().unwrap()]
        );
        // The group's keys were published: the older reader conflicts.
        let none = HashSet::new();
        let seen = reader.seq();
        assert!(oracle.first_conflict(seen, [&b"c"[..]], &none).is_some());
        assert!(oracle.first_conflict(seen, [&b"b"[..]], &none).is_none());
    }

    /// Read-increment-write on one counter from threads committing in
    /// place and tasks committing through the writer thread at once:
    /// every increment that succeeded is counted once, which fails if an
    /// in-place group ever interleaved with another group.
    #[test]
    fn in_place_and_threaded_commits_serialize() {
        const EACH: u64 = 200;
        let s = store();
        let rt = Arc::new(multi_thread());
        let increment = |s: Arc<Store>| async move {
            let mut done = 0;
            while done < EACH {
                match s.update(b"n", |v| v + 1).await {
                    Ok(()) => done += 1,
                    Err(KvError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let tasks: Vec<_> = (0..3).map(|_| rt.spawn(increment(s.clone()))).collect();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (rt, s) = (rt.clone(), s.clone());
                std::thread::spawn(move || rt.block_on(increment(s)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(s.value(b"n"), 6 * EACH);
        let threads = s.engine.threads.lock().unwrap();
        assert!(threads.iter().any(|t| t == "test-writer"));
        assert!(threads.iter().any(|t| t != "test-writer"));
    }
}
