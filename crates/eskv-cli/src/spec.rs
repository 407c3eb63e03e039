//! Small command-line languages: DCB query items and expected versions.
//!
//! A query item is `types=A,B;tags=x,y`: events of type `A` or `B` that
//! carry both tags `x` and `y`. Either part may be left out (`tags=x`
//! matches any type), `type=`/`tag=` are accepted too, and an empty item
//! (`''` or `*`) matches every event. A backslash escapes the next
//! character, so tags may contain `,`, `;` or `=` (`tags=a\,b`). Several
//! items are ORed. Spaces around keys and values are ignored
//! (`types = A, B; tags = x`); escape one (`\ `) to keep it.
//!
//! ```
//! use eskv_cli::spec::{parse_expected, parse_query_item};
//! use eskv::ExpectedVersion;
//! let item = parse_query_item("types=CourseDefined,StudentSubscribed;tags=course:c1").unwrap();
//! assert_eq!(item.types, ["CourseDefined", "StudentSubscribed"]);
//! assert_eq!(item.tags, ["course:c1"]);
//! assert_eq!(parse_expected("no-stream").unwrap(), ExpectedVersion::NoStream);
//! assert_eq!(parse_expected("3").unwrap(), ExpectedVersion::Exact(3));
//! ```

use eskv::{ExpectedVersion, QueryItem};

/// Parses one query item (see the module docs).
pub fn parse_query_item(spec: &str) -> Result<QueryItem, String> {
    let mut item = QueryItem::new();
    if spec.trim() == "*" {
        return Ok(item);
    }
    for part in split_unescaped(spec, ';') {
        if part.trim().is_empty() {
            continue;
        }
        let mut kv = split_unescaped(&part, '=').into_iter();
        let key = kv.next().unwrap_or_default();
        let rest: Vec<String> = kv.collect();
        if rest.is_empty() {
            return Err(format!(
                "query part '{}' is not KEY=VALUES; write types=A,B;tags=x,y",
                unescape(&part)
            ));
        }
        // An unescaped '=' inside the values is kept as part of them.
        let values = rest.join("=");
        let values: Vec<String> = split_unescaped(&values, ',')
            .iter()
            .map(|v| unescape_trimmed(v))
            .collect();
        match unescape(&key).trim() {
            "types" | "type" => {
                let types = values;
                if types.iter().any(String::is_empty) {
                    return Err(format!(
                        "query part '{}' has an empty type",
                        unescape(&part)
                    ));
                }
                item = item.types(types);
            }
            "tags" | "tag" => {
                if values.iter().any(String::is_empty) {
                    return Err(format!("query part '{}' has an empty tag", unescape(&part)));
                }
                item = item.tags(values);
            }
            other => {
                return Err(format!(
                    "unknown query key '{other}'; use types=A,B and/or tags=x,y, separated by ';'"
                ))
            }
        }
    }
    Ok(item)
}

/// Parses an expected version: `any`, `no-stream`, `exists` or a version
/// number (1 or more).
pub fn parse_expected(s: &str) -> Result<ExpectedVersion, String> {
    match s.trim() {
        "any" => Ok(ExpectedVersion::Any),
        "no-stream" | "nostream" | "none" => Ok(ExpectedVersion::NoStream),
        "exists" | "stream-exists" => Ok(ExpectedVersion::StreamExists),
        n => match n.parse::<u64>() {
            Ok(0) => Err(
                "expected version 0 does not exist: versions start at 1; use no-stream for a new stream"
                    .into(),
            ),
            Ok(v) => Ok(ExpectedVersion::Exact(v)),
            Err(_) => Err(format!(
                "'{n}' is not an expected version; use any, no-stream, exists or a version number"
            )),
        },
    }
}

/// Splits on `sep` where it is not escaped by a backslash; escapes are
/// kept in the pieces (see [`unescape`]).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            cur.push(c);
        }
    }
    out
}

/// [`unescape`], without the whitespace around the value: `tags = a, b`
/// means the tags `a` and `b`. An escaped space (`a\ `) is kept.
fn unescape_trimmed(s: &str) -> String {
    let mut chars: Vec<(char, bool)> = Vec::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => chars.extend(it.next().map(|n| (n, true))),
            c => chars.push((c, false)),
        }
    }
    let plain_space = |&(c, escaped): &(char, bool)| !escaped && c.is_whitespace();
    let start = chars
        .iter()
        .position(|c| !plain_space(c))
        .unwrap_or(chars.len());
    let end = chars
        .iter()
        .rposition(|c| !plain_space(c))
        .map_or(start, |i| i + 1);
    chars[start..end.max(start)]
        .iter()
        .map(|&(c, _)| c)
        .collect()
}

/// Removes escaping backslashes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn items() {
        let i = parse_query_item("types=B,A;tags=y,x").unwrap();
        assert_eq!(i.types, ["A", "B"]);
        assert_eq!(i.tags, ["x", "y"]);
        let i = parse_query_item("tag=a\\,b;tag=c\\;d;tag=k=v").unwrap();
        assert_eq!(i.tags, ["a,b", "c;d", "k=v"]);
        assert_eq!(parse_query_item("*").unwrap(), QueryItem::new());
        assert_eq!(parse_query_item("").unwrap(), QueryItem::new());
        assert_eq!(parse_query_item("type=A;").unwrap().types, ["A"]);
        assert_eq!(
            parse_query_item(" types = A , B ").unwrap().types,
            ["A", "B"]
        );
        // Spaces around a tag are the user's layout, not part of it; an
        // escaped one is kept.
        let i = parse_query_item("types = A ; tags = email:a@x , tenant:t1 ").unwrap();
        assert_eq!(
            (i.types, i.tags),
            (
                vec!["A".to_owned()],
                vec!["email:a@x".to_owned(), "tenant:t1".to_owned()]
            )
        );
        assert_eq!(
            parse_query_item("tags=a\\ ,\\ b").unwrap().tags,
            [" b", "a "]
        );
        assert!(parse_query_item("tags=a, ,b")
            .unwrap_err()
            .contains("empty tag"));
        assert!(parse_query_item("colour=red")
            .unwrap_err()
            .contains("unknown query key"));
        assert!(parse_query_item("types")
            .unwrap_err()
            .contains("KEY=VALUES"));
        assert!(parse_query_item("tags=a,,b")
            .unwrap_err()
            .contains("empty tag"));
        assert!(parse_query_item("types=")
            .unwrap_err()
            .contains("empty type"));
    }

    #[test]
    fn expected() {
        assert_eq!(parse_expected("any").unwrap(), ExpectedVersion::Any);
        assert_eq!(
            parse_expected("exists").unwrap(),
            ExpectedVersion::StreamExists
        );
        assert_eq!(parse_expected("7").unwrap(), ExpectedVersion::Exact(7));
        assert!(parse_expected("0").unwrap_err().contains("no-stream"));
        assert!(parse_expected("-1")
            .unwrap_err()
            .contains("not an expected version"));
    }

    proptest! {
        #[test]
        fn query_parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_query_item(&s);
            let _ = parse_expected(&s);
        }

        #[test]
        fn escaped_tags_round_trip(tags in proptest::collection::vec("[a-z,;=\\\\: ]{1,8}", 1..4)) {
            let esc = |t: &str| t.replace('\\', "\\\\").replace(',', "\\,").replace(';', "\\;").replace(' ', "\\ ");
            let spec = format!("tags={}", tags.iter().map(|t| esc(t)).collect::<Vec<_>>().join(","));
            let item = parse_query_item(&spec).unwrap();
            let mut want = tags.clone();
            want.sort();
            want.dedup();
            prop_assert_eq!(item.tags, want);
        }
    }
}
