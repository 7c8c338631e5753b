//! Evaluation of a parsed expression on JSON FHIR resources.
//!
//! Collections are `Vec<Item>`; an item borrows from the resource where it
//! can. Types are what the JSON says: a resource's `resourceType`, a choice
//! element's suffix (`valueQuantity` is a `Quantity`), a literal's System
//! type. Without a schema, an element reached by its plain name has no
//! known type, and `is`/`ofType` on it are false.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use super::parse::{BinOp, Expr, TypeOp};
use super::{decimal, quantity, temporal};

/// One element of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    pub value: Cow<'a, Value>,
    /// The FHIR or System type, when known.
    pub type_name: Option<Cow<'a, str>>,
    /// For a primitive of the resource, the object JSON writes beside it as
    /// `_name` (its `id` and `extension`); the value is `null` when the
    /// element has extensions and no value.
    pub sidecar: Option<&'a Value>,
}

impl<'a> Item<'a> {
    /// A value of the resource (a resource itself: typed by `resourceType`).
    pub fn of(value: &'a Value) -> Self {
        Item::node(value, None)
    }

    /// A computed value of a known type (a constant).
    pub fn typed(value: Value, type_name: &str) -> Item<'static> {
        Item {
            value: Cow::Owned(value),
            type_name: Some(Cow::Owned(type_name.to_string())),
            sidecar: None,
        }
    }

    fn node(value: &'a Value, type_name: Option<Cow<'a, str>>) -> Self {
        Item {
            value: Cow::Borrowed(value),
            type_name,
            sidecar: None,
        }
    }

    pub(super) fn owned(value: Value, type_name: &'static str) -> Self {
        Item {
            value: Cow::Owned(value),
            type_name: Some(Cow::Borrowed(type_name)),
            sidecar: None,
        }
    }

    /// The item's type, as known.
    pub fn type_of(&self) -> Option<&str> {
        if let Some(t) = &self.type_name {
            return Some(t);
        }
        field(&self.value, "resourceType").and_then(Value::as_str)
    }
}

/// Why evaluation failed (a type error the spec makes an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

type Out<'a> = Result<Vec<Item<'a>>, EvalError>;

/// What an evaluation can see besides its focus.
pub struct Env<'a> {
    /// `%resource` and `%context`.
    pub resource: &'a Value,
    /// Other `%name` variables.
    pub variables: &'a HashMap<String, Vec<Item<'a>>>,
    /// `%rowIndex` (SQL on FHIR): the focus's index in its iteration.
    pub row_index: i64,
    /// `$index` inside `where`, `select`... and `aggregate`.
    pub index: Option<i64>,
    /// `$total` inside `aggregate`.
    pub total: Option<Vec<Item<'a>>>,
}

impl<'a> Env<'a> {
    /// The same, with `$index` (and `$total`) of one step of an iteration.
    pub fn at(&self, index: usize, total: Option<Vec<Item<'a>>>) -> Env<'a> {
        Env {
            resource: self.resource,
            variables: self.variables,
            row_index: self.row_index,
            index: Some(index as i64),
            total,
        }
    }
}

pub fn evaluate<'a>(expr: &Expr, focus: &[Item<'a>], env: &Env<'a>) -> Out<'a> {
    Ok(match expr {
        Expr::Empty => Vec::new(),
        Expr::Str(s) => vec![Item::owned(Value::String(s.clone()), "String")],
        Expr::Int(i) => vec![Item::owned(Value::from(*i), "Integer")],
        Expr::Dec(d) => vec![Item::owned(Value::Number(d.clone()), "Decimal")],
        Expr::Bool(b) => vec![Item::owned(Value::Bool(*b), "Boolean")],
        Expr::DateTime(d) => vec![temporal_literal(d)],
        Expr::Quantity(n, unit) => vec![Item::owned(quantity::literal(n, unit), "Quantity")],
        Expr::This => focus.to_vec(),
        Expr::Variable(name) => match name.as_str() {
            "resource" | "context" | "rootResource" => vec![Item::node(env.resource, None)],
            "ucum" => vec![Item::owned(
                Value::String("http://unitsofmeasure.org".into()),
                "String",
            )],
            "rowIndex" => vec![Item::owned(Value::from(env.row_index), "Integer")],
            "$index" => env
                .index
                .map(|i| Item::owned(Value::from(i), "Integer"))
                .into_iter()
                .collect(),
            "$total" => env.total.clone().unwrap_or_default(),
            "sct" => vec![Item::owned(
                Value::String("http://snomed.info/sct".into()),
                "String",
            )],
            "loinc" => vec![Item::owned(
                Value::String("http://loinc.org".into()),
                "String",
            )],
            other => env
                .variables
                .get(other)
                .cloned()
                .ok_or_else(|| EvalError(format!("unknown variable %{other}")))?,
        },
        Expr::Name(name) => members(focus, name),
        Expr::Member(target, name) => members(&evaluate(target, focus, env)?, name),
        Expr::Index(target, index) => {
            let items = evaluate(target, focus, env)?;
            let index = evaluate(index, focus, env)?;
            match index.first().and_then(|i| i.value.as_i64()) {
                Some(n) if n >= 0 => items.into_iter().nth(n as usize).into_iter().collect(),
                _ => Vec::new(),
            }
        }
        Expr::Negate(e) => evaluate(e, focus, env)?
            .into_iter()
            .map(|i| match i.value.as_ref() {
                Value::Number(n) if n.is_i64() => Ok(Item::owned(
                    Value::from(-n.as_i64().unwrap_or(0)),
                    "Integer",
                )),
                Value::Number(n) => Ok(Item::owned(
                    decimal::negate(n).map_or(Value::Null, Value::Number),
                    "Decimal",
                )),
                _ => Err(EvalError("'-' applies to numbers".into())),
            })
            .collect::<Result<_, _>>()?,
        Expr::TypeOp(e, op, t) => {
            let items = evaluate(e, focus, env)?;
            type_op(items, *op, t)?
        }
        Expr::Binary(l, op, r) => binary(l, *op, r, focus, env)?,
        Expr::Call(target, name, args) => {
            let input = match target {
                Some(t) => evaluate(t, focus, env)?,
                None => focus.to_vec(),
            };
            super::functions::call(name, input, args, focus, env)?
        }
    })
}

/// An object's element by name. FHIR objects are small, and comparing
/// their few keys is several times faster than hashing the name
/// (`serde_json`'s ordered map hashes with SipHash); large ones hash.
pub fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    let obj = value.as_object()?;
    if obj.len() > 16 {
        return obj.get(name);
    }
    obj.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
}

/// The children of each item by name; a single item's without a copy
/// (most steps of most paths have one).
fn members<'a>(items: &[Item<'a>], name: &str) -> Vec<Item<'a>> {
    match items {
        [one] => member(one, name),
        _ => items.iter().flat_map(|i| member(i, name)).collect(),
    }
}

/// A child of `item` by name: an element (arrays flattened), a choice
/// element by its base name, or, on a resource, its own type name (a path
/// may start with it; `Resource` and `DomainResource` fit any resource).
fn member<'a>(item: &Item<'a>, name: &str) -> Vec<Item<'a>> {
    let Cow::Borrowed(value) = item.value else {
        return owned_member(&item.value, name);
    };
    let Some(obj) = value.as_object() else {
        // A primitive's `id` and `extension` are in its sidecar.
        return match item.sidecar {
            Some(sidecar) => member(&Item::of(sidecar), name),
            None => Vec::new(),
        };
    };
    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
        if let Some(t) = field(value, "resourceType").and_then(Value::as_str) {
            let fits = t == name || name == "Resource" || name == "DomainResource";
            return if fits { vec![item.clone()] } else { Vec::new() };
        }
    }
    if let Some(v) = field(value, name) {
        if is_primitive(v) {
            if let Some(sidecar) = sidecar(obj, name) {
                return with_sidecars(v, sidecar);
            }
        }
        return flatten(v, None);
    }
    if let Some(sidecar) = sidecar(obj, name) {
        // Extensions and no value.
        return with_sidecars(&NO_VALUE, sidecar);
    }
    // valueQuantity, valueString...: a choice element, typed by its suffix.
    obj.iter()
        .filter_map(|(k, v)| {
            let suffix = k.strip_prefix(name)?;
            suffix
                .starts_with(|c: char| c.is_ascii_uppercase())
                .then(|| flatten(v, Some(Cow::Borrowed(suffix))))
        })
        .flatten()
        .collect()
}

static NO_VALUE: Value = Value::Null;

/// A primitive value, or an array that may hold primitives (checked by
/// its first item), is one that may have a `_name` sidecar.
fn is_primitive(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.first().is_none_or(|i| !i.is_object()),
        Value::Object(_) => false,
        _ => true,
    }
}

/// The `_name` beside `name`, looked up without allocating.
fn sidecar<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut key = [0u8; 64];
    let len = name.len() + 1;
    if len > key.len() {
        return None;
    }
    key[0] = b'_';
    key[1..len].copy_from_slice(name.as_bytes());
    obj.get(std::str::from_utf8(&key[..len]).ok()?)
}

/// A primitive (or an array of them) with its sidecar (or the array
/// JSON writes beside it, item by item): a `null` with extensions is an
/// item, with no value.
fn with_sidecars<'a>(value: &'a Value, sidecar: &'a Value) -> Vec<Item<'a>> {
    let one = |v: &'a Value, s: Option<&'a Value>| {
        let s = s.filter(|s| s.is_object());
        (!v.is_null() || s.is_some()).then_some(Item {
            value: Cow::Borrowed(v),
            type_name: None,
            sidecar: s,
        })
    };
    match (value, sidecar) {
        (Value::Array(values), Value::Array(sidecars)) => values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| one(v, sidecars.get(i)))
            .collect(),
        (Value::Array(values), _) => values.iter().filter_map(|v| one(v, None)).collect(),
        (Value::Null, Value::Array(sidecars)) => sidecars
            .iter()
            .filter_map(|s| one(&NO_VALUE, Some(s)))
            .collect(),
        (v, s) => one(v, Some(s)).into_iter().collect(),
    }
}

fn owned_member<'a>(value: &Value, name: &str) -> Vec<Item<'a>> {
    let item = Item::node(value, None);
    member(&item, name)
        .into_iter()
        .map(|i| Item {
            value: Cow::Owned(i.value.into_owned()),
            type_name: i.type_name.map(|t| Cow::Owned(t.into_owned())),
            sidecar: None,
        })
        .collect()
}

fn flatten<'a>(value: &'a Value, type_name: Option<Cow<'a, str>>) -> Vec<Item<'a>> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| Item::node(v, type_name.clone()))
            .collect(),
        Value::Null => Vec::new(),
        v => vec![Item::node(v, type_name)],
    }
}

/// Whether `item` is of type `wanted` (`FHIR.` and `System.` prefixes and
/// the case of the first letter do not matter: `String` and `string`).
pub fn is_type(item: &Item, wanted: &str) -> bool {
    let wanted = wanted.rsplit('.').next().unwrap_or(wanted);
    let Some(t) = item.type_of() else {
        return false;
    };
    if t.eq_ignore_ascii_case(wanted) {
        return true;
    }
    // Resources are Resources (and DomainResources but for Bundle, Binary, Parameters).
    if field(&item.value, "resourceType").is_some() {
        return wanted == "Resource"
            || (wanted == "DomainResource" && !matches!(t, "Bundle" | "Binary" | "Parameters"));
    }
    false
}

fn type_op<'a>(items: Vec<Item<'a>>, op: TypeOp, t: &str) -> Out<'a> {
    match op {
        TypeOp::Is => match items.as_slice() {
            [] => Ok(Vec::new()),
            [one] => Ok(vec![bool_item(is_type(one, t))]),
            _ => Err(EvalError("'is' needs a single item".into())),
        },
        TypeOp::As => Ok(items.into_iter().filter(|i| is_type(i, t)).collect()),
    }
}

/// `@2015-02-04` is a Date, `@2015-02-04T14:34` (or `@2015T`) a DateTime
/// and `@T14:34` a Time; the value is the text without `@` and a time's
/// leading or a bare trailing `T`.
fn temporal_literal<'a>(text: &str) -> Item<'a> {
    let (value, type_name) = if let Some(time) = text.strip_prefix('T') {
        (time, "Time")
    } else if let Some(date) = text.strip_suffix('T') {
        (date, "DateTime")
    } else if text.contains('T') {
        (text, "DateTime")
    } else {
        (text, "Date")
    };
    Item::owned(Value::String(value.to_string()), type_name)
}

pub fn bool_item<'a>(b: bool) -> Item<'a> {
    Item::owned(Value::Bool(b), "Boolean")
}

/// A collection as a boolean: empty is `None`, a single boolean is itself,
/// any other single item is `true`.
pub fn as_bool(items: &[Item]) -> Result<Option<bool>, EvalError> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one.value.as_bool().unwrap_or(true))),
        _ => Err(EvalError(
            "a boolean was expected, not a collection of several items".into(),
        )),
    }
}

fn binary<'a>(l: &Expr, op: BinOp, r: &Expr, focus: &[Item<'a>], env: &Env<'a>) -> Out<'a> {
    use BinOp::*;
    let left = evaluate(l, focus, env)?;
    if matches!(op, And | Or | Xor | Implies) {
        // The right side may not be needed: it is evaluated there.
        return logic(&left, op, r, focus, env);
    }
    let right = evaluate(r, focus, env)?;
    match op {
        Union => Ok(union(left, right)),
        In => membership(&left, &right),
        Contains => membership(&right, &left),
        Eq | Ne | Equiv | NotEquiv => Ok(equality(&left, op, &right)),
        Lt | Le | Gt | Ge => comparison(&left, op, &right),
        Concat => Ok(vec![concat(&left, &right)?]),
        Add | Sub | Mul | Div | IntDiv | Mod => arithmetic(&left, op, &right),
        And | Or | Xor | Implies => unreachable!("handled above"),
    }
}

/// `and`, `or`, `xor` and `implies` in three-valued logic (empty is
/// unknown); the right side is evaluated only when the left does not
/// decide the answer.
fn logic<'a>(left: &[Item<'a>], op: BinOp, r: &Expr, focus: &[Item<'a>], env: &Env<'a>) -> Out<'a> {
    use BinOp::*;
    let a = as_bool(left)?;
    // Short cuts that need no right side.
    match (op, a) {
        (And, Some(false)) => return Ok(vec![bool_item(false)]),
        (Or, Some(true)) => return Ok(vec![bool_item(true)]),
        (Implies, Some(false)) => return Ok(vec![bool_item(true)]),
        _ => {}
    }
    let b = as_bool(&evaluate(r, focus, env)?)?;
    Ok(three_valued(op, a, b).map(bool_item).into_iter().collect())
}

fn three_valued(op: BinOp, a: Option<bool>, b: Option<bool>) -> Option<bool> {
    use BinOp::*;
    match op {
        And => match (a, b) {
            (Some(true), Some(true)) => Some(true),
            (_, Some(false)) => Some(false),
            _ => None,
        },
        Or => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Xor => a.zip(b).map(|(a, b)| a != b),
        _ => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        },
    }
}

/// `|`: both sides without repeated values, in order.
fn union<'a>(left: Vec<Item<'a>>, right: Vec<Item<'a>>) -> Vec<Item<'a>> {
    let mut out: Vec<Item> = Vec::new();
    for i in left.into_iter().chain(right) {
        if !out.iter().any(|o| o.value == i.value) {
            out.push(i);
        }
    }
    out
}

/// `in` and `contains`: whether the single `needle` equals an item of `hay`.
fn membership<'a>(needle: &[Item<'a>], hay: &[Item<'a>]) -> Out<'a> {
    match needle {
        [] => Ok(Vec::new()),
        [one] => Ok(vec![bool_item(
            hay.iter().any(|h| equal(h, one) == Some(true)),
        )]),
        _ => Err(EvalError("'in' needs a single item on its left".into())),
    }
}

/// `=`, `!=`, `~` and `!~` on two collections.
fn equality<'a>(left: &[Item<'a>], op: BinOp, right: &[Item<'a>]) -> Vec<Item<'a>> {
    use BinOp::*;
    let equivalent = matches!(op, Equiv | NotEquiv);
    let same = if left.is_empty() || right.is_empty() {
        // Equality with an empty side is unknown; equivalence is not.
        if equivalent {
            Some(left.is_empty() && right.is_empty())
        } else {
            None
        }
    } else if left.len() != right.len() {
        Some(false)
    } else {
        pairwise_equal(left, right, equivalent)
    };
    let negate = matches!(op, Ne | NotEquiv);
    same.map(|s| bool_item(s != negate)).into_iter().collect()
}

/// Item by item: the first pair not equal decides (`false`, or unknown).
fn pairwise_equal(left: &[Item], right: &[Item], equivalent: bool) -> Option<bool> {
    if equivalent {
        // Equivalence ignores order: each item matches one of the other side.
        let mut unused: Vec<&Item> = right.iter().collect();
        for a in left {
            match unused.iter().position(|b| equivalent_items(a, b)) {
                Some(at) => {
                    unused.swap_remove(at);
                }
                None => return Some(false),
            }
        }
        return Some(true);
    }
    let mut all = Some(true);
    for (a, b) in left.iter().zip(right) {
        let e = if equivalent {
            Some(equivalent_items(a, b))
        } else {
            equal(a, b)
        };
        all = match (all, e) {
            (Some(true), e) => e,
            (x, _) => x,
        };
    }
    all
}

/// `<`, `<=`, `>` and `>=` on single items (empty when either side is empty
/// or the two do not compare).
fn comparison<'a>(left: &[Item<'a>], op: BinOp, right: &[Item<'a>]) -> Out<'a> {
    let (a, b) = match (left, right) {
        ([a], [b]) => (a, b),
        ([], _) | (_, []) => return Ok(Vec::new()),
        _ => return Err(EvalError("comparison needs single items".into())),
    };
    if !orderable_pair(a, b) {
        return Err(EvalError(format!(
            "cannot order {} against {}",
            kind(&a.value),
            kind(&b.value)
        )));
    }
    Ok(match compare(a, b) {
        Some(o) => vec![bool_item(match op {
            BinOp::Lt => o.is_lt(),
            BinOp::Le => o.is_le(),
            BinOp::Gt => o.is_gt(),
            _ => o.is_ge(),
        })],
        None => Vec::new(),
    })
}

/// Whether two items may be ordered at all: a Boolean may not (FHIRPath
/// 6.2), nor a number against a string. Other mismatches (an element
/// against a number) stay unknown, since without a schema an element's
/// type is a guess.
fn orderable_pair(a: &Item, b: &Item) -> bool {
    !matches!(
        (a.value.as_ref(), b.value.as_ref()),
        (Value::Bool(_), _)
            | (_, Value::Bool(_))
            | (Value::Number(_), Value::String(_))
            | (Value::String(_), Value::Number(_))
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a Boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        _ => "an element",
    }
}

/// `&`: string concatenation, an empty side taken as `''`.
fn concat<'a>(left: &[Item], right: &[Item]) -> Result<Item<'a>, EvalError> {
    let text = |items: &[Item]| match items {
        [] => Ok(String::new()),
        [one] => Ok(one.value.as_str().map(str::to_string).unwrap_or_default()),
        _ => Err(EvalError("'&' applies to single items".into())),
    };
    Ok(Item::owned(
        Value::String(text(left)? + &text(right)?),
        "String",
    ))
}

fn arithmetic<'a>(left: &[Item], op: BinOp, right: &[Item]) -> Out<'a> {
    let (a, b) = match (left, right) {
        ([a], [b]) => (a, b),
        ([], _) | (_, []) => return Ok(Vec::new()),
        _ => return Err(EvalError("arithmetic needs single items".into())),
    };
    if b.type_of() == Some("Quantity") && matches!(op, BinOp::Add | BinOp::Sub) {
        let Some(text) = a.value.as_str() else {
            return Err(EvalError("only dates and times add a quantity".into()));
        };
        // An element's type is not known (no model): a date's or
        // dateTime's text is taken for what it looks like.
        let type_name = match a.type_of() {
            Some("Date") => "Date",
            Some("Time") => "Time",
            Some(_) => "DateTime",
            None if text.contains('T') => "DateTime",
            None => "Date",
        };
        let sign = if op == BinOp::Add { 1 } else { -1 };
        // UCUM's `mo` and `a` are averages, not calendar durations: like a
        // unit that is no duration at all, they are an error here.
        let moved = quantity::shift(text, type_name, &b.value, sign).map_err(|()| {
            EvalError(format!(
                "{} is not a duration a {type_name} can move by",
                b.value
            ))
        })?;
        return Ok(moved
            .map(|m| Item::owned(Value::String(m), type_name))
            .into_iter()
            .collect());
    }
    if let (BinOp::Add, Some(x), Some(y)) = (op, a.value.as_str(), b.value.as_str()) {
        return Ok(vec![Item::owned(
            Value::String(format!("{x}{y}")),
            "String",
        )]);
    }
    let (Value::Number(x), Value::Number(y)) = (a.value.as_ref(), b.value.as_ref()) else {
        return Err(EvalError("arithmetic applies to numbers".into()));
    };
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        let int = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::IntDiv => (y != 0).then(|| x.div_euclid(y)),
            BinOp::Mod => (y != 0).then(|| x.rem_euclid(y)),
            _ => None,
        };
        if let Some(v) = int {
            return Ok(vec![Item::owned(Value::from(v), "Integer")]);
        }
        if op != BinOp::Div {
            return Ok(Vec::new());
        }
    }
    let (Some(x), Some(y)) = (decimal::decimal(x), decimal::decimal(y)) else {
        return Ok(Vec::new());
    };
    let v = match op {
        BinOp::Add => Some(x + y),
        BinOp::Sub => Some(x - y),
        BinOp::Mul => Some(x * y),
        BinOp::Div => decimal::divide(&x, &y),
        BinOp::IntDiv => decimal::int_div(&x, &y),
        BinOp::Mod => decimal::modulo(&x, &y),
        _ => None,
    }
    .and_then(decimal::within);
    Ok(v.map(|v| Item::owned(decimal::number(&v), "Decimal"))
        .into_iter()
        .collect())
}

/// `=` on two items: `None` when it cannot be decided (dates of different
/// precision).
pub fn equal(a: &Item, b: &Item) -> Option<bool> {
    if a.type_of() == Some("Quantity") && b.type_of() == Some("Quantity") {
        return quantity::compare(&a.value, &b.value).map(|o| o.is_eq());
    }
    if let Some(o) = instants(a, b) {
        return Some(o.is_eq());
    }
    match (a.value.as_ref(), b.value.as_ref()) {
        (Value::Number(x), Value::Number(y)) => Some(x == y || compare_numbers(x, y)?.is_eq()),
        (Value::String(x), Value::String(y)) if is_temporal(a) || is_temporal(b) => {
            match temporal::compare(x, y) {
                Some(o) => Some(o.is_eq()),
                // Not both dates or times: text equality.
                None if !looks_temporal(x) || !looks_temporal(y) => Some(x == y),
                None => None,
            }
        }
        (x, y) => Some(x == y),
    }
}

fn equivalent_items(a: &Item, b: &Item) -> bool {
    if is_temporal(a) || is_temporal(b) {
        if let (Some(x), Some(y)) = (a.value.as_str(), b.value.as_str()) {
            // Different precisions are not equivalent.
            return temporal::compare(x, y) == Some(std::cmp::Ordering::Equal);
        }
    }
    match (a.value.as_str(), b.value.as_str()) {
        (Some(x), Some(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => match (a.value.as_ref(), b.value.as_ref()) {
            // Decimals are equivalent to the precision of the less precise.
            (Value::Number(x), Value::Number(y)) => {
                let (Some(x), Some(y)) = (decimal::decimal(x), decimal::decimal(y)) else {
                    return false;
                };
                let digits = decimal::scale(&x).min(decimal::scale(&y));
                let round = |d: &bigdecimal::BigDecimal| {
                    d.with_scale_round(digits, bigdecimal::RoundingMode::HalfUp)
                };
                round(&x) == round(&y)
            }
            _ => equal(a, b).unwrap_or(false),
        },
    }
}

fn is_temporal(i: &Item) -> bool {
    i.type_of().is_some_and(|t| {
        matches!(
            t.to_ascii_lowercase().as_str(),
            "datetime" | "date" | "instant" | "time"
        )
    })
}

/// A date's or dateTime's text (four digits first), or a time's (`hh:`).
fn looks_temporal(s: &str) -> bool {
    let b = s.trim_start_matches(['@', 'T']).as_bytes();
    (b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit))
        || (b.len() >= 2
            && b[..2].iter().all(u8::is_ascii_digit)
            && b.get(2).is_none_or(|c| *c == b':'))
}

/// Two numbers' order, exactly (`1.50` equals `1.5`).
fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Option<std::cmp::Ordering> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Some(a.cmp(&b));
    }
    Some(decimal::decimal(x)?.cmp(&decimal::decimal(y)?))
}

/// Order of two single items (numbers, or strings and dates as text).
pub fn compare(a: &Item, b: &Item) -> Option<std::cmp::Ordering> {
    if a.type_of() == Some("Quantity") && b.type_of() == Some("Quantity") {
        return quantity::compare(&a.value, &b.value);
    }
    if let Some(o) = instants(a, b) {
        return Some(o);
    }
    match (a.value.as_ref(), b.value.as_ref()) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => {
            let (x, y) = (x.trim_start_matches('@'), y.trim_start_matches('@'));
            let typed = is_temporal(a) || is_temporal(b);
            if (typed && looks_temporal(x) && looks_temporal(y))
                || (a.type_of().is_none()
                    && b.type_of().is_none()
                    && temporal::is_date_time(x)
                    && temporal::is_date_time(y))
            {
                // Compared to the precision both have.
                return temporal::compare(x, y);
            }
            Some(x.cmp(y))
        }
        _ => None,
    }
}

/// Two dateTimes to the second with time zones, as instants: their order
/// across offsets. `None` for anything else (compared as text, to the
/// precision both have).
fn instants(a: &Item, b: &Item) -> Option<std::cmp::Ordering> {
    if !(is_temporal(a) && is_temporal(b)) {
        return None;
    }
    let (x, y) = (a.value.as_str()?, b.value.as_str()?);
    Some(temporal::instant(x)?.cmp(&temporal::instant(y)?))
}
