//! KurrentDB's `Streams.BatchAppend`: a bidirectional stream of appends.
//! Requests sharing a correlation id form one append, run when one of them
//! says `is_final`; each append gets one response with that id, in the
//! order the appends finish. An append refused before its final chunk
//! (over a limit, or a bad event) is answered at once, and its remaining
//! chunks are dropped. A wrong expected version is a packed
//! `WrongExpectedVersion` in the response's `google.rpc.Status`, and a
//! tombstoned stream a packed `StreamDeleted`, as KurrentDB's clients
//! decode them.

use crate::context::{finish, send_patiently, shutdown_begun};
use crate::error::kurrent_status;
use crate::kurrent_map as map;
use crate::proto::event_store::client::streams::batch_append_req::options::ExpectedStreamPosition as Expected;
use crate::proto::event_store::client::streams::{
    batch_append_req, batch_append_resp, BatchAppendReq, BatchAppendResp,
};
use crate::proto::event_store::client::{self as shared, wrong_expected_version as wev};
use crate::proto::google::rpc;
use eskv_core::{Error, EventStore, ExpectedVersion, NewEvent};
use futures::StreamExt as _;
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::{Code, Status, Streaming};

/// Appends being assembled on one call, at most.
const MAX_OPEN: usize = 1024;

struct Open {
    options: Option<batch_append_req::Options>,
    events: Vec<NewEvent>,
    /// Payload bytes so far.
    bytes: usize,
}

fn resp_expected(e: &Option<Expected>) -> Option<batch_append_resp::ExpectedStreamPosition> {
    use batch_append_resp::ExpectedStreamPosition as R;
    e.as_ref().map(|e| match e {
        Expected::StreamPosition(r) => R::StreamPosition(*r),
        Expected::NoStream(()) => R::NoStream(()),
        Expected::Any(()) => R::Any(()),
        Expected::StreamExists(()) => R::StreamExists(()),
    })
}

/// A detail message and its protobuf type name.
trait Detail: prost::Message + Sized {
    const NAME: &'static str;
}

impl Detail for shared::WrongExpectedVersion {
    const NAME: &'static str = "event_store.client.WrongExpectedVersion";
}

impl Detail for shared::StreamDeleted {
    const NAME: &'static str = "event_store.client.StreamDeleted";
}

impl Detail for shared::BadRequest {
    const NAME: &'static str = "event_store.client.BadRequest";
}

fn packed<M: Detail>(code: Code, message: String, detail: Option<M>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message,
        details: detail.map(|d| prost_types::Any {
            type_url: format!("type.googleapis.com/{}", M::NAME),
            value: d.encode_to_vec(),
        }),
    }
}

fn wrong_version(expected: ExpectedVersion, actual: Option<u64>) -> rpc::Status {
    let detail = shared::WrongExpectedVersion {
        current_stream_revision_option: Some(match actual {
            Some(v) => wev::CurrentStreamRevisionOption::CurrentStreamRevision(v - 1),
            None => wev::CurrentStreamRevisionOption::CurrentNoStream(()),
        }),
        expected_stream_position_option: Some(match expected {
            ExpectedVersion::Exact(v) => {
                wev::ExpectedStreamPositionOption::ExpectedStreamPosition(v - 1)
            }
            ExpectedVersion::Any => wev::ExpectedStreamPositionOption::ExpectedAny(()),
            ExpectedVersion::StreamExists => {
                wev::ExpectedStreamPositionOption::ExpectedStreamExists(())
            }
            ExpectedVersion::NoStream => wev::ExpectedStreamPositionOption::ExpectedNoStream(()),
        }),
    };
    packed(
        Code::FailedPrecondition,
        "wrong expected version".into(),
        Some(detail),
    )
}

fn bad_request(s: &Status) -> rpc::Status {
    packed(
        s.code(),
        s.message().to_owned(),
        Some(shared::BadRequest {
            message: s.message().to_owned(),
        }),
    )
}

fn failure(e: &Error) -> rpc::Status {
    let s = kurrent_status(e);
    if let Error::StreamTombstoned { stream } = e {
        let detail = shared::StreamDeleted {
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
        };
        return packed(s.code(), s.message().to_owned(), Some(detail));
    }
    match s.code() {
        Code::InvalidArgument => bad_request(&s),
        _ => packed::<shared::BadRequest>(s.code(), s.message().to_owned(), None),
    }
}

/// Runs one batch-append call until the client closes its side, or until
/// shutdown: then the appends already started are answered, and the call
/// ends with `UNAVAILABLE` (appends still being assembled were not
/// written).
pub(crate) async fn run(
    store: EventStore,
    input: Streaming<BatchAppendReq>,
    tx: mpsc::Sender<Result<BatchAppendResp, Status>>,
    shutdown: watch::Receiver<bool>,
) {
    // Every started append is in `appends`, so none is cut off when the
    // call ends.
    let mut appends = JoinSet::new();
    let ended = serve(&store, input, &tx, &shutdown, &mut appends).await;
    while appends.join_next().await.is_some() {}
    if let Some(status) = ended {
        finish(&tx, status, &shutdown).await;
    }
}

/// The loop of [`run`]; the status to end the call with, if any.
async fn serve(
    store: &EventStore,
    mut input: Streaming<BatchAppendReq>,
    tx: &mpsc::Sender<Result<BatchAppendResp, Status>>,
    shutdown: &watch::Receiver<bool>,
    appends: &mut JoinSet<()>,
) -> Option<Status> {
    let mut open: HashMap<Vec<u8>, Open> = HashMap::new();
    // Correlation ids already answered with an error before their final
    // chunk: their later chunks are dropped up to and including the final
    // one, so every correlation id gets exactly one response. Disjoint
    // from `open`'s keys.
    let mut failed: HashSet<Vec<u8>> = HashSet::new();
    loop {
        // Finished appends leave the set as the call goes on.
        while appends.try_join_next().is_some() {}
        let req = tokio::select! {
            biased;
            _ = shutdown_begun(shutdown) => {
                return Some(Status::unavailable(
                    "the server is shutting down; appends not answered on this call were not written",
                ));
            }
            req = input.next() => req,
        };
        let req = match req {
            None => return None,
            Some(Ok(r)) => r,
            Some(Err(s)) => return Some(s),
        };
        let key = req
            .correlation_id
            .as_ref()
            .map_or_else(Vec::new, |c| c.encode_to_vec());
        if failed.contains(&key) {
            if req.is_final {
                failed.remove(&key);
            }
            continue;
        }
        if !open.contains_key(&key) && open.len() + failed.len() >= MAX_OPEN {
            return Some(Status::resource_exhausted(format!(
                "more than {MAX_OPEN} batch appends open on one call"
            )));
        }
        let entry = open.entry(key.clone()).or_insert(Open {
            options: None,
            events: Vec::new(),
            bytes: 0,
        });
        if req.options.is_some() {
            entry.options = req.options;
        }
        let mut bad = None;
        for m in req.proposed_messages {
            match map::new_batch_event(m) {
                Ok(e) => {
                    entry.bytes += e.data.len();
                    entry.events.push(e)
                }
                Err(s) => {
                    bad = Some(s);
                    break;
                }
            }
        }
        let limits = &store.options().limits;
        let bytes = entry.bytes;
        if entry.events.len() > limits.max_events_per_append {
            bad = Some(kurrent_status(&Error::LimitExceeded {
                what: "events in one append".into(),
                limit: limits.max_events_per_append as u64,
                actual: entry.events.len() as u64,
            }));
        } else if bytes > limits.max_append_bytes {
            bad = Some(kurrent_status(&Error::LimitExceeded {
                what: "bytes in one append".into(),
                limit: limits.max_append_bytes as u64,
                actual: bytes as u64,
            }));
        }
        if !req.is_final && bad.is_none() {
            continue;
        }
        let Some(Open {
            options, events, ..
        }) = open.remove(&key)
        else {
            continue;
        };
        let options = options.unwrap_or_default();
        let exp = options.expected_stream_position;
        let mut resp = BatchAppendResp {
            correlation_id: req.correlation_id,
            result: None,
            stream_identifier: options.stream_identifier.clone(),
            expected_stream_position: resp_expected(&exp),
        };
        if let Some(s) = bad {
            if !req.is_final {
                failed.insert(key);
            }
            resp.result = Some(batch_append_resp::Result::Error(bad_request(&s)));
            if !send_patiently(tx, Ok(resp), shutdown).await {
                return None;
            }
            continue;
        }
        if *shutdown.borrow() {
            resp.result = Some(batch_append_resp::Result::Error(
                packed::<shared::BadRequest>(
                    Code::Unavailable,
                    "the server is shutting down; nothing was written".into(),
                    None,
                ),
            ));
            send_patiently(tx, Ok(resp), shutdown).await;
            continue;
        }
        let store = store.clone();
        let tx = tx.clone();
        let shutdown = shutdown.clone();
        appends.spawn(async move {
            resp.result = Some(append(&store, options, map::expected_version(exp), events).await);
            send_patiently(&tx, Ok(resp), &shutdown).await;
        });
    }
}

async fn append(
    store: &EventStore,
    options: batch_append_req::Options,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> batch_append_resp::Result {
    use batch_append_resp::success::{CurrentRevisionOption as Rev, PositionOption as Pos};
    let stream = match map::stream_name(options.stream_identifier) {
        Ok(s) => s,
        Err(s) => return batch_append_resp::Result::Error(bad_request(&s)),
    };
    let outcome = if events.is_empty() {
        // Like Append: no events checks the expected version only.
        match store.stream_info(&stream).await {
            Ok(i) if i.tombstoned => Err(failure(&Error::StreamTombstoned {
                stream: stream.clone(),
            })),
            Ok(i) if crate::kurrent::satisfies(expected, &i) => Ok((i.version, i.last_position)),
            Ok(i) => Err(wrong_version(
                expected,
                (i.version > 0).then_some(i.version),
            )),
            Err(e) => Err(failure(&e)),
        }
    } else {
        match store.append_to_stream(&stream, expected, events).await {
            Ok(r) => Ok((r.stream_version.unwrap_or(0), Some(r.last_position))),
            Err(Error::WrongExpectedVersion { actual, .. }) => Err(wrong_version(expected, actual)),
            Err(e) => Err(failure(&e)),
        }
    };
    match outcome {
        Ok((version, position)) => batch_append_resp::Result::Success(batch_append_resp::Success {
            current_revision_option: Some(if version > 0 {
                Rev::CurrentRevision(version - 1)
            } else {
                Rev::NoStream(())
            }),
            position_option: Some(match position {
                Some(p) => Pos::Position(shared::AllStreamPosition {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => Pos::NoPosition(()),
            }),
        }),
        Err(status) => batch_append_resp::Result::Error(status),
    }
}
