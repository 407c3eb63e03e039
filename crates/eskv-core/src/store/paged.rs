//! Paged, streaming reads: the log, a query, a category or a stream as a
//! `futures::Stream` that holds one page at a time.
//!
//! Each page is its own snapshot. A forward read continues after the last
//! position it returned; since positions are gapless and follow commit
//! order, nothing is skipped and nothing is returned twice, and events
//! appended while the read runs are included up to the head the last page
//! saw. A backwards read continues below the last position it returned.

use super::options::{LogFilter, ReadOptions, ReadStreamOptions};
use super::EventStore;
use crate::error::Result;
use crate::event::{Position, RecordedEvent, StreamVersion};
use crate::query::Query;
use futures::stream::{self, Stream, TryStreamExt};

/// Where the next page starts, and how many events are still wanted.
struct Cursor {
    opts: ReadOptions,
    left: Option<usize>,
    done: bool,
}

impl EventStore {
    /// Reads the log as a stream of events, `page_size` at a time: memory
    /// stays at one page however long the log is. `opts` picks the
    /// range, direction, `limit` and `until` as for
    /// [`read_all`](Self::read_all).
    ///
    /// ```
    /// use eskv_core::{EventStore, MemoryStore, NewEvent, ReadOptions};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// for i in 0..10 {
    ///     store.append(vec![NewEvent::new("Tick", vec![i])], None).await?;
    /// }
    /// let mut events = std::pin::pin!(store.read_all_paged(ReadOptions::new(), 3));
    /// let mut seen = 0;
    /// while let Some(event) = events.try_next().await? {
    ///     seen += 1;
    ///     assert_eq!(event.position, seen);
    /// }
    /// assert_eq!(seen, 10);
    /// # Ok(()) }
    /// ```
    pub fn read_all_paged(
        &self,
        opts: ReadOptions,
        page_size: usize,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        self.read_all_filtered_paged(LogFilter::default(), opts, page_size)
    }

    /// [`read_all_filtered`](Self::read_all_filtered) as a paged stream.
    ///
    /// ```
    /// use eskv_core::{EventStore, ExpectedVersion, LogFilter, MemoryStore, NewEvent, ReadOptions};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// for s in ["order-1", "invoice-1", "order-2"] {
    ///     store.append_to_stream(s, ExpectedVersion::NoStream, vec![NewEvent::new("Opened", vec![])]).await?;
    /// }
    /// let orders: Vec<String> = store
    ///     .read_all_filtered_paged(LogFilter::stream_prefix("order-"), ReadOptions::new(), 1)
    ///     .map_ok(|e| e.stream.map(|s| s.stream_id).unwrap_or_default())
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(orders, ["order-1", "order-2"]);
    /// # Ok(()) }
    /// ```
    pub fn read_all_filtered_paged(
        &self,
        filter: LogFilter,
        opts: ReadOptions,
        page_size: usize,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        let store = self.clone();
        pages(opts, page_size, move |o| {
            let (store, filter) = (store.clone(), filter.clone());
            async move { store.read_all_filtered(&filter, o).await.map(|r| r.events) }
        })
    }

    /// A DCB query read ([`read`](Self::read)) as a paged stream.
    ///
    /// ```
    /// use eskv_core::{EventStore, MemoryStore, NewEvent, Query, ReadOptions};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// for i in 0..6 {
    ///     let tag = if i % 2 == 0 { "course:c1" } else { "course:c2" };
    ///     store.append(vec![NewEvent::new("Subscribed", vec![]).with_tags([tag])], None).await?;
    /// }
    /// let c1: Vec<_> = store
    ///     .read_paged(&Query::tags(["course:c1"]), ReadOptions::new().backwards(), 2)
    ///     .map_ok(|e| e.position)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(c1, [5, 3, 1]);
    /// # Ok(()) }
    /// ```
    pub fn read_paged(
        &self,
        query: &Query,
        opts: ReadOptions,
        page_size: usize,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        let (store, query) = (self.clone(), query.clone());
        pages(opts, page_size, move |o| {
            let (store, query) = (store.clone(), query.clone());
            async move { store.read(&query, o).await.map(|r| r.events) }
        })
    }

    /// A category read ([`read_category`](Self::read_category)) as a
    /// paged stream.
    ///
    /// ```
    /// use eskv_core::{EventStore, ExpectedVersion, MemoryStore, NewEvent, ReadOptions};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// for s in ["order-1", "invoice-1", "order-2", "order-3"] {
    ///     store.append_to_stream(s, ExpectedVersion::NoStream, vec![NewEvent::new("Opened", vec![])]).await?;
    /// }
    /// let positions: Vec<u64> = store
    ///     .read_category_paged("order", ReadOptions::new(), 2)
    ///     .map_ok(|e| e.position)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(positions, [1, 3, 4]);
    /// # Ok(()) }
    /// ```
    pub fn read_category_paged(
        &self,
        category: impl AsRef<str>,
        opts: ReadOptions,
        page_size: usize,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        let category = category.as_ref();
        let (store, category) = (self.clone(), category.to_owned());
        pages(opts, page_size, move |o| {
            let (store, category) = (store.clone(), category.clone());
            async move { store.read_category(&category, o).await.map(|r| r.events) }
        })
    }

    /// A stream read ([`read_stream`](Self::read_stream)) as a paged
    /// stream of events, by version.
    ///
    /// ```
    /// use eskv_core::{EventStore, ExpectedVersion, MemoryStore, NewEvent, ReadStreamOptions};
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> eskv_core::Result<()> {
    /// let store = EventStore::open(std::sync::Arc::new(MemoryStore::new())).await?;
    /// let events = (0..5).map(|_| NewEvent::new("Step", vec![])).collect();
    /// store.append_to_stream("job-1", ExpectedVersion::NoStream, events).await?;
    /// let versions: Vec<u64> = store
    ///     .read_stream_paged("job-1", ReadStreamOptions::new().from_version(2), 2)
    ///     .map_ok(|e| e.stream.unwrap().version)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(versions, [2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn read_stream_paged(
        &self,
        stream: impl AsRef<str>,
        opts: ReadStreamOptions,
        page_size: usize,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        let stream = stream.as_ref();
        let (store, stream) = (self.clone(), stream.to_owned());
        let page = page_size.max(1);
        let start = (opts, opts.limit, false);
        stream::try_unfold(start, move |(o, left, done)| {
            let (store, stream) = (store.clone(), stream.clone());
            async move {
                if done || left == Some(0) {
                    return Ok::<_, crate::Error>(None);
                }
                let n = left.map_or(page, |l| l.min(page));
                let events = store.read_stream(&stream, o.limit(n)).await?.events;
                let version = |e: &RecordedEvent| e.stream.as_ref().map_or(0, |s| s.version);
                let next: Option<StreamVersion> = match events.last() {
                    Some(_) if events.len() < n => None,
                    None => None,
                    Some(last) if o.backwards => version(last).checked_sub(1).filter(|&v| v > 0),
                    Some(last) => Some(version(last) + 1),
                };
                let left = left.map(|l| l - events.len());
                let o = ReadStreamOptions {
                    from_version: next,
                    ..o
                };
                Ok(Some((
                    stream::iter(events.into_iter().map(Ok)),
                    (o, left, next.is_none()),
                )))
            }
        })
        .try_flatten()
    }
}

/// Pages through a positional read: `read(opts)` returns one page, at most
/// `opts.limit` events; the next page starts after (or, backwards, below)
/// the last event returned.
fn pages<F, Fut>(
    opts: ReadOptions,
    page_size: usize,
    read: F,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static
where
    F: Fn(ReadOptions) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<RecordedEvent>>> + Send + 'static,
{
    let page = page_size.max(1);
    let start = Cursor {
        opts,
        left: opts.limit,
        done: false,
    };
    stream::try_unfold((start, read), move |(c, read)| async move {
        if c.done || c.left == Some(0) {
            return Ok::<_, crate::Error>(None);
        }
        let n = c.left.map_or(page, |l| l.min(page));
        let events = read(c.opts.limit(n)).await?;
        let next: Option<Position> = match events.last() {
            Some(_) if events.len() < n => None,
            None => None,
            Some(last) if c.opts.backwards => last.position.checked_sub(1).filter(|&p| p > 0),
            Some(last) => Some(last.position + 1),
        };
        let cursor = Cursor {
            opts: ReadOptions {
                from: next,
                ..c.opts
            },
            left: c.left.map(|l| l - events.len()),
            done: next.is_none(),
        };
        Ok(Some((
            stream::iter(events.into_iter().map(Ok)),
            (cursor, read),
        )))
    })
    .try_flatten()
}
