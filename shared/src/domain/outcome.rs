//! FHIR OperationOutcome, the one error shape every client sees. The HTTP
//! layer answers errors with it (`http::outcome`); export error files hold
//! one per line.

use serde_json::{json, Value};

/// An OperationOutcome with a single issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}
