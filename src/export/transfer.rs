//! Reading a whole store page by page, and writing events into an empty
//! one: what export, import, copy and archive share.

use super::format::Header;
use super::line::{Digest, EventLine};
use crate::{
    Error, EventStore, ReadOptions, RecordedEvent, Result, StoreKey, StreamRef, WrappedSubjectKey,
};
use std::collections::HashSet;

/// Events read per page when exporting.
pub const PAGE: usize = 512;
/// Most events per append when importing (fewer when a limit says so).
pub const MAX_CHUNK_EVENTS: usize = 512;
/// Most payload bytes per append when importing.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// Reads the log from position 1 up to a fixed head, one page at a time,
/// with personal parts sealed (or erased), never opened.
#[derive(Debug)]
pub struct LogPager {
    store: EventStore,
    next: u64,
    head: u64,
}

impl LogPager {
    /// Pages over positions `1..=head` of `store` (through its
    /// [`EventStore::sealed_reads`] handle).
    pub async fn new(store: &EventStore, head: u64) -> Result<Self> {
        Ok(LogPager {
            store: store.sealed_reads().await?,
            next: 1,
            head,
        })
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
                return Err(Error::corrupt(
                    Some(e.position),
                    format!(
                        "the source log returned position {} after {} (run `eskv check` on it)",
                        e.position,
                        self.next - 1
                    ),
                ));
            }
            self.next = e.position + 1;
        }
        if events.is_empty() {
            // The rest up to the head was removed.
            self.next = self.head + 1;
        }
        Ok(events)
    }
}

/// Reads the whole log of `store` and returns the content digest of its
/// lines ([`EventLine::to_content_json`]) and the number of streams (to
/// compare a copy or restore with its source), calling `progress` with
/// the number of events read after each page.
pub async fn digest_store(
    store: &EventStore,
    mut progress: impl FnMut(u64),
) -> Result<(Digest, u64)> {
    let head = store.head().await?;
    let mut pager = LogPager::new(store, head).await?;
    let mut digest = Digest::default();
    loop {
        let page = pager.next_page().await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            digest.add(&EventLine::from_recorded(e).to_content_json());
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
/// [`EventStore::import_after_removals`], which keeps ids, positions,
/// stream versions, metadata, recorded times and sealed personal parts
/// exactly.
///
/// Subject keys come from the file's key lines ([`push_key`](Self::push_key))
/// or, for an archive or a copy, from the store the events came from
/// ([`keys_from`](Self::keys_from)); they are imported, still wrapped,
/// before the first event that needs them. Each key is checked against
/// the target's store key when it is pushed, before anything is written:
/// a wrong key is [`Error::WrongStoreKey`] with the target untouched.
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
    /// The header, applied (types registered, mark set) at the first write.
    header: Option<Header>,
    /// Whether a file's header was given, so its trailer must be checked
    /// ([`trailer`](Self::trailer)) before [`finish`](Self::finish).
    trailer_due: bool,
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
    /// Keys checked and not yet written.
    keys: Vec<WrappedSubjectKey>,
    /// Subjects whose key is pushed or written (or known absent).
    known: HashSet<String>,
    /// Subjects of the run with no key pushed: fetched from `keys_from`.
    wanted: Vec<String>,
    keys_from: Option<EventStore>,
    digest: Digest,
    content: Digest,
    key_digest: Digest,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Digest of the imported event lines.
    pub digest: Digest,
    /// Content digest of the imported event lines (personal parts reduced
    /// to their subject), to compare with [`digest_store`] of the target.
    pub content: Digest,
}

impl Importer {
    /// Starts an import into `store`, which must hold no events and no
    /// unfinished import.
    pub async fn new(store: EventStore) -> Result<Self> {
        if let Some(m) = store.import_in_progress().await? {
            return Err(Error::invalid(m.to_string()));
        }
        let head = store.head().await?;
        if head != 0 {
            return Err(Error::invalid(format!(
                "the target store is not empty (it holds {head} events); import and copy only write into an empty store"
            )));
        }
        Ok(Importer {
            store,
            header: None,
            trailer_due: false,
            marked: false,
            written: 0,
            next: 1,
            pushed: 0,
            run: Vec::new(),
            keys: Vec::new(),
            known: HashSet::new(),
            wanted: Vec::new(),
            keys_from: None,
            digest: Digest::default(),
            content: Digest::default(),
            key_digest: Digest::default(),
        })
    }

    /// Takes the subject keys the pushed lines do not carry from `source`
    /// (the store an archive came from, or a copy's source), wrapped
    /// under its store key; when both stores have a store key and they
    /// differ, each key is re-wrapped under the target's
    /// ([`WrappedSubjectKey::rewrap`]).
    pub fn keys_from(mut self, source: EventStore) -> Self {
        self.keys_from = Some(source);
        self
    }

    /// Checks the header; its types are registered, and its strict mode
    /// turned on at [`finish`](Self::finish) (never off).
    ///
    /// An import with a header is an export file's: its trailer must
    /// then be checked with [`trailer`](Self::trailer) before
    /// [`finish`](Self::finish), which refuses a file cut short.
    pub async fn header(&mut self, h: &Header) -> Result<()> {
        h.check_format()?;
        self.header = Some(h.clone());
        self.trailer_due = true;
        Ok(())
    }

    /// Checks an export file's trailer against the event and subject key
    /// lines pushed ([`End::check`]): a damaged or incomplete file is
    /// [`Error::InvalidInput`].
    ///
    /// [`End::check`]: super::End::check
    pub fn trailer(&mut self, end: &super::End) -> Result<()> {
        end.check(&self.digest, &self.key_digest)?;
        self.trailer_due = false;
        Ok(())
    }

    /// Marks the store as an import in progress and applies the header,
    /// once, before the first write.
    async fn start(&mut self) -> Result<()> {
        if !self.marked {
            let expected = self.header.as_ref().map(|h| h.head);
            self.store.begin_import(expected).await?;
            self.marked = true;
            if let Some(h) = self.header.as_ref().filter(|h| !h.types.is_empty()) {
                self.store
                    .register_event_types(h.types.iter().cloned())
                    .await?;
            }
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

    /// The digest of the event lines pushed so far.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The digest of the key lines pushed so far.
    pub fn key_digest(&self) -> Digest {
        self.key_digest
    }

    /// Events pushed so far.
    pub fn count(&self) -> u64 {
        self.pushed
    }

    /// Adds a subject key line; checks it against the target's store key
    /// at once (nothing is written yet).
    pub fn push_key(&mut self, line: &super::format::KeyLine) -> Result<()> {
        let key = line.to_key().map_err(Error::invalid)?;
        self.key_digest.add(&line.to_json());
        self.check_key(&key)?;
        self.known.insert(key.subject().to_owned());
        self.keys.push(key);
        Ok(())
    }

    fn check_key(&self, key: &WrappedSubjectKey) -> Result<()> {
        if key.is_forgotten() {
            return Ok(());
        }
        match &self.store.options().store_key {
            Some(k) => key.check(k),
            None => Err(Error::WrongStoreKey {
                message: format!(
                    "the import carries personal data (data subject '{}'), and the target store was opened without a store key: give it the key the data was written with (--store-key)",
                    key.subject()
                ),
            }),
        }
    }

    /// Adds the next event; writes buffered events when a run ends.
    pub async fn push(&mut self, line: &EventLine) -> Result<()> {
        let position = line.position.ok_or_else(|| {
            Error::invalid("the event has no \"position\"; import reads the output of `eskv export` (or `eskv read --json` over the whole log)")
        })?;
        if position < self.next {
            return Err(Error::invalid(format!(
                "expected an event at position {} or later, found position {position}; events must come in position order",
                self.next
            )));
        }
        // Invariant: `position + 1` below never overflows, and appends
        // after the import have numbers left.
        let ceiling = self.store.options().limits.import_ceiling();
        if position > ceiling {
            return Err(Error::invalid(format!(
                "the event at position {position} is beyond position {ceiling}, the highest an import accepts (Limits::import_ceiling: numbers are left for appends after the import)"
            )));
        }
        if position > self.next {
            // A hole (events removed in the source): each import call
            // writes consecutive positions, and records the hole.
            self.flush().await?;
        }
        let at = |e: String| Error::invalid(format!("the event at position {position}: {e}"));
        let imported = line.to_imported().map_err(at)?;
        if let Some((s, v)) = imported.stream.as_ref().filter(|(_, v)| *v > ceiling) {
            return Err(Error::invalid(format!(
                "the event at position {position} has version {v} of stream '{s}', beyond version {ceiling}, the highest an import accepts (Limits::import_ceiling: numbers are left for appends after the import)"
            )));
        }
        let (event, stream, personal) = (imported.event, imported.stream, imported.personal);
        let recorded_at_ms = imported.recorded_at_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        if self.run.len() >= MAX_CHUNK_EVENTS {
            self.flush().await?;
        }
        if let Some(p) = &personal {
            if self.known.insert(p.subject().to_owned()) && self.keys_from.is_some() {
                self.wanted.push(p.subject().to_owned());
            }
        }
        self.digest.add(&line.to_json());
        self.content.add(&line.to_content_json());
        self.run.push(RecordedEvent {
            position,
            id: event.id,
            event_type: event.event_type,
            tags: event.tags,
            data: event.data,
            metadata: event.metadata,
            recorded_at_ms,
            stream: stream.map(|(stream_id, version)| StreamRef { stream_id, version }),
            personal,
        });
        self.next = position + 1;
        self.pushed += 1;
        Ok(())
    }

    /// Fetches the keys of `wanted` from `keys_from`, re-wrapped for the
    /// target and checked.
    async fn fetch_keys(&mut self) -> Result<()> {
        let (Some(source), false) = (&self.keys_from, self.wanted.is_empty()) else {
            return Ok(());
        };
        let wanted = std::mem::take(&mut self.wanted);
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let found = source.subject_keys(&names).await?;
        let rewrap: Option<(&StoreKey, &StoreKey)> =
            match (&source.options().store_key, &self.store.options().store_key) {
                (Some(a), Some(b)) if a.to_bytes() != b.to_bytes() => Some((a, b)),
                _ => None,
            };
        let mut keys = Vec::with_capacity(found.len());
        for k in found.into_iter().flatten() {
            let k = match rewrap {
                Some((from, to)) => k.rewrap(from, to)?,
                None => k,
            };
            self.check_key(&k)?;
            keys.push(k);
        }
        self.keys.extend(keys);
        Ok(())
    }

    /// Writes the buffered keys, then the buffered events.
    async fn flush(&mut self) -> Result<()> {
        self.fetch_keys().await?;
        if self.run.is_empty() && self.keys.is_empty() {
            return Ok(());
        }
        self.start().await?;
        if !self.keys.is_empty() {
            let keys = std::mem::take(&mut self.keys);
            self.store.import_subject_keys(&keys).await?;
        }
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
                match self.store.import_after_removals(&rest[..n]).await {
                    Ok(_) => {
                        self.written += n as u64;
                        break;
                    }
                    // Too big for the backend (etcd's operation limit, say):
                    // nothing was written, so try half as many.
                    Err(Error::LimitExceeded { .. }) if n > 1 => n /= 2,
                    Err(e) => return Err(e),
                }
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Writes what is left, turns strict mode on if the source had it, and
    /// removes the in-progress mark.
    ///
    /// A file whose header was given and whose trailer was not checked is
    /// cut short: [`Error::InvalidInput`], with the events written so far
    /// left in the store under its in-progress mark (reported by `eskv
    /// check`), never taken for a complete import.
    pub async fn finish(&mut self) -> Result<Imported> {
        if self.trailer_due {
            return Err(Error::invalid(format!(
                "the export ends after {} events without its last line (the trailer with counts and checksums): the file is cut short{}",
                self.pushed,
                if self.written > 0 {
                    "; the store holds what was written and is marked as an unfinished import"
                } else {
                    ""
                }
            )));
        }
        self.flush().await?;
        self.start().await?;
        if self.header.as_ref().is_some_and(|h| h.strict) {
            self.store.set_strict_types(true).await?;
        }
        if self.marked {
            self.store.finish_import().await?;
            self.marked = false;
        }
        Ok(Imported {
            digest: self.digest,
            content: self.content,
        })
    }
}

/// Imports every event of `source` into the empty `target`, with the
/// subject keys its personal parts need (re-wrapped under the target's
/// store key when it differs), calling `progress` with the number of
/// events copied after each page. Returns the content digest of the
/// copied lines. On failure, [`Importer::abandon`] tells whether the
/// target was left as it was.
pub async fn copy(
    source: &EventStore,
    importer: &mut Importer,
    header: &Header,
    mut progress: impl FnMut(u64),
) -> Result<Digest> {
    importer.header(header).await?;
    // A store's events, not a file: there is no trailer to check.
    importer.trailer_due = false;
    let mut pager = LogPager::new(source, header.head).await?;
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
    Ok(importer.finish().await?.content)
}
