//! The integrity checker: a clean store verifies clean, and each kind of
//! damage, written with raw KV writes, yields the right violation.

use eskv_core::layout::{self, StreamMeta};
use eskv_core::verify::{verify, VerifyReport, Violation};
use eskv_core::{
    envelope, EventStore, ExpectedVersion, KvStore, KvStoreExt, KvTransaction, MemoryStore,
    NewEvent, ReadOptions, RecordedEvent, Ulid,
};
use std::sync::Arc;

fn ev(t: &str) -> NewEvent {
    NewEvent::new(t, t.as_bytes().to_vec())
}

/// Five events: order-1 gets versions 1, 2 (positions 1, 2) and 3
/// (position 5); position 3 has no stream; order-2 is at position 4.
async fn seeded() -> (EventStore, Vec<RecordedEvent>) {
    let es = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    es.append_to_stream(
        "order-1",
        ExpectedVersion::NoStream,
        vec![
            ev("Placed").with_tags(["course:c1", "student:s1"]),
            ev("Paid"),
        ],
    )
    .await
    .unwrap();
    es.append(vec![ev("Loose").with_tags(["x"])], None)
        .await
        .unwrap();
    es.append_to_stream("order-2", ExpectedVersion::NoStream, vec![ev("Placed")])
        .await
        .unwrap();
    es.append_to_stream(
        "order-1",
        ExpectedVersion::Exact(2),
        vec![ev("Shipped").with_tags(["y"])],
    )
    .await
    .unwrap();
    es.register_event_types(["Placed", "Paid"]).await.unwrap();
    let all = es.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(all.len(), 5);
    (es, all)
}

/// Applies raw writes in one KV transaction.
async fn damage(es: &EventStore, f: impl FnOnce(&mut dyn KvTransaction)) {
    let mut txn = es.kv().begin().await.unwrap();
    f(&mut *txn);
    txn.commit().await.unwrap();
}

async fn raw(es: &EventStore, key: &[u8]) -> Vec<u8> {
    es.kv().get_latest(key).await.unwrap().expect("key present")
}

async fn report(es: &EventStore) -> VerifyReport {
    let r = verify(es).await.unwrap();
    eprintln!("{r}");
    r
}

fn only(r: &VerifyReport) -> &Violation {
    assert_eq!(r.violations.len(), 1, "expected exactly one violation: {r}");
    &r.violations[0]
}

#[tokio::test]
async fn clean_stores_verify_clean() {
    let empty = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let r = report(&empty).await;
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.events, r.streams, r.head), (0, 0, 0));

    let (es, _) = seeded().await;
    es.set_strict_types(true).await.unwrap();
    let r = report(&es).await;
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.events, r.streams, r.head), (5, 2, 5));
    assert!(r.to_string().ends_with("clean"));
}

#[tokio::test]
async fn clean_store_across_many_pages_and_damage_deep_inside() {
    let es = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    // 2,600 events: more than two pages of every index and ten of the log.
    for b in 0..26 {
        let events: Vec<NewEvent> = (0..100)
            .map(|_| ev("Tick").with_tags([format!("b:{b}"), "all".to_string()]))
            .collect();
        if b % 2 == 0 {
            es.append(events, None).await.unwrap();
        } else {
            es.append_to_stream(&format!("s-{}", b % 3), ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
    let r = report(&es).await;
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.events, r.head), (2600, 2600));
    assert!(r.keys > 2600 * 4, "every index was read: {} keys", r.keys);

    damage(&es, |t| t.delete(layout::tag_key("all", 2345))).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.position, Some(2345));
    assert_eq!(v.key.as_deref(), Some(&layout::tag_key("all", 2345)[..]));
}

#[tokio::test]
async fn deleted_log_entry_is_a_gap() {
    let (es, all) = seeded().await;
    damage(&es, |t| t.delete(layout::log_key(3))).await;
    let r = report(&es).await;
    assert!(!r.is_clean());
    assert!(
        r.at_position(3)
            .any(|v| v.key.is_none() && v.message.contains("missing from the log")),
        "{r}"
    );
    // Its index entries now dangle, and each is named.
    for key in [
        layout::id_key(all[2].id),
        layout::type_key("Loose", 3),
        layout::tag_key("x", 3),
    ] {
        assert!(
            r.at_key(&key).any(|v| v.message.contains("holds no event")),
            "{r}"
        );
    }
    assert_eq!(r.events, 4);
}

#[tokio::test]
async fn flipped_byte_in_an_envelope_is_corruption() {
    let (es, _) = seeded().await;
    let key = layout::log_key(2);
    let mut v = raw(&es, &key).await;
    let mid = v.len() / 2;
    v[mid] ^= 0x20;
    damage(&es, |t| t.put(key.clone(), v)).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!((v.position, v.key.as_deref()), (Some(2), Some(&key[..])));
    assert!(v.message.contains("checksum"), "{}", v.message);
    // Reads surface it as Corrupt with the position, never as data.
    let err = es.read_all(ReadOptions::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            eskv_core::Error::Corrupt {
                position: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn envelope_copied_to_another_position_is_corruption() {
    let (es, _) = seeded().await;
    let v = raw(&es, &layout::log_key(2)).await;
    damage(&es, |t| t.put(layout::log_key(3), v)).await;
    let r = report(&es).await;
    assert!(
        r.at_position(3)
            .any(|v| v.message.contains("envelope says position 2")),
        "{r}"
    );
}

#[tokio::test]
async fn removed_tag_index_entry() {
    let (es, _) = seeded().await;
    let key = layout::tag_key("course:c1", 1);
    damage(&es, |t| t.delete(key.clone())).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!((v.position, v.key.as_deref()), (Some(1), Some(&key[..])));
    assert!(v.message.contains("no tag index entry"), "{}", v.message);
}

#[tokio::test]
async fn wrong_tag_entry_copy() {
    let (es, _) = seeded().await;
    let key = layout::tag_key("course:c1", 1);
    let wrong = layout::tag_entry_value("Placed", &["course:c1".to_string()]).unwrap();
    damage(&es, |t| {
        t.put(key.clone(), layout::seal_index_value(&key, wrong))
    })
    .await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.key.as_deref(), Some(&key[..]));
    assert!(v.message.contains("the event has type"), "{}", v.message);

    damage(&es, |t| {
        t.put(key.clone(), layout::seal_index_value(&key, vec![0xFF; 3]))
    })
    .await;
    let r = report(&es).await;
    assert!(
        r.at_key(&key)
            .any(|v| v.message.contains("does not decode")),
        "{r}"
    );

    // Unsealed garbage fails the entry's checksum, reported once.
    damage(&es, |t| t.put(key.clone(), vec![0xFF; 3])).await;
    let r = report(&es).await;
    assert_eq!(r.at_key(&key).count(), 1, "{r}");
    assert!(
        r.at_key(&key).any(|v| v.message.contains("checksum")),
        "{r}"
    );
}

#[tokio::test]
async fn stray_index_entries() {
    let (es, all) = seeded().await;
    let ghost_type = layout::type_key("Ghost", 3);
    let ghost_tag = layout::tag_key("nope", 2);
    let ghost_cat = layout::category_key("invoice", 3);
    let ghost_id = layout::id_key(Ulid::generate());
    let tag_value = layout::tag_entry_value("Paid", &["nope".to_string()]).unwrap();
    damage(&es, |t| {
        let sealed = |k: &[u8], v: Vec<u8>| layout::seal_index_value(k, v);
        t.put(ghost_type.clone(), sealed(&ghost_type, Vec::new()));
        t.put(ghost_tag.clone(), sealed(&ghost_tag, tag_value));
        t.put(ghost_cat.clone(), sealed(&ghost_cat, Vec::new()));
        t.put(
            ghost_id.clone(),
            sealed(
                &ghost_id,
                layout::IdEntry {
                    position: 4,
                    append_first: 4,
                    append_last: 4,
                    digest: 0,
                }
                .encode(),
            ),
        );
        let k = layout::type_key("Placed", 99);
        t.put(k.clone(), sealed(&k, Vec::new()));
    })
    .await;
    let r = report(&es).await;
    assert_eq!(r.violations.len(), 5, "{r}");
    assert!(r
        .at_key(&ghost_type)
        .any(|v| v.message.contains("whose event has type 'Loose'")));
    assert!(r
        .at_key(&ghost_tag)
        .any(|v| v.message.contains("whose event has tags")));
    assert!(r
        .at_key(&ghost_cat)
        .any(|v| v.message.contains("no stream")));
    assert!(r
        .at_key(&ghost_id)
        .any(|v| v.message.contains(&format!("holds event {}", all[3].id))));
    assert!(r
        .at_position(99)
        .any(|v| v.message.contains("holds no event")));
}

#[tokio::test]
async fn bumped_head_leaves_missing_positions() {
    let (es, _) = seeded().await;
    damage(&es, |t| t.put(layout::head_key(), layout::u64_value(7))).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(
        (v.position, v.key.as_deref()),
        (Some(6), Some(&layout::head_key()[..]))
    );
    assert!(v.message.contains("positions 6..=7"), "{}", v.message);
}

#[tokio::test]
async fn lowered_or_missing_head() {
    let (es, _) = seeded().await;
    damage(&es, |t| t.put(layout::head_key(), layout::u64_value(4))).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.position, Some(5));
    assert!(v.message.contains("above the head"), "{}", v.message);

    damage(&es, |t| t.delete(layout::head_key())).await;
    let r = report(&es).await;
    assert!(only(&r).message.contains("head key is missing"));

    damage(&es, |t| t.put(layout::head_key(), vec![1, 2, 3])).await;
    let r = report(&es).await;
    assert!(only(&r).message.contains("head is 3 bytes"), "{r}");
}

#[tokio::test]
async fn stream_metadata_and_index_disagree() {
    let (es, _) = seeded().await;
    let meta_key = layout::stream_key("order-1");
    let bad = StreamMeta {
        version: 4,
        last_position: 5,
    };
    damage(&es, |t| t.put(meta_key.clone(), bad.encode())).await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.key.as_deref(), Some(&meta_key[..]));
    assert!(v.message.contains("says version 4"), "{}", v.message);

    let bad = StreamMeta {
        version: 3,
        last_position: 4,
    };
    damage(&es, |t| t.put(meta_key.clone(), bad.encode())).await;
    let r = report(&es).await;
    assert!(
        only(&r).message.contains("last event is at position 4"),
        "{r}"
    );

    // A missing version: the gap and the event's missing entry are named.
    let fixed = StreamMeta {
        version: 3,
        last_position: 5,
    };
    let v2 = layout::stream_event_key("order-1", 2);
    damage(&es, |t| {
        t.put(meta_key.clone(), fixed.encode());
        t.delete(v2.clone());
    })
    .await;
    let r = report(&es).await;
    assert_eq!(r.violations.len(), 2, "{r}");
    assert!(r
        .at_key(&v2)
        .any(|v| v.message.contains("no stream index entry")));
    assert!(r
        .at_key(&layout::stream_event_key("order-1", 3))
        .any(|v| v.message.contains("missing versions 2..=2")));
}

#[tokio::test]
async fn stream_without_metadata_or_entries() {
    let (es, _) = seeded().await;
    let ghost = layout::stream_key("ghost");
    let meta = StreamMeta {
        version: 1,
        last_position: 3,
    };
    damage(&es, |t| {
        t.put(ghost.clone(), meta.encode());
        t.delete(layout::stream_key("order-2"));
    })
    .await;
    let r = report(&es).await;
    assert_eq!(r.violations.len(), 2, "{r}");
    assert!(r
        .at_key(&ghost)
        .any(|v| v.message.contains("no stream index entries")));
    assert!(r
        .at_key(&layout::stream_key("order-2"))
        .any(|v| v.message.contains("but no metadata")));
    assert_eq!(r.streams, 2);

    // An index entry pointing at an event of another stream.
    damage(&es, |t| {
        t.delete(ghost.clone());
        t.put(
            layout::stream_key("order-2"),
            StreamMeta {
                version: 1,
                last_position: 4,
            }
            .encode(),
        );
        let k = layout::stream_event_key("order-2", 1);
        t.put(
            k.clone(),
            layout::seal_index_value(&k, layout::u64_value(2)),
        );
    })
    .await;
    let r = report(&es).await;
    assert!(
        r.at_key(&layout::stream_event_key("order-2", 1))
            .any(|v| v.message.contains("belongs to stream 'order-1' version 2")),
        "{r}"
    );
}

#[tokio::test]
async fn duplicate_event_id_is_found() {
    let (es, all) = seeded().await;
    // A second copy of event 2 (same id), validly encoded at position 6.
    let mut copy = all[1].clone();
    copy.position = 6;
    copy.stream = None;
    let bytes = envelope::encode(&copy).unwrap();
    damage(&es, |t| {
        t.put(layout::log_key(6), bytes);
        let k = layout::type_key(&copy.event_type, 6);
        t.put(k.clone(), layout::seal_index_value(&k, Vec::new()));
        t.put(layout::head_key(), layout::u64_value(6));
    })
    .await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.position, Some(6));
    assert_eq!(v.key.as_deref(), Some(&layout::id_key(copy.id)[..]));
    assert!(v.message.contains("points at position 2"), "{}", v.message);
}

#[tokio::test]
async fn stray_and_malformed_keys() {
    let (es, _) = seeded().await;
    let namespaced = eskv_core::Namespaced::new(es.kv().clone(), "tenant");
    namespaced
        .put_one(b"anything".to_vec(), vec![1])
        .await
        .unwrap();
    assert!(
        report(&es).await.is_clean(),
        "nested namespaces are not ours"
    );

    let stray = vec![0x07, 1, 2];
    let extra_head = vec![0x02, 0x01];
    let bad_type = vec![0x30, 0xFF];
    let bad_log = vec![0x10, 0x02, b'x', 0];
    let bad_registry = layout::registry_key("Placed");
    damage(&es, |t| {
        t.put(stray.clone(), Vec::new());
        t.put(extra_head.clone(), Vec::new());
        t.put(bad_type.clone(), Vec::new());
        t.put(bad_log.clone(), Vec::new());
        t.put(bad_registry.clone(), vec![9]);
        t.put(layout::strict_key(), vec![7]);
    })
    .await;
    let r = report(&es).await;
    assert_eq!(r.violations.len(), 6, "{r}");
    for k in [&stray, &extra_head] {
        assert!(r
            .at_key(k)
            .any(|v| v.message.contains("outside every table")));
    }
    assert!(r
        .at_key(&bad_type)
        .any(|v| v.message.contains("type index key does not parse")));
    assert!(r
        .at_key(&bad_log)
        .any(|v| v.message.contains("log key does not parse")));
    assert!(r
        .at_key(&bad_registry)
        .any(|v| v.message.contains("1 bytes")));
    assert!(r
        .at_key(&layout::strict_key())
        .any(|v| v.message.contains("expected 0 or 1")));
}

#[tokio::test]
async fn wrong_format_marker() {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let es = EventStore::open(kv.clone()).await.unwrap();
    es.append(vec![ev("A")], None).await.unwrap();
    damage(&es, |t| t.put(layout::format_key(), b"other/9".to_vec())).await;
    let r = report(&es).await;
    assert!(only(&r).message.contains("other/9"), "{r}");
    damage(&es, |t| t.delete(layout::format_key())).await;
    let r = eskv_core::verify::verify_kv(kv.as_ref()).await.unwrap();
    assert!(only(&r).message.contains("marker is missing"), "{r}");
}

#[tokio::test]
async fn checkpoints_past_the_head() {
    let (es, _) = seeded().await;
    es.save_checkpoint("mailer", 5).await.unwrap();
    // Subscription state the checker must accept as is: a dead letter at a
    // real position, a lease, and raw read-model bytes of a projection.
    let parked = layout::dead_letter_key(layout::Consumer::Named("mailer"), 3);
    let lease = layout::lease_key("g", 0);
    let mut model = layout::read_model_prefix("totals", 0);
    model.extend_from_slice(b"\xff raw user key");
    damage(&es, |t| {
        t.put(parked, b"{}".to_vec());
        t.put(lease, b"whatever".to_vec());
        t.put(model, b"1".to_vec());
    })
    .await;
    let r = report(&es).await;
    assert!(r.is_clean(), "{r}");

    let ahead = layout::checkpoint_key(layout::Consumer::Named("late"));
    let part = layout::checkpoint_key(layout::Consumer::Partition {
        group: "g",
        partition: 7,
    });
    let proj = layout::projection_checkpoint_key("totals");
    let dead = layout::dead_letter_key(
        layout::Consumer::Partition {
            group: "g",
            partition: 1,
        },
        9,
    );
    let garbled = layout::checkpoint_key(layout::Consumer::Named("bad"));
    let mut trailing = layout::checkpoint_key(layout::Consumer::Named("x"));
    trailing.extend_from_slice(&[0x14]);
    damage(&es, |t| {
        t.put(ahead.clone(), layout::u64_value(6));
        t.put(part.clone(), layout::u64_value(8));
        t.put(proj.clone(), layout::projection_checkpoint_value(0, 40));
        t.put(dead.clone(), Vec::new());
        t.put(garbled.clone(), vec![1]);
        t.put(trailing.clone(), layout::u64_value(1));
        t.put(vec![0x50, 0x14], Vec::new());
    })
    .await;
    let r = report(&es).await;
    assert_eq!(r.violations.len(), 7, "{r}");
    assert!(r
        .at_key(&ahead)
        .any(|v| v.position == Some(6) && v.message.contains("past the head (5)")));
    assert!(r
        .at_key(&part)
        .any(|v| v.message.contains("partition 7 of group 'g'")));
    assert!(r
        .at_key(&proj)
        .any(|v| v.message.contains("projection-checkpoint")));
    assert!(r.at_key(&dead).any(|v| v.message.contains("parked event")));
    assert!(r.at_key(&garbled).any(|v| v.message.contains("1 bytes")));
    assert!(r
        .at_key(&trailing)
        .any(|v| v.message.contains("does not parse")));
    assert!(r
        .at_key(&[0x50, 0x14])
        .any(|v| v.message.contains("subscription-state key does not parse")));
}

#[tokio::test]
async fn id_entry_digest_must_match_the_event() {
    let (es, all) = seeded().await;
    let k = layout::id_key(all[0].id);
    let stored = raw(&es, &k).await;
    let mut entry =
        layout::IdEntry::decode(layout::open_index_value(&k, &stored).unwrap()).unwrap();
    assert_eq!(
        entry.digest,
        layout::content_digest(&all[0].tags, &all[0].data, &all[0].metadata)
    );
    entry.digest ^= 1;
    damage(&es, |t| {
        t.put(k.clone(), layout::seal_index_value(&k, entry.encode()))
    })
    .await;
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.key.as_deref(), Some(&k[..]), "{r}");
    assert!(v.message.contains("content digest"), "{r}");
    // An entry of the old 24-byte layout is reported, not misread.
    damage(&es, |t| {
        t.put(
            k.clone(),
            layout::seal_index_value(&k, entry.encode()[..24].to_vec()),
        )
    })
    .await;
    let r = report(&es).await;
    assert!(
        r.violations
            .iter()
            .any(|v| v.message.contains("expected 28")),
        "{r}"
    );
}

/// An import that began and did not finish is damage, with the count it
/// promised; finishing it makes the store clean again.
#[tokio::test]
async fn an_unfinished_import_is_reported_until_it_finishes() {
    let (es, _) = seeded().await;
    assert_eq!(es.import_in_progress().await.unwrap(), None);
    es.begin_import(Some(48_584)).await.unwrap();
    let m = es.import_in_progress().await.unwrap().unwrap();
    assert_eq!(m.expected_events, Some(48_584));
    let r = report(&es).await;
    let v = only(&r);
    assert_eq!(v.key.as_deref(), Some(&layout::import_key()[..]));
    assert!(v.message.contains("did not finish"), "{}", v.message);
    assert!(v.message.contains("48584 events"), "{}", v.message);
    let mut progress = Vec::new();
    let r2 = eskv_core::verify::verify_with_progress(&es, |k| progress.push(k))
        .await
        .unwrap();
    assert_eq!(r2, r);
    assert!(!progress.is_empty() && progress.windows(2).all(|w| w[0] <= w[1]));
    assert!(*progress.last().unwrap() <= r.keys);
    es.finish_import().await.unwrap();
    assert!(report(&es).await.is_clean());
    assert_eq!(es.import_in_progress().await.unwrap(), None);
}
