//! Index entries back to their events (indexes → log): the id index, and
//! the category, type and tag indexes.

use super::pager::Pager;
use super::{corrupt_message, Checker, PAGE};
use crate::error::Result;
use crate::event::Position;
use crate::kv::{KeyRange, KvTransaction};
use crate::layout;

/// A positional index: keys `(name, position)` with empty or sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Positional {
    Category,
    Type,
    Tag,
}

impl Positional {
    fn name(self) -> &'static str {
        match self {
            Positional::Category => "category",
            Positional::Type => "type",
            Positional::Tag => "tag",
        }
    }
}

impl Checker<'_> {
    /// Id index → log.
    pub(super) async fn ids(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::id_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let id = match layout::parse_id_key(&k) {
                    Ok(id) => id,
                    Err(e) => {
                        self.unparsed_key(&k, "id index", &e);
                        continue;
                    }
                };
                match layout::open_index_value(&k, &v)
                    .and_then(layout::IdEntry::decode)
                    .map(|x| x.position)
                {
                    Ok(p) => entries.push((k, id, p)),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, id, p), e) in entries.iter().zip(events) {
                match e {
                    None => self.violation(
                        Some(k),
                        Some(*p),
                        format!("id index entry of event {id} points at position {p}, which holds no event"),
                    ),
                    Some(Err(_)) => {}
                    Some(Ok(e)) if e.id != *id => self.violation(
                        Some(k),
                        Some(*p),
                        format!(
                            "id index entry of event {id} points at position {p}, which holds event {}",
                            e.id
                        ),
                    ),
                    Some(Ok(_)) => {}
                }
            }
        }
        Ok(())
    }

    /// Category, type or tag index → log.
    pub(super) async fn positional(
        &mut self,
        txn: &mut dyn KvTransaction,
        range: KeyRange,
        kind: Positional,
    ) -> Result<()> {
        let table = kind.name();
        let mut pager = Pager::new(range, PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let (s, p) = match layout::parse_positional_key(&k) {
                    Ok(x) => x,
                    Err(e) => {
                        self.unparsed_key(&k, &format!("{table} index"), &e);
                        continue;
                    }
                };
                // The seal is checked here; the value itself by the log
                // pass: a tag entry's (type, tags) copy against its event,
                // category and type entries for being empty. An entry
                // whose event does not carry it is reported below.
                if let Err(e) = layout::open_index_value(&k, &v) {
                    self.violation(Some(&k), Some(p), corrupt_message(&e));
                    continue;
                }
                entries.push((k, s, p));
            }
            let positions: Vec<Position> = entries.iter().map(|(_, _, p)| *p).collect();
            let events = self.load(txn, &positions).await?;
            for ((k, s, p), e) in entries.into_iter().zip(events) {
                let e = match e {
                    None => {
                        self.violation(
                            Some(&k),
                            Some(p),
                            format!("{table} index entry '{s}' points at position {p}, which holds no event"),
                        );
                        continue;
                    }
                    Some(Err(_)) => continue,
                    Some(Ok(e)) => e,
                };
                let ok = match kind {
                    Positional::Type => e.event_type == s,
                    Positional::Category => e
                        .stream
                        .as_ref()
                        .is_some_and(|r| layout::category_of(&r.stream_id) == s),
                    Positional::Tag => e.tags.contains(&s),
                };
                if !ok {
                    let has = match kind {
                        Positional::Type => format!("type '{}'", e.event_type),
                        Positional::Category => match &e.stream {
                            Some(r) => format!("category '{}'", layout::category_of(&r.stream_id)),
                            None => "no stream".into(),
                        },
                        Positional::Tag => format!("tags {:?}", e.tags),
                    };
                    self.violation(
                        Some(&k),
                        Some(p),
                        format!("{table} index entry '{s}' points at position {p}, whose event has {has}"),
                    );
                }
            }
        }
        Ok(())
    }
}
