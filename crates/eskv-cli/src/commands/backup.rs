//! `eskv export`, `import` and `copy`.

use crate::output::*;
use anyhow::{bail, Context as _, Result};
use eskv::export::{self as transfer, Digest, ExportLine, ExportWriter, Header, Importer};
use eskv::EventStore;
use eskv_cli::open::{self, Access};
use eskv_cli::tenant;
use eskv_cli::url::StoreUrl;
use indicatif::ProgressBar;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

pub(crate) async fn export(
    url: &StoreUrl,
    file: Option<PathBuf>,
    root_only: bool,
    out: &mut Out,
) -> Result<()> {
    if root_only && open::tenant().is_some() {
        return Err(usage(
            "--root-only exports the root namespace alone; it cannot be combined with --tenant",
        ));
    }
    let store = open::open(url, Access::Existing).await?;
    if !root_only && open::tenant().is_none() {
        // One namespace per export: never leave the tenants out silently.
        let tenants = tenant::list(store.kv().as_ref()).await?;
        if let Some(first) = tenants.first() {
            return Err(usage(format!(
                "{url} holds {} {} besides its root namespace ({}), and an export holds one namespace: back up each tenant with `eskv --tenant NAME export` (for example `eskv --store {url} --tenant {first} export --out {first}.jsonl`), and the root alone with `eskv export --root-only` (`eskv copy` takes the root and every tenant at once); nothing was written",
                tenants.len(),
                if tenants.len() == 1 { "tenant" } else { "tenants" },
                tenants.join(", ")
            )));
        }
    }
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
/// would (ids, stream versions, personal parts) and each subject key line
/// against `store_key` (the target's), so that a file it passes is not
/// refused half-way; with one the events are written. A file that is not
/// a whole export is bad input (exit 2).
pub(crate) async fn read_export(
    reader: Box<dyn BufRead + '_>,
    name: &str,
    mut importer: Option<&mut Importer>,
    store_key: Option<&eskv::StoreKey>,
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
        let l = match l {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(usage(format!(
                    "{name} line {n}: not an export line: the text is not UTF-8"
                )))
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {name}"))),
        };
        if l.trim().is_empty() {
            continue;
        }
        if trailer_seen {
            return Err(usage(format!(
                "{name} line {n}: text after the export's last line"
            )));
        }
        let first = !any;
        any = true;
        match ExportLine::parse(&l).map_err(|e| usage(format!("{name} line {n}: {e}")))? {
            ExportLine::Header(h) => {
                if !first {
                    return Err(usage(format!(
                        "{name} line {n}: an export header may only be the first line"
                    )));
                }
                h.check_format()
                    .map_err(|e| usage(format!("{name} line {n}: {e}")))?;
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
                    return Err(usage(format!(
                        "{name} line {n}: a subject key line without an export header"
                    )));
                }
                keys.add(&k.to_json());
                keyed.insert(k.eskv_subject_key.subject.clone());
                match importer.as_deref_mut() {
                    Some(imp) => imp
                        .push_key(&k)
                        .with_context(|| format!("{name} line {n}"))?,
                    None => {
                        let key = k
                            .to_key()
                            .map_err(|e| usage(format!("{name} line {n}: {e}")))?;
                        check_subject_key(&key, store_key)
                            .with_context(|| format!("{name} line {n}"))?;
                    }
                }
            }
            ExportLine::Event(e) => {
                let in_order = e.position.is_some_and(|p| p > last)
                    && header.as_ref().is_none_or(|h| e.position <= Some(h.head));
                if !in_order {
                    return Err(usage(format!(
                        "{name} line {n}: expected an event after position {last}, found {}; import needs the events of the log in position order (the output of `eskv export`)",
                        e.position.map_or("none".to_owned(), |p| p.to_string())
                    )));
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
                            .map_err(|m| usage(format!("{name} line {n}: {m}")))?;
                    }
                }
                if digest.events % 256 == 0 {
                    pb.set_position(digest.events);
                }
            }
            ExportLine::Trailer(end) => {
                if header.is_none() {
                    return Err(usage(format!(
                        "{name} line {n}: an export trailer without a header"
                    )));
                }
                end.check(&digest, &keys)
                    .map_err(|e| usage(format!("{name} line {n}: {e}")))?;
                if let Some(imp) = importer.as_deref_mut() {
                    imp.trailer(&end)
                        .map_err(|e| usage(format!("{name} line {n}: {e}")))?;
                }
                trailer_seen = true;
            }
        }
    }
    if !any {
        return Err(usage(format!(
            "{name} is empty: there is nothing to import"
        )));
    }
    if let Some(h) = &header {
        if !trailer_seen {
            return Err(usage(format!(
                "{name} is truncated: it ends after {} of {} events, without the export's last line",
                digest.events, h.head
            )));
        }
        // Fewer events than the head: holes left by removals.
        if digest.events > h.head {
            return Err(usage(format!(
                "{name} is inconsistent: its header promises at most {} events, it holds {}",
                h.head, digest.events
            )));
        }
    }
    Ok(ReadExport { digest, unkeyed })
}

/// Checks a subject key line of a file against the store key its import
/// will run with, as the import does, before anything is created.
fn check_subject_key(
    key: &eskv::WrappedSubjectKey,
    store_key: Option<&eskv::StoreKey>,
) -> Result<()> {
    if key.is_forgotten() {
        return Ok(());
    }
    match store_key {
        Some(k) => Ok(key.check(k)?),
        None => Err(usage(format!(
            "the file carries personal data (data subject '{}'), and no store key was given: give the key the data was written with (--store-key HEX or ESKV_STORE_KEY)",
            key.subject()
        ))),
    }
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
            let key = open::store_key();
            let checked = read_export(open_file(f)?, &name, None, key.as_ref(), &mut pb).await;
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
                match lock.read_line(&mut l) {
                    Ok(0) => return Err(usage("stdin is empty: there is nothing to import")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Err(usage(
                            "stdin line 1: not an export line: the text is not UTF-8",
                        ))
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("cannot read stdin")),
                }
                start.extend_from_slice(l.as_bytes());
                if !l.trim().is_empty() {
                    break;
                }
            }
            Box::new(io::Read::chain(io::Cursor::new(start), lock))
        }
    };
    // The store the keys come from first: one that is not there must not
    // leave a new, empty target behind.
    let keys_source = match keys_from {
        Some(k) => Some(
            open::open(k, Access::Existing)
                .await
                .context("the store given with --keys-from")?,
        ),
        None => None,
    };
    let store = open::open(url, Access::Create).await?;
    let mut importer = Importer::new(store.clone())
        .await
        .with_context(|| format!("cannot import into {url}"))?;
    if let Some(source) = keys_source {
        importer = importer.keys_from(source);
    }
    let mut pb = ProgressBar::hidden();
    let res = read_export(reader, &name, Some(&mut importer), None, &mut pb).await;
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
            return Err(failed(e, &importer, 0)
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
    if same_store(from, to) {
        return Err(usage(format!(
            "--from and --to are the same store{} ({from}{})",
            if matches!(from, StoreUrl::Tikv { .. } | StoreUrl::Etcd { .. }) {
                ", or one holds the other"
            } else {
                ""
            },
            if from == to {
                String::new()
            } else {
                format!(", spelled {to}")
            }
        )));
    }
    // The namespaces to copy: the tenant chosen, or every tenant and then
    // the root, each into the same namespace of the target. Every namespace
    // of the target is checked before anything is written.
    let mut pairs: Vec<(Option<String>, EventStore, EventStore, Importer)> = Vec::new();
    let whole = match open::tenant() {
        Some(t) => {
            let source = open::open(from, Access::Existing).await.context("source")?;
            let target = open::open_keyed(to, Access::Create, to_key)
                .await
                .context("target")?;
            let importer = copy_importer(to, Some(&t), &source, &target).await?;
            pairs.push((Some(t), source, target, importer));
            None
        }
        None => {
            let source = open::open_root_keyed(from, Access::Existing, open::store_key())
                .await
                .context("source")?;
            let target = open::open_root_keyed(to, Access::Create, to_key)
                .await
                .context("target")?;
            let root_importer = copy_importer(to, None, &source, &target).await?;
            // A tenant the target has already must be empty too (one left
            // by a copy that wrote nothing is).
            for t in tenant::list(target.kv().as_ref()).await.context("target")? {
                let d = tenant::open_in(&target, &t).await?;
                Importer::new(d)
                    .await
                    .with_context(|| format!("cannot copy into {}", in_namespace(to, Some(&t))))?;
            }
            let tenants = tenant::list(source.kv().as_ref()).await.context("source")?;
            if !tenants.is_empty() {
                // The root's mark spans the whole copy: a copy cut short
                // between namespaces leaves a target `check` reports.
                target.begin_import(None).await.context("target")?;
            }
            for t in tenants {
                let s = tenant::open_in(&source, &t).await?;
                let d = tenant::open_in(&target, &t).await?;
                let importer = copy_importer(to, Some(&t), &s, &d).await?;
                pairs.push((Some(t), s, d, importer));
            }
            pairs.push((None, source, target.clone(), root_importer));
            Some(target)
        }
    };
    let mut written = 0;
    for (t, source, target, importer) in pairs {
        match copy_namespace(
            from,
            to,
            t.as_deref(),
            &source,
            &target,
            importer,
            written,
            out,
        )
        .await
        {
            Ok(n) => written += n,
            Err(e) => {
                if let (Some(root), 0) = (&whole, written) {
                    // Nothing written anywhere: take the root's mark back.
                    let _ = root.finish_import().await;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The importer of one namespace of a copy's target, which must be empty.
async fn copy_importer(
    to: &StoreUrl,
    tenant: Option<&str>,
    source: &EventStore,
    target: &EventStore,
) -> Result<Importer> {
    let importer = Importer::new(target.clone())
        .await
        .with_context(|| format!("cannot copy into {}", in_namespace(to, tenant)))?;
    Ok(importer.keys_from(source.clone()))
}

/// "URL", or "URL (tenant NAME)".
fn in_namespace(url: &StoreUrl, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("{url} (tenant {t})"),
        None => url.to_string(),
    }
}

/// Copies one namespace, verifies it and prints its line; returns the
/// events it wrote. `earlier` events were written into other namespaces
/// of the target before this one.
#[allow(clippy::too_many_arguments)]
async fn copy_namespace(
    from: &StoreUrl,
    to: &StoreUrl,
    tenant: Option<&str>,
    source: &EventStore,
    target: &EventStore,
    mut importer: Importer,
    earlier: u64,
    out: &mut Out,
) -> Result<u64> {
    let (from_ns, to_ns) = (in_namespace(from, tenant), in_namespace(to, tenant));
    let header = Header::of(source).await?;
    let pb = progress(header.head, "copy");
    let copied = transfer::copy(source, &mut importer, &header, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let digest = match copied {
        Ok(d) => d,
        Err(e) => {
            return Err(failed(anyhow::Error::new(e), &importer, earlier)
                .await
                .context(format!("copy into {to_ns} failed")))
        }
    };
    let source_streams = transfer::count_streams(source).await?;
    let pb = progress(digest.events, "verifying");
    let verified = transfer::digest_store(target, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    let (target_digest, target_streams) = verified?;
    let target_types = target.event_types().await?;
    let summary = json!({
        "from": from.to_string(),
        "to": to.to_string(),
        "tenant": tenant,
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
            "the copy does not match its source: {} events / {} streams / crc32c {} in {from_ns}, {} / {} / {} in {to_ns}",
            digest.events,
            source_streams,
            digest.hex(),
            target_digest.events,
            target_streams,
            target_digest.hex()
        );
    }
    if let Some(t) = header.types.iter().find(|t| !target_types.contains(t)) {
        bail!("the copy into {to_ns} lost registered type '{t}'");
    }
    Ok(digest.events)
}

/// True when two URLs name one store: equal, embedded stores whose paths
/// lead to the same place (`redb:x` and `redb:./x`), or namespaces of one
/// cluster where one holds the other (`tikv://pd` holds `tikv://pd/app`).
fn same_store(a: &StoreUrl, b: &StoreUrl) -> bool {
    if a == b {
        return *a != StoreUrl::Memory;
    }
    let remote = |u: &StoreUrl| match u {
        StoreUrl::Tikv { endpoints, prefix } => Some(("tikv", endpoints.clone(), prefix.clone())),
        StoreUrl::Etcd { endpoints, prefix } => Some(("etcd", endpoints.clone(), prefix.clone())),
        _ => None,
    };
    if let (Some((ka, ea, pa)), Some((kb, eb, pb))) = (remote(a), remote(b)) {
        return ka == kb
            && ea.iter().any(|e| eb.contains(e))
            && (pa.is_none() || pb.is_none() || pa == pb);
    }
    let path = |u: &StoreUrl| match u {
        StoreUrl::Redb { path, .. } | StoreUrl::Fjall { path, .. } => Some(canonical(path)),
        _ => None,
    };
    matches!((path(a), path(b)), (Some(x), Some(y)) if x == y)
}

/// `path` made absolute with links resolved; for a file that does not
/// exist yet, its directory's canonical path and its name.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

/// Adds to an import's error what it left in the target. Bad input is
/// exit 2 only when nothing was written; an import that wrote events and
/// then failed is exit 1, whatever stopped it.
async fn failed(e: anyhow::Error, importer: &Importer, earlier: u64) -> anyhow::Error {
    let written = importer.written();
    if earlier > 0 {
        // Other namespaces of the target took events before this one.
        let _ = importer.abandon().await;
        with_code(
            e.context(format!(
                "the target holds {} events of the namespaces copied before this one and is marked as an unfinished import: remove it before trying again",
                earlier + written
            )),
            1,
        )
    } else if importer.abandon().await {
        e.context("no events were imported (the target can take the import again)")
    } else {
        with_code(
            e.context(format!(
                "the target holds the first {written} events and is marked as an unfinished import: remove it before trying again"
            )),
            1,
        )
    }
}
