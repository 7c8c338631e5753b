//! `$export-revisions` (the audit trail, after OpenSpecimen's
//! `export-revisions`): `POST [base]/$export-revisions` with the seed's JSON
//! body, and `GET [base]/$export-revisions/file?fileId=…`.

use crate::domain::revisions::parse_revisions_request;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use serde_json::json;

use super::export_routes::{accepts_gzip, parse_prefer, query_param};
use super::{empty_response, json_response, require_json_body, Api};
use crate::domain::job::status_url;
use crate::domain::resource::is_valid_id;
use crate::engine::RevisionsOutcome;
use crate::http::ApiError;

impl Api {
    pub(super) async fn export_revisions(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let headers = req.headers();
        if !req.body().is_empty() {
            require_json_body(headers)?;
        }
        if req.uri().query().is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::invalid(
                "$export-revisions takes its parameters in the JSON body, not the query string",
            ));
        }
        let prefer = parse_prefer(headers)?;
        let base = &self.services.config.base_url;
        let request_url = format!("{base}/$export-revisions");
        let query = parse_revisions_request(req.body(), self.services.ports.clock.now())?;
        let job_id = self
            .services
            .revisions
            .start_revisions(&caller, query, request_url)
            .await?;
        let status = status_url(base, &job_id);
        let location =
            HeaderValue::from_str(&status).map_err(|_| ApiError::internal("bad status URL"))?;
        if prefer.respond_async {
            let mut resp = empty_response(StatusCode::ACCEPTED);
            resp.headers_mut()
                .insert(header::CONTENT_LOCATION, location);
            return Ok(resp);
        }
        let outcome = self
            .services
            .revisions
            .wait_for_revisions(&caller, &job_id, self.services.config.revisions_wait)
            .await?;
        let body = match outcome {
            RevisionsOutcome::Ready { file_id } => json!({
                "fileId": file_id,
                "fileUrl": format!("{base}/$export-revisions/file?fileId={file_id}"),
                "status": status,
            }),
            RevisionsOutcome::Pending { job_id, error } => {
                let mut b = json!({ "fileId": null, "jobId": job_id, "status": status });
                if let Some(e) = error {
                    b["error"] = json!(e);
                }
                b
            }
        };
        let mut resp = json_response(StatusCode::OK, "application/json", &body);
        resp.headers_mut()
            .insert(header::CONTENT_LOCATION, location);
        Ok(resp)
    }

    pub(super) async fn revisions_file(
        &self,
        req: &Request<Bytes>,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let file_id = query_param(req, "fileId")?
            .ok_or_else(|| ApiError::invalid("fileId: the query parameter is required"))?;
        if !is_valid_id(&file_id) {
            return Err(ApiError::invalid(format!(
                "fileId: '{file_id}' is not a file id"
            )));
        }
        let url = self
            .services
            .revisions
            .revisions_file_link(&caller, &file_id, accepts_gzip(req.headers()))
            .await?;
        let mut resp = empty_response(StatusCode::SEE_OTHER);
        let h = resp.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&url).map_err(|_| ApiError::internal("bad file URL"))?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        Ok(resp)
    }
}
