//! eskv, on redb and on fjall (durable: one fsync per group commit) and in
//! memory.

use crate::common::{err, now_ms, Ev, Res, Store, EVENT_TYPE};
use eskv::redb::{RedbOptions, RedbStore};
use eskv::{
    AppendCondition, EventStore, ExpectedVersion, KvStore, MemoryStore, NewEvent, Query, QueryItem,
    ReadOptions, ReadStreamOptions, RecordedEvent, StreamRef, Ulid,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

pub struct Eskv {
    rt: Handle,
    store: EventStore,
}

fn new_event(ev: &Ev) -> NewEvent {
    NewEvent::new(EVENT_TYPE, ev.data.to_vec())
        .with_id(Ulid(ev.id))
        .with_tags(ev.tags.iter().cloned())
}

fn tag_query(tag: &str) -> Query {
    Query::item(QueryItem::new().tags([tag]))
}

impl Eskv {
    /// eskv on a redb file at `path`, with eskv-redb's defaults
    /// (`Durability::Immediate`: fsync before a commit returns).
    pub fn redb(rt: &Handle, path: &Path) -> Res<Eskv> {
        let p = path.to_path_buf();
        let kv = rt
            .block_on(RedbStore::open_with(p, RedbOptions::default()))
            .map_err(err("open eskv-redb"))?;
        Self::on(rt, Arc::new(kv))
    }

    /// eskv on redb without fsync (`Durability::None`): for the no-fsync
    /// diagnostic only.
    pub fn redb_no_fsync(rt: &Handle, path: &Path) -> Res<Eskv> {
        let p = path.to_path_buf();
        let opts = RedbOptions::default().durability(eskv::redb::Durability::None);
        let kv = rt
            .block_on(RedbStore::open_with(p, opts))
            .map_err(err("open eskv-redb"))?;
        Self::on(rt, Arc::new(kv))
    }

    /// eskv on a fjall directory at `path`, with eskv-fjall's defaults
    /// (`Durability::Immediate`: one fdatasync per group commit).
    pub fn fjall(rt: &Handle, path: &Path) -> Res<Eskv> {
        let p = path.to_path_buf();
        let kv = rt
            .block_on(eskv::fjall::FjallStore::open(p))
            .map_err(err("open eskv-fjall"))?;
        Self::on(rt, Arc::new(kv))
    }

    /// eskv on its in-memory backend.
    pub fn memory(rt: &Handle) -> Res<Eskv> {
        Self::on(rt, Arc::new(MemoryStore::new()))
    }

    /// eskv on the bench's etcd cluster (`EtcdStore`), its keys under the
    /// prefix `ns`, with the cluster's raised limits declared.
    #[cfg(feature = "etcd")]
    pub fn etcd(rt: &Handle, endpoints: &[String], ns: &str) -> Res<Eskv> {
        use crate::sys_etcd::{MAX_REQUEST_BYTES, MAX_TXN_OPS};
        use eskv_etcd::{EtcdOptions, EtcdStore};
        let opts = EtcdOptions::new(endpoints.iter().cloned())
            .server_limits(MAX_TXN_OPS, MAX_REQUEST_BYTES)
            .key_prefix(ns);
        let kv = rt
            .block_on(EtcdStore::connect(opts))
            .map_err(err("open eskv-etcd"))?;
        Self::on(rt, Arc::new(kv))
    }

    fn on(rt: &Handle, kv: Arc<dyn KvStore>) -> Res<Eskv> {
        let store = rt
            .block_on(EventStore::open(kv))
            .map_err(err("open eskv"))?;
        Ok(Eskv {
            rt: rt.clone(),
            store,
        })
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// W3: `writers` tasks append concurrently for `budget`, each event
    /// under a condition on its own tag. Returns (appends, elapsed).
    pub fn concurrent(
        &self,
        writers: usize,
        budget: Duration,
        data: &Arc<[u8]>,
    ) -> Res<(u64, Duration)> {
        let store = self.store.clone();
        let data = data.clone();
        self.rt.block_on(async move {
            let start = Instant::now();
            let deadline = start + budget;
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..writers {
                let store = store.clone();
                let data = data.clone();
                tasks.spawn(async move {
                    let mut n = 0u64;
                    while n == 0 || Instant::now() < deadline {
                        let ev = Ev::writer(w, &data);
                        let cond = AppendCondition::new(tag_query(&ev.tags[0]), None);
                        store
                            .append(vec![new_event(&ev)], Some(cond))
                            .await
                            .map_err(err("eskv W3 append"))?;
                        n += 1;
                    }
                    Ok::<u64, String>(n)
                });
            }
            let mut total = 0;
            while let Some(r) = tasks.join_next().await {
                total += r.map_err(err("eskv W3 task"))??;
            }
            Ok((total, start.elapsed()))
        })
    }
}

impl Store for Eskv {
    fn append_cond(&mut self, ev: &Ev, cond_tag: &str) -> Res<()> {
        let cond = AppendCondition::new(tag_query(cond_tag), None);
        self.rt
            .block_on(self.store.append(vec![new_event(ev)], Some(cond)))
            .map(|_| ())
            .map_err(err("eskv append"))
    }

    fn append_stream(&mut self, ev: &Ev, stream: &str, expected: u64, _last: u64) -> Res<u64> {
        let expected = match expected {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        self.rt
            .block_on(
                self.store
                    .append_to_stream(stream, expected, vec![new_event(ev)]),
            )
            .map(|r| r.last_position)
            .map_err(err("eskv stream append"))
    }

    fn append_batch(&mut self, evs: &[Ev]) -> Res<()> {
        let events = evs.iter().map(new_event).collect();
        self.rt
            .block_on(self.store.append(events, None))
            .map(|_| ())
            .map_err(err("eskv batch append"))
    }

    /// Bulk load through `EventStore::import`, which writes exactly the
    /// rows an append writes, in one transaction per call.
    fn load(&mut self, evs: &[Ev]) -> Res<()> {
        let head = self
            .rt
            .block_on(self.store.head())
            .map_err(err("eskv head"))?;
        let now = now_ms();
        let recorded: Vec<RecordedEvent> = evs
            .iter()
            .enumerate()
            .map(|(i, ev)| RecordedEvent {
                position: head + 1 + i as u64,
                id: Ulid(ev.id),
                event_type: EVENT_TYPE.to_string(),
                tags: ev.tags.to_vec(),
                data: ev.data.to_vec(),
                metadata: Default::default(),
                recorded_at_ms: now,
                stream: ev.stream.as_ref().map(|(s, v)| StreamRef {
                    stream_id: s.clone(),
                    version: *v,
                }),
                personal: None,
            })
            .collect();
        self.rt
            .block_on(self.store.import(&recorded))
            .map(|_| ())
            .map_err(err("eskv import"))
    }

    fn read_tag(&mut self, tag: &str) -> Res<usize> {
        self.rt
            .block_on(self.store.read(&tag_query(tag), ReadOptions::new()))
            .map(|r| r.events.len())
            .map_err(err("eskv read"))
    }

    fn read_all(&mut self) -> Res<usize> {
        self.rt
            .block_on(self.store.read_all(ReadOptions::new()))
            .map(|r| r.events.len())
            .map_err(err("eskv read_all"))
    }

    fn read_stream(&mut self, stream: &str) -> Res<usize> {
        self.rt
            .block_on(self.store.read_stream(stream, ReadStreamOptions::new()))
            .map(|r| r.len())
            .map_err(err("eskv read_stream"))
    }
}
