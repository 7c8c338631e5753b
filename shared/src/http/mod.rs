//! The one routing table from (method, path) to engine calls, on plain
//! `http` types, used by the local server and every Lambda alike.

mod auth;
mod export_routes;
mod resource_routes;
mod revision_routes;
mod schedule_routes;
mod view_routes;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::Value;

pub use auth::{Authenticator, ExternalIssuer, OpenAccess, TokenAuthenticator};

use crate::domain::ApiError;
use crate::engine::Engine;

pub const FHIR_JSON: &str = "application/fhir+json";
pub const FHIR_NDJSON: &str = "application/fhir+ndjson";

/// Requests with a larger body are refused with 413.
pub const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct Api {
    pub engine: Engine,
    pub auth: Arc<dyn Authenticator>,
    /// Path prefix of the FHIR base, e.g. `/fhir`.
    pub base_path: String,
    /// The token endpoint and discovery, when authorization is on.
    pub auth_server: Option<Arc<crate::auth::AuthServer>>,
}

/// Where the built-in token endpoint answers (outside the FHIR base).
pub const TOKEN_PATH: &str = "/auth/token";

impl Api {
    pub fn new(engine: Engine, auth: Arc<dyn Authenticator>, base_path: &str) -> Self {
        Api {
            engine,
            auth,
            base_path: base_path.trim_end_matches('/').to_string(),
            auth_server: None,
        }
    }

    /// Answers one request. Never panics on input; every error is an
    /// OperationOutcome with its status.
    pub async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => error_response(&e),
        }
    }

    async fn route(&self, req: Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
        let path = req.uri().path().to_string();
        if let Some(server) = &self.auth_server {
            if path == TOKEN_PATH {
                return Ok(token_response(server, &req).await);
            }
            if path == format!("{}/.well-known/smart-configuration", self.base_path) {
                return Ok(json_response(
                    StatusCode::OK,
                    "application/json",
                    &server.smart_configuration(),
                ));
            }
        }
        let Some(rest) = path
            .strip_prefix(&self.base_path)
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            return Err(ApiError::not_found(format!(
                "Nothing at {path}; the FHIR base is {}",
                self.base_path
            )));
        };
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode_str(s).decode_utf8().map(|c| c.into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::invalid("The path is not valid UTF-8"))?;
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        match (segs.as_slice(), &method) {
            (["metadata"], &Method::GET) => Ok(json_response(
                StatusCode::OK,
                FHIR_JSON,
                &self.engine.capability_statement(),
            )),
            (["metadata"], _) => Err(method_not_allowed("GET")),
            (["$export"], m) | (["Patient", "$export"], m) | (["Group", _, "$export"], m)
                if m == Method::GET || m == Method::POST =>
            {
                self.kickoff(req, &segs).await
            }
            (["$export"] | ["Patient", "$export"] | ["Group", _, "$export"], _) => {
                Err(method_not_allowed("GET, POST"))
            }
            (["$export-revisions"], &Method::POST) => self.export_revisions(req).await,
            (["$export-revisions"], _) => Err(method_not_allowed("POST")),
            (["$export-revisions", "file"], &Method::GET) => self.revisions_file(&req).await,
            (["$export-revisions", "file"], _) => Err(method_not_allowed("GET")),
            (["$export-schedules", rest @ ..], _) => self.schedules(req, rest).await,
            (["$export-releases", rest @ ..], _) => self.releases(req, rest).await,
            (["$export-jobs", id], &Method::GET) => self.status(&req, id).await,
            (["$export-jobs", id], &Method::DELETE) => self.cancel(&req, id).await,
            (["$export-jobs", _], _) => Err(method_not_allowed("GET, DELETE")),
            (["$export-jobs", id, "files", name], &Method::GET) => self.file(&req, id, name).await,
            (["$export-jobs", _, "files", _], _) => Err(method_not_allowed("GET")),
            (["ViewDefinition", "$viewdefinition-run"], &Method::POST) => {
                self.view_run(req, None).await
            }
            (["ViewDefinition", "$viewdefinition-run"], _) => Err(method_not_allowed("POST")),
            (["ViewDefinition", "$viewdefinition-export"], &Method::POST) => {
                self.view_export(req).await
            }
            (["ViewDefinition", "$viewdefinition-export"], _) => Err(method_not_allowed("POST")),
            (["ViewDefinition", id, "$viewdefinition-run"], m)
                if m == Method::GET || m == Method::POST =>
            {
                let id = id.to_string();
                self.view_run(req, Some(&id)).await
            }
            (["ViewDefinition", _, "$viewdefinition-run"], _) => {
                Err(method_not_allowed("GET, POST"))
            }
            ([], &Method::POST) => self.bundle(req).await,
            ([], _) => Err(method_not_allowed("POST")),
            ([t], &Method::POST) => self.create(req, t).await,
            ([_], _) => Err(method_not_allowed("POST")),
            ([t, id], &Method::GET) => self.read(&req, t, id).await,
            ([t, id], &Method::PUT) => self.update(req, t, id).await,
            ([t, id], &Method::DELETE) => self.delete(&req, t, id).await,
            ([_, _], _) => Err(method_not_allowed("GET, PUT, DELETE")),
            _ => Err(ApiError::not_found(format!("Nothing at {path}"))),
        }
    }
}

/// RFC 6749 token responses: JSON, never cached, errors per §5.2.
async fn token_response(server: &crate::auth::AuthServer, req: &Request<Bytes>) -> Response<Bytes> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| media_types(ct).any(|m| m == "application/x-www-form-urlencoded"));
    let result = if req.method() != Method::POST {
        Err(crate::auth::OAuthError {
            status: 405,
            error: "invalid_request",
            description: "use POST".into(),
        })
    } else if !form_type {
        Err(crate::auth::OAuthError {
            status: 400,
            error: "invalid_request",
            description: "the body must be application/x-www-form-urlencoded".into(),
        })
    } else {
        server.token(req.body()).await
    };
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.body(),
        ),
    };
    let mut resp = json_response(status, "application/json", &body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    }
    resp
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::method_not_allowed(allow)
}

pub fn error_response(e: &ApiError) -> Response<Bytes> {
    let mut resp = json_response(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        FHIR_JSON,
        &e.to_outcome(),
    );
    for (name, value) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(*name, v);
        }
    }
    resp
}

pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &Value,
) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn empty_response(status: StatusCode) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp
}

/// A header's value as text; a header that is not visible ASCII is refused.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("The {name} header is not valid text"))),
    }
}

/// Media type of a header value without parameters, lowercased.
fn media_types(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split(',').map(|part| {
        part.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn require_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = header_text(headers, "content-type")?.unwrap_or("");
    if media_types(ct).any(|m| m == FHIR_JSON || m == "application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "Content-Type must be {FHIR_JSON} (got '{ct}')"
        )))
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The body is not valid JSON: {e}")))
}
