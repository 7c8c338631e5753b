//! Functions that combine or compare two collections (FHIRPath 5.4 and
//! 5.1): `union`, `combine`, `intersect`, `exclude`, `subsetOf`,
//! `supersetOf`, and `isDistinct`. Items are compared by FHIRPath
//! equality; the argument is evaluated on the function's input.

use super::eval::{bool_item, compare, equal, evaluate, Env, EvalError, Item};
use super::functions::{arity, distinct, per_item, Out};
use super::parse::Expr;

/// The functions `call` knows.
pub const NAMES: &[&str] = &[
    "union",
    "combine",
    "intersect",
    "exclude",
    "subsetOf",
    "supersetOf",
    "isDistinct",
    "sort",
];

fn contains(hay: &[Item], needle: &Item) -> bool {
    hay.iter().any(|h| equal(h, needle) == Some(true))
}

pub fn call<'a>(
    name: &str,
    input: Vec<Item<'a>>,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    if name == "sort" {
        return sort(input, args, env);
    }
    if name == "isDistinct" {
        arity(name, args, &[0])?;
        let n = input.len();
        return Ok(vec![bool_item(distinct(input).len() == n)]);
    }
    arity(name, args, &[1])?;
    let other = evaluate(&args[0], context, env)?;
    Ok(match name {
        "union" => distinct(input.into_iter().chain(other).collect()),
        "combine" => input.into_iter().chain(other).collect(),
        "intersect" => distinct(input.into_iter().filter(|i| contains(&other, i)).collect()),
        "exclude" => input.into_iter().filter(|i| !contains(&other, i)).collect(),
        "subsetOf" => vec![bool_item(input.iter().all(|i| contains(&other, i)))],
        "supersetOf" => vec![bool_item(other.iter().all(|i| contains(&input, i)))],
        _ => Vec::new(),
    })
}

/// `sort([key, ...])`: by the items themselves, or by each key evaluated on
/// each item; a key written `-key` sorts descending. An item without the
/// key comes first; items whose keys do not compare keep their order.
fn sort<'a>(input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    let keys: Vec<(&Expr, bool)> = args
        .iter()
        .map(|a| match a {
            Expr::Negate(inner) => (inner.as_ref(), true),
            other => (other, false),
        })
        .collect();
    let mut keyed = Vec::with_capacity(input.len());
    for item in input {
        let values = if keys.is_empty() {
            vec![vec![item.clone()]]
        } else {
            keys.iter()
                .map(|(k, _)| per_item(&item, k, env))
                .collect::<Result<Vec<_>, EvalError>>()?
        };
        keyed.push((values, item));
    }
    keyed.sort_by(|(a, _), (b, _)| {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let descending = keys.get(i).is_some_and(|k| k.1);
            // An item without the key comes first, either way.
            let order = match (x.first(), y.first()) {
                (Some(x), Some(y)) => {
                    let o = compare(x, y).unwrap_or(std::cmp::Ordering::Equal);
                    if descending {
                        o.reverse()
                    } else {
                        o
                    }
                }
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            if order.is_ne() {
                return order;
            }
        }
        std::cmp::Ordering::Equal
    });
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}
