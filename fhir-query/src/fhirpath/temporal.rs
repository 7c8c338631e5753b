//! Comparing dates, dateTimes and times written to different precisions
//! (FHIRPath 6.1.5 and 6.2.1): component by component from the year (or
//! the hour); where one value stops and the other goes on, with all the
//! components before equal, the answer is unknown (empty). Seconds and
//! their fraction are one precision: `10:30:00` equals `10:30:00.0`.

use std::cmp::Ordering;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, FixedOffset, NaiveDateTime};

/// The components of a date, dateTime or time (its time zone set aside),
/// the seconds with their fraction; `None` if the text is not one.
fn components(text: &str) -> Option<Vec<BigDecimal>> {
    let text = text.trim_start_matches('@');
    let (date, time) = if let Some(time) = text.strip_prefix('T') {
        ("", time)
    } else if text.len() >= 4 && text.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        text.split_once('T').unwrap_or((text, ""))
    } else if text.len() >= 2 && text.as_bytes()[..2].iter().all(u8::is_ascii_digit) {
        ("", text)
    } else {
        return None;
    };
    let mut out = Vec::new();
    if !date.is_empty() {
        for part in date.split('-') {
            out.push(BigDecimal::from_str(part).ok()?);
        }
    }
    let time = time
        .trim_end_matches('Z')
        .split(['+', '-'])
        .next()
        .unwrap_or("");
    if !time.is_empty() {
        for part in time.split(':') {
            out.push(BigDecimal::from_str(part).ok()?);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The order of two temporal texts; `None` when it depends on components
/// one of them does not have, or either is not a date or time.
pub fn compare(x: &str, y: &str) -> Option<Ordering> {
    let (a, b) = (components(x)?, components(y)?);
    // A time with a zone and one without: their order is not known.
    if a.len() > 3 && b.len() > 3 && has_zone(x) != has_zone(y) {
        return None;
    }
    for (p, q) in a.iter().zip(&b) {
        match p.cmp(q) {
            Ordering::Equal => continue,
            other => return Some(other),
        }
    }
    (a.len() == b.len()).then_some(Ordering::Equal)
}

/// A time's or dateTime's instant, for comparing across offsets:
/// `2017-11-05T01:30:00.0-04:00` is after `2017-11-05T01:15:00.0-05:00`.
pub fn instant(text: &str) -> Option<NaiveDateTime> {
    DateTime::<FixedOffset>::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.naive_utc())
}

/// Whether `text` is a FHIR date or dateTime as JSON writes one
/// (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or with a time to the second and a
/// zone): two untyped elements in this form (a Period's `start` and `end`)
/// compare as dates, not as text.
pub fn is_date_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date_ok = match b.len().min(10) {
        4 => digits(0..4),
        7 => digits(0..4) && b[4] == b'-' && digits(5..7),
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        _ => false,
    };
    if !date_ok {
        return false;
    }
    match text.get(10..) {
        None | Some("") => true,
        Some(time) => time.starts_with('T') && instant(text).is_some(),
    }
}

/// Whether a dateTime's time carries a zone (`Z`, `+hh:mm`, `-hh:mm`).
fn has_zone(text: &str) -> bool {
    text.split_once('T')
        .is_some_and(|(_, time)| time.contains(['Z', '+', '-']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_decides_or_leaves_unknown() {
        assert_eq!(
            compare("2012-04-15T15:30:31", "2012-04-15T15:30:31.0"),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare("2012-04-15T15:30:31", "2012-04-15T15:30:31.1"),
            Some(Ordering::Less)
        );
        assert_eq!(compare("T10:30", "T10:30:00"), None);
        assert_eq!(compare("2012", "2013-01"), Some(Ordering::Less));
        assert_eq!(compare("2012", "2012-01"), None);
        assert_eq!(compare("10:30:00", "10:30:00.0"), Some(Ordering::Equal));
        assert_eq!(compare("hello", "2012"), None);
        assert_eq!(compare("2012-04-15T15:00:00Z", "2012-04-15T10:00:00"), None);
        assert!(is_date_time("2001-05-06") && is_date_time("2001-05-06T10:10:10Z"));
        assert!(is_date_time("2001") && is_date_time("2001-05"));
        assert!(
            !is_date_time("2001-5") && !is_date_time("12345") && !is_date_time("2001-05-06T10")
        );
    }
}
