//! FHIR OperationOutcome: the one error shape every client sees.
//!
//! [`ApiError`] carries the HTTP status and the issue code together, so an
//! error is mapped to a response in exactly one place (`http::respond`).

use serde_json::{json, Value};

/// An error a client caused or must be told about, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: u16,
    /// FHIR `IssueType` code (`invalid`, `not-found`, `not-supported`, ...).
    pub code: &'static str,
    pub message: String,
    /// Extra headers (e.g. `Allow` on 405, `WWW-Authenticate` on 401).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid", message)
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(400, "not-supported", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not-found", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "exception", message)
    }
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn to_outcome(&self) -> Value {
        let severity = if self.status >= 500 { "fatal" } else { "error" };
        operation_outcome(severity, self.code, &self.message)
    }
}

/// An OperationOutcome with a single issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}
