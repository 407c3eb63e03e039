//! Torn and failed writes below redb: a `StorageBackend` that fails a write
//! (after applying only a prefix of it: a torn write) or an fsync after N
//! operations. The append in flight must return an error, never panic; the
//! poisoned store keeps answering with errors; and every image the storage
//! can be left in must reopen as a consistent store:
//!
//! - `live`: everything written before the failure (the process died, the
//!   OS kept its page cache);
//! - `durable`: only what was fsynced (power loss);
//! - `torn`: the durable image plus a random subset, in order, of the
//!   writes issued since the last fsync, some of them only in part (a
//!   random subset of their 512-byte sectors): power loss with the disk
//!   having persisted some of the unsynced writes.
//!
//! In each: `verify` is clean, every acknowledged append is present at its
//! positions, the failed appends are all there or all absent, and no event
//! exists that was not appended.

use eskv_core::verify::verify;
use eskv_core::{EventStore, ExpectedVersion, NewEvent, ReadOptions, Ulid};
use eskv_redb::redb::StorageBackend;
use eskv_redb::{Durability, RedbOptions, RedbStore};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// The first write at or after the trigger applies half its bytes and
    /// fails.
    Write,
    /// The first fsync at or after the trigger fails (nothing is synced).
    Sync,
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    since_sync: Vec<Op>,
    ops: u64,
    trigger: Option<(u64, Fail)>,
    failed: bool,
}

/// Storage in memory with a fault trigger. Clones share the storage.
#[derive(Debug, Clone, Default)]
struct FaultBackend(Arc<Mutex<State>>);

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

fn apply(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, data) => {
            let off = *off as usize;
            if image.len() < off + data.len() {
                image.resize(off + data.len(), 0);
            }
            image[off..off + data.len()].copy_from_slice(data);
        }
        Op::SetLen(n) => image.resize(*n as usize, 0),
    }
}

impl FaultBackend {
    fn from_image(image: Vec<u8>) -> Self {
        FaultBackend(Arc::new(Mutex::new(State {
            durable: image.clone(),
            live: image,
            ..State::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ops(&self) -> u64 {
        self.state().ops
    }

    fn arm(&self, after: u64, fail: Fail) {
        let mut s = self.state();
        s.trigger = Some((s.ops + after, fail));
    }

    fn failed(&self) -> bool {
        self.state().failed
    }

    /// Counts an operation; true when it must fail.
    fn fires(s: &mut State, kind: Fail) -> bool {
        s.ops += 1;
        if s.failed {
            return true; // the disk stays gone
        }
        if let Some((at, fail)) = s.trigger {
            if fail == kind && s.ops >= at {
                s.failed = true;
                return true;
            }
        }
        false
    }

    fn images(&self, rng: &mut u64, torn: usize) -> Vec<(String, Vec<u8>)> {
        let s = self.state();
        let mut out = vec![
            ("live".to_string(), s.live.clone()),
            ("durable".to_string(), s.durable.clone()),
        ];
        for k in 0..torn {
            let mut image = s.durable.clone();
            let mut kept = 0;
            for op in &s.since_sync {
                match (xorshift(rng) % 4, op) {
                    (0 | 1, _) => {}
                    // Some 512-byte sectors of the write reached the disk.
                    (2, Op::Write(off, data)) => {
                        for (i, sector) in data.chunks(512).enumerate() {
                            if xorshift(rng).is_multiple_of(2) {
                                apply(
                                    &mut image,
                                    &Op::Write(off + 512 * i as u64, sector.to_vec()),
                                );
                            }
                        }
                        kept += 1;
                    }
                    _ => {
                        apply(&mut image, op);
                        kept += 1;
                    }
                }
            }
            out.push((
                format!("torn#{k} ({kept} of {} unsynced ops)", s.since_sync.len()),
                image,
            ));
        }
        out
    }
}

impl StorageBackend for FaultBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.state();
        let off = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = s
            .live
            .get(off..off + out.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        if s.failed {
            return Err(injected("set_len"));
        }
        let op = Op::SetLen(len);
        apply(&mut s.live, &op);
        s.since_sync.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state();
        if Self::fires(&mut s, Fail::Sync) {
            return Err(injected("fsync"));
        }
        s.durable = s.live.clone();
        s.since_sync.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        let was_failed = s.failed;
        if Self::fires(&mut s, Fail::Write) {
            if !was_failed {
                // Torn: the first half reached the page cache.
                let op = Op::Write(offset, data[..data.len() / 2].to_vec());
                apply(&mut s.live, &op);
                s.since_sync.push(op);
            }
            return Err(injected("write"));
        }
        let op = Op::Write(offset, data.to_vec());
        apply(&mut s.live, &op);
        s.since_sync.push(op);
        Ok(())
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

fn options() -> RedbOptions {
    RedbOptions::default().durability(Durability::Immediate)
}

#[derive(Debug, Clone)]
struct Attempt {
    ids: Vec<Ulid>,
    acked: Option<u64>,
}

#[derive(Default, Debug)]
struct Figures {
    scenarios: u64,
    appends_failed: u64,
    images_checked: u64,
    acked_checked: u64,
    failed_present: u64,
    failed_absent: u64,
}

/// Appends from three concurrent tasks until the injected fault stops the
/// store; returns every attempt.
async fn run_until_failure(es: &EventStore) -> Vec<Attempt> {
    let mut tasks = Vec::new();
    for t in 0..3u64 {
        let es = es.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..40u64 {
                let n = 1 + (t + i) % 4;
                let events: Vec<NewEvent> = (0..n)
                    .map(|_| NewEvent::new("Tick", vec![t as u8; 64]).with_tags([format!("t:{t}")]))
                    .collect();
                let ids = events.iter().map(|e| e.id).collect();
                let r = if i % 2 == 0 {
                    es.append(events, None).await
                } else {
                    es.append_to_stream(&format!("s-{t}"), ExpectedVersion::Any, events)
                        .await
                };
                match r {
                    Ok(r) => out.push(Attempt {
                        ids,
                        acked: Some(r.first_position),
                    }),
                    Err(e) => {
                        assert!(
                            !e.to_string().contains("panicked"),
                            "a panic surfaced as an error: {e}"
                        );
                        out.push(Attempt { ids, acked: None });
                        return out;
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("no panic in an appender"));
    }
    all
}

async fn check_image(name: &str, image: Vec<u8>, attempts: &[Attempt], f: &mut Figures) {
    let kv = match RedbStore::open_with_backend(FaultBackend::from_image(image), options()).await {
        Ok(kv) => kv,
        Err(e) => panic!("{name}: the image does not reopen: {e}"),
    };
    let es = EventStore::open(Arc::new(kv)).await.expect("event store");
    let report = verify(&es).await.expect("verify");
    assert!(report.is_clean(), "{name}: {report}");
    let all = es.read_all(ReadOptions::new()).await.expect("read");
    let at: HashMap<Ulid, u64> = all.events.iter().map(|e| (e.id, e.position)).collect();
    let mut explained = 0;
    for a in attempts {
        let present: Vec<Option<u64>> = a.ids.iter().map(|id| at.get(id).copied()).collect();
        let n = present.iter().flatten().count();
        match a.acked {
            Some(first) => {
                for (i, p) in present.iter().enumerate() {
                    assert_eq!(
                        *p,
                        Some(first + i as u64),
                        "{name}: acknowledged event lost"
                    );
                }
                f.acked_checked += 1;
            }
            None => {
                assert!(
                    n == 0 || n == a.ids.len(),
                    "{name}: failed append partly visible ({n} of {})",
                    a.ids.len()
                );
                if n == 0 {
                    f.failed_absent += 1;
                } else {
                    f.failed_present += 1;
                }
            }
        }
        explained += n as u64;
    }
    assert_eq!(
        explained, all.consistent_through,
        "{name}: events nobody appended"
    );
    f.images_checked += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_torn_writes_leave_a_consistent_store() {
    let mut f = Figures::default();
    let mut rng = 0x5EED_u64;
    for fail in [Fail::Write, Fail::Sync] {
        for after in 1..=48u64 {
            let backend = FaultBackend::default();
            let kv = RedbStore::open_with_backend(backend.clone(), options())
                .await
                .expect("open on the fault backend");
            let es = EventStore::open(Arc::new(kv)).await.unwrap();
            let mut attempts = Vec::new();
            // A baseline the failure must not damage.
            for i in 0..3 {
                let e = NewEvent::new("Base", vec![i]);
                let ids = vec![e.id];
                let r = es.append(vec![e], None).await.unwrap();
                attempts.push(Attempt {
                    ids,
                    acked: Some(r.first_position),
                });
            }
            let per_append = backend.ops() / 4 + 1;
            backend.arm(after * per_append / 8 + 1, fail);
            let run = run_until_failure(&es).await;
            let failures = run.iter().filter(|a| a.acked.is_none()).count() as u64;
            attempts.extend(run);
            assert!(
                backend.failed(),
                "{fail:?} after {after}: the fault never fired"
            );
            assert!(
                failures > 0,
                "{fail:?} after {after}: no append saw the fault"
            );
            f.appends_failed += failures;
            // A poisoned store keeps refusing, with an error.
            let again = es.append(vec![NewEvent::new("Late", vec![])], None).await;
            assert!(
                again.is_err(),
                "{fail:?} after {after}: append after the fault"
            );
            drop(es);
            for (name, image) in backend.images(&mut rng, 3) {
                let name = format!("{fail:?} after {after}, {name}");
                check_image(&name, image, &attempts, &mut f).await;
            }
            f.scenarios += 1;
        }
    }
    eprintln!("torn writes: {f:?}");
    assert!(f.acked_checked > 0 && f.images_checked == f.scenarios * 5);
}
