//! Time in the two shapes the documents use: epoch seconds as a JSON number
//! (Trae) and ISO-8601 UTC strings (Agent Protocol). Stored as epoch millis.

use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Epoch seconds with millisecond precision, e.g. 1640995200.123.
pub fn epoch_secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// "2024-01-15T10:30:00Z": second precision with a `Z`, exactly the
/// document's shape.
pub fn iso(ms: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 / ISO-8601 instant (with offset or `Z`) to epoch millis.
pub fn parse_iso(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips_at_second_precision() {
        let ms = 1_705_314_600_000; // 2024-01-15T10:30:00Z
        assert_eq!(iso(ms), "2024-01-15T10:30:00Z");
        assert_eq!(parse_iso("2024-01-15T10:30:00Z"), Some(ms));
        assert_eq!(parse_iso("2024-01-15T11:30:00+01:00"), Some(ms));
        assert_eq!(parse_iso("yesterday"), None);
    }
}
