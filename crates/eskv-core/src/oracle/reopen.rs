//! The open engine of an oracle-backed embedded backend (redb, fjall), and
//! reopening it after an I/O failure stopped it.
//!
//! Both engines refuse every write after an I/O failure, and a failed
//! commit's outcome may be unknown: its batch can still be durable, and
//! become visible when the engine is opened again. The writer publishes
//! such a group's keys to the [`CommitOracle`] anyway (see
//! [`writer`](super::writer)), so the published number then counts a
//! commit that only the reopened engine shows.
//!
//! Invariants:
//! - A snapshot is registered under the oracle's lock only while no
//!   failure is recorded ([`ReopenSlot::snapshot`]). The writer records the
//!   failure before it publishes, so a snapshot numbered after a failed
//!   group is never a view of the stopped engine, which lacks that group.
//! - The engine is reopened only when nothing else holds it (its views
//!   hold a clone): the new engine may reuse what an old view reads, and
//!   both engines lock their files.
//! - The failure is cleared only by a successful reopen, under the slot's
//!   write lock.

use super::{CommitOracle, Snapshot};
use crate::kv::{KvError, KvResult};
use std::sync::{Arc, Mutex, RwLock};

/// How many times [`ReopenSlot::snapshot`] reopens before it gives up.
const SNAPSHOT_ATTEMPTS: usize = 3;

/// The open engine `D` of a store, and the first I/O failure since it was
/// opened. See the [module docs](self).
pub struct ReopenSlot<D> {
    backend: &'static str,
    /// Names the store in messages: its path.
    name: String,
    /// True when a stopped engine can be opened again (a temporary store,
    /// removed when closed, cannot).
    reopens: bool,
    /// The open engine; `None` while a reopen has not succeeded yet.
    engine: RwLock<Option<Arc<D>>>,
    /// The first I/O failure since the engine was last opened.
    failure: Mutex<Option<KvError>>,
}

impl<D> ReopenSlot<D> {
    /// An empty slot: the first [`engine`](Self::engine) call opens the
    /// engine. `name` names the store in messages; `reopens` is false when
    /// a stopped engine cannot be opened again.
    pub fn new(backend: &'static str, name: String, reopens: bool) -> Self {
        Self {
            backend,
            name,
            reopens,
            engine: RwLock::new(None),
            failure: Mutex::new(None),
        }
    }

    /// The first I/O failure since the last open, if any.
    pub fn failure(&self) -> Option<KvError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .cloned()
    }

    /// Records `e` as the failure that stopped the engine, unless one is
    /// recorded already. The next operation reopens the engine.
    pub fn record_failure(&self, e: &KvError) {
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::warn!(backend = self.backend, error = %e, "I/O failure; the store reopens on the next operation");
            *first = Some(e.clone());
        }
    }

    /// The open engine, reopened with `open` first if a failure stopped it.
    pub fn engine(&self, open: impl FnOnce() -> KvResult<D>) -> KvResult<Arc<D>> {
        if self.failure().is_none() {
            if let Some(engine) = &*self.engine.read().unwrap_or_else(|p| p.into_inner()) {
                return Ok(engine.clone());
            }
        }
        self.reopen(open)
    }

    /// Registers a snapshot with `oracle` and takes `view` of the engine
    /// under the oracle's lock, so the view shows exactly the commits the
    /// snapshot's number counts. A failure recorded meanwhile makes it
    /// drop that engine and reopen it first.
    pub fn snapshot<R>(
        &self,
        oracle: &Arc<CommitOracle>,
        open: impl FnMut() -> KvResult<D>,
        view: impl FnMut(&D) -> R,
    ) -> KvResult<(Snapshot, Arc<D>, R)> {
        self.snapshot_after(oracle, open, view, || ())
    }

    /// [`snapshot`](Self::snapshot), calling `between` after the engine was
    /// taken and before the snapshot is registered (for tests of that
    /// window).
    fn snapshot_after<R>(
        &self,
        oracle: &Arc<CommitOracle>,
        mut open: impl FnMut() -> KvResult<D>,
        mut view: impl FnMut(&D) -> R,
        mut between: impl FnMut(),
    ) -> KvResult<(Snapshot, Arc<D>, R)> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let engine = self.engine(&mut open)?;
            between();
            // The writer records a failure before it publishes: checked
            // under the oracle's lock, no failure means the engine shows
            // every commit up to the snapshot's number.
            let (snapshot, taken) =
                oracle.snapshot(|| self.failure().is_none().then(|| view(&engine)));
            if let Some(taken) = taken {
                return Ok((snapshot, engine, taken));
            }
        }
        Err(self.stopped("failed again each time it was reopened"))
    }

    /// Drops the stopped engine and opens it again with `open`.
    fn reopen(&self, open: impl FnOnce() -> KvResult<D>) -> KvResult<Arc<D>> {
        let mut slot = self.engine.write().unwrap_or_else(|p| p.into_inner());
        let failure = self.failure();
        if let (None, Some(engine)) = (&failure, &*slot) {
            return Ok(engine.clone()); // another caller reopened it meanwhile
        }
        if let Some(engine) = &*slot {
            if !self.reopens {
                return Err(self.stopped("cannot be reopened: it is temporary"));
            }
            if Arc::strong_count(engine) > 1 {
                return Err(self.stopped(
                    "is being reopened, but transactions still use it; retry once they end",
                ));
            }
        }
        slot.take();
        let engine = Arc::new(open()?);
        *slot = Some(engine.clone());
        if failure.is_some() {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(backend = self.backend, store = %self.name, "store reopened after an I/O failure");
        }
        Ok(engine)
    }

    /// The retryable error of a stopped engine that could not be reopened.
    fn stopped(&self, why: &str) -> KvError {
        let cause = self
            .failure()
            .map_or_else(String::new, |e| format!(" ({e})"));
        KvError::unavailable(
            self.backend,
            format!("{} stopped after an I/O error{cause} and {why}", self.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// An engine that knows which open it came from.
    struct Engine(u32);

    fn slot() -> (ReopenSlot<Engine>, AtomicU32) {
        let (slot, opens) = (
            ReopenSlot::new("test", "/tmp/store".into(), true),
            AtomicU32::new(0),
        );
        assert_eq!(slot.engine(open(&opens)).unwrap().0, 1, "the first open");
        (slot, opens)
    }

    fn open(opens: &AtomicU32) -> impl FnMut() -> KvResult<Engine> + '_ {
        || Ok(Engine(opens.fetch_add(1, Ordering::SeqCst) + 1))
    }

    fn failure() -> KvError {
        KvError::backend("test", "I/O error: disk gone")
    }

    #[test]
    fn a_failure_reopens_the_engine_once_no_one_holds_it() {
        let (slot, opens) = slot();
        let held = slot.engine(open(&opens)).unwrap();
        slot.record_failure(&failure());
        let err = slot.engine(open(&opens)).err().expect("still held");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert_eq!(held.0, 1);
        drop(held);
        assert_eq!(slot.engine(open(&opens)).unwrap().0, 2);
        assert!(slot.failure().is_none());
        // Open again without a failure: the same engine.
        assert_eq!(slot.engine(open(&opens)).unwrap().0, 2);
    }

    #[test]
    fn a_temporary_store_is_not_reopened() {
        let opens = AtomicU32::new(0);
        let slot = ReopenSlot::new("test", "/tmp/t".into(), false);
        slot.engine(open(&opens)).unwrap();
        slot.record_failure(&failure());
        let err = slot.engine(open(&opens)).err().expect("temporary");
        assert!(err.to_string().contains("temporary"), "{err}");
    }

    /// The window between taking the engine and registering the snapshot:
    /// a group fails there with its outcome unknown and publishes its key.
    /// A snapshot numbered after that commit must not be a view of the
    /// stopped engine, which lacks the commit: a write on it would commit
    /// over the group's key without a conflict once the engine reopens.
    #[test]
    fn a_snapshot_after_a_failed_group_is_not_a_view_of_the_stopped_engine() {
        let (slot, opens) = slot();
        let oracle = CommitOracle::new();
        let mut once = true;
        let (snapshot, engine, seen) = slot
            .snapshot_after(
                &oracle,
                open(&opens),
                |e| e.0,
                || {
                    if std::mem::take(&mut once) {
                        slot.record_failure(&failure());
                        oracle.publish([b"k".to_vec()], 1, || ());
                    }
                },
            )
            .unwrap();
        assert_eq!(snapshot.seq(), 1, "registered after the group");
        assert_eq!((engine.0, seen), (2, 2), "the reopened engine");
        assert!(slot.failure().is_none());
        assert_eq!(
            oracle.first_conflict(snapshot.seq(), [&b"k"[..]], &HashSet::new()),
            None
        );
    }

    #[test]
    fn a_snapshot_gives_up_when_every_reopen_fails_again() {
        let (slot, opens) = slot();
        let oracle = CommitOracle::new();
        let err = slot
            .snapshot_after(
                &oracle,
                open(&opens),
                |e| e.0,
                || slot.record_failure(&failure()),
            )
            .err()
            .expect("never without a failure");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert_eq!(oracle.lock().active.len(), 0, "no snapshot left behind");
    }
}
