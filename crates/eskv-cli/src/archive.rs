//! Archiving: moving a stream (or its versions before one) or every event
//! before a global position into a verified export file, then releasing
//! them in the store, in steps that a re-run finishes after a crash.
//!
//! # Steps and why a re-run is safe
//!
//! 1. The live events in scope are written in the export format
//!    ([`eskv::export`]) to `FILE.partial`, whose header names the
//!    scope with a fixed bound (`{"stream":..,"before_version":N}` or
//!    `{"before_position":P}`), and the file is synced.
//! 2. The file is read back and checked: its header, positions in order,
//!    the trailer's count and crc32c, and the digest of the lines against
//!    the events the store holds in scope *now*.
//! 3. It is renamed to `FILE` (and the directory synced): from here on the
//!    file is the durable record of the archive's intent.
//! 4. The events are released in one transaction: the stream's retention
//!    gets `truncate_before = N` (other settings kept), or the log is
//!    truncated before `P` (`$log-truncated`, whose note names the file
//!    and its checksum). `compact` then removes their rows.
//!
//! A crash before 3 leaves the store as it was and at most a `.partial`
//! file, which the next run replaces. A crash between 3 and 4 leaves
//! `FILE` naming the scope: the next run with the same scope checks it
//! against the store again and releases exactly its bound (events
//! appended meanwhile lie above it). A run after 4 finds the release done
//! and writes nothing ([`ArchiveOutcome::already`]). The release itself is
//! one transaction, so no event is both kept and archived halfway, and
//! none is released that is not in a checked file.
//!
//! # Bringing events back
//!
//! An archive is an export: `eskv import` restores it into an empty store,
//! with its ids, positions (the ones not archived stay holes), stream
//! versions, metadata and times. Importing it back into the store it came
//! from is refused (as every import into a non-empty store is): positions
//! are never reused, so the archived events cannot take their old places,
//! and appending them anew would change their positions and versions.
//!
//! # Personal data
//!
//! Personal parts go into the archive sealed, as the store holds them;
//! the subject keys do not: they stay in the store, so `forget(subject)`
//! there shreds the archived copies too, wherever the file went. To
//! import an archive with personal data, name the store it came from
//! (`eskv import --keys-from URL`, [`eskv::export::Importer::keys_from`]):
//! the keys are copied from it, still wrapped, and a subject forgotten
//! there comes back erased.

use anyhow::{anyhow, Context as _, Result};
pub use eskv::export::Archived;
use eskv::export::{Digest, EventLine, ExportLine, ExportWriter, Header, LogPager};
use eskv::{
    Error, EventStore, ExpectedVersion, LogTruncation, Position, ReadStreamOptions, RecordedEvent,
    StreamVersion,
};
use std::io::{BufRead, BufWriter};
use std::path::{Path, PathBuf};

/// What to archive, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A stream's live events, all of them (`before_version: None`) or
    /// those below a version.
    Stream {
        /// The stream.
        stream: String,
        /// Archive the versions below this one.
        before_version: Option<StreamVersion>,
    },
    /// Every live event at a position below this one, DCB events included.
    BeforePosition(Position),
}

/// Whether a file with scope `a` is what `scope` asks for.
fn answers(a: &Archived, scope: &Scope) -> bool {
    match (a, scope) {
        (
            Archived::Stream {
                stream,
                before_version,
            },
            Scope::Stream {
                stream: s,
                before_version: v,
            },
        ) => stream == s && v.is_none_or(|v| v == *before_version),
        (Archived::Log { before_position }, Scope::BeforePosition(p)) => before_position == p,
        _ => false,
    }
}

/// A step of [`archive`], reported to its observer after it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveStep {
    /// The `.partial` file is written and synced.
    Written,
    /// It was read back and matches the store.
    Verified,
    /// It was renamed into place: the archive's durable record.
    Renamed,
    /// The events were released in the store.
    Released,
}

/// What [`archive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOutcome {
    /// The archive file.
    pub file: PathBuf,
    /// Its scope, with the bound.
    pub scope: Archived,
    /// Events in the file.
    pub events: u64,
    /// crc32c of its event lines.
    pub crc32c: String,
    /// True when an earlier run had finished the job: nothing was written.
    pub already: bool,
    /// Position of the system event that released the events, when this
    /// run released them.
    pub position: Option<Position>,
}

/// Events read per page of a stream.
const PAGE: usize = 512;

/// Archives `scope` into `file` (see the module docs), calling `step`
/// after each step (progress, or a test's crash point).
///
/// Errors, with nothing released: [`Error::InvalidInput`] for a bound
/// beyond the head (or of 1 or less), for an existing `file` that is not
/// an archive of this scope; [`Error::NotFound`] for a stream that
/// was never written or a scope without live events; an I/O error for a
/// file that cannot be written.
pub async fn archive(
    store: &EventStore,
    scope: &Scope,
    file: &Path,
    mut step: impl FnMut(ArchiveStep),
) -> Result<ArchiveOutcome> {
    if let Some(existing) = read_existing(file, scope)? {
        return resume(store, file, existing, &mut step).await;
    }
    let bound = fix_bound(store, scope).await?;
    let head = store.head().await?;
    let header = Header {
        archive: Some(bound.clone()),
        head,
        ..Header::of(store).await?
    };
    let partial = partial_path(file);
    let written = write_file(store, &header, &partial).await;
    let digest = match written {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if digest.events == 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(anyhow::Error::new(Error::NotFound {
            what: format!("live events to archive in {}", scope_text(&bound)),
        }));
    }
    step(ArchiveStep::Written);
    let checked = check_file(&partial, &bound)
        .and_then(|d| same(&d, &digest, "written", "read back"))
        .map(|_| ());
    let checked = match checked {
        Ok(()) => compare_with_store(store, &bound, &digest).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context("the archive file was not kept and nothing was released"));
    }
    step(ArchiveStep::Verified);
    std::fs::rename(&partial, file).with_context(|| {
        format!(
            "cannot rename '{}' to '{}'",
            partial.display(),
            file.display()
        )
    })?;
    sync_dir(file)?;
    step(ArchiveStep::Renamed);
    finish(store, file, bound, digest, &mut step).await
}

/// A run after a crash between rename and release, or after success.
async fn resume(
    store: &EventStore,
    file: &Path,
    (bound, digest): (Archived, Digest),
    step: &mut impl FnMut(ArchiveStep),
) -> Result<ArchiveOutcome> {
    if released(store, &bound).await? {
        return Ok(outcome(file, bound, digest, true, None));
    }
    compare_with_store(store, &bound, &digest)
        .await
        .context("nothing was released")?;
    step(ArchiveStep::Verified);
    finish(store, file, bound, digest, step).await
}

/// Releases the archived events (one transaction).
async fn finish(
    store: &EventStore,
    file: &Path,
    bound: Archived,
    digest: Digest,
    step: &mut impl FnMut(ArchiveStep),
) -> Result<ArchiveOutcome> {
    let position = match &bound {
        Archived::Stream {
            stream,
            before_version,
        } => {
            // Keep the stream's other settings; a concurrent change of
            // them is seen by the revision and re-read.
            let mut tries = 0;
            loop {
                let info = store.stream_info(stream).await?;
                let mut r = info.retention.clone();
                r.truncate_before = Some(
                    r.truncate_before
                        .unwrap_or(1)
                        .max(*before_version)
                        .min(info.version + 1),
                );
                let expected = info
                    .metadata_revision
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                match store.set_retention(stream, r, expected).await {
                    Ok(done) => break done.first_position,
                    Err(Error::WrongExpectedVersion { .. }) if tries < 5 => tries += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Archived::Log { before_position } => {
            let note = format!(
                "archived to {} ({} events, crc32c {})",
                file.display(),
                digest.events,
                digest.hex()
            );
            match store
                .truncate_log_before(*before_position, Some(&note))
                .await?
            {
                LogTruncation::Truncated { position } => position,
                _ => return Ok(outcome(file, bound, digest, true, None)),
            }
        }
    };
    step(ArchiveStep::Released);
    Ok(outcome(file, bound, digest, false, Some(position)))
}

fn outcome(
    file: &Path,
    scope: Archived,
    digest: Digest,
    already: bool,
    position: Option<Position>,
) -> ArchiveOutcome {
    ArchiveOutcome {
        file: file.to_owned(),
        scope,
        events: digest.events,
        crc32c: digest.hex(),
        already,
        position,
    }
}

/// Whether the store has released everything below the bound already.
async fn released(store: &EventStore, bound: &Archived) -> Result<bool> {
    Ok(match bound {
        Archived::Stream {
            stream,
            before_version,
        } => {
            // Released for good: by truncation, count or deletion, not by
            // `max_age` alone (which reads this host's clock, and which a
            // truncation makes durable).
            let info = store.stream_info(stream).await?;
            let truncated = info.retention.truncate_before.unwrap_or(1) >= *before_version;
            truncated || (info.retention.max_age.is_none() && info.first_version >= *before_version)
        }
        Archived::Log { before_position } => {
            store.log_truncated_before().await? >= *before_position
        }
    })
}

/// The bound of a new archive, checked against the store.
async fn fix_bound(store: &EventStore, scope: &Scope) -> Result<Archived> {
    let bound = match scope {
        Scope::Stream {
            stream,
            before_version,
        } => {
            let info = store.stream_info(stream).await?;
            if info.version == 0 {
                return Err(Error::NotFound {
                    what: format!("stream '{stream}' (nothing was ever appended to it)"),
                }
                .into());
            }
            let bound = before_version.unwrap_or(info.version + 1);
            if bound < 2 || bound > info.version + 1 {
                return Err(Error::invalid(format!(
                    "cannot archive stream '{stream}' before version {bound}: the stream is at version {}, so archive before a version from 2 to {} (or leave --before-version out for the whole stream)",
                    info.version,
                    info.version + 1
                ))
                .into());
            }
            Archived::Stream {
                stream: stream.clone(),
                before_version: bound,
            }
        }
        Scope::BeforePosition(p) => {
            let head = store.head().await?;
            if *p < 2 || *p > head + 1 {
                let why = if *p < 2 {
                    "nothing lies before it".to_owned()
                } else {
                    format!("it is beyond the head ({head})")
                };
                return Err(Error::invalid(format!(
                    "cannot archive before position {p}: {why}; archive before a position from 2 to {}",
                    head + 1
                ))
                .into());
            }
            Archived::Log {
                before_position: *p,
            }
        }
    };
    Ok(bound)
}

/// The live events in scope, in position order, page by page, with
/// personal parts sealed (never opened).
enum ScopePager {
    Stream {
        store: EventStore,
        stream: String,
        before_version: StreamVersion,
        from: StreamVersion,
        done: bool,
    },
    Log(LogPager),
}

impl ScopePager {
    async fn new(store: &EventStore, bound: &Archived) -> Result<Self> {
        Ok(match bound {
            Archived::Stream {
                stream,
                before_version,
            } => ScopePager::Stream {
                store: store.sealed_reads().await?,
                stream: stream.clone(),
                before_version: *before_version,
                from: 1,
                done: false,
            },
            Archived::Log { before_position } => {
                ScopePager::Log(LogPager::new(store, before_position - 1).await?)
            }
        })
    }

    /// The next page; empty at the end.
    async fn next_page(&mut self) -> Result<Vec<RecordedEvent>> {
        match self {
            ScopePager::Log(p) => Ok(p.next_page().await?),
            ScopePager::Stream {
                store,
                stream,
                before_version,
                from,
                done,
            } => {
                if *done || *from >= *before_version {
                    return Ok(Vec::new());
                }
                let page = store
                    .read_stream(
                        stream,
                        ReadStreamOptions::new().from_version(*from).limit(PAGE),
                    )
                    .await?;
                let n = page.len();
                let mut out = Vec::with_capacity(n);
                for e in page {
                    let v = e.stream.as_ref().map_or(0, |s| s.version);
                    if v >= *before_version {
                        *done = true;
                        break;
                    }
                    *from = v + 1;
                    out.push(e);
                }
                if n < PAGE {
                    *done = true;
                }
                Ok(out)
            }
        }
    }
}

/// Writes and syncs the archive file; returns the digest of its lines.
async fn write_file(store: &EventStore, header: &Header, path: &Path) -> Result<Digest> {
    let fh = std::fs::File::create(path)
        .with_context(|| format!("cannot create the archive file '{}'", path.display()))?;
    let bound = header
        .archive
        .as_ref()
        .ok_or_else(|| anyhow!("an archive header needs its scope"))?;
    // No subject keys: they stay in the store (see `eskv::export`).
    let mut w = ExportWriter::new(BufWriter::new(fh), header, None)?;
    let mut pager = ScopePager::new(store, bound).await?;
    loop {
        let page = pager.next_page().await?;
        if page.is_empty() {
            break;
        }
        w.events(&page).await?;
    }
    let (w, digest) = w.finish()?;
    let fh = w.into_inner().map_err(|e| e.into_error())?;
    fh.sync_all()
        .with_context(|| format!("cannot sync '{}'", path.display()))?;
    Ok(digest)
}

/// The live events in scope now must be exactly the file's.
async fn compare_with_store(store: &EventStore, bound: &Archived, file: &Digest) -> Result<()> {
    let mut now = Digest::default();
    let mut pager = ScopePager::new(store, bound).await?;
    loop {
        let page = pager.next_page().await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            now.add(&EventLine::from_recorded(e).to_json());
        }
    }
    same(
        file,
        &now,
        "the archive file holds",
        "the store holds in its scope",
    )
}

fn same(a: &Digest, b: &Digest, a_what: &str, b_what: &str) -> Result<()> {
    if a != b {
        return Err(Error::invalid(format!(
            "{a_what} {} events with crc32c {}, but {b_what} {} with crc32c {}",
            a.events,
            a.hex(),
            b.events,
            b.hex()
        ))
        .into());
    }
    Ok(())
}

/// Reads and checks a whole archive file: header (with `bound`, when
/// given), positions in order, trailer. Returns the digest of its lines.
fn check_file(path: &Path, bound: &Archived) -> Result<Digest> {
    let (found, digest) = read_archive(path)?;
    if &found != bound {
        return Err(anyhow!(
            "'{}' archives {}, not {}",
            path.display(),
            scope_text(&found),
            scope_text(bound)
        ));
    }
    Ok(digest)
}

/// Reads an archive file whole: its scope and the digest of its lines.
fn read_archive(path: &Path) -> Result<(Archived, Digest)> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open '{name}'"))?;
    let mut scope = None;
    let mut digest = Digest::default();
    let mut last = 0;
    let mut ended = false;
    for (i, l) in std::io::BufReader::new(f).lines().enumerate() {
        let l = l.with_context(|| format!("cannot read '{name}'"))?;
        let n = i + 1;
        let bad = |m: String| Error::invalid(format!("'{name}' line {n}: {m}"));
        if ended {
            return Err(bad("text after the trailer".into()).into());
        }
        match ExportLine::parse(&l).map_err(bad)? {
            ExportLine::Header(h) if n == 1 => match h.archive {
                Some(a) => scope = Some(a),
                None => return Err(bad("an export, not an archive".into()).into()),
            },
            ExportLine::Header(_) => return Err(bad("a second header".into()).into()),
            _ if n == 1 => return Err(bad("not an eskv archive".into()).into()),
            ExportLine::Event(e) => {
                let p = e.position.unwrap_or(0);
                if p <= last {
                    return Err(bad(format!("position {p} after {last}")).into());
                }
                last = p;
                digest.add(&e.to_json());
            }
            ExportLine::Key(_) => {
                return Err(bad("a subject key line: archives carry no keys".into()).into())
            }
            ExportLine::Trailer(end) => {
                end.check(&digest, &Digest::default())
                    .map_err(|e| bad(e.to_string()))?;
                ended = true;
            }
        }
    }
    match scope {
        Some(s) if ended => Ok((s, digest)),
        _ => Err(Error::invalid(format!(
            "'{name}' is not a complete archive (no header or no trailer)"
        ))
        .into()),
    }
}

/// An existing `file`: a complete archive answering `scope` (resume), or
/// an error naming what it is; `None` when there is no file.
fn read_existing(file: &Path, scope: &Scope) -> Result<Option<(Archived, Digest)>> {
    if !file.exists() {
        return Ok(None);
    }
    let refuse = |why: String| {
        anyhow::Error::new(Error::invalid(format!(
            "the output file '{}' exists and {why}; nothing was archived or released (choose another file, or remove it)",
            file.display()
        )))
    };
    match read_archive(file) {
        Ok((found, digest)) if answers(&found, scope) => Ok(Some((found, digest))),
        Ok((found, _)) => Err(refuse(format!("archives {}", scope_text(&found)))),
        Err(e) => Err(refuse(format!("is not a complete archive ({e:#})"))),
    }
}

/// `FILE.partial`.
fn partial_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Syncs the directory holding `file`, so its rename is durable.
fn sync_dir(file: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync the directory '{}'", dir.display()))?;
    }
    Ok(())
}

/// The scope as a person reads it.
pub fn scope_text(a: &Archived) -> String {
    match a {
        Archived::Stream {
            stream,
            before_version,
        } => format!("stream '{stream}' before version {before_version}"),
        Archived::Log { before_position } => format!("the log before position {before_position}"),
    }
}
