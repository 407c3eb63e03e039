//! `eskv tail`: follow new events live.

use crate::args::*;
use crate::commands::*;
use crate::output::*;
use anyhow::{Context as _, Result};
use eskv::export::line::EventLine;
use eskv::{
    LogFilter, ReadOptions, ReadStreamOptions, RecordedEvent, StartFrom, SubscriptionFilter,
    SubscriptionOptions,
};
use eskv_cli::open::{self, Access};
use eskv_cli::url::StoreUrl;
use std::io::{self, Write};
use std::time::Duration;

// ------------------------------------------------------------------ tail

pub(crate) async fn tail(url: &StoreUrl, a: TailArgs, out: &mut Out) -> Result<()> {
    let t = target(&a.filter)?;
    let mut left = a.limit.unwrap_or(u64::MAX);
    if left == 0 {
        return Ok(());
    }
    let follow = async {
        if matches!(url, StoreUrl::Redb { .. } | StoreUrl::Fjall { .. }) {
            tail_poll(url, &t, a.from, &mut left, out).await
        } else {
            tail_subscribe(url, &t, a.from, &mut left, out).await
        }
    };
    // Ctrl-C first: its handler is installed on the first poll, before
    // `follow` can print anything, so once a line is out Ctrl-C stops
    // `tail` cleanly.
    tokio::select! {
        biased;
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C"),
        r = follow => r,
    }
}

/// Prints one tailed event; false when the limit is reached.
pub(crate) fn tail_print(out: &mut Out, e: &RecordedEvent, left: &mut u64) -> io::Result<bool> {
    let line = EventLine::from_recorded(e);
    if out.json {
        out.line(&line.to_json())?;
    } else {
        let t = table(std::slice::from_ref(&line), Some(TAIL_WIDTHS));
        // Skip the header row after the first event.
        let body = t.split_once('\n').map_or(t.as_str(), |(_, b)| b);
        out.w.write_all(body.as_bytes())?;
    }
    out.flush()?;
    *left -= 1;
    Ok(*left > 0)
}

/// Live subscription (TiKV, etcd, memory).
pub(crate) async fn tail_subscribe(
    url: &StoreUrl,
    t: &Target,
    from: Option<u64>,
    left: &mut u64,
    out: &mut Out,
) -> Result<()> {
    let store = open::open(url, Access::Existing).await?;
    let (filter, prefix) = match t {
        Target::Stream(s) => (SubscriptionFilter::Stream(s.clone()), None),
        Target::Category(c) => (SubscriptionFilter::Category(c.clone()), None),
        Target::Log(f) => (
            f.query
                .clone()
                .map_or(SubscriptionFilter::All, SubscriptionFilter::Query),
            f.stream_prefix.clone(),
        ),
    };
    let start = match from {
        Some(p) => StartFrom::After(p.saturating_sub(1)),
        None => StartFrom::End,
    };
    if !out.json {
        out.w.write_all(table(&[], Some(TAIL_WIDTHS)).as_bytes())?;
        out.flush()?;
    }
    let mut sub = store
        .subscribe(SubscriptionOptions::new().filter(filter).start(start))
        .await?;
    // Subscriptions filter by query, stream or category; a stream prefix
    // is checked here.
    let by_prefix = LogFilter {
        query: None,
        stream_prefix: prefix,
    };
    loop {
        let e = sub.next().await?;
        if by_prefix.matches(&e) && !tail_print(out, &e, left)? {
            return Ok(());
        }
    }
}

/// Polling tail for redb and fjall: the store has one user at a time, so it is
/// opened briefly for every poll and other processes can append between
/// polls.
pub(crate) async fn tail_poll(
    url: &StoreUrl,
    t: &Target,
    from: Option<u64>,
    left: &mut u64,
    out: &mut Out,
) -> Result<()> {
    let mut cursor = match from {
        Some(p) => p.saturating_sub(1),
        None => open::open(url, Access::Existing).await?.head().await?,
    };
    if !out.json {
        out.w.write_all(table(&[], Some(TAIL_WIDTHS)).as_bytes())?;
        out.flush()?;
    }
    let mut next_version = 1;
    let idle = Duration::from_millis(200);
    loop {
        if let Some(store) = open::try_open(url, Access::Existing).await? {
            loop {
                let events = match t {
                    Target::Stream(s) => {
                        store
                            .read_stream(
                                s,
                                ReadStreamOptions::new()
                                    .from_version(next_version)
                                    .limit(READ_PAGE as usize),
                            )
                            .await?
                            .events
                    }
                    _ => {
                        fetch(
                            &store,
                            t,
                            ReadOptions::after(cursor).limit(READ_PAGE as usize),
                        )
                        .await?
                        .events
                    }
                };
                for e in &events {
                    if let Some(s) = &e.stream {
                        next_version = next_version.max(s.version + 1);
                    }
                    if e.position > cursor {
                        cursor = e.position;
                        if !tail_print(out, e, left)? {
                            return Ok(());
                        }
                    }
                }
                if (events.len() as u64) < READ_PAGE {
                    break;
                }
            }
            drop(store);
        }
        tokio::time::sleep(idle).await;
    }
}
