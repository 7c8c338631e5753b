//! The R4 search parameters: code, base types, type and FHIRPath
//! expression, as the FHIR R4 (4.0.1) specification defines them (CC0).
//! Composite and special parameters are left out: they are not supported.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::fhirpath::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
}

#[derive(Debug)]
pub struct SearchParam {
    pub kind: ParamType,
    pub expression: Path,
}

#[derive(Deserialize)]
struct Raw {
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: ParamType,
    expression: String,
}

/// Parameters by (resource type or `Resource`/`DomainResource`, code).
type Table = HashMap<(String, String), Arc<SearchParam>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let raw: Vec<Raw> = serde_json::from_str(include_str!("r4-search-parameters.json"))
            .expect("the vendored search parameters are valid JSON");
        let mut table = Table::new();
        for r in raw {
            // An expression the FHIRPath subset cannot parse leaves its
            // parameter unsupported (none of R4's do today).
            let Ok(expression) = Path::parse(&r.expression) else {
                continue;
            };
            let param = Arc::new(SearchParam {
                kind: r.kind,
                expression,
            });
            for base in r.base {
                table.insert((base, r.code.clone()), param.clone());
            }
        }
        table
    })
}

/// The parameter `code` of `resource_type`, if R4 defines it.
pub fn lookup(resource_type: &str, code: &str) -> Option<Arc<SearchParam>> {
    let t = table();
    [resource_type, "DomainResource", "Resource"]
        .iter()
        .find_map(|base| t.get(&(base.to_string(), code.to_string())).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendored_expression_parses() {
        let raw: Vec<Raw> =
            serde_json::from_str(include_str!("r4-search-parameters.json")).unwrap();
        let failing: Vec<String> = raw
            .iter()
            .filter(|r| Path::parse(&r.expression).is_err())
            .map(|r| r.expression.clone())
            .collect();
        assert!(failing.is_empty(), "{failing:?}");
        assert!(raw.len() > 1300);
    }

    #[test]
    fn parameters_are_found_by_type_and_code() {
        assert_eq!(
            lookup("Observation", "code").unwrap().kind,
            ParamType::Token
        );
        assert_eq!(
            lookup("Patient", "_lastUpdated").unwrap().kind,
            ParamType::Date
        );
        assert_eq!(
            lookup("Patient", "birthdate").unwrap().kind,
            ParamType::Date
        );
        assert!(lookup("Patient", "code").is_none());
    }
}
