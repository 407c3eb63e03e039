//! Journals on disk stay bounded: once the data in a journal is flushed to
//! tables, the journal is deleted, whatever else the store holds (its
//! format marker included).

use eskv_core::KvStore;
use eskv_fjall::{Durability, FjallOptions, FjallStore};
use std::path::Path;

/// Bytes held by the journal files (`*.jnl`) directly under `dir`.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_journals_are_deleted_while_the_store_is_written() {
    const MB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    let options = FjallOptions::default().durability(Durability::None);
    let store = FjallStore::open_with(&path, options).await.unwrap();
    // 320 MiB of values, 4 MiB per commit: five journals' worth (fjall
    // starts a new journal past 64 MB), each flushed to tables long before
    // the end.
    // Incompressible values (a xorshift stream), as fjall compresses.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = move || -> Vec<u8> {
        (0..(256 << 10) / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect()
    };
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for commit in 0..80u32 {
        let mut t = store.begin().await.unwrap();
        for i in 0..16u32 {
            last = value();
            if first.is_empty() {
                first = last.clone();
            }
            t.put(format!("k{commit:04}-{i:02}").into_bytes(), last.clone());
        }
        t.commit().await.unwrap();
    }
    drop(store);
    let journals = journal_bytes(&path);
    // The journal being written, and at most one more being retired
    // (fjall's journals are a little over 64 MiB each).
    assert!(
        journals <= 130 * MB,
        "{} MiB of journals are left for 320 MiB written: flushed journals are kept",
        journals / MB
    );
    // Everything is still there after reopening.
    let store = FjallStore::open(&path).await.unwrap();
    let mut t = store.begin().await.unwrap();
    assert_eq!(t.get(b"k0079-15").await.unwrap(), Some(last));
    assert_eq!(t.get(b"k0000-00").await.unwrap(), Some(first));
}
