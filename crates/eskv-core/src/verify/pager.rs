//! Reading a table in pages, so memory stays bounded by a page.

use super::PAGE;
use crate::error::Result;
use crate::kv::{KeyRange, KvPair, KvTransaction, ScanOptions};
use std::collections::VecDeque;
use std::ops::Bound;

/// Reads one table (or any range) in pages.
pub(super) struct Pager {
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    page: usize,
    done: bool,
}

impl Pager {
    pub(super) fn new(range: KeyRange, page: usize) -> Self {
        Pager {
            start: range.start,
            end: range.end,
            page,
            done: false,
        }
    }

    pub(super) async fn next(
        &mut self,
        txn: &mut dyn KvTransaction,
    ) -> Result<Option<Vec<KvPair>>> {
        if self.done {
            return Ok(None);
        }
        let range = KeyRange {
            start: self.start.clone(),
            end: self.end.clone(),
        };
        let rows = txn
            .scan(range, ScanOptions::forward(Some(self.page)))
            .await?;
        if rows.len() < self.page {
            self.done = true;
        }
        match rows.last() {
            Some((k, _)) => self.start = Bound::Excluded(k.clone()),
            None => {
                self.done = true;
                return Ok(None);
            }
        }
        Ok(Some(rows))
    }
}

/// A pager read one pair at a time, with lookahead.
pub(super) struct Cursor {
    pager: Pager,
    buf: VecDeque<KvPair>,
}

impl Cursor {
    pub(super) fn new(range: KeyRange) -> Self {
        Cursor {
            pager: Pager::new(range, PAGE),
            buf: VecDeque::new(),
        }
    }

    pub(super) async fn peek(&mut self, txn: &mut dyn KvTransaction) -> Result<Option<&KvPair>> {
        if self.buf.is_empty() {
            if let Some(rows) = self.pager.next(txn).await? {
                self.buf.extend(rows);
            }
        }
        Ok(self.buf.front())
    }

    pub(super) fn pop(&mut self) -> Option<KvPair> {
        self.buf.pop_front()
    }
}
