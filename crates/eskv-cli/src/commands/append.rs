//! `eskv append`.

use crate::args::*;
use crate::output::*;
use anyhow::{Context as _, Result};
use eskv::export::line::{EventLine, MetaLine};
use eskv::{AppendCondition, AppendRequest, Query};
use eskv_cli::open::{self, Access};
use eskv_cli::spec::{parse_expected, parse_query_item};
use eskv_cli::url::StoreUrl;
use serde_json::json;
use std::io::{self, BufRead, IsTerminal};

// ---------------------------------------------------------------- append

pub(crate) fn event_from_flags(a: &AppendArgs, event_type: &str) -> Result<EventLine> {
    let data = match &a.data {
        // Checked as written, stored as written: nothing is taken out.
        Some(d) => {
            serde_json::from_str::<&serde_json::value::RawValue>(d)
                .map_err(|e| usage(format!("--data is not valid JSON: {e}")))?;
            Some(d.clone())
        }
        None => None,
    };
    let mut extra = std::collections::BTreeMap::new();
    for m in &a.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| usage(format!("--meta '{m}' is not KEY=VALUE")))?;
        extra.insert(k.to_owned(), v.to_owned());
    }
    Ok(EventLine {
        position: None,
        id: a.id.clone(),
        event_type: event_type.to_owned(),
        stream: None,
        version: None,
        tags: a.tags.clone(),
        data: None,
        // The exact bytes (including any line breaks or surrounding
        // spaces); `read` shows single-line JSON as "data" again.
        data_text: data.or_else(|| a.data_text.clone()),
        data_base64: None,
        metadata: MetaLine {
            correlation_id: a.correlation_id.clone(),
            causation_id: a.causation_id.clone(),
            extra,
        },
        personal: None,
        recorded_at: None,
    })
}

pub(crate) fn events_from_stdin() -> Result<Vec<EventLine>> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Err(usage(
            "no events: give --type (and --tag, --data) or pipe JSON lines on stdin",
        ));
    }
    let mut lines = Vec::new();
    for (i, l) in stdin.lock().lines().enumerate() {
        let l = l.context("cannot read stdin")?;
        if l.trim().is_empty() {
            continue;
        }
        let e = EventLine::parse(&l).map_err(|e| usage(format!("stdin line {}: {e}", i + 1)))?;
        if e.position.is_some()
            || e.stream.is_some()
            || e.version.is_some()
            || e.recorded_at.is_some()
        {
            return Err(usage(format!(
                "stdin line {}: position, stream, version and recorded_at are set by the store (use --stream for a stream append, `eskv import` to restore a backup)",
                i + 1
            )));
        }
        lines.push(e);
    }
    if lines.is_empty() {
        return Err(usage("no events on stdin"));
    }
    Ok(lines)
}

pub(crate) async fn append(url: &StoreUrl, a: AppendArgs, out: &mut Out) -> Result<()> {
    let lines = match &a.event_type {
        Some(t) => vec![event_from_flags(&a, t)?],
        None => events_from_stdin()?,
    };
    let mut events = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        events.push(l.to_new_event().map_err(|e| {
            usage(if lines.len() == 1 {
                e
            } else {
                format!("stdin event {}: {e}", i + 1)
            })
        })?);
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let mut req = AppendRequest::new(events);
    if let Some(s) = &a.stream {
        req = req.stream(s.clone(), parse_expected(&a.expected).map_err(usage)?);
    }
    if !a.fail_if.is_empty() {
        req = req.condition(AppendCondition::new(parse_query(&a.fail_if)?, a.after));
    }
    let store = open::open(url, Access::Create).await?;
    let done = store.submit(req).await.map_err(|e| {
        if store_error_code(&e) == Some(3) {
            anyhow::Error::new(e).context("append rejected")
        } else {
            e.into()
        }
    })?;
    let mut v = json!({
        "first_position": done.first_position,
        "last_position": done.last_position,
        "ids": ids,
    });
    if let (Some(s), Some(ver)) = (&a.stream, done.stream_version) {
        v["stream"] = json!(s);
        v["stream_version"] = json!(ver);
    }
    out.value(&v)?;
    Ok(())
}

pub(crate) fn parse_query(items: &[String]) -> Result<Query> {
    let items = items
        .iter()
        .map(|s| parse_query_item(s).map_err(|e| usage(format!("query '{s}': {e}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Query { items })
}
