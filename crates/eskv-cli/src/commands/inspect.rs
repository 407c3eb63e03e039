//! `eskv streams`, `info`, `types` and `check`.

use crate::args::*;
use crate::output::*;
use anyhow::Result;
use eskv::export as transfer;
use eskv::EventStore;
use eskv_cli::open::{self, Access};
use eskv_cli::tenant;
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
    // The root lists its tenants; a tenant says which it is.
    let tenant = open::tenant();
    let tenants = match tenant {
        Some(_) => None,
        None => Some(tenant::list(store.kv().as_ref()).await?),
    };
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
        match (&tenant, &tenants) {
            (Some(t), _) => v["tenant"] = json!(t),
            (None, Some(ts)) => v["tenants"] = json!(ts),
            (None, None) => {}
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
        if let Some(t) = &tenant {
            out.line(&format!("tenant:    {t}"))?;
        }
        out.line(&format!("head:      {head}"))?;
        out.line(&format!("streams:   {streams}"))?;
        out.line(&format!(
            "types:     {} registered, strict mode {}",
            types.len(),
            if strict { "on" } else { "off" }
        ))?;
        if let Some(ts) = tenants.as_ref().filter(|ts| !ts.is_empty()) {
            out.line(&format!("tenants:   {}", ts.join(", ")))?;
        }
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
    // The tenant chosen, or the root and every tenant.
    let mut namespaces: Vec<(Option<String>, EventStore)> = Vec::new();
    match open::tenant() {
        Some(t) => namespaces.push((Some(t), open::open(url, Access::Existing).await?)),
        None => {
            let root = open::open_root_keyed(url, Access::Existing, open::store_key()).await?;
            let tenants = tenant::list(root.kv().as_ref()).await?;
            namespaces.push((None, root.clone()));
            for t in tenants {
                let store = tenant::open_in(&root, &t).await?;
                namespaces.push((Some(t), store));
            }
        }
    }
    let labelled = namespaces.len() > 1 || open::tenant().is_some();
    let mut damaged: Vec<(String, u64)> = Vec::new();
    for (tenant, store) in &namespaces {
        let name = tenant
            .as_ref()
            .map_or("root".to_owned(), |t| format!("tenant {t}"));
        let problems = check_one(store, tenant.as_deref(), labelled.then_some(&name), out).await?;
        if problems > 0 {
            damaged.push((name, problems));
        }
    }
    if damaged.is_empty() {
        return Ok(());
    }
    out.flush()?;
    let total: u64 = damaged.iter().map(|(_, n)| n).sum();
    let mut message = format!("check found {total} problem(s) in {url}");
    if labelled {
        let each: Vec<String> = damaged.iter().map(|(w, n)| format!("{w}: {n}")).collect();
        message.push_str(&format!(" ({})", each.join(", ")));
    }
    message.push_str(" (report on stdout)");
    Err(Exit { code: 4, message }.into())
}

/// Checks one namespace and prints its report; returns the problems found.
async fn check_one(
    store: &EventStore,
    tenant: Option<&str>,
    label: Option<&String>,
    out: &mut Out,
) -> Result<u64> {
    let pb = spinner("checking", "keys read");
    let r = eskv::verify::verify_with_progress(store, |keys| pb.set_position(keys)).await;
    pb.finish_and_clear();
    let r = r?;
    // The live events, as `read` and `export` see them (the report counts
    // what the log stores, released events included until `compact`).
    let pb = spinner("counting live events", "events");
    let counted = live_events(store, r.head, |n| pb.set_position(n)).await;
    pb.finish_and_clear();
    // Why the live events could not be counted (the report still stands).
    let (live, why) = match counted {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
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
            "tenant": tenant,
            "clean": r.is_clean(),
            "events": live,
            "events_error": why,
            "stored_events": r.events,
            "streams": r.streams,
            "head": r.head,
            "keys": r.keys,
            "violations": violations,
            "omitted": r.omitted,
        }))?;
    } else {
        let text = r.to_string();
        let rest = text
            .strip_prefix(&format!("{} events, ", r.events))
            .unwrap_or(&text);
        let events = match live {
            Some(n) if n == r.events => format!("{n} {}, ", events_word(n)),
            Some(n) => format!(
                "{n} live {} ({} stored in the log until `compact` removes the released ones), ",
                events_word(n),
                r.events
            ),
            None => format!(
                "{} {} stored in the log (the live ones could not be read: {}), ",
                r.events,
                events_word(r.events),
                why.as_deref().unwrap_or("unknown")
            ),
        };
        let prefix = label.map_or(String::new(), |l| format!("{l}: "));
        out.line(&format!("{prefix}{events}{rest}"))?;
    }
    Ok(r.violations.len() as u64 + r.omitted)
}

/// The events a read of the whole log returns, up to `head`.
async fn live_events(store: &EventStore, head: u64, mut progress: impl FnMut(u64)) -> Result<u64> {
    let mut pager = transfer::LogPager::new(store, head).await?;
    let mut n = 0u64;
    loop {
        let page = pager.next_page().await?;
        if page.is_empty() {
            return Ok(n);
        }
        n += page.len() as u64;
        progress(n);
    }
}
