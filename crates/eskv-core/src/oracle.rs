//! Commit-sequence oracle: optimistic conflict detection for backends whose
//! engine gives snapshots but no conflict checks (in-memory, redb).
//!
//! Invariants:
//! - `seq` counts published commits; a snapshot taken at `seq = s` sees every
//!   commit numbered `<= s` (the caller installs data before publishing).
//! - `last_write[k]` is the number of the last commit that wrote `k`, kept
//!   while some live snapshot could still conflict on it. A transaction with
//!   snapshot `s` conflicts on `k` iff `last_write[k] > s`.
//! - A commit published while the only live snapshots are its own
//!   committers' records nothing: every later snapshot sees its writes, so
//!   no one can conflict on them.
//! - Checks and publishes are serialized by the caller (one committer at a
//!   time); snapshots may be taken concurrently.

pub mod reopen;
pub mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    seq: u64,
    last_write: HashMap<Vec<u8>, u64>,
    /// Live snapshots: sequence number to count.
    active: BTreeMap<u64, usize>,
    prune_at: usize,
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct CommitOracle {
    state: Mutex<State>,
}

/// A registered snapshot. Dropping it lets the oracle forget old writes.
#[derive(Debug)]
pub struct Snapshot {
    seq: u64,
    oracle: Arc<CommitOracle>,
}

impl Snapshot {
    /// The commit number this snapshot sees up to.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut st = self.oracle.lock();
        if let Some(n) = st.active.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                st.active.remove(&self.seq);
            }
        }
    }
}

const MIN_PRUNE: usize = 4096;

impl CommitOracle {
    /// A fresh oracle.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (every
        // mutation is a single insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a snapshot at the current commit number, calling
    /// `read_view` under the same lock so the view and the number agree.
    pub fn snapshot<R>(self: &Arc<Self>, read_view: impl FnOnce() -> R) -> (Snapshot, R) {
        let mut st = self.lock();
        let seq = st.seq;
        *st.active.entry(seq).or_insert(0) += 1;
        let view = read_view();
        drop(st);
        (
            Snapshot {
                seq,
                oracle: self.clone(),
            },
            view,
        )
    }

    /// The first key in `keys` written after `snapshot_seq`, either by a
    /// published commit or by `pending` (keys of commits admitted earlier in
    /// the same batch, which will be published with a newer number).
    pub fn first_conflict<'a>(
        &self,
        snapshot_seq: u64,
        keys: impl IntoIterator<Item = &'a [u8]>,
        pending: &HashSet<&[u8]>,
    ) -> Option<Vec<u8>> {
        let st = self.lock();
        keys.into_iter()
            .find(|k| {
                pending.contains(*k) || st.last_write.get(*k).is_some_and(|&w| w > snapshot_seq)
            })
            .map(|k| k.to_vec())
    }

    /// Publishes one commit that wrote `keys`: runs `install` (which makes
    /// the data visible to new snapshots) and bumps the commit number under
    /// one lock. Returns the new commit number.
    ///
    /// `committers` is how many live snapshots belong to the transactions
    /// being published (held by the caller until this returns). When no
    /// other snapshot is live, the keys are not remembered, and earlier
    /// writes are forgotten too: a snapshot taken from now on sees them all.
    pub fn publish<I: IntoIterator<Item = Vec<u8>>>(
        &self,
        keys: I,
        committers: usize,
        install: impl FnOnce(),
    ) -> u64 {
        let mut st = self.lock();
        install();
        st.seq += 1;
        let seq = st.seq;
        let live: usize = st.active.values().sum();
        if live <= committers {
            if !st.last_write.is_empty() {
                st.last_write.clear();
            }
            return seq;
        }
        for k in keys {
            st.last_write.insert(k, seq);
        }
        if st.last_write.len() >= st.prune_at.max(MIN_PRUNE) {
            // Writes at or below the oldest live snapshot can no longer
            // conflict with anyone: every live or future snapshot sees them.
            let horizon = st.active.keys().next().copied().unwrap_or(seq);
            st.last_write.retain(|_, w| *w > horizon);
            st.prune_at = st.last_write.len() * 2;
        }
        seq
    }

    /// Number of remembered writes (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.lock().last_write.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_only_after_snapshot() {
        let o = CommitOracle::new();
        o.publish([b"a".to_vec()], 0, || ());
        let (s, ()) = o.snapshot(|| ());
        let none = HashSet::new();
        assert_eq!(o.first_conflict(s.seq(), [&b"a"[..]], &none), None);
        o.publish([b"a".to_vec()], 0, || ());
        assert_eq!(
            o.first_conflict(s.seq(), [&b"a"[..]], &none),
            Some(b"a".to_vec())
        );
        assert_eq!(o.first_conflict(s.seq(), [&b"b"[..]], &none), None);
    }

    #[test]
    fn prunes_when_no_snapshot_needs_history() {
        let o = CommitOracle::new();
        let (reader, ()) = o.snapshot(|| ());
        for i in 0..(MIN_PRUNE as u32 * 3) {
            // The reader's snapshot is older than every write: none is
            // forgotten while it lives.
            o.publish([i.to_be_bytes().to_vec()], 0, || ());
        }
        assert_eq!(o.tracked_keys(), MIN_PRUNE * 3);
        drop(reader);
        let (_next, ()) = o.snapshot(|| ());
        // Past the next prune point, only writes after `_next` are kept.
        for i in 0..(MIN_PRUNE as u32 * 2) {
            o.publish([(u32::MAX - i).to_be_bytes().to_vec()], 0, || ());
        }
        assert!(o.tracked_keys() <= MIN_PRUNE * 2, "{}", o.tracked_keys());
    }

    #[test]
    fn a_commit_no_other_snapshot_predates_is_not_remembered() {
        let o = CommitOracle::new();
        let none = HashSet::new();
        let (own, ()) = o.snapshot(|| ());
        o.publish([b"a".to_vec()], 1, || ());
        assert_eq!(o.tracked_keys(), 0);
        drop(own);
        // A snapshot from before the next commit still conflicts on it.
        let (reader, ()) = o.snapshot(|| ());
        let (own, ()) = o.snapshot(|| ());
        o.publish([b"b".to_vec()], 1, || ());
        drop(own);
        assert_eq!(o.tracked_keys(), 1);
        assert_eq!(
            o.first_conflict(reader.seq(), [&b"b"[..]], &none),
            Some(b"b".to_vec())
        );
        assert_eq!(o.first_conflict(reader.seq(), [&b"a"[..]], &none), None);
        // Once the reader is gone, the next lone commit forgets it all.
        drop(reader);
        let (own, ()) = o.snapshot(|| ());
        o.publish([b"c".to_vec()], 1, || ());
        drop(own);
        assert_eq!(o.tracked_keys(), 0);
    }
}
