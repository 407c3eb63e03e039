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
    ///
    /// Both lists take arrays of string literals, `Vec<String>`,
    /// `Vec<&str>` and slices (see [`Names`]), and an empty array needs no
    /// type annotation:
    ///
    /// ```
    /// use eskv_core::Query;
    /// let course = String::from("course:c1");
    /// let q = Query::of(["StudentSubscribed"], [course.as_str()]);
    /// assert_eq!(q, Query::of(vec!["StudentSubscribed".to_string()], vec![course.clone()]));
    /// assert_eq!(Query::of(["A"], []), Query::types(["A"]));
    /// assert_eq!(Query::of([], ["t:1"]), Query::tags(["t:1"]));
    /// assert_eq!(Query::of(&["A", "B"][..], &vec![course]), Query::of(["A", "B"], ["course:c1"]));
    /// ```
    pub fn of(types: impl Names, tags: impl Names) -> Self {
        Query::item(
            QueryItem::new()
                .types(types.into_names())
                .tags(tags.into_names()),
        )
    }

    /// Events of any of `types`, whatever their tags (the same as
    /// `Query::of(types, [])`); takes any iterator of strings.
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

/// A list of names (event types or tags) for [`Query::of`].
///
/// Implemented for arrays of `&str` (string literals, including the empty
/// array `[]`), `Vec<String>`, `Vec<&str>`, slices of either, references
/// to them, and iterators made with `.map(..)`, `.copied()` or
/// `.cloned()`. Arrays of `String` are not: with both kinds of
/// arrays accepted, the element type of `[]` could not be inferred. Use
/// `vec![...]` for owned strings, or [`QueryItem::types`] and
/// [`QueryItem::tags`], which take any iterator.
///
/// ```
/// use eskv_core::query::Names;
/// assert_eq!(["b", "a"].into_names(), ["b", "a"]);
/// assert!(<[&str; 0] as Names>::into_names([]).is_empty());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a list of names for `Query::of`",
    note = "pass an array of string literals (`[\"A\"]`, `[]`), a `Vec<String>`, a `Vec<&str>` or a slice; for owned strings use `vec![...]`, for any iterator `QueryItem::types`/`QueryItem::tags`"
)]
pub trait Names {
    /// The names, in the given order.
    fn into_names(self) -> Vec<String>;
}

impl<const N: usize> Names for [&str; N] {
    fn into_names(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl<const N: usize> Names for &[&str; N] {
    fn into_names(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl<const N: usize> Names for &[String; N] {
    fn into_names(self) -> Vec<String> {
        self.to_vec()
    }
}

impl Names for &[&str] {
    fn into_names(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl Names for &[String] {
    fn into_names(self) -> Vec<String> {
        self.to_vec()
    }
}

impl Names for Vec<String> {
    fn into_names(self) -> Vec<String> {
        self
    }
}

impl Names for &Vec<String> {
    fn into_names(self) -> Vec<String> {
        self.clone()
    }
}

impl Names for Vec<&str> {
    fn into_names(self) -> Vec<String> {
        self.into_iter().map(str::to_owned).collect()
    }
}

impl Names for &Vec<&str> {
    fn into_names(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

/// Iterator adapters (`.map(..)`, `.copied()`, `.cloned()`) of names.
macro_rules! names_from_iterators {
    ($($adapter:ident<$($p:ident),*>),*) => {$(
        impl<$($p),*> Names for std::iter::$adapter<$($p),*>
        where
            std::iter::$adapter<$($p),*>: Iterator,
            <std::iter::$adapter<$($p),*> as Iterator>::Item: Into<String>,
        {
            fn into_names(self) -> Vec<String> {
                self.map(Into::into).collect()
            }
        }
    )*};
}
names_from_iterators!(Map<I, F>, Copied<I>, Cloned<I>);

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
