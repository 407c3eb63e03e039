//! Torn journal writes. fjall commits a batch as one append to its journal
//! followed by a sync, and every acknowledged append was synced first, so
//! what a crash or power loss can leave is the synced journal plus part of
//! the one batch that was being written. This test builds a store with
//! acknowledged appends of varied sizes, then for every batch boundary
//! makes the images a crash during the next batch can leave:
//!
//! - `prefix`: the next batch cut at a random byte (the disk wrote it in
//!   order and stopped), or complete (written, but the process died
//!   before the acknowledgement);
//! - `sectors`: a random subset of the next batch's 512-byte sectors
//!   written, the others still zero (the disk wrote them out of order).
//!
//! Every `prefix` image must reopen with `verify` clean, every append
//! before the torn one present at its positions, the torn one all there or
//! all absent, nothing else. A `sectors` image must do the same or be
//! refused with `Error::Corrupt`: when the batch's end marker survived but
//! a sector before it did not, the batch's checksum fails and fjall
//! refuses to guess whether it was acknowledged. Never a panic.

use eskv_core::verify::verify;
use eskv_core::{EventStore, ExpectedVersion, NewEvent, ReadOptions, Ulid};
use eskv_fjall::FjallStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal: the highest-numbered `*.jnl` file in the store directory.
fn journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        })
        .expect("a journal file")
}

/// Where the written part of the journal ends. fjall preallocates the
/// file (zeros), and every batch ends with a nonzero trailer.
fn written_len(journal: &Path) -> usize {
    use std::io::Read;
    let mut head = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(journal).unwrap();
    let n = f.read(&mut head).unwrap();
    let end = head[..n].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(end < n, "the test's journal outgrew the 1 MiB it reads");
    end
}

/// Copies a store directory, except its journals (the test writes those).
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &target);
        } else if target.extension().is_none_or(|x| x != "jnl") {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

struct Append {
    ids: Vec<Ulid>,
    first: u64,
    /// Journal length once it was acknowledged.
    end: usize,
}

#[derive(Debug, Default)]
struct Figures {
    images: u64,
    refused_corrupt: u64,
    torn_present: u64,
    torn_absent: u64,
}

/// Reopens one image and checks it; `Ok(false)` when it was refused as
/// corrupt (allowed only when `may_refuse`).
async fn check_image(
    name: &str,
    dir: &Path,
    appends: &[Append],
    durable: usize,
    may_refuse: bool,
    f: &mut Figures,
) {
    f.images += 1;
    let kv = match FjallStore::open(dir).await {
        Ok(kv) => kv,
        Err(eskv_core::KvError::Corrupt { message, .. }) if may_refuse => {
            assert!(message.contains("journal"), "{name}: {message}");
            f.refused_corrupt += 1;
            return;
        }
        Err(e) => panic!("{name}: the image does not reopen: {e}"),
    };
    let es = EventStore::open(Arc::new(kv)).await.expect("event store");
    let report = verify(&es).await.expect("verify");
    assert!(report.is_clean(), "{name}: {report}");
    let all = es.read_all(ReadOptions::new()).await.expect("read");
    let at: HashMap<Ulid, u64> = all.events.iter().map(|e| (e.id, e.position)).collect();
    let mut explained = 1; // the Base event
    for (i, a) in appends.iter().enumerate() {
        let present: Vec<Option<u64>> = a.ids.iter().map(|id| at.get(id).copied()).collect();
        let n = present.iter().flatten().count();
        if i < durable {
            for (j, p) in present.iter().enumerate() {
                assert_eq!(*p, Some(a.first + j as u64), "{name}: append {i} lost");
            }
        } else if i == durable {
            assert!(
                n == 0 || n == a.ids.len(),
                "{name}: torn append partly visible ({n} of {})",
                a.ids.len()
            );
            if n == 0 {
                f.torn_absent += 1;
            } else {
                f.torn_present += 1;
            }
        } else {
            assert_eq!(n, 0, "{name}: append {i} after the torn one is present");
        }
        explained += n as u64;
    }
    assert_eq!(
        explained, all.consistent_through,
        "{name}: events nobody appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_journal_tails_leave_a_consistent_store() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("store");
    let crashed = root.path().join("crashed");
    let mut appends = Vec::new();
    let start;
    {
        let es = EventStore::open(Arc::new(FjallStore::open(&path).await.unwrap()))
            .await
            .unwrap();
        es.append(vec![NewEvent::new("Base", vec![])], None)
            .await
            .unwrap();
        start = written_len(&journal(&path));
        for i in 0..24u64 {
            let n = 1 + i % 4;
            // Payloads from 40 bytes to 3 KB: batches span one to many
            // sectors.
            let size = 40 + (i as usize * 397) % 3000;
            let events: Vec<NewEvent> = (0..n)
                .map(|j| {
                    NewEvent::new("Tick", vec![(i + j) as u8 | 1; size])
                        .with_tags([format!("t:{i}")])
                })
                .collect();
            let ids = events.iter().map(|e| e.id).collect();
            let r = if i % 2 == 0 {
                es.append(events, None).await
            } else {
                es.append_to_stream(&format!("s-{}", i % 3), ExpectedVersion::Any, events)
                    .await
            }
            .unwrap();
            appends.push(Append {
                ids,
                first: r.first_position,
                end: written_len(&journal(&path)),
            });
        }
        // What a SIGKILL now would leave (the journal's written part).
        copy(&path, &crashed);
        let jnl = journal(&path);
        let written = std::fs::read(&jnl).unwrap()[..appends.last().unwrap().end].to_vec();
        std::fs::write(crashed.join(jnl.file_name().unwrap()), written).unwrap();
    }
    let jnl = journal(&crashed);
    let full = std::fs::read(&jnl).unwrap();
    let mut rng = 0x7043_u64;
    let mut f = Figures::default();
    for k in 0..appends.len() {
        let from = if k == 0 { start } else { appends[k - 1].end };
        let to = appends[k].end;
        for (mode, variant) in [("prefix", 0), ("prefix", 1), ("sectors", 2), ("sectors", 3)] {
            let mut image = full[..to].to_vec();
            for b in &mut image[from..] {
                *b = 0;
            }
            if mode == "prefix" {
                let cut = match variant {
                    0 => from + (xorshift(&mut rng) as usize % (to - from)),
                    _ => to,
                };
                image[from..cut].copy_from_slice(&full[from..cut]);
            } else {
                let mut s = from - from % 512;
                while s < to {
                    let e = (s + 512).min(to);
                    if xorshift(&mut rng).is_multiple_of(2) {
                        let lo = s.max(from);
                        image[lo..e].copy_from_slice(&full[lo..e]);
                    }
                    s = e;
                }
            }
            let name = format!("append {k}, {mode} #{variant}");
            let dir = root.path().join(format!("image-{k}-{variant}"));
            copy(&crashed, &dir);
            std::fs::write(dir.join(jnl.file_name().unwrap()), &image).unwrap();
            check_image(&name, &dir, &appends, k, mode == "sectors", &mut f).await;
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("torn journal tails: {f:?}");
    assert!(f.torn_present > 0 && f.torn_absent > 0, "{f:?}");
}
