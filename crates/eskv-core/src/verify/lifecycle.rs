//! Removal runs (compaction) and stream lifecycle records: read before
//! the passes that must tell a removed event from a missing one.

use super::pager::Pager;
use super::{corrupt_message, Checker, PAGE};
use crate::error::Result;
use crate::event::Position;
use crate::kv::KvTransaction;
use crate::layout;

impl Checker<'_> {
    /// Reads the removal runs and lifecycle records (both small: one row
    /// per run and per stream with retention) before the passes that
    /// need them.
    pub(super) async fn lifecycle(&mut self, txn: &mut dyn KvTransaction) -> Result<()> {
        let mut pager = Pager::new(layout::removed_range(), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                let run = layout::parse_removed_key(&k).and_then(|first| {
                    let last = layout::parse_u64(layout::open_index_value(&k, &v)?, "removal run")?;
                    Ok((first, last))
                });
                match run {
                    Ok((first, last)) if first <= last => {
                        self.report.removed += last - first + 1;
                        self.removed.push((first, last));
                    }
                    Ok((first, last)) => self.violation(
                        Some(&k),
                        Some(first),
                        format!("removal run {first}..={last} ends before it starts"),
                    ),
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
        }
        let mut pager = Pager::new(layout::stream_life_range(None), PAGE);
        while let Some(rows) = self.page(&mut pager, txn).await? {
            for (k, v) in rows {
                match layout::parse_stream_life_key(&k)
                    .and_then(|s| Ok((s, crate::lifecycle::StreamLife::decode(&v)?)))
                {
                    Ok((s, l)) => {
                        self.lives.insert(s, l);
                    }
                    Err(e) => self.violation(Some(&k), None, corrupt_message(&e)),
                }
            }
        }
        Ok(())
    }

    /// True when every position of `[from, to]` was removed by compaction.
    pub(super) fn removed_range(&self, from: Position, to: Position) -> bool {
        let mut next = from;
        for &(a, b) in &self.removed {
            if b < next {
                continue;
            }
            if a > next {
                return false;
            }
            next = b + 1;
            if next > to {
                return true;
            }
        }
        next > to
    }

    /// The first version of `stream` that compaction kept.
    pub(super) fn first_kept_version(&self, stream: &str) -> u64 {
        self.lives
            .get(stream)
            .map_or(1, |l| l.compacted_before.max(1))
    }
}
