//! Order-preserving, injective tuple encoding for keys, in the style of the
//! FoundationDB tuple layer.
//!
//! Invariants (property-tested below):
//! - `unpack(pack(t)) == t` for every tuple;
//! - comparing two packed tuples byte by byte gives the same order as
//!   comparing the tuples element by element;
//! - no packed tuple is a byte prefix of a packed tuple that differs from it
//!   in a shared element, so a prefix scan over a packed tuple `p` returns
//!   exactly the tuples that start with the elements of `p`: `("ab")` and
//!   `("a", "b")` never collide.
//!
//! Encoding per element (type code first; codes order the types):
//! - bytes `0x01` and strings `0x02`: the content with every `0x00` escaped as
//!   `0x00 0xFF`, then a `0x00` terminator;
//! - unsigned integers `0x14 + n`, then the `n` significant big-endian bytes
//!   (`n` = 0..=8, so 0 is the single byte `0x14`);
//! - ULIDs `0x30`, then 16 big-endian bytes.

use crate::error::{Error, Result};
use ulid::Ulid;

const BYTES: u8 = 0x01;
const STR: u8 = 0x02;
const INT_ZERO: u8 = 0x14;
const INT_MAX: u8 = 0x1C;
const ULID: u8 = 0x30;
const ESCAPE: u8 = 0xFF;

/// One element of a key tuple.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// Raw bytes (may contain `0x00`).
    Bytes(Vec<u8>),
    /// A UTF-8 string (may contain `\0`).
    Str(String),
    /// An unsigned integer.
    U64(u64),
    /// A ULID.
    Ulid(Ulid),
}

// The derived `Ord` orders by variant first, matching the type codes above.

/// Appends packed elements to a key buffer.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    buf: Vec<u8>,
}

impl KeyBuilder {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from raw bytes, for example a one-byte table tag.
    pub fn with_raw(raw: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(raw.len() + 24);
        buf.extend_from_slice(raw);
        KeyBuilder { buf }
    }

    /// Appends a byte-string element.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.push(BYTES);
        escape_into(&mut self.buf, b);
        self.buf.push(0);
        self
    }

    /// Appends a string element.
    pub fn str(mut self, s: &str) -> Self {
        self.buf.push(STR);
        escape_into(&mut self.buf, s.as_bytes());
        self.buf.push(0);
        self
    }

    /// Appends the *unterminated* start of a string element: every packed
    /// key whose next element is a string starting with `s` begins with the
    /// result. Use with [`prefix_range`] for "id starts with" scans.
    pub fn str_prefix(mut self, s: &str) -> Self {
        self.buf.push(STR);
        escape_into(&mut self.buf, s.as_bytes());
        self
    }

    /// Appends an unsigned integer element.
    pub fn u64(mut self, v: u64) -> Self {
        let n = 8 - (v.leading_zeros() / 8) as usize;
        self.buf.push(INT_ZERO + n as u8);
        self.buf.extend_from_slice(&v.to_be_bytes()[8 - n..]);
        self
    }

    /// Appends a ULID element.
    pub fn ulid(mut self, u: Ulid) -> Self {
        self.buf.push(ULID);
        self.buf.extend_from_slice(&u.to_bytes());
        self
    }

    /// Appends any element.
    pub fn element(self, e: &Element) -> Self {
        match e {
            Element::Bytes(b) => self.bytes(b),
            Element::Str(s) => self.str(s),
            Element::U64(v) => self.u64(*v),
            Element::Ulid(u) => self.ulid(*u),
        }
    }

    /// The packed key.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn escape_into(buf: &mut Vec<u8>, b: &[u8]) {
    for &byte in b {
        buf.push(byte);
        if byte == 0 {
            buf.push(ESCAPE);
        }
    }
}

/// Packs a whole tuple.
pub fn pack(elements: &[Element]) -> Vec<u8> {
    elements
        .iter()
        .fold(KeyBuilder::new(), |k, e| k.element(e))
        .finish()
}

/// Unpacks a whole tuple; any trailing garbage or malformed element is an
/// [`Error::Corrupt`].
pub fn unpack(bytes: &[u8]) -> Result<Vec<Element>> {
    let mut r = KeyReader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.element()?);
    }
    Ok(out)
}

/// Reads packed elements one at a time.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Reads from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        KeyReader { rest: bytes }
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Skips `n` raw bytes (for example a table tag).
    pub fn skip_raw(&mut self, n: usize) -> Result<()> {
        if self.rest.len() < n {
            return Err(bad("key shorter than its raw prefix"));
        }
        self.rest = &self.rest[n..];
        Ok(())
    }

    /// Reads the next element of any type.
    pub fn element(&mut self) -> Result<Element> {
        let code = *self.rest.first().ok_or_else(|| bad("missing element"))?;
        Ok(match code {
            BYTES => Element::Bytes(self.bytes()?),
            STR => Element::Str(self.str()?),
            INT_ZERO..=INT_MAX => Element::U64(self.u64()?),
            ULID => Element::Ulid(self.ulid()?),
            other => return Err(bad(&format!("unknown element type code 0x{other:02x}"))),
        })
    }

    fn escaped(&mut self, code: u8) -> Result<Vec<u8>> {
        if self.rest.first() != Some(&code) {
            return Err(bad("unexpected element type"));
        }
        let mut out = Vec::new();
        let mut i = 1;
        loop {
            match self.rest.get(i) {
                None => return Err(bad("unterminated string element")),
                Some(0) => {
                    if self.rest.get(i + 1) == Some(&ESCAPE) {
                        out.push(0);
                        i += 2;
                    } else {
                        self.rest = &self.rest[i + 1..];
                        return Ok(out);
                    }
                }
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }

    /// Skips a string element without copying it (nor checking that it
    /// is UTF-8): for keys found under a known string's prefix.
    pub fn skip_str(&mut self) -> Result<()> {
        if self.rest.first() != Some(&STR) {
            return Err(bad("unexpected element type"));
        }
        let mut i = 1;
        loop {
            match self.rest.get(i) {
                None => return Err(bad("unterminated string element")),
                Some(0) if self.rest.get(i + 1) == Some(&ESCAPE) => i += 2,
                Some(0) => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(());
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Reads a byte-string element.
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        self.escaped(BYTES)
    }

    /// Reads a string element.
    pub fn str(&mut self) -> Result<String> {
        String::from_utf8(self.escaped(STR)?).map_err(|_| bad("string element is not UTF-8"))
    }

    /// Reads an unsigned integer element.
    pub fn u64(&mut self) -> Result<u64> {
        let code = *self.rest.first().ok_or_else(|| bad("missing integer"))?;
        if !(INT_ZERO..=INT_MAX).contains(&code) {
            return Err(bad("expected an integer element"));
        }
        let n = (code - INT_ZERO) as usize;
        let body = self
            .rest
            .get(1..1 + n)
            .ok_or_else(|| bad("truncated integer"))?;
        if n > 0 && body[0] == 0 {
            return Err(bad("non-canonical integer encoding"));
        }
        let mut be = [0u8; 8];
        be[8 - n..].copy_from_slice(body);
        self.rest = &self.rest[1 + n..];
        Ok(u64::from_be_bytes(be))
    }

    /// Reads a ULID element.
    pub fn ulid(&mut self) -> Result<Ulid> {
        if self.rest.first() != Some(&ULID) {
            return Err(bad("expected a ULID element"));
        }
        let body: [u8; 16] = self
            .rest
            .get(1..17)
            .ok_or_else(|| bad("truncated ULID"))?
            .try_into()
            .map_err(|_| bad("truncated ULID"))?;
        self.rest = &self.rest[17..];
        Ok(Ulid::from_bytes(body))
    }
}

fn bad(what: &str) -> Error {
    Error::corrupt(None, format!("malformed key: {what}"))
}

/// The keys of every tuple that extends the packed tuple `packed` by at
/// least one element: `[packed ++ 0x00, packed ++ 0xFF)`. Unlike a raw
/// byte-prefix range this never catches a sibling whose last string or
/// byte element merely continues with an escaped `0x00` (`("a")` versus
/// `("a\0")`), because escapes continue with `0xFF` and element type codes
/// lie strictly between `0x00` and `0xFF`.
pub fn children_range(packed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = packed.to_vec();
    start.push(0x00);
    let mut end = packed.to_vec();
    end.push(0xFF);
    (start, end)
}

/// The half-open range `[prefix, successor)` of every key that starts with
/// `prefix`. An empty or all-`0xFF` prefix has no finite successor; the end
/// is then `None` (unbounded).
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    (prefix.to_vec(), prefix_successor(prefix))
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn element() -> impl Strategy<Value = Element> {
        prop_oneof![
            proptest::collection::vec(prop_oneof![Just(0u8), Just(0xFF), any::<u8>()], 0..6)
                .prop_map(Element::Bytes),
            "[a\\x00b\u{e9}]{0,5}".prop_map(Element::Str),
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..300].prop_map(Element::U64),
            any::<u128>().prop_map(|v| Element::Ulid(Ulid(v))),
        ]
    }

    fn tuple() -> impl Strategy<Value = Vec<Element>> {
        proptest::collection::vec(element(), 0..4)
    }

    proptest! {
        #[test]
        fn roundtrip(t in tuple()) {
            prop_assert_eq!(unpack(&pack(&t)).unwrap(), t);
        }

        #[test]
        fn order_preserved(a in tuple(), b in tuple()) {
            prop_assert_eq!(pack(&a).cmp(&pack(&b)), a.cmp(&b));
        }

        #[test]
        fn children_scan_is_exact(p in tuple(), t in tuple()) {
            let pp = pack(&p);
            let pt = pack(&t);
            let (start, end) = children_range(&pp);
            let in_range = pt >= start && pt < end;
            prop_assert_eq!(in_range, t.len() > p.len() && t.starts_with(&p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(t) = unpack(&b) {
                // Whatever decodes must re-encode to the same bytes (canonical).
                prop_assert_eq!(pack(&t), b);
            }
        }

        #[test]
        fn str_prefix_matches_starts_with(p in "[ab\\x00]{0,3}", s in "[ab\\x00]{0,4}") {
            let key = KeyBuilder::new().str(&s).u64(1).finish();
            let (start, end) = prefix_range(&KeyBuilder::new().str_prefix(&p).finish());
            let in_range = key >= start && end.is_none_or(|e| key < e);
            prop_assert_eq!(in_range, s.starts_with(&p));
        }
    }

    #[test]
    fn siblings_do_not_collide() {
        let ab = pack(&[Element::Str("ab".into())]);
        let a_b = pack(&[Element::Str("a".into()), Element::Str("b".into())]);
        assert_ne!(ab, a_b);
        let (start, end) = children_range(&pack(&[Element::Str("a".into())]));
        assert!(!(ab >= start && ab < end));
        assert!(a_b >= start && a_b < end);
        // The escaped-NUL sibling is not a child either.
        let a_nul = pack(&[Element::Str("a\0".into()), Element::U64(1)]);
        assert!(!(a_nul >= start && a_nul < end));
    }
}
