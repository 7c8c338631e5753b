//! The FHIRPath functions: `call` dispatches every one. The existence,
//! filtering, subsetting and type functions, `iif`, `extension`, the
//! utility and tree functions and the SQL on FHIR additions
//! (`getResourceKey`, `getReferenceKey`) are here; conversions, strings,
//! math, set operations and boundaries have their own modules.

use std::borrow::Cow;

use serde_json::Value;

use super::eval::{as_bool, bool_item, equal, evaluate, field, is_type, Env, EvalError, Item};
use super::parse::Expr;
use super::{boundaries, conversions, math, sets, text};

pub(super) type Out<'a> = Result<Vec<Item<'a>>, EvalError>;

pub(super) fn arity(name: &str, args: &[Expr], allowed: &[usize]) -> Result<(), EvalError> {
    if allowed.contains(&args.len()) {
        Ok(())
    } else {
        Err(EvalError(format!(
            "{name}() takes {allowed:?} arguments, not {}",
            args.len()
        )))
    }
}

/// A type name argument (`Quantity`, `FHIR.Quantity`).
fn type_arg(name: &str, args: &[Expr]) -> Result<String, EvalError> {
    fn text(e: &Expr) -> Option<String> {
        match e {
            Expr::Name(n) => Some(n.clone()),
            Expr::Member(t, n) => Some(format!("{}.{n}", text(t)?)),
            _ => None,
        }
    }
    args.first()
        .and_then(text)
        .ok_or_else(|| EvalError(format!("{name}() takes a type name")))
}

pub(super) fn string_arg(
    name: &str,
    arg: Option<&Expr>,
    input: &[Item<'_>],
    env: &Env<'_>,
) -> Result<Option<String>, EvalError> {
    let Some(arg) = arg else { return Ok(None) };
    let v = evaluate(arg, input, env)?;
    match v.as_slice() {
        [] => Ok(None),
        [one] => one
            .value
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| EvalError(format!("{name}() takes a string"))),
        _ => Err(EvalError(format!("{name}() takes a single string"))),
    }
}

pub(super) fn int_arg(
    name: &str,
    arg: &Expr,
    input: &[Item<'_>],
    env: &Env<'_>,
) -> Result<i64, EvalError> {
    match evaluate(arg, input, env)?.as_slice() {
        [one] => one
            .value
            .as_i64()
            .ok_or_else(|| EvalError(format!("{name}() takes an integer"))),
        _ => Err(EvalError(format!("{name}() takes an integer"))),
    }
}

pub(super) fn text_item<'a>(s: String) -> Item<'a> {
    Item {
        value: Cow::Owned(Value::String(s)),
        type_name: Some(Cow::Borrowed("String")),
        sidecar: None,
    }
}

/// Each item evaluated on its own (the focus and `$this` of `where`...).
pub(super) fn per_item<'a>(item: &Item<'a>, e: &Expr, env: &Env<'a>) -> Out<'a> {
    evaluate(e, std::slice::from_ref(item), env)
}

/// The functions `call` knows (a view using another is refused when read).
pub const SUPPORTED: &[&str] = &[
    "where",
    "select",
    "exists",
    "all",
    "allTrue",
    "anyTrue",
    "allFalse",
    "anyFalse",
    "empty",
    "not",
    "hasValue",
    "count",
    "first",
    "last",
    "tail",
    "single",
    "skip",
    "take",
    "distinct",
    "ofType",
    "is",
    "as",
    "iif",
    "resolve",
    "extension",
    "join",
    "toString",
    "matches",
    "lowBoundary",
    "highBoundary",
    "getResourceKey",
    "getReferenceKey",
];

/// Whether `call` knows the function `name`.
pub fn is_supported(name: &str) -> bool {
    [
        SUPPORTED,
        conversions::NAMES,
        text::NAMES,
        math::NAMES,
        sets::NAMES,
        MORE,
    ]
    .iter()
    .any(|names| names.contains(&name))
}

/// The utility and tree functions below `call`.
const MORE: &[&str] = &[
    "now",
    "today",
    "timeOfDay",
    "trace",
    "children",
    "descendants",
    "repeat",
    "precision",
    "type",
    "aggregate",
];

/// Evaluates the function `name` on `input`: each family of functions (the
/// FHIRPath specification's sections) is its own helper.
/// `context` is the focus the call was made on: the functions that are
/// not lambdas (`where`, `select`...) evaluate their arguments on it, so
/// that `name.given.combine(name.family)` finds the family names.
pub fn call<'a>(
    name: &str,
    input: Vec<Item<'a>>,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    match name {
        "where" | "select" => filtering(name, input, args, env),
        "exists" | "all" => with_criteria(name, input, args, env),
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => bool_aggregate(name, input, args),
        "empty" | "not" | "hasValue" | "count" => existence(name, input, args),
        "first" | "last" | "tail" | "single" | "skip" | "take" | "distinct" => {
            subsetting(name, input, args, env)
        }
        "ofType" | "is" | "as" => types(name, input, args),
        "iif" => iif(input, args, env),
        "resolve" => Ok(resolve(&input)),
        "extension" => extension(input, args, env),
        "join" | "toString" => string_conversion(name, input, args, env),
        "lowBoundary" | "highBoundary" => boundaries::call(name, &input, args, context, env),
        "getResourceKey" | "getReferenceKey" => keys(name, input, args),
        "now" | "today" | "timeOfDay" => Ok(vec![clock(name)]),
        // trace(name[, projection]) logs in other engines; here it only
        // passes its input on.
        "trace" => Ok(input),
        "children" | "descendants" => Ok(tree(name, &input)),
        "repeat" => repeat(input, args, env),
        "precision" => Ok(boundaries::precision(&input)),
        "type" => Ok(input.iter().filter_map(type_info).collect()),
        "aggregate" => aggregate(input, args, context, env),
        n if conversions::NAMES.contains(&n) => conversions::call(n, input, args),
        n if text::NAMES.contains(&n) => text::call(n, input, args, context, env),
        n if math::NAMES.contains(&n) => math::call(n, input, args, context, env),
        n if sets::NAMES.contains(&n) => sets::call(n, input, args, context, env),
        other => Err(unsupported(other)),
    }
}

pub(super) fn unsupported(name: &str) -> EvalError {
    EvalError(format!("the function {name}() is not supported"))
}

/// Whether `criteria` holds for `item` (taken as its focus and `$this`).
fn holds<'a>(item: &Item<'a>, criteria: &Expr, env: &Env<'a>) -> Result<bool, EvalError> {
    Ok(as_bool(&per_item(item, criteria, env)?)? == Some(true))
}

/// `where` and `select`.
fn filtering<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    arity(name, args, &[1])?;
    let mut out = Vec::new();
    match name {
        "where" => {
            for (i, item) in input.into_iter().enumerate() {
                if holds(&item, &args[0], &env.at(i, None))? {
                    out.push(item);
                }
            }
        }
        "select" => {
            for (i, item) in input.iter().enumerate() {
                out.extend(per_item(item, &args[0], &env.at(i, None))?);
            }
        }
        other => return Err(unsupported(other)),
    }
    Ok(out)
}

/// `exists` (with or without criteria) and `all`; both stop at the first
/// item that decides the answer, so later items are not evaluated.
fn with_criteria<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    let answer = match name {
        "exists" => {
            arity(name, args, &[0, 1])?;
            match args.first() {
                None => !input.is_empty(),
                Some(c) => any_holds(&input, c, env)?,
            }
        }
        "all" => {
            arity(name, args, &[1])?;
            all_hold(&input, &args[0], env)?
        }
        other => return Err(unsupported(other)),
    };
    Ok(vec![bool_item(answer)])
}

fn any_holds<'a>(input: &[Item<'a>], criteria: &Expr, env: &Env<'a>) -> Result<bool, EvalError> {
    for item in input {
        if holds(item, criteria, env)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn all_hold<'a>(input: &[Item<'a>], criteria: &Expr, env: &Env<'a>) -> Result<bool, EvalError> {
    for item in input {
        if !holds(item, criteria, env)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `allTrue`, `anyTrue`, `allFalse` and `anyFalse`.
fn bool_aggregate<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr]) -> Out<'a> {
    arity(name, args, &[0])?;
    if input.iter().any(|i| !i.value.is_boolean()) {
        return Err(EvalError(format!("{name}() applies to Booleans")));
    }
    let want = name.ends_with("True");
    let hits = input
        .iter()
        .filter(|i| i.value.as_bool() == Some(want))
        .count();
    let r = if name.starts_with("all") {
        hits == input.len()
    } else {
        hits > 0
    };
    Ok(vec![bool_item(r)])
}

/// `empty`, `not`, `hasValue` and `count`.
fn existence<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr]) -> Out<'a> {
    arity(name, args, &[0])?;
    Ok(match name {
        "empty" => vec![bool_item(input.is_empty())],
        "not" => as_bool(&input)?
            .map(|b| bool_item(!b))
            .into_iter()
            .collect(),
        "hasValue" => {
            let primitive = matches!(input.as_slice(), [one] if !one.value.is_object() && !one.value.is_array() && !one.value.is_null());
            vec![bool_item(primitive)]
        }
        "count" => vec![integer_item(input.len())],
        other => return Err(unsupported(other)),
    })
}

pub(super) fn integer_item<'a>(n: usize) -> Item<'a> {
    Item {
        value: Cow::Owned(Value::from(n)),
        type_name: Some(Cow::Borrowed("Integer")),
        sidecar: None,
    }
}

/// `first`, `last`, `tail`, `single`, `skip`, `take` and `distinct`.
fn subsetting<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    Ok(match name {
        "first" => input.into_iter().take(1).collect(),
        "last" => input.into_iter().last().into_iter().collect(),
        "tail" => input.into_iter().skip(1).collect(),
        "single" => match input.len() {
            0 | 1 => input,
            _ => return Err(EvalError("single() on several items".into())),
        },
        "skip" | "take" => {
            arity(name, args, &[1])?;
            let n = int_arg(name, &args[0], &input, env)?.max(0) as usize;
            if name == "skip" {
                input.into_iter().skip(n).collect()
            } else {
                input.into_iter().take(n).collect()
            }
        }
        "distinct" => distinct(input),
        other => return Err(unsupported(other)),
    })
}

/// The items without repeats (by FHIRPath equality), first occurrence kept.
pub(super) fn distinct(input: Vec<Item<'_>>) -> Vec<Item<'_>> {
    let mut out: Vec<Item> = Vec::new();
    for i in input {
        if !out.iter().any(|o| equal(o, &i) == Some(true)) {
            out.push(i);
        }
    }
    out
}

/// `ofType`, `is` and `as`.
fn types<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr]) -> Out<'a> {
    let t = type_arg(name, args)?;
    Ok(match name {
        "ofType" | "as" => input.into_iter().filter(|i| is_type(i, &t)).collect(),
        "is" => match input.as_slice() {
            [] => Vec::new(),
            [one] => vec![bool_item(is_type(one, &t))],
            _ => return Err(EvalError("is() on several items".into())),
        },
        other => return Err(unsupported(other)),
    })
}

/// `iif(criterion, then[, otherwise])`: only the branch taken is evaluated.
fn iif<'a>(input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    arity("iif", args, &[2, 3])?;
    if input.len() > 1 {
        return Err(EvalError("iif() applies to one item at most".into()));
    }
    let criterion = evaluate(&args[0], &input, env)?;
    if let [one] = criterion.as_slice() {
        if !one.value.is_boolean() {
            return Err(EvalError("iif() takes a Boolean criterion".into()));
        }
    }
    if as_bool(&criterion)? == Some(true) {
        evaluate(&args[1], &input, env)
    } else if let Some(otherwise) = args.get(2) {
        evaluate(otherwise, &input, env)
    } else {
        Ok(Vec::new())
    }
}

/// A reference "resolves" to a stand-in typed by the reference's target
/// type: enough for `resolve() is Patient`; the service does not read other
/// resources while evaluating.
fn resolve<'a>(input: &[Item<'a>]) -> Vec<Item<'a>> {
    input
        .iter()
        .filter_map(|i| {
            let (t, _) = reference_parts(&i.value)?;
            Some(Item {
                value: Cow::Owned(Value::Object(Default::default())),
                type_name: Some(Cow::Owned(t)),
                sidecar: None,
            })
        })
        .collect()
}

/// `extension(url)`: the extensions with that url, borrowed from the
/// resource (computed values carry no extensions).
fn extension<'a>(input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    let name = "extension";
    arity(name, args, &[1])?;
    let url = string_arg(name, args.first(), &input, env)?.unwrap_or_default();
    let mut out = Vec::new();
    for item in &input {
        let v = match (&item.value, item.sidecar) {
            (_, Some(sidecar)) => sidecar,
            (Cow::Borrowed(v), None) => *v,
            (Cow::Owned(_), None) => continue,
        };
        if let Some(exts) = field(v, "extension").and_then(Value::as_array) {
            out.extend(
                exts.iter()
                    .filter(|e| field(e, "url").and_then(Value::as_str) == Some(url.as_str()))
                    .map(|e| Item {
                        value: Cow::Borrowed(e),
                        type_name: Some(Cow::Borrowed("Extension")),
                        sidecar: None,
                    }),
            );
        }
    }
    Ok(out)
}

/// `join([separator])` and `toString()`.
fn string_conversion<'a>(
    name: &str,
    input: Vec<Item<'a>>,
    args: &[Expr],
    env: &Env<'a>,
) -> Out<'a> {
    Ok(match name {
        "join" => {
            arity(name, args, &[0, 1])?;
            let sep = string_arg(name, args.first(), &input, env)?.unwrap_or_default();
            let parts: Vec<String> = input
                .iter()
                .filter_map(|i| i.value.as_str().map(str::to_string))
                .collect();
            vec![text_item(parts.join(&sep))]
        }
        "toString" => input
            .iter()
            .take(1)
            .filter_map(conversions::to_string)
            .map(text_item)
            .collect(),
        other => return Err(unsupported(other)),
    })
}

/// SQL on FHIR: a resource's key, and the key a reference points at (if it
/// points at the given type).
fn keys<'a>(name: &str, input: Vec<Item<'a>>, args: &[Expr]) -> Out<'a> {
    Ok(match name {
        "getResourceKey" => input
            .iter()
            .filter_map(|i| field(&i.value, "id").cloned())
            .map(|id| Item {
                value: Cow::Owned(id),
                type_name: Some(Cow::Borrowed("String")),
                sidecar: None,
            })
            .collect(),
        "getReferenceKey" => {
            let wanted = if args.is_empty() {
                None
            } else {
                Some(type_arg(name, args)?)
            };
            input
                .iter()
                .filter_map(|i| {
                    let (t, id) = reference_parts(&i.value)?;
                    wanted
                        .as_deref()
                        .is_none_or(|w| w == t)
                        .then(|| text_item(id))
                })
                .collect()
        }
        other => return Err(unsupported(other)),
    })
}

/// The type and id a Reference names: `Type/id` (also at the end of an
/// absolute URL, or before `/_history/n`), or `type` with an id.
pub fn reference_parts(reference: &Value) -> Option<(String, String)> {
    let text = field(reference, "reference").and_then(Value::as_str)?;
    let text = text.split("/_history/").next().unwrap_or(text);
    let mut segments = text.rsplit('/');
    let id = segments.next()?;
    match segments.next() {
        Some(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
            Some((t.to_string(), id.to_string()))
        }
        _ => {
            let t = field(reference, "type").and_then(Value::as_str)?;
            Some((t.to_string(), id.to_string()))
        }
    }
}

/// `now()`, `today()` and `timeOfDay()`, from the clock.
fn clock<'a>(name: &str) -> Item<'a> {
    let now = chrono::Utc::now();
    let (text, type_name) = match name {
        "today" => (now.format("%Y-%m-%d").to_string(), "Date"),
        "timeOfDay" => (now.format("%H:%M:%S%.3f").to_string(), "Time"),
        _ => (now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), "DateTime"),
    };
    Item::owned(Value::String(text), type_name)
}

/// `children()`: every element's values; `descendants()`: theirs too,
/// all the way down.
fn tree<'a>(name: &str, input: &[Item<'a>]) -> Vec<Item<'a>> {
    fn children<'a>(item: &Item<'a>) -> Vec<Item<'a>> {
        let Cow::Borrowed(Value::Object(map)) = item.value else {
            return Vec::new();
        };
        map.iter()
            .filter(|(k, _)| k.as_str() != "resourceType")
            .flat_map(|(_, v)| match v {
                Value::Array(items) => items.iter().map(Item::of).collect(),
                v => vec![Item::of(v)],
            })
            .collect()
    }
    let mut out = Vec::new();
    let mut level: Vec<Item<'a>> = input.iter().flat_map(children).collect();
    while !level.is_empty() {
        let next: Vec<Item<'a>> = if name == "descendants" {
            level.iter().flat_map(children).collect()
        } else {
            Vec::new()
        };
        out.extend(level);
        level = next;
    }
    out
}

/// `repeat(projection)`: the projection of the input, then of its result,
/// and so on until nothing new comes (items compared by equality).
fn repeat<'a>(input: Vec<Item<'a>>, args: &[Expr], env: &Env<'a>) -> Out<'a> {
    arity("repeat", args, &[1])?;
    let mut out: Vec<Item<'a>> = Vec::new();
    let mut level = input;
    while !level.is_empty() {
        let mut next = Vec::new();
        for item in &level {
            for found in per_item(item, &args[0], env)? {
                if !out.iter().any(|o| equal(o, &found) == Some(true)) {
                    out.push(found.clone());
                    next.push(found);
                }
            }
        }
        level = next;
    }
    Ok(out)
}

/// A number argument's exact value and whether it is an Integer; `None`
/// when it is empty.
pub(super) fn evaluate_number(
    name: &str,
    arg: &Expr,
    input: &[Item<'_>],
    env: &Env<'_>,
) -> Result<Option<(bigdecimal::BigDecimal, bool)>, EvalError> {
    match evaluate(arg, input, env)?.as_slice() {
        [] => Ok(None),
        [one] => math::number_of(one)
            .map(Some)
            .ok_or_else(|| EvalError(format!("{name}() takes a number"))),
        _ => Err(EvalError(format!("{name}() takes a single number"))),
    }
}

/// `type()`: a `{namespace, name}` for the items whose type is known (a
/// resource, a literal or computed value); none for an element, whose FHIR
/// type needs the model this evaluator does not have.
fn type_info<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    const SYSTEM: &[&str] = &[
        "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity",
    ];
    let t = item.type_of()?;
    let namespace = if SYSTEM.contains(&t) && field(&item.value, "resourceType").is_none() {
        "System"
    } else {
        "FHIR"
    };
    let info = serde_json::json!({"namespace": namespace, "name": t});
    Some(Item::owned(info, "TypeInfo"))
}

/// `aggregate(aggregator[, init])`: `$total` starts as `init` (evaluated on
/// the call's focus) and becomes the aggregator's value on each item in
/// turn, with `$this` the item and `$index` its position.
fn aggregate<'a>(
    input: Vec<Item<'a>>,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    arity("aggregate", args, &[1, 2])?;
    let mut total = match args.get(1) {
        Some(init) => evaluate(init, context, env)?,
        None => Vec::new(),
    };
    for (i, item) in input.iter().enumerate() {
        total = per_item(item, &args[0], &env.at(i, Some(total)))?;
    }
    Ok(total)
}
