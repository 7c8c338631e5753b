//! Exact decimals. A JSON number keeps the text it was written with
//! (serde_json's `arbitrary_precision`), so `1.50` stays `1.50` from the
//! write API to the export. Arithmetic, comparison and search read that
//! text as a `BigDecimal`, never as a double: `0.1 + 0.2 = 0.3` holds, and
//! 30-digit values compare exactly.

use std::str::FromStr;

use bigdecimal::{BigDecimal, Signed, Zero};
use serde_json::{Number, Value};

/// Significant digits kept by a division that does not end (FHIRPath's
/// decimal has at least 28).
const DIVISION_DIGITS: u64 = 28;

/// The largest power of ten a compared number may carry, either way: an
/// exponent is a few characters of text, but comparing or adding numbers
/// of very different powers makes integers of that many digits (found by
/// fuzzing: `ap2e73967968` in a `_typeFilter` hung the process).
/// `1e4096` is far past any measurement, and past a double's `1e308`.
pub const MAX_SCALE: i64 = 4096;

/// A JSON number's exact value; `None` past [`MAX_SCALE`].
pub fn decimal(n: &Number) -> Option<BigDecimal> {
    parse(&n.to_string())
}

/// A decimal's text as its exact value; `None` if it is not a number or
/// is past [`MAX_SCALE`].
pub fn parse(text: &str) -> Option<BigDecimal> {
    within(BigDecimal::from_str(text).ok()?)
}

/// `d`, if its power of ten is within [`MAX_SCALE`].
pub fn within(d: BigDecimal) -> Option<BigDecimal> {
    (scale(&d).abs() <= MAX_SCALE).then_some(d)
}

/// A decimal as a JSON number, in plain notation (`0.0000001`, not `1E-7`).
pub fn number(d: &BigDecimal) -> Value {
    Number::from_str(&d.to_plain_string()).map_or(Value::Null, Value::Number)
}

/// A number literal's text as a JSON number, its text kept.
pub fn literal(text: &str) -> Option<Number> {
    Number::from_str(text).ok()
}

/// The digits after the point that a number was written with: `1.50` has
/// 2, `1e2` has -2. Its precision, for boundaries and search ranges.
pub fn scale(d: &BigDecimal) -> i64 {
    d.as_bigint_and_exponent().1
}

/// Half a unit in the last place a number was written with: `5.4` stands
/// for `[5.35, 5.45)`.
pub fn half_ulp(d: &BigDecimal) -> BigDecimal {
    BigDecimal::new(5.into(), scale(d) + 1)
}

/// `-n`, by its text: exact, and `-0.0` for `0.0` as written.
pub fn negate(n: &Number) -> Option<Number> {
    let text = n.to_string();
    let zero = !text.bytes().any(|b| matches!(b, b'1'..=b'9'));
    let negated = match text.strip_prefix('-') {
        Some(rest) => rest.to_string(),
        // Zero has no sign: -(0.0) is 0.0.
        None if zero => text,
        None => format!("-{text}"),
    };
    literal(&negated)
}

/// `x / y`: exact where it ends, else rounded to 28 significant digits;
/// `None` for a division by zero.
pub fn divide(x: &BigDecimal, y: &BigDecimal) -> Option<BigDecimal> {
    if y.is_zero() {
        return None;
    }
    let q = x / y;
    Some(if q.digits() > DIVISION_DIGITS {
        q.with_prec(DIVISION_DIGITS).normalized()
    } else {
        q
    })
}

/// `x div y`: the quotient truncated towards zero.
pub fn int_div(x: &BigDecimal, y: &BigDecimal) -> Option<BigDecimal> {
    if y.is_zero() {
        return None;
    }
    Some((x / y).with_scale_round(0, bigdecimal::RoundingMode::Down))
}

/// `x mod y`: the remainder of `div`, with the sign of `x`.
pub fn modulo(x: &BigDecimal, y: &BigDecimal) -> Option<BigDecimal> {
    let q = int_div(x, y)?;
    Some(x - y * q)
}

/// Whether a number is below zero (`-0.0` is not).
pub fn is_negative(d: &BigDecimal) -> bool {
    d.is_negative()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text_through_serde_json() {
        // The workspace's serde_json must have `arbitrary_precision`: without
        // it every decimal a view or a filter reads is rounded through a
        // double.
        for text in [
            "1.50",
            "0.0",
            "-0.0",
            "0.012151678567590593",
            "123456789012345678901234567890.12",
            "9007199254740993",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.to_string(), text);
        }
        // Its one change: the exponent form (why the store keeps the
        // client's text rather than a parse of it).
        for (text, parsed) in [("1e2", "1e+2"), ("1E-7", "1e-7")] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.to_string(), parsed);
        }
    }

    #[test]
    fn arithmetic_and_order_are_exact() {
        let d = |s: &str| BigDecimal::from_str(s).unwrap();
        assert_eq!(d("0.1") + d("0.2"), d("0.3"));
        assert!(d("123456789012345678901234567890.12") > d("123456789012345678901234567890.11"));
        assert_eq!(d("1.50"), d("1.5"));
        assert_eq!(scale(&d("1.50")), 2);
        assert_eq!(scale(&d("1e2")), -2);
        assert_eq!(half_ulp(&d("5.4")), d("0.05"));
        assert_eq!(divide(&d("1"), &d("4")), Some(d("0.25")));
        assert_eq!(divide(&d("1"), &d("3")).unwrap().digits(), 28);
        assert_eq!(divide(&d("1"), &d("0")), None);
        assert_eq!(int_div(&d("-7.5"), &d("2")), Some(d("-3")));
        assert_eq!(modulo(&d("5.5"), &d("0.7")), Some(d("0.6")));
        assert_eq!(number(&d("1E-7")).to_string(), "0.0000001");
        assert_eq!(negate(&literal("0.0").unwrap()).unwrap().to_string(), "0.0");
        assert_eq!(
            negate(&literal("-2.50").unwrap()).unwrap().to_string(),
            "2.50"
        );
    }

    #[test]
    fn huge_powers_of_ten_are_not_compared() {
        assert!(decimal(&literal("2e73967968").unwrap()).is_none());
        assert!(decimal(&literal("1e-5000").unwrap()).is_none());
        assert!(decimal(&literal("1e4096").unwrap()).is_some());
        // And a FHIRPath comparison with one is empty, at once.
        let path = crate::fhirpath::Path::parse("value > 1").unwrap();
        let resource: Value = serde_json::from_str(r#"{"value": 2e73967968}"#).unwrap();
        assert!(path.evaluate(&resource).unwrap().is_empty());
    }
}
