//! Raw fjall: the keys and values eskv writes for an event, and the scans
//! it reads with, done directly on one fjall keyspace with fjall's
//! optimistic transactions, one per append, each synced with
//! `PersistMode::SyncData` before it returns. The limit of eskv's layer
//! over fjall: no group commit queue, no commit oracle, no async hops, no
//! decoding of what it reads.

use crate::common::layout_rows;
use crate::common::{err, now_ms, Ev, Res, Store};
use eskv::fjall::fjall::{
    self, KeyspaceCreateOptions, OptimisticTxDatabase, OptimisticTxKeyspace, OptimisticWriteTx,
    PersistMode, Readable,
};
use eskv::layout::{self, Index, StreamMeta};
use eskv::Ulid;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RawFjall {
    db: Arc<OptimisticTxDatabase>,
    data: OptimisticTxKeyspace,
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn get_u64(r: &impl Readable, ks: &OptimisticTxKeyspace, key: &[u8]) -> Res<Option<u64>> {
    match r.get(ks, key).map_err(err("fjall get"))? {
        Some(v) => layout::parse_u64(&v, "value")
            .map(Some)
            .map_err(err("decode")),
        None => Ok(None),
    }
}

/// What one attempt of a transaction came to.
enum Outcome {
    Done,
    /// Another writer committed a key this one read: retry (W3 only).
    Conflict,
}

fn commit(tx: OptimisticWriteTx, rows: &Rows, ks: &OptimisticTxKeyspace) -> Res<Outcome> {
    let mut tx = tx;
    for (k, v) in rows {
        tx.insert(ks, k.as_slice(), v.as_slice());
    }
    match tx.commit().map_err(err("fjall commit"))? {
        Ok(()) => Ok(Outcome::Done),
        Err(fjall::Conflict) => Ok(Outcome::Conflict),
    }
}

impl RawFjall {
    pub fn open(path: &Path) -> Res<RawFjall> {
        let db = OptimisticTxDatabase::builder(path)
            .cache_size(eskv::fjall::DEFAULT_CACHE_SIZE)
            .open()
            .map_err(err("fjall open"))?;
        let data = db
            .keyspace("eskv_data", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(eskv::fjall::DEFAULT_MEMTABLE_SIZE)
            })
            .map_err(err("fjall keyspace"))?;
        Ok(RawFjall {
            db: Arc::new(db),
            data,
        })
    }

    fn tx(&self) -> Res<OptimisticWriteTx> {
        Ok(self
            .db
            .write_tx()
            .map_err(err("fjall tx"))?
            .durability(Some(PersistMode::SyncData)))
    }

    /// One W1 attempt: read the head and the event id, check the condition
    /// with one scan of the tag index, write the rows and the head.
    fn try_append_cond(&self, ev: &Ev, cond_tag: &str) -> Res<Outcome> {
        let tx = self.tx()?;
        let ks = &self.data;
        let head = get_u64(&tx, ks, &layout::head_key())?.unwrap_or(0);
        if get_u64(&tx, ks, &layout::id_key(Ulid(ev.id)))?.is_some() {
            return Err("raw fjall: duplicate id".into());
        }
        let range = Index::Tag(cond_tag).range(1, head.max(1));
        if tx.range::<&[u8], _>(ks, range.as_bounds()).next().is_some() {
            return Err("raw fjall: condition failed".into());
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
        commit(tx, &rows, ks)
    }

    /// Writes `evs` (and for stream events the stream metadata) in one
    /// transaction, without a condition.
    fn write_batch(&self, evs: &[Ev]) -> Res<()> {
        let tx = self.tx()?;
        let ks = &self.data;
        let head = get_u64(&tx, ks, &layout::head_key())?.unwrap_or(0);
        for e in evs {
            if tx
                .get(ks, layout::id_key(Ulid(e.id)))
                .map_err(err("fjall get"))?
                .is_some()
            {
                return Err("raw fjall: duplicate id".into());
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
        match commit(tx, &rows, ks)? {
            Outcome::Done => Ok(()),
            Outcome::Conflict => Err("raw fjall: conflict with one writer".into()),
        }
    }

    /// W3 on raw fjall: `writers` threads share the database; each append
    /// is an optimistic transaction retried on conflict (every append
    /// writes the head, so concurrent ones conflict), each with its own
    /// sync.
    pub fn concurrent(
        &self,
        writers: usize,
        budget: Duration,
        data: &Arc<[u8]>,
    ) -> Res<(u64, Duration)> {
        let start = Instant::now();
        let deadline = start + budget;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let data = data.clone();
                    scope.spawn(move || -> Res<u64> {
                        let mut n = 0u64;
                        while n == 0 || Instant::now() < deadline {
                            let ev = Ev::writer(w, &data);
                            while let Outcome::Conflict =
                                self.try_append_cond(&ev, &ev.tags[0].clone())?
                            {
                            }
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
                    .map_err(|_| "raw fjall W3 thread panicked".to_string())??;
            }
            Ok((total, start.elapsed()))
        })
    }

    fn snapshot(&self) -> fjall::Snapshot {
        self.db.read_tx()
    }

    /// The log values at `positions`, copied.
    fn log_values(&self, r: &fjall::Snapshot, positions: Vec<u64>) -> Res<usize> {
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            let v = r
                .get(&self.data, layout::log_key(p))
                .map_err(err("fjall get"))?
                .ok_or("raw fjall: missing log entry")?;
            out.push(v.to_vec());
        }
        Ok(out.len())
    }
}

impl Store for RawFjall {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        match self.try_append_cond(ev, cond_tag)? {
            Outcome::Done => Ok(()),
            Outcome::Conflict => Err("raw fjall: conflict with one writer".into()),
        }
    }

    /// W2: read the head, the event id and the stream's metadata, check
    /// the version, write the rows, the stream metadata and the head.
    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let tx = self.tx()?;
        let ks = &self.data;
        let head = get_u64(&tx, ks, &layout::head_key())?.unwrap_or(0);
        if get_u64(&tx, ks, &layout::id_key(Ulid(ev.id)))?.is_some() {
            return Err("raw fjall: duplicate id".into());
        }
        let meta = match tx
            .get(ks, layout::stream_key(stream))
            .map_err(err("fjall get"))?
        {
            Some(v) => Some(StreamMeta::decode(&v).map_err(err("decode"))?),
            None => None,
        };
        if meta.map_or(0, |m| m.version) != expected {
            return Err("raw fjall: wrong expected version".into());
        }
        let pos = head + 1;
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
        match commit(tx, &rows, ks)? {
            Outcome::Done => Ok(pos),
            Outcome::Conflict => Err("raw fjall: conflict with one writer".into()),
        }
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        self.write_batch(evs)
    }

    /// W5: scan the tag's index entries, then get each event's log value.
    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        let r = self.snapshot();
        let head = get_u64(&r, &self.data, &layout::head_key())?.unwrap_or(0);
        let index = Index::Tag(tag);
        let mut positions = Vec::new();
        for g in r.range::<&[u8], _>(&self.data, index.range(1, head.max(1)).as_bounds()) {
            let (k, v) = g.into_inner().map_err(err("fjall range"))?;
            let _entry = v.to_vec();
            positions.push(index.parse_position(&k).map_err(err("decode"))?);
        }
        self.log_values(&r, positions)
    }

    /// W6: scan the log, copying each key and value.
    fn read_all(&mut self) -> Res<usize> {
        let r = self.snapshot();
        let range = layout::log_table_range();
        let mut out = Vec::new();
        for g in r.range::<&[u8], _>(&self.data, range.as_bounds()) {
            let (k, v) = g.into_inner().map_err(err("fjall range"))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out.len())
    }

    /// W7: the stream's metadata, its index entries, then the log values.
    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        let r = self.snapshot();
        let Some(meta) = r
            .get(&self.data, layout::stream_key(stream))
            .map_err(err("fjall get"))?
            .map(|v| StreamMeta::decode(&v))
            .transpose()
            .map_err(err("decode"))?
        else {
            return Ok(0);
        };
        let mut positions = Vec::new();
        for g in r.range::<&[u8], _>(
            &self.data,
            layout::stream_event_range(stream, 1, meta.version).as_bounds(),
        ) {
            let (k, v) = g.into_inner().map_err(err("fjall range"))?;
            positions.push(layout::parse_stream_entry(&k, &v).map_err(err("decode"))?);
        }
        self.log_values(&r, positions)
    }
}
