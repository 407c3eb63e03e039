//! UmaDB messages to eskv values and back.
//!
//! UmaDB events carry an ordered list of metadata pairs, tags in the
//! client's order, and an optional UUID; eskv keeps metadata as a map and
//! tags sorted. When a client's event fits eskv's shape (sorted unique
//! tags, sorted unique metadata keys), it is stored as is and reads the
//! same from eskv's own API; otherwise the original order is kept in a
//! reserved metadata entry, so every event reads back exactly as written.

use crate::error::dcb_invalid;
use crate::ids::{parse_uuid, uuid_text};
use crate::proto::umadb::v1 as pb;
use eskv_core::{AppendCondition, Metadata, NewEvent, Query, QueryItem, RecordedEvent, Ulid};
use tonic::Status;

/// Reserved metadata keys start with this; client keys that do are kept
/// in [`META_PAIRS`] instead, never as keys of their own.
pub(crate) const RESERVED: &str = "$eskv.";
/// The client's metadata pairs (JSON list), when they do not fit a map.
const META_PAIRS: &str = "$eskv.umadb.metadata";
/// The client's tags (JSON list), when not sorted and unique.
const TAGS: &str = "$eskv.umadb.tags";
/// Present when the client gave no UUID (the id is the server's).
const NO_UUID: &str = "$eskv.umadb.no-uuid";
/// The tracking position recorded with an append.
const TRACKING: &str = "$eskv.umadb.tracking";
/// Tag marking the last event of an append that carried tracking info for
/// a source; clients' tags may not start with it.
pub(crate) const TRACKING_TAG: &str = "$eskv-tracking:";

fn strictly_sorted<T: Ord>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// A UmaDB event as an eskv event.
pub(crate) fn new_event(e: pb::Event) -> Result<NewEvent, Status> {
    let mut extra = std::collections::BTreeMap::new();
    let id = if e.uuid.is_empty() {
        extra.insert(NO_UUID.to_owned(), "1".to_owned());
        Ulid::generate()
    } else {
        parse_uuid(&e.uuid).map_err(dcb_invalid)?
    };
    if let Some(t) = e.tags.iter().find(|t| t.starts_with(TRACKING_TAG)) {
        return Err(dcb_invalid(format!(
            "tag {t:?} starts with {TRACKING_TAG:?}, which the server reserves for tracking info"
        )));
    }
    if !strictly_sorted(&e.tags) {
        extra.insert(TAGS.to_owned(), json(&e.tags));
    }
    let keys: Vec<&str> = e.metadata.iter().map(|m| m.key.as_str()).collect();
    if strictly_sorted(&keys) && !keys.iter().any(|k| k.starts_with(RESERVED)) {
        extra.extend(e.metadata.into_iter().map(|m| (m.key, m.value)));
    } else {
        let pairs: Vec<[String; 2]> = e.metadata.into_iter().map(|m| [m.key, m.value]).collect();
        extra.insert(META_PAIRS.to_owned(), json(&pairs));
    }
    Ok(NewEvent {
        id,
        event_type: e.event_type,
        tags: e.tags,
        data: e.data,
        metadata: Metadata {
            extra,
            ..Metadata::default()
        },
        personal: None,
    })
}

/// Marks `e` as the event recording `tracking`.
pub(crate) fn attach_tracking(e: &mut NewEvent, t: &pb::TrackingInfo) {
    e.tags.push(tracking_tag(&t.source));
    e.metadata
        .extra
        .insert(TRACKING.to_owned(), t.position.to_string());
}

pub(crate) fn tracking_tag(source: &str) -> String {
    format!("{TRACKING_TAG}{source}")
}

/// The tracking position recorded on `e`, if any.
pub(crate) fn tracking_of(e: &RecordedEvent) -> Option<pb::TrackingInfo> {
    let position = e.metadata.extra.get(TRACKING)?.parse().ok()?;
    let source = e.tags.iter().find_map(|t| t.strip_prefix(TRACKING_TAG))?;
    Some(pb::TrackingInfo {
        source: source.to_owned(),
        position,
    })
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// An eskv event as UmaDB's clients read it.
pub(crate) fn sequenced(e: RecordedEvent) -> pb::SequencedEvent {
    let tracking_info = tracking_of(&e);
    let x = &e.metadata.extra;
    let uuid = if x.contains_key(NO_UUID) {
        String::new()
    } else {
        uuid_text(e.id)
    };
    let tags = match x.get(TAGS).and_then(|s| serde_json::from_str(s).ok()) {
        Some(tags) => tags,
        None => e
            .tags
            .iter()
            .filter(|t| !t.starts_with(TRACKING_TAG))
            .cloned()
            .collect(),
    };
    let metadata = match x
        .get(META_PAIRS)
        .and_then(|s| serde_json::from_str::<Vec<[String; 2]>>(s).ok())
    {
        Some(pairs) => pairs
            .into_iter()
            .map(|[key, value]| pb::MetadataEntry { key, value })
            .collect(),
        None => {
            let m = &e.metadata;
            let fixed = [
                ("correlation_id", &m.correlation_id),
                ("causation_id", &m.causation_id),
            ];
            fixed
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
                .chain(
                    x.iter()
                        .filter(|(k, _)| !k.starts_with(RESERVED))
                        .map(|(k, v)| (k.clone(), v.clone())),
                )
                .map(|(key, value)| pb::MetadataEntry { key, value })
                .collect()
        }
    };
    pb::SequencedEvent {
        position: e.position,
        tracking_info,
        event: Some(pb::Event {
            event_type: e.event_type,
            tags,
            data: e.data,
            uuid,
            metadata,
        }),
    }
}

/// A UmaDB query; none, or one without items, matches every event.
pub(crate) fn query(q: Option<pb::Query>) -> Query {
    match q {
        Some(q) if !q.items.is_empty() => Query {
            items: q
                .items
                .into_iter()
                .map(|i| QueryItem::new().types(i.types).tags(i.tags))
                .collect(),
        },
        _ => Query::all(),
    }
}

/// A UmaDB append condition.
pub(crate) fn condition(c: pb::AppendCondition) -> AppendCondition {
    AppendCondition::new(query(c.fail_if_events_match), c.after)
}

/// Splits `events` into messages of at most `max_bytes` encoded (at least
/// one event each).
pub(crate) fn chunks(
    events: Vec<pb::SequencedEvent>,
    max_bytes: usize,
) -> Vec<Vec<pb::SequencedEvent>> {
    use prost::Message as _;
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for e in events {
        let n = e.encoded_len() + 11;
        if !cur.is_empty() && size + n > max_bytes {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the store keeps of an appended event (tags canonical).
    fn stored(e: NewEvent, position: u64) -> RecordedEvent {
        let mut tags = e.tags;
        tags.sort();
        tags.dedup();
        RecordedEvent {
            position,
            id: e.id,
            event_type: e.event_type,
            tags,
            data: e.data,
            metadata: e.metadata,
            recorded_at_ms: 0,
            stream: None,
            personal: None,
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{1,3}",
            Just("$eskv.umadb.tags".to_string()),
            Just("correlation_id".to_string())
        ]
    }

    proptest! {
        /// Any UmaDB event reads back exactly as written: tags in the
        /// client's order with duplicates, metadata pairs in order with
        /// duplicate and reserved-looking keys, the UUID or its absence.
        #[test]
        fn umadb_events_round_trip(
            tags in proptest::collection::vec("[a-d]{1,2}", 0..5),
            metadata in proptest::collection::vec((text(), "[ -~]{0,4}"), 0..5),
            uuid in proptest::option::of(any::<u128>()),
            data in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let sent = pb::Event {
                event_type: "T".into(),
                tags,
                data,
                uuid: uuid.map_or(String::new(), |u| uuid_text(Ulid(u))),
                metadata: metadata
                    .into_iter()
                    .map(|(key, value)| pb::MetadataEntry { key, value })
                    .collect(),
            };
            let back = sequenced(stored(new_event(sent.clone()).unwrap(), 7));
            prop_assert_eq!(back.position, 7);
            prop_assert_eq!(back.event, Some(sent));
            prop_assert_eq!(back.tracking_info, None);
        }
    }

    #[test]
    fn tracking_rides_on_the_event_and_stays_hidden() {
        let sent = pb::Event {
            event_type: "T".into(),
            tags: vec!["x".into()],
            ..Default::default()
        };
        let mut e = new_event(sent.clone()).unwrap();
        let t = pb::TrackingInfo {
            source: "up".into(),
            position: 9,
        };
        attach_tracking(&mut e, &t);
        let back = sequenced(stored(e, 1));
        assert_eq!(back.tracking_info, Some(t));
        assert_eq!(back.event.unwrap().tags, ["x"]);
        let forged = pb::Event {
            tags: vec![tracking_tag("up")],
            ..sent
        };
        assert!(
            new_event(forged).is_err(),
            "clients cannot forge tracking tags"
        );
    }
}
