//! Search values by parameter type, and whether an element matches one
//! (FHIR R4 search, §3.1.1.4).

use std::str::FromStr;

use bigdecimal::BigDecimal;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::definitions::ParamType;
use super::query::Modifier;
use crate::fhirpath::decimal::{self, decimal, half_ulp};
use crate::fhirpath::{reference_parts, Item};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A half-open interval `[low, high)` of time in µs.
type Range = (f64, f64);

/// A search number with the interval its precision stands for: `5.4` is
/// `[5.35, 5.45)`. Exact: compared as decimals, never as doubles.
#[derive(Debug, Clone, PartialEq)]
pub struct Approx {
    value: BigDecimal,
    low: BigDecimal,
    high: BigDecimal,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    Missing(bool),
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    Text(String),
    Date(Prefix, Range),
    Number(Prefix, Approx),
    Quantity {
        prefix: Prefix,
        range: Approx,
        system: Option<String>,
        code: Option<String>,
    },
    Reference(String),
    Uri(String),
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, p) in prefixes {
        if let Some(rest) = v.strip_prefix(text) {
            if rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
                return (p, rest);
            }
        }
    }
    (Prefix::Eq, v)
}

/// Why a search value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(":missing takes true or false, not '{0}'")]
    Missing(String),
    #[error("'{0}' is not a FHIR date, dateTime or instant")]
    Date(String),
    #[error("'{0}' is not a number")]
    Number(String),
    #[error("'{0}' is out of range (at most 10^±{max})", max = decimal::MAX_SCALE)]
    OutOfRange(String),
}

/// A number with its implicit precision: `5.4` is `[5.35, 5.45)`.
fn number_range(text: &str) -> Result<Approx, ValueError> {
    let value = match BigDecimal::from_str(text) {
        Ok(v) => decimal::within(v).ok_or_else(|| ValueError::OutOfRange(text.into()))?,
        Err(_) => return Err(ValueError::Number(text.into())),
    };
    let half = half_ulp(&value);
    Ok(Approx {
        low: &value - &half,
        high: &value + &half,
        value,
    })
}

impl SearchValue {
    pub fn parse(kind: ParamType, modifier: Modifier, v: &str) -> Result<Self, ValueError> {
        if modifier == Modifier::Missing {
            return match v {
                "true" => Ok(SearchValue::Missing(true)),
                "false" => Ok(SearchValue::Missing(false)),
                _ => Err(ValueError::Missing(v.into())),
            };
        }
        if modifier == Modifier::Text {
            return Ok(SearchValue::Text(v.to_string()));
        }
        Ok(match kind {
            ParamType::Token => {
                let (system, code) = match v.split_once('|') {
                    Some((s, c)) => (Some(s.to_string()), (!c.is_empty()).then(|| c.to_string())),
                    None => (None, Some(v.to_string())),
                };
                SearchValue::Token { system, code }
            }
            ParamType::String => SearchValue::Text(v.to_string()),
            ParamType::Date => {
                let (prefix, d) = split_prefix(v);
                let range = date_range(d).ok_or_else(|| ValueError::Date(d.into()))?;
                SearchValue::Date(prefix, range)
            }
            ParamType::Number => {
                let (prefix, n) = split_prefix(v);
                SearchValue::Number(prefix, number_range(n)?)
            }
            ParamType::Quantity => {
                let mut parts = v.splitn(3, '|');
                let (prefix, n) = split_prefix(parts.next().unwrap_or(""));
                let system = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                let code = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
                SearchValue::Quantity {
                    prefix,
                    range: number_range(n)?,
                    system,
                    code,
                }
            }
            ParamType::Reference => SearchValue::Reference(v.to_string()),
            ParamType::Uri => SearchValue::Uri(v.to_string()),
        })
    }
}

/// The interval a FHIR date, dateTime or instant stands for, in µs since
/// the epoch: `2020` is the whole year. A time without a zone is UTC.
fn date_range(text: &str) -> Option<Range> {
    let micros = |t: DateTime<Utc>| t.timestamp_micros() as f64;
    let day = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<u32>().ok();
    let at = |d: NaiveDate| -> Option<DateTime<Utc>> {
        Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?))
    };
    let (low, high): (DateTime<Utc>, DateTime<Utc>) = match b.len() {
        4 => {
            let y = num(0..4)? as i32;
            (at(day(y, 1, 1)?)?, at(day(y + 1, 1, 1)?)?)
        }
        7 if b[4] == b'-' => {
            let (y, m) = (num(0..4)? as i32, num(5..7)?);
            let next = if m == 12 {
                day(y + 1, 1, 1)?
            } else {
                day(y, m + 1, 1)?
            };
            (at(day(y, m, 1)?)?, at(next)?)
        }
        10 if b[4] == b'-' && b[7] == b'-' => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            (at(d)?, at(d.succ_opt()?)?)
        }
        _ => {
            let parsed = DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                        .map(|t| Utc.from_utc_datetime(&t))
                })
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
                        .map(|t| Utc.from_utc_datetime(&t))
                })
                .ok()?;
            // Precision to the last digit given: seconds, or the fraction's.
            let time = text.split('T').nth(1).unwrap_or("");
            let step = match time
                .split(['Z', '+', '-'])
                .next()
                .unwrap_or("")
                .split_once('.')
            {
                Some((_, frac)) => {
                    Duration::microseconds(10i64.pow(6u32.saturating_sub(frac.len() as u32)))
                }
                None if time.len() >= 8 => Duration::seconds(1),
                None => Duration::minutes(1),
            };
            (parsed, parsed + step)
        }
    };
    Some((micros(low), micros(high)))
}

/// The interval an element stands for: a date/dateTime/instant, or a
/// Period (an open end is unbounded).
fn element_range(v: &Value) -> Option<Range> {
    match v {
        Value::String(s) => date_range(s),
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let low = match o.get("start").and_then(Value::as_str) {
                Some(s) => date_range(s)?.0,
                None => f64::NEG_INFINITY,
            };
            let high = match o.get("end").and_then(Value::as_str) {
                Some(s) => date_range(s)?.1,
                None => f64::INFINITY,
            };
            Some((low, high))
        }
        _ => None,
    }
}

/// Ranges compared as FHIR search compares dates and numbers: `t` is the
/// element's, `v` the search value's.
fn compare_ranges(prefix: Prefix, t: Range, v: Range) -> bool {
    let contains = v.0 <= t.0 && t.1 <= v.1;
    match prefix {
        Prefix::Eq => contains,
        Prefix::Ne => !contains,
        Prefix::Gt => t.1 > v.1,
        Prefix::Lt => t.0 < v.0,
        Prefix::Ge => t.1 > v.1 || contains,
        Prefix::Le => t.0 < v.0 || contains,
        Prefix::Sa => t.0 >= v.1,
        Prefix::Eb => t.1 <= v.0,
        // Approximately: overlapping.
        Prefix::Ap => t.0 < v.1 && t.1 > v.0,
    }
}

/// A number against a search value: equality within the value's
/// precision, order against the value itself, `ap` within 10%.
fn number_matches(prefix: Prefix, n: &BigDecimal, v: &Approx) -> bool {
    let within = &v.low <= n && n < &v.high;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt | Prefix::Sa => n > &v.value,
        Prefix::Lt | Prefix::Eb => n < &v.value,
        Prefix::Ge => n >= &v.value,
        Prefix::Le => n <= &v.value,
        Prefix::Ap => (n - &v.value).abs() * BigDecimal::from(10) <= v.value.abs(),
    }
}

/// An element's number, exactly.
fn number_of(v: &Value) -> Option<BigDecimal> {
    match v {
        Value::Number(n) => decimal(n),
        _ => None,
    }
}

/// Case- and accent-blind form for string search (accents: the common
/// Latin ones).
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ý' | 'ÿ' => 'y',
            c => c,
        })
        .collect()
}

/// The strings a string search looks at in an element: itself, or the
/// parts of a HumanName or an Address.
fn string_parts(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Object(o) => [
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
        ]
        .iter()
        .filter_map(|k| o.get(*k))
        .flat_map(|x| match x {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
            Value::String(s) => vec![s.as_str()],
            _ => Vec::new(),
        })
        .collect(),
        _ => Vec::new(),
    }
}

fn text_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Whether a token matches an element: a code, Coding, CodeableConcept,
/// Identifier or ContactPoint, or a primitive (boolean, code, string, id).
fn token_matches(v: &Value, system: Option<&str>, code: Option<&str>) -> bool {
    let pair = |s: Option<String>, c: Option<String>| {
        let system_ok = match system {
            None => true,
            Some("") => s.is_none(),
            Some(want) => s.as_deref() == Some(want),
        };
        system_ok && code.is_none_or(|want| c.as_deref() == Some(want))
    };
    match v {
        Value::Object(o) if o.contains_key("coding") => o["coding"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| token_matches(c, system, code))),
        Value::Object(o) if o.contains_key("code") => {
            pair(text_of(v, "system"), text_of(v, "code"))
        }
        // Identifier and ContactPoint: value (ContactPoint's system is its
        // kind, not a namespace, so only Identifier's counts).
        Value::Object(o) if o.contains_key("value") => {
            let is_contact = o.get("system").and_then(Value::as_str).is_some_and(|s| {
                matches!(
                    s,
                    "phone" | "fax" | "email" | "pager" | "url" | "sms" | "other"
                )
            });
            if is_contact {
                system.is_none() && code.is_some_and(|c| o["value"].as_str() == Some(c))
            } else {
                pair(text_of(v, "system"), text_of(v, "value"))
            }
        }
        Value::String(s) => system.is_none() && code == Some(s.as_str()),
        Value::Bool(b) => system.is_none() && code == Some(if *b { "true" } else { "false" }),
        _ => false,
    }
}

fn token_text_matches(v: &Value, text: &str) -> bool {
    let want = fold(text);
    let starts = |s: Option<&str>| s.is_some_and(|s| fold(s).starts_with(&want));
    starts(v.get("text").and_then(Value::as_str))
        || starts(v.get("display").and_then(Value::as_str))
        || v.get("coding").and_then(Value::as_array).is_some_and(|cs| {
            cs.iter()
                .any(|c| starts(c.get("display").and_then(Value::as_str)))
        })
        || v.get("type").is_some_and(|t| token_text_matches(t, text))
}

/// Whether one element matches one search value.
pub fn item_matches(item: &Item, value: &SearchValue, modifier: Modifier) -> bool {
    let v = item.value.as_ref();
    match value {
        SearchValue::Missing(_) => false,
        SearchValue::Token { system, code } => token_matches(v, system.as_deref(), code.as_deref()),
        SearchValue::Text(want) if modifier == Modifier::Text => token_text_matches(v, want),
        SearchValue::Text(want) => string_parts(v).into_iter().any(|s| match modifier {
            Modifier::Exact => s == want,
            Modifier::Contains => fold(s).contains(&fold(want)),
            _ => fold(s).starts_with(&fold(want)),
        }),
        SearchValue::Date(prefix, range) => {
            element_range(v).is_some_and(|t| compare_ranges(*prefix, t, *range))
        }
        SearchValue::Number(prefix, range) => {
            number_of(v).is_some_and(|n| number_matches(*prefix, &n, range))
        }
        SearchValue::Quantity {
            prefix,
            range,
            system,
            code,
        } => {
            let Some(n) = v.get("value").and_then(number_of) else {
                return false;
            };
            let system_ok = system
                .as_deref()
                .is_none_or(|s| v.get("system").and_then(Value::as_str) == Some(s));
            let code_ok = code.as_deref().is_none_or(|c| {
                v.get("code").and_then(Value::as_str) == Some(c)
                    || v.get("unit").and_then(Value::as_str) == Some(c)
            });
            system_ok && code_ok && number_matches(*prefix, &n, range)
        }
        SearchValue::Reference(want) => {
            let Some(reference) = v.get("reference").and_then(Value::as_str) else {
                return false;
            };
            if want.contains('/') {
                reference == want || reference.ends_with(&format!("/{want}"))
            } else {
                reference_parts(v).is_some_and(|(_, id)| id == *want)
            }
        }
        SearchValue::Uri(want) => v.as_str() == Some(want.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_ranges_at_their_precision() {
        let year = date_range("2020").unwrap();
        let day = date_range("2020-03-04").unwrap();
        let instant = date_range("2020-03-04T10:00:00Z").unwrap();
        assert!(year.0 <= day.0 && day.1 <= year.1);
        assert!(day.0 <= instant.0 && instant.1 <= day.1);
        assert!(compare_ranges(Prefix::Eq, day, year));
        assert!(!compare_ranges(Prefix::Eq, year, day));
        assert!(compare_ranges(Prefix::Ge, instant, day));
        assert!(compare_ranges(Prefix::Lt, year, day));
        assert!(compare_ranges(
            Prefix::Gt,
            date_range("2021-01-01").unwrap(),
            year
        ));
        assert!(!compare_ranges(Prefix::Gt, day, year));
        assert!(date_range("2020-13").is_none() && date_range("soon").is_none());
        let with_zone = date_range("2020-03-04T10:00:00+02:00").unwrap();
        assert_eq!(with_zone.0, date_range("2020-03-04T08:00:00Z").unwrap().0);
    }

    #[test]
    fn numbers_have_implicit_precision() {
        let d = |s: &str| BigDecimal::from_str(s).unwrap();
        let r = number_range("5.4").unwrap();
        assert!(number_matches(Prefix::Eq, &d("5.44"), &r));
        assert!(!number_matches(Prefix::Eq, &d("5.46"), &r));
        assert!(
            number_matches(Prefix::Eq, &d("5.35"), &r),
            "the low end is in"
        );
        assert!(
            !number_matches(Prefix::Eq, &d("5.45"), &r),
            "the high end is out"
        );
        assert!(number_matches(
            Prefix::Gt,
            &d("6.0"),
            &number_range("5").unwrap()
        ));
        assert!(number_range("x").is_err());
        // A huge exponent is refused, not turned into a huge integer.
        let e = number_range("2.0e73967968").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        // Exact beyond a double's 17 digits.
        let r = number_range("0.012151678567590593").unwrap();
        assert!(number_matches(Prefix::Eq, &d("0.012151678567590593"), &r));
        assert!(!number_matches(Prefix::Eq, &d("0.012151678567590592"), &r));
        assert!(number_matches(Prefix::Gt, &d("0.012151678567590594"), &r));
        let big = number_range("123456789012345678901234567890.12").unwrap();
        assert!(number_matches(
            Prefix::Lt,
            &d("123456789012345678901234567890.11"),
            &big
        ));
        assert!(number_matches(
            Prefix::Ap,
            &d("105"),
            &number_range("100").unwrap()
        ));
        assert!(!number_matches(
            Prefix::Ap,
            &d("111"),
            &number_range("100").unwrap()
        ));
        assert!(number_matches(
            Prefix::Eq,
            &d("100"),
            &number_range("1e2").unwrap()
        ));
    }

    #[test]
    fn tokens_match_codes_codings_and_identifiers() {
        let cc = serde_json::json!({"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]});
        assert!(token_matches(&cc, Some("http://loinc.org"), Some("8867-4")));
        assert!(token_matches(&cc, None, Some("8867-4")));
        assert!(token_matches(&cc, Some("http://loinc.org"), None));
        assert!(!token_matches(&cc, Some(""), Some("8867-4")));
        assert!(token_text_matches(&cc, "heart"));
        let id = serde_json::json!({"system": "urn:mrn", "value": "42"});
        assert!(token_matches(&id, Some("urn:mrn"), Some("42")));
        let phone = serde_json::json!({"system": "phone", "value": "555"});
        assert!(token_matches(&phone, None, Some("555")));
        assert!(token_matches(&serde_json::json!(true), None, Some("true")));
    }
}
