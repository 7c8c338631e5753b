//! Export schedules and releases over HTTP:
//!
//! - `POST|GET [base]/$export-schedules`: create one, list the caller's;
//! - `GET|DELETE [base]/$export-schedules/{id}`;
//! - `POST [base]/$export-schedules/{id}/pause|resume|run`;
//! - `GET [base]/$export-schedules/{id}/runs`: the recent runs;
//! - `GET [base]/$export-schedules/{id}/runs/{n|latest}`: a run's status
//!   and manifest, as a Bulk Data status request answers;
//! - `POST [base]/$export-schedules/{id}/runs/{n|latest}/links?expiresIn=s`:
//!   presigned links for a downstream system without a token;
//! - `POST|GET [base]/$export-releases`, `GET|HEAD [base]/$export-releases/{name}`
//!   (`latest`: the newest), `GET [base]/$export-releases/{name}/manifest`.

use crate::domain::schedule_input::{NewRelease, NewSchedule};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::export_routes::{query_param, status_response};
use super::{empty_response, json_response, require_json_body, Api};
use crate::domain::instant::format_instant;
use crate::domain::job::status_url;
use crate::domain::schedule::{release_url, schedule_url};
use crate::engine::{Caller, RunSelector};
use crate::http::ApiError;

fn header_value(v: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(v).map_err(|_| ApiError::internal("a link is not a valid header"))
}

fn created(location: &str, body: &Value) -> Result<Response<Bytes>, ApiError> {
    let mut resp = json_response(StatusCode::CREATED, "application/json", body);
    resp.headers_mut()
        .insert(header::LOCATION, header_value(location)?);
    Ok(resp)
}

fn ok_json(body: &Value) -> Response<Bytes> {
    let mut resp = json_response(StatusCode::OK, "application/json", body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Api {
    /// Every `$export-schedules` route; `rest` is the path after it.
    pub(super) async fn schedules(
        &self,
        req: Request<Bytes>,
        rest: &[&str],
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let services = &self.services;
        let base = &services.config.base_url;
        let method = req.method().clone();
        match (rest, &method) {
            ([], &Method::POST) => {
                require_json_body(req.headers())?;
                let new = NewSchedule::parse(req.body(), base)?;
                let s = services.schedules.create_schedule(&caller, new).await?;
                created(&schedule_url(base, &s.id), &s.view(base))
            }
            ([], &Method::GET) => {
                let list: Vec<Value> = services
                    .schedules
                    .schedules_of(&caller)
                    .await?
                    .iter()
                    .map(|s| s.view(base))
                    .collect();
                Ok(ok_json(&json!({ "schedules": list })))
            }
            ([], _) => Err(ApiError::method_not_allowed("GET, POST")),
            ([id], &Method::GET) => Ok(ok_json(
                &services
                    .schedules
                    .owned_schedule(&caller, id)
                    .await?
                    .view(base),
            )),
            ([id], &Method::DELETE) => {
                services.schedules.delete_schedule(&caller, id).await?;
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            ([_], _) => Err(ApiError::method_not_allowed("GET, DELETE")),
            ([id, action @ ("pause" | "resume")], &Method::POST) => {
                let s = services
                    .schedules
                    .set_schedule_paused(&caller, id, *action == "pause")
                    .await?;
                Ok(ok_json(&s.view(base)))
            }
            ([id, "run"], &Method::POST) => {
                let job_id = services.schedules.run_schedule_now(&caller, id).await?;
                let mut resp = empty_response(StatusCode::ACCEPTED);
                resp.headers_mut().insert(
                    header::CONTENT_LOCATION,
                    header_value(&status_url(base, &job_id))?,
                );
                Ok(resp)
            }
            ([_, "pause" | "resume" | "run"], _) => Err(ApiError::method_not_allowed("POST")),
            ([id, "runs", after @ ..], _) => self.schedule_runs(&req, &caller, id, after).await,
            _ => Err(ApiError::not_found("Nothing here under $export-schedules")),
        }
    }

    /// `$export-schedules/{id}/runs` and below: the recent runs, one run's
    /// status, its presigned links.
    async fn schedule_runs(
        &self,
        req: &Request<Bytes>,
        caller: &Caller,
        id: &str,
        after: &[&str],
    ) -> Result<Response<Bytes>, ApiError> {
        let services = &self.services;
        let base = &services.config.base_url;
        match (after, req.method()) {
            ([], &Method::GET) => {
                let runs: Vec<Value> = services
                    .schedules
                    .schedule_runs(caller, id)
                    .await?
                    .iter()
                    .map(|j| services.schedules.scheduled_run_view(j))
                    .collect();
                Ok(ok_json(&json!({ "runs": runs })))
            }
            ([run], &Method::GET) => {
                let job_id = services
                    .schedules
                    .run_job(caller, id, RunSelector::parse(run)?)
                    .await?;
                let mut resp =
                    status_response(services.exports.status(caller, &job_id, None).await?)?;
                resp.headers_mut().insert(
                    header::CONTENT_LOCATION,
                    header_value(&status_url(base, &job_id))?,
                );
                Ok(resp)
            }
            ([run, "links"], &Method::POST) => {
                let job_id = services
                    .schedules
                    .run_job(caller, id, RunSelector::parse(run)?)
                    .await?;
                let ttl = match query_param(req, "expiresIn")? {
                    None => None,
                    Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                        ApiError::invalid(format!("expiresIn: '{t}' is not a number of seconds"))
                    })?)),
                };
                Ok(ok_json(
                    &services
                        .exports
                        .presigned_manifest(caller, &job_id, ttl)
                        .await?,
                ))
            }
            ([] | [_], _) => Err(ApiError::method_not_allowed("GET")),
            ([_, "links"], _) => Err(ApiError::method_not_allowed("POST")),
            _ => Err(ApiError::not_found("Nothing here under $export-schedules")),
        }
    }

    /// Every `$export-releases` route; `rest` is the path after it.
    pub(super) async fn releases(
        &self,
        req: Request<Bytes>,
        rest: &[&str],
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let services = &self.services;
        let base = &services.config.base_url;
        let method = req.method().clone();
        match (rest, &method) {
            ([], &Method::POST) => {
                require_json_body(req.headers())?;
                let new = NewRelease::parse(req.body(), base, services.ports.clock.now())?;
                let r = services.releases.create_release(&caller, new).await?;
                created(&release_url(base, &r.name), &r.view(base))
            }
            ([], &Method::GET) => {
                let list: Vec<Value> = services
                    .releases
                    .releases()
                    .await?
                    .iter()
                    .map(|r| r.view(base))
                    .collect();
                Ok(ok_json(&json!({ "releases": list })))
            }
            ([], _) => Err(ApiError::method_not_allowed("GET, POST")),
            ([name], m) if m == Method::GET || m == Method::HEAD => {
                let r = services.releases.release_record(name).await?;
                let view = r.view(base);
                let mut resp = ok_json(&view);
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_LOCATION,
                    header_value(&release_url(base, &r.name))?,
                );
                h.insert("x-release-name", header_value(&r.name)?);
                h.insert(
                    "x-transaction-time",
                    header_value(&format_instant(r.transaction_time))?,
                );
                // The URL may hold non-ASCII text (a _typeFilter value).
                let request = percent_encoding::utf8_percent_encode(
                    &r.request.request_url,
                    percent_encoding::CONTROLS,
                )
                .to_string();
                h.insert("x-request", header_value(&request)?);
                h.insert(
                    header::LINK,
                    header_value(&format!(
                        "<{}/manifest>; rel=\"manifest\"",
                        release_url(base, &r.name)
                    ))?,
                );
                if m == Method::HEAD {
                    *resp.body_mut() = Bytes::new();
                }
                Ok(resp)
            }
            ([_], _) => Err(ApiError::method_not_allowed("GET, HEAD")),
            ([name, "manifest"], &Method::GET) => {
                status_response(services.releases.release_status(&caller, name).await?)
            }
            ([_, "manifest"], _) => Err(ApiError::method_not_allowed("GET")),
            _ => Err(ApiError::not_found("Nothing here under $export-releases")),
        }
    }
}
