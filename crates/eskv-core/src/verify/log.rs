//! The head and the log pass: positions are gapless up to the head, every
//! envelope decodes, and every event's own index entries exist and hold
//! what they must (events → indexes).

use super::pager::Pager;
use super::{corrupt_message, range_text, Checker, Head, LOG_PAGE, PAGE};
use crate::envelope;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::kv::KvTransaction;
use crate::layout;

/// What an event's index entry must hold.
enum Expect {
    /// An id entry: the event's position and content digest.
    IdEntry,
    /// A u64 position value.
    Position,
    /// An empty value.
    Empty,
    /// A tag entry: the event's type and tags.
    TagEntry,
}

impl Checker<'_> {
    pub(super) async fn head(&mut self, txn: &mut dyn KvTransaction) -> Result<Head> {
        let k = layout::head_key();
        let raw = txn.get(&k).await?;
        self.report.keys += u64::from(raw.is_some());
        Ok(match raw {
            None => Head::Missing,
            Some(v) => match layout::parse_u64(&v, "head") {
                Ok(h) => {
                    self.report.head = h;
                    Head::At(h)
                }
                Err(e) => {
                    self.violation(Some(&k), None, corrupt_message(&e));
                    Head::Unreadable
                }
            },
        })
    }

    /// The log pass: gaps, head, envelopes, and each event's own index
    /// entries (events → indexes).
    pub(super) async fn log(&mut self, txn: &mut dyn KvTransaction, head: Head) -> Result<()> {
        let mut next = 1u64;
        let mut pager = Pager::new(layout::log_table_range(), LOG_PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut events = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let pos = match layout::parse_log_key_strict(&k) {
                    Ok(p) => p,
                    Err(e) => {
                        self.unparsed_key(&k, "log", &e);
                        continue;
                    }
                };
                if pos == 0 {
                    self.violation(Some(&k), Some(0), "positions start at 1".into());
                    continue;
                }
                if pos > next && !self.removed_range(next, pos - 1) {
                    self.violation(
                        None,
                        Some(next),
                        format!("{} missing from the log (gap)", range_text(next, pos - 1)),
                    );
                }
                next = pos + 1;
                self.report.events += 1;
                if let Head::At(h) = head {
                    if pos > h {
                        self.violation(Some(&k), Some(pos), format!("event above the head ({h})"));
                    }
                }
                match envelope::decode(&v, pos) {
                    Ok(e) => events.push(e),
                    Err(e) => self.violation(Some(&k), Some(pos), corrupt_message(&e)),
                }
            }
            self.event_entries(txn, &events).await?;
        }
        let last = next - 1;
        match head {
            Head::At(h) if last < h && !self.removed_range(last + 1, h) => self.violation(
                Some(&layout::head_key()),
                Some(last + 1),
                format!(
                    "{} at or below the head ({h}) but missing from the log",
                    range_text(last + 1, h)
                ),
            ),
            Head::Missing if last > 0 => self.violation(
                Some(&layout::head_key()),
                None,
                format!("the head key is missing, but the log holds events up to position {last}"),
            ),
            _ => {}
        }
        Ok(())
    }

    /// Checks that every index entry an event needs exists and holds what
    /// it must.
    async fn event_entries(
        &mut self,
        txn: &mut dyn KvTransaction,
        events: &[RecordedEvent],
    ) -> Result<()> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut expect: Vec<(usize, Expect, &'static str)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let p = e.position;
            keys.push(layout::id_key(e.id));
            expect.push((i, Expect::IdEntry, "id"));
            keys.push(layout::type_key(&e.event_type, p));
            expect.push((i, Expect::Empty, "type"));
            for t in &e.tags {
                keys.push(layout::tag_key(t, p));
                expect.push((i, Expect::TagEntry, "tag"));
            }
            if let Some(s) = &e.stream {
                keys.push(layout::stream_event_key(&s.stream_id, s.version));
                expect.push((i, Expect::Position, "stream"));
                keys.push(layout::category_key(layout::category_of(&s.stream_id), p));
                expect.push((i, Expect::Empty, "category"));
            }
        }
        for (chunk_keys, chunk_expect) in keys.chunks(PAGE).zip(expect.chunks(PAGE)) {
            let vals = txn.get_many(chunk_keys).await?;
            self.report.keys += vals.iter().flatten().count() as u64;
            for ((k, (i, ex, table)), v) in chunk_keys.iter().zip(chunk_expect).zip(vals) {
                let e = &events[*i];
                let p = e.position;
                let Some(v) = v else {
                    self.violation(
                        Some(k),
                        Some(p),
                        format!(
                            "the event (id {}, type '{}') has no {table} index entry",
                            e.id, e.event_type
                        ),
                    );
                    continue;
                };
                // A damaged seal is reported by the pass over its table,
                // which sees every entry, whether its event exists or not.
                let Ok(v) = layout::open_index_value(k, &v) else {
                    continue;
                };
                match ex {
                    Expect::IdEntry => match layout::IdEntry::decode(v) {
                        // A released event's id may be appended again: the
                        // entry then belongs to the later event.
                        Ok(x) if x.position > p
                            && e.stream.as_ref().is_some_and(|s| self.lives.contains_key(&s.stream_id)) => {}
                        Ok(x) if x.position != p => self.violation(
                            Some(k),
                            Some(p),
                            format!(
                                "the id index entry of this event points at position {} (the same id is stored twice?)",
                                x.position
                            ),
                        ),
                        Ok(x) if x.digest != layout::content_digest(&e.tags, &e.data, &e.metadata) => {
                            self.violation(
                                Some(k),
                                Some(p),
                                "the id index entry's content digest does not match the event's tags, data and metadata".into(),
                            )
                        }
                        Ok(_) => {}
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                    Expect::Position => match layout::parse_u64(v, "index entry") {
                        Ok(q) if q == p => {}
                        Ok(q) => self.violation(
                            Some(k),
                            Some(p),
                            format!("the {table} index entry of this event points at position {q}"),
                        ),
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                    Expect::Empty => {
                        if !v.is_empty() {
                            self.violation(
                                Some(k),
                                Some(p),
                                format!(
                                    "{table} index entry holds {} bytes, expected none",
                                    v.len()
                                ),
                            );
                        }
                    }
                    Expect::TagEntry => match layout::parse_tag_entry(v) {
                        Ok((t, tags)) if t == e.event_type && tags == e.tags => {}
                        Ok((t, tags)) => self.violation(
                            Some(k),
                            Some(p),
                            format!(
                                "tag index entry says type '{t}' with tags {tags:?}, the event has type '{}' with tags {:?}",
                                e.event_type, e.tags
                            ),
                        ),
                        Err(err) => self.violation(Some(k), Some(p), corrupt_message(&err)),
                    },
                }
            }
        }
        Ok(())
    }
}
