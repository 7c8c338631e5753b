//! Quantities: literals (`4 'mg'`, `7 days`), their comparison across
//! units of one kind, and date and time arithmetic with durations.
//!
//! Units are converted with a small table (the UCUM units of mass, length
//! and time that clinical data use, and FHIRPath's calendar words), not a
//! full UCUM engine: two quantities whose units the table does not relate
//! are not comparable, and the comparison is empty.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, Duration, FixedOffset, Months, NaiveDate, NaiveTime};
use serde_json::{json, Number, Value};

use super::decimal;

/// A quantity item's JSON, as a literal makes it.
pub fn literal(value: &Number, unit: &str) -> Value {
    json!({"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit})
}

/// A quantity's unit: its `code`, else its `unit`.
pub fn unit_of(q: &Value) -> Option<&str> {
    q.get("code")
        .or_else(|| q.get("unit"))
        .and_then(Value::as_str)
}

/// (kind, factor to the kind's base unit) for the units it knows.
fn unit(u: &str) -> (String, BigDecimal) {
    let d = |s: &str| BigDecimal::from_str(s).unwrap_or_default();
    let known = match u {
        "g" => Some(("g", "1")),
        "mg" => Some(("g", "0.001")),
        "ug" => Some(("g", "0.000001")),
        "kg" => Some(("g", "1000")),
        "m" => Some(("m", "1")),
        "cm" => Some(("m", "0.01")),
        "mm" => Some(("m", "0.001")),
        "km" => Some(("m", "1000")),
        "[in_i]" => Some(("m", "0.0254")),
        "s" | "second" | "seconds" => Some(("s", "1")),
        "ms" | "millisecond" | "milliseconds" => Some(("s", "0.001")),
        "min" | "minute" | "minutes" => Some(("s", "60")),
        "h" | "hour" | "hours" => Some(("s", "3600")),
        "d" | "day" | "days" => Some(("s", "86400")),
        "wk" | "week" | "weeks" => Some(("s", "604800")),
        // Calendar months and years are not a fixed number of days.
        "month" | "months" => Some(("month", "1")),
        "year" | "years" => Some(("month", "12")),
        _ => None,
    };
    match known {
        Some((kind, factor)) => (kind.to_string(), d(factor)),
        None => (u.to_string(), BigDecimal::from(1)),
    }
}

/// A quantity's value in its kind's base unit, and the kind.
fn base(q: &Value) -> Option<(BigDecimal, String)> {
    let value = decimal::decimal(q.get("value")?.as_number()?)?;
    let (kind, factor) = unit(unit_of(q)?);
    Some((value * factor, kind))
}

/// Two quantities' order; `None` when their units are not of one kind.
pub fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let ((x, kx), (y, ky)) = (base(a)?, base(b)?);
    (kx == ky).then(|| x.cmp(&y))
}

/// A date, dateTime or time (FHIRPath's text, without `@`) plus or minus
/// a duration, at the precision it was written with. A duration in
/// calendar months or years moves the month; others add their seconds,
/// whole units only (`7.7 days` is 7 days). `Err` when the quantity is not
/// a calendar or time duration; `Ok(None)` when the value cannot move by
/// it (a partial date by days) or the result is out of range.
pub fn shift(text: &str, type_name: &str, q: &Value, sign: i64) -> Result<Option<String>, ()> {
    let value = q
        .get("value")
        .and_then(Value::as_number)
        .and_then(decimal::decimal)
        .ok_or(())?;
    let (kind, factor) = unit(unit_of(q).ok_or(())?);
    let whole: Option<i64> = value.with_scale(0).to_string().parse().ok();
    let Some(amount) = whole.and_then(|w| w.checked_mul(sign)) else {
        return Ok(None);
    };
    Ok(match kind.as_str() {
        "month" => factor
            .to_string()
            .parse::<i64>()
            .ok()
            .and_then(|f| amount.checked_mul(f))
            .and_then(|months| shift_months(text, type_name, months)),
        "s" => (BigDecimal::from(amount) * factor * BigDecimal::from(1000))
            .with_scale(0)
            .to_string()
            .parse()
            .ok()
            .and_then(|millis| shift_millis(text, type_name, millis)),
        _ => return Err(()),
    })
}

fn shift_months(text: &str, type_name: &str, months: i64) -> Option<String> {
    let add = |d: NaiveDate| {
        if months >= 0 {
            d.checked_add_months(Months::new(months as u32))
        } else {
            d.checked_sub_months(Months::new(months.unsigned_abs() as u32))
        }
    };
    match type_name {
        "Date" if text.len() == 10 => Some(add(date(text)?)?.format("%Y-%m-%d").to_string()),
        // A year, or a year and month: moved at that precision.
        "Date" if text.len() == 4 || text.len() == 7 => {
            let (year, month) = match text.split_once('-') {
                Some((y, m)) => (y.parse::<i64>().ok()?, Some(m.parse::<i64>().ok()?)),
                None => (text.parse::<i64>().ok()?, None),
            };
            let index = year * 12 + month.unwrap_or(1) - 1 + months;
            let (y, m) = (index.div_euclid(12), index.rem_euclid(12) + 1);
            if !(1..=9999).contains(&y) {
                return None;
            }
            Some(match month {
                Some(_) => format!("{y:04}-{m:02}"),
                None if months % 12 == 0 => format!("{y:04}"),
                None => return None,
            })
        }
        "DateTime" => {
            let (dt, rest) = text.split_at(10.min(text.len()));
            Some(format!("{}{rest}", add(date(dt)?)?.format("%Y-%m-%d")))
        }
        _ => None,
    }
}

fn shift_millis(text: &str, type_name: &str, millis: i64) -> Option<String> {
    let by = Duration::milliseconds(millis);
    match type_name {
        // A date moves by whole days.
        "Date" if text.len() == 10 => {
            let days = millis / 86_400_000;
            Some(
                (date(text)? + Duration::days(days))
                    .format("%Y-%m-%d")
                    .to_string(),
            )
        }
        "DateTime" => {
            let parsed = DateTime::<FixedOffset>::parse_from_rfc3339(text).ok()?;
            let moved = parsed + by;
            Some(moved.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string())
        }
        "Time" => {
            let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok()?;
            Some((t + by).format("%H:%M:%S%.3f").to_string())
        }
        _ => None,
    }
}

fn date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(value: i64, unit: &str) -> Value {
        literal(&Number::from(value), unit)
    }

    #[test]
    fn dates_move_at_their_precision() {
        assert_eq!(
            shift("1970-06", "Date", &q(18, "years"), 1),
            Ok(Some("1988-06".into()))
        );
        assert_eq!(
            shift("1970", "Date", &q(18, "years"), 1),
            Ok(Some("1988".into()))
        );
        assert_eq!(
            shift("1970-01", "Date", &q(1, "month"), -1),
            Ok(Some("1969-12".into()))
        );
        // Days do not move a month; 'cm' is no duration at all.
        assert_eq!(shift("1970-06", "Date", &q(3, "days"), 1), Ok(None));
        assert_eq!(shift("1970-06-01", "Date", &q(3, "cm"), 1), Err(()));
        assert_eq!(
            shift("2000-02-29", "Date", &q(1, "year"), 1),
            Ok(Some("2001-02-28".into()))
        );
        assert_eq!(
            shift(
                "2026-12-30T23:00:00.000+01:00",
                "DateTime",
                &q(2, "hours"),
                1
            ),
            Ok(Some("2026-12-31T01:00:00.000+01:00".into()))
        );
    }
}
