//! Crash consistency on fjall directories: SIGKILL at random moments while four
//! tasks append, reopen, verify (the shared harness in
//! `eskv_conformance::crash`; `ESKV_CRASH_ROUNDS`, `ESKV_CRASH_SEED`).

use eskv_core::KvStore;
use eskv_fjall::{Durability, FjallOptions, FjallStore};
use std::path::PathBuf;
use std::sync::Arc;

fn open(path: PathBuf) -> futures::future::BoxFuture<'static, eskv_core::Result<Arc<dyn KvStore>>> {
    Box::pin(async move {
        let options = FjallOptions::default().durability(Durability::Immediate);
        Ok(Arc::new(FjallStore::open_with(path, options).await?) as Arc<dyn KvStore>)
    })
}

// fjall appends several times faster than redb, so each store grows
// faster and every round verifies all of it: ten rounds per store keep
// the default 50 rounds near redb's run time.
eskv_conformance::crash_suite!(open, "fjall", 10);
