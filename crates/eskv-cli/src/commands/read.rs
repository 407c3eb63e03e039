//! `eskv read`: streams, DCB queries, categories and the log.

use crate::args::*;
use crate::commands::*;
use crate::output::*;
use anyhow::Result;
use eskv::export::line::EventLine;
use eskv::{EventStore, LogFilter, ReadOptions, ReadStreamOptions, RecordedEvent};
use eskv_cli::open::{self, Access};
use eskv_cli::url::StoreUrl;
use std::io::{self, Write};

// ------------------------------------------------------------------ read

/// What to read.
pub(crate) enum Target {
    Log(LogFilter),
    Category(String),
    Stream(String),
}

pub(crate) fn target(f: &FilterArgs) -> Result<Target> {
    if let Some(s) = &f.stream {
        return Ok(Target::Stream(s.clone()));
    }
    if let Some(c) = &f.category {
        if !f.query.is_empty() {
            return Err(usage("--category and --query cannot be combined"));
        }
        return Ok(Target::Category(c.clone()));
    }
    Ok(Target::Log(LogFilter {
        query: if f.query.is_empty() {
            None
        } else {
            Some(parse_query(&f.query)?)
        },
        stream_prefix: f.stream_prefix.clone(),
    }))
}

/// Reads by position (every target but a stream).
pub(crate) async fn fetch(
    store: &EventStore,
    t: &Target,
    opts: ReadOptions,
) -> Result<eskv::ReadResult> {
    Ok(match t {
        Target::Log(f) => store.read_all_filtered(f, opts).await?,
        Target::Category(c) => store.read_category(c, opts).await?,
        Target::Stream(_) => unreachable!("streams are read by version"),
    })
}

pub(crate) const READ_PAGE: u64 = 512;

/// Collects output rows so a table can be aligned per page.
pub(crate) struct Printer<'a> {
    out: &'a mut Out,
    rows: Vec<EventLine>,
    /// Events printed.
    count: u64,
}

impl<'a> Printer<'a> {
    pub(crate) fn new(out: &'a mut Out) -> Self {
        Printer {
            out,
            rows: Vec::new(),
            count: 0,
        }
    }

    /// On a terminal, says so when nothing was printed.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.count == 0 && !self.out.json {
            self.out.line("no events")?;
        }
        self.out.flush()
    }

    pub(crate) fn event(&mut self, e: &RecordedEvent) -> io::Result<()> {
        self.count += 1;
        let line = EventLine::from_recorded(e);
        if self.out.json {
            self.out.line(&line.to_json())
        } else {
            self.rows.push(line);
            Ok(())
        }
    }

    /// Prints buffered table rows.
    pub(crate) fn page(&mut self) -> io::Result<()> {
        if !self.rows.is_empty() {
            let t = table(&self.rows, None);
            self.out.w.write_all(t.as_bytes())?;
            self.rows.clear();
        }
        self.out.flush()
    }
}

pub(crate) async fn read(url: &StoreUrl, a: ReadArgs, out: &mut Out) -> Result<()> {
    let t = target(&a.filter)?;
    let store = open::open(url, Access::Existing).await?;
    let mut p = Printer::new(out);
    read_into(&store, &t, &a, &mut p).await?;
    p.finish()?;
    Ok(())
}

pub(crate) async fn read_into(
    store: &EventStore,
    t: &Target,
    a: &ReadArgs,
    p: &mut Printer<'_>,
) -> Result<()> {
    let mut left = a.limit.unwrap_or(u64::MAX);
    if left == 0 {
        return Ok(());
    }
    if let Target::Stream(s) = t {
        let head = store.head().await?;
        let until = a.until.map_or(head, |u| u.min(head));
        let mut version = a.from_version;
        loop {
            let page = left.min(READ_PAGE);
            let mut o = ReadStreamOptions::new().limit(page as usize).until(until);
            o.backwards = a.backwards;
            o.from_version = version;
            let events = store.read_stream(s, o).await?;
            for e in &events {
                let skip = a.from.is_some_and(|f| {
                    if a.backwards {
                        e.position > f
                    } else {
                        e.position < f
                    }
                });
                if !skip && left > 0 {
                    p.event(e)?;
                    left -= 1;
                }
            }
            p.page()?;
            let Some(last) = events.last().and_then(|e| e.stream.as_ref()) else {
                break;
            };
            if (events.len() as u64) < page || left == 0 {
                break;
            }
            version = Some(if a.backwards {
                if last.version <= 1 {
                    break;
                }
                last.version - 1
            } else {
                last.version + 1
            });
        }
        return Ok(());
    }
    let mut opts = ReadOptions {
        from: a.from,
        backwards: a.backwards,
        limit: None,
        until: a.until,
    };
    // Every page reads up to the head as it is now: one consistent view
    // (events at or below it never change).
    let head = store.head().await?;
    opts.until = Some(opts.until.map_or(head, |u| u.min(head)));
    loop {
        let page = left.min(READ_PAGE);
        opts.limit = Some(page as usize);
        let res = fetch(store, t, opts).await?;
        for e in &res.events {
            p.event(e)?;
        }
        p.page()?;
        left -= res.events.len() as u64;
        let Some(last) = res.events.last() else {
            break;
        };
        if (res.events.len() as u64) < page || left == 0 {
            break;
        }
        opts.from = Some(if a.backwards {
            if last.position <= 1 {
                break;
            }
            last.position - 1
        } else {
            last.position + 1
        });
    }
    Ok(())
}
