//! A full disk under a real redb file: a `StorageBackend` over the file
//! that answers ENOSPC to every write while "full". The append that meets
//! it, and every append while the disk stays full, must report the real
//! cause (no space, with the file named), never redb's "previous I/O
//! error"; once space is free, the same open store appends again without
//! a restart, and the file is consistent.

use eskv_core::verify::verify;
use eskv_core::{Error, EventStore, NewEvent, ReadOptions, Ulid};
use eskv_redb::redb::StorageBackend;
use eskv_redb::{RedbOptions, RedbStore};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A real file whose disk can be made full. Clones share the file.
#[derive(Debug, Clone)]
struct FullDisk {
    file: Arc<File>,
    full: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

impl FullDisk {
    fn open(path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        FullDisk {
            file: Arc::new(file),
            full: Arc::default(),
            refused: Arc::default(),
        }
    }

    fn refuse(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > self.len()? {
            self.refuse()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.refuse()?;
        self.file.write_all_at(data, offset)
    }
}

fn ev(i: u64) -> NewEvent {
    NewEvent::new("Written", format!("{{\"i\":{i}}}").into_bytes()).with_tags(["disk".to_string()])
}

/// The error says the disk is full and names the file.
fn assert_full(e: &Error, path: &str, when: &str) {
    let text = e.to_string();
    assert!(
        matches!(e, Error::StorageFull { .. }),
        "{when}: expected Error::StorageFull, got {e:?}"
    );
    assert!(text.contains(path), "{when}: the file is not named: {text}");
    assert!(text.contains("free space"), "{when}: no advice: {text}");
    assert!(
        !text.contains("Previous I/O"),
        "{when}: the first cause is hidden: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_store_recovers_when_space_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let disk = FullDisk::open(&path);
    let kv = RedbStore::open_with_backend(disk.clone(), RedbOptions::default())
        .await
        .unwrap();
    let name = kv.path().display().to_string();
    let es = EventStore::open(Arc::new(kv)).await.unwrap();
    let mut acked: Vec<(Ulid, u64)> = Vec::new();
    let mut failed: Vec<Ulid> = Vec::new();
    for i in 0..5 {
        let e = ev(i);
        let id = e.id;
        acked.push((id, es.append(vec![e], None).await.unwrap().first_position));
    }

    disk.full.store(true, Ordering::SeqCst);
    for i in 0..3 {
        let e = ev(100 + i);
        failed.push(e.id);
        let err = es
            .append(vec![e], None)
            .await
            .expect_err("the disk is full");
        assert_full(&err, &name, &format!("append {i} on a full disk"));
        assert!(
            !err.is_retryable(),
            "a full disk is not retried in a loop: {err}"
        );
    }
    assert!(disk.refused.load(Ordering::SeqCst) > 0);

    // Space is freed: the same store works again, no restart.
    disk.full.store(false, Ordering::SeqCst);
    for i in 0..3 {
        let e = ev(200 + i);
        let id = e.id;
        let r = es
            .append(vec![e], None)
            .await
            .unwrap_or_else(|e| panic!("append {i} after space was freed: {e}"));
        acked.push((id, r.first_position));
    }
    let report = verify(&es).await.unwrap();
    assert!(report.is_clean(), "{report}");
    drop(es);

    // The real file reopens consistent, with every acknowledged event.
    let kv = loop {
        match RedbStore::open(&path).await {
            Ok(kv) => break kv,
            Err(
                eskv_core::KvError::Unavailable { .. } | eskv_core::KvError::StoreLocked { .. },
            ) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let es = EventStore::open(Arc::new(kv)).await.unwrap();
    assert!(verify(&es).await.unwrap().is_clean());
    let all = es.read_all(ReadOptions::new()).await.unwrap();
    for (id, pos) in &acked {
        assert!(
            all.events.iter().any(|e| e.id == *id && e.position == *pos),
            "acknowledged event {id} at {pos} is missing"
        );
    }
    for id in &failed {
        assert!(
            !all.events.iter().any(|e| e.id == *id),
            "a refused append landed"
        );
    }
    assert_eq!(all.events.len(), acked.len());
}
