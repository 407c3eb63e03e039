//! KV-level conformance cases: the [`KvStore`] contract itself.

use eskv_core::{KeyRange, KvError, KvStore, KvStoreExt, Namespaced, ScanOptions};
use std::ops::Bound;
use std::sync::Arc;

type Store = Arc<dyn KvStore>;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn put_all(store: &Store, pairs: &[(&str, &str)]) {
    let mut t = store.begin().await.unwrap();
    for (key, v) in pairs {
        t.put(k(key), k(v));
    }
    t.commit().await.unwrap();
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    rows.iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect()
}

/// A transaction never sees data committed after its snapshot, nor another
/// transaction's uncommitted writes.
pub async fn snapshot_isolation(store: Store) {
    put_all(&store, &[("a", "1"), ("b", "1")]).await;
    let mut reader = store.begin().await.unwrap();
    assert_eq!(reader.get(b"a").await.unwrap(), Some(k("1")));

    let mut writer = store.begin().await.unwrap();
    writer.put(k("a"), k("2"));
    writer.put(k("c"), k("2"));
    // Uncommitted: invisible to everyone else.
    assert_eq!(store.get_latest(b"a").await.unwrap(), Some(k("1")));
    writer.commit().await.unwrap();

    assert_eq!(
        reader.get(b"a").await.unwrap(),
        Some(k("1")),
        "read after a later commit"
    );
    assert_eq!(
        reader.get(b"c").await.unwrap(),
        None,
        "saw a key created after the snapshot"
    );
    let rows = reader
        .scan(KeyRange::prefix(b""), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(&rows), ["a", "b"]);
    assert_eq!(
        reader.get_many(&[k("c"), k("a")]).await.unwrap(),
        vec![None, Some(k("1"))]
    );
    assert_eq!(store.get_latest(b"a").await.unwrap(), Some(k("2")));
}

/// Reads inside a transaction see its own buffered puts and deletes.
pub async fn read_your_own_writes(store: Store) {
    put_all(&store, &[("a", "1"), ("b", "1"), ("c", "1")]).await;
    let mut t = store.begin().await.unwrap();
    t.put(k("b"), k("2"));
    t.delete(k("c"));
    t.put(k("d"), k("2"));
    assert_eq!(t.get(b"b").await.unwrap(), Some(k("2")));
    assert_eq!(t.get(b"c").await.unwrap(), None);
    assert_eq!(
        t.get_many(&[k("a"), k("b"), k("c"), k("d")]).await.unwrap(),
        vec![Some(k("1")), Some(k("2")), None, Some(k("2"))]
    );
    let rows = t
        .scan(KeyRange::prefix(b""), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(&rows), ["a", "b", "d"]);
    assert_eq!(rows[1].1, k("2"));
    // Limits count merged rows: the deleted "c" must not use up the limit.
    let rows = t
        .scan(KeyRange::new(k("b"), k("z")), ScanOptions::forward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&rows), ["b", "d"]);
    let rows = t
        .scan(KeyRange::prefix(b""), ScanOptions::backward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&rows), ["d", "b"]);
    t.commit().await.unwrap();
    assert_eq!(store.get_latest(b"c").await.unwrap(), None);
    assert_eq!(store.get_latest(b"d").await.unwrap(), Some(k("2")));
}

/// What `get_each` hands over for `keys`, copied.
async fn lend(t: &mut dyn eskv_core::KvTransaction, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    let mut seen = Vec::new();
    t.get_each(keys, &mut |v| seen.push(v.map(<[u8]>::to_vec)))
        .await
        .unwrap();
    seen
}

/// The rows `scan_each` hands over for `range` and `opts`, copied, stopping
/// after `stop_after` rows.
async fn lend_rows(
    t: &mut dyn eskv_core::KvTransaction,
    range: KeyRange,
    opts: ScanOptions,
    stop_after: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut seen = Vec::new();
    t.scan_each(range, opts, &mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        seen.len() < stop_after
    })
    .await
    .unwrap();
    seen
}

/// `scan_each` hands over exactly the rows `scan` returns, in scan order
/// (forwards and backwards, with and without a limit, an empty range),
/// stops where the visitor says so, and once the transaction wrote, sees
/// its own writes merged in.
pub async fn scan_each_matches_scan(store: Store) {
    put_all(&store, &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]).await;
    let mut t = store.begin().await.unwrap();
    // Fix the snapshot (no later than the first read, rule 1).
    assert_eq!(t.get(b"zz").await.unwrap(), None);
    // Written after the snapshot: stays unseen.
    store.put_one(k("bb"), k("9")).await.unwrap();
    let cases = [
        (KeyRange::prefix(b""), ScanOptions::default()),
        (KeyRange::prefix(b""), ScanOptions::backward(None)),
        (KeyRange::new(k("b"), k("d")), ScanOptions::forward(Some(1))),
        (
            KeyRange::new(k("a"), k("z")),
            ScanOptions::backward(Some(3)),
        ),
        (KeyRange::new(k("c"), k("c")), ScanOptions::default()),
        (KeyRange::prefix(b"x"), ScanOptions::forward(Some(5))),
    ];
    let check = |rows: &[(Vec<u8>, Vec<u8>)], lent: &[(Vec<u8>, Vec<u8>)]| {
        assert_eq!(lent, rows);
    };
    for (range, opts) in cases.clone() {
        let rows = t.scan(range.clone(), opts).await.unwrap();
        check(
            &rows,
            &lend_rows(&mut *t, range.clone(), opts, usize::MAX).await,
        );
        // The visitor's `false` ends the scan after that row.
        let first = lend_rows(&mut *t, range, opts, 1).await;
        check(&rows[..rows.len().min(1)], &first);
    }
    assert_eq!(
        keys(&lend_rows(&mut *t, KeyRange::prefix(b""), ScanOptions::default(), 9).await),
        ["a", "b", "c", "d"]
    );
    t.put(k("b"), k("5"));
    t.delete(k("c"));
    t.put(k("e"), k("6"));
    for (range, opts) in cases {
        let rows = t.scan(range.clone(), opts).await.unwrap();
        check(&rows, &lend_rows(&mut *t, range, opts, usize::MAX).await);
    }
    let lent = lend_rows(&mut *t, KeyRange::prefix(b""), ScanOptions::default(), 9).await;
    assert_eq!(keys(&lent), ["a", "b", "d", "e"]);
    assert_eq!(lent[1].1, k("5"));
}

/// `get_each` hands over exactly what `get_many` returns, in input order
/// (absent keys, repeated keys, the empty key), from the snapshot and,
/// once the transaction wrote, merged with its own writes.
pub async fn get_each_matches_get_many(store: Store) {
    put_all(&store, &[("a", "1"), ("b", "1"), ("c", "1")]).await;
    let mut t = store.begin().await.unwrap();
    let asked = [k("c"), k("x"), k("a"), k("c"), Vec::new(), k("b")];
    let lent = lend(&mut *t, &asked).await;
    assert_eq!(lent, t.get_many(&asked).await.unwrap());
    assert_eq!(
        lent,
        [
            Some(k("1")),
            None,
            Some(k("1")),
            Some(k("1")),
            None,
            Some(k("1"))
        ]
    );
    // A write from another transaction after this snapshot stays unseen.
    store.put_one(k("a"), k("9")).await.unwrap();
    t.put(k("b"), k("2"));
    t.delete(k("c"));
    let lent = lend(&mut *t, &asked).await;
    assert_eq!(lent, t.get_many(&asked).await.unwrap());
    assert_eq!(lent, [None, None, Some(k("1")), None, None, Some(k("2"))]);
}

/// Scans: order, reverse, limit, bounds, empty ranges; a buffered key past a
/// limit-truncated snapshot must not jump the queue.
pub async fn scans(store: Store) {
    let names = ["k1", "k2", "k3", "k4", "k5"];
    put_all(&store, &names.iter().map(|n| (*n, *n)).collect::<Vec<_>>()).await;
    let mut t = store.begin().await.unwrap();
    let all = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(&all), names);
    let rev = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::backward(None))
        .await
        .unwrap();
    assert_eq!(keys(&rev), ["k5", "k4", "k3", "k2", "k1"]);
    let lim = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::forward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&lim), ["k1", "k2"]);
    let lim = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::backward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&lim), ["k5", "k4"]);
    let zero = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::forward(Some(0)))
        .await
        .unwrap();
    assert!(zero.is_empty());
    let bounded = KeyRange {
        start: Bound::Excluded(k("k1")),
        end: Bound::Included(k("k4")),
    };
    assert_eq!(
        keys(
            &t.scan(bounded.clone(), ScanOptions::default())
                .await
                .unwrap()
        ),
        ["k2", "k3", "k4"]
    );
    assert_eq!(
        keys(&t.scan(bounded, ScanOptions::backward(None)).await.unwrap()),
        ["k4", "k3", "k2"]
    );
    let unbounded_start = KeyRange {
        start: Bound::Unbounded,
        end: Bound::Excluded(k("k3")),
    };
    assert_eq!(
        keys(
            &t.scan(unbounded_start, ScanOptions::default())
                .await
                .unwrap()
        ),
        ["k1", "k2"]
    );
    assert!(t
        .scan(KeyRange::new(k("k3"), k("k3")), ScanOptions::default())
        .await
        .unwrap()
        .is_empty());
    assert!(t
        .scan(KeyRange::new(k("k4"), k("k2")), ScanOptions::default())
        .await
        .unwrap()
        .is_empty());
    assert!(t
        .scan(KeyRange::prefix(b"x"), ScanOptions::default())
        .await
        .unwrap()
        .is_empty());
    // Buffered k9 lies past the first two snapshot rows: a limit-2 scan must
    // return k1, k2, not k1, k9.
    t.put(k("k9"), k("k9"));
    t.put(k("k0"), k("k0"));
    let lim = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::forward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&lim), ["k0", "k1"]);
    let lim = t
        .scan(KeyRange::prefix(b"k"), ScanOptions::backward(Some(2)))
        .await
        .unwrap();
    assert_eq!(keys(&lim), ["k9", "k5"]);
}

/// A key in the validation set that another transaction changes after the
/// snapshot makes the commit fail with a retryable conflict, also when the
/// key was absent; unrelated writes do not.
pub async fn validation_conflicts(store: Store) {
    put_all(&store, &[("seen", "1")]).await;

    // Changed key.
    let mut a = store.begin().await.unwrap();
    a.get(b"seen").await.unwrap();
    a.validate(k("seen"));
    a.put(k("out-a"), k("1"));
    put_all(&store, &[("seen", "2")]).await;
    let err = a.commit().await.unwrap_err();
    assert!(matches!(err, KvError::Conflict { .. }), "got {err:?}");
    assert!(err.is_retryable());
    assert_eq!(
        store.get_latest(b"out-a").await.unwrap(),
        None,
        "conflicting commit wrote"
    );

    // Absent key that gets created.
    let mut b = store.begin().await.unwrap();
    assert_eq!(b.get(b"absent").await.unwrap(), None);
    b.validate(k("absent"));
    b.put(k("out-b"), k("1"));
    put_all(&store, &[("absent", "now")]).await;
    assert!(matches!(b.commit().await, Err(KvError::Conflict { .. })));

    // Deleted key.
    let mut c = store.begin().await.unwrap();
    c.get(b"seen").await.unwrap();
    c.validate(k("seen"));
    c.put(k("out-c"), k("1"));
    let mut d = store.begin().await.unwrap();
    d.delete(k("seen"));
    d.commit().await.unwrap();
    assert!(matches!(c.commit().await, Err(KvError::Conflict { .. })));

    // Unrelated write: no conflict.
    let mut e = store.begin().await.unwrap();
    e.get(b"absent").await.unwrap();
    e.validate(k("absent"));
    e.put(k("out-e"), k("1"));
    put_all(&store, &[("unrelated", "1")]).await;
    e.commit().await.unwrap();
    assert_eq!(store.get_latest(b"out-e").await.unwrap(), Some(k("1")));

    // A change committed before the snapshot is not a conflict.
    let mut f = store.begin().await.unwrap();
    f.get(b"seen").await.unwrap();
    f.validate(k("seen"));
    f.put(k("out-f"), k("1"));
    f.commit().await.unwrap();
}

/// Two transactions with overlapping snapshots that write the same key can
/// never both commit, even as blind writes.
pub async fn write_write_conflicts(store: Store) {
    let mut a = store.begin().await.unwrap();
    let mut b = store.begin().await.unwrap();
    // Fix both snapshots.
    a.get(b"x").await.unwrap();
    b.get(b"x").await.unwrap();
    a.put(k("hot"), k("a"));
    b.put(k("hot"), k("b"));
    b.put(k("b-only"), k("b"));
    a.commit().await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(matches!(err, KvError::Conflict { .. }), "got {err:?}");
    assert_eq!(store.get_latest(b"hot").await.unwrap(), Some(k("a")));
    assert_eq!(
        store.get_latest(b"b-only").await.unwrap(),
        None,
        "partial commit"
    );
}

/// `put_new` of a key another transaction created after the snapshot
/// conflicts, like a `put` would; one that is still absent commits, and
/// is read back like a `put`.
pub async fn put_new_validates_absence(store: Store) {
    let mut a = store.begin().await.unwrap();
    let mut b = store.begin().await.unwrap();
    // Fix both snapshots: neither sees "fresh".
    assert_eq!(a.get(b"fresh").await.unwrap(), None);
    assert_eq!(b.get(b"x").await.unwrap(), None);
    a.put_new(k("fresh"), k("a"));
    a.put_new(k("fresh-a"), k("a"));
    assert_eq!(a.get(b"fresh").await.unwrap(), Some(k("a")), "own write");
    b.put_new(k("fresh"), k("b"));
    b.put_new(k("fresh-b"), k("b"));
    a.commit().await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(matches!(err, KvError::Conflict { .. }), "got {err:?}");
    assert_eq!(store.get_latest(b"fresh").await.unwrap(), Some(k("a")));
    assert_eq!(store.get_latest(b"fresh-a").await.unwrap(), Some(k("a")));
    assert_eq!(
        store.get_latest(b"fresh-b").await.unwrap(),
        None,
        "partial commit"
    );
}

/// All writes of a commit appear together.
pub async fn atomic_commit(store: Store) {
    let mut t = store.begin().await.unwrap();
    for i in 0..50u32 {
        t.put(format!("atom/{i:03}").into_bytes(), vec![i as u8]);
    }
    let before = store
        .scan_latest(KeyRange::prefix(b"atom/"), ScanOptions::default())
        .await
        .unwrap();
    assert!(before.is_empty());
    t.commit().await.unwrap();
    let after = store
        .scan_latest(KeyRange::prefix(b"atom/"), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(after.len(), 50);
}

/// N concurrent tasks increment one counter with retries; no increment is
/// lost.
pub async fn concurrent_counter(store: Store) {
    const TASKS: u64 = 16;
    const EACH: u64 = 8;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let mut t = store.begin().await.unwrap();
                    let n = t
                        .get(b"counter")
                        .await
                        .unwrap()
                        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                        .unwrap_or(0);
                    t.put(k("counter"), (n + 1).to_be_bytes().to_vec());
                    match t.commit().await {
                        Ok(()) => break,
                        Err(e) if e.is_retryable() => conflicts += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let v = store.get_latest(b"counter").await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(v.try_into().unwrap()), TASKS * EACH);
}

/// Two namespaces over one backend never see each other's keys, and a
/// namespace that is a string prefix of another does not leak into it.
pub async fn namespaces_isolated(store: Store) {
    let a: Store = Arc::new(Namespaced::new(store.clone(), "tenant-a"));
    let ab: Store = Arc::new(Namespaced::new(store.clone(), "tenant-ab"));
    put_all(&a, &[("k", "from-a"), ("only-a", "1")]).await;
    put_all(&ab, &[("k", "from-ab")]).await;
    assert_eq!(a.get_latest(b"k").await.unwrap(), Some(k("from-a")));
    assert_eq!(ab.get_latest(b"k").await.unwrap(), Some(k("from-ab")));
    assert_eq!(ab.get_latest(b"only-a").await.unwrap(), None);
    let all_ab = ab
        .scan_latest(KeyRange::prefix(b""), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(keys(&all_ab), ["k"]);
    let all_a = a
        .scan_latest(KeyRange::prefix(b""), ScanOptions::backward(None))
        .await
        .unwrap();
    assert_eq!(keys(&all_a), ["only-a", "k"]);
    // Crafted keys cannot reach another namespace: neither by repeating a
    // namespace's bytes nor with the codec's escape bytes.
    let crafted = [&b"\x02tenant-ab\x00"[..], b"k"].concat();
    assert_eq!(a.get_latest(&crafted).await.unwrap(), None);
    let x: Store = Arc::new(Namespaced::new(store.clone(), "x"));
    let x_nul: Store = Arc::new(Namespaced::new(store.clone(), "x\0"));
    let xb: Store = Arc::new(Namespaced::new(store.clone(), "xb"));
    put_all(&x_nul, &[("k", "secret")]).await;
    put_all(&xb, &[("k", "secret")]).await;
    for probe in [&b"\xff\x00k"[..], b"\x00k", b"bk", b"\x00\xffk"] {
        assert_eq!(
            x.get_latest(probe).await.unwrap(),
            None,
            "escaped via {probe:?}"
        );
    }
    let all_x = x
        .scan_latest(KeyRange::prefix(b""), ScanOptions::default())
        .await
        .unwrap();
    assert!(all_x.is_empty(), "namespace x sees {:?}", keys(&all_x));
}

/// A large value (4 MiB, or the backend's maximum if smaller) round-trips;
/// a value over the declared maximum is rejected without writing anything.
pub async fn large_value(store: Store) {
    let max = store.capabilities().max_value_size;
    let size = max.map_or(4 << 20, |m| m.min(4 << 20));
    let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut t = store.begin().await.unwrap();
    t.put(k("big"), value.clone());
    t.commit().await.unwrap();
    assert_eq!(store.get_latest(b"big").await.unwrap(), Some(value));
    if let Some(m) = max {
        if m < (64 << 20) {
            let mut t = store.begin().await.unwrap();
            t.put(k("too-big"), vec![0; m + 1]);
            t.put(k("too-big-sibling"), vec![1]);
            let err = t.commit().await.unwrap_err();
            assert!(matches!(err, KvError::LimitExceeded { .. }), "got {err:?}");
            assert_eq!(store.get_latest(b"too-big-sibling").await.unwrap(), None);
        }
    }
}

/// Empty values are stored and differ from absence; an empty key is rejected
/// at commit with `InvalidInput` and nothing of that transaction is written.
pub async fn empty_keys_and_values(store: Store) {
    let mut t = store.begin().await.unwrap();
    t.put(k("empty"), Vec::new());
    t.commit().await.unwrap();
    assert_eq!(store.get_latest(b"empty").await.unwrap(), Some(Vec::new()));
    assert_eq!(store.get_latest(b"never").await.unwrap(), None);
    assert_eq!(store.get_latest(b"").await.unwrap(), None);

    let mut t = store.begin().await.unwrap();
    t.put(Vec::new(), k("v"));
    t.put(k("with-empty-key"), k("v"));
    let err = t.commit().await.unwrap_err();
    assert!(matches!(err, KvError::InvalidInput { .. }), "got {err:?}");
    assert_eq!(store.get_latest(b"with-empty-key").await.unwrap(), None);
}

/// A transaction that only reads commits trivially, and dropping a
/// transaction discards its writes.
pub async fn read_only_and_drop(store: Store) {
    let mut t = store.begin().await.unwrap();
    t.get(b"x").await.unwrap();
    t.commit().await.unwrap();
    let mut t = store.begin().await.unwrap();
    t.put(k("dropped"), k("1"));
    drop(t);
    assert_eq!(store.get_latest(b"dropped").await.unwrap(), None);
}

/// Defines one `#[tokio::test]` per case of this module (the KV contract), on
/// stores from `$factory` (see [`all_suites!`](crate::all_suites)). With
/// `wrapped` first, the cases marked `#[direct_only]` are left out.
#[macro_export]
macro_rules! kv_tests {
    ($factory:path) => {
        $crate::kv_tests!(direct, $factory);
    };
    ($mode:ident, $factory:path) => {
        $crate::__cases!(
            $mode,
            $factory,
            $crate::kv,
            [
                snapshot_isolation,
                read_your_own_writes,
                get_each_matches_get_many,
                scan_each_matches_scan,
                scans,
                validation_conflicts,
                write_write_conflicts,
                put_new_validates_absence,
                atomic_commit,
                concurrent_counter,
                namespaces_isolated,
                large_value,
                empty_keys_and_values,
                read_only_and_drop,
            ]
        );
    };
}
