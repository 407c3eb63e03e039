//! Typed events through the public API: the derive's type names, tags and
//! per-variant payloads, a pluggable codec, decoding by stored type, and
//! serde for `NewEvent`/`RecordedEvent` in the CLI's line format.

use eskv::{
    DecodeError, DomainEvent, EventStore, MemoryStore, Metadata, NewEvent, PayloadCodec,
    ReadOptions, RecordedEvent, StreamRef, Ulid,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    #[serde(rename = "zip_code")]
    zip: String,
    city: String,
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Customer {
    #[eskv(type = "CustomerRegistered")]
    Registered {
        #[tag("customer")]
        id: String,
        name: String,
        #[tags("segment")]
        segments: Vec<String>,
    },
    /// A newtype variant: the payload is the inner value, with its own serde.
    #[eskv(type = "CustomerMoved")]
    Moved(Address),
    Pinged(#[tag] String, u32),
    Forgotten,
}

fn customer() -> impl Strategy<Value = Customer> {
    let s = "[a-z0-9é\"\\\\ ]{0,8}";
    let tag = "[a-z0-9]{1,8}";
    prop_oneof![
        (tag, s, proptest::collection::vec(tag, 0..3))
            .prop_map(|(id, name, segments)| { Customer::Registered { id, name, segments } }),
        (s, s).prop_map(|(zip, city)| Customer::Moved(Address { zip, city })),
        (tag, any::<u32>()).prop_map(|(t, n)| Customer::Pinged(t, n)),
        Just(Customer::Forgotten),
    ]
}

#[test]
fn payloads_are_the_variants_own_data() {
    let e = Customer::Registered {
        id: "c7".into(),
        name: "Ann".into(),
        segments: vec!["vip".into(), "b2b".into()],
    }
    .to_new_event()
    .unwrap();
    assert_eq!(e.event_type, "CustomerRegistered");
    assert_eq!(e.tags, ["customer:c7", "segment:b2b", "segment:vip"]);
    assert_eq!(
        e.data,
        br#"{"id":"c7","name":"Ann","segments":["vip","b2b"]}"#
    );

    let m = Customer::Moved(Address {
        zip: "1000".into(),
        city: "Bxl".into(),
    })
    .to_new_event()
    .unwrap();
    assert_eq!(m.data, br#"{"zip_code":"1000","city":"Bxl"}"#);
    assert!(m.tags.is_empty());

    let p = Customer::Pinged("host:1".into(), 3).to_new_event().unwrap();
    assert_eq!(
        (p.event_type.as_str(), p.tags.as_slice()),
        ("Pinged", &["host:1".to_string()][..])
    );
    assert_eq!(p.data, br#"["host:1",3]"#);

    let f = Customer::Forgotten.to_new_event().unwrap();
    assert_eq!(
        (f.event_type.as_str(), f.data.as_slice()),
        ("Forgotten", &b"{}"[..])
    );
    assert_eq!(
        Customer::EVENT_TYPES,
        ["CustomerRegistered", "CustomerMoved", "Pinged", "Forgotten"]
    );
}

#[tokio::test]
async fn unknown_and_undecodable_events_are_typed_errors() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    store
        .append(
            vec![
                NewEvent::new("CustomerDeleted", b"{}".to_vec()),
                NewEvent::new("CustomerMoved", br#"{"zip":1}"#.to_vec()),
            ],
            None,
        )
        .await
        .unwrap();
    let read = store.read_all(ReadOptions::new()).await.unwrap().events;
    match read[0].to_typed::<Customer>().unwrap_err() {
        DecodeError::UnknownType {
            event_type,
            position,
            expected,
            ..
        } => {
            assert_eq!(
                (event_type.as_str(), position),
                ("CustomerDeleted", Some(1))
            );
            assert_eq!(expected, Customer::EVENT_TYPES);
        }
        other => panic!("{other:?}"),
    }
    let err = read[1].to_typed::<Customer>().unwrap_err();
    assert!(matches!(
        err,
        DecodeError::Payload {
            position: Some(2),
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains("'CustomerMoved' at position 2"), "{msg}");
    // Into eskv::Error for `?` in eskv::Result code.
    let e: eskv::Error = err.into();
    assert!(matches!(e, eskv::Error::InvalidInput { .. }));
}

/// A non-JSON serde format, plugged in with `#[eskv(codec = ...)]`.
struct Postcard;
impl PayloadCodec for Postcard {
    fn encode<T: Serialize + ?Sized>(value: &T) -> eskv::Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| eskv::Error::invalid(e.to_string()))
    }
    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> eskv::Result<T> {
        postcard::from_bytes(bytes).map_err(|e| eskv::Error::invalid(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[eskv(codec = Postcard)]
enum Sensor {
    Measured {
        #[tag("sensor")]
        id: Ulid,
        celsius: i16,
    },
}

#[tokio::test]
async fn a_custom_codec_round_trips() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let id = Ulid::generate();
    let e = Sensor::Measured { id, celsius: -4 };
    let new = e.to_new_event().unwrap();
    assert_eq!(new.tags, [format!("sensor:{id}")]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&new.data).is_err(),
        "not JSON"
    );
    store.append(vec![new], None).await.unwrap();
    let back = store.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(back[0].to_typed::<Sensor>().unwrap(), e);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any value appended and read back decodes to itself, with the
    /// declared type and tags.
    #[test]
    fn typed_events_round_trip_through_the_store(events in proptest::collection::vec(customer(), 1..8)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = EventStore::open(Arc::new(MemoryStore::new())).await.unwrap();
            let new: Vec<NewEvent> = events.iter().map(|e| e.to_new_event().unwrap()).collect();
            store.append(new, None).await.unwrap();
            let read = store.read_all(ReadOptions::new()).await.unwrap().events;
            for (r, e) in read.iter().zip(&events) {
                assert_eq!(r.event_type, e.event_type());
                let mut tags = e.tags();
                tags.sort();
                tags.dedup();
                assert_eq!(r.tags, tags);
                assert_eq!(&r.to_typed::<Customer>().unwrap(), e);
            }
            assert_eq!(read.len(), events.len());
        });
    }

    /// serde of events: what is serialized deserializes to the same event,
    /// whatever the payload bytes.
    #[test]
    fn event_serde_round_trips(
        data in proptest::collection::vec(any::<u8>(), 0..24),
        json in "[ -~]{0,12}",
        tags in proptest::collection::btree_set("[a-z:0-9]{1,6}", 0..3),
        corr in proptest::option::of("[a-z0-9-]{0,6}"),
        stream in proptest::option::of(("[a-z]{1,5}", 1u64..9)),
        ms in 0u64..4_000_000_000_000,
    ) {
        for payload in [data.clone(), json.clone().into_bytes(), serde_json::to_vec(&json).unwrap()] {
            let mut meta = Metadata::new();
            meta.correlation_id = corr.clone();
            let new = NewEvent::new("T", payload.clone()).with_tags(tags.iter().cloned()).with_metadata(meta.clone());
            let line = serde_json::to_string(&new).unwrap();
            prop_assert!(!line.contains('\n'));
            let back: NewEvent = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(&back, &new);

            let rec = RecordedEvent {
                position: 9,
                id: new.id,
                event_type: "T".into(),
                tags: new.tags.clone(),
                data: payload,
                metadata: meta,
                recorded_at_ms: ms,
                stream: stream.clone().map(|(stream_id, version)| StreamRef { stream_id, version }),
                personal: None,
            };
            let line = serde_json::to_string(&rec).unwrap();
            let back: RecordedEvent = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(back, rec);
        }
    }
}

#[test]
fn recorded_event_serializes_like_the_cli_export() {
    // The exact line of eskv-cli's `canonical_line` test (crates/eskv-cli/src/line.rs).
    let e = RecordedEvent {
        position: 7,
        id: Ulid::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap(),
        event_type: "OrderPlaced".into(),
        tags: vec!["order:1".into()],
        data: br#"{"b": 1,"a":2.50}"#.to_vec(),
        metadata: Metadata::new().correlation_id("c").with("k", "v"),
        recorded_at_ms: 1_700_000_000_123,
        stream: Some(StreamRef {
            stream_id: "order-1".into(),
            version: 2,
        }),
        personal: None,
    };
    let line = serde_json::to_string(&e).unwrap();
    assert_eq!(
        line,
        r#"{"position":7,"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","type":"OrderPlaced","stream":"order-1","version":2,"tags":["order:1"],"data":{"b": 1,"a":2.50},"metadata":{"correlation_id":"c","extra":{"k":"v"}},"recorded_at":"2023-11-14T22:13:20.123Z"}"#
    );
    let text = RecordedEvent {
        data: b"plain".to_vec(),
        ..e.clone()
    };
    assert!(serde_json::to_string(&text)
        .unwrap()
        .contains(r#""data_text":"plain""#));
    let bin = RecordedEvent {
        data: vec![0xff],
        ..e
    };
    assert!(serde_json::to_string(&bin)
        .unwrap()
        .contains(r#""data_base64":"/w==""#));
}

#[test]
fn event_serde_input_errors() {
    let two = serde_json::from_str::<NewEvent>(r#"{"type":"A","data":1,"data_text":"x"}"#);
    assert!(two.unwrap_err().to_string().contains("at most one"));
    let typo = serde_json::from_str::<NewEvent>(r#"{"type":"A","typo":1}"#);
    assert!(typo.unwrap_err().to_string().contains("unknown field"));
    let no_pos = serde_json::from_str::<RecordedEvent>(
        r#"{"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","type":"A","recorded_at":"2023-11-14T22:13:20.123Z"}"#,
    );
    assert!(no_pos
        .unwrap_err()
        .to_string()
        .contains("missing field `position`"));
    // A NewEvent from an exported line keeps id, type, tags, payload and metadata.
    let e: NewEvent = serde_json::from_str(
        r#"{"position":7,"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","type":"A","stream":"s-1","version":2,"tags":["b","a"],"data":null,"recorded_at":"2023-11-14T22:13:20.123Z"}"#,
    )
    .unwrap();
    assert_eq!(
        (e.tags.as_slice(), e.data.as_slice()),
        (&["a".to_string(), "b".to_string()][..], &b"null"[..])
    );
    let fresh: NewEvent = serde_json::from_str(r#"{"type":"A"}"#).unwrap();
    assert_eq!(fresh.data, b"{}");
}

mod renamed {
    // `#[eskv(crate = ...)]` for a renamed or re-exported eskv.
    pub use eskv as my_eskv;
}

#[derive(Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[eskv(crate = renamed::my_eskv, type = "Noted")]
struct Noted {
    #[tag("topic")]
    topic: String,
}

#[test]
fn a_struct_is_one_event_type_and_the_crate_path_is_configurable() {
    let e = Noted { topic: "t".into() }.to_new_event().unwrap();
    assert_eq!(
        (e.event_type.as_str(), e.tags.as_slice()),
        ("Noted", &["topic:t".to_string()][..])
    );
    assert_eq!(e.data, br#"{"topic":"t"}"#);
    assert_eq!(
        Noted::decode_payload("Noted", &e.data).unwrap(),
        Noted { topic: "t".into() }
    );
    assert!(Noted::decode_payload("Other", &e.data).is_err());
}
