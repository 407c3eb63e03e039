//! UmaDB's `umadb.v1.DCB` service over an eskv store.
//!
//! | RPC | on eskv |
//! |---|---|
//! | `Read` | a DCB read at the head captured when it starts, in batches; `subscribe` continues it live, never before `start` |
//! | `Subscribe` | catch-up then live, after a position |
//! | `Append` | a DCB append with the condition; UUIDs are eskv ids, so a retry is idempotent |
//! | `Head` | the head (none when the store is empty) |
//! | `GetTrackingInfo` | the position recorded by the source's last tracked append |

use crate::context::{finish, send_live, Denied, Shared, SubscriptionSlot, Unsent, Waker};
use crate::dcb_map::{self, sequenced, tracking_of, tracking_tag};
use crate::error::{
    dcb_exhausted, dcb_integrity, dcb_invalid, dcb_status, dcb_unauthenticated, dcb_unavailable,
};
use crate::proto::umadb::v1 as pb;
use crate::proto::umadb::v1::dcb_server::Dcb;
use eskv_core::{AppendCondition, Error, EventStore, Query, QueryItem, ReadOptions};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// For logs.
const PROTOCOL: &str = "umadb";

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// The DCB service.
pub(crate) struct DcbService {
    pub(crate) shared: Arc<Shared>,
}

impl DcbService {
    async fn store<T>(&self, req: &Request<T>) -> Result<EventStore, Status> {
        match self.shared.store_for(req.metadata()).await {
            Ok(s) => Ok(s),
            Err(Denied::Unauthenticated) => {
                crate::error::log_unauthenticated(req.remote_addr(), PROTOCOL);
                Err(dcb_unauthenticated())
            }
            Err(Denied::Store(e)) => Err(dcb_status(&e)),
        }
    }

    fn slot<T>(&self, req: &Request<T>) -> Result<SubscriptionSlot, Status> {
        self.shared.subscription_slot(req.remote_addr()).ok_or_else(|| {
            dcb_exhausted(format!(
                "this connection already has {} open subscriptions (the server's limit); close one or open another connection",
                self.shared.limits.max_subscriptions_per_connection
            ))
        })
    }

    fn batch(&self, asked: Option<u32>) -> usize {
        let max = self.shared.limits.max_batch.max(1);
        asked.unwrap_or(max).clamp(1, max) as usize
    }

    /// Room for events in one message, below the message limit.
    fn message_room(&self) -> usize {
        self.shared
            .limits
            .max_message_bytes
            .saturating_sub(16 << 10)
            .max(1)
    }
}

/// The latest tracking event of `source`: (its position, the tracked
/// position).
async fn tracking(store: &EventStore, source: &str) -> Result<Option<(u64, u64)>, Error> {
    let q = Query::item(QueryItem::new().tags([tracking_tag(source)]));
    let r = store
        .read(&q, ReadOptions::new().backwards().limit(1))
        .await?;
    Ok(r.events
        .first()
        .and_then(|e| tracking_of(e).map(|t| (e.position, t.position))))
}

#[tonic::async_trait]
impl Dcb for DcbService {
    type ReadStream = Stream<pb::ReadResponse>;
    type SubscribeStream = Stream<pb::SubscribeResponse>;

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.store(&req).await?;
        let live = req.get_ref().subscribe.unwrap_or(false);
        let slot = if live { Some(self.slot(&req)?) } else { None };
        let r = req.into_inner();
        let backwards = r.backwards.unwrap_or(false);
        if live && backwards {
            return Err(dcb_invalid(
                "a subscribing read goes forwards: leave `backwards` unset with `subscribe`",
            ));
        }
        let query = dcb_map::query(r.query);
        // Bad queries fail the call itself, before any message.
        store
            .read(&query, ReadOptions::new().limit(0))
            .await
            .map_err(|e| dcb_status(&e))?;
        let batch = self.batch(r.batch_size);
        let room = self.message_room();
        let (tx, rx) = mpsc::channel(self.shared.limits.stream_buffer);
        let shutdown = self.shared.shutdown.clone();
        let stop = shutdown.clone();
        let limit = r.limit.map(|l| l as usize);
        let start = r.start;
        tokio::spawn(async move {
            let _slot = slot;
            let res = async {
                let (through, remaining) =
                    read_history(&store, &query, start, backwards, limit, batch, room, &tx).await?;
                if live && remaining > 0 {
                    // The live part continues after both the history and
                    // the client's start: nothing before `start` is sent.
                    let after = start.map_or(through, |s| through.max(s.saturating_sub(1)));
                    tail(
                        &store,
                        &query,
                        after,
                        Some(remaining),
                        batch,
                        room,
                        shutdown,
                        &tx,
                        |events| {
                            let head = events.last().map(|e| e.position);
                            pb::ReadResponse { events, head }
                        },
                    )
                    .await?;
                }
                Ok::<(), Status>(())
            }
            .await;
            if let Err(s) = res {
                finish(&tx, s, &stop).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let store = self.store(&req).await?;
        let slot = self.slot(&req)?;
        let r = req.into_inner();
        let query = dcb_map::query(r.query);
        store
            .read(&query, ReadOptions::new().limit(0))
            .await
            .map_err(|e| dcb_status(&e))?;
        let batch = self.batch(r.batch_size);
        let room = self.message_room();
        let (tx, rx) = mpsc::channel(self.shared.limits.stream_buffer);
        let shutdown = self.shared.shutdown.clone();
        let stop = shutdown.clone();
        let after = r.after.unwrap_or(0);
        tokio::spawn(async move {
            let _slot = slot;
            let res = tail(
                &store,
                &query,
                after,
                None,
                batch,
                room,
                shutdown,
                &tx,
                |events| pb::SubscribeResponse { events },
            )
            .await;
            if let Err(s) = res {
                finish(&tx, s, &stop).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let store = self.store(&req).await?;
        if self.shared.shutting_down() {
            return Err(dcb_unavailable(
                "the server is shutting down; nothing was written",
            ));
        }
        let r = req.into_inner();
        let mut events = r
            .events
            .into_iter()
            .map(dcb_map::new_event)
            .collect::<Result<Vec<_>, _>>()?;
        let mut condition = r.condition.map(dcb_map::condition);
        let mut tracking_guard = false;
        if let Some(t) = &r.tracking_info {
            let Some(last) = events.last_mut() else {
                return Err(dcb_invalid("an append needs at least one event"));
            };
            dcb_map::attach_tracking(last, t);
            let current = tracking(&store, &t.source)
                .await
                .map_err(|e| dcb_status(&e))?;
            let mine = Query::item(QueryItem::new().tags([tracking_tag(&t.source)]));
            match current {
                // Not newer: only an idempotent replay of the append that
                // recorded it may pass, and a condition that any tracking
                // event fails lets exactly that through.
                Some((_, tracked)) if t.position <= tracked => {
                    condition = Some(AppendCondition::none_match(mine));
                    tracking_guard = true;
                }
                // Newer: the append also fails if another append of this
                // source lands first, when that fits the client's own
                // condition without making it stricter.
                Some((at, _)) => match &mut condition {
                    None => condition = Some(AppendCondition::new(mine, Some(at))),
                    Some(c) if c.after.is_some_and(|a| a >= at) => {
                        c.fail_if_events_match.items.extend(mine.items)
                    }
                    Some(_) => {}
                },
                None => match &mut condition {
                    None => condition = Some(AppendCondition::none_match(mine)),
                    Some(c) => c.fail_if_events_match.items.extend(mine.items),
                },
            }
            if tracking_guard {
                let tracked = current.map_or(0, |c| c.1);
                return match store.append(events, condition).await {
                    Ok(done) => Ok(Response::new(pb::AppendResponse {
                        position: done.last_position,
                    })),
                    Err(Error::ConditionFailed { .. }) => Err(dcb_integrity(format!(
                        "non-increasing tracking position for source '{}': {} <= {tracked}",
                        t.source, t.position
                    ))),
                    Err(e) => Err(dcb_status(&e)),
                };
            }
        }
        match store.append(events, condition).await {
            Ok(done) => Ok(Response::new(pb::AppendResponse {
                position: done.last_position,
            })),
            Err(e) => Err(dcb_status(&e)),
        }
    }

    async fn head(
        &self,
        req: Request<pb::HeadRequest>,
    ) -> Result<Response<pb::HeadResponse>, Status> {
        let store = self.store(&req).await?;
        let head = store.head().await.map_err(|e| dcb_status(&e))?;
        Ok(Response::new(pb::HeadResponse {
            position: (head > 0).then_some(head),
        }))
    }

    async fn get_tracking_info(
        &self,
        req: Request<pb::TrackingRequest>,
    ) -> Result<Response<pb::TrackingResponse>, Status> {
        let store = self.store(&req).await?;
        let source = req.into_inner().source;
        let t = tracking(&store, &source)
            .await
            .map_err(|e| dcb_status(&e))?;
        Ok(Response::new(pb::TrackingResponse {
            position: t.map(|t| t.1),
        }))
    }
}

/// Sends the history part of a read, in batches, all at the head captured
/// first. Returns the position through which it delivered every match
/// (the captured head) and how many more events the limit allows.
#[allow(clippy::too_many_arguments)]
async fn read_history(
    store: &EventStore,
    query: &Query,
    start: Option<u64>,
    backwards: bool,
    limit: Option<usize>,
    batch: usize,
    room: usize,
    tx: &mpsc::Sender<Result<pb::ReadResponse, Status>>,
) -> Result<(u64, usize), Status> {
    let head = store.head().await.map_err(|e| dcb_status(&e))?;
    let mut next = start;
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut sent_any = false;
    while remaining > 0 {
        let n = remaining.min(batch);
        let mut opts = ReadOptions::new().limit(n).until(head);
        if backwards {
            opts = opts.backwards();
        }
        if let Some(s) = next {
            opts = opts.from(s);
        }
        let r = store.read(query, opts).await.map_err(|e| dcb_status(&e))?;
        let got = r.events.len();
        let Some(last) = r.events.last().map(|e| e.position) else {
            break;
        };
        remaining -= got;
        let msgs = dcb_map::chunks(r.events.into_iter().map(sequenced).collect(), room);
        let k = msgs.len();
        for (i, events) in msgs.into_iter().enumerate() {
            // UmaDB's convention: the last message of a batch carries the
            // head a condition should use: the captured head, or with a
            // limit, the last position returned.
            let head = (i + 1 == k)
                .then(|| {
                    if limit.is_some() {
                        Some(last)
                    } else {
                        (head > 0).then_some(head)
                    }
                })
                .flatten();
            if tx
                .send(Ok(pb::ReadResponse { events, head }))
                .await
                .is_err()
            {
                return Ok((head.unwrap_or(0), 0));
            }
        }
        sent_any = true;
        if got < n || (backwards && last <= 1) {
            break;
        }
        next = Some(if backwards { last - 1 } else { last + 1 });
    }
    if !sent_any {
        let head = if limit.is_some() {
            None
        } else {
            (head > 0).then_some(head)
        };
        let _ = tx
            .send(Ok(pb::ReadResponse {
                events: Vec::new(),
                head,
            }))
            .await;
    }
    Ok((head, remaining))
}

fn shutting_down() -> Status {
    dcb_unavailable("the server is shutting down; subscribe again after it restarts")
}

/// Delivers the events matching `query` after `after`, then new ones as
/// they are appended, until the client goes away or the server shuts
/// down (also while the client is not reading: then with `UNAVAILABLE`). The bounded channel is the back-pressure: a slow client stops
/// this loop from reading further.
#[allow(clippy::too_many_arguments)]
async fn tail<T: Send + 'static>(
    store: &EventStore,
    query: &Query,
    mut after: u64,
    mut limit: Option<usize>,
    batch: usize,
    room: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tx: &mpsc::Sender<Result<T, Status>>,
    message: impl Fn(Vec<pb::SequencedEvent>) -> T,
) -> Result<(), Status> {
    let stop = shutdown.clone();
    let mut waker = Waker::new(store, shutdown);
    loop {
        waker.seen();
        let n = limit.map_or(batch, |l| l.min(batch));
        if n == 0 {
            return Ok(());
        }
        let r = store
            .read(query, ReadOptions::after(after).limit(n))
            .await
            .map_err(|e| dcb_status(&e))?;
        if let Some(last) = r.events.last().map(|e| e.position) {
            after = last;
            limit = limit.map(|l| l - r.events.len());
            for events in dcb_map::chunks(r.events.into_iter().map(sequenced).collect(), room) {
                match send_live(tx, Ok(message(events)), &stop).await {
                    Ok(()) => {}
                    Err(Unsent::Gone) => return Ok(()),
                    Err(Unsent::ShuttingDown) => return Err(shutting_down()),
                }
            }
            continue;
        }
        if !waker.wait(tx.closed()).await {
            if tx.is_closed() {
                return Ok(());
            }
            return Err(shutting_down());
        }
    }
}
