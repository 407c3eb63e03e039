//! Raw redb the way a redb user would write an event store without eskv:
//! one record per event in an `events` table keyed by its u64 position
//! (the record holds the id, type, time, stream, tags and data), a
//! `tags` multimap `tag -> position`, a `streams` table
//! `(stream, version) -> position` and a `meta` table holding the head.
//! One write transaction per append, durability `Immediate` (redb's
//! default: one fsync per commit). No id index: like the SQLite schemas,
//! it does not pay for idempotency.

use crate::common::{err, now_ms, Ev, Res, Store, EVENT_TYPE};
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TAGS: MultimapTableDefinition<&str, u64> = MultimapTableDefinition::new("tags");
const STREAMS: TableDefinition<(&str, u64), u64> = TableDefinition::new("streams");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HEAD: &str = "head";

pub struct RedbTables {
    db: Arc<Database>,
}

/// An event as read back, decoded into owned fields like the other
/// systems' reads.
#[allow(dead_code)]
struct Record {
    position: u64,
    id: u128,
    recorded_at: u64,
    event_type: String,
    stream: Option<(String, u64)>,
    tags: Vec<String>,
    data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The event record: id, time, type, optional (stream, version), tags,
/// then the data to the end; strings are u16-length-prefixed.
fn encode(ev: &Ev, now: u64, stream: Option<(&str, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ev.data.len());
    out.extend_from_slice(&ev.id.to_le_bytes());
    out.extend_from_slice(&now.to_le_bytes());
    put_str(&mut out, EVENT_TYPE);
    match stream {
        Some((s, v)) => {
            out.push(1);
            put_str(&mut out, s);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
    out.push(ev.tags.len() as u8);
    for t in &ev.tags {
        put_str(&mut out, t);
    }
    out.extend_from_slice(&ev.data);
    out
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.0.len() < n {
            return Err("raw redb tables: truncated record".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(err("decode"))?,
        ))
    }

    fn str(&mut self) -> Res<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().map_err(err("decode"))?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(err("decode"))
    }
}

fn decode(position: u64, bytes: &[u8]) -> Res<Record> {
    let mut c = Cursor(bytes);
    let id = u128::from_le_bytes(c.take(16)?.try_into().map_err(err("decode"))?);
    let recorded_at = c.u64()?;
    let event_type = c.str()?;
    let stream = match c.take(1)?[0] {
        0 => None,
        _ => Some((c.str()?, c.u64()?)),
    };
    let n = c.take(1)?[0] as usize;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        tags.push(c.str()?);
    }
    Ok(Record {
        position,
        id,
        recorded_at,
        event_type,
        stream,
        tags,
        data: c.0.to_vec(),
    })
}

/// Appends `evs` at the head inside `w`; returns the last position.
fn write_events(w: &redb::WriteTransaction, evs: &[Ev]) -> Res<u64> {
    write_events_as(w, evs, |ev| {
        ev.stream.as_ref().map(|(s, v)| (s.as_str(), *v))
    })
}

fn write_events_as<'e>(
    w: &redb::WriteTransaction,
    evs: &'e [Ev],
    stream_of: impl Fn(&'e Ev) -> Option<(&'e str, u64)>,
) -> Res<u64> {
    let mut meta = w.open_table(META).map_err(err("redb table"))?;
    let mut events = w.open_table(EVENTS).map_err(err("redb table"))?;
    let mut tags = w.open_multimap_table(TAGS).map_err(err("redb table"))?;
    let mut streams = w.open_table(STREAMS).map_err(err("redb table"))?;
    let head = meta
        .get(HEAD)
        .map_err(err("redb get"))?
        .map_or(0, |v| v.value());
    let now = now_ms();
    let mut pos = head;
    for ev in evs {
        pos += 1;
        let stream = stream_of(ev);
        events
            .insert(pos, encode(ev, now, stream).as_slice())
            .map_err(err("redb insert"))?;
        for t in &ev.tags {
            tags.insert(t.as_str(), pos).map_err(err("redb insert"))?;
        }
        if let Some((s, v)) = stream {
            streams.insert((s, v), pos).map_err(err("redb insert"))?;
        }
    }
    meta.insert(HEAD, pos).map_err(err("redb insert"))?;
    Ok(pos)
}

/// One W1 append: fail if any event carries `cond_tag`, else append.
fn append_cond_on(db: &Database, ev: &Ev, cond_tag: &str) -> Res<()> {
    let w = db.begin_write().map_err(err("redb begin"))?;
    {
        let tags = w.open_multimap_table(TAGS).map_err(err("redb table"))?;
        if tags
            .get(cond_tag)
            .map_err(err("redb get"))?
            .next()
            .is_some()
        {
            return Err("raw redb tables: condition failed".into());
        }
    }
    write_events(&w, std::slice::from_ref(ev))?;
    w.commit().map_err(err("redb commit"))
}

impl RedbTables {
    pub fn open(path: &Path) -> Res<RedbTables> {
        let db = Database::create(path).map_err(err("redb open"))?;
        let w = db.begin_write().map_err(err("redb begin"))?;
        w.open_table(EVENTS).map_err(err("redb table"))?;
        w.open_multimap_table(TAGS).map_err(err("redb table"))?;
        w.open_table(STREAMS).map_err(err("redb table"))?;
        w.open_table(META).map_err(err("redb table"))?;
        w.commit().map_err(err("redb commit"))?;
        Ok(RedbTables { db: Arc::new(db) })
    }

    fn write_batch(&self, evs: &[Ev]) -> Res<()> {
        let w = self.db.begin_write().map_err(err("redb begin"))?;
        write_events(&w, evs)?;
        w.commit().map_err(err("redb commit"))
    }

    /// The records at `positions` in the snapshot `r`, decoded.
    fn fetch(r: &redb::ReadTransaction, positions: impl IntoIterator<Item = u64>) -> Res<usize> {
        let events = r.open_table(EVENTS).map_err(err("redb table"))?;
        let mut out = Vec::new();
        for p in positions {
            let v = events
                .get(p)
                .map_err(err("redb get"))?
                .ok_or("raw redb tables: missing event")?;
            out.push(decode(p, v.value())?);
        }
        Ok(out.len())
    }

    /// W3: `writers` threads share the database; redb runs one write
    /// transaction at a time, each with its own fsync.
    pub fn concurrent(
        &self,
        writers: usize,
        budget: Duration,
        data: &Arc<[u8]>,
    ) -> Res<(u64, Duration)> {
        let start = Instant::now();
        let deadline = start + budget;
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let db = self.db.clone();
                let data = data.clone();
                std::thread::spawn(move || -> Res<u64> {
                    let mut n = 0u64;
                    while n == 0 || Instant::now() < deadline {
                        let ev = Ev::writer(w, &data);
                        append_cond_on(&db, &ev, &ev.tags[0].clone())?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| "raw redb tables W3 thread panicked".to_string())??;
        }
        Ok((total, start.elapsed()))
    }
}

impl Store for RedbTables {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        append_cond_on(&self.db, ev, cond_tag)
    }

    /// W2: the stream's last version (the last `(stream, _)` key), checked
    /// against the expected one, then the append.
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let w = self.db.begin_write().map_err(err("redb begin"))?;
        {
            let streams = w.open_table(STREAMS).map_err(err("redb table"))?;
            let current = streams
                .range((stream, 0)..=(stream, u64::MAX))
                .map_err(err("redb range"))?
                .next_back()
                .transpose()
                .map_err(err("redb range"))?
                .map_or(0, |(k, _)| k.value().1);
            if current != expected {
                return Err("raw redb tables: wrong expected version".into());
            }
        }
        let pos = write_events_as(&w, std::slice::from_ref(ev), |_| {
            Some((stream, expected + 1))
        })?;
        w.commit().map_err(err("redb commit"))?;
        Ok(pos)
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    /// W5: the tag's positions from the multimap, then each record.
    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let tags = r.open_multimap_table(TAGS).map_err(err("redb table"))?;
        let positions = tags
            .get(tag)
            .map_err(err("redb get"))?
            .map(|p| p.map(|p| p.value()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(err("redb get"))?;
        Self::fetch(&r, positions)
    }

    /// W6: the events table in position order, each record decoded.
    fn read_all(&mut self) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let events = r.open_table(EVENTS).map_err(err("redb table"))?;
        let mut out = Vec::new();
        for item in events.iter().map_err(err("redb range"))? {
            let (k, v) = item.map_err(err("redb range"))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out.len())
    }

    /// W7: the stream's positions in version order, then each record.
    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let streams = r.open_table(STREAMS).map_err(err("redb table"))?;
        let positions = streams
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(err("redb range"))?
            .map(|i| i.map(|(_, v)| v.value()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(err("redb range"))?;
        Self::fetch(&r, positions)
    }
}
