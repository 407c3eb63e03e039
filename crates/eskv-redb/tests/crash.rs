//! Crash consistency on redb files: SIGKILL at random moments while four
//! tasks append, reopen, verify (the shared harness in
//! `eskv_conformance::crash`; `ESKV_CRASH_ROUNDS`, `ESKV_CRASH_SEED`).

use eskv_core::KvStore;
use eskv_redb::{Durability, RedbOptions, RedbStore};
use std::path::PathBuf;
use std::sync::Arc;

fn open(path: PathBuf) -> futures::future::BoxFuture<'static, eskv_core::Result<Arc<dyn KvStore>>> {
    Box::pin(async move {
        let options = RedbOptions::default().durability(Durability::Immediate);
        Ok(Arc::new(RedbStore::open_with(path, options).await?) as Arc<dyn KvStore>)
    })
}

eskv_conformance::crash_suite!(open, "redb");
