//! DCB queries and append conditions (per the dcb.events specification).

use crate::event::{Position, RecordedEvent};
use serde::{Deserialize, Serialize};

/// One query item: matches an event whose type is one of `types` (any type
/// when empty) and that carries every tag in `tags`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryItem {
    /// Accepted types; empty accepts any type.
    pub types: Vec<String>,
    /// Required tags; all must be present.
    pub tags: Vec<String>,
}

impl QueryItem {
    /// An item matching every event (until narrowed).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts these types.
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types.extend(types.into_iter().map(Into::into));
        self.types.sort();
        self.types.dedup();
        self
    }

    /// Requires these tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self.tags.sort();
        self.tags.dedup();
        self
    }

    /// True when the item matches an event of `event_type` with (sorted)
    /// `tags`.
    pub fn matches_parts(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self
                .tags
                .iter()
                .all(|t| tags.binary_search(t).is_ok() || tags.contains(t))
    }
}

/// A DCB query: a list of items, ORed. [`Query::all`] matches everything.
/// A query with no items matches nothing and is rejected by the store as
/// invalid input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Query {
    /// The items.
    pub items: Vec<QueryItem>,
}

impl Query {
    /// Matches every event.
    pub fn all() -> Self {
        Query {
            items: vec![QueryItem::new()],
        }
    }

    /// A query of one item.
    pub fn item(item: QueryItem) -> Self {
        Query { items: vec![item] }
    }

    /// Shorthand: events of any of `types` carrying all of `tags`.
    pub fn of<I, S, J, T>(types: I, tags: J) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        J: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Query::item(QueryItem::new().types(types).tags(tags))
    }

    /// Events of any of `types`, whatever their tags. `Query::types(["A"])`
    /// is `Query::of(["A"], [])` with the element type of the empty list
    /// spelled out for you (an empty array literal cannot be inferred when
    /// both `&str` and `String` arrays are accepted).
    ///
    /// ```
    /// use eskv_core::Query;
    /// assert_eq!(Query::types(["A", "B"]), Query::of(["A", "B"], Vec::<String>::new()));
    /// ```
    pub fn types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Query::item(QueryItem::new().types(types))
    }

    /// Events of any type carrying all of `tags`.
    ///
    /// ```
    /// use eskv_core::Query;
    /// assert_eq!(Query::tags(["course:c1"]), Query::of(Vec::<String>::new(), ["course:c1"]));
    /// ```
    pub fn tags<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Query::item(QueryItem::new().tags(tags))
    }

    /// Adds an item (OR).
    pub fn or(mut self, item: QueryItem) -> Self {
        self.items.push(item);
        self
    }

    /// True when any item matches `event`.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.matches_parts(&event.event_type, &event.tags)
    }

    /// True when any item matches an event of this type and tags.
    pub fn matches_parts(&self, event_type: &str, tags: &[String]) -> bool {
        self.items.iter().any(|i| i.matches_parts(event_type, tags))
    }

    /// True when some item matches every event.
    pub fn is_all(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.types.is_empty() && i.tags.is_empty())
    }
}

/// A DCB append condition: the append fails if any event matching
/// `fail_if_events_match` exists at a position after `after` (anywhere when
/// `after` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendCondition {
    /// Events that must not exist.
    pub fail_if_events_match: Query,
    /// Ignore events at or before this position: normally the
    /// [`consistent_through`](crate::ReadResult::consistent_through) of
    /// the read that informed the decision. Not the store's head: a read
    /// cut short by a limit or `until` did not see everything up to the
    /// head.
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fail if `query` matches anything after `after`.
    pub fn new(query: Query, after: Option<Position>) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after,
        }
    }

    /// Fail if `query` matches anything at all (uniqueness).
    pub fn none_match(query: Query) -> Self {
        Self::new(query, None)
    }
}
