//! Dead letters: events a handler gave up on, parked per consumer, listed
//! and replayed.

use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::kv::KeyRange;
use crate::layout::{self, Consumer, ConsumerId};
use crate::retry::retry;
use crate::store::{EventStore, ReadOptions};
use serde::{Deserialize, Serialize};

use super::handler::EventHandler;
use super::validate_name;

#[derive(Serialize, Deserialize)]
pub(super) struct DeadLetter {
    pub(super) error: String,
    pub(super) attempts: u32,
    pub(super) parked_at_ms: u64,
}

/// An event a handler gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// The handler's last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was parked (ms since the Unix epoch).
    pub parked_at_ms: u64,
}

impl EventStore {
    /// Events parked in the dead-letter list of subscription `name`.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        validate_name(name)?;
        Ok(self
            .parked_in(layout::dead_letter_range(Consumer::Named(name)))
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Events parked by any partition of consumer group `group`, with
    /// their partition, in partition then position order.
    pub async fn group_parked(&self, group: &str) -> Result<Vec<(u32, ParkedEvent)>> {
        validate_name(group)?;
        let mut out = Vec::new();
        for (c, p) in self
            .parked_in(layout::group_dead_letter_range(group))
            .await?
        {
            if let ConsumerId::Partition { partition, .. } = c {
                out.push((partition, p));
            }
        }
        Ok(out)
    }

    pub(super) async fn parked_in(
        &self,
        range: KeyRange,
    ) -> Result<Vec<(ConsumerId, ParkedEvent)>> {
        let rows = self.scan_all(range).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let layout::StateKey::DeadLetter { consumer, position } = layout::parse_state_key(&k)?
            else {
                return Err(Error::corrupt(
                    None,
                    "a non-dead-letter key among dead letters",
                ));
            };
            let rec: DeadLetter = postcard::from_bytes(&v).map_err(|e| {
                Error::corrupt(
                    Some(position),
                    format!("dead-letter entry does not decode: {e}"),
                )
            })?;
            let event = retry(self.options().max_retries, || {
                self.read_all(ReadOptions::new().from(position).limit(1))
            })
            .await?
            .events
            .into_iter()
            .next()
            .filter(|e| e.position == position)
            .ok_or_else(|| {
                Error::corrupt(Some(position), "a parked event is missing from the log")
            })?;
            out.push((
                consumer,
                ParkedEvent {
                    event,
                    error: rec.error,
                    attempts: rec.attempts,
                    parked_at_ms: rec.parked_at_ms,
                },
            ));
        }
        Ok(out)
    }

    /// Runs `handler` again on every parked event of `name`; events it now
    /// handles are removed from the list. Returns how many were removed.
    pub async fn replay_parked<H: EventHandler>(&self, name: &str, handler: &H) -> Result<usize> {
        let parked = self.parked(name).await?;
        let c = Consumer::Named(name);
        self.replay(parked.into_iter().map(|p| (c, p)), handler)
            .await
    }

    /// As [`replay_parked`](Self::replay_parked), for every partition of
    /// consumer group `group`.
    pub async fn replay_group_parked<H: EventHandler>(
        &self,
        group: &str,
        handler: &H,
    ) -> Result<usize> {
        let parked = self.group_parked(group).await?;
        self.replay(
            parked
                .into_iter()
                .map(|(partition, p)| (Consumer::Partition { group, partition }, p)),
            handler,
        )
        .await
    }

    pub(super) async fn replay<'a, H: EventHandler>(
        &self,
        parked: impl Iterator<Item = (Consumer<'a>, ParkedEvent)>,
        handler: &H,
    ) -> Result<usize> {
        let mut fixed = 0;
        for (c, p) in parked {
            if handler.handle(&p.event).await.is_ok() {
                let key = layout::dead_letter_key(c, p.event.position);
                retry(self.options().max_retries, || async {
                    let mut txn = self.kv().begin().await?;
                    txn.delete(key.clone());
                    Ok(txn.commit().await?)
                })
                .await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }
}
