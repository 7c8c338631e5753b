//! FHIR `instant` values: parsing (strict) and formatting (microseconds, UTC).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Why a text is not a FHIR instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstantError {
    #[error("'{0}' is not a FHIR instant (expected e.g. 2024-01-31T12:00:00Z, with a time and a time zone)")]
    Shape(String),
    #[error("'{text}' is not a valid FHIR instant: {why}")]
    Invalid { text: String, why: String },
}

/// Parses a FHIR instant: `YYYY-MM-DDThh:mm:ss(.f+)?(Z|±hh:mm)`.
/// Dates without a time or a zone are refused: an export boundary must be exact.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, InstantError> {
    let b = s.as_bytes();
    let shape_ok = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':';
    if !shape_ok {
        return Err(InstantError::Shape(s.to_string()));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| InstantError::Invalid {
            text: s.to_string(),
            why: e.to_string(),
        })
}

/// Formats an instant the way the store writes `meta.lastUpdated`.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Microseconds since the epoch: the store's ordering key for versions.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 9110 HTTP-date, for the `Expires` header.
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_instants() {
        let t = parse_instant("2024-01-31T12:00:00Z").unwrap();
        assert_eq!(format_instant(t), "2024-01-31T12:00:00.000000Z");
        let t = parse_instant("2024-01-31T14:00:00.123+02:00").unwrap();
        assert_eq!(format_instant(t), "2024-01-31T12:00:00.123000Z");
    }

    #[test]
    fn refuses_dates_and_garbage() {
        for bad in [
            "2024-01-31",
            "2024-01-31T12:00:00",
            "yesterday",
            "",
            "2024-13-01T00:00:00Z",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn micros_round_trip_and_http_date() {
        let t = parse_instant("2024-02-29T23:59:59.999999Z").unwrap();
        assert_eq!(from_micros(to_micros(t)), t);
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 23:59:59 GMT");
    }
}
