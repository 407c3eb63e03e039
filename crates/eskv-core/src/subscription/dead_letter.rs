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

/// A dead-letter list as read: the parked events still in the store, and
/// the entries of events the store removed since they were parked.
pub(super) struct DeadLetters {
    pub(super) parked: Vec<(ConsumerId, ParkedEvent)>,
    /// Deleted streams, retention and log truncation leave holes in the
    /// log; a parked event in one has nothing left to replay.
    pub(super) removed: Vec<(ConsumerId, u64)>,
}

impl EventStore {
    /// Events parked in the dead-letter list of subscription `name`. An
    /// event the store has removed since it was parked (its stream
    /// deleted, retention, log truncation) is not listed; a replay drops
    /// its entry.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        validate_name(name)?;
        Ok(self
            .parked_in(layout::dead_letter_range(Consumer::Named(name)))
            .await?
            .parked
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Events parked by any partition of consumer group `group`, with
    /// their partition, in partition then position order (removed events
    /// left out, as in [`parked`](Self::parked)).
    pub async fn group_parked(&self, group: &str) -> Result<Vec<(u32, ParkedEvent)>> {
        validate_name(group)?;
        let mut out = Vec::new();
        for (c, p) in self
            .parked_in(layout::group_dead_letter_range(group))
            .await?
            .parked
        {
            if let ConsumerId::Partition { partition, .. } = c {
                out.push((partition, p));
            }
        }
        Ok(out)
    }

    pub(super) async fn parked_in(&self, range: KeyRange) -> Result<DeadLetters> {
        let rows = self.scan_all(range).await?;
        let mut out = DeadLetters {
            parked: Vec::with_capacity(rows.len()),
            removed: Vec::new(),
        };
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
            // Reads skip removed events: the first live one at or after
            // `position` is another event when this one is gone.
            let event = retry(self.options().max_retries, || {
                self.read_all(ReadOptions::new().from(position).limit(1))
            })
            .await?
            .events
            .into_iter()
            .next()
            .filter(|e| e.position == position);
            match event {
                Some(event) => out.parked.push((
                    consumer,
                    ParkedEvent {
                        event,
                        error: rec.error,
                        attempts: rec.attempts,
                        parked_at_ms: rec.parked_at_ms,
                    },
                )),
                None => out.removed.push((consumer, position)),
            }
        }
        Ok(out)
    }

    /// Runs `handler` again on every parked event of `name`; events it now
    /// handles are removed from the list. Returns how many were removed.
    /// Entries of events the store removed since they were parked are
    /// dropped too (not counted).
    pub async fn replay_parked<H: EventHandler>(&self, name: &str, handler: &H) -> Result<usize> {
        validate_name(name)?;
        let list = self
            .parked_in(layout::dead_letter_range(Consumer::Named(name)))
            .await?;
        self.replay(list, handler).await
    }

    /// As [`replay_parked`](Self::replay_parked), for every partition of
    /// consumer group `group`.
    pub async fn replay_group_parked<H: EventHandler>(
        &self,
        group: &str,
        handler: &H,
    ) -> Result<usize> {
        validate_name(group)?;
        let list = self
            .parked_in(layout::group_dead_letter_range(group))
            .await?;
        self.replay(list, handler).await
    }

    pub(super) async fn replay<H: EventHandler>(
        &self,
        list: DeadLetters,
        handler: &H,
    ) -> Result<usize> {
        for (c, position) in &list.removed {
            self.drop_dead_letter(c.as_consumer(), *position).await?;
        }
        let mut fixed = 0;
        for (c, p) in list.parked {
            if handler.handle(&p.event).await.is_ok() {
                self.drop_dead_letter(c.as_consumer(), p.event.position)
                    .await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    async fn drop_dead_letter(&self, c: Consumer<'_>, position: u64) -> Result<()> {
        let key = layout::dead_letter_key(c, position);
        retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            txn.delete(key.clone());
            Ok(txn.commit().await?)
        })
        .await
    }
}
