//! `$viewdefinition-run`: `POST [base]/ViewDefinition/$viewdefinition-run`
//! with the view in the body, and `GET` or `POST
//! [base]/ViewDefinition/{id}/$viewdefinition-run` for a stored one.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::{empty_response, parse_json, require_json_body, Api, MAX_BODY_BYTES};
use crate::domain::job::status_url;
use crate::domain::view_export::view_export_url;
use crate::engine::{ViewExportInput, ViewSource};
use crate::http::ApiError;
use fhir_query::view::output::{render, Format};
use fhir_query::view::View;

/// What a run request asks for.
#[derive(Default)]
struct RunParams {
    view: Option<Value>,
    view_reference: Option<String>,
    resources: Vec<Value>,
    format: Option<String>,
    header: Option<bool>,
    patient: Option<String>,
    group: Option<String>,
    limit: Option<usize>,
}

fn reference_or_string(p: &Value, name: &str) -> Result<String, ApiError> {
    p.get("valueReference")
        .and_then(|r| r.get("reference"))
        .or_else(|| p.get("valueString"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid(format!("Parameter '{name}' takes a valueReference")))
}

impl RunParams {
    fn set(&mut self, name: &str, text: &str) -> Result<(), ApiError> {
        match name {
            "_format" => self.format = Some(text.to_string()),
            "header" => {
                self.header = Some(text.parse().map_err(|_| {
                    ApiError::invalid(format!("header: '{text}' is not true or false"))
                })?)
            }
            "patient" => self.patient = Some(text.to_string()),
            "group" => self.group = Some(text.to_string()),
            "viewReference" => self.view_reference = Some(text.to_string()),
            "_limit" => {
                self.limit = Some(text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::invalid(format!("_limit: '{text}' is not a positive integer"))
                })?)
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "Parameter '{other}' is not one $viewdefinition-run takes"
                )))
            }
        }
        Ok(())
    }

    fn read_body(&mut self, body: &Value) -> Result<(), ApiError> {
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(ApiError::invalid(
                "The body must be a FHIR Parameters resource",
            ));
        }
        let params = match body.get("parameter") {
            None => return Ok(()),
            Some(Value::Array(p)) => p,
            Some(_) => return Err(ApiError::invalid("Parameters.parameter must be a list")),
        };
        for p in params {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("A parameter has no name"))?;
            match name {
                "viewResource" | "resource" => {
                    let r = p
                        .get("resource")
                        .filter(|r| r.is_object())
                        .cloned()
                        .ok_or_else(|| {
                            ApiError::invalid(format!("Parameter '{name}' takes a resource"))
                        })?;
                    if name == "resource" {
                        self.resources.push(r);
                    } else if self.view.replace(r).is_some() {
                        return Err(ApiError::invalid("Only one viewResource may be given"));
                    }
                }
                "viewReference" | "patient" | "group" => {
                    self.set(name, &reference_or_string(p, name)?)?
                }
                _ => {
                    let text = p
                        .as_object()
                        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                        .map(|(_, v)| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .ok_or_else(|| {
                            ApiError::invalid(format!("Parameter '{name}' has no value"))
                        })?;
                    self.set(name, &text)?;
                }
            }
        }
        Ok(())
    }
}

impl Api {
    pub(super) async fn view_run(
        &self,
        req: Request<Bytes>,
        id: Option<&str>,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let mut params = RunParams::default();
        if let Some(id) = id {
            params.view_reference = Some(format!("ViewDefinition/{id}"));
        }
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            params.set(&k, &v)?;
        }
        if req.method() == Method::POST && !req.body().is_empty() {
            require_json_body(req.headers())?;
            if req.body().len() > MAX_BODY_BYTES {
                return Err(ApiError::too_large(format!(
                    "The body is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            params.read_body(&parse_json(req.body())?)?;
        }
        let definition = match (params.view.take(), params.view_reference.take()) {
            (Some(v), None) => v,
            (None, Some(r)) => self.services.views.stored_view(&caller, &r).await?,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("Give viewResource or viewReference, not both"))
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "No view: give viewResource or viewReference, or run a stored view at ViewDefinition/{id}/$viewdefinition-run",
                ))
            }
        };
        let view = View::parse(&definition)
            .map_err(|e| ApiError::invalid(format!("The ViewDefinition is not valid: {e}")))?;
        let format_text = params.format.as_deref().unwrap_or("json");
        let format = Format::parse(format_text, params.header.unwrap_or(true)).ok_or_else(|| {
            ApiError::invalid(format!(
                "_format '{format_text}' is not json, ndjson or csv (parquet is for $viewdefinition-export)"
            ))
        })?;
        let source = if params.resources.is_empty() {
            ViewSource::Store {
                patient: params.patient,
                group: params.group,
            }
        } else if params.patient.is_some() || params.group.is_some() {
            return Err(ApiError::invalid(
                "patient and group select from the store; with inline resources, give only the resources wanted",
            ));
        } else {
            ViewSource::Inline(params.resources)
        };
        let rows = self
            .services
            .views
            .run_view(&caller, &view, source, params.limit)
            .await?;
        let mut resp = Response::new(Bytes::from(render(view.columns(), &rows, format)));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        Ok(resp)
    }
}

impl Api {
    /// `POST [base]/ViewDefinition/$viewdefinition-export`: 202 and the
    /// status URL, as for `$export`.
    pub(super) async fn view_export(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        if req.uri().query().is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::invalid(
                "$viewdefinition-export takes its parameters in the Parameters body",
            ));
        }
        require_json_body(req.headers())?;
        if req.body().len() > MAX_BODY_BYTES {
            return Err(ApiError::too_large(format!(
                "The body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let body = parse_json(req.body())?;
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(ApiError::invalid(
                "The body must be a FHIR Parameters resource",
            ));
        }
        let request_url = view_export_url(&self.services.config.base_url);
        let input = ViewExportInput::from_parameters(&body, request_url)?;
        let job_id = self
            .services
            .views
            .kickoff_view_export(&caller, input)
            .await?;
        let mut resp = empty_response(StatusCode::ACCEPTED);
        let location = status_url(&self.services.config.base_url, &job_id);
        resp.headers_mut().insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_str(&location).map_err(|_| ApiError::internal("bad status URL"))?,
        );
        Ok(resp)
    }
}
