//! FHIR search queries evaluated on resources in memory: the `_typeFilter`
//! of a Bulk Data export (`Observation?code=http://loinc.org|8867-4&date=ge2020`).
//!
//! Parameters are the R4 search parameters, evaluated with their own
//! FHIRPath expressions (`r4-search-parameters.json`, from the FHIR R4
//! specification). Supported types: token, string, date, reference,
//! quantity, number and uri, with `:missing` on all, `:not` and `:text` on
//! tokens, `:exact` and `:contains` on strings.

mod definitions;
mod query;
mod value_match;

pub use query::{parse_type_filters, FilterIssue, TypeFilter};

use serde_json::Value;

/// Whether `resource` matches any of `filters` (those of its type): filters
/// of one type are alternatives, the clauses of one filter all must hold.
pub fn matches_any(filters: &[TypeFilter], resource: &Value) -> bool {
    filters.iter().any(|f| f.matches(resource))
}
