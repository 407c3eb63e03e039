//! The tables beside the events: meta (format marker, flags, unfinished
//! imports), the type registry, subscription state, and keys outside
//! every table.

use super::pager::Pager;
use super::{corrupt_message, Checker, Head, PAGE};
use crate::error::Result;
use crate::kv::{KeyRange, KvTransaction, ScanOptions};
use crate::layout;
use std::ops::Bound;

/// The prefix byte of nested namespaces (see [`crate::Namespaced`]).
const NAMESPACE_TAG: u8 = b'n';

impl Checker<'_> {
    pub(super) async fn meta(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut format_seen = false;
        let mut pager = Pager::new(layout::meta_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                match layout::parse_meta_key(&k) {
                    Err(e) => self.unparsed_key(&k, "meta", &e),
                    Ok(_) if k == layout::format_key() => {
                        format_seen = true;
                        if v != layout::FORMAT {
                            self.violation(
                                Some(&k),
                                None,
                                format!(
                                    "layout format is {:?}, this checker knows {:?}",
                                    String::from_utf8_lossy(&v),
                                    String::from_utf8_lossy(layout::FORMAT)
                                ),
                            );
                        }
                    }
                    Ok(_) if k == layout::strict_key() => {
                        if v != [0] && v != [1] {
                            self.violation(
                                Some(&k),
                                None,
                                format!("strict-types flag holds {v:02x?}, expected 0 or 1"),
                            );
                        }
                    }
                    Ok(_) if k == layout::import_key() => {
                        let message = match crate::store::ImportMarker::decode(&v) {
                            Ok(m) => m.to_string(),
                            Err(e) => format!(
                                "an import into this store did not finish (its marker does not parse: {})",
                                corrupt_message(&e)
                            ),
                        };
                        self.violation(Some(&k), None, message);
                    }
                    // Other names are configuration flags of later
                    // versions; their values are theirs to check.
                    Ok(_) => {}
                }
            }
        }
        if !format_seen {
            // An empty store that was never opened has no marker; anything
            // else without one was not written by the event layer.
            let any = txn
                .scan(
                    KeyRange {
                        start: Bound::Unbounded,
                        end: Bound::Unbounded,
                    },
                    ScanOptions::forward(Some(1)),
                )
                .await?;
            if !any.is_empty() {
                let k = layout::format_key();
                self.violation(
                    Some(&k),
                    None,
                    "the layout format marker is missing, but the store holds keys".into(),
                );
            }
        }
        Ok(())
    }

    pub(super) async fn registry(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::registry_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                if let Err(e) = layout::parse_registry_key_strict(&k) {
                    self.unparsed_key(&k, "registry", &e);
                } else if !v.is_empty() {
                    self.violation(
                        Some(&k),
                        None,
                        format!("registry entry holds {} bytes, expected none", v.len()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Subscription state (`0x50`): every key parses as one of the
    /// layout's state families ([`layout::parse_state_key`]); checkpoints
    /// (of named subscriptions, group partitions and projections), parked
    /// events and rebuild records decode and are not past the head. Leases,
    /// members, read-model values and snapshots are only checked for their
    /// keys: their values are their owners' business.
    pub(super) async fn subscriptions(
        &mut self,
        txn: &mut dyn KvTransaction,
        head: Head,
    ) -> Result<()> {
        use layout::{ConsumerId, StateKey};
        let head = match head {
            Head::At(h) => Some(h),
            Head::Missing => Some(0),
            Head::Unreadable => None,
        };
        let mut pager = Pager::new(layout::subscription_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                let parsed = match layout::parse_state_key(&k) {
                    Ok(p) => p,
                    Err(e) => {
                        self.unparsed_key(&k, "subscription-state", &e);
                        continue;
                    }
                };
                let owner = |c: &ConsumerId| c.as_consumer().to_string();
                let (what, pos) = match &parsed {
                    StateKey::Checkpoint(c) => match layout::parse_u64(&v, "checkpoint") {
                        Ok(p) => (format!("checkpoint of {}", owner(c)), p),
                        Err(e) => {
                            self.violation(Some(&k), None, corrupt_message(&e));
                            continue;
                        }
                    },
                    StateKey::ProjectionCheckpoint { name } => {
                        match layout::parse_projection_checkpoint(&v) {
                            Ok((_, p)) => (format!("projection-checkpoint of '{name}'"), p),
                            Err(e) => {
                                self.violation(Some(&k), None, corrupt_message(&e));
                                continue;
                            }
                        }
                    }
                    StateKey::ProjectionRebuild { name } => {
                        match layout::ProjectionRebuild::decode(&v) {
                            Ok(r) => (
                                format!(
                                    "rebuild of projection '{name}' (generation {})",
                                    r.generation
                                ),
                                r.position,
                            ),
                            Err(e) => {
                                self.violation(Some(&k), None, corrupt_message(&e));
                                continue;
                            }
                        }
                    }
                    StateKey::DeadLetter { consumer, position } => {
                        (format!("parked event of {}", owner(consumer)), *position)
                    }
                    StateKey::Lease { .. }
                    | StateKey::Member { .. }
                    | StateKey::ReadModel { .. }
                    | StateKey::StreamSnapshot(_)
                    | StateKey::QuerySnapshot(_)
                    | StateKey::NamedSnapshot(_) => continue,
                };
                if let Some(h) = head {
                    if pos > h {
                        self.violation(
                            Some(&k),
                            Some(pos),
                            format!("{what} is at position {pos}, past the head ({h})"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Keys outside every table of the layout.
    pub(super) async fn stray_keys(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut tags: Vec<u8> = layout::table_tags().to_vec();
        tags.push(NAMESPACE_TAG);
        tags.sort_unstable();
        let mut ranges = Vec::new();
        let mut start: Bound<Vec<u8>> = Bound::Unbounded;
        for &t in &tags {
            ranges.push(KeyRange {
                start,
                end: Bound::Excluded(vec![t]),
            });
            start = Bound::Included(vec![t.wrapping_add(1)]);
        }
        if tags.last() != Some(&0xFF) {
            ranges.push(KeyRange {
                start,
                end: Bound::Unbounded,
            });
        }
        // The head table holds exactly one key.
        let head = layout::head_key();
        ranges.push(KeyRange {
            start: Bound::Excluded(head.clone()),
            end: Bound::Excluded(vec![head[0].wrapping_add(1)]),
        });
        for range in ranges {
            if range.is_empty() {
                continue;
            }
            let mut pager = Pager::new(range, PAGE);
            while let Some(rows) = self.page(&mut pager, txn).await? {
                for (k, _) in rows {
                    self.violation(
                        Some(&k),
                        None,
                        "key outside every table of the event layout".into(),
                    );
                }
            }
        }
        Ok(())
    }
}
