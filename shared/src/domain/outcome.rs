//! FHIR OperationOutcome: the one error shape every client sees.
//!
//! [`ApiError`] carries the HTTP status and the issue code together. Each
//! kind of error has its constructor here, and only here is a status
//! chosen; the response is written in one place (`http::error_response`).

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
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
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
    /// No valid credentials: 401 with the challenge to answer.
    pub fn unauthorized(message: impl Into<String>, challenge: impl Into<String>) -> Self {
        Self::new(401, "login", message).with_header("WWW-Authenticate", challenge)
    }
    /// The resource existed and was deleted.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "deleted", message)
    }
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            405,
            "not-supported",
            format!("Method not allowed here; allowed: {allow}"),
        )
        .with_header("Allow", allow)
    }
    /// A body or request larger than the service takes.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "too-costly", message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "not-supported", message)
    }
    /// Well-formed, but beyond what the store can do (e.g. a transaction
    /// larger than its atomic write limit).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "not-supported", message)
    }
    /// A request the service could answer but will not synchronously: too
    /// much to compute or send (the message says what to use instead).
    pub fn too_costly(message: impl Into<String>) -> Self {
        Self::new(422, "too-costly", message)
    }
    /// Too many requests of this client at once: try again after `retry_after_secs`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(429, "throttled", message)
            .with_header("Retry-After", retry_after_secs.to_string())
    }
    /// The service cannot answer now; retrying may help.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(503, "transient", message)
            .with_header("Retry-After", retry_after_secs.to_string())
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
