//! `$viewdefinition-run`: `POST [base]/ViewDefinition/$viewdefinition-run`
//! with the view in the body, and `GET` or `POST
//! [base]/ViewDefinition/{id}/$viewdefinition-run` for a stored one.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::{empty_response, parse_json, require_json_body, Api, MAX_BODY_BYTES};
use crate::domain::job::status_url;
use crate::domain::params::{parameters_as_json, read_params, Param, ParamValue, RawParam};
use crate::domain::view_export::view_export_url;
use crate::domain::Error;
use crate::engine::{ViewExportInput, ViewSource};
use crate::http::ApiError;
use fhir_query::view::output::{render, Format};
use fhir_query::view::View;

/// What a run request asks for.
#[derive(Debug, Default)]
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

/// The `$viewdefinition-run` parameters, from the query string or the
/// `Parameters` body.
const RUN_PARAMS: &[Param<RunParams>] = &[
    Param::once("viewResource", |r, p| {
        r.view = Some(resource_of(p)?);
        Ok(())
    }),
    Param::many("resource", |r, p| {
        r.resources.push(resource_of(p)?);
        Ok(())
    }),
    Param::once("viewReference", |r, p| {
        r.view_reference = Some(reference_text(p)?);
        Ok(())
    }),
    Param::once("patient", |r, p| {
        r.patient = Some(reference_text(p)?);
        Ok(())
    }),
    Param::once("group", |r, p| {
        r.group = Some(reference_text(p)?);
        Ok(())
    }),
    Param::once("_format", |r, p| {
        r.format = Some(value_of(p)?);
        Ok(())
    }),
    Param::once("header", |r, p| {
        let text = value_of(p)?;
        let header = text
            .parse()
            .map_err(|_| Error::invalid(format!("header: '{text}' is not true or false")))?;
        r.header = Some(header);
        Ok(())
    }),
    Param::once("_limit", |r, p| {
        let text = value_of(p)?;
        let limit =
            text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid(format!("_limit: '{text}' is not a positive integer"))
            })?;
        r.limit = Some(limit);
        Ok(())
    }),
];

/// A `resource` part: the resource it holds (a body parameter only).
fn resource_of(p: &RawParam) -> Result<Value, Error> {
    p.as_json()
        .get("resource")
        .filter(|r| r.is_object())
        .cloned()
        .ok_or_else(|| Error::invalid(format!("Parameter '{}' takes a resource", p.name)))
}

/// A reference as text: from the query string, a `valueReference` or a
/// `valueString`.
fn reference_text(p: &RawParam) -> Result<String, Error> {
    match &p.value {
        ParamValue::Json(entry) => entry
            .get("valueReference")
            .and_then(|r| r.get("reference"))
            .or_else(|| entry.get("valueString"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::invalid(format!("Parameter '{}' takes a valueReference", p.name))
            }),
        _ => Ok(p.as_text()?.to_string()),
    }
}

/// A value as text: from the query string or the entry's `value[x]`.
fn value_of(p: &RawParam) -> Result<String, Error> {
    match &p.value {
        ParamValue::Json(entry) => entry
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .ok_or_else(|| Error::invalid(format!("Parameter '{}' has no value", p.name))),
        _ => Ok(p.as_text()?.to_string()),
    }
}

impl RunParams {
    /// Reads the query string's parameters, then the body's.
    fn read(query: &str, body: Option<&Value>) -> Result<Self, Error> {
        let mut params: Vec<RawParam> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| RawParam::text(&k, &v))
            .collect();
        if let Some(body) = body {
            params.extend(parameters_as_json(
                body,
                "The body must be a FHIR Parameters resource",
            )?);
        }
        let mut run = RunParams::default();
        read_params(RUN_PARAMS, &params, &mut run, |_, p| {
            Err(Error::invalid(format!(
                "Parameter '{}' is not one $viewdefinition-run takes",
                p.name
            )))
        })?;
        Ok(run)
    }
}

impl Api {
    pub(super) async fn view_run(
        &self,
        req: Request<Bytes>,
        id: Option<&str>,
    ) -> Result<Response<Bytes>, ApiError> {
        let caller = self.auth.authenticate(req.headers()).await?;
        let body = if req.method() == Method::POST && !req.body().is_empty() {
            require_json_body(req.headers())?;
            if req.body().len() > MAX_BODY_BYTES {
                return Err(ApiError::too_large(format!(
                    "The body is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            Some(parse_json(req.body())?)
        } else {
            None
        };
        let mut params = RunParams::read(req.uri().query().unwrap_or(""), body.as_ref())?;
        if let Some(id) = id {
            // A stored view's own URL names it, unless a parameter does.
            params
                .view_reference
                .get_or_insert(format!("ViewDefinition/{id}"));
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
        let format =
            Format::parse(format_text, params.header.unwrap_or(true)).ok_or_else(|| {
                ApiError::invalid(format!(
                    "_format '{format_text}' is not json, ndjson, csv or parquet"
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
        let body = render(view.columns(), &rows, format)
            .map_err(|e| ApiError::internal(format!("writing the rows as Parquet failed: {e}")))?;
        let mut resp = Response::new(Bytes::from(body));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_parameters_come_from_the_query_and_the_body_once_each() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/v"}},
            {"name": "resource", "resource": {"resourceType": "Patient", "id": "a"}},
            {"name": "resource", "resource": {"resourceType": "Patient", "id": "b"}},
            {"name": "header", "valueBoolean": false}]});
        let run = RunParams::read("_format=csv&_limit=5", Some(&body)).unwrap();
        assert_eq!(run.format.as_deref(), Some("csv"));
        assert_eq!(run.limit, Some(5));
        assert_eq!(run.header, Some(false));
        assert_eq!(run.view_reference.as_deref(), Some("ViewDefinition/v"));
        assert_eq!(run.resources.len(), 2);

        // Given in the query and again in the body: refused, naming it.
        let twice = json!({"resourceType": "Parameters", "parameter": [
            {"name": "_format", "valueCode": "json"}]});
        let e = RunParams::read("_format=csv", Some(&twice)).unwrap_err();
        assert_eq!(
            e,
            Error::invalid_param("_format", "Parameter '_format' may be given only once")
        );
        let e = RunParams::read("_limit=0", None).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Invalid {
                    param: Some("_limit"),
                    ..
                }
            ),
            "{e:?}"
        );
        let e = RunParams::read("nope=1", None).unwrap_err();
        assert_eq!(
            e.message(),
            "Parameter 'nope' is not one $viewdefinition-run takes"
        );
    }
}
