//! Checkpoints: where a named subscription resumes, persisted per consumer.

use crate::error::{Error, Result};
use crate::event::Position;
use crate::kv::{KeyRange, KvPair, ScanOptions};
use crate::layout::{self, Consumer, ConsumerId};
use crate::retry::retry;
use crate::store::EventStore;
use std::collections::BTreeMap;

use super::validate_name;

impl EventStore {
    /// The stored checkpoint of a named subscription.
    pub async fn checkpoint(&self, name: &str) -> Result<Option<Position>> {
        validate_name(name)?;
        self.consumer_checkpoint(Consumer::Named(name)).await
    }

    pub(crate) async fn consumer_checkpoint(&self, c: Consumer<'_>) -> Result<Option<Position>> {
        let key = layout::checkpoint_key(c);
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            txn.get(&key)
                .await?
                .map(|v| layout::parse_u64(&v, "checkpoint"))
                .transpose()
        })
        .await
    }

    /// Stores `position` as the checkpoint of `name`. Checkpoints only move
    /// forward (a lower position is ignored) and never past the head.
    pub async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        validate_name(name)?;
        let key = layout::checkpoint_key(Consumer::Named(name));
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let vals = txn.get_many(&[key.clone(), layout::head_key()]).await?;
            let current = vals[0]
                .as_deref()
                .map(|v| layout::parse_u64(v, "checkpoint"))
                .transpose()?;
            let head = vals[1]
                .as_deref()
                .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
            if position > head {
                return Err(Error::invalid(format!(
                    "checkpoint {position} for '{name}' is past the head ({head})"
                )));
            }
            if current.is_some_and(|c| c >= position) {
                return Ok(());
            }
            txn.put(key.clone(), layout::u64_value(position));
            Ok(txn.commit().await?)
        })
        .await
    }

    /// Every stored checkpoint of a named subscription, by name. Consumer
    /// groups keep theirs apart (see [`group_partitions`](Self::group_partitions)).
    pub async fn checkpoints(&self) -> Result<BTreeMap<String, Position>> {
        let rows = self.scan_all(layout::checkpoint_range()).await?;
        let mut out = BTreeMap::new();
        for (k, v) in rows {
            match layout::parse_state_key(&k)? {
                layout::StateKey::Checkpoint(ConsumerId::Named(n)) => {
                    out.insert(n, layout::parse_u64(&v, "checkpoint")?);
                }
                other => {
                    return Err(Error::corrupt(
                        None,
                        format!("{other:?} found among subscription checkpoints"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Every row of `range`, read in pages in one snapshot, retried on
    /// transient errors.
    pub(super) async fn scan_all(&self, range: KeyRange) -> Result<Vec<KvPair>> {
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            Ok(txn.scan(range.clone(), ScanOptions::default()).await?)
        })
        .await
    }
}
