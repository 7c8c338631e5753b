//! The FHIR write API routes: read, create, update, delete, Bundles.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};

use super::{empty_response, require_json_body, Api, FHIR_JSON, MAX_BODY_BYTES};
use crate::domain::instant::{format_instant, from_micros, http_date};
use crate::domain::resource_text::ResourceText;
use crate::engine::{BundleReply, EntryWritten};
use crate::http::ApiError;
use crate::ports::Version;
use serde_json::{json, Value};

fn resource_response(status: StatusCode, v: &Version, base_url: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(v.body.clone().unwrap_or_default()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", v.version)) {
        h.insert(header::ETAG, etag);
    }
    if let Ok(lm) = HeaderValue::from_str(&http_date(from_micros(v.last_updated))) {
        h.insert(header::LAST_MODIFIED, lm);
    }
    if status == StatusCode::CREATED || status == StatusCode::OK {
        let loc = format!(
            "{base_url}/{}/{}/_history/{}",
            v.resource_type, v.id, v.version
        );
        if let Ok(loc) = HeaderValue::from_str(&loc) {
            h.insert(header::LOCATION, loc);
        }
    }
    resp
}

/// A resource body as its client wrote it.
fn parse_resource(body: &[u8]) -> Result<ResourceText, ApiError> {
    ResourceText::parse(body).map_err(|e| ApiError::invalid(format!("The body is {e}")))
}

fn check_size(body: &Bytes) -> Result<(), ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(format!(
            "The body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Api {
    pub(super) async fn read(
        &self,
        req: &Request<Bytes>,
        t: &str,
        id: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let v = self
            .services
            .resources
            .read_resource(&caller, t, id)
            .await?;
        let mut resp = resource_response(StatusCode::OK, &v, &self.services.config.base_url);
        resp.headers_mut().remove(header::LOCATION);
        Ok(resp)
    }

    pub(super) async fn create(
        &self,
        req: Request<Bytes>,
        t: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        check_size(req.body())?;
        require_json_body(req.headers())?;
        let resource = parse_resource(req.body())?;
        let w = self
            .services
            .resources
            .create_resource(&caller, t, resource)
            .await?;
        Ok(resource_response(
            StatusCode::CREATED,
            &w.version,
            &self.services.config.base_url,
        ))
    }

    pub(super) async fn update(
        &self,
        req: Request<Bytes>,
        t: &str,
        id: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        check_size(req.body())?;
        require_json_body(req.headers())?;
        let resource = parse_resource(req.body())?;
        let w = self
            .services
            .resources
            .update_resource(&caller, t, id, resource)
            .await?;
        let status = if w.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(resource_response(
            status,
            &w.version,
            &self.services.config.base_url,
        ))
    }

    pub(super) async fn delete(
        &self,
        req: &Request<Bytes>,
        t: &str,
        id: &str,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        self.services
            .resources
            .delete_resource(&caller, t, id)
            .await?;
        Ok(empty_response(StatusCode::NO_CONTENT))
    }

    pub(super) async fn bundle(&self, req: Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        check_size(req.body())?;
        require_json_body(req.headers())?;
        let reply = self
            .services
            .resources
            .process_bundle(&caller, req.body())
            .await?;
        Ok(super::json_response(
            StatusCode::OK,
            FHIR_JSON,
            &bundle_response(reply),
        ))
    }
}

/// The batch-response or transaction-response Bundle: each entry's status
/// line, and where its version is (or when its deletion was recorded).
fn bundle_response(reply: BundleReply) -> Value {
    let entries: Vec<Value> = reply
        .entries
        .into_iter()
        .map(|entry| match entry {
            Ok(EntryWritten { delete, result: r }) => {
                let status = match () {
                    _ if delete => "204 No Content",
                    _ if r.created => "201 Created",
                    _ => "200 OK",
                };
                let mut response = json!({ "status": status });
                if !r.version.deleted {
                    response["location"] = json!(format!(
                        "{}/{}/_history/{}",
                        r.version.resource_type, r.version.id, r.version.version
                    ));
                    response["etag"] = json!(format!("W/\"{}\"", r.version.version));
                    response["lastModified"] =
                        json!(format_instant(from_micros(r.version.last_updated)));
                } else if r.version.last_updated > 0 {
                    // When the deletion was recorded (an audit trail's
                    // revision time).
                    response["lastModified"] =
                        json!(format_instant(from_micros(r.version.last_updated)));
                }
                json!({ "response": response })
            }
            Err(e) => {
                let e = ApiError::from(e);
                json!({ "response": {
                    "status": format!("{} {}", e.status, e.code),
                    "outcome": e.to_outcome()
                }})
            }
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": if reply.transaction { "transaction-response" } else { "batch-response" },
        "entry": entries
    })
}
