//! Backups, restores and copies of stores holding personal data, through
//! `eskv::export`, on the in-memory and redb backends: sealed parts and
//! wrapped keys travel, plaintext never does, `forget` keeps working, and
//! a wrong store key is refused with nothing written.

use eskv::export::{self, ExportLine, ExportWriter, Header, Importer, LogPager};
use eskv::{
    Error, EventStore, EventStoreOptions, ExpectedVersion, ForgetOutcome, KvStore, MemoryStore,
    NewEvent, ReadOptions, RecordedEvent, RedbStore, StoreKey,
};
use std::path::Path;
use std::sync::Arc;

const ADA: &str = "Ada Lovelace, ada@example.org";
const GRACE: &str = "Grace Hopper, grace@example.org";

/// A fresh store of `backend` ("memory" or "redb", a file in `dir`).
async fn kv(backend: &str, dir: &Path, name: &str) -> Arc<dyn KvStore> {
    match backend {
        "memory" => Arc::new(MemoryStore::new()),
        _ => Arc::new(RedbStore::open(dir.join(name)).await.unwrap()),
    }
}

async fn open(kv: Arc<dyn KvStore>, key: Option<&StoreKey>) -> EventStore {
    let mut o = EventStoreOptions::default();
    if let Some(k) = key {
        o = o.store_key(k.clone());
    }
    EventStore::open_with(kv, o).await.unwrap()
}

/// user-1 and user-2 each have personal data in a stream; user-2 is
/// forgotten; one event has none.
async fn fill(es: &EventStore) {
    for (s, subject, text) in [("user-1", "user-1", ADA), ("user-2", "user-2", GRACE)] {
        es.append_to_stream(
            s,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Registered", br#"{"plan":"pro"}"#.to_vec())
                .tag(format!("user:{s}"))
                .with_personal_data(subject, text.as_bytes().to_vec())],
        )
        .await
        .unwrap();
    }
    es.append(vec![NewEvent::new("Tick", b"{}".to_vec())], None)
        .await
        .unwrap();
    es.forget("user-2").await.unwrap();
}

/// `eskv export` through the library: a backup with keys.
async fn export_to(es: &EventStore, file: &Path) {
    let header = Header::of(es).await.unwrap();
    let f = std::fs::File::create(file).unwrap();
    let mut w = ExportWriter::new(std::io::BufWriter::new(f), &header, Some(es.clone())).unwrap();
    let mut pager = LogPager::new(es, header.head).await.unwrap();
    loop {
        let page = pager.next_page().await.unwrap();
        if page.is_empty() {
            break;
        }
        w.events(&page).await.unwrap();
    }
    w.finish().unwrap();
}

/// `eskv import` through the library.
async fn import_from(es: &EventStore, file: &Path) -> eskv::Result<()> {
    let mut imp = Importer::new(es.clone()).await?;
    let res = async {
        for l in std::fs::read_to_string(file).unwrap().lines() {
            match ExportLine::parse(l).map_err(Error::invalid)? {
                ExportLine::Header(h) => imp.header(&h).await?,
                ExportLine::Key(k) => imp.push_key(&k)?,
                ExportLine::Event(e) => imp.push(&e).await?,
                ExportLine::Trailer(end) => imp.trailer(&end)?,
            }
        }
        imp.finish().await.map(|_| ())
    }
    .await;
    if res.is_err() {
        assert!(imp.abandon().await, "a failed import wrote events");
    }
    res
}

async fn log(es: &EventStore) -> Vec<RecordedEvent> {
    es.read_all(ReadOptions::new()).await.unwrap().events
}

fn personal(e: &RecordedEvent) -> Option<&[u8]> {
    e.personal.as_ref().and_then(|p| p.bytes())
}

/// The restored store reads like the source, and `forget` works in it.
async fn check_restored(src: &EventStore, dst: &EventStore) {
    let (a, b) = (log(src).await, log(dst).await);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.position, x.id, &x.data, &x.tags),
            (y.position, y.id, &y.data, &y.tags)
        );
        assert_eq!(x.personal, y.personal, "at {}", x.position);
    }
    assert_eq!(personal(&b[0]), Some(ADA.as_bytes()));
    assert!(b[1].personal.as_ref().unwrap().is_erased());
    assert_eq!(
        dst.forget("user-2").await.unwrap(),
        ForgetOutcome::AlreadyForgotten
    );
    assert!(matches!(
        dst.forget("user-1").await.unwrap(),
        ForgetOutcome::Forgotten { .. }
    ));
    assert!(log(dst).await[0].personal.as_ref().unwrap().is_erased());
    // The source is untouched by what happens to its restore.
    assert_eq!(personal(&log(src).await[0]), Some(ADA.as_bytes()));
    // New personal data for a restored subject gets a new key generation.
    dst.append(
        vec![NewEvent::new("Renamed", b"{}".to_vec())
            .with_personal_data("user-1", b"A. L.".to_vec())],
        None,
    )
    .await
    .unwrap();
    let after = log(dst).await;
    assert_eq!(personal(after.last().unwrap()), Some(&b"A. L."[..]));
    assert!(after[0].personal.as_ref().unwrap().is_erased());
    let v = eskv::verify::verify(dst).await.unwrap();
    assert!(v.is_clean(), "{v}");
}

async fn backup_and_restore(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate();
    let src = open(kv(backend, dir.path(), "src.redb").await, Some(&key)).await;
    fill(&src).await;
    let file = dir.path().join("backup.jsonl");
    export_to(&src, &file).await;

    // No plaintext in the file; the sealed part and user-1's wrapped key are.
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    for secret in [ADA, GRACE, "Ada", "Grace", "example.org"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the export"
        );
    }
    assert!(text.contains(r#""sealed":{"generation":1"#), "{text}");
    assert!(text.contains(r#"{"eskv_subject_key":{"subject":"user-1","generation":1,"nonce""#));
    assert!(text.contains(r#""personal":{"subject":"user-2","erased":true}"#));
    assert!(text
        .contains(r#"{"eskv_subject_key":{"subject":"user-2","generation":1,"forgotten":true}}"#));

    // A wrong store key, and none: typed errors, nothing written.
    for wrong in [Some(StoreKey::generate()), None] {
        let es = open(kv(backend, dir.path(), "wrong.redb").await, wrong.as_ref()).await;
        let err = import_from(&es, &file).await.unwrap_err();
        assert!(matches!(err, Error::WrongStoreKey { .. }), "{err:?}");
        assert_eq!(es.head().await.unwrap(), 0);
        assert!(es.import_in_progress().await.unwrap().is_none());
        assert!(es.event_types().await.unwrap().is_empty());
        assert_eq!(
            es.subject_keys(&["user-1", "user-2"]).await.unwrap(),
            [None, None]
        );
        drop(es);
        let _ = std::fs::remove_file(dir.path().join("wrong.redb"));
    }

    let dst = open(kv(backend, dir.path(), "dst.redb").await, Some(&key)).await;
    import_from(&dst, &file).await.unwrap();
    check_restored(&src, &dst).await;
}

#[tokio::test]
async fn backup_restores_personal_data_on_memory() {
    backup_and_restore("memory").await;
}

#[tokio::test]
async fn backup_restores_personal_data_on_redb() {
    backup_and_restore("redb").await;
}

async fn copy_rewraps(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (StoreKey::generate(), StoreKey::generate());
    let src = open(kv(backend, dir.path(), "src.redb").await, Some(&k1)).await;
    fill(&src).await;
    let dst = open(kv(backend, dir.path(), "dst.redb").await, Some(&k2)).await;
    let header = Header::of(&src).await.unwrap();
    let mut imp = Importer::new(dst.clone())
        .await
        .unwrap()
        .keys_from(src.clone());
    let copied = export::copy(&src, &mut imp, &header, |_| {}).await.unwrap();
    let (read_back, _) = export::digest_store(&dst, |_| {}).await.unwrap();
    assert_eq!(copied, read_back);
    // The key was re-wrapped: it opens under k2, not k1.
    let k = dst.subject_keys(&["user-1"]).await.unwrap()[0]
        .clone()
        .unwrap();
    k.check(&k2).unwrap();
    assert!(matches!(k.check(&k1), Err(Error::WrongStoreKey { .. })));
    check_restored(&src, &dst).await;
}

#[tokio::test]
async fn copy_rewraps_keys_for_another_store_key_on_memory() {
    copy_rewraps("memory").await;
}

#[tokio::test]
async fn copy_rewraps_keys_for_another_store_key_on_redb() {
    copy_rewraps("redb").await;
}

#[tokio::test]
async fn import_refuses_plaintext_and_keyless_sealed_parts() {
    let key = StoreKey::generate();
    let src = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    fill(&src).await;
    let sealed = src.sealed_reads().await.unwrap();
    let events = log(&sealed).await;
    assert!(events[0].personal.as_ref().unwrap().sealed_part().is_some());
    // Without its subject's key the sealed part is refused, whole.
    let dst = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    let err = dst.import(&events[..1]).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { message } if message.contains("key is not in this store")),
        "{err:?}"
    );
    assert_eq!(dst.head().await.unwrap(), 0);
    // In clear: refused.
    let opened = log(&src).await;
    let err = dst.import(&opened[..1]).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { message } if message.contains("in clear")),
        "{err:?}"
    );
    // A key forgotten in the target never comes back.
    let keys = src.subject_keys(&["user-1", "user-2"]).await.unwrap();
    let keys: Vec<_> = keys.into_iter().flatten().collect();
    dst.import_subject_keys(&keys).await.unwrap();
    dst.import_subject_keys(&keys).await.unwrap(); // the same again: a no-op
    dst.import(&events[..1]).await.unwrap();
    dst.forget("user-1").await.unwrap();
    let err = dst.import_subject_keys(&keys[..1]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(log(&dst).await[0].personal.as_ref().unwrap().is_erased());
}

/// serde on events speaks the export format's personal parts: an exported
/// line with a sealed or erased part reads back as a `RecordedEvent` with
/// that part; an opened part is written as its subject alone, never in
/// clear, and reading that back is a clear error; a new event with a
/// personal part is never serialized.
#[tokio::test]
async fn serde_on_events_carries_personal_parts_never_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate();
    let es = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    fill(&es).await;
    let file = dir.path().join("backup.jsonl");
    export_to(&es, &file).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let mut parts = Vec::new();
    for l in text.lines() {
        if let Ok(ExportLine::Event(_)) = ExportLine::parse(l) {
            let e: RecordedEvent = serde_json::from_str(l).expect("an export line is an event");
            if let Some(p) = &e.personal {
                parts.push((
                    p.subject().to_owned(),
                    p.sealed_part().is_some(),
                    p.is_erased(),
                ));
            }
            // And it writes back the same personal part.
            let again = serde_json::to_string(&e).unwrap();
            let back: RecordedEvent = serde_json::from_str(&again).unwrap();
            assert_eq!(back, e);
        }
    }
    assert_eq!(
        parts,
        [
            ("user-1".into(), true, false),
            ("user-2".into(), false, true)
        ]
    );

    // An opened part: its subject, not its bytes.
    let opened = log(&es).await.remove(0);
    assert_eq!(personal(&opened), Some(ADA.as_bytes()));
    let line = serde_json::to_string(&opened).unwrap();
    assert!(!line.contains("Ada"), "{line}");
    assert!(
        line.contains(r#""personal":{"subject":"user-1"}"#),
        "{line}"
    );
    let err = serde_json::from_str::<RecordedEvent>(&line).unwrap_err();
    assert!(err.to_string().contains("no content"), "{err}");

    // A new event with a personal part.
    let new = NewEvent::new("Registered", b"{}".to_vec()).with_personal_data("user-3", ADA);
    let err = serde_json::to_string(&new).unwrap_err();
    assert!(err.to_string().contains("personal part"), "{err}");
    let err = serde_json::from_str::<NewEvent>(&line).unwrap_err();
    assert!(err.to_string().contains("personal part"), "{err}");
}

/// The library's importer refuses an export file cut short: a header that
/// promised events whose trailer never came is an error at `finish`, and
/// the store is never taken for a complete import.
#[tokio::test]
async fn the_importer_refuses_a_file_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate();
    let src = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    fill(&src).await;
    let file = dir.path().join("backup.jsonl");
    export_to(&src, &file).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Everything but the trailer.
    let dst = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    let mut imp = Importer::new(dst.clone()).await.unwrap();
    for l in &lines[..lines.len() - 1] {
        match ExportLine::parse(l).unwrap() {
            ExportLine::Header(h) => imp.header(&h).await.unwrap(),
            ExportLine::Key(k) => imp.push_key(&k).unwrap(),
            ExportLine::Event(e) => imp.push(&e).await.unwrap(),
            ExportLine::Trailer(_) => unreachable!("the trailer was cut"),
        }
    }
    match imp.finish().await {
        Err(Error::InvalidInput { message }) => {
            assert!(message.contains("cut short"), "{message}")
        }
        other => panic!("a file without its trailer was imported: {other:?}"),
    }
    // Nothing taken for complete: either nothing was written (the
    // importer writes in chunks) or what was is marked unfinished.
    let (head, mark) = (
        dst.head().await.unwrap(),
        dst.import_in_progress().await.unwrap(),
    );
    assert!(head == 0 || mark.is_some(), "head {head}, no mark");
    // The whole file goes through.
    let whole = open(Arc::new(MemoryStore::new()), Some(&key)).await;
    import_from(&whole, &file).await.unwrap();
    assert!(whole.import_in_progress().await.unwrap().is_none());
}
