//! Recording times: milliseconds since the Unix epoch, written as RFC 3339
//! UTC with milliseconds (`2025-01-31T10:00:00.123Z`) wherever eskv writes
//! or reads them as text (serde, export lines, the CLI).
//!
//! Invariant: a stored event's `recorded_at_ms` is at most [`MAX_MS`]; an
//! append takes the clock, and an import refuses a later time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest recording time RFC 3339 can write (four-digit years):
/// `9999-12-31T23:59:59.999Z`.
pub const MAX_MS: u64 = 253_402_300_799_999;

/// Milliseconds since the epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `ms` as RFC 3339 UTC with milliseconds; a time after [`MAX_MS`]
/// is an error naming it.
///
/// ```
/// use eskv_core::recorded_at::{format, parse, MAX_MS};
/// assert_eq!(format(1_700_000_000_123).unwrap(), "2023-11-14T22:13:20.123Z");
/// assert_eq!(parse(&format(MAX_MS).unwrap()).unwrap(), MAX_MS);
/// assert!(format(MAX_MS + 1).is_err());
/// ```
pub fn format(ms: u64) -> Result<String, String> {
    if ms > MAX_MS {
        return Err(out_of_range(ms));
    }
    Ok(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// Reads an RFC 3339 UTC time as milliseconds since the epoch.
///
/// ```
/// assert_eq!(eskv_core::recorded_at::parse("1970-01-01T00:00:01.000Z").unwrap(), 1000);
/// assert!(eskv_core::recorded_at::parse("1969-12-31T23:59:59Z").is_err());
/// ```
pub fn parse(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| format!("recorded_at '{s}' is not an RFC 3339 UTC time: {e}"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("recorded_at '{s}' is before 1970"))?;
    u64::try_from(d.as_millis())
        .ok()
        .filter(|&ms| ms <= MAX_MS)
        .ok_or_else(|| format!("recorded_at '{s}' is after 9999"))
}

/// The message for a time after [`MAX_MS`].
pub fn out_of_range(ms: u64) -> String {
    format!(
        "recording time {ms} ms after 1970 is after 9999-12-31T23:59:59.999Z, the latest an event can carry"
    )
}
