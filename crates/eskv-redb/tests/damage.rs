//! A damaged page in a real redb file: redb trusts page contents and can
//! panic on a damaged one. Every eskv operation on such a file must answer
//! `Error::Corrupt` naming the file (never a panic, never a backend error),
//! and no operation may make a readable file unreadable: a process killed
//! while it has the damaged file open (simulated by copying the file while
//! the store is open, which is what a SIGKILL leaves on disk) must leave a
//! file that opens and exports as much as before.

use eskv_core::verify::verify;
use eskv_core::{Error, EventStore, ExpectedVersion, NewEvent, ReadOptions};
use eskv_redb::RedbStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PAGE: usize = 4096;

async fn build(path: &Path) -> Vec<u8> {
    {
        let es = EventStore::open(Arc::new(RedbStore::open(path).await.unwrap()))
            .await
            .unwrap();
        for i in 0..400u64 {
            let e = NewEvent::new("Moved", vec![i as u8; 100]).with_tags([format!("t:{}", i % 13)]);
            es.append_to_stream(&format!("s-{}", i % 7), ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
    }
    // The last handle is gone; wait until the writer thread has closed it.
    for _ in 0..100 {
        match RedbStore::open(path).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    std::fs::read(path).unwrap()
}

/// What an export of the whole log sees: the number of events, or the error.
async fn export(path: &Path) -> Result<usize, String> {
    let p = path.to_path_buf();
    tokio::spawn(async move {
        let kv = RedbStore::open(&p).await?;
        let es = EventStore::open(Arc::new(kv)).await?;
        es.read_all(ReadOptions::new())
            .await
            .map(|r| r.events.len())
    })
    .await
    .map_err(|e| format!("panicked: {e}"))?
    .map_err(|e| e.to_string())
}

/// Checks that an operation's error is `Corrupt` and names the file.
fn check_error(
    what: &str,
    r: &eskv_core::Result<impl std::fmt::Debug>,
    file: &str,
    bad: &mut Vec<String>,
) {
    match r {
        Ok(_) => {}
        Err(Error::Corrupt { message, .. }) => {
            if message.contains("redb") && !message.contains(file) {
                bad.push(format!(
                    "{file}: {what}: Corrupt without the file name: {message}"
                ));
            }
        }
        Err(e) => bad.push(format!(
            "{file}: {what}: expected Error::Corrupt, got {e:?}"
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_is_corrupt_and_never_makes_the_file_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = build(&dir.path().join("clean.redb")).await;
    let pages = bytes.len() / PAGE;
    assert!(pages > 20, "the store should span many pages: {pages}");
    let mut wrong_errors = Vec::new();
    let mut lost = Vec::new();
    let (mut panicked_before, mut exportable) = (0, 0);
    for page in 1..pages {
        let name = format!("page-{page}.redb");
        let path = dir.path().join(&name);
        let mut damaged = bytes.clone();
        for b in &mut damaged[page * PAGE + 16..page * PAGE + 48] {
            *b ^= 0x5A;
        }
        std::fs::write(&path, &damaged).unwrap();
        let before = export(&path).await;
        if before.is_ok() {
            exportable += 1;
        }

        // Everything a tool does with the file, on one open handle.
        let crashed = dir.path().join(format!("crashed-{page}.redb"));
        let p = path.clone();
        let c = crashed.clone();
        let n = name.clone();
        let run = tokio::spawn(async move {
            let mut bad = Vec::new();
            let kv = match RedbStore::open(&p).await {
                Ok(kv) => kv,
                Err(e) => {
                    check_error("open", &Err::<(), eskv_core::Error>(e.into()), &n, &mut bad);
                    return bad;
                }
            };
            match EventStore::open(Arc::new(kv)).await {
                Err(e) => check_error("event store open", &Err::<(), _>(e), &n, &mut bad),
                Ok(es) => {
                    check_error("verify", &verify(&es).await, &n, &mut bad);
                    check_error(
                        "read_all",
                        &es.read_all(ReadOptions::new()).await,
                        &n,
                        &mut bad,
                    );
                    let e = NewEvent::new("Late", b"{}".to_vec());
                    check_error("append", &es.append(vec![e], None).await, &n, &mut bad);
                    // The process dies here, with the file open.
                    std::fs::copy(&p, &c).unwrap();
                }
            }
            bad
        })
        .await;
        match run {
            Ok(bad) => wrong_errors.extend(bad),
            Err(e) => {
                panicked_before += 1;
                wrong_errors.push(format!("{name}: a panic escaped: {e}"));
            }
        }
        // A file that exported before still exports after the crash.
        if before.is_ok() && crashed.exists() {
            if let Err(e) = export(&crashed).await {
                lost.push(format!(
                    "{name}: exported before, unreadable after a crash: {e}"
                ));
            }
        }
    }
    eprintln!(
        "{pages} pages damaged one at a time: {exportable} files exportable, \
         {} wrong errors, {panicked_before} escaped panics, {} files lost after a crash",
        wrong_errors.len(),
        lost.len()
    );
    assert!(wrong_errors.is_empty(), "{}", wrong_errors.join("\n"));
    assert!(lost.is_empty(), "{}", lost.join("\n"));
    assert!(exportable > 0);
}
