//! KurrentDB messages to eskv values and back, and the server-side filters.
//!
//! Stream revisions count from 0 where eskv's versions count from 1:
//! revision `r` is version `r + 1`. `$all` positions are eskv's global
//! positions (commit and prepare position alike). Event ids are the UUID's
//! bits; the content type and the custom metadata bytes are kept in
//! reserved eskv metadata entries, so they read back byte for byte.

use crate::dcb_map::RESERVED;
use crate::ids::{from_halves, parse_uuid, uuid_halves, uuid_text};
use crate::proto::event_store::client::streams::read_req::options::filter_options;
use crate::proto::event_store::client::streams::read_resp::{self, read_event};
use crate::proto::event_store::client::streams::{
    append_req, batch_append_req, delete_req, read_req, tombstone_req, ReadResp,
};
use crate::proto::event_store::client::{self as shared, uuid};
use base64::Engine as _;
use eskv_core::{ExpectedVersion, Metadata, NewEvent, RecordedEvent, Ulid};
use std::collections::{BTreeMap, HashMap};
use tonic::Status;

const CONTENT_TYPE: &str = "$eskv.kurrent.content-type";
const CUSTOM_METADATA: &str = "$eskv.kurrent.custom-metadata";
/// The stream name under which events appended without a stream (DCB
/// events) appear in `$all`.
pub(crate) const NO_STREAM_NAME: &str = "$dcb";

/// The expected stream revision a KurrentDB write carries. Append, batch
/// append, delete and tombstone each have their own generated copy of this
/// oneof; each converts into this one, so [`expected_version`] states the
/// rule once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpectedRevision {
    /// The stream's last event is at this revision (counted from 0).
    Revision(u64),
    /// The stream has no events (never written, or deleted).
    NoStream,
    /// The stream has events.
    StreamExists,
    /// No expectation.
    Any,
}

impl ExpectedRevision {
    /// The revision an eskv expected version stands for (version `v` is
    /// revision `v - 1`; version 0 is no stream). Where the client's own
    /// revision is at hand, use that: a revision of `u64::MAX` saturates
    /// to the version `u64::MAX`, which reads back one lower.
    pub(crate) fn of_version(v: ExpectedVersion) -> Self {
        match v {
            ExpectedVersion::Exact(v) => v
                .checked_sub(1)
                .map_or(ExpectedRevision::NoStream, ExpectedRevision::Revision),
            ExpectedVersion::NoStream => ExpectedRevision::NoStream,
            ExpectedVersion::StreamExists => ExpectedRevision::StreamExists,
            ExpectedVersion::Any => ExpectedRevision::Any,
        }
    }
}

/// eskv's expected version for a write's expected revision: revision `r` is
/// version `r + 1`, and a write without one expects nothing.
pub(crate) fn expected_version(e: Option<impl Into<ExpectedRevision>>) -> ExpectedVersion {
    match e.map(Into::into) {
        Some(ExpectedRevision::Revision(r)) => ExpectedVersion::Exact(r.saturating_add(1)),
        Some(ExpectedRevision::NoStream) => ExpectedVersion::NoStream,
        Some(ExpectedRevision::StreamExists) => ExpectedVersion::StreamExists,
        Some(ExpectedRevision::Any) | None => ExpectedVersion::Any,
    }
}

/// `From<generated oneof> for ExpectedRevision`, for oneofs whose revision
/// variant is named `$revision` and whose other variants are `NoStream`,
/// `StreamExists` and `Any`.
macro_rules! expected_revision_from {
    ($($oneof:ty, $revision:ident;)*) => {$(
        impl From<$oneof> for ExpectedRevision {
            fn from(e: $oneof) -> Self {
                type R = $oneof;
                match e {
                    R::$revision(r) => ExpectedRevision::Revision(r),
                    R::NoStream(_) => ExpectedRevision::NoStream,
                    R::StreamExists(_) => ExpectedRevision::StreamExists,
                    R::Any(_) => ExpectedRevision::Any,
                }
            }
        }
    )*};
}

expected_revision_from! {
    append_req::options::ExpectedStreamRevision, Revision;
    batch_append_req::options::ExpectedStreamPosition, StreamPosition;
    delete_req::options::ExpectedStreamRevision, Revision;
    tombstone_req::options::ExpectedStreamRevision, Revision;
}

pub(crate) fn stream_name(id: Option<shared::StreamIdentifier>) -> Result<String, Status> {
    let raw = id.map(|i| i.stream_name).unwrap_or_default();
    String::from_utf8(raw).map_err(|_| Status::invalid_argument("the stream name is not UTF-8"))
}

pub(crate) fn event_id(id: Option<shared::Uuid>) -> Result<Ulid, Status> {
    match id.and_then(|u| u.value) {
        Some(uuid::Value::Structured(s)) => Ok(from_halves(
            s.most_significant_bits,
            s.least_significant_bits,
        )),
        Some(uuid::Value::String(s)) => parse_uuid(&s).map_err(Status::invalid_argument),
        None => Err(Status::invalid_argument("every proposed event needs an id")),
    }
}

fn wire_id(id: Ulid, structured: bool) -> shared::Uuid {
    let value = if structured {
        let (most, least) = uuid_halves(id);
        uuid::Value::Structured(uuid::Structured {
            most_significant_bits: most,
            least_significant_bits: least,
        })
    } else {
        uuid::Value::String(uuid_text(id))
    };
    shared::Uuid { value: Some(value) }
}

/// A proposed message as an eskv event.
pub(crate) fn new_event(m: append_req::ProposedMessage) -> Result<NewEvent, Status> {
    proposed(m.id, m.metadata, m.custom_metadata, m.data)
}

/// A batch append's proposed message as an eskv event.
pub(crate) fn new_batch_event(
    m: crate::proto::event_store::client::streams::batch_append_req::ProposedMessage,
) -> Result<NewEvent, Status> {
    proposed(m.id, m.metadata, m.custom_metadata, m.data)
}

fn proposed(
    id: Option<shared::Uuid>,
    mut meta: HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
) -> Result<NewEvent, Status> {
    let id = event_id(id)?;
    let event_type = meta.remove("type").ok_or_else(|| {
        Status::invalid_argument(format!(
            "event {} has no \"type\" in its metadata",
            uuid_text(id)
        ))
    })?;
    let mut extra = BTreeMap::new();
    if let Some(ct) = meta.remove("content-type") {
        extra.insert(CONTENT_TYPE.to_owned(), ct);
    }
    if !custom_metadata.is_empty() {
        extra.insert(
            CUSTOM_METADATA.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(&custom_metadata),
        );
    }
    Ok(NewEvent {
        id,
        event_type,
        tags: Vec::new(),
        data,
        metadata: Metadata {
            extra,
            ..Metadata::default()
        },
        personal: None,
    })
}

/// Custom metadata for an event eskv wrote itself: its correlation and
/// causation ids in KurrentDB's conventional JSON, else nothing.
fn native_custom_metadata(m: &Metadata) -> Vec<u8> {
    let mut o = serde_json::Map::new();
    if let Some(c) = &m.correlation_id {
        o.insert("$correlationId".into(), c.clone().into());
    }
    if let Some(c) = &m.causation_id {
        o.insert("$causationId".into(), c.clone().into());
    }
    for (k, v) in m.extra.iter().filter(|(k, _)| !k.starts_with(RESERVED)) {
        o.insert(k.clone(), v.clone().into());
    }
    if o.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&o).unwrap_or_default()
    }
}

/// The stream name and 0-based revision an event has in KurrentDB's view.
pub(crate) fn stream_and_revision(e: &RecordedEvent) -> (&str, u64) {
    match &e.stream {
        Some(s) => (s.stream_id.as_str(), s.version - 1),
        None => (NO_STREAM_NAME, e.position - 1),
    }
}

/// An eskv event as a read response.
pub(crate) fn read_resp(e: RecordedEvent, structured_ids: bool) -> ReadResp {
    let x = &e.metadata.extra;
    let custom_metadata = match x.get(CUSTOM_METADATA) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_default(),
        None if x.contains_key(CONTENT_TYPE) => Vec::new(),
        None => native_custom_metadata(&e.metadata),
    };
    let content_type = x.get(CONTENT_TYPE).cloned().unwrap_or_else(|| {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&e.data).is_ok() {
            "application/json".into()
        } else {
            "application/octet-stream".into()
        }
    });
    let (stream, revision) = stream_and_revision(&e);
    let metadata = HashMap::from([
        ("type".to_owned(), e.event_type.clone()),
        ("content-type".to_owned(), content_type),
        // 100 ns ticks since the Unix epoch.
        (
            "created".to_owned(),
            (e.recorded_at_ms * 10_000).to_string(),
        ),
    ]);
    let event = read_event::RecordedEvent {
        id: Some(wire_id(e.id, structured_ids)),
        stream_identifier: Some(shared::StreamIdentifier {
            stream_name: stream.as_bytes().to_vec(),
        }),
        stream_revision: revision,
        prepare_position: e.position,
        commit_position: e.position,
        metadata,
        custom_metadata,
        data: e.data,
    };
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(event),
            link: None,
            position: Some(read_event::Position::CommitPosition(e.position)),
        })),
    }
}

/// A server-side filter of a `$all` read or subscription.
pub(crate) struct Filter {
    on_stream: bool,
    prefixes: Vec<String>,
    regex: Option<fancy_regex::Regex>,
    /// Events examined between checkpoints.
    pub(crate) checkpoint_every: u64,
}

impl Filter {
    pub(crate) fn new(f: read_req::options::FilterOptions) -> Result<Option<Self>, Status> {
        let (on_stream, expr) = match f.filter {
            Some(filter_options::Filter::StreamIdentifier(e)) => (true, e),
            Some(filter_options::Filter::EventType(e)) => (false, e),
            None => return Ok(None),
        };
        let regex = if expr.prefix.is_empty() && !expr.regex.is_empty() {
            Some(fancy_regex::Regex::new(&expr.regex).map_err(|e| {
                Status::invalid_argument(format!("filter regex {:?}: {e}", expr.regex))
            })?)
        } else {
            None
        };
        let window = match f.window {
            Some(filter_options::Window::Max(m)) => m.max(1),
            _ => 32,
        };
        Ok(Some(Filter {
            on_stream,
            prefixes: expr.prefix,
            regex,
            checkpoint_every: u64::from(window)
                * u64::from(f.checkpoint_interval_multiplier.max(1)),
        }))
    }

    pub(crate) fn matches(&self, e: &RecordedEvent) -> bool {
        let subject = if self.on_stream {
            stream_and_revision(e).0
        } else {
            e.event_type.as_str()
        };
        if !self.prefixes.is_empty() {
            return self
                .prefixes
                .iter()
                .any(|p| subject.starts_with(p.as_str()));
        }
        match &self.regex {
            Some(r) => r.is_match(subject).unwrap_or(false),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The largest revision a client can send maps to a version no stream
    /// reaches (a wrong expected version), never an overflow.
    #[test]
    fn the_largest_revision_does_not_overflow() {
        assert_eq!(
            expected_version(Some(ExpectedRevision::Revision(u64::MAX))),
            ExpectedVersion::Exact(u64::MAX)
        );
        assert_eq!(
            expected_version(Some(ExpectedRevision::Revision(4))),
            ExpectedVersion::Exact(5)
        );
    }

    proptest! {
        /// Ids (either UUID form), content type and custom metadata bytes
        /// read back byte for byte; revisions are versions - 1.
        #[test]
        fn kurrent_events_round_trip(
            id in any::<u128>(),
            structured in any::<bool>(),
            content_type in prop_oneof![Just("application/json".to_string()), "[a-z/+.-]{0,20}"],
            custom in proptest::collection::vec(any::<u8>(), 0..32),
            data in proptest::collection::vec(any::<u8>(), 0..32),
            version in 1u64..1000,
        ) {
            let wire = wire_id(Ulid(id), structured);
            let sent = append_req::ProposedMessage {
                id: Some(wire.clone()),
                metadata: HashMap::from([
                    ("type".to_owned(), "OrderPlaced".to_owned()),
                    ("content-type".to_owned(), content_type.clone()),
                ]),
                custom_metadata: custom.clone(),
                data: data.clone(),
            };
            let e = new_event(sent).unwrap();
            prop_assert_eq!(e.id, Ulid(id));
            let recorded = RecordedEvent {
                position: 42,
                id: e.id,
                event_type: e.event_type,
                tags: e.tags,
                data: e.data,
                metadata: e.metadata,
                recorded_at_ms: 1_000,
                stream: Some(eskv_core::StreamRef { stream_id: "order-1".into(), version }),
                personal: None,
            };
            let Some(read_resp::Content::Event(read)) = read_resp(recorded, structured).content else {
                panic!("not an event");
            };
            let got = read.event.unwrap();
            prop_assert_eq!(got.id, Some(wire));
            prop_assert_eq!(got.stream_revision, version - 1);
            prop_assert_eq!(got.commit_position, 42);
            prop_assert_eq!(got.custom_metadata, custom);
            prop_assert_eq!(got.data, data);
            prop_assert_eq!(got.metadata.get("content-type"), Some(&content_type));
            prop_assert_eq!(got.metadata.get("type").map(String::as_str), Some("OrderPlaced"));
            prop_assert_eq!(got.metadata.get("created").map(String::as_str), Some("10000000"));
        }
    }

    #[test]
    fn filters_match_prefixes_and_lookahead_regexes() {
        use read_req::options::FilterOptions;
        let e = |t: &str, s: &str| RecordedEvent {
            position: 1,
            id: Ulid(1),
            event_type: t.into(),
            tags: vec![],
            data: vec![],
            metadata: Metadata::default(),
            recorded_at_ms: 0,
            stream: Some(eskv_core::StreamRef {
                stream_id: s.into(),
                version: 1,
            }),
            personal: None,
        };
        let f = |filter| {
            Filter::new(FilterOptions {
                filter: Some(filter),
                window: None,
                checkpoint_interval_multiplier: 0,
            })
            .unwrap()
            .unwrap()
        };
        let expr = |regex: &str, prefix: &[&str]| filter_options::Expression {
            regex: regex.into(),
            prefix: prefix.iter().map(|p| p.to_string()).collect(),
        };
        let by_type = f(filter_options::Filter::EventType(expr(
            "",
            &["Order", "Pay"],
        )));
        assert!(by_type.matches(&e("OrderPlaced", "x-1")));
        assert!(by_type.matches(&e("PaymentTaken", "x-1")));
        assert!(!by_type.matches(&e("Shipped", "order-1")));
        let exclude = f(filter_options::Filter::EventType(expr(r"^(?!\$).*", &[])));
        assert!(exclude.matches(&e("OrderPlaced", "x")));
        assert!(!exclude.matches(&e("$metadata", "x")));
        let by_stream = f(filter_options::Filter::StreamIdentifier(expr(
            "^order-[0-9]+$",
            &[],
        )));
        assert!(by_stream.matches(&e("A", "order-12")));
        assert!(!by_stream.matches(&e("A", "order-x")));
        assert_eq!(by_stream.checkpoint_every, 32);
    }

    #[test]
    fn every_writes_expected_revision_maps_alike() {
        use crate::proto::event_store::client::Empty;
        use append_req::options::ExpectedStreamRevision as A;
        use batch_append_req::options::ExpectedStreamPosition as B;
        use delete_req::options::ExpectedStreamRevision as D;
        use tombstone_req::options::ExpectedStreamRevision as T;
        let cases = [
            (A::Revision(4).into(), ExpectedVersion::Exact(5)),
            (A::NoStream(Empty {}).into(), ExpectedVersion::NoStream),
            (
                A::StreamExists(Empty {}).into(),
                ExpectedVersion::StreamExists,
            ),
            (A::Any(Empty {}).into(), ExpectedVersion::Any),
            (B::StreamPosition(0).into(), ExpectedVersion::Exact(1)),
            (B::NoStream(()).into(), ExpectedVersion::NoStream),
            (B::StreamExists(()).into(), ExpectedVersion::StreamExists),
            (B::Any(()).into(), ExpectedVersion::Any),
            (D::Revision(9).into(), ExpectedVersion::Exact(10)),
            (D::NoStream(Empty {}).into(), ExpectedVersion::NoStream),
            (T::Revision(2).into(), ExpectedVersion::Exact(3)),
            (
                T::StreamExists(Empty {}).into(),
                ExpectedVersion::StreamExists,
            ),
        ];
        for (rev, want) in cases {
            let rev: ExpectedRevision = rev;
            assert_eq!(expected_version(Some(rev)), want, "{rev:?}");
        }
        assert_eq!(expected_version(None::<A>), ExpectedVersion::Any);
    }
}
