//! `eskv export`, `import` and `copy`.

use crate::output::*;
use anyhow::{anyhow, bail, Context as _, Result};
use eskv::export::{self as transfer, Digest, ExportLine, ExportWriter, Header, Importer};
use eskv_cli::open::{self, Access};
use eskv_cli::url::StoreUrl;
use indicatif::ProgressBar;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

pub(crate) async fn export(url: &StoreUrl, file: Option<PathBuf>, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let header = Header::of(&store).await?;
    let (mut w, tmp): (Box<dyn Write + '_>, Option<PathBuf>) = match &file {
        Some(f) => {
            let mut tmp = f.clone().into_os_string();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let fh = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create '{}'", tmp.display()))?;
            (Box::new(BufWriter::new(fh)), Some(tmp))
        }
        None => (Box::new(&mut out.w), None),
    };
    let pb = progress(header.head, "export");
    let res: Result<Digest> = async {
        // A backup: sealed personal parts and their subjects' wrapped keys.
        let mut writer = ExportWriter::new(&mut w, &header, Some(store.clone()))?;
        let mut pager = transfer::LogPager::new(&store, header.head).await?;
        loop {
            let page = pager.next_page().await?;
            if page.is_empty() {
                break;
            }
            writer.events(&page).await?;
            pb.set_position(writer.digest().events);
        }
        Ok(writer.finish()?.1)
    }
    .await;
    pb.finish_and_clear();
    drop(w);
    let digest = match res {
        Ok(d) => d,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
    };
    if let (Some(t), Some(f)) = (&tmp, &file) {
        std::fs::rename(t, f).with_context(|| format!("cannot rename '{}'", t.display()))?;
        note(&format!(
            "exported {} events to {} (crc32c {})",
            digest.events,
            f.display(),
            digest.hex()
        ));
    }
    Ok(())
}

/// What [`read_export`] found besides the events' digest.
pub(crate) struct ReadExport {
    /// The events' digest.
    pub digest: Digest,
    /// Subjects whose live (sealed) personal parts have no subject key
    /// line in the file: their keys must come from `--keys-from`.
    pub unkeyed: BTreeSet<String>,
}

/// Reads an export (or plain event lines), checking its structure: the
/// header only first, positions in order, the trailer's count and
/// checksum. Without an importer it also checks each event as an import
/// would (ids, stream versions, personal parts), so that a file it
/// passes is not refused half-way; with one the events are written.
pub(crate) async fn read_export(
    reader: Box<dyn BufRead + '_>,
    name: &str,
    mut importer: Option<&mut Importer>,
    pb: &mut ProgressBar,
) -> Result<ReadExport> {
    let mut keyed: BTreeSet<String> = BTreeSet::new();
    let mut unkeyed: BTreeSet<String> = BTreeSet::new();
    let mut header: Option<Header> = None;
    let mut trailer_seen = false;
    let mut digest = Digest::default();
    let mut keys = Digest::default();
    let mut any = false;
    // The last position seen: positions increase, and may skip the holes
    // removals left in the source.
    let mut last = 0u64;
    for (i, l) in reader.lines().enumerate() {
        let n = i + 1;
        let l = l.with_context(|| format!("cannot read {name}"))?;
        if l.trim().is_empty() {
            continue;
        }
        if trailer_seen {
            bail!("{name} line {n}: text after the export's last line");
        }
        let first = !any;
        any = true;
        match ExportLine::parse(&l).map_err(|e| anyhow!("{name} line {n}: {e}"))? {
            ExportLine::Header(h) => {
                if !first {
                    bail!("{name} line {n}: an export header may only be the first line");
                }
                h.check_format()?;
                if let Some(imp) = importer.as_deref_mut() {
                    imp.header(&h).await?;
                    *pb = progress(h.head, "import");
                } else {
                    *pb = progress(h.head, "checking the file");
                }
                header = Some(h);
            }
            ExportLine::Key(k) => {
                if header.is_none() {
                    bail!("{name} line {n}: a subject key line without an export header");
                }
                keys.add(&k.to_json());
                keyed.insert(k.eskv_subject_key.subject.clone());
                match importer.as_deref_mut() {
                    Some(imp) => imp
                        .push_key(&k)
                        .with_context(|| format!("{name} line {n}"))?,
                    None => {
                        k.to_key().map_err(|e| anyhow!("{name} line {n}: {e}"))?;
                    }
                }
            }
            ExportLine::Event(e) => {
                let in_order = e.position.is_some_and(|p| p > last)
                    && header.as_ref().is_none_or(|h| e.position <= Some(h.head));
                if !in_order {
                    bail!(
                        "{name} line {n}: expected an event after position {last}, found {}; import needs the events of the log in position order (the output of `eskv export`)",
                        e.position.map_or("none".to_owned(), |p| p.to_string())
                    );
                }
                last = e.position.unwrap_or(last);
                digest.add(&e.to_json());
                if let Some(p) = e.personal.as_ref().filter(|p| !p.erased) {
                    if !keyed.contains(&p.subject) {
                        unkeyed.insert(p.subject.clone());
                    }
                }
                match importer.as_deref_mut() {
                    Some(imp) => imp
                        .push(&e)
                        .await
                        .with_context(|| format!("{name} line {n}"))?,
                    None => {
                        e.to_imported()
                            .map_err(|m| anyhow!("{name} line {n}: {m}"))?;
                    }
                }
                if digest.events % 256 == 0 {
                    pb.set_position(digest.events);
                }
            }
            ExportLine::Trailer(end) => {
                if header.is_none() {
                    bail!("{name} line {n}: an export trailer without a header");
                }
                end.check(&digest, &keys)
                    .with_context(|| format!("{name} line {n}"))?;
                trailer_seen = true;
            }
        }
    }
    if !any {
        bail!("{name} is empty: there is nothing to import");
    }
    if let Some(h) = &header {
        if !trailer_seen {
            bail!(
                "{name} is truncated: it ends after {} of {} events, without the export's last line",
                digest.events,
                h.head
            );
        }
        // Fewer events than the head: holes left by removals.
        if digest.events > h.head {
            bail!(
                "{name} is inconsistent: its header promises at most {} events, it holds {}",
                h.head,
                digest.events
            );
        }
    }
    Ok(ReadExport { digest, unkeyed })
}

pub(crate) async fn import(
    url: &StoreUrl,
    input: Option<PathBuf>,
    keys_from: Option<&StoreUrl>,
    out: &mut Out,
) -> Result<()> {
    let open_file = |f: &PathBuf| -> Result<Box<dyn BufRead>> {
        Ok(Box::new(io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot open '{}'", f.display()))?,
        )))
    };
    let name = input
        .as_ref()
        .map_or("stdin".to_owned(), |f| f.display().to_string());
    let reader: Box<dyn BufRead> = match &input {
        Some(f) => {
            // Check the whole file before writing anything.
            let mut pb = ProgressBar::hidden();
            let checked = read_export(open_file(f)?, &name, None, &mut pb).await;
            pb.finish_and_clear();
            if let Some(subject) = checked?.unkeyed.first().filter(|_| keys_from.is_none()) {
                return Err(usage(format!(
                    "{name} holds personal data of data subject '{subject}' without its subject key; import it with --keys-from STORE, the store it was archived or exported from (nothing was written)"
                )));
            }
            open_file(f)?
        }
        None => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                return Err(usage("no input: pass --in FILE or pipe an export on stdin"));
            }
            // Peek at the first line so that empty input creates nothing.
            let mut lock = stdin.lock();
            let mut start = Vec::new();
            loop {
                let mut l = String::new();
                if lock.read_line(&mut l).context("cannot read stdin")? == 0 {
                    bail!("stdin is empty: there is nothing to import");
                }
                start.extend_from_slice(l.as_bytes());
                if !l.trim().is_empty() {
                    break;
                }
            }
            Box::new(io::Read::chain(io::Cursor::new(start), lock))
        }
    };
    let store = open::open(url, Access::Create).await?;
    let mut importer = Importer::new(store.clone())
        .await
        .with_context(|| format!("cannot import into {url}"))?;
    if let Some(k) = keys_from {
        let source = open::open(k, Access::Existing)
            .await
            .context("the store given with --keys-from")?;
        importer = importer.keys_from(source);
    }
    let mut pb = ProgressBar::hidden();
    let res = read_export(reader, &name, Some(&mut importer), &mut pb).await;
    let res = match res {
        Ok(d) => importer
            .finish()
            .await
            .map(|i| (d.digest, i))
            .map_err(anyhow::Error::new),
        Err(e) => Err(e),
    };
    pb.finish_and_clear();
    let (digest, written) = match res {
        Ok(r) => r,
        Err(e) => {
            return Err(failed(e, &importer)
                .await
                .context(format!("import into {url} failed")))
        }
    };
    let pb = progress(digest.events, "verifying");
    let verified = transfer::digest_store(&store, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let (check, streams) = verified?;
    if check != written.content || written.digest != digest {
        bail!(
            "import into {url} does not read back the same: {} events with content crc32c {} read, {} with {} imported",
            check.events,
            check.hex(),
            written.content.events,
            written.content.hex()
        );
    }
    out.value(&json!({
        "events": digest.events,
        "streams": streams,
        "crc32c": digest.hex(),
        "verified": true,
    }))?;
    Ok(())
}

pub(crate) async fn copy(
    from: &StoreUrl,
    to: &StoreUrl,
    to_key: Option<eskv::StoreKey>,
    out: &mut Out,
) -> Result<()> {
    if from == to && *from != StoreUrl::Memory {
        return Err(usage(format!(
            "--from and --to are the same store ({from})"
        )));
    }
    let source = open::open(from, Access::Existing).await.context("source")?;
    let target = open::open_keyed(to, Access::Create, to_key)
        .await
        .context("target")?;
    let header = Header::of(&source).await?;
    let pb = progress(header.head, "copy");
    let mut importer = Importer::new(target.clone())
        .await
        .with_context(|| format!("cannot copy into {to}"))?
        .keys_from(source.clone());
    let copied = transfer::copy(&source, &mut importer, &header, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let digest = match copied {
        Ok(d) => d,
        Err(e) => {
            return Err(failed(anyhow::Error::new(e), &importer)
                .await
                .context(format!("copy into {to} failed")))
        }
    };
    let source_streams = transfer::count_streams(&source).await?;
    let pb = progress(digest.events, "verifying");
    let verified = transfer::digest_store(&target, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let (target_digest, target_streams) = verified?;
    let target_types = target.event_types().await?;
    let summary = json!({
        "from": from.to_string(),
        "to": to.to_string(),
        "events": digest.events,
        "streams": source_streams,
        "source_crc32c": digest.hex(),
        "target_events": target_digest.events,
        "target_streams": target_streams,
        "target_crc32c": target_digest.hex(),
        "verified": target_digest == digest && target_streams == source_streams,
    });
    out.value(&summary)?;
    if target_digest != digest || target_streams != source_streams {
        out.flush()?;
        bail!(
            "the copy does not match its source: {} events / {} streams / crc32c {} in {from}, {} / {} / {} in {to}",
            digest.events,
            source_streams,
            digest.hex(),
            target_digest.events,
            target_streams,
            target_digest.hex()
        );
    }
    if let Some(t) = header.types.iter().find(|t| !target_types.contains(t)) {
        bail!("the copy lost registered type '{t}'");
    }
    Ok(())
}

/// Adds to an import's error what it left in the target.
async fn failed(e: anyhow::Error, importer: &Importer) -> anyhow::Error {
    let written = importer.written();
    if importer.abandon().await {
        e.context("no events were imported (the target can take the import again)")
    } else {
        e.context(format!(
            "the target holds the first {written} events and is marked as an unfinished import: remove it before trying again"
        ))
    }
}
