//! Consumer groups: partitions of the log shared among members with leases,
//! each partition with its own checkpoint and dead letters.

use crate::error::{Error, Result};
use crate::event::{Position, RecordedEvent};
use crate::kv::{KvTransaction, ScanOptions};
use crate::layout::{self, Consumer, ConsumerId};
use crate::retry::retry;
use crate::store::EventStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::handler::{handle_with_retries, EventHandler, HandlerOptions};
use super::{now_ms, validate_name, StartFrom, SubscriptionFilter, SubscriptionOptions};

impl EventStore {
    /// The state of every partition of consumer group `group` that has
    /// any: its lease holder and its checkpoint.
    pub async fn group_partitions(&self, group: &str) -> Result<BTreeMap<u32, PartitionState>> {
        validate_name(group)?;
        let (leases, checkpoints) = retry(self.options().max_retries, || async {
            let mut txn = self.kv().begin().await?;
            let leases = txn
                .scan(layout::lease_range(group), ScanOptions::default())
                .await?;
            let cps = txn
                .scan(
                    layout::group_checkpoint_range(group),
                    ScanOptions::default(),
                )
                .await?;
            Ok((leases, cps))
        })
        .await?;
        let mut out: BTreeMap<u32, PartitionState> = BTreeMap::new();
        for (k, v) in leases {
            if let layout::StateKey::Lease { partition, .. } = layout::parse_state_key(&k)? {
                let lease: Lease = postcard::from_bytes(&v).map_err(|e| {
                    Error::corrupt(
                        None,
                        format!("lease of partition {partition} does not decode: {e}"),
                    )
                })?;
                let s = out.entry(partition).or_default();
                s.owner = Some(lease.owner);
                s.lease_expires_ms = Some(lease.expires_ms);
            }
        }
        for (k, v) in checkpoints {
            if let layout::StateKey::Checkpoint(ConsumerId::Partition { partition, .. }) =
                layout::parse_state_key(&k)?
            {
                out.entry(partition).or_default().checkpoint =
                    Some(layout::parse_u64(&v, "checkpoint")?);
            }
        }
        Ok(out)
    }
}

/// What [`EventStore::group_partitions`] reports about one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionState {
    /// The member holding its lease (possibly expired), if any.
    pub owner: Option<String>,
    /// When that lease expires (ms since the Unix epoch).
    pub lease_expires_ms: Option<u64>,
    /// The position up to which the partition has been handled.
    pub checkpoint: Option<Position>,
}

/// How a consumer group assigns events to partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionKey {
    /// By stream id (default). Events without a stream go by event id.
    #[default]
    StreamId,
    /// By the first tag starting with this prefix (for example `course:`).
    /// Events without such a tag go by event id.
    TagPrefix(String),
}

impl PartitionKey {
    /// The partition of `event` among `partitions`.
    pub fn partition(&self, event: &RecordedEvent, partitions: u32) -> u32 {
        let key: &[u8] = match self {
            PartitionKey::StreamId => event.stream.as_ref().map(|s| s.stream_id.as_bytes()),
            PartitionKey::TagPrefix(p) => event
                .tags
                .iter()
                .find(|t| t.starts_with(p.as_str()))
                .map(|t| t.as_bytes()),
        }
        .unwrap_or(&[]);
        let hash = if key.is_empty() {
            crc32c::crc32c(&event.id.to_bytes())
        } else {
            crc32c::crc32c(key)
        };
        hash % partitions.max(1)
    }
}

/// Options for a [`ConsumerGroup`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupOptions {
    /// Number of partitions (fixed for the group's life). Default 16.
    pub partitions: u32,
    /// Lease time to live. A member that stops renewing loses its
    /// partitions after this long. Default 10 s.
    pub lease_ttl: Duration,
    /// How events map to partitions.
    pub partition_key: PartitionKey,
    /// Which events the group consumes.
    pub filter: SubscriptionFilter,
    /// Events fetched per read.
    pub batch_size: usize,
    /// Handler retry policy.
    pub handler: HandlerOptions,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            partitions: 16,
            lease_ttl: Duration::from_secs(10),
            partition_key: PartitionKey::StreamId,
            filter: SubscriptionFilter::All,
            batch_size: 256,
            handler: HandlerOptions::default(),
        }
    }
}

impl GroupOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Sets the lease TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the partition key.
    pub fn partition_key(mut self, k: PartitionKey) -> Self {
        self.partition_key = k;
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, f: SubscriptionFilter) -> Self {
        self.filter = f;
        self
    }

    /// Sets the handler policy.
    pub fn handler(mut self, h: HandlerOptions) -> Self {
        self.handler = h;
        self
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct Lease {
    owner: String,
    expires_ms: u64,
}

/// A member of a consumer group: a group of N members splits the
/// partitions between them; each partition is processed in order by one
/// member at a time, partitions in parallel. Membership and partition
/// ownership are leases stored in the store, so a member that dies loses
/// its partitions to the others after the lease TTL.
pub struct ConsumerGroup {
    store: EventStore,
    group: String,
    member: String,
    opts: GroupOptions,
}

impl std::fmt::Debug for ConsumerGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerGroup")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl ConsumerGroup {
    /// A member `member` of group `group`.
    pub fn new(store: EventStore, group: &str, member: &str, opts: GroupOptions) -> Result<Self> {
        validate_name(group)?;
        validate_name(member)?;
        let mut opts = opts;
        opts.partitions = opts.partitions.max(1);
        opts.batch_size = opts.batch_size.max(1);
        Ok(ConsumerGroup {
            store,
            group: group.to_owned(),
            member: member.to_owned(),
            opts,
        })
    }

    pub(super) fn consumer(&self, partition: u32) -> Consumer<'_> {
        Consumer::Partition {
            group: &self.group,
            partition,
        }
    }

    pub(super) fn lease_key(&self, p: u32) -> Vec<u8> {
        layout::lease_key(&self.group, p)
    }

    pub(super) fn member_key(&self, m: &str) -> Vec<u8> {
        layout::member_key(&self.group, m)
    }

    /// Writes plus validations one transaction may carry on this backend.
    pub(super) fn txn_budget(&self) -> usize {
        self.store
            .kv()
            .capabilities()
            .max_ops_per_txn
            .unwrap_or(usize::MAX)
            .max(2)
    }

    /// One membership round: renew our membership, count live members, keep
    /// a fair share of partitions, release extras, claim free or expired
    /// ones. Returns the partitions we own.
    ///
    /// Lease writes are split into transactions of at most the backend's
    /// [`max_ops_per_txn`](crate::Capabilities::max_ops_per_txn) operations
    /// (etcd allows 128): the first also renews the membership and plans the
    /// round; each later one re-reads its leases, so it renews or releases
    /// only leases still ours and claims only leases still free.
    pub(super) async fn rebalance(&self) -> Result<Vec<u32>> {
        let ttl = self.opts.lease_ttl.as_millis().min(u64::MAX as u128) as u64;
        let budget = self.txn_budget();
        let retries = self.store.options().max_retries;
        let (rest, mut owned) = retry(retries, || async {
            let now = now_ms();
            let mut txn = self.store.kv().begin().await?;
            txn.put(
                self.member_key(&self.member),
                postcard::to_allocvec(&now.saturating_add(ttl))
                    .map_err(|e| Error::encode("consumer-group lease expiry", e))?,
            );
            let members = txn
                .scan(layout::member_range(&self.group), ScanOptions::default())
                .await?;
            let me = self.member_key(&self.member);
            let live = 1 + members
                .iter()
                .filter(|(k, v)| *k != me && postcard::from_bytes::<u64>(v).unwrap_or(0) > now)
                .count();
            let fair = self.opts.partitions.div_ceil(live as u32) as usize;
            let leases = self.read_leases(&mut *txn).await?;
            let mut mine = Vec::new();
            let mut free = Vec::new();
            for p in 0..self.opts.partitions {
                match leases.get(&p) {
                    Some(l) if l.owner == self.member => mine.push(p),
                    Some(l) if l.expires_ms > now => {}
                    _ => free.push(p),
                }
            }
            // Releases first (others may claim them), then renewals, then
            // claims.
            let keep = mine.len().min(fair);
            let mut plan: Vec<(u32, LeaseAction)> = mine[keep..]
                .iter()
                .map(|&p| (p, LeaseAction::Release))
                .collect();
            plan.extend(mine[..keep].iter().map(|&p| (p, LeaseAction::Renew)));
            plan.extend(
                free.iter()
                    .take(fair - keep)
                    .map(|&p| (p, LeaseAction::Claim)),
            );
            // One operation went to the membership.
            let now_n = plan.len().min(budget - 1);
            let value = self.lease_value(now, ttl)?;
            let mut owned = Vec::new();
            for &(p, a) in &plan[..now_n] {
                match a {
                    LeaseAction::Release => txn.delete(self.lease_key(p)),
                    LeaseAction::Renew | LeaseAction::Claim => {
                        txn.put(self.lease_key(p), value.clone());
                        owned.push(p);
                    }
                }
            }
            txn.commit().await?;
            Ok((plan[now_n..].to_vec(), owned))
        })
        .await?;
        for chunk in rest.chunks(budget) {
            let got = retry(retries, || async {
                let now = now_ms();
                let mut txn = self.store.kv().begin().await?;
                let keys: Vec<Vec<u8>> = chunk.iter().map(|&(p, _)| self.lease_key(p)).collect();
                let current = txn.get_many(&keys).await?;
                let value = self.lease_value(now, ttl)?;
                let mut owned = Vec::new();
                for (&(p, a), v) in chunk.iter().zip(current) {
                    let lease: Option<Lease> =
                        v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
                    let ours = lease.as_ref().is_some_and(|l| l.owner == self.member);
                    let free = lease.as_ref().is_none_or(|l| l.expires_ms <= now);
                    match a {
                        LeaseAction::Release if ours => txn.delete(self.lease_key(p)),
                        LeaseAction::Renew | LeaseAction::Claim if ours || free => {
                            txn.put(self.lease_key(p), value.clone());
                            owned.push(p);
                        }
                        _ => {}
                    }
                }
                txn.commit().await?;
                Ok(owned)
            })
            .await?;
            owned.extend(got);
        }
        owned.sort_unstable();
        Ok(owned)
    }

    pub(super) fn lease_value(&self, now: u64, ttl: u64) -> Result<Vec<u8>> {
        let lease = Lease {
            owner: self.member.clone(),
            expires_ms: now.saturating_add(ttl),
        };
        postcard::to_allocvec(&lease).map_err(|e| Error::encode("consumer-group lease", e))
    }

    /// Every stored lease of the group, by partition (undecodable leases
    /// count as free).
    pub(super) async fn read_leases(
        &self,
        txn: &mut dyn KvTransaction,
    ) -> Result<BTreeMap<u32, Lease>> {
        let rows = txn
            .scan(layout::lease_range(&self.group), ScanOptions::default())
            .await?;
        let mut out = BTreeMap::new();
        for (k, v) in rows {
            if let layout::StateKey::Lease { partition, .. } = layout::parse_state_key(&k)? {
                if let Ok(l) = postcard::from_bytes::<Lease>(&v) {
                    out.insert(partition, l);
                }
            }
        }
        Ok(out)
    }

    /// Stores a partition checkpoint if we still hold its lease (fencing:
    /// a member that lost its lease cannot move the checkpoint).
    pub(super) async fn ack_partition(&self, p: u32, position: Position) -> Result<bool> {
        let key = layout::checkpoint_key(self.consumer(p));
        let lease_key = self.lease_key(p);
        retry(self.store.options().max_retries, || async {
            let mut txn = self.store.kv().begin().await?;
            let vals = txn.get_many(&[lease_key.clone(), key.clone()]).await?;
            let lease: Option<Lease> = vals[0]
                .as_deref()
                .and_then(|b| postcard::from_bytes(b).ok());
            if lease.is_none_or(|l| l.owner != self.member) {
                return Ok(false);
            }
            let cur = vals[1]
                .as_deref()
                .map(|v| layout::parse_u64(v, "checkpoint"))
                .transpose()?;
            if cur.is_some_and(|c| c >= position) {
                return Ok(true);
            }
            txn.validate(lease_key.clone());
            txn.put(key.clone(), layout::u64_value(position));
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Runs this member until `shutdown` completes: renews leases every
    /// TTL/3 and processes owned partitions in parallel, one task each.
    /// On shutdown it releases its leases so others take over at once.
    pub async fn run<H, S>(self, handler: H, shutdown: S) -> Result<()>
    where
        H: EventHandler + 'static,
        S: Future<Output = ()>,
    {
        let this = Arc::new(self);
        let handler = Arc::new(handler);
        tokio::pin!(shutdown);
        // Partition tasks die with this future, also when it is dropped
        // rather than shut down.
        let mut tasks = AbortOnDrop(HashMap::new());
        let tasks = &mut tasks.0;
        // At least 10 ms between renewals, whatever the TTL.
        let tick = (this.opts.lease_ttl / 3).max(Duration::from_millis(10));
        let result = loop {
            let owned = match this.rebalance().await {
                Ok(o) => o,
                Err(e) => break Err(e),
            };
            // A partition task that stopped with an error (a handler that
            // keeps failing under OnFailure::Stop) stops the member.
            let failed: Vec<u32> = tasks
                .iter()
                .filter(|(_, t)| t.is_finished())
                .map(|(p, _)| *p)
                .collect();
            let mut stop = None;
            for p in failed {
                if let Some(t) = tasks.remove(&p) {
                    match t.await {
                        Ok(Err(e)) => stop = Some(e),
                        Err(e) if e.is_panic() => {
                            stop = Some(Error::handler(None, format!("partition {p} panicked")))
                        }
                        _ => {}
                    }
                }
            }
            if let Some(e) = stop {
                break Err(e);
            }
            tasks.retain(|p, t| {
                let keep = owned.contains(p);
                if !keep {
                    t.abort();
                }
                keep
            });
            for p in owned {
                tasks.entry(p).or_insert_with(|| {
                    let this = this.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move { this.run_partition(p, handler).await })
                });
            }
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = tokio::time::sleep(tick) => {}
            }
        };
        for (_, t) in tasks.drain() {
            t.abort();
        }
        let _ = this.release().await;
        result
    }

    /// Gives up every lease we hold and our membership, in transactions
    /// sized to the backend (see [`rebalance`](Self::rebalance)).
    pub(super) async fn release(&self) -> Result<()> {
        let budget = self.txn_budget();
        let retries = self.store.options().max_retries;
        let ours: Vec<u32> = retry(retries, || async {
            let mut txn = self.store.kv().begin().await?;
            Ok(self
                .read_leases(&mut *txn)
                .await?
                .into_iter()
                .filter(|(_, l)| l.owner == self.member)
                .map(|(p, _)| p)
                .collect())
        })
        .await?;
        for chunk in ours.chunks(budget) {
            retry(retries, || async {
                let mut txn = self.store.kv().begin().await?;
                let keys: Vec<Vec<u8>> = chunk.iter().map(|&p| self.lease_key(p)).collect();
                let current = txn.get_many(&keys).await?;
                for (k, v) in keys.into_iter().zip(current) {
                    let lease: Option<Lease> =
                        v.as_deref().and_then(|b| postcard::from_bytes(b).ok());
                    if lease.is_some_and(|l| l.owner == self.member) {
                        txn.delete(k);
                    }
                }
                Ok(txn.commit().await?)
            })
            .await?;
        }
        retry(retries, || async {
            let mut txn = self.store.kv().begin().await?;
            txn.delete(self.member_key(&self.member));
            Ok(txn.commit().await?)
        })
        .await
    }

    pub(super) async fn run_partition<H: EventHandler>(
        self: Arc<Self>,
        p: u32,
        handler: Arc<H>,
    ) -> Result<()> {
        let consumer = self.consumer(p);
        let start = self.store.consumer_checkpoint(consumer).await?.unwrap_or(0);
        let mut sub = self
            .store
            .subscribe(
                SubscriptionOptions::new()
                    .start(StartFrom::After(start))
                    .filter(self.opts.filter.clone())
                    .batch_size(self.opts.batch_size),
            )
            .await?;
        loop {
            let batch = sub.next_batch(self.opts.batch_size).await?;
            for e in &batch {
                if self.opts.partition_key.partition(e, self.opts.partitions) == p {
                    handle_with_retries(
                        &self.store,
                        Some(consumer),
                        handler.as_ref(),
                        &self.opts.handler,
                        e,
                    )
                    .await?;
                }
            }
            if let Some(last) = batch.last() {
                if !self.ack_partition(p, last.position).await? {
                    tracing::info!(partition = p, "lease lost; stopping partition");
                    return Ok(());
                }
            }
        }
    }
}

/// What a rebalance does with one partition's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseAction {
    Release,
    Renew,
    Claim,
}

pub(super) struct AbortOnDrop(HashMap<u32, tokio::task::JoinHandle<Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}
