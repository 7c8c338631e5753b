//! Errors as a client sees them: an HTTP status and a FHIR OperationOutcome.
//!
//! [`ApiError`] is what a route answers. The domain's [`Error`] becomes one
//! here, in one table ([`status_of`]); a test checks every row. Only
//! this module chooses a status.

use serde_json::Value;

use crate::domain::error::{Error, PortError, STORE_RETRY_SECS};
use crate::domain::outcome::operation_outcome;

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
    // The kinds the domain has too take their status from its table.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::invalid(message).into()
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::not_found(message).into()
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::internal(message).into()
    }
    /// A body or request larger than the service takes.
    pub fn too_large(message: impl Into<String>) -> Self {
        Error::too_large(message).into()
    }
    /// The service cannot answer now; retrying may help.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Error::unavailable(message, retry_after_secs).into()
    }
    // HTTP's own.
    /// No valid credentials: 401 with the challenge to answer.
    pub fn unauthorized(message: impl Into<String>, challenge: impl Into<String>) -> Self {
        Self::new(401, "login", message).with_header("WWW-Authenticate", challenge)
    }
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            405,
            "not-supported",
            format!("Method not allowed here; allowed: {allow}"),
        )
        .with_header("Allow", allow)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "not-supported", message)
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

/// The status and FHIR issue code of each kind of domain error.
pub fn status_of(e: &Error) -> (u16, &'static str) {
    match e {
        Error::Invalid { .. } => (400, "invalid"),
        Error::NotSupported(_) => (400, "not-supported"),
        Error::Forbidden(_) => (403, "forbidden"),
        Error::NotFound(_) => (404, "not-found"),
        Error::Conflict(_) => (409, "conflict"),
        Error::Gone(_) => (410, "deleted"),
        Error::TooLarge(_) => (413, "too-costly"),
        Error::BeyondStore(_) => (422, "not-supported"),
        Error::TooCostly(_) => (422, "too-costly"),
        Error::Throttled { .. } => (429, "throttled"),
        Error::Internal(_) => (500, "exception"),
        Error::Unavailable { .. } => (503, "transient"),
        Error::Store(p) => match p {
            PortError::Conflict | PortError::AlreadyExists => (409, "conflict"),
            PortError::NotFound => (404, "not-found"),
            PortError::Unsupported(_) => (422, "not-supported"),
            PortError::Transient { .. } => (503, "transient"),
            PortError::Permanent { .. } => (500, "exception"),
        },
    }
}

/// How long a client should wait before retrying, where a retry may help.
fn retry_after(e: &Error) -> Option<u64> {
    match e {
        Error::Throttled {
            retry_after_secs, ..
        }
        | Error::Unavailable {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        Error::Store(PortError::Transient { .. }) => Some(STORE_RETRY_SECS),
        _ => None,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if let Error::Store(p @ (PortError::Transient { .. } | PortError::Permanent { .. })) = &e {
            tracing::error!(error = %p, "storage failure");
        }
        let (status, code) = status_of(&e);
        let mut api = ApiError::new(status, code, e.message());
        if let Some(secs) = retry_after(&e) {
            api = api.with_header("Retry-After", secs.to_string());
        }
        api
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        Error::Store(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of domain error, with the status, code and Retry-After a
    /// client gets for it.
    #[test]
    fn each_kind_of_error_has_its_status() {
        let cause = || std::io::Error::other("disk");
        let table: Vec<(Error, u16, &str, Option<&str>)> = vec![
            (Error::invalid_param("_type", "bad"), 400, "invalid", None),
            (Error::not_supported("no"), 400, "not-supported", None),
            (Error::forbidden("no"), 403, "forbidden", None),
            (Error::not_found("no"), 404, "not-found", None),
            (Error::conflict("no"), 409, "conflict", None),
            (Error::gone("no"), 410, "deleted", None),
            (Error::too_large("no"), 413, "too-costly", None),
            (Error::beyond_store("no"), 422, "not-supported", None),
            (Error::too_costly("no"), 422, "too-costly", None),
            (Error::throttled("no", 7), 429, "throttled", Some("7")),
            (Error::internal("no"), 500, "exception", None),
            (Error::unavailable("no", 3), 503, "transient", Some("3")),
            (PortError::Conflict.into(), 409, "conflict", None),
            (PortError::AlreadyExists.into(), 409, "conflict", None),
            (PortError::NotFound.into(), 404, "not-found", None),
            (
                PortError::Unsupported("big".into()).into(),
                422,
                "not-supported",
                None,
            ),
            (
                PortError::transient("the store", cause()).into(),
                503,
                "transient",
                Some("5"),
            ),
            (
                PortError::permanent("the store", cause()).into(),
                500,
                "exception",
                None,
            ),
        ];
        for (error, status, code, retry) in table {
            let shown = error.to_string();
            let api = ApiError::from(error);
            assert_eq!((api.status, api.code), (status, code), "{shown}");
            assert_eq!(api.message, shown);
            let header = api.headers.iter().find(|(n, _)| *n == "Retry-After");
            assert_eq!(header.map(|(_, v)| v.as_str()), retry, "{shown}");
        }
    }

    /// A store's own words reach the logs, not the client.
    #[test]
    fn store_failures_are_told_in_our_words() {
        let e = PortError::permanent("the jobs table", std::io::Error::other("secret detail"));
        let api = ApiError::from(Error::from(e));
        assert_eq!(api.message, "The server failed: the jobs table");
    }
}
