//! Read paths: the log, categories, streams and DCB queries, over
//! positional indexes read in pages.
//!
//! The public read API is here; [`log`], [`query`], [`stream`] and
//! [`scan`] hold the paths it runs.

mod log;
mod query;
mod scan;
mod stream;

// What the rest of the store reads with.
pub(super) use log::read_head;
pub(super) use scan::{load_events, scan_index, Order};
pub(super) use stream::{read_stream_meta, stream_events_as_stored};

use super::live::{first_readable_version, log_cut_of, now_ms, Live};
use super::options::{
    consistent_through, LogFilter, ReadOptions, ReadResult, ReadStreamOptions, StreamInfo,
    StreamRead,
};
use super::EventStore;
use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent, StreamVersion};
use crate::kv::ScanOptions;
use crate::layout::{self, Index, StreamMeta};
use crate::query::Query;
use crate::validate::validate_stream_id;
use log::{bounds, read_head_probing};
use query::{read_forward, read_live, Source};
use stream::{stream_info_of, stream_positions, stream_positions_of, stream_scan};

/// Most versions one page of a stream read loads.
const STREAM_PAGE: usize = 1024;

impl EventStore {
    /// The last assigned position (0 when the store is empty).
    pub async fn head(&self) -> Result<Position> {
        let mut txn = self.inner.kv.begin().await?;
        read_head(&mut *txn).await
    }

    /// DCB read: the events matching `query`, plus the position through
    /// which the read is consistent
    /// ([`ReadResult::consistent_through`]), to pass back as the `after`
    /// of a condition on the same query.
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "query", count)
    )]
    pub async fn read(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        let r = self.read_stored(query, opts).await?;
        self.decoded_result(r)
    }

    async fn read_stored(&self, query: &Query, opts: ReadOptions) -> Result<ReadResult> {
        let mut q = query.clone();
        self.validate_query(&mut q)?;
        if q.is_all() {
            // Every event: the log itself, which skips removed positions.
            return self.read_log(&LogFilter::default(), opts).await;
        }
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        if !opts.backwards && opts.limit != Some(0) {
            return read_forward(&mut *txn, &q, opts, &mut live).await;
        }
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                head,
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let events = read_live(
            &mut *txn,
            Source::Query(&q),
            (lo, hi),
            order,
            opts.limit,
            &mut live,
        )
        .await?;
        Ok(ReadResult {
            head,
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// The read filter of this store (see [`Live`]).
    pub(crate) fn live(&self) -> Live<'_> {
        Live::of(&self.inner.opts)
    }

    /// Reads the global log.
    pub async fn read_all(&self, opts: ReadOptions) -> Result<ReadResult> {
        self.read_all_filtered(&LogFilter::default(), opts).await
    }

    /// Reads the global log, keeping only events that pass `filter`. A
    /// query filter uses the type and tag indexes; a stream prefix is
    /// checked on each event.
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "log", count)
    )]
    pub async fn read_all_filtered(
        &self,
        filter: &LogFilter,
        opts: ReadOptions,
    ) -> Result<ReadResult> {
        let r = self.read_all_stored(filter, opts).await?;
        self.decoded_result(r)
    }

    async fn read_all_stored(&self, filter: &LogFilter, opts: ReadOptions) -> Result<ReadResult> {
        if let Some(q) = &filter.query {
            let mut q = q.clone();
            self.validate_query(&mut q)?;
            if filter.stream_prefix.is_none() {
                return self.read_stored(&q, opts).await;
            }
        }
        self.read_log(filter, opts).await
    }

    /// Reads a category: the events of every stream whose id, up to its
    /// first `-`, is `category` (like EventStoreDB's `$ce-` streams, but
    /// from an index, without copying events).
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "category", count)
    )]
    pub async fn read_category(
        &self,
        category: impl AsRef<str>,
        opts: ReadOptions,
    ) -> Result<ReadResult> {
        let category = category.as_ref();
        validate_stream_id(category, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let mut live = self.live();
        let head = read_head_probing(&mut *txn, &mut live).await?;
        let Some((lo, hi)) = bounds(opts, head) else {
            return Ok(ReadResult {
                head,
                consistent_through: consistent_through(opts, head, &[]),
                events: Vec::new(),
            });
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let source = Source::Index(Index::Category(category));
        let events = read_live(&mut *txn, source, (lo, hi), order, opts.limit, &mut live).await?;
        let events = self.decoded(events)?;
        Ok(ReadResult {
            head,
            consistent_through: consistent_through(opts, head, &events),
            events,
        })
    }

    /// Reads a stream by version: its events, its version, and the
    /// position the read is consistent through (see [`StreamRead`]), all
    /// from one snapshot.
    ///
    /// ```
    /// use eskv_core::{EventStore, ExpectedVersion, MemoryStore, NewEvent, ReadStreamOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// store.append(vec![NewEvent::new("Other", vec![])], None).await?;
    /// store.append_to_stream("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("Placed", vec![])]).await?;
    ///
    /// let read = store.read_stream("order-1", ReadStreamOptions::new()).await?;
    /// assert_eq!((read.len(), read.version, read.consistent_through), (1, 1, 2));
    /// // The version is what an append decided on this read expects.
    /// store.append_to_stream("order-1", ExpectedVersion::Exact(read.version), vec![NewEvent::new("Paid", vec![])]).await?;
    /// for event in &read {
    ///     assert_eq!(event.event_type, "Placed");
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(
        name = "eskv.read",
        level = "debug",
        skip_all,
        fields(kind = "stream", count)
    )]
    pub async fn read_stream(
        &self,
        stream: impl AsRef<str>,
        opts: ReadStreamOptions,
    ) -> Result<StreamRead> {
        let stream = stream.as_ref();
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        // The stream index bounds the read: versions run 1..=n, so an open
        // upper bound stops at the last.
        let (lo, hi) = if opts.backwards {
            (1, opts.from_version.unwrap_or(StreamVersion::MAX))
        } else {
            (opts.from_version.unwrap_or(1).max(1), StreamVersion::MAX)
        };
        let order = Order::new(opts.backwards, self.inner.kv.capabilities());
        let reads = lo <= hi && opts.limit != Some(0);
        // Pages of at most `STREAM_PAGE` versions: a backend serves a read of
        // that size where it is called (fjall, etcd's one request), where an
        // unbounded scan would take a hop to a blocking thread.
        let want0 = opts.limit.unwrap_or(usize::MAX).min(STREAM_PAGE);
        // One backend call: the head and the stream's version (for what the
        // read reports), its lifecycle record (for the live filter), and the
        // first page of its index where one scan reads it.
        let first_scan = reads
            .then(|| stream_scan(stream, (lo, hi), opts, order, want0))
            .flatten();
        let keys = [
            layout::head_key(),
            layout::stream_key(stream),
            layout::stream_life_key(stream),
            layout::log_life_key(),
        ];
        let (vals, mut first_rows) = txn.read_many(&keys, first_scan.as_slice()).await?;
        let head = vals[0]
            .as_deref()
            .map_or(Ok(0), |v| layout::parse_u64(v, "head"))?;
        let version = match vals[1].as_deref() {
            Some(v) => StreamMeta::decode(v)?.version,
            None => 0,
        };
        let until = opts.until.unwrap_or(Position::MAX);
        let mut out = Vec::new();
        if reads {
            let mut live = self.live();
            live.note_stream(stream, vals[1].as_deref(), vals[2].as_deref())?;
            live.note_log_cut(vals[3].as_deref())?;
            let mut first_rows = first_rows.pop();
            let (mut lo, mut hi) = (lo, hi);
            // Released events are a prefix of the versions: when a page comes
            // back with some dropped, the next one starts at the first live
            // version (forwards) or stops there (backwards).
            loop {
                let left = opts.limit.map_or(usize::MAX, |l| l - out.len());
                let want = left.min(STREAM_PAGE);
                let positions = match first_rows.take() {
                    Some(rows) => stream_positions_of(rows, opts, want, until)?,
                    None => {
                        stream_positions(&mut *txn, stream, (lo, hi), opts, order, want, until)
                            .await?
                    }
                };
                let n = positions.len();
                let loaded = load_events(&mut *txn, &positions).await?;
                let edge = loaded
                    .last()
                    .and_then(|e| e.stream.as_ref())
                    .map(|r| r.version);
                let kept = live.retain(&mut *txn, loaded).await?;
                let dropped = kept.len() < n;
                out.extend(kept);
                // A full page is followed by the next when it was cut to the
                // page size or lost events to the live filter.
                let (Some(edge), true, true) = (edge, dropped || want < left, n == want) else {
                    break;
                };
                // Released by the stream's record, or only by the log's
                // truncation (which keeps no per-stream first version).
                let first = if !dropped {
                    1
                } else {
                    match live.stream_state(&mut *txn, stream).await? {
                        Some((v, life)) => life.first_live(v),
                        None => 1,
                    }
                };
                if opts.backwards {
                    hi = edge.saturating_sub(1);
                    if hi < first.max(lo) {
                        break;
                    }
                } else {
                    lo = (edge + 1).max(first);
                    if lo > version {
                        break;
                    }
                }
            }
        }
        let top = opts.until.map_or(head, |u| u.min(head));
        let consistent_through = match (opts.backwards, opts.limit) {
            (false, Some(l)) if out.len() >= l => out
                .last()
                .map_or(top, |e: &RecordedEvent| e.position.min(top)),
            _ => top,
        };
        Ok(StreamRead {
            events: self.decoded(out)?,
            version,
            consistent_through,
        })
    }

    /// The first version of `stream` whose event lies after global position
    /// `after` (the stream's version + 1 if none does). A binary search
    /// over the stream index: O(log n) reads, for resuming stream readers
    /// from a position.
    pub async fn stream_version_after(
        &self,
        stream: &str,
        after: Position,
    ) -> Result<StreamVersion> {
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let Some(meta) = read_stream_meta(&mut *txn, stream).await? else {
            return Ok(1);
        };
        if meta.last_position <= after {
            return Ok(meta.version + 1);
        }
        // Versions below the compacted edge have no index entries: the
        // search starts there (any earlier version was removed anyway).
        let floor = match self.live().stream_state(&mut *txn, stream).await? {
            Some((_, life)) => life.compacted_before.max(1),
            None => 1,
        };
        // Invariant: position(lo - 1) <= after < position(hi).
        let (mut lo, mut hi) = (floor.min(meta.version), meta.version);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = layout::stream_event_key(stream, mid);
            let pos = txn.get(&key).await?.ok_or_else(|| {
                Error::corrupt(
                    None,
                    format!("stream '{stream}' has no index entry for version {mid}"),
                )
            })?;
            if layout::parse_stream_entry(&key, &pos)? > after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// A stream's version and last position.
    pub async fn stream_info(&self, stream: impl AsRef<str>) -> Result<StreamInfo> {
        let stream = stream.as_ref();
        validate_stream_id(stream, &self.inner.opts.limits)?;
        let mut txn = self.inner.kv.begin().await?;
        let vals = txn
            .get_many(&[
                layout::stream_key(stream),
                layout::stream_life_key(stream),
                layout::log_life_key(),
            ])
            .await?;
        let cut = log_cut_of(vals[2].as_deref())?;
        let mut info = stream_info_of(
            stream.to_owned(),
            vals[0].as_deref(),
            vals[1].as_deref(),
            cut,
        )?;
        info.first_version =
            first_readable_version(&mut *txn, &info, vals[1].as_deref(), cut, now_ms()).await?;
        Ok(info)
    }

    /// Lists streams whose id starts with `prefix`, in id order, at most
    /// `limit`, starting after stream id `after` (for paging). Each entry
    /// is what [`EventStore::stream_info`] says of that stream.
    pub async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        let mut txn = self.inner.kv.begin().await?;
        let rows = txn
            .scan(
                layout::stream_list_range(prefix, after),
                ScanOptions::forward(Some(limit)),
            )
            .await?;
        let mut lives: Vec<Vec<u8>> = rows
            .iter()
            .map(|(k, _)| Ok(layout::stream_life_key(&layout::parse_stream_key(k)?)))
            .collect::<Result<_>>()?;
        lives.push(layout::log_life_key());
        let mut lives = txn.get_many(&lives).await?;
        let cut = log_cut_of(lives.pop().flatten().as_deref())?;
        let now = now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for ((k, v), life) in rows.into_iter().zip(lives) {
            let mut info = stream_info_of(
                layout::parse_stream_key(&k)?,
                Some(&v),
                life.as_deref(),
                cut,
            )?;
            info.first_version =
                first_readable_version(&mut *txn, &info, life.as_deref(), cut, now).await?;
            out.push(info);
        }
        Ok(out)
    }
}

impl EventStore {
    /// The one step between the stored events and what every read path
    /// returns (stream, log, category and DCB reads, and through them
    /// paged reads, subscriptions, projections and deciders): upcasting to
    /// each type's current schema version.
    pub(super) fn decoded(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
        tracing::Span::current().record("count", events.len());
        self.inner.opts.upcasters.upcast_all(events)
    }

    fn decoded_result(&self, r: ReadResult) -> Result<ReadResult> {
        Ok(ReadResult {
            events: self.decoded(r.events)?,
            consistent_through: r.consistent_through,
            head: r.head,
        })
    }
}
