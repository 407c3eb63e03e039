//! Event ids: both protocols name events by UUID, eskv by ULID. Both are
//! 128 bits, so a UUID's bits are used as the eskv id unchanged: the
//! mapping is a bijection, and an event re-sent with the same UUID is an
//! idempotent replay in eskv.

use eskv_core::Ulid;

/// Parses a UUID written as 32 hex digits, with or without the four
/// hyphens of the 8-4-4-4-12 form (either case).
pub(crate) fn parse_uuid(s: &str) -> Result<Ulid, String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let hyphens_ok = s.len() == 32
        || (s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-'));
    if hex.len() != 32 || !hyphens_ok || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "event id {s:?} is not a UUID: give 32 hex digits, optionally as 8-4-4-4-12"
        ));
    }
    u128::from_str_radix(&hex, 16)
        .map(Ulid)
        .map_err(|e| format!("event id {s:?} is not a UUID: {e}"))
}

/// The id as a lowercase hyphenated UUID.
pub(crate) fn uuid_text(id: Ulid) -> String {
    let h = format!("{:032x}", id.0);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The id as two big-endian halves (KurrentDB's structured UUID).
pub(crate) fn uuid_halves(id: Ulid) -> (i64, i64) {
    ((id.0 >> 64) as u64 as i64, id.0 as u64 as i64)
}

/// The id from two big-endian halves.
pub(crate) fn from_halves(most: i64, least: i64) -> Ulid {
    Ulid(((most as u64 as u128) << 64) | least as u64 as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_through_ids() {
        let text = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let id = parse_uuid(text).unwrap();
        assert_eq!(uuid_text(id), text);
        assert_eq!(parse_uuid(&text.replace('-', "")).unwrap(), id);
        assert_eq!(parse_uuid(&text.to_uppercase()).unwrap(), id);
        let (m, l) = uuid_halves(id);
        assert_eq!(from_halves(m, l), id);
        assert_eq!(m as u64, 0x0f8fad5bd9cb469f);
        for bad in [
            "",
            "0f8fad5b",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "0f8fad5bd-9cb-469f-a165-70867728950e",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }
}
