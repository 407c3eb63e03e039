//! Validation of names a user supplies: event types, tags, stream ids.

use crate::error::{Error, Result};
use crate::store::Limits;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Event types: 1 to `max_type_len` bytes of ASCII letters, digits and
/// `_ - . : /`, starting with a letter.
pub fn validate_type(t: &str, l: &Limits) -> Result<()> {
    if t.is_empty() {
        return Err(Error::invalid("an event type must not be empty"));
    }
    if t.len() > l.max_type_len {
        return Err(Error::limit(
            format!(
                "length of event type '{}…'",
                &t[..t.floor_char_boundary(32)]
            ),
            l.max_type_len,
            t.len(),
        ));
    }
    let first_ok = t.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
    if !first_ok || !rest_ok {
        return Err(Error::invalid(format!(
            "event type {t:?} is invalid: use ASCII letters, digits and _ - . : /, starting with a letter"
        )));
    }
    Ok(())
}

/// Tags: 1 to `max_tag_len` bytes of UTF-8 without control characters.
pub fn validate_tag(t: &str, l: &Limits) -> Result<()> {
    if t.is_empty() {
        return Err(Error::invalid("a tag must not be empty"));
    }
    if t.len() > l.max_tag_len {
        return Err(Error::limit("tag length (bytes)", l.max_tag_len, t.len()));
    }
    if has_control(t) {
        return Err(Error::invalid(format!(
            "tag {t:?} contains a control character"
        )));
    }
    Ok(())
}

/// Stream ids: 1 to `max_stream_id_len` bytes of UTF-8 without control
/// characters, not starting with `$` (reserved).
pub fn validate_stream_id(s: &str, l: &Limits) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid("a stream id must not be empty"));
    }
    if s.len() > l.max_stream_id_len {
        return Err(Error::limit(
            "stream id length (bytes)",
            l.max_stream_id_len,
            s.len(),
        ));
    }
    if has_control(s) {
        return Err(Error::invalid(format!(
            "stream id {s:?} contains a control character"
        )));
    }
    if s.starts_with('$') {
        return Err(Error::invalid(format!(
            "stream id {s:?} starts with '$', which is reserved"
        )));
    }
    Ok(())
}

/// Data subject ids (personal data): 1 byte or more, without control
/// characters, short enough that the `$subject:` tag of its system events
/// is a valid tag.
pub fn validate_subject(s: &str, l: &Limits) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(
            "a data subject id must not be empty: give the id of the person the personal data belongs to (for example 'user-123')",
        ));
    }
    let tag = crate::lifecycle::subject_tag(s);
    // The limit is the tag's, less the `$subject:` prefix.
    let prefix = (tag.len() - s.len()) as u64;
    validate_tag(&tag, l).map_err(|e| match e {
        Error::InvalidInput { .. } => Error::invalid(format!(
            "data subject id {s:?} contains a control character"
        )),
        Error::LimitExceeded { limit, actual, .. } => Error::LimitExceeded {
            what: "data subject id length (bytes)".into(),
            limit: limit.saturating_sub(prefix),
            actual: actual.saturating_sub(prefix),
        },
        other => other,
    })
}
