//! Export, import and copy: moving a whole store as event lines.
//!
//! # Export file format
//!
//! JSON lines: a header, one [`EventLine`] per event in position order, and
//! a trailer:
//!
//! ```json
//! {"eskv_export":1,"head":2,"types":["A","B"],"strict":false}
//! {"position":1,"id":"01J...","type":"A","tags":[],"data":{},"recorded_at":"..."}
//! {"position":2,"id":"01J...","type":"B","tags":[],"data":{},"recorded_at":"..."}
//! {"eskv_export_end":{"events":2,"crc32c":"1a2b3c4d"}}
//! ```
//!
//! The trailer's checksum is a [`Digest`] over the event lines. `import`
//! refuses a file whose header promises events that never come, whose
//! trailer is missing, or whose checksum does not match. Plain event lines
//! (the output of `eskv read --json` over the whole log) import too, minus
//! those checks.

use crate::line::{parse_time, Digest, EventLine};
use anyhow::{anyhow, bail, Context as _, Result};
use eskv::{Error, EventStore, ReadOptions, RecordedEvent, StreamRef};
use serde::{Deserialize, Serialize};

/// Export format version written in the header.
pub const FORMAT: u32 = 1;
/// Events read per page when exporting.
pub const PAGE: usize = 512;
/// Most events per append when importing (fewer when a limit says so).
pub const MAX_CHUNK_EVENTS: usize = 512;
/// Most payload bytes per append when importing.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// First line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Format version ([`FORMAT`]).
    pub eskv_export: u32,
    /// The source's head: the number of events that follow.
    pub head: u64,
    /// The source's registered event types.
    pub types: Vec<String>,
    /// Whether the source was in strict mode.
    pub strict: bool,
    /// For an archive (`eskv archive`): what it holds, with its bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::archive::Archived>,
}

/// Last line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    /// Count and checksum.
    pub eskv_export_end: End,
}

/// What the trailer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Events written.
    pub events: u64,
    /// crc32c of the event lines (see [`Digest`]), 8 hex digits.
    pub crc32c: String,
}

/// One line of an export file.
#[derive(Debug)]
pub enum ExportLine {
    /// The header.
    Header(Header),
    /// An event.
    Event(Box<EventLine>),
    /// The trailer.
    Trailer(End),
}

impl ExportLine {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<ExportLine, String> {
        let t = line.trim_start();
        if t.starts_with("{\"eskv_export\"") {
            serde_json::from_str(t)
                .map(ExportLine::Header)
                .map_err(|e| format!("bad export header: {e}"))
        } else if t.starts_with("{\"eskv_export_end\"") {
            serde_json::from_str::<Trailer>(t)
                .map(|t| ExportLine::Trailer(t.eskv_export_end))
                .map_err(|e| format!("bad export trailer: {e}"))
        } else {
            EventLine::parse(t).map(|e| ExportLine::Event(Box::new(e)))
        }
    }
}

/// The header describing `store` now.
pub async fn header(store: &EventStore) -> Result<Header> {
    Ok(Header {
        eskv_export: FORMAT,
        head: store.head().await?,
        types: store.event_types().await?,
        strict: store.strict_types().await?,
        archive: None,
    })
}

/// Reads the log from position 1 up to a fixed head, one page at a time.
#[derive(Debug)]
pub struct LogPager {
    store: EventStore,
    next: u64,
    head: u64,
}

impl LogPager {
    /// Pages over positions `1..=head`.
    pub fn new(store: EventStore, head: u64) -> Self {
        LogPager {
            store,
            next: 1,
            head,
        }
    }

    /// The next page; empty at the end. Positions may skip the holes that
    /// removals (retention, deletion, compaction) left; the pager never
    /// returns a position twice or out of order.
    pub async fn next_page(&mut self) -> Result<Vec<RecordedEvent>> {
        if self.next > self.head {
            return Ok(Vec::new());
        }
        let events = self
            .store
            .read_all(
                ReadOptions::new()
                    .from(self.next)
                    .until(self.head)
                    .limit(PAGE),
            )
            .await?
            .events;
        for e in &events {
            if e.position < self.next {
                bail!(
                    "the source log returned position {} after {} (run `eskv check` on it)",
                    e.position,
                    self.next - 1
                );
            }
            self.next = e.position + 1;
            refuse_live_personal(e)?;
        }
        if events.is_empty() {
            // The rest up to the head was removed.
            self.next = self.head + 1;
        }
        Ok(events)
    }
}

/// Never lose personal data in silence: the line format has no place for
/// it yet (an erased part has nothing left to lose, and its plaintext is
/// gone for good, so no export can hold it).
pub fn refuse_live_personal(e: &RecordedEvent) -> Result<()> {
    if let Some(p) = e.personal.as_ref().filter(|p| !p.is_erased()) {
        return Err(anyhow::Error::new(Error::invalid(format!(
            "the event at position {} has personal data (data subject '{}'); export, copy and archive do not carry personal data yet, so they stop here rather than drop it (nothing was written)",
            e.position,
            p.subject()
        ))));
    }
    Ok(())
}

/// Reads the whole log of `store` and returns the digest of its lines and
/// the number of streams (to compare a copy with its source), calling
/// `progress` with the number of events read after each page.
pub async fn digest_store(
    store: &EventStore,
    mut progress: impl FnMut(u64),
) -> Result<(Digest, u64)> {
    let head = store.head().await?;
    let mut pager = LogPager::new(store.clone(), head);
    let mut digest = Digest::default();
    loop {
        let page = pager.next_page().await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            digest.add(&EventLine::from_recorded(e).to_json());
        }
        progress(digest.events);
    }
    Ok((digest, count_streams(store).await?))
}

/// Counts the streams of `store`.
pub async fn count_streams(store: &EventStore) -> Result<u64> {
    let mut n = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = store.list_streams("", after.as_deref(), 1024).await?;
        n += page.len() as u64;
        match page.last() {
            Some(s) if page.len() == 1024 => after = Some(s.stream_id.clone()),
            _ => return Ok(n),
        }
    }
}

/// Restores events in position order into an empty store with
/// [`EventStore::import`], which keeps ids, positions, stream versions,
/// metadata and recorded times exactly.
///
/// The store is marked as an import in progress
/// ([`EventStore::begin_import`]) before anything is written, and the mark
/// is removed by [`finish`](Self::finish) only: a store left by an import
/// that was cut short (killed, crashed, failed) is reported by `eskv
/// check` and `eskv info`, and refused by another import. An import that
/// fails before writing any event takes its mark back
/// ([`abandon`](Self::abandon)).
#[derive(Debug)]
pub struct Importer {
    store: EventStore,
    /// Whether the in-progress mark is set.
    marked: bool,
    /// Events written to the store.
    written: u64,
    /// The lowest position the next event may have (higher: a hole left
    /// by a removal in the source).
    next: u64,
    /// Events pushed so far.
    pushed: u64,
    /// Events not yet written.
    run: Vec<RecordedEvent>,
    digest: Digest,
    strict: bool,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Digest of the imported event lines.
    pub digest: Digest,
}

impl Importer {
    /// Starts an import into `store`, which must hold no events and no
    /// unfinished import.
    pub async fn new(store: EventStore) -> Result<Self> {
        if let Some(m) = store.import_in_progress().await? {
            bail!("{m}");
        }
        let head = store.head().await?;
        if head != 0 {
            bail!(
                "the target store is not empty (it holds {head} events); import and copy only write into an empty store"
            );
        }
        Ok(Importer {
            store,
            marked: false,
            written: 0,
            next: 1,
            pushed: 0,
            run: Vec::new(),
            digest: Digest::default(),
            strict: false,
        })
    }

    /// Registers the header's types now; its strict mode is turned on at
    /// [`finish`](Self::finish) (never off).
    pub async fn header(&mut self, h: &Header) -> Result<()> {
        if h.eskv_export != FORMAT {
            bail!(
                "export format {} is not supported (this eskv reads format {FORMAT})",
                h.eskv_export
            );
        }
        self.mark(Some(h.head)).await?;
        if !h.types.is_empty() {
            self.store
                .register_event_types(h.types.iter().cloned())
                .await?;
        }
        self.strict = h.strict;
        Ok(())
    }

    /// Marks the store as an import in progress, once.
    async fn mark(&mut self, expected: Option<u64>) -> Result<()> {
        if !self.marked {
            self.store.begin_import(expected).await?;
            self.marked = true;
        }
        Ok(())
    }

    /// Events written to the store so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// After a failure: when no event was written, removes the
    /// in-progress mark, so the store is as good as before. Returns true
    /// when nothing of the import is left.
    pub async fn abandon(&self) -> bool {
        if self.written > 0 {
            return false;
        }
        !self.marked || self.store.finish_import().await.is_ok()
    }

    /// The digest of the lines pushed so far.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Events pushed so far.
    pub fn count(&self) -> u64 {
        self.pushed
    }

    /// Adds the next event; writes buffered events when a run ends.
    pub async fn push(&mut self, line: &EventLine) -> Result<()> {
        let position = line.position.ok_or_else(|| {
            anyhow!("the event has no \"position\"; import reads the output of `eskv export` (or `eskv read --json` over the whole log)")
        })?;
        if position < self.next {
            bail!(
                "expected an event at position {} or later, found position {position}; events must come in position order",
                self.next
            );
        }
        if position > self.next {
            // A hole (events removed in the source): each import call
            // writes consecutive positions, and records the hole.
            self.flush().await?;
        }
        if line.id.is_none() {
            bail!("the event at position {position} has no \"id\"");
        }
        let stream = match (&line.stream, line.version) {
            (Some(s), Some(v)) if v > 0 => Some((s.clone(), v)),
            (None, None) => None,
            _ => bail!(
                "the event at position {position} needs both \"stream\" and \"version\" (1 or more), or neither"
            ),
        };
        let event = line
            .to_new_event()
            .map_err(|e| anyhow!("the event at position {position}: {e}"))?;
        let recorded_at_ms = match &line.recorded_at {
            Some(t) => {
                parse_time(t).map_err(|e| anyhow!("the event at position {position}: {e}"))?
            }
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        if self.run.len() >= MAX_CHUNK_EVENTS {
            self.flush().await?;
        }
        self.digest.add(&line.to_json());
        self.run.push(RecordedEvent {
            position,
            id: event.id,
            event_type: event.event_type,
            tags: event.tags,
            data: event.data,
            metadata: event.metadata,
            recorded_at_ms,
            stream: stream.map(|(stream_id, version)| StreamRef { stream_id, version }),
            personal: None,
        });
        self.next = position + 1;
        self.pushed += 1;
        Ok(())
    }

    /// Writes the buffered events.
    async fn flush(&mut self) -> Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.mark(None).await?;
        let run = std::mem::take(&mut self.run);
        let mut rest: &[RecordedEvent] = &run;
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes + rest[n].data.len() <= MAX_CHUNK_BYTES) {
                bytes += rest[n].data.len();
                n += 1;
            }
            loop {
                match self.write(&rest[..n]).await {
                    Ok(()) => {
                        self.written += n as u64;
                        break;
                    }
                    // Too big for the backend (etcd's operation limit, say):
                    // nothing was written, so try half as many.
                    Err(e) if n > 1 && is_limit(&e) => n /= 2,
                    Err(e) => return Err(e),
                }
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// One atomic import of consecutive events.
    async fn write(&self, chunk: &[RecordedEvent]) -> Result<()> {
        self.store.import_after_removals(chunk).await.map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "cannot import the events at positions {}..={}",
                chunk[0].position,
                chunk[chunk.len() - 1].position
            ))
        })?;
        Ok(())
    }

    /// Writes what is left, turns strict mode on if the source had it, and
    /// removes the in-progress mark.
    pub async fn finish(&mut self) -> Result<Imported> {
        self.flush().await?;
        if self.strict {
            self.store.set_strict_types(true).await?;
        }
        if self.marked {
            self.store.finish_import().await?;
            self.marked = false;
        }
        Ok(Imported {
            digest: self.digest,
        })
    }
}

fn is_limit(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<Error>(), Some(Error::LimitExceeded { .. })))
}

/// Checks a trailer against what was read.
pub fn check_trailer(end: &End, digest: &Digest) -> Result<()> {
    if end.events != digest.events || end.crc32c != digest.hex() {
        bail!(
            "the export file is damaged: its trailer says {} events with crc32c {}, the lines read give {} events with crc32c {}",
            end.events,
            end.crc32c,
            digest.events,
            digest.hex()
        );
    }
    Ok(())
}

/// Imports every event of `source` into the empty `target`, calling
/// `progress` with the number of events copied after each page. Returns
/// the digest of the copied lines. On failure the error says whether the
/// target was left as it was or holds part of the copy.
pub async fn copy(
    source: &EventStore,
    target: &EventStore,
    header: &Header,
    mut progress: impl FnMut(u64),
) -> Result<Digest> {
    let mut importer = Importer::new(target.clone()).await?;
    let res: Result<Digest> = async {
        importer
            .header(header)
            .await
            .context("cannot copy the type registry")?;
        let mut pager = LogPager::new(source.clone(), header.head);
        loop {
            let page = pager.next_page().await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                importer.push(&EventLine::from_recorded(e)).await?;
            }
            progress(importer.count());
        }
        Ok(importer.finish().await?.digest)
    }
    .await;
    match res {
        Ok(d) => Ok(d),
        Err(e) => Err(failed(e, &importer).await),
    }
}

/// Adds to an import's error what it left in the target.
pub async fn failed(e: anyhow::Error, importer: &Importer) -> anyhow::Error {
    let written = importer.written();
    if importer.abandon().await {
        e.context("no events were imported (the target can take the import again)")
    } else {
        e.context(format!(
            "the target holds the first {written} events and is marked as an unfinished import: remove it before trying again"
        ))
    }
}
