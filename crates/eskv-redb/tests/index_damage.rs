//! Damaged index entries on a real redb file. One byte of an index key is
//! changed (the entry moves to a key that a read still scans); the read
//! that touches it must fail with `Error::Corrupt`, never answer with it:
//! before index entries were sealed, such an entry sent DCB reads to the
//! wrong event, read streams out of order, and made a fresh event id look
//! already used.

use eskv_core::{
    layout, AppendCondition, Error, EventStore, ExpectedVersion, KvStore, KvStoreExt, NewEvent,
    Query, ReadOptions, ReadStreamOptions, Ulid,
};
use eskv_redb::{RedbOptions, RedbStore};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn reopen(path: &Path) -> RedbStore {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RedbStore::open_with(path, RedbOptions::default()).await {
            Err(
                eskv_core::KvError::Unavailable { .. } | eskv_core::KvError::StoreLocked { .. },
            ) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other.unwrap(),
        }
    }
}

/// 16 events alternating between stream `order-1` (odd positions, type
/// `Placed`) and `invoice-1` (even positions, type `Billed`); the event at
/// position p carries the tag `n:p`. Returns the id of the event at 3.
async fn build(path: &Path) -> Ulid {
    let es = EventStore::open(Arc::new(reopen(path).await))
        .await
        .unwrap();
    let mut id3 = None;
    for p in 1..=16u64 {
        let (stream, t) = if p % 2 == 1 {
            ("order-1", "Placed")
        } else {
            ("invoice-1", "Billed")
        };
        let e =
            NewEvent::new(t, format!("{{\"p\":{p}}}").into_bytes()).with_tags([format!("n:{p}")]);
        if p == 3 {
            id3 = Some(e.id);
        }
        let r = es
            .append_to_stream(stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
        assert_eq!(r.first_position, p);
    }
    id3.unwrap()
}

/// Moves the entry at `key` to `key` with byte `at` xor-ed with `mask`,
/// through a raw transaction: what a flipped bit in a stored key does.
async fn move_entry(path: &Path, key: Vec<u8>, at: usize, mask: u8) -> Vec<u8> {
    let kv = reopen(path).await;
    let value = kv
        .get_latest(&key)
        .await
        .unwrap()
        .expect("the entry exists");
    let mut moved = key.clone();
    moved[at] ^= mask;
    assert!(
        kv.get_latest(&moved).await.unwrap().is_none(),
        "no collision"
    );
    let mut txn = kv.begin().await.unwrap();
    txn.delete(key);
    txn.put(moved.clone(), value);
    txn.commit().await.unwrap();
    moved
}

fn is_corrupt<T: std::fmt::Debug>(r: &eskv_core::Result<T>) -> bool {
    matches!(r, Err(Error::Corrupt { message, .. }) if message.contains("index entry"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_index_key_is_corrupt_on_every_read_that_touches_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.redb");
    let id3 = build(&base).await;
    // Let the last handle's writer thread close the file.
    drop(reopen(&base).await);

    let last = |k: &[u8]| k.len() - 1;
    let id_key = layout::id_key(id3);
    let families: Vec<(&str, Vec<u8>, usize, u8)> = vec![
        // Position 3 → 2 (position 2 has another tag, type and category).
        (
            "tag",
            layout::tag_key("n:3", 3),
            last(&layout::tag_key("n:3", 3)),
            0x01,
        ),
        (
            "type",
            layout::type_key("Placed", 3),
            last(&layout::type_key("Placed", 3)),
            0x01,
        ),
        (
            "category",
            layout::category_key("order", 3),
            last(&layout::category_key("order", 3)),
            0x01,
        ),
        // Version 2 (position 3) → version 66.
        (
            "stream_ev",
            layout::stream_event_key("order-1", 2),
            last(&layout::stream_event_key("order-1", 2)),
            0x40,
        ),
        // The event id's last byte.
        ("id", id_key.clone(), last(&id_key), 0x01),
    ];
    let mut wrong = Vec::new();
    for (family, key, at, mask) in families {
        let path = dir.path().join(format!("{family}.redb"));
        std::fs::copy(&base, &path).unwrap();
        let moved = move_entry(&path, key, at, mask).await;
        let es = EventStore::open(Arc::new(reopen(&path).await))
            .await
            .unwrap();
        let mut outcomes: Vec<(String, bool, String)> = Vec::new();
        let mut record = |what: &str, corrupt: bool, dbg: String| {
            outcomes.push((what.to_string(), corrupt, dbg))
        };
        match family {
            "tag" | "type" => {
                let q = if family == "tag" {
                    Query::of(Vec::<String>::new(), ["n:3"])
                } else {
                    Query::of(["Placed"], Vec::<String>::new())
                };
                let r = es
                    .read(&q, ReadOptions::new())
                    .await
                    .map(|r| r.events.len());
                record("DCB read", is_corrupt(&r), format!("{r:?}"));
                let r = es
                    .read(&q, ReadOptions::new().backwards())
                    .await
                    .map(|r| r.events.len());
                record("DCB read backwards", is_corrupt(&r), format!("{r:?}"));
                let cond = AppendCondition::new(q, Some(1));
                let r = es
                    .append(vec![NewEvent::new("Claimed", vec![])], Some(cond))
                    .await;
                record("conditional append", is_corrupt(&r), format!("{r:?}"));
            }
            "category" => {
                let r = es
                    .read_category("order", ReadOptions::new())
                    .await
                    .map(|r| r.events.len());
                record("category read", is_corrupt(&r), format!("{r:?}"));
                let r = es
                    .read_category("order", ReadOptions::new().backwards())
                    .await
                    .map(|r| r.events.len());
                record("category read backwards", is_corrupt(&r), format!("{r:?}"));
            }
            "stream_ev" => {
                let r = es
                    .read_stream("order-1", ReadStreamOptions::new())
                    .await
                    .map(|e| e.len());
                record("stream read", is_corrupt(&r), format!("{r:?}"));
                let r = es
                    .read_stream("order-1", ReadStreamOptions::new().backwards())
                    .await
                    .map(|e| e.len());
                record("stream read backwards", is_corrupt(&r), format!("{r:?}"));
            }
            "id" => {
                // An append whose (fresh) id is the damaged entry's new key.
                let fresh = Ulid::from_bytes(moved[moved.len() - 16..].try_into().unwrap());
                let mut e = NewEvent::new("Placed", vec![]);
                e.id = fresh;
                let r = es.append(vec![e], None).await;
                record("append with that id", is_corrupt(&r), format!("{r:?}"));
            }
            _ => unreachable!(),
        }
        for (what, corrupt, dbg) in outcomes {
            if !corrupt {
                wrong.push(format!(
                    "{family}: {what}: expected Error::Corrupt, got {dbg}"
                ));
            }
        }
        // The checker reports the damaged entry by its (new) key.
        let report = eskv_core::verify::verify(&es).await.unwrap();
        if report.at_key(&moved).next().is_none() {
            wrong.push(format!(
                "{family}: verify does not report the moved entry: {report}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
