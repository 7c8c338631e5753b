//! `_typeFilter` values to filters: `Type?param[:modifier]=value[,value]&...`.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::definitions::{lookup, ParamType, SearchParam};
use super::value_match::{item_matches, SearchValue};
use crate::resource_types::is_resource_type;

/// One search query on one resource type; its clauses all must hold.
#[derive(Debug, Clone)]
pub struct TypeFilter {
    pub resource_type: String,
    /// The query as given (`Observation?status=final`).
    pub text: String,
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone)]
struct Clause {
    param: Arc<SearchParam>,
    modifier: Modifier,
    /// Alternatives: any may match.
    values: Vec<SearchValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    Missing,
    Not,
    Text,
    Exact,
    Contains,
}

/// Why (part of) a `_typeFilter` is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterIssue {
    /// Malformed: a 400 whatever the handling.
    Invalid(String),
    /// Well-formed but beyond this server (an unknown parameter, a
    /// modifier it does not do): the lenient/strict rules decide.
    Unsupported(String),
}

/// Parameters that shape a search result rather than select resources.
const RESULT_PARAMETERS: [&str; 9] = [
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
];

impl TypeFilter {
    pub fn matches(&self, resource: &Value) -> bool {
        if resource.get("resourceType").and_then(Value::as_str) != Some(&self.resource_type) {
            return false;
        }
        self.clauses.iter().all(|c| c.matches(resource))
    }
}

impl Clause {
    fn matches(&self, resource: &Value) -> bool {
        // An expression the evaluator cannot finish matches nothing.
        let Ok(items) = self.param.expression.evaluate(resource) else {
            return false;
        };
        match self.modifier {
            Modifier::Missing => self
                .values
                .iter()
                .any(|v| matches!(v, SearchValue::Missing(m) if *m == items.is_empty())),
            Modifier::Not => !items.iter().any(|i| {
                self.values
                    .iter()
                    .any(|v| item_matches(i, v, Modifier::None))
            }),
            m => items
                .iter()
                .any(|i| self.values.iter().any(|v| item_matches(i, v, m))),
        }
    }
}

/// Parses one `_typeFilter` value: one query, or several separated by
/// commas (a comma followed by `Type?` starts the next). Clauses that are
/// unsupported are left out of the filter and reported; a malformed query
/// is an `Invalid` error.
pub fn parse_type_filters(value: &str) -> Result<(Vec<TypeFilter>, Vec<FilterIssue>), FilterIssue> {
    let mut filters = Vec::new();
    let mut issues = Vec::new();
    for text in split_queries(value) {
        let (filter, mut unsupported) = parse_query(text)?;
        filters.push(filter);
        issues.append(&mut unsupported);
    }
    Ok((filters, issues))
}

fn split_queries(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in value.match_indices(',') {
        let rest = &value[i + 1..];
        let starts_query = rest
            .split_once('?')
            .is_some_and(|(t, _)| is_resource_type(t.trim()));
        if starts_query {
            out.push(value[start..i].trim());
            start = i + 1;
        }
    }
    out.push(value[start..].trim());
    out
}

fn decode(s: &str) -> Result<String, FilterIssue> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| FilterIssue::Invalid(format!("_typeFilter: '{s}' is not valid UTF-8")))
}

fn parse_query(text: &str) -> Result<(TypeFilter, Vec<FilterIssue>), FilterIssue> {
    let invalid = |m: String| FilterIssue::Invalid(format!("_typeFilter '{text}': {m}"));
    let (resource_type, query) = text
        .split_once('?')
        .ok_or_else(|| invalid("expected ResourceType?search-parameters".into()))?;
    if !is_resource_type(resource_type) {
        return Err(invalid(format!(
            "'{resource_type}' is not a FHIR R4 resource type"
        )));
    }
    let mut clauses = Vec::new();
    let mut issues = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| invalid(format!("'{pair}' is not name=value")))?;
        let name = decode(name)?;
        let raw = decode(raw)?;
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (name.as_str(), None),
        };
        if RESULT_PARAMETERS.contains(&code) {
            return Err(invalid(format!(
                "{code} shapes a search result and has no place in a filter"
            )));
        }
        let unsupported =
            |m: String| FilterIssue::Unsupported(format!("_typeFilter '{text}': {m}"));
        let Some(param) = lookup(resource_type, code) else {
            issues.push(unsupported(format!(
                "the search parameter '{code}' of {resource_type} is not supported"
            )));
            continue;
        };
        let modifier = match (modifier, param.kind) {
            (None, _) => Modifier::None,
            (Some("missing"), _) => Modifier::Missing,
            (Some("not"), ParamType::Token) => Modifier::Not,
            (Some("text"), ParamType::Token) => Modifier::Text,
            (Some("exact"), ParamType::String) => Modifier::Exact,
            (Some("contains"), ParamType::String) => Modifier::Contains,
            (Some(m), _) => {
                issues.push(unsupported(format!(
                    "the modifier ':{m}' on '{code}' is not supported"
                )));
                continue;
            }
        };
        let values = split_values(&raw)
            .into_iter()
            .map(|v| SearchValue::parse(param.kind, modifier, &v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid(format!("{code}: {m}")))?;
        if values.is_empty() {
            return Err(invalid(format!("{code} has no value")));
        }
        clauses.push(Clause {
            param,
            modifier,
            values,
        });
    }
    Ok((
        TypeFilter {
            resource_type: resource_type.to_string(),
            text: text.to_string(),
            clauses,
        },
        issues,
    ))
}

/// A parameter's alternatives: split at commas, except escaped ones (`\,`).
fn split_values(raw: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap().push(n);
                }
            }
            ',' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.retain(|v| !v.is_empty());
    out
}
