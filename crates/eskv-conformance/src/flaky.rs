//! A store wrapper that loses commit acknowledgements: the commit is
//! applied, but the caller is told the outcome is unknown. This is the
//! failure a networked backend really has, made deterministic.

use async_trait::async_trait;
use eskv_core::{
    Capabilities, Error, KeyRange, KvPair, KvStore, KvTransaction, Result, ScanOptions,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Applies every commit, but reports every second one (up to `losses`
/// times) as [`Error::CommitOutcomeUnknown`].
pub struct LostAck {
    inner: Arc<dyn KvStore>,
    commits: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    losses: u64,
}

impl LostAck {
    /// Wraps `inner`, losing at most `losses` acknowledgements.
    pub fn new(inner: Arc<dyn KvStore>, losses: u64) -> Self {
        LostAck {
            inner,
            commits: Arc::new(AtomicU64::new(0)),
            lost: Arc::new(AtomicU64::new(0)),
            losses,
        }
    }

    /// How many acknowledgements were lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KvStore for LostAck {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn begin(&self) -> Result<Box<dyn KvTransaction>> {
        Ok(Box::new(LostAckTxn {
            inner: self.inner.begin().await?,
            commits: self.commits.clone(),
            lost: self.lost.clone(),
            losses: self.losses,
            wrote: false,
        }))
    }
}

struct LostAckTxn {
    inner: Box<dyn KvTransaction>,
    commits: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    losses: u64,
    wrote: bool,
}

#[async_trait]
impl KvTransaction for LostAckTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(keys).await
    }
    async fn scan(&mut self, range: KeyRange, opts: ScanOptions) -> Result<Vec<KvPair>> {
        self.inner.scan(range, opts).await
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.wrote = true;
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: Vec<u8>) {
        self.wrote = true;
        self.inner.delete(key)
    }
    fn validate(&mut self, key: Vec<u8>) {
        self.inner.validate(key)
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        let LostAckTxn {
            inner,
            commits,
            lost,
            losses,
            wrote,
        } = *self;
        inner.commit().await?;
        if wrote
            && commits.fetch_add(1, Ordering::SeqCst) % 2 == 1
            && lost.fetch_add(1, Ordering::SeqCst) < losses
        {
            return Err(Error::CommitOutcomeUnknown {
                backend: "lost-ack",
                message: "injected: the commit was applied but its acknowledgement was dropped"
                    .into(),
            });
        }
        Ok(())
    }
}
