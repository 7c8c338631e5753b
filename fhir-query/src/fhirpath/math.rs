//! Math functions (FHIRPath 5.7) on a single number. `abs`, `ceiling`,
//! `floor`, `round` and `truncate` are exact; `exp`, `ln`, `log`, `power`
//! and `sqrt` go through a double, as the specification allows (their
//! results are not exact anyway). A result that is not a number (the
//! square root of -1) is empty.

use bigdecimal::{BigDecimal, RoundingMode};
use serde_json::Value;

use super::decimal;
use super::eval::{Env, EvalError, Item};
use super::functions::{arity, evaluate_number, Out};
use super::parse::Expr;

/// The math functions `call` knows.
pub const NAMES: &[&str] = &[
    "abs", "ceiling", "exp", "floor", "ln", "log", "power", "round", "sqrt", "truncate",
];

pub fn call<'a>(
    name: &str,
    input: Vec<Item<'a>>,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    let (x, integer) = match input.as_slice() {
        [] => return Ok(Vec::new()),
        [one] => match number_of(one) {
            Some(n) => n,
            None => return Err(EvalError(format!("{name}() takes a number"))),
        },
        _ => return Err(EvalError(format!("{name}() takes a single number"))),
    };
    let arg = |i: usize| -> Result<Option<(BigDecimal, bool)>, EvalError> {
        args.get(i)
            .map_or(Ok(None), |a| evaluate_number(name, a, context, env))
    };
    let int = |d: BigDecimal| Item::owned(decimal::number(&d), "Integer");
    let dec = |d: BigDecimal| Item::owned(decimal::number(&d), "Decimal");
    let float = |f: f64| -> Vec<Item<'a>> {
        if !f.is_finite() {
            return Vec::new();
        }
        decimal::parse(&f.to_string())
            .map(dec)
            .into_iter()
            .collect()
    };
    let f = || x.to_string().parse::<f64>().unwrap_or(f64::NAN);
    Ok(match name {
        "abs" => {
            arity(name, args, &[0])?;
            vec![if integer { int(x.abs()) } else { dec(x.abs()) }]
        }
        "ceiling" | "floor" | "truncate" => {
            arity(name, args, &[0])?;
            let mode = match name {
                "ceiling" => RoundingMode::Ceiling,
                "floor" => RoundingMode::Floor,
                _ => RoundingMode::Down,
            };
            vec![int(x.with_scale_round(0, mode))]
        }
        "round" => {
            arity(name, args, &[0, 1])?;
            let digits = match arg(0)? {
                Some((d, true)) if d >= 0 => d.to_string().parse().unwrap_or(0),
                Some(_) => return Err(EvalError("round() takes a precision of 0 or more".into())),
                None => 0,
            };
            vec![dec(x.with_scale_round(digits, RoundingMode::HalfUp))]
        }
        "exp" => float(f().exp()),
        "ln" => float(f().ln()),
        "sqrt" => float(f().sqrt()),
        "log" => {
            arity(name, args, &[1])?;
            let Some((base, _)) = arg(0)? else {
                return Ok(Vec::new());
            };
            float(f().ln() / base.to_string().parse::<f64>().unwrap_or(f64::NAN).ln())
        }
        "power" => {
            arity(name, args, &[1])?;
            let Some(exponent) = arg(0)? else {
                return Ok(Vec::new());
            };
            power((x, integer), exponent)
        }
        _ => Vec::new(),
    })
}

/// `power`: exact for an Integer to a natural power, through a double
/// otherwise.
fn power<'a>(
    (x, integer): (BigDecimal, bool),
    (e, e_integer): (BigDecimal, bool),
) -> Vec<Item<'a>> {
    if integer && e_integer && e >= 0 {
        let times: u64 = e.to_string().parse().unwrap_or(0);
        let mut out = BigDecimal::from(1);
        for _ in 0..times.min(4096) {
            out *= &x;
        }
        return vec![Item::owned(decimal::number(&out), "Integer")];
    }
    let f = |d: &BigDecimal| d.to_string().parse::<f64>().unwrap_or(f64::NAN);
    let v = f(&x).powf(f(&e));
    if !v.is_finite() {
        return Vec::new();
    }
    decimal::parse(&v.to_string())
        .map(|d| Item::owned(decimal::number(&d), "Decimal"))
        .into_iter()
        .collect()
}

/// An item's exact value, and whether it is an Integer.
pub fn number_of(item: &Item) -> Option<(BigDecimal, bool)> {
    let Value::Number(n) = item.value.as_ref() else {
        return None;
    };
    let integer = item.type_of() != Some("Decimal") && !n.to_string().contains(['.', 'e', 'E']);
    Some((decimal::decimal(n)?, integer))
}
