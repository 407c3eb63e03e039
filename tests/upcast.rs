//! Schema evolution through the public API: events written at schema
//! versions 1 and 2 (by "older programs": stores opened with fewer
//! upcasters) read back at version 3 on every read path, against a model
//! upcast; writes use the current version; bad upcasters are typed errors.

use eskv::{
    DecideError, DomainEvent, Error, EventStore, EventStoreOptions, ExpectedVersion, MemoryStore,
    NewEvent, Projection, ProjectionOptions, ProjectionState, Query, ReadOptions,
    ReadStreamOptions, RecordedEvent, StartFrom, SubscriptionFilter, SubscriptionOptions,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Version 3 of the account events: cents with a currency.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Account {
    #[eskv(type = "Deposited", version = 3)]
    Deposited {
        #[tag("account")]
        account: String,
        cents: i64,
        currency: String,
    },
}

/// v1 `{"account", "amount"}` (whole euros) -> v2 `{"account", "cents"}`.
fn v1_to_v2(mut v: Value) -> eskv::Result<Value> {
    let amount = v["amount"]
        .as_i64()
        .ok_or_else(|| Error::invalid("v1 Deposited without an amount"))?;
    let o = v.as_object_mut().expect("object");
    o.remove("amount");
    o.insert("cents".into(), json!(amount * 100));
    Ok(v)
}

/// v2 -> v3: the currency, EUR for every old event.
fn v2_to_v3(mut v: Value) -> eskv::Result<Value> {
    v["currency"] = json!("EUR");
    Ok(v)
}

fn options(version: u32) -> EventStoreOptions {
    let mut o = EventStoreOptions::default();
    if version >= 2 {
        o = o.upcast_json("Deposited", 1, v1_to_v2);
    }
    if version >= 3 {
        o = o.upcast_json("Deposited", 2, v2_to_v3);
    }
    o
}

/// One write: the version of the program that wrote it, the account and a
/// value in that version's unit.
#[derive(Debug, Clone)]
struct Write {
    version: u32,
    account: u8,
    value: i64,
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    proptest::collection::vec(
        (1u32..=3, 0u8..3, -1000i64..1000).prop_map(|(version, account, value)| Write {
            version,
            account,
            value,
        }),
        1..24,
    )
}

/// The model: what version 3 says of a write.
fn model_cents(w: &Write) -> i64 {
    match w.version {
        1 => w.value * 100,
        _ => w.value,
    }
}

fn event_for(w: &Write) -> eskv::Result<NewEvent> {
    let account = format!("a{}", w.account);
    match w.version {
        1 => Ok(
            NewEvent::json("Deposited", &json!({"account": account, "amount": w.value}))?
                .with_tags([format!("account:{account}")]),
        ),
        2 => Ok(
            NewEvent::json("Deposited", &json!({"account": account, "cents": w.value}))?
                .with_tags([format!("account:{account}")]),
        ),
        _ => Account::Deposited {
            account,
            cents: w.value,
            currency: "EUR".into(),
        }
        .to_new_event(),
    }
}

/// Writes each event through a store of its version: v1 and v2 programs
/// sharing the KV store with today's.
async fn write_history(kv: &Arc<MemoryStore>, ws: &[Write]) -> [EventStore; 3] {
    let mut stores = Vec::new();
    for v in 1..=3 {
        stores.push(EventStore::open_with(kv.clone(), options(v)).await.unwrap());
    }
    for w in ws {
        let store = &stores[w.version as usize - 1];
        store
            .append_to_stream(
                &format!("acc-a{}", w.account),
                ExpectedVersion::Any,
                vec![event_for(w).unwrap()],
            )
            .await
            .unwrap();
    }
    stores.try_into().unwrap()
}

/// (position, account, cents) of events read at version 3; fails on any
/// event that is not version 3 with a currency.
fn seen(events: &[RecordedEvent]) -> Vec<(u64, String, i64)> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.schema_version(), 3, "{e:?}");
            match e.to_typed::<Account>().unwrap() {
                Account::Deposited {
                    account,
                    cents,
                    currency,
                } => {
                    assert_eq!(currency, "EUR");
                    (e.position, account, cents)
                }
            }
        })
        .collect()
}

fn model(ws: &[Write]) -> Vec<(u64, String, i64)> {
    ws.iter()
        .enumerate()
        .map(|(i, w)| (i as u64 + 1, format!("a{}", w.account), model_cents(w)))
        .collect()
}

struct Balances;

impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    async fn apply(&self, e: &RecordedEvent, state: &mut ProjectionState<'_>) -> eskv::Result<()> {
        let Account::Deposited { account, cents, .. } = e.to_typed::<Account>()?;
        let old: i64 = state.get_json(account.as_bytes()).await?.unwrap_or(0);
        state.put_json(account.as_bytes(), &(old + cents))
    }
}

async fn check_every_read_path(ws: Vec<Write>) {
    let kv = Arc::new(MemoryStore::new());
    let [_, _, store] = write_history(&kv, &ws).await;
    let want = model(&ws);
    let n = ws.len() as u64;

    // The log, forwards and backwards.
    let all = store.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(seen(&all.events), want);
    let back = store
        .read_all(ReadOptions::new().backwards())
        .await
        .unwrap();
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(seen(&back.events), rev);

    // A category.
    let cat = store
        .read_category("acc", ReadOptions::new())
        .await
        .unwrap();
    assert_eq!(seen(&cat.events), want);

    // Paged reads of the log.
    use futures::TryStreamExt;
    let paged: Vec<RecordedEvent> = store
        .read_all_paged(ReadOptions::new(), 4)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seen(&paged), want);

    for a in 0..3u8 {
        let acc = format!("a{a}");
        let mine: Vec<_> = want.iter().filter(|x| x.1 == acc).cloned().collect();
        // DCB query reads and streams.
        let q = Query::of(["Deposited"], vec![format!("account:{acc}")]);
        let r = store.read(&q, ReadOptions::new()).await.unwrap();
        assert_eq!(seen(&r.events), mine);
        let s = store
            .read_stream(&format!("acc-{acc}"), ReadStreamOptions::new())
            .await
            .unwrap();
        assert_eq!(seen(&s.events), mine);
        let ps: Vec<RecordedEvent> = store
            .read_paged(&q, ReadOptions::new(), 2)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(seen(&ps), mine);

        // A stream decider folds version 3 values.
        let balance: i64 = mine.iter().map(|x| x.2).sum();
        let decided = store
            .decide_stream(
                &format!("acc-{acc}"),
                |b: &mut i64, Account::Deposited { cents, .. }| *b += cents,
                |b| Err::<Vec<Account>, i64>(*b),
            )
            .await;
        match decided {
            Err(DecideError::Rejected(b)) => assert_eq!(b, balance),
            other => panic!("{other:?}"),
        }
    }

    // A subscription, consumed as a Stream.
    use futures::StreamExt;
    let sub = store
        .subscribe(SubscriptionOptions::new().filter(SubscriptionFilter::Category("acc".into())))
        .await
        .unwrap();
    let got: Vec<RecordedEvent> = sub.take(ws.len()).map(|e| e.unwrap()).collect().await;
    assert_eq!(seen(&got), want);

    // A projection.
    let p = Balances;
    let cp = store
        .catch_up_projection(&p, &ProjectionOptions::default())
        .await
        .unwrap();
    assert_eq!(cp, n);
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for (_, a, c) in &want {
        *sums.entry(a.clone()).or_default() += c;
    }
    let rm = store.read_model("balances");
    for (a, sum) in sums {
        assert_eq!(rm.get_json::<i64>(a.as_bytes()).await.unwrap(), Some(sum));
    }

    // What is stored is unchanged: a v1 program still reads v1 payloads.
    let v1 = EventStore::open(kv.clone()).await.unwrap();
    let raw = v1.read_all(ReadOptions::new()).await.unwrap();
    for (e, w) in raw.events.iter().zip(&ws) {
        assert_eq!(e.schema_version(), w.version);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn v1_and_v2_events_read_back_as_v3_on_every_path(ws in writes()) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check_every_read_path(ws));
    }
}

#[tokio::test]
async fn writes_use_the_current_version() {
    let store = EventStore::open_with(Arc::new(MemoryStore::new()), options(3))
        .await
        .unwrap();
    // Unversioned events are stamped with the current version...
    let e = NewEvent::json(
        "Deposited",
        &json!({"account": "a", "cents": 1, "currency": "EUR"}),
    )
    .unwrap();
    store.append(vec![e], None).await.unwrap();
    let r = store.read_all(ReadOptions::new()).await.unwrap();
    assert_eq!(r.events[0].schema_version(), 3);
    assert_eq!(r.events[0].metadata.extra[eskv::SCHEMA_VERSION_KEY], "3");
    // ...and an older one is refused, with nothing written.
    let old = NewEvent::json("Deposited", &json!({"amount": 1}))
        .unwrap()
        .with_schema_version(1);
    match store.append(vec![old], None).await {
        Err(Error::InvalidInput { message }) => {
            assert!(message.contains("schema version 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 1);
    // Types without upcasters are not stamped.
    store
        .append(vec![NewEvent::new("Other", b"x".to_vec())], None)
        .await
        .unwrap();
    let r = store.read_all(ReadOptions::after(1)).await.unwrap();
    assert!(r.events[0].metadata.extra.is_empty());
}

#[tokio::test]
async fn a_gap_in_the_upcasters_is_refused_at_open() {
    let opts = EventStoreOptions::default().upcast_json("Deposited", 2, Ok);
    match EventStore::open_with(Arc::new(MemoryStore::new()), opts).await {
        Err(Error::InvalidInput { message }) => {
            assert!(message.contains("from version 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failing_upcaster_is_a_typed_error_naming_the_event() {
    let kv = Arc::new(MemoryStore::new());
    let old = EventStore::open(kv.clone()).await.unwrap();
    old.append(
        vec![NewEvent::json("Deposited", &json!({"no": "amount"})).unwrap()],
        None,
    )
    .await
    .unwrap();
    let store = EventStore::open_with(kv, options(3)).await.unwrap();
    match store.read_all(ReadOptions::new()).await {
        Err(Error::Upcast {
            event_type,
            position,
            from_version,
            message,
        }) => {
            assert_eq!(
                (event_type.as_str(), position, from_version),
                ("Deposited", 1, 1)
            );
            assert!(message.contains("without an amount"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_old_event_without_upcasters_is_a_typed_decode_error() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    store
        .append(
            vec![NewEvent::json("Deposited", &json!({"amount": 1})).unwrap()],
            None,
        )
        .await
        .unwrap();
    let r = store.read_all(ReadOptions::new()).await.unwrap();
    let err = r.events[0].to_typed::<Account>().unwrap_err();
    assert!(
        matches!(
            err,
            eskv::DecodeError::OldVersion {
                found: 1,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("register upcasters"), "{err}");
    let _ = StartFrom::Beginning;
}

/// An event type that has never changed: schema version 1.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum Note {
    #[eskv(type = "Noted")]
    Noted { text: String },
}

/// The schema version belongs to the payload: metadata passed along with
/// a typed event (correlation, causation, often copied from an event that
/// was read) neither drops nor forges it.
#[tokio::test]
async fn metadata_passed_along_keeps_the_events_own_schema_version() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let deposited = Account::Deposited {
        account: "a".into(),
        cents: 5,
        currency: "EUR".into(),
    };
    // Metadata set after the typed event was built.
    let e = deposited
        .to_new_event()
        .unwrap()
        .with_metadata(eskv::Metadata::new().correlation_id("r-1"));
    assert_eq!(e.schema_version(), 3);
    store.append(vec![e], None).await.unwrap();
    let read = store.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(read[0].to_typed::<Account>().unwrap(), deposited);
    assert_eq!(read[0].metadata.correlation_id.as_deref(), Some("r-1"));

    // Metadata copied from that (version 3) event onto a version-1 event.
    let caused =
        NewEvent::typed(&Note::Noted { text: "x".into() }, read[0].metadata.clone()).unwrap();
    assert_eq!(caused.schema_version(), 1);
    store.append(vec![caused], None).await.unwrap();
    let read = store.read_all(ReadOptions::after(1)).await.unwrap().events;
    assert_eq!(read[0].schema_version(), 1, "{:?}", read[0].metadata);
    assert_eq!(
        read[0].to_typed::<Note>().unwrap(),
        Note::Noted { text: "x".into() }
    );

    // The same through a decider's metadata.
    let decider = store.decider(eskv::DecideOptions::new().metadata(read[0].metadata.clone()));
    let mut copied = eskv::Metadata::new();
    copied
        .extra
        .insert(eskv::SCHEMA_VERSION_KEY.into(), "9".into());
    let decider_forged = store.decider(eskv::DecideOptions::new().metadata(copied));
    for d in [decider, decider_forged] {
        d.decide_stream(
            "account-a",
            |_: &mut (), _: &Account| {},
            |_| Ok::<_, std::convert::Infallible>(vec![deposited.clone()]),
        )
        .await
        .unwrap();
    }
    for e in store
        .read_stream("account-a", ReadStreamOptions::new())
        .await
        .unwrap()
    {
        assert_eq!(e.schema_version(), 3, "{:?}", e.metadata);
    }
}

/// A typed event says its version even when it is 1: a store whose
/// upcasters reach a later version of that type refuses it (the program's
/// type is out of date) instead of stamping it as current.
#[tokio::test]
async fn a_typed_event_older_than_the_stores_version_is_refused() {
    let store = EventStore::open_with(
        Arc::new(MemoryStore::new()),
        EventStoreOptions::default().upcast_json("Noted", 1, Ok),
    )
    .await
    .unwrap();
    let e = Note::Noted { text: "x".into() }.to_new_event().unwrap();
    match store.append(vec![e], None).await {
        Err(Error::InvalidInput { message }) => {
            assert!(message.contains("schema version 1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 0);
}

/// Schema version 1 said explicitly or left unsaid is the same event to
/// an idempotent retry (typed events now say 1 where earlier releases left
/// it unsaid, so a retry across an upgrade sees the other spelling), and a
/// version said explicitly reads back exactly as written.
#[tokio::test]
async fn a_retry_with_version_one_said_or_unsaid_is_a_replay() {
    let store = EventStore::open(Arc::new(MemoryStore::new()))
        .await
        .unwrap();
    let unsaid = NewEvent::new("Noted", br#"{"text":"x"}"#.to_vec());
    let said = NewEvent::new("Noted", br#"{"text":"y"}"#.to_vec()).with_schema_version(1);
    let first = store
        .append(vec![unsaid.clone(), said.clone()], None)
        .await
        .unwrap();
    let read = store.read_all(ReadOptions::new()).await.unwrap().events;
    assert!(!read[0]
        .metadata
        .extra
        .contains_key(eskv::SCHEMA_VERSION_KEY));
    assert_eq!(read[1].metadata.extra[eskv::SCHEMA_VERSION_KEY], "1");
    // The retry spells each version the other way.
    let retry = vec![unsaid.with_schema_version(1), {
        let mut e = said;
        e.metadata.extra.remove(eskv::SCHEMA_VERSION_KEY);
        e
    }];
    assert_eq!(store.append(retry, None).await.unwrap(), first);
    assert_eq!(store.head().await.unwrap(), 2);
    // Another version is other content.
    let other = NewEvent::new("Noted", br#"{"text":"x"}"#.to_vec())
        .with_id(read[0].id)
        .with_schema_version(2);
    let mut second = NewEvent::new("Noted", br#"{"text":"y"}"#.to_vec()).with_id(read[1].id);
    second.metadata = read[1].metadata.clone();
    assert!(matches!(
        store.append(vec![other, second], None).await,
        Err(Error::IdempotencyViolation { .. })
    ));
}

/// A backup holds events as stored, whatever upcasters the store was
/// opened with: the export of a store opened with upcasters is the same
/// as without, and upcasting happens again on the restored store's reads.
#[tokio::test]
async fn an_export_holds_events_as_stored_not_upcast() {
    use eskv::export::{EventLine, LogPager};
    let kv = Arc::new(MemoryStore::new());
    let old = EventStore::open(kv.clone()).await.unwrap();
    let v1 = NewEvent::json("Deposited", &json!({"account": "a1", "amount": 5})).unwrap();
    old.append(vec![v1], None).await.unwrap();
    let lines = |store: EventStore| async move {
        let head = store.head().await.unwrap();
        let mut pager = LogPager::new(&store, head).await.unwrap();
        let mut out = Vec::new();
        loop {
            let page = pager.next_page().await.unwrap();
            if page.is_empty() {
                break out;
            }
            out.extend(page.iter().map(|e| EventLine::from_recorded(e).to_json()));
        }
    };
    let plain = lines(old).await;
    let upcasting = EventStore::open_with(kv.clone(), options(3)).await.unwrap();
    // Reads upcast...
    let read = upcasting.read_all(ReadOptions::new()).await.unwrap().events;
    assert_eq!(read[0].schema_version(), 3);
    // ...the export does not.
    let exported = lines(upcasting).await;
    assert_eq!(exported, plain);
    assert!(exported[0].contains(r#""amount":5"#), "{}", exported[0]);
}
