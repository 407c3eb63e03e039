//! The one filter step every read path runs on the events it loaded:
//! drops events released by their stream's retention, deletion or
//! tombstone, and opens (or marks erased) personal parts. Reads, DCB
//! condition checks and idempotency lookups all go through [`Live`], so a
//! removed event is invisible to each of them in the same way.

use crate::crypto::{self, StoreKey, SubjectKey, SubjectRecord};
use crate::error::{Error, Result};
use crate::event::{PersonalContent, RecordedEvent, StreamVersion};
use crate::kv::KvTransaction;
use crate::layout::{self, StreamMeta};
use crate::lifecycle::{LogLife, StreamLife};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// A stream's version and lifecycle record, as a read sees them.
pub(crate) type StreamState = (StreamVersion, StreamLife);

/// Per-read cache of stream lifecycle records and subject keys.
pub(crate) struct Live<'a> {
    store_key: Option<&'a StoreKey>,
    now_ms: u64,
    /// `None`: the stream has no lifecycle record (every event live).
    streams: HashMap<String, Option<StreamState>>,
    /// `None`: forgotten.
    subjects: HashMap<String, Option<SubjectKey>>,
    /// The log's first live position (`LogLife::truncate_before`), once
    /// read: every event below it is released.
    log_cut: Option<u64>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<'a> Live<'a> {
    pub(crate) fn new(store_key: Option<&'a StoreKey>) -> Self {
        Live {
            store_key,
            now_ms: now_ms(),
            streams: HashMap::new(),
            subjects: HashMap::new(),
            log_cut: None,
        }
    }

    /// The log's first live position (1 when it was never truncated),
    /// read once per read.
    pub(crate) async fn log_cut(&mut self, txn: &mut dyn KvTransaction) -> Result<u64> {
        if let Some(c) = self.log_cut {
            return Ok(c);
        }
        let cut = txn
            .get(&layout::log_life_key())
            .await?
            .map(|v| LogLife::decode(&v))
            .transpose()?
            .map_or(1, |l| l.truncate_before.max(1));
        self.log_cut = Some(cut);
        Ok(cut)
    }

    /// Loads the lifecycle records of `streams` not seen yet, in one read.
    async fn load_streams(
        &mut self,
        txn: &mut dyn KvTransaction,
        streams: impl Iterator<Item = &str>,
    ) -> Result<()> {
        let mut missing: Vec<String> = streams
            .filter(|s| !self.streams.contains_key(*s))
            .map(str::to_owned)
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = missing
            .iter()
            .flat_map(|s| [layout::stream_key(s), layout::stream_life_key(s)])
            .collect();
        let vals = txn.get_many(&keys).await?;
        for (s, pair) in missing.into_iter().zip(vals.chunks(2)) {
            let state = match (&pair[0], &pair[1]) {
                (_, None) => None,
                (meta, Some(life)) => {
                    let version = meta
                        .as_deref()
                        .map(StreamMeta::decode)
                        .transpose()?
                        .map_or(0, |m| m.version);
                    Some((version, StreamLife::decode(life)?))
                }
            };
            self.streams.insert(s, state);
        }
        Ok(())
    }

    /// The version and lifecycle record of `stream` (`None`: no record).
    pub(crate) async fn stream_state(
        &mut self,
        txn: &mut dyn KvTransaction,
        stream: &str,
    ) -> Result<Option<StreamState>> {
        self.load_streams(txn, std::iter::once(stream)).await?;
        Ok(self.streams.get(stream).cloned().flatten())
    }

    /// True when `e` is live (its stream's records must be loaded).
    fn is_live(&self, e: &RecordedEvent) -> bool {
        if e.position < self.log_cut.unwrap_or(1) {
            return false;
        }
        let Some(s) = &e.stream else { return true };
        match self.streams.get(&s.stream_id) {
            Some(Some((version, life))) => life.is_live(*version, e, self.now_ms),
            _ => true,
        }
    }

    /// Keeps the live events of `events`, with their personal parts opened
    /// or marked erased. The only filter step of the read paths.
    pub(crate) async fn retain(
        &mut self,
        txn: &mut dyn KvTransaction,
        mut events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>> {
        let streams: Vec<String> = events
            .iter()
            .filter_map(|e| e.stream.as_ref().map(|s| s.stream_id.clone()))
            .collect();
        self.load_streams(txn, streams.iter().map(String::as_str))
            .await?;
        if !events.is_empty() {
            self.log_cut(txn).await?;
        }
        events.retain(|e| self.is_live(e));
        self.open_personal(txn, &mut events).await?;
        Ok(events)
    }

    /// The positions among `events` that are live (no personal part is
    /// opened: for condition and idempotency checks).
    pub(crate) async fn live_only(
        &mut self,
        txn: &mut dyn KvTransaction,
        mut events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>> {
        let streams: Vec<String> = events
            .iter()
            .filter_map(|e| e.stream.as_ref().map(|s| s.stream_id.clone()))
            .collect();
        self.load_streams(txn, streams.iter().map(String::as_str))
            .await?;
        if !events.is_empty() {
            self.log_cut(txn).await?;
        }
        events.retain(|e| self.is_live(e));
        Ok(events)
    }

    async fn open_personal(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &mut [RecordedEvent],
    ) -> Result<()> {
        let mut missing: Vec<String> = events
            .iter()
            .filter_map(|e| e.personal.as_ref())
            .filter(|p| matches!(p.content, PersonalContent::Sealed(_)))
            .map(|p| p.subject().to_owned())
            .filter(|s| !self.subjects.contains_key(s))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let keys: Vec<Vec<u8>> = missing.iter().map(|s| layout::subject_key(s)).collect();
            let vals = txn.get_many(&keys).await?;
            for (s, v) in missing.into_iter().zip(vals) {
                let key = match v {
                    None => None,
                    Some(v) => {
                        let rec = SubjectRecord::decode(&v)?;
                        match (&rec.wrapped, self.store_key) {
                            (None, _) => None,
                            (Some(_), None) => return Err(no_store_key()),
                            (Some(_), Some(k)) => crypto::unwrap_subject_key(k, &s, &rec)?,
                        }
                    }
                };
                self.subjects.insert(s, key);
            }
        }
        for e in events.iter_mut() {
            let Some(p) = e.personal.as_mut() else {
                continue;
            };
            let PersonalContent::Sealed(sealed) = &p.content else {
                continue;
            };
            let opened = match self.subjects.get(p.subject()).cloned().flatten() {
                Some(k) if k.generation == sealed.generation => {
                    let plain = crypto::open_part(&k, e.id, p.subject(), sealed).map_err(
                        |err| match err {
                            Error::Corrupt { message, .. } => {
                                Error::corrupt(Some(e.position), message)
                            }
                            other => other,
                        },
                    )?;
                    PersonalContent::Plain(plain)
                }
                // Forgotten (the record is gone or holds a newer key).
                _ => PersonalContent::Erased,
            };
            p.content = opened;
        }
        Ok(())
    }
}

pub(crate) fn no_store_key() -> Error {
    Error::WrongStoreKey {
        message: "this store holds personal data, and no store key was given: open it with EventStoreOptions::store_key (the key it was written with)".into(),
    }
}
