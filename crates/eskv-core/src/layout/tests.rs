//! Tests of the layout's keys and parsers: round trips, and property
//! tests that damaged or truncated keys never decode to another key.

mod state_keys {
    use crate::layout::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("billing".to_string()),
            Just("billing#0".to_string()),
            Just("a\0".to_string()),
            ".{0,6}",
        ]
    }

    fn consumer() -> impl Strategy<Value = ConsumerId> {
        prop_oneof![
            name().prop_map(ConsumerId::Named),
            (name(), any::<u32>())
                .prop_map(|(group, partition)| ConsumerId::Partition { group, partition }),
        ]
    }

    fn state_key() -> impl Strategy<Value = StateKey> {
        prop_oneof![
            consumer().prop_map(StateKey::Checkpoint),
            (consumer(), any::<u64>())
                .prop_map(|(consumer, position)| StateKey::DeadLetter { consumer, position }),
            (name(), any::<u32>())
                .prop_map(|(group, partition)| StateKey::Lease { group, partition }),
            (name(), name()).prop_map(|(group, member)| StateKey::Member { group, member }),
            name().prop_map(|name| StateKey::ProjectionCheckpoint { name }),
            name().prop_map(|name| StateKey::ProjectionRebuild { name }),
            (
                name(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(name, generation, key)| StateKey::ReadModel {
                    name,
                    generation,
                    key
                }),
            name().prop_map(StateKey::StreamSnapshot),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(StateKey::QuerySnapshot),
            name().prop_map(StateKey::NamedSnapshot),
        ]
    }

    #[test]
    fn families_are_distinct_for_lookalike_names() {
        // Issue 13: "billing#0" was both a subscription and a partition.
        let named = checkpoint_key(Consumer::Named("billing#0"));
        let part = checkpoint_key(Consumer::Partition {
            group: "billing",
            partition: 0,
        });
        assert_ne!(named, part);
        assert!(!checkpoint_range().contains(&part));
        assert!(group_checkpoint_range("billing").contains(&part));
        assert!(!group_checkpoint_range("billing").contains(&named));
        let dn = dead_letter_key(Consumer::Named("billing#0"), 3);
        let dp = dead_letter_key(
            Consumer::Partition {
                group: "billing",
                partition: 0,
            },
            3,
        );
        assert_ne!(dn, dp);
        assert!(!dead_letter_range(Consumer::Named("billing#0")).contains(&dp));
        assert!(group_dead_letter_range("billing").contains(&dp));
        // A name continuing with an escaped NUL is not a child of the name.
        assert!(!lease_range("a").contains(&lease_key("a\0", 1)));
        assert!(!read_model_range_from("a", 0).contains(&read_model_prefix("a\0", 1)));
        assert!(read_model_range_from("a", 2).contains(&read_model_prefix("a", 300)));
        assert!(!read_model_range_from("a", 2).contains(&read_model_prefix("a", 1)));
        assert!(read_model_generation_range("a", 1)
            .contains(&[read_model_prefix("a", 1), vec![0xff]].concat()));
        assert!(!read_model_generation_range("a", 1).contains(&read_model_prefix("a", 256)));
        let r = ProjectionRebuild {
            generation: 4,
            position: 9,
            id: Ulid(77),
        };
        assert_eq!(ProjectionRebuild::decode(&r.encode()).unwrap(), r);
        assert!(ProjectionRebuild::decode(&[0; 31]).is_err());
    }

    proptest! {
        #[test]
        fn state_keys_roundtrip_and_never_collide(a in state_key(), b in state_key()) {
            let ka = a.encode();
            prop_assert_eq!(parse_state_key(&ka).unwrap(), a.clone());
            // Injective: different keys have different bytes.
            if a != b {
                prop_assert_ne!(ka, b.encode());
            }
        }

        #[test]
        fn state_parser_is_canonical_on_arbitrary_bytes(
            k in state_key(),
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..6),
        ) {
            // Truncated or extended real keys: whatever parses re-encodes
            // to the very same bytes.
            let mut key = k.encode();
            key.truncate(cut.index(key.len() + 1));
            key.extend_from_slice(&junk);
            if let Ok(p) = parse_state_key(&key) {
                prop_assert_eq!(p.encode(), key);
            }
        }
    }
}

mod parsers {
    use crate::layout::*;
    use proptest::prelude::*;

    #[test]
    fn parsers_roundtrip() {
        let id = Ulid(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_log_key_strict(&log_key(77)).unwrap(), 77);
        assert_eq!(parse_id_key(&id_key(id)).unwrap(), id);
        assert_eq!(
            parse_stream_meta_key(&stream_key("a\0-\u{ff}")).unwrap(),
            "a\0-\u{ff}"
        );
        assert_eq!(
            parse_stream_event_key(&stream_event_key("s\0", 9)).unwrap(),
            ("s\0".to_string(), 9)
        );
        for k in [type_key("T", 3), tag_key("T", 3), category_key("T", 3)] {
            assert_eq!(parse_positional_key(&k).unwrap(), ("T".to_string(), 3));
        }
        assert_eq!(parse_meta_key(&format_key()).unwrap(), "format");
        assert_eq!(parse_registry_key_strict(&registry_key("X")).unwrap(), "X");
        for tag in table_tags() {
            assert!(table_name(tag).is_some());
            assert!(table_range(tag).contains(&[tag, 1, 2]));
        }
        assert_eq!(table_name(0x99), None);
    }

    #[test]
    fn parsers_reject_wrong_table_and_trailing_bytes() {
        let mut k = log_key(5);
        k.push(0x14);
        assert!(matches!(
            parse_log_key_strict(&k),
            Err(Error::Corrupt { .. })
        ));
        assert!(parse_id_key(&log_key(5)).is_err());
        assert!(parse_stream_event_key(&stream_key("s")).is_err());
        assert!(parse_positional_key(&stream_event_key("s", 1)).is_err());
        assert!(parse_stream_meta_key(&[]).is_err());
    }

    #[test]
    fn index_seals_cover_key_and_value() {
        let key = tag_key("user:alice", 7);
        let sealed = seal_index_value(&key, b"body".to_vec());
        assert_eq!(sealed.len(), 4 + SEAL_LEN);
        assert_eq!(open_index_value(&key, &sealed).unwrap(), b"body");
        // Every single-bit flip of the key or of the value is caught.
        for i in 0..key.len() * 8 {
            let mut k = key.clone();
            k[i / 8] ^= 1 << (i % 8);
            assert!(matches!(
                open_index_value(&k, &sealed),
                Err(Error::Corrupt { .. })
            ));
        }
        for i in 0..sealed.len() * 8 {
            let mut v = sealed.clone();
            v[i / 8] ^= 1 << (i % 8);
            assert!(matches!(
                open_index_value(&key, &v),
                Err(Error::Corrupt { .. })
            ));
        }
        // A byte moved from the end of the key to the start of the value.
        let short = &key[..key.len() - 1];
        let mut moved = vec![key[key.len() - 1]];
        moved.extend_from_slice(&sealed);
        assert!(open_index_value(short, &moved).is_err());
        // Empty bodies (type and category entries) are sealed too.
        let k = type_key("T", 1);
        let e = seal_index_value(&k, Vec::new());
        assert_eq!(open_index_value(&k, &e).unwrap(), b"");
        assert!(open_index_value(&k, &[]).is_err());
        let msg = open_index_value(&type_key("T", 2), &e)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("type index entry"), "{msg}");
        for k in [
            id_key(Ulid(1)),
            stream_event_key("s", 1),
            category_key("c", 1),
            type_key("t", 1),
            tag_key("t", 1),
        ] {
            assert!(is_sealed_index_key(&k));
        }
        assert!(!is_sealed_index_key(&log_key(1)) && !is_sealed_index_key(&head_key()));
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(
            tag in prop_oneof![Just(LOG), Just(ID), Just(STREAM), Just(STREAM_EV), Just(CATEGORY), Just(TYPE), Just(TAG), Just(META), Just(REGISTRY), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut key = vec![tag];
            key.extend_from_slice(&rest);
            // Whatever a strict parser accepts is the canonical key of
            // what it returns, so two different keys never parse the same.
            if let Ok(p) = parse_log_key_strict(&key) {
                prop_assert_eq!(log_key(p), key.clone());
            }
            if let Ok(id) = parse_id_key(&key) {
                prop_assert_eq!(id_key(id), key.clone());
            }
            if let Ok(s) = parse_stream_meta_key(&key) {
                prop_assert_eq!(stream_key(&s), key.clone());
            }
            if let Ok((s, v)) = parse_stream_event_key(&key) {
                prop_assert_eq!(stream_event_key(&s, v), key.clone());
            }
            if let Ok((s, p)) = parse_positional_key(&key) {
                let rebuilt = match tag {
                    TYPE => type_key(&s, p),
                    TAG => tag_key(&s, p),
                    _ => category_key(&s, p),
                };
                prop_assert_eq!(rebuilt, key.clone());
            }
            let _ = parse_log_key(&key);
            let _ = parse_stream_key(&key);
            let _ = parse_meta_key(&key);
            let _ = parse_registry_key(&key);
            let _ = parse_registry_key_strict(&key);
            let _ = Index::Tag("x").parse_position(&key);
            let _ = parse_u64(&rest, "value");
            let _ = StreamMeta::decode(&rest);
            let _ = parse_tag_entry(&rest);
        }
    }
}
