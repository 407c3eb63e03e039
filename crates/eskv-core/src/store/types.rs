//! The persisted event-type registry and strict mode.

use super::EventStore;
use crate::error::Result;
use crate::kv::{KvTransaction, ScanOptions};
use crate::layout::{self};
use crate::retry::retry;
use crate::validate::validate_type;

impl EventStore {
    /// Registers allowed event types (persisted; additive).
    pub async fn register_event_types<I, S>(&self, types: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let types: Vec<String> = types.into_iter().map(Into::into).collect();
        for t in &types {
            validate_type(t, &self.inner.opts.limits)?;
        }
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            for t in &types {
                txn.put(layout::registry_key(t), Vec::new());
            }
            Ok(txn.commit().await?)
        })
        .await?;
        self.inner
            .known_types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(types);
        Ok(())
    }

    /// The registered event types, sorted.
    pub async fn event_types(&self) -> Result<Vec<String>> {
        let mut txn = self.inner.kv.begin().await?;
        registered_types(&mut *txn).await
    }

    /// Turns strict mode on or off (persisted). In strict mode an append
    /// with an unregistered event type is rejected.
    pub async fn set_strict_types(&self, strict: bool) -> Result<()> {
        let kv = &self.inner.kv;
        retry(self.inner.opts.max_retries, || async {
            let mut txn = kv.begin().await?;
            txn.put(layout::strict_key(), vec![u8::from(strict)]);
            Ok(txn.commit().await?)
        })
        .await
    }

    /// True when strict mode is on.
    pub async fn strict_types(&self) -> Result<bool> {
        let mut txn = self.inner.kv.begin().await?;
        Ok(txn.get(&layout::strict_key()).await?.as_deref() == Some(&[1u8][..]))
    }
}

pub(super) async fn registered_types(txn: &mut dyn KvTransaction) -> Result<Vec<String>> {
    txn.scan(layout::registry_range(), ScanOptions::default())
        .await?
        .into_iter()
        .map(|(k, _)| layout::parse_registry_key(&k))
        .collect()
}
