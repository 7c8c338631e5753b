//! `lowBoundary([precision])` and `highBoundary([precision])` (FHIRPath
//! 2.1): the least and greatest values a decimal, date, dateTime or time
//! could stand for, given the precision it was written with. The result
//! has `precision` digits: 8 by default for a decimal, and for a temporal
//! value the digits of its full form (a date's day, a dateTime's or time's
//! millisecond), so `@2014.lowBoundary(6)` is `@2014-01`.

use std::borrow::Cow;

use bigdecimal::RoundingMode;
use serde_json::Value;

use super::decimal;
use super::eval::{Env, EvalError, Item};
use super::functions::{arity, evaluate_number, Out};
use super::parse::Expr;

/// A decimal boundary's default digits after the point, and the most a
/// precision may ask for.
const DECIMAL_DIGITS: i64 = 8;
const MAX_PRECISION: i64 = 31;

pub fn call<'a>(
    name: &str,
    input: &[Item<'a>],
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    arity(name, args, &[0, 1])?;
    let precision = match args.first() {
        Some(a) => match evaluate_number(name, a, context, env)? {
            Some((p, true)) => Some(p.to_string().parse::<i64>().unwrap_or(-1)),
            Some(_) => return Err(EvalError(format!("{name}() takes an integer precision"))),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let high = name == "highBoundary";
    Ok(input
        .iter()
        .take(1)
        .filter_map(|i| {
            let (v, t) = boundary(i, high)?;
            let v = with_precision(v, t, precision, high)?;
            Some(Item {
                value: Cow::Owned(v),
                type_name: Some(Cow::Borrowed(t)),
                sidecar: None,
            })
        })
        .collect())
}

/// `precision()`: a decimal's digits after the point, a date's, time's
/// or dateTime's digits (its time zone aside): `@2014` has 4, and
/// `@T10:30:00.000` 9.
pub fn precision<'a>(input: &[Item<'a>]) -> Vec<Item<'a>> {
    let digits = input.first().and_then(|i| match i.value.as_ref() {
        Value::Number(n) => Some(decimal::scale(&decimal::decimal(n)?).max(0)),
        Value::String(s)
            if i.type_of()
                .is_some_and(|t| matches!(t, "Date" | "DateTime" | "Time")) =>
        {
            let body = match s.find('T') {
                Some(t) => {
                    let zone = s[t..].find(['Z', '+', '-']).map_or(s.len(), |z| t + z);
                    &s[..zone]
                }
                None => s.as_str(),
            };
            Some(body.bytes().filter(u8::is_ascii_digit).count() as i64)
        }
        _ => None,
    });
    digits
        .map(|d| Item::owned(Value::from(d), "Integer"))
        .into_iter()
        .collect()
}

/// The full boundary cut (or, for a decimal, rounded outwards) to
/// `precision` digits; `None` for a precision out of range.
fn with_precision(v: Value, type_name: &str, precision: Option<i64>, high: bool) -> Option<Value> {
    if let Value::Number(n) = &v {
        let p = precision.unwrap_or(DECIMAL_DIGITS);
        if !(0..=MAX_PRECISION).contains(&p) {
            return None;
        }
        let mode = if high {
            RoundingMode::Ceiling
        } else {
            RoundingMode::Floor
        };
        let d = decimal::decimal(n)?;
        // A boundary smaller than one unit of the last digit is zero, as
        // the suite and the Java reference have it: 0.0034.highBoundary(1)
        // is 0.0, not 0.1 (and (-0.0034).lowBoundary(1) is -0.0).
        let unit = bigdecimal::BigDecimal::new(1.into(), p);
        if d.abs() < unit {
            let zero = bigdecimal::BigDecimal::new(0.into(), p).to_plain_string();
            let sign = if d.sign() == bigdecimal::num_bigint::Sign::Minus {
                "-"
            } else {
                ""
            };
            return decimal::literal(&format!("{sign}{zero}")).map(Value::Number);
        }
        return Some(decimal::number(&d.with_scale_round(p, mode)));
    }
    let Some(p) = precision else { return Some(v) };
    let s = v.as_str()?;
    // Digits to characters of the full form: YYYY-MM-DDThh:mm:ss.fff
    // (a time: hh:mm:ss.fff).
    let (date_len, zone) = match type_name {
        "Time" => (0, ""),
        _ => (10, s.get(23..).unwrap_or("")),
    };
    let cut = match (type_name, p) {
        ("Time", 2) => 2,
        ("Time", 4) => 5,
        ("Time", 6) => 8,
        ("Time", 9) => 12,
        (_, 4) => 4,
        (_, 6) => 7,
        (_, 8) => 10,
        ("DateTime", 10) => date_len + 3,
        ("DateTime", 12) => date_len + 6,
        ("DateTime", 14) => date_len + 9,
        ("DateTime", 17) => date_len + 13,
        _ => return None,
    };
    let mut out = s.get(..cut)?.to_string();
    if type_name == "DateTime" && p > 8 {
        out.push_str(zone);
    }
    Some(Value::String(out))
}

/// The least or greatest value an imprecise value may stand for: a decimal
/// by half its last digit, a date, dateTime or time filled out (a dateTime
/// without a zone at the widest zones, +14:00 and -12:00).
fn boundary(item: &Item<'_>, high: bool) -> Option<(Value, &'static str)> {
    match item.value.as_ref() {
        Value::Number(n) => {
            let d = decimal::decimal(n)?;
            let half = decimal::half_ulp(&d);
            let v = if high { d + half } else { d - half };
            Some((decimal::number(&v), "Decimal"))
        }
        Value::String(s) => {
            let kind = item.type_of().map(str::to_ascii_lowercase);
            match kind.as_deref() {
                Some("time") => Some((Value::String(time_boundary(s, high)?), "Time")),
                Some("datetime") | Some("instant") => {
                    Some((Value::String(datetime_boundary(s, high)?), "DateTime"))
                }
                Some("date") => Some((Value::String(date_boundary(s, high)?), "Date")),
                Some(_) => None,
                None if s.contains('T') => {
                    Some((Value::String(datetime_boundary(s, high)?), "DateTime"))
                }
                None if s.len() >= 4 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) => {
                    Some((Value::String(date_boundary(s, high)?), "Date"))
                }
                None => Some((Value::String(time_boundary(s, high)?), "Time")),
            }
        }
        _ => None,
    }
}

fn date_boundary(s: &str, high: bool) -> Option<String> {
    let mut parts = s.split('-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let d: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let m = m.unwrap_or(if high { 12 } else { 1 });
    let d = match d {
        Some(d) => d,
        None if high => {
            let next = if m == 12 {
                chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)?
            } else {
                chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)?
            };
            chrono::Datelike::day(&next.pred_opt()?)
        }
        None => 1,
    };
    chrono::NaiveDate::from_ymd_opt(y, m, d)?;
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn time_boundary(s: &str, high: bool) -> Option<String> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let mut parts = hms.split(':');
    let h: u32 = parts.next()?.parse().ok()?;
    let m: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let sec: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    if h > 23 {
        return None;
    }
    let (fill_m, fill_s, fill_f) = if high { (59, 59, "999") } else { (0, 0, "000") };
    let frac = match frac {
        Some(f) => format!("{f:0<3}"),
        None => fill_f.to_string(),
    };
    Some(format!(
        "{h:02}:{:02}:{:02}.{frac}",
        m.unwrap_or(fill_m),
        sec.unwrap_or(fill_s)
    ))
}

fn datetime_boundary(s: &str, high: bool) -> Option<String> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let date = date_boundary(date, high)?;
    let (time, zone) = match time {
        Some(t) => {
            let cut = t.find(['Z', '+', '-']).unwrap_or(t.len());
            (Some(&t[..cut]), Some(&t[cut..]).filter(|z| !z.is_empty()))
        }
        None => (None, None),
    };
    let time = match time.filter(|t| !t.is_empty()) {
        Some(t) => time_boundary(t, high)?,
        None => (if high { "23:59:59.999" } else { "00:00:00.000" }).to_string(),
    };
    let zone = zone.unwrap_or(if high { "-12:00" } else { "+14:00" });
    Some(format!("{date}T{time}{zone}"))
}
