//! The one routing table from (method, path) to engine calls, on plain
//! `http` types, used by the local server and every Lambda alike.

mod auth;
mod export_routes;
pub mod outcome;
mod resource_routes;
mod revision_routes;
pub mod routes;
mod schedule_routes;
mod view_routes;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::Value;

pub use auth::{Authenticator, ExternalIssuer, OpenAccess, TokenAuthenticator};
pub use outcome::ApiError;

use crate::engine::Services;
use routes::Endpoint;

pub const FHIR_JSON: &str = "application/fhir+json";
pub const FHIR_NDJSON: &str = "application/fhir+ndjson";

/// Requests with a larger body are refused with 413.
pub const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct Api {
    pub services: Services,
    pub auth: Arc<dyn Authenticator>,
    /// Path prefix of the FHIR base, e.g. `/fhir`.
    pub base_path: String,
    /// The token endpoint and discovery, when authorization is on.
    pub auth_server: Option<Arc<crate::auth::AuthServer>>,
}

/// Where the built-in token endpoint answers (outside the FHIR base).
pub const TOKEN_PATH: &str = "/auth/token";

impl Api {
    pub fn new(services: Services, auth: Arc<dyn Authenticator>, base_path: &str) -> Self {
        Api {
            services,
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
        if let Some(resp) = self.auth_server_answer(&path, &req).await {
            return Ok(resp);
        }
        let rest = self.fhir_rest(&path)?;
        let segments = path_segments(&path, rest)?;
        if segments.iter().any(String::is_empty) {
            // `/fhir/` or `/fhir//Patient`: one address per thing, so the
            // same answer comes from every route (API Gateway routes only
            // the canonical path). 308 keeps the method and body.
            return Ok(canonical_redirect(&req, &self.base_path, rest));
        }
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        let endpoint = routes::resolve(&segs, &method).map_err(|e| {
            if e.status == 404 {
                ApiError::not_found(format!("Nothing at {path}"))
            } else {
                e
            }
        })?;
        self.dispatch(endpoint, req, &segs, &path).await
    }

    /// The token endpoint and SMART discovery, when authorization is on:
    /// they answer outside the FHIR base.
    async fn auth_server_answer(
        &self,
        path: &str,
        req: &Request<Bytes>,
    ) -> Option<Response<Bytes>> {
        let server = self.auth_server.as_ref()?;
        if path == TOKEN_PATH {
            return Some(token_response(server, req).await);
        }
        if path == format!("{}/.well-known/smart-configuration", self.base_path) {
            return Some(json_response(
                StatusCode::OK,
                "application/json",
                &server.smart_configuration(),
            ));
        }
        None
    }

    /// The part of `path` after the FHIR base (empty for the base itself);
    /// anything else is a 404 that names the base.
    fn fhir_rest<'p>(&self, path: &'p str) -> Result<&'p str, ApiError> {
        let Some(rest) = path
            .strip_prefix(&self.base_path)
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            return Err(ApiError::not_found(format!(
                "Nothing at {path}; the FHIR base is {}",
                self.base_path
            )));
        };
        // At a base of `/`, the path `/` is the base itself.
        Ok(if rest == "/" && self.base_path.is_empty() {
            ""
        } else {
            rest
        })
    }

    /// Calls the engine for a resolved endpoint; `segs` are the path's
    /// segments after the base.
    async fn dispatch(
        &self,
        endpoint: Endpoint,
        req: Request<Bytes>,
        segs: &[&str],
        path: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        match endpoint {
            Endpoint::Metadata => Ok(json_response(
                StatusCode::OK,
                FHIR_JSON,
                &self.services.resources.capability_statement(),
            )),
            Endpoint::Kickoff => self.kickoff(req, segs).await,
            Endpoint::ExportRevisions => self.export_revisions(req).await,
            Endpoint::RevisionsFile => self.revisions_file(&req).await,
            Endpoint::Schedules => self.schedules(req, &segs[1..]).await,
            Endpoint::Releases => self.releases(req, &segs[1..]).await,
            Endpoint::JobStatus => self.status(&req, segs[1]).await,
            Endpoint::JobCancel => self.cancel(&req, segs[1]).await,
            Endpoint::JobFile => self.file(&req, segs[1], segs[3]).await,
            Endpoint::ViewRun => self.view_run(req, None).await,
            Endpoint::ViewExport => self.view_export(req).await,
            Endpoint::StoredViewRun => {
                let id = segs[1].to_string();
                self.view_run(req, Some(&id)).await
            }
            Endpoint::Bundle => self.bundle(req).await,
            Endpoint::Create => self.create(req, segs[0]).await,
            Endpoint::Read => self.read(&req, segs[0], segs[1]).await,
            Endpoint::Update => self.update(req, segs[0], segs[1]).await,
            Endpoint::Delete => self.delete(&req, segs[0], segs[1]).await,
            // Outside the base: answered above, when authorization is on.
            Endpoint::Token | Endpoint::SmartConfiguration => {
                Err(ApiError::not_found(format!("Nothing at {path}")))
            }
        }
    }
}

/// The percent-decoded segments of the path after the base; a `.` or `..`
/// segment addresses nothing here (404).
fn path_segments(path: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let segments: Vec<String> = rest
        .split('/')
        .skip(1)
        .map(|s| percent_decode_str(s).decode_utf8().map(|c| c.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::invalid("The path is not valid UTF-8"))?;
    if segments.iter().any(|s| s == "." || s == "..") {
        return Err(ApiError::not_found(format!(
            "Nothing at {path}: a path with '.' or '..' segments addresses nothing here"
        )));
    }
    Ok(segments)
}

/// 308 to the same path without empty segments, query kept.
fn canonical_redirect(req: &Request<Bytes>, base_path: &str, rest: &str) -> Response<Bytes> {
    let mut location = base_path.to_string();
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        location.push('/');
        location.push_str(segment);
    }
    if location.is_empty() {
        location.push('/');
    }
    if let Some(query) = req.uri().query() {
        location.push('?');
        location.push_str(query);
    }
    let mut resp = empty_response(StatusCode::PERMANENT_REDIRECT);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
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
