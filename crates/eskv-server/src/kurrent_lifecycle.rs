//! KurrentDB's `Streams.Delete` and `Streams.Tombstone` on eskv's soft
//! delete and tombstone ([`EventStore::delete_stream`],
//! [`EventStore::tombstone_stream`]).
//!
//! What KurrentDB's clients see:
//!
//! - Success: the position of the `$stream-deleted` / `$stream-tombstoned`
//!   system event eskv appended. Deleting a stream that has nothing to
//!   delete (never written, or deleted already) with `any` or `no_stream`
//!   succeeds without writing, as in KurrentDB, with no position.
//! - A wrong expected revision: `FAILED_PRECONDITION` with KurrentDB's
//!   message and `exception: wrong-expected-version` trailers (an actual
//!   version of -1 is how the clients learn the stream does not exist).
//! - A tombstoned stream (deleting or tombstoning it again, and every later
//!   append or read), and `stream_exists` on a soft-deleted stream:
//!   `FAILED_PRECONDITION` "Event stream '...' is deleted." with trailers
//!   `exception: stream-deleted` and `stream-name`, the clients' "stream
//!   deleted" error.
//!
//! A soft-deleted stream reads as not found and is re-created by appending
//! (its revisions continue); a tombstoned one never comes back.

use crate::error::{kurrent_status, kurrent_stream_deleted, kurrent_wrong_expected_version};
use crate::kurrent_map::{self as map, ExpectedRevision};
use crate::proto::event_store::client::streams::{
    delete_resp, tombstone_resp, DeleteReq, DeleteResp, TombstoneReq, TombstoneResp,
};
use crate::proto::event_store::client::Empty;
use eskv_core::{Error, EventStore, ExpectedVersion, Position};
use tonic::Status;

#[derive(Clone, Copy)]
enum Kind {
    Delete,
    Tombstone,
}

pub(crate) async fn delete(store: &EventStore, req: DeleteReq) -> Result<DeleteResp, Status> {
    let opts = req.options.ok_or_else(|| {
        Status::invalid_argument("a delete needs options (stream and expected revision)")
    })?;
    let stream = map::stream_name(opts.stream_identifier)?;
    let rev = opts.expected_stream_revision.map(ExpectedRevision::from);
    let position = run(store, &stream, rev, Kind::Delete).await?;
    Ok(DeleteResp {
        position_option: Some(match position {
            Some(p) => delete_resp::PositionOption::Position(delete_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
            None => delete_resp::PositionOption::NoPosition(Empty {}),
        }),
    })
}

pub(crate) async fn tombstone(
    store: &EventStore,
    req: TombstoneReq,
) -> Result<TombstoneResp, Status> {
    let opts = req.options.ok_or_else(|| {
        Status::invalid_argument("a tombstone needs options (stream and expected revision)")
    })?;
    let stream = map::stream_name(opts.stream_identifier)?;
    let rev = opts.expected_stream_revision.map(ExpectedRevision::from);
    let position = run(store, &stream, rev, Kind::Tombstone).await?;
    Ok(TombstoneResp {
        position_option: Some(match position {
            Some(p) => tombstone_resp::PositionOption::Position(tombstone_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
            None => tombstone_resp::PositionOption::NoPosition(Empty {}),
        }),
    })
}

/// The change, or `None` when there was nothing to delete and the
/// expected revision `rev` allows that. Errors report `rev` as the client
/// sent it.
async fn run(
    store: &EventStore,
    stream: &str,
    rev: Option<ExpectedRevision>,
    kind: Kind,
) -> Result<Option<Position>, Status> {
    let expected = map::expected_version(rev);
    let result = match kind {
        Kind::Delete => store.delete_stream(stream, expected).await,
        Kind::Tombstone => store.tombstone_stream(stream, expected).await,
    };
    match result {
        Ok(r) => Ok(Some(r.last_position)),
        Err(Error::NotFound { .. })
            if matches!(expected, ExpectedVersion::Any | ExpectedVersion::NoStream) =>
        {
            Ok(None)
        }
        // KurrentDB's answer to `stream_exists` on a soft-deleted stream.
        Err(Error::WrongExpectedVersion { .. })
            if expected == ExpectedVersion::StreamExists
                && store.stream_info(stream).await.is_ok_and(|i| i.deleted) =>
        {
            Err(kurrent_stream_deleted(stream))
        }
        Err(Error::WrongExpectedVersion { actual, .. }) => {
            let op = match kind {
                Kind::Delete => "Delete",
                Kind::Tombstone => "Tombstone",
            };
            let rev = rev.unwrap_or(ExpectedRevision::Any);
            Err(kurrent_wrong_expected_version(op, stream, rev, actual))
        }
        Err(e) => Err(kurrent_status(&e)),
    }
}
