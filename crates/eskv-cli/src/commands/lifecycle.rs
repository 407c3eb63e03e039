//! `eskv compact`, `archive`, `retention`, `delete-stream` and `forget`.

use crate::args::*;
use crate::output::*;
use anyhow::{Context as _, Result};
use eskv_cli::open::{self, Access};
use eskv_cli::url::StoreUrl;
use serde_json::json;

/// `eskv compact`: removes released rows (with progress), then on redb
/// closes the store and compacts the file.
pub(crate) async fn compact(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Change).await?;
    let pb = spinner("compacting", "events removed");
    let report = store
        .compact_with_progress(|r| pb.set_position(r.events_removed))
        .await;
    pb.finish_and_clear();
    let report = report?;
    drop(store);
    let file = compact_redb_file(url).await?;
    if out.json {
        out.value(&json!({
            "streams_examined": report.streams_examined,
            "events_removed": report.events_removed,
            "keys_removed": report.keys_removed,
            "bytes_reclaimed": report.bytes_reclaimed,
            "transactions": report.transactions,
            "file": file,
        }))?;
    } else {
        out.line(&format!(
            "removed {} {} ({} keys, {} bytes) from {} streams in {} transactions",
            report.events_removed,
            events_word(report.events_removed),
            report.keys_removed,
            report.bytes_reclaimed,
            report.streams_examined,
            report.transactions
        ))?;
        if let Some(b) = file.get("bytes_returned") {
            out.line(&format!("file: {} bytes returned to the file system", b))?;
        }
    }
    Ok(())
}

/// On redb, returns the freed space of the closed store's file to the file
/// system and reports the sizes; other backends reclaim space themselves
/// (`Null`).
async fn compact_redb_file(url: &StoreUrl) -> Result<serde_json::Value> {
    #[cfg(feature = "redb")]
    if let StoreUrl::Redb { path, .. } = url {
        // The store is closed; wait for other handles like every open does.
        let start = std::time::Instant::now();
        let f = loop {
            match eskv::redb::compact_file(path).await {
                Err(eskv::Error::StoreLocked { .. }) if start.elapsed() < open::lock_wait() => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        return Ok(json!({
            "bytes_before": f.bytes_before,
            "bytes_after": f.bytes_after,
            "bytes_returned": f.bytes_reclaimed(),
        }));
    }
    let _ = url;
    Ok(serde_json::Value::Null)
}

/// `eskv archive` (see `eskv_cli::archive`). The test hook
/// `ESKV_ARCHIVE_CRASH_AFTER=written|verified|renamed` aborts the process
/// right after that step, as a crash would.
pub(crate) async fn archive(url: &StoreUrl, a: ArchiveArgs, out: &mut Out) -> Result<()> {
    use eskv_cli::archive::{ArchiveStep, Scope};
    let scope = match (a.stream, a.before_position) {
        (Some(stream), None) => Scope::Stream {
            stream,
            before_version: a.before_version,
        },
        (None, Some(p)) => Scope::BeforePosition(p),
        _ => return Err(usage("give either --stream or --before-position")),
    };
    let crash_after = std::env::var("ESKV_ARCHIVE_CRASH_AFTER").ok();
    let store = open::open(url, Access::Change).await?;
    let pb = spinner("archiving", "steps");
    let done = eskv_cli::archive::archive(&store, &scope, &a.out, |s| {
        pb.inc(1);
        let name = match s {
            ArchiveStep::Written => "written",
            ArchiveStep::Verified => "verified",
            ArchiveStep::Renamed => "renamed",
            ArchiveStep::Released => "released",
        };
        if crash_after.as_deref() == Some(name) {
            std::process::abort();
        }
    })
    .await;
    pb.finish_and_clear();
    let done = done.with_context(|| format!("cannot archive into '{}'", a.out.display()))?;
    out.value(&json!({
        "file": done.file.display().to_string(),
        "scope": done.scope,
        "events": done.events,
        "crc32c": done.crc32c,
        "already": done.already,
        "position": done.position,
    }))?;
    note(&if done.already {
        format!(
            "already archived: {} holds {} ({} {}); nothing to do",
            done.file.display(),
            eskv_cli::archive::scope_text(&done.scope),
            done.events,
            events_word(done.events)
        )
    } else {
        format!(
            "archived {} {} of {} to {} (crc32c {}); run `eskv compact` to give the space back",
            done.events,
            events_word(done.events),
            eskv_cli::archive::scope_text(&done.scope),
            done.file.display(),
            done.crc32c
        )
    });
    Ok(())
}

/// `eskv retention`.
pub(crate) async fn retention(url: &StoreUrl, a: RetentionArgs, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Change).await?;
    let mut r = eskv::Retention::new();
    r.max_count = a.max_count;
    r.max_age = a.max_age;
    r.truncate_before = a.truncate_before;
    let done = store.set_retention(&a.stream, r, a.expected).await?;
    out.value(&json!({ "stream": a.stream, "position": done.first_position }))?;
    Ok(())
}

/// `eskv delete-stream`.
pub(crate) async fn delete_stream(url: &StoreUrl, a: DeleteArgs, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Change).await?;
    let done = if a.tombstone {
        store.tombstone_stream(&a.stream, a.expected).await?
    } else {
        store.delete_stream(&a.stream, a.expected).await?
    };
    out.value(
        &json!({ "stream": a.stream, "position": done.first_position, "tombstoned": a.tombstone }),
    )?;
    Ok(())
}

/// `eskv forget`.
pub(crate) async fn forget(url: &StoreUrl, subject: String, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Change).await?;
    let v = match store.forget(&subject).await? {
        eskv::ForgetOutcome::Forgotten { position } => {
            json!({ "subject": subject, "forgotten": true, "position": position })
        }
        _ => json!({ "subject": subject, "forgotten": true, "already": true }),
    };
    out.value(&v)?;
    Ok(())
}
