//! `eskv streams`, `info`, `types` and `check`.

use crate::args::*;
use crate::output::*;
use anyhow::Result;
use eskv::export as transfer;
use eskv_cli::open::{self, Access};
use eskv_cli::url::StoreUrl;
use serde_json::json;

// ---------------------------------------------------- streams, info, types

pub(crate) async fn streams(url: &StoreUrl, a: StreamsArgs, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut after: Option<String> = None;
    let mut rows: Vec<[String; 3]> = Vec::new();
    while left > 0 {
        let n = left.min(1024) as usize;
        let page = store.list_streams(&a.prefix, after.as_deref(), n).await?;
        for s in &page {
            if out.json {
                out.value(&json!({
                    "stream": s.stream_id,
                    "version": s.version,
                    "last_position": s.last_position,
                }))?;
            } else {
                rows.push([
                    s.stream_id.clone(),
                    s.version.to_string(),
                    s.last_position.map_or("-".into(), |p| p.to_string()),
                ]);
            }
        }
        left -= page.len() as u64;
        match page.last() {
            Some(s) if page.len() == n => after = Some(s.stream_id.clone()),
            _ => break,
        }
    }
    if !out.json && rows.is_empty() {
        out.line("no streams")?;
    } else if !out.json {
        let w0 = rows.iter().map(|r| width(&r[0])).max().unwrap_or(0).max(6);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(7);
        out.line(&format!(
            "{:<w0$}  {:>w1$}  LAST_POSITION",
            "STREAM", "VERSION"
        ))?;
        for r in rows {
            out.line(&format!(
                "{}  {:>w1$}  {}",
                pad(&r[0], w0, false),
                r[1],
                r[2]
            ))?;
        }
    }
    Ok(())
}

pub(crate) async fn info(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let head = store.head().await?;
    let streams = transfer::count_streams(&store).await?;
    let types = store.event_types().await?;
    let strict = store.strict_types().await?;
    let unfinished = store.import_in_progress().await?;
    drop(store);
    let size = open::file_size(url);
    if out.json {
        let mut v = json!({
            "store": url.to_string(),
            "backend": url.backend(),
            "head": head,
            "streams": streams,
            "types": types.len(),
            "strict": strict,
        });
        if let Some(s) = size {
            v["file_size"] = json!(s);
        }
        if let Some(m) = &unfinished {
            v["import_in_progress"] = json!({
                "expected_events": m.expected_events,
                "message": m.to_string(),
            });
        }
        out.value(&v)?;
    } else {
        out.line(&format!("store:     {url}"))?;
        out.line(&format!("head:      {head}"))?;
        out.line(&format!("streams:   {streams}"))?;
        out.line(&format!(
            "types:     {} registered, strict mode {}",
            types.len(),
            if strict { "on" } else { "off" }
        ))?;
        if let Some(s) = size {
            out.line(&format!("file size: {s} bytes ({})", human_bytes(s)))?;
        }
        if let Some(m) = &unfinished {
            out.line(&format!("warning:   {m}"))?;
        }
    }
    Ok(())
}

pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub(crate) async fn types(url: &StoreUrl, action: TypesAction, out: &mut Out) -> Result<()> {
    let access = match action {
        TypesAction::List => Access::Existing,
        _ => Access::Create,
    };
    let store = open::open(url, access).await?;
    match action {
        TypesAction::List => {}
        TypesAction::Add { types } => store.register_event_types(types).await?,
        TypesAction::Strict { mode } => store.set_strict_types(matches!(mode, OnOff::On)).await?,
    }
    let types = store.event_types().await?;
    let strict = store.strict_types().await?;
    if out.json {
        out.value(&json!({ "types": types, "strict": strict }))?;
    } else {
        for t in &types {
            out.line(t)?;
        }
        out.line(&format!(
            "({} registered; strict mode {})",
            types.len(),
            if strict {
                "on: other types are rejected"
            } else {
                "off"
            }
        ))?;
    }
    Ok(())
}

// ----------------------------------------------------------------- check

pub(crate) async fn check(url: &StoreUrl, out: &mut Out) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let pb = spinner("checking", "keys read");
    let r = eskv::verify::verify_with_progress(&store, |keys| pb.set_position(keys)).await;
    pb.finish_and_clear();
    let r = r?;
    if out.json {
        let violations: Vec<_> = r
            .violations
            .iter()
            .map(|v| {
                json!({
                    "position": v.position,
                    "key": v.key.as_deref().map(eskv::display_key),
                    "message": v.message,
                })
            })
            .collect();
        out.value(&json!({
            "clean": r.is_clean(),
            "events": r.events,
            "streams": r.streams,
            "head": r.head,
            "keys": r.keys,
            "violations": violations,
            "omitted": r.omitted,
        }))?;
    } else {
        out.line(&r.to_string())?;
    }
    if r.is_clean() {
        Ok(())
    } else {
        out.flush()?;
        Err(Exit {
            code: 4,
            message: format!(
                "check found {} problem(s) in {url} (report on stdout)",
                r.violations.len() as u64 + r.omitted
            ),
        }
        .into())
    }
}
