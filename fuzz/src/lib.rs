//! The checks behind the fuzz targets: every decoder of stored bytes or
//! user input must return an error on arbitrary input, never panic, and
//! never allocate beyond its input's size (run with `-malloc_limit_mb`).
//! Whatever a decoder accepts must round-trip.
#![forbid(unsafe_code)]

use eskv_core::layout::{self, Index, StreamMeta};
use eskv_core::{envelope, tuple};
use std::str::FromStr;

/// The key tuple codec: `unpack` is total, and canonical: whatever it
/// accepts packs back to the same bytes.
pub fn tuple_unpack(data: &[u8]) {
    if let Ok(t) = tuple::unpack(data) {
        assert_eq!(tuple::pack(&t), data, "unpack accepted a non-canonical key");
    }
    // Element by element, as the layout's parsers read keys.
    let mut r = tuple::KeyReader::new(data);
    while !r.is_empty() {
        if r.element().is_err() {
            break;
        }
    }
}

/// The event envelope. The first 8 bytes (if any) are the position the
/// key names; bit 0 of the next byte asks for a valid checksum over the
/// rest, so the fuzzer reaches the body decoder instead of stopping at
/// the CRC.
pub fn envelope_decode(data: &[u8]) {
    let (pos, rest) = match data.get(..8) {
        Some(p) => (
            u64::from_le_bytes(p.try_into().unwrap_or([0; 8])),
            &data[8..],
        ),
        None => (1, data),
    };
    let bytes = match rest.split_first() {
        Some((flag, body)) if flag & 1 == 1 => {
            let mut v = vec![envelope::FORMAT_V1];
            v.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
            v.extend_from_slice(body);
            v
        }
        _ => rest.to_vec(),
    };
    match envelope::decode(&bytes, pos) {
        Ok(e) => {
            assert_eq!(e.position, pos);
            let again = envelope::encode(&e).expect("a decoded event encodes");
            assert_eq!(envelope::decode(&again, pos).expect("re-decodes"), e);
        }
        Err(eskv_core::Error::Corrupt { position, .. }) => assert_eq!(position, Some(pos)),
        Err(other) => panic!("decode failed with a non-Corrupt error: {other:?}"),
    }
}

/// The layout's key and value parsers. The first byte picks a table tag
/// (the layout's own half the time); strict parsers are canonical.
pub fn layout_parsers(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let tags = layout::table_tags();
    let tag = if sel & 0x80 == 0 {
        tags[sel as usize % tags.len()]
    } else {
        sel
    };
    let mut key = vec![tag];
    key.extend_from_slice(rest);

    if let Ok(p) = layout::parse_log_key_strict(&key) {
        assert_eq!(layout::log_key(p), key);
    }
    if let Ok(id) = layout::parse_id_key(&key) {
        assert_eq!(layout::id_key(id), key);
    }
    if let Ok(s) = layout::parse_stream_meta_key(&key) {
        assert_eq!(layout::stream_key(&s), key);
    }
    if let Ok((s, v)) = layout::parse_stream_event_key(&key) {
        assert_eq!(layout::stream_event_key(&s, v), key);
    }
    if let Ok((s, p)) = layout::parse_positional_key(&key) {
        let rebuilt = [
            layout::type_key(&s, p),
            layout::tag_key(&s, p),
            layout::category_key(&s, p),
        ];
        assert!(rebuilt.contains(&key));
    }
    let _ = layout::parse_log_key(&key);
    let _ = layout::parse_stream_key(&key);
    let _ = layout::parse_meta_key(&key);
    let _ = layout::parse_registry_key(&key);
    let _ = layout::parse_registry_key_strict(&key);
    let _ = Index::Tag("t").parse_position(&key);
    let _ = layout::table_name(tag);

    // Values.
    let _ = layout::parse_u64(rest, "value");
    if let Ok(m) = StreamMeta::decode(rest) {
        assert_eq!(m.encode(), rest);
    }
    if let Ok((t, tags)) = layout::parse_tag_entry(rest) {
        let again = layout::tag_entry_value(&t, &tags).expect("encodes");
        assert_eq!(
            layout::parse_tag_entry(&again).expect("re-decodes"),
            (t, tags)
        );
    }
}

/// Parsers of user input in the CLI: store URLs, query specs, expected
/// versions, times, and import/export lines. Input is taken as UTF-8
/// (invalid sequences replaced), as a shell argument or a line would be.
pub fn cli_parsers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(url) = eskv_cli::url::StoreUrl::from_str(&s) {
        // What parses prints as something that parses again.
        let printed = url.to_string();
        assert!(
            eskv_cli::url::StoreUrl::from_str(&printed).is_ok(),
            "{s:?} parsed, but its display {printed:?} does not"
        );
    }
    let _ = eskv_cli::spec::parse_query_item(&s);
    let _ = eskv_cli::spec::parse_expected(&s);
    let _ = eskv_cli::line::parse_time(&s);
    let _ = eskv_cli::line::EventLine::parse(&s);
    let _ = eskv_cli::export::ExportLine::parse(&s);
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_run() {
        for seed in [
            &b""[..],
            b"\x02ab\x00\x15\x07",
            b"\x01\x00\xff\x00",
            b"\x00\x00\x00\x00\x00\x00\x00\x01\x01\x00",
            b"tikv://a:1,b:2/p",
            b"{\"type\":\"A\"}",
        ] {
            super::tuple_unpack(seed);
            super::envelope_decode(seed);
            super::layout_parsers(seed);
            super::cli_parsers(seed);
        }
    }

    /// A short stable pass: random inputs through every check (the fuzz
    /// targets proper need nightly and cargo-fuzz).
    #[test]
    fn random_inputs() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            super::tuple_unpack(&data);
            super::envelope_decode(&data);
            super::layout_parsers(&data);
            super::cli_parsers(&data);
        }
    }
}
