//! Conversions (FHIRPath 5.5): `toX()` and `convertsToX()` for Boolean,
//! Integer, Decimal, String, Date, DateTime, Time and Quantity. A value
//! that does not convert gives an empty result (and `convertsToX()` false);
//! more than one item is an error.

use std::borrow::Cow;

use serde_json::{json, Value};

use super::decimal;
use super::eval::{bool_item, EvalError, Item};
use super::functions::{arity, Out};
use super::parse::Expr;

/// The conversion functions `call` knows.
pub const NAMES: &[&str] = &[
    "toBoolean",
    "convertsToBoolean",
    "toInteger",
    "convertsToInteger",
    "toDecimal",
    "convertsToDecimal",
    "convertsToString",
    "toDate",
    "convertsToDate",
    "toDateTime",
    "convertsToDateTime",
    "toTime",
    "convertsToTime",
    "toQuantity",
    "convertsToQuantity",
];

pub fn call<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr]) -> Out<'a> {
    // toQuantity(unit) and convertsToQuantity(unit): the unit is not
    // converted to (no UCUM here), so a unit argument is refused.
    arity(name, args, &[0])?;
    let item = match input.as_slice() {
        [] => return Ok(Vec::new()),
        [one] => one,
        _ => return Err(EvalError(format!("{name}() takes a single item"))),
    };
    let (target, test) = match name.strip_prefix("convertsTo") {
        Some(t) => (t, true),
        None => (name.trim_start_matches("to"), false),
    };
    let converted = convert(item, target);
    Ok(if test {
        vec![bool_item(converted.is_some())]
    } else {
        converted.into_iter().collect()
    })
}

/// The item as `target`, if it converts.
pub fn convert<'a>(item: &Item, target: &str) -> Option<Item<'a>> {
    let v = item.value.as_ref();
    match target {
        "Boolean" => to_boolean(v).map(bool_item),
        "Integer" => to_integer(item).map(|n| Item::owned(Value::from(n), "Integer")),
        "Decimal" => to_decimal(v).map(|d| Item::owned(decimal::number(&d), "Decimal")),
        "String" => to_string(item).map(|s| Item::owned(Value::String(s), "String")),
        "Date" => temporal(item, Kind::Date).map(|s| Item::owned(Value::String(s), "Date")),
        "DateTime" => {
            temporal(item, Kind::DateTime).map(|s| Item::owned(Value::String(s), "DateTime"))
        }
        "Time" => temporal(item, Kind::Time).map(|s| Item::owned(Value::String(s), "Time")),
        "Quantity" => to_quantity(item).map(|q| Item::owned(q, "Quantity")),
        _ => None,
    }
}

fn to_boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => {
            let d = decimal::decimal(n)?;
            if d == 1 {
                Some(true)
            } else if d == 0 {
                Some(false)
            } else {
                None
            }
        }
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An Integer is 32 bits in FHIRPath; a Decimal does not convert.
fn to_integer(item: &Item) -> Option<i64> {
    let n = match item.value.as_ref() {
        Value::Bool(b) => return Some(i64::from(*b)),
        Value::Number(n) if !is_decimal(item, n) => n.as_i64()?,
        Value::String(s) if is_integer_text(s) => s.parse().ok()?,
        _ => return None,
    };
    i32::try_from(n).ok().map(i64::from)
}

fn is_decimal(item: &Item, n: &serde_json::Number) -> bool {
    item.type_of() == Some("Decimal") || n.to_string().contains(['.', 'e', 'E'])
}

fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn to_decimal(v: &Value) -> Option<bigdecimal::BigDecimal> {
    match v {
        Value::Bool(b) => decimal::parse(if *b { "1.0" } else { "0.0" }),
        Value::Number(n) => decimal::decimal(n),
        Value::String(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
            let ok = is_integer_text(whole)
                && !fraction.is_empty()
                && fraction.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| decimal::parse(s)).flatten()
        }
        _ => None,
    }
}

/// `toString()`'s text of an item.
pub fn to_string(item: &Item) -> Option<String> {
    match item.value.as_ref() {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        q @ Value::Object(_) if item.type_of() == Some("Quantity") => {
            let value = q.get("value")?;
            let unit = q.get("code").or_else(|| q.get("unit"))?.as_str()?;
            if CALENDAR_UNITS.contains(&unit) {
                Some(format!("{value} {unit}"))
            } else {
                Some(format!("{value} '{unit}'"))
            }
        }
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Date,
    DateTime,
    Time,
}

/// A date, dateTime or time (as FHIRPath writes them, without `@`) that
/// converts to `kind`; a DateTime's date part converts to a Date.
fn temporal(item: &Item, kind: Kind) -> Option<String> {
    let s = item.value.as_str()?;
    let time_typed = item.type_of() == Some("Time");
    match kind {
        Kind::Time => (time_typed || item.type_of().is_none() || item.type_of() == Some("String"))
            .then_some(s)
            .filter(|s| is_time(s))
            .map(str::to_string),
        Kind::Date if !time_typed => {
            let date = s.split('T').next()?;
            is_date(date).then(|| date.to_string())
        }
        Kind::DateTime if !time_typed => {
            let (date, time) = match s.split_once('T') {
                Some((d, t)) => (d, Some(t)),
                None => (s, None),
            };
            let time_ok = time.is_none_or(|t| t.is_empty() || is_time_with_zone(t));
            (is_date(date) && time_ok).then(|| s.to_string())
        }
        _ => None,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let widths = [4, 2, 2];
    !parts.is_empty()
        && parts.len() <= 3
        && parts
            .iter()
            .zip(widths)
            .all(|(p, w)| p.len() == w && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `hh`, `hh:mm`, `hh:mm:ss` or `hh:mm:ss.fff`.
fn is_time(s: &str) -> bool {
    let (clock, fraction) = s.split_once('.').unwrap_or((s, "0"));
    let parts: Vec<&str> = clock.split(':').collect();
    !parts.is_empty()
        && parts.len() <= 3
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A time, then `Z` or `±hh:mm`, or nothing.
fn is_time_with_zone(s: &str) -> bool {
    if let Some(t) = s.strip_suffix('Z') {
        return is_time(t);
    }
    match s.rfind(['+', '-']) {
        Some(at) => is_time(&s[..at]) && is_time(&s[at + 1..]),
        None => is_time(s),
    }
}

/// A number (unit `1`), a Quantity, or text like `5 'mg'`, `4 days`,
/// `1.5`; the calendar words are kept as written.
fn to_quantity(item: &Item) -> Option<Value> {
    let quantity = |value: Value, unit: &str| json!({"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit});
    match item.value.as_ref() {
        Value::Number(n) => Some(quantity(Value::Number(n.clone()), "1")),
        Value::Bool(b) => Some(quantity(
            decimal::number(&to_decimal(&Value::Bool(*b))?),
            "1",
        )),
        q @ Value::Object(_) if item.type_of() == Some("Quantity") => Some(q.clone()),
        Value::String(s) => {
            let (number, unit) = match s.split_once(' ') {
                Some((n, u)) => (n, u.trim()),
                None => (s.as_str(), "'1'"),
            };
            let value =
                decimal::number(&to_decimal(&Value::String(number.to_string())).or_else(|| {
                    is_integer_text(number)
                        .then(|| decimal::parse(number))
                        .flatten()
                })?);
            let unit: Cow<str> = match unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
                Some(quoted) => Cow::Borrowed(quoted),
                None if CALENDAR_UNITS.contains(&unit) => Cow::Borrowed(unit),
                None => return None,
            };
            Some(quantity(value, &unit))
        }
        _ => None,
    }
}

/// FHIRPath's calendar duration words.
pub const CALENDAR_UNITS: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];
