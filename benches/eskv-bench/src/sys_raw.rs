//! Raw redb: the keys and values eskv writes for an event, and the scans it
//! reads with, done directly on one redb table in one write transaction per
//! append (durability `Immediate`, redb's default: one fsync per commit).
//! The limit of eskv's layer over its engine: no group commit queue, no
//! oracle, no async hops, no decoding of what it reads.

use crate::common::layout_rows;
use crate::common::{err, now_ms, Ev, Res, Store};
use eskv::layout::{self, Index, StreamMeta};
use eskv::Ulid;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("eskv_data");

pub struct RawRedb {
    db: Arc<Database>,
    durable: bool,
}

fn get_u64(t: &impl ReadableTable<&'static [u8], &'static [u8]>, key: &[u8]) -> Res<Option<u64>> {
    match t.get(key).map_err(err("redb get"))? {
        Some(v) => layout::parse_u64(v.value(), "value")
            .map(Some)
            .map_err(err("decode")),
        None => Ok(None),
    }
}

/// One W1 append on `db`: read the head and the event id, check the
/// condition with one scan of the tag index, write the rows and the head.
fn append_cond_on(db: &Database, durable: bool, ev: &Ev, cond_tag: &str) -> Res<()> {
    let w = begin(db, durable)?;
    {
        let mut t = w.open_table(DATA).map_err(err("redb table"))?;
        let head = get_u64(&t, &layout::head_key())?.unwrap_or(0);
        if t.get(layout::id_key(Ulid(ev.id)).as_slice())
            .map_err(err("redb get"))?
            .is_some()
        {
            return Err("raw redb: duplicate id".into());
        }
        let range = Index::Tag(cond_tag).range(1, head.max(1));
        if t.range::<&[u8]>(range.as_bounds())
            .map_err(err("redb range"))?
            .next()
            .is_some()
        {
            return Err("raw redb: condition failed".into());
        }
        let mut rows = Vec::with_capacity(6);
        layout_rows(
            &mut rows,
            head + 1,
            (head + 1, head + 1),
            ev,
            now_ms(),
            None,
        )?;
        rows.push((layout::head_key(), layout::u64_value(head + 1)));
        for (k, v) in &rows {
            t.insert(k.as_slice(), v.as_slice())
                .map_err(err("redb insert"))?;
        }
    }
    w.commit().map_err(err("redb commit"))
}

/// A write transaction; without `durable`, commits skip the fsync (for the
/// no-fsync diagnostic only).
fn begin(db: &Database, durable: bool) -> Res<redb::WriteTransaction> {
    let mut w = db.begin_write().map_err(err("redb begin"))?;
    if !durable {
        w.set_durability(redb::Durability::None)
            .map_err(err("redb durability"))?;
    }
    Ok(w)
}

impl RawRedb {
    /// Without fsync: for the no-fsync diagnostic only.
    pub fn open_no_fsync(path: &Path) -> Res<RawRedb> {
        let mut r = Self::open(path)?;
        r.durable = false;
        Ok(r)
    }

    pub fn open(path: &Path) -> Res<RawRedb> {
        let db = Database::create(path).map_err(err("redb open"))?;
        let w = db.begin_write().map_err(err("redb begin"))?;
        w.open_table(DATA).map_err(err("redb table"))?;
        w.commit().map_err(err("redb commit"))?;
        Ok(RawRedb {
            db: Arc::new(db),
            durable: true,
        })
    }

    /// Writes `evs` (and for stream events the stream metadata) in one
    /// transaction, without a condition.
    fn write_batch(&self, evs: &[Ev]) -> Res<()> {
        let w = begin(&self.db, self.durable)?;
        {
            let mut t = w.open_table(DATA).map_err(err("redb table"))?;
            let head = get_u64(&t, &layout::head_key())?.unwrap_or(0);
            let ids: Vec<Vec<u8>> = evs.iter().map(|e| layout::id_key(Ulid(e.id))).collect();
            for k in &ids {
                if t.get(k.as_slice()).map_err(err("redb get"))?.is_some() {
                    return Err("raw redb: duplicate id".into());
                }
            }
            let now = now_ms();
            let mut rows = Vec::with_capacity(evs.len() * 7 + 1);
            let mut metas: std::collections::BTreeMap<&str, StreamMeta> = Default::default();
            for (i, ev) in evs.iter().enumerate() {
                let pos = head + 1 + i as u64;
                let stream = ev.stream.as_ref().map(|(s, v)| (s.as_str(), *v));
                layout_rows(
                    &mut rows,
                    pos,
                    (head + 1, head + evs.len() as u64),
                    ev,
                    now,
                    stream,
                )?;
                if let Some((s, v)) = stream {
                    metas.insert(
                        s,
                        StreamMeta {
                            version: v,
                            last_position: pos,
                        },
                    );
                }
            }
            for (s, m) in metas {
                rows.push((layout::stream_key(s), m.encode()));
            }
            rows.push((
                layout::head_key(),
                layout::u64_value(head + evs.len() as u64),
            ));
            for (k, v) in &rows {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(err("redb insert"))?;
            }
        }
        w.commit().map_err(err("redb commit"))
    }

    /// W3 on raw redb: `writers` threads share the database; redb lets one
    /// write transaction run at a time, each with its own fsync.
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
                let durable = self.durable;
                let data = data.clone();
                std::thread::spawn(move || -> Res<u64> {
                    let mut n = 0u64;
                    while n == 0 || Instant::now() < deadline {
                        let ev = Ev::writer(w, &data);
                        append_cond_on(&db, durable, &ev, &ev.tags[0].clone())?;
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
                .map_err(|_| "raw redb W3 thread panicked".to_string())??;
        }
        Ok((total, start.elapsed()))
    }
}

impl Store for RawRedb {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        append_cond_on(&self.db, self.durable, ev, cond_tag)
    }

    /// W2: read the head, the event id and the stream's metadata, check
    /// the version, write the rows, the stream metadata and the head.
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let w = begin(&self.db, self.durable)?;
        let pos;
        {
            let mut t = w.open_table(DATA).map_err(err("redb table"))?;
            let head = get_u64(&t, &layout::head_key())?.unwrap_or(0);
            if t.get(layout::id_key(Ulid(ev.id)).as_slice())
                .map_err(err("redb get"))?
                .is_some()
            {
                return Err("raw redb: duplicate id".into());
            }
            let meta = match t
                .get(layout::stream_key(stream).as_slice())
                .map_err(err("redb get"))?
            {
                Some(v) => Some(StreamMeta::decode(v.value()).map_err(err("decode"))?),
                None => None,
            };
            if meta.map_or(0, |m| m.version) != expected {
                return Err("raw redb: wrong expected version".into());
            }
            pos = head + 1;
            let mut rows = Vec::with_capacity(9);
            layout_rows(
                &mut rows,
                pos,
                (pos, pos),
                ev,
                now_ms(),
                Some((stream, expected + 1)),
            )?;
            rows.push((
                layout::stream_key(stream),
                StreamMeta {
                    version: expected + 1,
                    last_position: pos,
                }
                .encode(),
            ));
            rows.push((layout::head_key(), layout::u64_value(pos)));
            for (k, v) in &rows {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(err("redb insert"))?;
            }
        }
        w.commit().map_err(err("redb commit"))?;
        Ok(pos)
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    /// W5: scan the tag's index entries, then get each event's log value.
    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let t = r.open_table(DATA).map_err(err("redb table"))?;
        let head = get_u64(&t, &layout::head_key())?.unwrap_or(0);
        let index = Index::Tag(tag);
        let mut positions = Vec::new();
        for item in t
            .range::<&[u8]>(index.range(1, head.max(1)).as_bounds())
            .map_err(err("redb range"))?
        {
            let (k, v) = item.map_err(err("redb range"))?;
            let _entry = v.value().to_vec();
            positions.push(index.parse_position(k.value()).map_err(err("decode"))?);
        }
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            let v = t
                .get(layout::log_key(p).as_slice())
                .map_err(err("redb get"))?
                .ok_or("raw redb: missing log entry")?;
            out.push(v.value().to_vec());
        }
        Ok(out.len())
    }

    /// W6: scan the log, copying each key and value.
    fn read_all(&mut self) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let t = r.open_table(DATA).map_err(err("redb table"))?;
        let range = layout::log_table_range();
        let mut out = Vec::new();
        for item in t
            .range::<&[u8]>(range.as_bounds())
            .map_err(err("redb range"))?
        {
            let (k, v) = item.map_err(err("redb range"))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out.len())
    }

    /// W7: the stream's metadata, its index entries, then the log values.
    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        let r = self.db.begin_read().map_err(err("redb read"))?;
        let t = r.open_table(DATA).map_err(err("redb table"))?;
        let Some(meta) = t
            .get(layout::stream_key(stream).as_slice())
            .map_err(err("redb get"))?
            .map(|v| StreamMeta::decode(v.value()))
            .transpose()
            .map_err(err("decode"))?
        else {
            return Ok(0);
        };
        let mut positions = Vec::new();
        for item in t
            .range::<&[u8]>(layout::stream_event_range(stream, 1, meta.version).as_bounds())
            .map_err(err("redb range"))?
        {
            let (k, v) = item.map_err(err("redb range"))?;
            positions
                .push(layout::parse_stream_entry(k.value(), v.value()).map_err(err("decode"))?);
        }
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            let v = t
                .get(layout::log_key(p).as_slice())
                .map_err(err("redb get"))?
                .ok_or("raw redb: missing log entry")?;
            out.push(v.value().to_vec());
        }
        Ok(out.len())
    }
}
