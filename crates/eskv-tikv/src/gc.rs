//! MVCC garbage collection: choosing the GC safe point, and the guard that
//! keeps a transaction from reading at a snapshot GC may have collected.
//!
//! TiKV keeps every version of every key until PD's GC safe point passes
//! it; on a cluster without TiDB nothing moves that safe point, and the keys
//! eskv rewrites all the time (the head, stream metadata, checkpoints,
//! leases) pile up versions forever. [`TikvStore::collect_garbage`] moves
//! it: the safe point is PD's current time less a lifetime, and
//! tikv-client's `TransactionClient::gc` resolves the locks older than it
//! and advances PD's safe point, after which TiKV drops the versions older
//! than it (keeping, per key, the newest one at or before it, unless that
//! is a deletion).
//!
//! A transaction whose start timestamp is older than the safe point could
//! read a snapshot with versions missing, so every read and commit of a
//! transaction older than the lifetime (less one request timeout, the
//! longest a read may take) fails with a retryable [`KvError::Conflict`]
//! instead: the event layer retries with a fresh transaction.
//!
//! [`TikvStore::collect_garbage`]: crate::TikvStore::collect_garbage

use eskv_core::{KvError, KvResult};
use std::time::Duration;
use tikv_client::Timestamp;

/// The default GC lifetime: versions stay readable for 10 minutes (TiDB's
/// default `tidb_gc_life_time`).
pub const DEFAULT_GC_LIFETIME: Duration = Duration::from_secs(600);

/// The shortest GC lifetime accepted.
pub const MIN_GC_LIFETIME: Duration = Duration::from_secs(60);

/// Settings of the background GC task ([`TikvStore::spawn_gc`]).
///
/// [`TikvStore::spawn_gc`]: crate::TikvStore::spawn_gc
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOptions {
    /// How long a version stays readable after it was overwritten or
    /// deleted. Also the age past which this store's transactions refuse
    /// to read. Default [`DEFAULT_GC_LIFETIME`]; at least
    /// [`MIN_GC_LIFETIME`] and twice the request timeout.
    pub lifetime: Duration,
    /// Time between two GC rounds. Default: 10 minutes.
    pub interval: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            lifetime: DEFAULT_GC_LIFETIME,
            interval: Duration::from_secs(600),
        }
    }
}

impl GcOptions {
    /// Sets the lifetime.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sets the interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// What one GC round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOutcome {
    /// The safe point asked for, as a TiKV timestamp version.
    pub safe_point: u64,
    /// Its physical part, in milliseconds since the Unix epoch.
    pub safe_point_ms: i64,
    /// False when PD kept a newer safe point (another process, or TiDB, set
    /// one later than this); nothing is wrong then.
    pub advanced: bool,
}

/// Checks a GC lifetime against the minimum and the request timeout.
pub(crate) fn check_lifetime(lifetime: Duration, request_timeout: Duration) -> KvResult<()> {
    let floor = MIN_GC_LIFETIME.max(request_timeout.saturating_mul(2));
    if lifetime < floor {
        return Err(KvError::invalid(format!(
            "GC lifetime {lifetime:?} is too short: it must be at least {floor:?} \
             (one minute, and twice the request timeout), or transactions in flight \
             would read versions GC removed"
        )));
    }
    Ok(())
}

/// The GC safe point for PD time `now` and `lifetime`: `now` less the
/// lifetime, logical part 0. `None` when that is not after the epoch of
/// TiKV timestamps (a lifetime longer than the cluster's clock).
pub(crate) fn safe_point(now: &Timestamp, lifetime: Duration) -> Option<Timestamp> {
    let ms = i64::try_from(lifetime.as_millis()).ok()?;
    let physical = now.physical.checked_sub(ms)?;
    (physical > 0).then(|| Timestamp {
        physical,
        logical: 0,
        ..Default::default()
    })
}

/// True when a transaction of age `age` may read a snapshot GC removed or
/// is about to: it is older than `lifetime` less `slack` (the longest one
/// read may take). Always false without GC (`lifetime` `None`).
pub(crate) fn snapshot_too_old(age: Duration, lifetime: Option<Duration>, slack: Duration) -> bool {
    lifetime.is_some_and(|l| age.saturating_add(slack) >= l)
}

/// The error for a transaction past its GC lifetime.
pub(crate) fn too_old_error(age: Duration, lifetime: Duration) -> KvError {
    KvError::conflict(format!(
        "the TiKV transaction is {age:?} old and GC runs with a lifetime of {lifetime:?}: \
         its snapshot may have been collected; retry with a fresh transaction"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_client::TimestampExt;

    fn ts(physical: i64, logical: i64) -> Timestamp {
        Timestamp {
            physical,
            logical,
            ..Default::default()
        }
    }

    #[test]
    fn safe_point_is_pd_time_less_the_lifetime() {
        // 2026-01-01T00:00:00Z in ms, with a logical part.
        let now = ts(1_767_225_600_000, 17);
        let sp = safe_point(&now, Duration::from_secs(600)).unwrap();
        assert_eq!(sp.physical, 1_767_225_600_000 - 600_000);
        assert_eq!(sp.logical, 0);
        // As a version: physical in the high bits, below now's.
        assert_eq!(
            sp.version(),
            ((1_767_225_600_000i64 - 600_000) as u64) << 18
        );
        assert!(sp.version() < now.version());
        // Sub-millisecond parts of the lifetime are dropped, never rounded
        // up into the future.
        let sp = safe_point(&now, Duration::from_micros(600_000_999)).unwrap();
        assert_eq!(sp.physical, 1_767_225_600_000 - 600_000);
    }

    #[test]
    fn no_safe_point_before_the_clock_starts() {
        let now = ts(500_000, 0);
        assert_eq!(safe_point(&now, Duration::from_secs(600)), None);
        assert_eq!(safe_point(&now, Duration::from_millis(500_000)), None);
        assert!(safe_point(&now, Duration::from_millis(499_999)).is_some());
        assert_eq!(safe_point(&now, Duration::MAX), None);
    }

    #[test]
    fn lifetimes_have_a_floor() {
        let t = Duration::from_secs(20);
        assert!(check_lifetime(DEFAULT_GC_LIFETIME, t).is_ok());
        assert!(check_lifetime(Duration::from_secs(60), t).is_ok());
        let e = check_lifetime(Duration::from_secs(59), t).unwrap_err();
        assert!(matches!(e, KvError::InvalidInput { .. }), "{e:?}");
        // A long request timeout raises the floor.
        let e = check_lifetime(Duration::from_secs(100), Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("120s"), "{e}");
        assert_eq!(GcOptions::default().lifetime, DEFAULT_GC_LIFETIME);
    }

    #[test]
    fn old_transactions_are_refused_before_the_safe_point_reaches_them() {
        let life = Some(Duration::from_secs(600));
        let slack = Duration::from_secs(20);
        assert!(!snapshot_too_old(Duration::from_secs(10), life, slack));
        assert!(!snapshot_too_old(Duration::from_secs(579), life, slack));
        assert!(snapshot_too_old(Duration::from_secs(580), life, slack));
        assert!(snapshot_too_old(Duration::from_secs(3600), life, slack));
        assert!(!snapshot_too_old(Duration::from_secs(3600), None, slack));
        let e = too_old_error(Duration::from_secs(700), Duration::from_secs(600));
        assert!(e.is_retryable());
        assert!(matches!(e, KvError::Conflict { .. }));
    }
}
