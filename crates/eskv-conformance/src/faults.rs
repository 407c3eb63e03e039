//! A fault-injecting [`KvStore`] wrapper, seeded and reproducible.
//!
//! Every commit that carries writes draws one number from a tiny xorshift
//! generator and, at the configured rates, fails in one of these ways:
//!
//! | kind              | applied? | error returned                     |
//! |-------------------|----------|------------------------------------|
//! | `unavailable`     | no       | [`KvError::Unavailable`]             |
//! | `conflict`        | no       | [`KvError::Conflict`]                |
//! | `timeout`         | no       | [`KvError::Unavailable`] (timed out) |
//! | `ambiguous`       | **yes**  | [`KvError::CommitOutcomeUnknown`]    |
//! | `lost`            | no       | [`KvError::CommitOutcomeUnknown`]    |
//!
//! `ambiguous` is the failure a networked backend really has: the commit
//! succeeded and the answer was lost. `lost` is its twin (the request was
//! lost before it was applied): a caller cannot tell the two apart, which
//! is the point. Transactions may also fail to begin
//! ([`FaultConfig::begin_unavailable`]).
//!
//! The same seed gives the same sequence of decisions; with concurrent
//! commits, which commit gets which decision depends on their order.
//! [`FaultConfig::cover_all_first`] makes the first commits go through every
//! kind once, so a short run is guaranteed to exercise each. A
//! [`Schedule`] replaces the draws with a fixed pattern, such as "every
//! second acknowledgement is lost" ([`FaultConfig::lost_acks`]).
//!
//! The wrapper is transparent otherwise: every method of [`KvStore`] and
//! [`KvTransaction`] is forwarded to the wrapped store, including the ones
//! with default bodies (`read_many`, `commit_watch`), so a backend runs its
//! own batched reads and commit notifications under faults. The
//! `clippy::missing_trait_methods` lint on the impls makes a method added
//! to the traits later a compile error here until it is forwarded.

use async_trait::async_trait;
use eskv_core::{
    Capabilities, KeyRange, KvError, KvPair, KvResult, KvStore, KvTransaction, ReadMany,
    ScanOptions,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BACKEND: &str = "faulty";

/// What to inject, per commit with writes. Rates are probabilities in
/// `[0, 1]`; their sum must not exceed 1.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Generator seed.
    pub seed: u64,
    /// Fail before applying, as [`KvError::Unavailable`].
    pub unavailable: f64,
    /// Fail before applying, as [`KvError::Conflict`].
    pub conflict: f64,
    /// Wait [`timeout_delay`](Self::timeout_delay), then fail before
    /// applying, as [`KvError::Unavailable`].
    pub timeout: f64,
    /// Apply, then report [`KvError::CommitOutcomeUnknown`].
    pub ambiguous: f64,
    /// Do not apply, and report [`KvError::CommitOutcomeUnknown`].
    pub lost: f64,
    /// Fail [`KvStore::begin`] with [`KvError::Unavailable`] (also hits reads).
    pub begin_unavailable: f64,
    /// How long a simulated timeout waits.
    pub timeout_delay: Duration,
    /// Force the first five commits with writes through every commit
    /// fault kind, in table order.
    pub cover_all_first: bool,
    /// A fixed pattern of faults, decided before the drawn rates.
    pub schedule: Option<Schedule>,
}

/// A deterministic fault pattern: of the commits with writes, numbered
/// from 0 in the order they reach the wrapper, commit `n` gets `kind` when
/// `n % every == every - 1`, for the first `times` such commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The fault injected.
    pub kind: FaultKind,
    /// One commit in this many gets it (at least 1).
    pub every: u64,
    /// How many commits get it in all.
    pub times: u64,
}

impl Schedule {
    /// The fault for commit number `n`, if the pattern picks it.
    pub fn pick(&self, n: u64) -> Option<FaultKind> {
        let every = self.every.max(1);
        (n % every == every - 1 && n / every < self.times).then_some(self.kind)
    }
}

impl FaultConfig {
    /// No faults, seed `seed`.
    pub fn none(seed: u64) -> Self {
        FaultConfig {
            seed,
            unavailable: 0.0,
            conflict: 0.0,
            timeout: 0.0,
            ambiguous: 0.0,
            lost: 0.0,
            begin_unavailable: 0.0,
            timeout_delay: Duration::from_millis(2),
            cover_all_first: false,
            schedule: None,
        }
    }

    /// Applies every commit but loses the acknowledgement of every second
    /// commit with writes (reported as [`KvError::CommitOutcomeUnknown`]), at
    /// most `times` times; nothing else. The failure a networked backend
    /// really has, made deterministic.
    pub fn lost_acks(times: u64) -> Self {
        FaultConfig {
            schedule: Some(Schedule {
                kind: FaultKind::Ambiguous,
                every: 2,
                times,
            }),
            ..Self::none(1)
        }
    }

    /// Every commit fault kind at `rate` each (so `5 * rate` of commits
    /// fail), every kind covered first; no `begin` faults.
    pub fn uniform(seed: u64, rate: f64) -> Self {
        FaultConfig {
            unavailable: rate,
            conflict: rate,
            timeout: rate,
            ambiguous: rate,
            lost: rate,
            cover_all_first: true,
            ..Self::none(seed)
        }
    }

    /// Sets the `begin` failure rate.
    pub fn begin_unavailable(mut self, rate: f64) -> Self {
        self.begin_unavailable = rate;
        self
    }
}

/// The kinds of injected commit faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Not applied; `Unavailable`.
    Unavailable,
    /// Not applied; `Conflict`.
    Conflict,
    /// Not applied after a delay; `Unavailable`.
    Timeout,
    /// Applied; `CommitOutcomeUnknown`.
    Ambiguous,
    /// Not applied; `CommitOutcomeUnknown`.
    Lost,
}

const KINDS: [FaultKind; 5] = [
    FaultKind::Unavailable,
    FaultKind::Conflict,
    FaultKind::Timeout,
    FaultKind::Ambiguous,
    FaultKind::Lost,
];

/// How many faults of each kind were injected, and how many commits passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Commits with writes that reached the wrapper.
    pub commits: u64,
    /// Commits that went through untouched.
    pub clean: u64,
    /// `Unavailable` before applying.
    pub unavailable: u64,
    /// `Conflict` before applying.
    pub conflict: u64,
    /// Timeouts before applying.
    pub timeout: u64,
    /// Applied, reported unknown.
    pub ambiguous: u64,
    /// Not applied, reported unknown.
    pub lost: u64,
    /// Failed `begin`s.
    pub begin_unavailable: u64,
}

impl FaultCounts {
    /// All injected faults.
    pub fn total(&self) -> u64 {
        self.unavailable
            + self.conflict
            + self.timeout
            + self.ambiguous
            + self.lost
            + self.begin_unavailable
    }

    /// True when every commit fault kind was injected at least once.
    pub fn covers_every_kind(&self) -> bool {
        [
            self.unavailable,
            self.conflict,
            self.timeout,
            self.ambiguous,
            self.lost,
        ]
        .iter()
        .all(|&n| n > 0)
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} commits: {} clean, {} unavailable, {} conflict, {} timeout, {} ambiguous (applied, reported unknown), {} lost (not applied, reported unknown); {} failed begins",
            self.commits,
            self.clean,
            self.unavailable,
            self.conflict,
            self.timeout,
            self.ambiguous,
            self.lost,
            self.begin_unavailable
        )
    }
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    clean: AtomicU64,
    unavailable: AtomicU64,
    conflict: AtomicU64,
    timeout: AtomicU64,
    ambiguous: AtomicU64,
    lost: AtomicU64,
    begin_unavailable: AtomicU64,
}

struct Shared {
    inner: Arc<dyn KvStore>,
    config: FaultConfig,
    rng: Mutex<u64>,
    counters: Counters,
}

impl Shared {
    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64 {
        let mut s = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *s = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn decide(&self) -> Option<FaultKind> {
        let n = self.counters.commits.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = &self.config.schedule {
            if let Some(k) = s.pick(n) {
                return Some(k);
            }
        }
        if self.config.cover_all_first {
            if let Some(&k) = KINDS.get(n as usize) {
                return Some(k);
            }
        }
        let c = &self.config;
        let mut x = self.draw();
        for (kind, rate) in [
            (FaultKind::Unavailable, c.unavailable),
            (FaultKind::Conflict, c.conflict),
            (FaultKind::Timeout, c.timeout),
            (FaultKind::Ambiguous, c.ambiguous),
            (FaultKind::Lost, c.lost),
        ] {
            if x < rate {
                return Some(kind);
            }
            x -= rate;
        }
        None
    }
}

/// The wrapper. Cheap to clone; clones share the generator and counts.
#[derive(Clone)]
pub struct FaultyStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("config", &self.shared.config)
            .field("counts", &self.counts())
            .finish()
    }
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn KvStore>, config: FaultConfig) -> Self {
        FaultyStore {
            shared: Arc::new(Shared {
                inner,
                rng: Mutex::new(config.seed.max(1)),
                config,
                counters: Counters::default(),
            }),
        }
    }

    /// Wraps `inner`, as a trait object.
    pub fn wrap(inner: Arc<dyn KvStore>, config: FaultConfig) -> Arc<dyn KvStore> {
        Arc::new(Self::new(inner, config))
    }

    /// The wrapped store (faults never reach it).
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.shared.inner
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FaultCounts {
            commits: l(&c.commits),
            clean: l(&c.clean),
            unavailable: l(&c.unavailable),
            conflict: l(&c.conflict),
            timeout: l(&c.timeout),
            ambiguous: l(&c.ambiguous),
            lost: l(&c.lost),
            begin_unavailable: l(&c.begin_unavailable),
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvStore for FaultyStore {
    fn capabilities(&self) -> &Capabilities {
        self.shared.inner.capabilities()
    }

    fn commit_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.shared.inner.commit_watch()
    }

    async fn begin(&self) -> KvResult<Box<dyn KvTransaction>> {
        let s = &self.shared;
        if s.config.begin_unavailable > 0.0 && s.draw() < s.config.begin_unavailable {
            s.counters.begin_unavailable.fetch_add(1, Ordering::SeqCst);
            return Err(KvError::Unavailable {
                backend: BACKEND,
                message: "injected: the backend did not answer begin".into(),
            });
        }
        Ok(Box::new(FaultyTxn {
            inner: s.inner.begin().await?,
            shared: s.clone(),
            wrote: false,
        }))
    }
}

struct FaultyTxn {
    inner: Box<dyn KvTransaction>,
    shared: Arc<Shared>,
    wrote: bool,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl KvTransaction for FaultyTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn get_each(
        &mut self,
        keys: &[Vec<u8>],
        visit: &mut eskv_core::kv::VisitValue<'_>,
    ) -> KvResult<()> {
        self.inner.get_each(keys, visit).await
    }

    async fn get_many(&mut self, keys: &[Vec<u8>]) -> KvResult<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(keys).await
    }

    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> KvResult<Vec<KvPair>> {
        self.inner.scan(range, opts).await
    }

    async fn scan_each(
        &mut self,
        range: KeyRange,
        opts: ScanOptions,
        visit: &mut eskv_core::kv::VisitRow<'_>,
    ) -> KvResult<()> {
        self.inner.scan_each(range, opts, visit).await
    }

    async fn read_many(
        &mut self,
        gets: &[Vec<u8>],
        scans: &[(KeyRange, ScanOptions)],
    ) -> KvResult<ReadMany> {
        self.inner.read_many(gets, scans).await
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.wrote = true;
        self.inner.put(key, value)
    }

    fn put_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.wrote = true;
        self.inner.put_new(key, value)
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.wrote = true;
        self.inner.delete(key)
    }

    fn validate(&mut self, key: Vec<u8>) {
        self.inner.validate(key)
    }

    async fn commit(self: Box<Self>) -> KvResult<()> {
        let FaultyTxn {
            inner,
            shared,
            wrote,
        } = *self;
        if !wrote {
            return inner.commit().await;
        }
        let c = &shared.counters;
        match shared.decide() {
            None => {
                c.clean.fetch_add(1, Ordering::SeqCst);
                inner.commit().await
            }
            Some(FaultKind::Unavailable) => {
                c.unavailable.fetch_add(1, Ordering::SeqCst);
                Err(KvError::Unavailable {
                    backend: BACKEND,
                    message: "injected: the backend refused the commit; nothing was applied".into(),
                })
            }
            Some(FaultKind::Conflict) => {
                c.conflict.fetch_add(1, Ordering::SeqCst);
                Err(KvError::conflict(
                    "injected: a concurrent transaction won; nothing was applied",
                ))
            }
            Some(FaultKind::Timeout) => {
                c.timeout.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(shared.config.timeout_delay).await;
                Err(KvError::Unavailable {
                    backend: BACKEND,
                    message: "injected: the commit timed out before it was sent".into(),
                })
            }
            Some(FaultKind::Ambiguous) => {
                c.ambiguous.fetch_add(1, Ordering::SeqCst);
                // Apply for real; only the answer is lost. A real failure
                // of the inner store is passed on as it is.
                inner.commit().await?;
                Err(KvError::CommitOutcomeUnknown {
                    backend: BACKEND,
                    message: "injected: the commit was applied but its answer was lost".into(),
                })
            }
            Some(FaultKind::Lost) => {
                c.lost.fetch_add(1, Ordering::SeqCst);
                drop(inner);
                Err(KvError::CommitOutcomeUnknown {
                    backend: BACKEND,
                    message: "injected: the commit request was lost (not applied)".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eskv_core::{KvStoreExt, MemoryStore};

    async fn run(config: FaultConfig, commits: u64) -> (FaultyStore, Vec<String>) {
        let inner: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let f = FaultyStore::new(inner.clone(), config);
        let mut outcomes = Vec::new();
        for i in 0..commits {
            let key = format!("k{i}").into_bytes();
            let mut txn = f.begin().await.unwrap();
            txn.put(key.clone(), vec![1]);
            let res = txn.commit().await;
            let applied = inner.get_latest(&key).await.unwrap().is_some();
            outcomes.push(format!(
                "{}:{applied}",
                match &res {
                    Ok(()) => "ok",
                    Err(KvError::Unavailable { .. }) => "unavailable",
                    Err(KvError::Conflict { .. }) => "conflict",
                    Err(KvError::CommitOutcomeUnknown { .. }) => "unknown",
                    Err(_) => "other",
                }
            ));
        }
        (f, outcomes)
    }

    #[tokio::test]
    async fn each_kind_does_what_it_says() {
        let (f, out) = run(FaultConfig::uniform(7, 0.0), 6).await;
        // Covered first, in order; then clean (rates are 0).
        assert_eq!(
            out,
            [
                "unavailable:false",
                "conflict:false",
                "unavailable:false",
                "unknown:true",
                "unknown:false",
                "ok:true"
            ]
        );
        let c = f.counts();
        assert!(c.covers_every_kind());
        assert_eq!((c.commits, c.clean, c.total()), (6, 1, 5));
    }

    #[tokio::test]
    async fn same_seed_same_faults() {
        let (a, out_a) = run(FaultConfig::uniform(42, 0.1), 300).await;
        let (_, out_b) = run(FaultConfig::uniform(42, 0.1), 300).await;
        let (_, out_c) = run(FaultConfig::uniform(43, 0.1), 300).await;
        assert_eq!(out_a, out_b);
        assert_ne!(out_a, out_c);
        let c = a.counts();
        // 5 covered + about half of the remaining 295.
        assert!((100..=200).contains(&c.total()), "{c}");
        // Read-only commits are never touched.
        let mut txn = a.begin().await.unwrap();
        txn.get(b"k1").await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(a.counts().commits, 300);
    }

    /// The wrapper hands `read_many` and `commit_watch` to the wrapped
    /// store instead of running the trait defaults over `get_many` and
    /// `scan` (and hiding the watch).
    #[tokio::test]
    async fn forwards_batched_reads_and_commit_watch() {
        use crate::counting::CountingStore;
        let probe = CountingStore::new(Arc::new(MemoryStore::new()));
        let f = FaultyStore::new(Arc::new(probe.clone()), FaultConfig::none(1));
        let mut watch = f
            .commit_watch()
            .expect("the memory store's commit watch must show through the wrapper");
        let mut txn = f.begin().await.unwrap();
        txn.put(b"a".to_vec(), b"1".to_vec());
        let (values, rows) = txn
            .read_many(
                &[b"a".to_vec(), b"b".to_vec()],
                &[(KeyRange::prefix(b""), ScanOptions::forward(None))],
            )
            .await
            .unwrap();
        assert_eq!(values, [Some(b"1".to_vec()), None]);
        assert_eq!(rows, [vec![(b"a".to_vec(), b"1".to_vec())]]);
        txn.commit().await.unwrap();
        let c = probe.counts();
        assert_eq!(
            (c.read_manys, c.get_manys, c.scans, c.commit_watches),
            (1, 0, 0, 1),
            "{c}"
        );
        assert!(watch.has_changed().unwrap(), "the commit was not published");
        watch.borrow_and_update();
    }

    #[test]
    fn schedules_pick_every_nth_commit_a_bounded_number_of_times() {
        let s = Schedule {
            kind: FaultKind::Ambiguous,
            every: 2,
            times: 3,
        };
        let picked: Vec<u64> = (0..10).filter(|&n| s.pick(n).is_some()).collect();
        assert_eq!(picked, [1, 3, 5]);
        let every_one = Schedule {
            kind: FaultKind::Lost,
            every: 0,
            times: 2,
        };
        assert_eq!(every_one.pick(0), Some(FaultKind::Lost));
        assert_eq!(every_one.pick(1), Some(FaultKind::Lost));
        assert_eq!(every_one.pick(2), None);
    }

    #[tokio::test]
    async fn lost_acks_apply_every_commit_and_lose_every_second_answer() {
        let (f, out) = run(FaultConfig::lost_acks(2), 6).await;
        assert_eq!(
            out,
            [
                "ok:true",
                "unknown:true",
                "ok:true",
                "unknown:true",
                "ok:true",
                "ok:true"
            ]
        );
        let c = f.counts();
        assert_eq!((c.ambiguous, c.total()), (2, 2), "{c}");
    }

    #[tokio::test]
    async fn begin_faults() {
        let f = FaultyStore::new(
            Arc::new(MemoryStore::new()),
            FaultConfig::none(3).begin_unavailable(1.0),
        );
        assert!(matches!(f.begin().await, Err(KvError::Unavailable { .. })));
        assert_eq!(f.counts().begin_unavailable, 1);
    }
}
