//! KurrentDB's streams service (plus server features and gossip) over an
//! eskv store.
//!
//! | RPC | on eskv |
//! |---|---|
//! | `Streams.Append` | a stream append with the expected revision (revision `r` is version `r + 1`) |
//! | `Streams.Read` | stream and `$all` reads both ways; catch-up subscriptions with filters and checkpoints |
//! | `Streams.Delete`, `Streams.Tombstone` | soft delete and tombstone with the expected revision (see `kurrent_lifecycle`); a tombstoned stream's reads, appends and subscriptions answer KurrentDB's stream-deleted status |
//! | `Streams.BatchAppend` | appends by correlation id, each like `Append` (see `kurrent_batch`) |
//! | `ServerFeatures.GetSupportedMethods` | what is served here |
//! | `Gossip.Read` | this server, as the one live leader |

use crate::context::{finish, send_live, Denied, Shared, Unsent, Waker};
use crate::error::{kurrent_status, kurrent_stream_deleted, kurrent_unauthenticated};
use crate::kurrent_cluster::{FeaturesService, GossipService};
use crate::kurrent_map::{self as map, Filter};
use crate::proto::event_store::client::gossip::gossip_server::GossipServer;
use crate::proto::event_store::client::server_features::server_features_server::ServerFeaturesServer;
use crate::proto::event_store::client::streams::streams_server::{Streams, StreamsServer};
use crate::proto::event_store::client::streams::{
    append_req, append_resp, read_req, read_resp, AppendReq, AppendResp, BatchAppendReq,
    BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq, TombstoneResp,
};
use crate::proto::event_store::client::{self as shared, Empty};
use eskv_core::{Error, EventStore, ExpectedVersion, ReadOptions, ReadStreamOptions, StreamInfo};
use futures::StreamExt as _;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// For logs.
const PROTOCOL: &str = "kurrentdb";

type Tx = mpsc::Sender<Result<ReadResp, Status>>;

pub(crate) struct StreamsService {
    shared: Arc<Shared>,
}

/// Adds the KurrentDB services to `router`.
pub(crate) fn add_services(
    router: tonic::transport::server::Router,
    shared: &Arc<Shared>,
) -> tonic::transport::server::Router {
    let max = shared.limits.max_message_bytes;
    router
        .add_service(
            StreamsServer::new(StreamsService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(ServerFeaturesServer::new(FeaturesService))
        .add_service(GossipServer::new(GossipService))
}

pub(crate) async fn set_serving(h: &tonic_health::server::HealthReporter) {
    h.set_serving::<StreamsServer<StreamsService>>().await;
}

pub(crate) async fn set_not_serving(h: &tonic_health::server::HealthReporter) {
    h.set_not_serving::<StreamsServer<StreamsService>>().await;
}

impl StreamsService {
    async fn store<T>(&self, req: &Request<T>) -> Result<EventStore, Status> {
        match self.shared.store_for(req.metadata()).await {
            Ok(s) => Ok(s),
            Err(Denied::Unauthenticated) => {
                crate::error::log_unauthenticated(req.remote_addr(), PROTOCOL);
                Err(kurrent_unauthenticated())
            }
            Err(Denied::Store(e)) => Err(kurrent_status(&e)),
        }
    }

    fn refuse_when_shutting_down(&self) -> Result<(), Status> {
        if self.shared.shutting_down() {
            return Err(Status::unavailable(
                "the server is shutting down; nothing was written",
            ));
        }
        Ok(())
    }
}

fn wrong_expected_version(expected: ExpectedVersion, actual: Option<u64>) -> AppendResp {
    use append_resp::wrong_expected_version as w;
    let e = Empty {};
    let (cur, cur_old) = match actual {
        Some(v) => (
            w::CurrentRevisionOption::CurrentRevision(v - 1),
            w::CurrentRevisionOption2060::CurrentRevision2060(v - 1),
        ),
        None => (
            w::CurrentRevisionOption::CurrentNoStream(e),
            w::CurrentRevisionOption2060::NoStream2060(e),
        ),
    };
    let (exp, exp_old) = match expected {
        ExpectedVersion::Exact(v) => (
            w::ExpectedRevisionOption::ExpectedRevision(v - 1),
            Some(w::ExpectedRevisionOption2060::ExpectedRevision2060(v - 1)),
        ),
        ExpectedVersion::Any => (
            w::ExpectedRevisionOption::ExpectedAny(e),
            Some(w::ExpectedRevisionOption2060::Any2060(e)),
        ),
        ExpectedVersion::StreamExists => (
            w::ExpectedRevisionOption::ExpectedStreamExists(e),
            Some(w::ExpectedRevisionOption2060::StreamExists2060(e)),
        ),
        ExpectedVersion::NoStream => (w::ExpectedRevisionOption::ExpectedNoStream(e), None),
    };
    AppendResp {
        result: Some(append_resp::Result::WrongExpectedVersion(
            append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(cur_old),
                expected_revision_option_20_6_0: exp_old,
                current_revision_option: Some(cur),
                expected_revision_option: Some(exp),
            },
        )),
    }
}

fn success(version: Option<u64>, position: Option<u64>) -> AppendResp {
    use append_resp::success as s;
    AppendResp {
        result: Some(append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(match version {
                Some(v) if v > 0 => s::CurrentRevisionOption::CurrentRevision(v - 1),
                _ => s::CurrentRevisionOption::NoStream(Empty {}),
            }),
            position_option: Some(match position {
                Some(p) => s::PositionOption::Position(append_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => s::PositionOption::NoPosition(Empty {}),
            }),
        })),
    }
}

/// Whether a stream in state `info` satisfies `expected`, as an append
/// would check it: a soft-deleted stream is absent (`NoStream`) yet keeps
/// its version (`Exact`).
pub(crate) fn satisfies(expected: ExpectedVersion, info: &StreamInfo) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => !info.exists,
        ExpectedVersion::StreamExists => info.exists,
        ExpectedVersion::Exact(v) => v == info.version,
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = Pin<Box<dyn futures::Stream<Item = Result<ReadResp, Status>> + Send>>;
    type BatchAppendStream =
        Pin<Box<dyn futures::Stream<Item = Result<BatchAppendResp, Status>> + Send>>;

    async fn batch_append(
        &self,
        req: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let store = self.store(&req).await?;
        let (tx, rx) = mpsc::channel(self.shared.limits.stream_buffer);
        tokio::spawn(crate::kurrent_batch::run(
            store,
            req.into_inner(),
            tx,
            self.shared.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append(
        &self,
        req: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let store = self.store(&req).await?;
        let mut input = req.into_inner();
        let Some(append_req::Content::Options(opts)) =
            input.next().await.transpose()?.and_then(|m| m.content)
        else {
            return Err(Status::invalid_argument(
                "an append starts with its options (stream and expected revision)",
            ));
        };
        let stream = map::stream_name(opts.stream_identifier)?;
        let expected = map::expected_version(opts.expected_stream_revision);
        let limits = &store.options().limits;
        let (max, max_bytes) = (limits.max_events_per_append, limits.max_append_bytes);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(m) = input.next().await.transpose()? {
            match m.content {
                Some(append_req::Content::ProposedMessage(p)) => {
                    bytes += p.data.len() + p.custom_metadata.len();
                    if bytes > max_bytes {
                        return Err(kurrent_status(&Error::LimitExceeded {
                            what: "bytes in one append".into(),
                            limit: max_bytes as u64,
                            actual: bytes as u64,
                        }));
                    }
                    events.push(map::new_event(p)?)
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only proposed events may follow an append's options",
                    ))
                }
            }
            if events.len() > max {
                return Err(kurrent_status(&Error::LimitExceeded {
                    what: "events in one append".into(),
                    limit: max as u64,
                    actual: events.len() as u64,
                }));
            }
        }
        self.refuse_when_shutting_down()?;
        if events.is_empty() {
            // KurrentDB accepts an empty append as a check of the expected
            // revision; eskv appends need events, so check it here.
            let info = store
                .stream_info(&stream)
                .await
                .map_err(|e| kurrent_status(&e))?;
            if info.tombstoned {
                return Err(kurrent_stream_deleted(&stream));
            }
            return Ok(Response::new(if satisfies(expected, &info) {
                success(Some(info.version), info.last_position)
            } else {
                wrong_expected_version(expected, (info.version > 0).then_some(info.version))
            }));
        }
        match store.append_to_stream(&stream, expected, events).await {
            Ok(r) => Ok(Response::new(success(
                r.stream_version,
                Some(r.last_position),
            ))),
            Err(Error::WrongExpectedVersion { actual, .. }) => {
                Ok(Response::new(wrong_expected_version(expected, actual)))
            }
            Err(e) => Err(kurrent_status(&e)),
        }
    }

    async fn read(&self, req: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        use read_req::options::{CountOption, StreamOption};
        let store = self.store(&req).await?;
        let peer = req.remote_addr();
        let opts = req
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a read needs options"))?;
        let backwards = opts.read_direction == read_req::options::ReadDirection::Backwards as i32;
        let structured = matches!(
            opts.uuid_option.and_then(|u| u.content),
            Some(read_req::options::uuid_option::Content::Structured(_))
        );
        let filter = match opts.filter_option {
            Some(read_req::options::FilterOption::Filter(f)) => Filter::new(f)?,
            _ => None,
        };
        let live = matches!(opts.count_option, Some(CountOption::Subscription(_)));
        let count = match opts.count_option {
            Some(CountOption::Count(n)) => n,
            _ => u64::MAX,
        };
        let slot = if live {
            Some(self.shared.subscription_slot(peer).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "this connection already has {} open subscriptions (the server's limit)",
                    self.shared.limits.max_subscriptions_per_connection
                ))
            })?)
        } else {
            None
        };
        let read = Read {
            store,
            structured,
            batch: self.shared.limits.max_batch.max(1) as usize,
            shutdown: self.shared.shutdown.clone(),
        };
        let (tx, rx) = mpsc::channel(self.shared.limits.stream_buffer);
        match opts.stream_option {
            Some(StreamOption::Stream(s)) => {
                let name = map::stream_name(s.stream_identifier)?;
                tokio::spawn(async move {
                    let _slot = slot;
                    let r = if live {
                        read.subscribe_stream(&name, s.revision_option, &tx).await
                    } else {
                        read.stream(&name, s.revision_option, backwards, count, &tx)
                            .await
                    };
                    if let Err(e) = r {
                        finish(&tx, e, &read.shutdown).await;
                    }
                });
            }
            Some(StreamOption::All(a)) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let r = if live {
                        read.subscribe_all(a.all_option, filter, &tx).await
                    } else {
                        read.all(a.all_option, backwards, count, filter, &tx).await
                    };
                    if let Err(e) = r {
                        finish(&tx, e, &read.shutdown).await;
                    }
                });
            }
            None => return Err(Status::invalid_argument("a read names a stream or $all")),
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(&self, req: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let store = self.store(&req).await?;
        self.refuse_when_shutting_down()?;
        let r = crate::kurrent_lifecycle::delete(&store, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn tombstone(
        &self,
        req: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let store = self.store(&req).await?;
        self.refuse_when_shutting_down()?;
        let r = crate::kurrent_lifecycle::tombstone(&store, req.into_inner()).await?;
        Ok(Response::new(r))
    }
}

/// One read or subscription in progress.
struct Read {
    store: EventStore,
    structured: bool,
    batch: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

fn err(e: Error) -> Status {
    kurrent_status(&e)
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

fn resp(c: read_resp::Content) -> Result<ReadResp, Status> {
    Ok(ReadResp { content: Some(c) })
}

fn ended(tx: &Tx) -> Status {
    if tx.is_closed() {
        Status::cancelled("the client went away")
    } else {
        Status::unavailable("the server is shutting down; subscribe again from the last position")
    }
}

impl Read {
    /// Sends a subscription's message: false when the client went away,
    /// `UNAVAILABLE` once shutdown has begun (also while the client's queue
    /// is full).
    async fn put(&self, tx: &Tx, m: Result<ReadResp, Status>) -> Result<bool, Status> {
        match send_live(tx, m, &self.shutdown).await {
            Ok(()) => Ok(true),
            Err(Unsent::Gone) => Ok(false),
            Err(Unsent::ShuttingDown) => Err(ended(tx)),
        }
    }

    async fn send(&self, tx: &Tx, e: eskv_core::RecordedEvent) -> bool {
        tx.send(Ok(map::read_resp(e, self.structured)))
            .await
            .is_ok()
    }

    async fn stream(
        &self,
        name: &str,
        rev: Option<read_req::options::stream_options::RevisionOption>,
        backwards: bool,
        count: u64,
        tx: &Tx,
    ) -> Result<(), Status> {
        use read_req::options::stream_options::RevisionOption as R;
        let info = self.store.stream_info(name).await.map_err(err)?;
        if info.tombstoned {
            return Err(kurrent_stream_deleted(name));
        }
        if !info.exists {
            let _ = tx
                .send(resp(read_resp::Content::StreamNotFound(
                    read_resp::StreamNotFound {
                        stream_identifier: Some(shared::StreamIdentifier {
                            stream_name: name.as_bytes().to_vec(),
                        }),
                    },
                )))
                .await;
            return Ok(());
        }
        let mut from = match (rev, backwards) {
            (Some(R::Revision(r)), _) => r.saturating_add(1),
            (Some(R::End(_)), false) => return Ok(()),
            (Some(R::End(_)), true) | (None, true) => info.version,
            (Some(R::Start(_)), _) | (None, false) => 1,
        };
        let mut left = count;
        while left > 0 && from >= 1 {
            let n = left.min(self.batch as u64) as usize;
            let mut o = ReadStreamOptions::new().from_version(from).limit(n);
            if backwards {
                o = o.backwards();
            }
            let page = self.store.read_stream(name, o).await.map_err(err)?;
            let got = page.len();
            for e in page {
                let v = e.stream.as_ref().map_or(from, |s| s.version);
                from = if backwards { v - 1 } else { v + 1 };
                if !self.send(tx, e).await {
                    return Ok(());
                }
            }
            left -= got as u64;
            if got < n {
                break;
            }
        }
        Ok(())
    }

    async fn all(
        &self,
        pos: Option<read_req::options::all_options::AllOption>,
        backwards: bool,
        count: u64,
        filter: Option<Filter>,
        tx: &Tx,
    ) -> Result<(), Status> {
        use read_req::options::all_options::AllOption as A;
        let head = self.store.head().await.map_err(err)?;
        // Forwards from a position includes the event there; backwards
        // from a position starts before it.
        let mut next = match (pos, backwards) {
            (Some(A::Position(p)), false) => p.commit_position.max(1),
            (Some(A::Position(p)), true) => p.commit_position.saturating_sub(1).min(head),
            (Some(A::End(_)), false) => return Ok(()),
            (Some(A::Start(_)), true) => return Ok(()),
            (Some(A::End(_)), true) | (None, true) => head,
            (Some(A::Start(_)), false) | (None, false) => 1,
        };
        let mut left = count;
        while left > 0 && next >= 1 && next <= head {
            let mut o = ReadOptions::new().from(next).until(head).limit(self.batch);
            if backwards {
                o = o.backwards();
            }
            let page = self.store.read_all(o).await.map_err(err)?.events;
            let got = page.len();
            for e in page {
                next = if backwards {
                    e.position - 1
                } else {
                    e.position + 1
                };
                if filter.as_ref().is_some_and(|f| !f.matches(&e)) {
                    continue;
                }
                if !self.send(tx, e).await {
                    return Ok(());
                }
                left -= 1;
                if left == 0 {
                    return Ok(());
                }
            }
            if got < self.batch {
                break;
            }
        }
        Ok(())
    }

    async fn subscribe_stream(
        &self,
        name: &str,
        rev: Option<read_req::options::stream_options::RevisionOption>,
        tx: &Tx,
    ) -> Result<(), Status> {
        use read_req::options::stream_options::RevisionOption as R;
        confirm(tx).await;
        // Subscriptions start after the given revision.
        let mut next = match rev {
            Some(R::Revision(r)) => r.saturating_add(2),
            Some(R::End(_)) => self.store.stream_info(name).await.map_err(err)?.version + 1,
            Some(R::Start(_)) | None => 1,
        };
        let mut waker = Waker::new(&self.store, self.shutdown.clone());
        let mut caught_up = false;
        loop {
            waker.seen();
            let page = self
                .store
                .read_stream(
                    name,
                    ReadStreamOptions::new()
                        .from_version(next)
                        .limit(self.batch),
                )
                .await
                .map_err(err)?;
            if page.is_empty() {
                // A tombstone ends the subscription, as in KurrentDB.
                if self.store.stream_info(name).await.map_err(err)?.tombstoned {
                    return Err(kurrent_stream_deleted(name));
                }
                if !caught_up {
                    caught_up = true;
                    let c = read_resp::CaughtUp {
                        timestamp: Some(now()),
                        stream_revision: (next > 1).then(|| (next - 2) as i64),
                        position: None,
                    };
                    if !self.put(tx, resp(read_resp::Content::CaughtUp(c))).await? {
                        return Ok(());
                    }
                }
                if !waker.wait(tx.closed()).await {
                    return Err(ended(tx));
                }
                continue;
            }
            for e in page {
                next = e.stream.as_ref().map_or(next, |s| s.version + 1);
                if !self.put(tx, Ok(map::read_resp(e, self.structured))).await? {
                    return Ok(());
                }
            }
        }
    }

    async fn subscribe_all(
        &self,
        pos: Option<read_req::options::all_options::AllOption>,
        filter: Option<Filter>,
        tx: &Tx,
    ) -> Result<(), Status> {
        use read_req::options::all_options::AllOption as A;
        confirm(tx).await;
        let mut after = match pos {
            Some(A::Position(p)) => p.commit_position,
            Some(A::End(_)) => self.store.head().await.map_err(err)?,
            Some(A::Start(_)) | None => 0,
        };
        let mut waker = Waker::new(&self.store, self.shutdown.clone());
        let mut caught_up = false;
        // Events examined since the last checkpoint, and where it was.
        let mut examined = 0u64;
        let mut checkpointed = after;
        loop {
            waker.seen();
            let page = self
                .store
                .read_all(ReadOptions::after(after).limit(self.batch))
                .await
                .map_err(err)?
                .events;
            if page.is_empty() {
                // Everything up to `after` is examined: a filtered
                // subscription learns that through a checkpoint.
                if filter.is_some() && checkpointed < after {
                    checkpointed = after;
                    examined = 0;
                    if !self.put(tx, checkpoint(after)).await? {
                        return Ok(());
                    }
                }
                if !caught_up {
                    caught_up = true;
                    let c = read_resp::CaughtUp {
                        timestamp: Some(now()),
                        stream_revision: None,
                        position: (after > 0).then_some(read_resp::Position {
                            commit_position: after,
                            prepare_position: after,
                        }),
                    };
                    if !self.put(tx, resp(read_resp::Content::CaughtUp(c))).await? {
                        return Ok(());
                    }
                }
                if !waker.wait(tx.closed()).await {
                    return Err(ended(tx));
                }
                continue;
            }
            for e in page {
                after = e.position;
                examined += 1;
                let keep = filter.as_ref().is_none_or(|f| f.matches(&e));
                if keep && !self.put(tx, Ok(map::read_resp(e, self.structured))).await? {
                    return Ok(());
                }
                if let Some(f) = &filter {
                    if examined >= f.checkpoint_every {
                        examined = 0;
                        checkpointed = after;
                        if !self.put(tx, checkpoint(after)).await? {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

async fn confirm(tx: &Tx) {
    let id = crate::ids::uuid_text(eskv_core::Ulid::generate());
    let _ = tx
        .send(resp(read_resp::Content::Confirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: id,
            },
        )))
        .await;
}

fn checkpoint(p: u64) -> Result<ReadResp, Status> {
    resp(read_resp::Content::Checkpoint(read_resp::Checkpoint {
        commit_position: p,
        prepare_position: p,
        timestamp: Some(now()),
    }))
}
