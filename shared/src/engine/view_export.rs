//! `$viewdefinition-export`: checks the request, copies the views into the
//! job, and starts it. The job then runs as an ordinary export whose parts
//! write the views' rows (`worker::PartReader::emit`).

use serde_json::Value;

use super::{Caller, Views};
use crate::domain::instant::parse_instant;
use crate::domain::params::{parameters_as_json, read_params, Param};
use crate::domain::request::{in_patient_compartment, ExportLevel, ExportRequest};
use crate::domain::resource::is_valid_id;
use crate::domain::view_export::{is_valid_view_name, NamedView, TableFormat, ViewExport};
use crate::domain::Error;
use fhir_query::view::View;

/// At most this many views in one export.
pub const MAX_VIEWS: usize = 20;

/// A view as the request names it.
#[derive(Debug, Clone)]
pub enum ViewRef {
    Inline(Value),
    /// `ViewDefinition/{id}` or a canonical URL.
    Reference(String),
}

/// A `$viewdefinition-export` request, as the HTTP layer read it.
#[derive(Debug, Clone, Default)]
pub struct ViewExportInput {
    /// (name, view) per `view` parameter.
    pub views: Vec<(Option<String>, ViewRef)>,
    pub format: Option<String>,
    pub header: Option<bool>,
    /// `patient` references (`Patient/{id}` or an id).
    pub patients: Vec<String>,
    pub group: Option<String>,
    pub since: Option<String>,
    pub client_tracking_id: Option<String>,
    pub request_url: String,
}

/// `Type/id` or `id`, for a reference parameter to `resource_type`.
fn reference_id(param: &str, resource_type: &str, text: &str) -> Result<String, Error> {
    let id = match text.split_once('/') {
        Some((t, id)) if t == resource_type => id,
        Some(_) => {
            return Err(Error::invalid(format!(
                "{param}: '{text}' is not a reference to a {resource_type}"
            )))
        }
        None => text,
    };
    if !is_valid_id(id) {
        return Err(Error::invalid(format!("{param}: '{id}' is not a valid id")));
    }
    Ok(id.to_string())
}

impl ViewExportInput {
    /// Reads a `$viewdefinition-export` Parameters body (the HTTP request's,
    /// or the one a schedule saved).
    pub fn from_parameters(body: &Value, request_url: String) -> Result<Self, Error> {
        let params = parameters_as_json(body, "The body must be a FHIR Parameters resource")?;
        let mut input = ViewExportInput {
            request_url,
            ..Default::default()
        };
        read_params(VIEW_EXPORT_PARAMS, &params, &mut input, |_, p| {
            Err(Error::invalid(format!(
                "Parameter '{}' is not one $viewdefinition-export takes",
                p.name
            )))
        })?;
        Ok(input)
    }
}

/// The `$viewdefinition-export` parameters this server takes.
const VIEW_EXPORT_PARAMS: &[Param<ViewExportInput>] = &[
    Param::many("view", |input, p| {
        let view = view_param(input.views.len(), p.as_json())?;
        input.views.push(view);
        Ok(())
    }),
    Param::once("_format", |input, p| {
        input.format = Some(value_text(p.as_json(), &p.name)?);
        Ok(())
    }),
    Param::once("_since", |input, p| {
        input.since = Some(value_text(p.as_json(), &p.name)?);
        Ok(())
    }),
    Param::once("group", |input, p| {
        input.group = Some(value_text(p.as_json(), &p.name)?);
        Ok(())
    }),
    Param::once("clientTrackingId", |input, p| {
        let id = value_text(p.as_json(), &p.name)?;
        if id.is_empty() || id.len() > 256 {
            return Err(Error::invalid("clientTrackingId: 1 to 256 characters"));
        }
        input.client_tracking_id = Some(id);
        Ok(())
    }),
    Param::many("patient", |input, p| {
        input.patients.push(value_text(p.as_json(), &p.name)?);
        Ok(())
    }),
    Param::once("header", |input, p| {
        let value = p.as_json().get("valueBoolean").and_then(Value::as_bool);
        input.header = Some(value.ok_or_else(|| Error::invalid("header takes a valueBoolean"))?);
        Ok(())
    }),
    Param::many("source", |_, _| {
        Err(Error::not_supported(
            "source: this server exports its own store only",
        ))
    }),
];

/// The text of a parameter's `value[x]` (or `valueReference.reference`).
pub(crate) fn value_text(p: &Value, name: &str) -> Result<String, Error> {
    if let Some(r) = p.get("valueReference").and_then(|r| r.get("reference")) {
        return r
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("{name}: the reference is not text")));
    }
    p.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .ok_or_else(|| Error::invalid(format!("{name}: the parameter has no value")))
}

/// One `view` parameter: its `name` and its `viewResource` or
/// `viewReference` parts.
fn view_param(i: usize, p: &Value) -> Result<(Option<String>, ViewRef), Error> {
    let parts = p.get("part").and_then(Value::as_array).ok_or_else(|| {
        Error::invalid(format!(
            "view[{i}]: give its parts (name, viewResource or viewReference)"
        ))
    })?;
    let (mut name, mut view) = (None, None);
    for part in parts {
        let part_name = part.get("name").and_then(Value::as_str).unwrap_or("");
        let found = match part_name {
            "name" => {
                name = Some(value_text(part, "view.name")?);
                continue;
            }
            "viewResource" => ViewRef::Inline(
                part.get("resource")
                    .filter(|r| r.is_object())
                    .cloned()
                    .ok_or_else(|| {
                        Error::invalid(format!("view[{i}].viewResource takes a resource"))
                    })?,
            ),
            "viewReference" => ViewRef::Reference(value_text(part, "view.viewReference")?),
            other => {
                return Err(Error::invalid(format!(
                "view[{i}]: '{other}' is not a part of a view (name, viewResource, viewReference)"
            )))
            }
        };
        if view.replace(found).is_some() {
            return Err(Error::invalid(format!(
                "view[{i}]: give one viewResource or viewReference"
            )));
        }
    }
    let view =
        view.ok_or_else(|| Error::invalid(format!("view[{i}]: no viewResource or viewReference")))?;
    Ok((name, view))
}

impl Views {
    /// Validates the request and starts the export; returns the job's id.
    pub async fn kickoff_view_export(
        &self,
        caller: &Caller,
        input: ViewExportInput,
    ) -> Result<String, Error> {
        let request = self.view_export_request(caller, input).await?;
        self.desk.check_active_limit(caller).await?;
        let id = self.desk.record_job(caller, request).await?;
        tracing::info!(job = %id, owner = %caller.subject, "view export accepted");
        Ok(id)
    }

    /// The export request of a `$viewdefinition-export`, checked and
    /// authorized for the caller (a schedule's run makes it at run time).
    pub(crate) async fn view_export_request(
        &self,
        caller: &Caller,
        input: ViewExportInput,
    ) -> Result<ExportRequest, Error> {
        if input.views.is_empty() {
            return Err(Error::invalid(
                "view: give at least one view (viewResource or viewReference)",
            ));
        }
        if input.views.len() > MAX_VIEWS {
            return Err(Error::invalid(format!(
                "view: at most {MAX_VIEWS} views in one export"
            )));
        }
        let format_text = input.format.as_deref().unwrap_or("csv");
        let format = TableFormat::parse(format_text).ok_or_else(|| {
            Error::invalid(format!(
                "_format: '{format_text}' is not csv, ndjson or parquet"
            ))
        })?;
        if input.header.is_some() && format != TableFormat::Csv {
            return Err(Error::invalid("header: only a CSV export has a header"));
        }
        let mut views: Vec<NamedView> = Vec::new();
        for (i, (name, source)) in input.views.into_iter().enumerate() {
            let definition = match source {
                ViewRef::Inline(v) => v,
                ViewRef::Reference(r) => self.stored_view(caller, &r).await?,
            };
            let view = View::parse(&definition).map_err(|e| {
                Error::invalid(format!("view[{i}]: not a valid ViewDefinition: {e}"))
            })?;
            let name = name.or(view.name.clone()).ok_or_else(|| {
                Error::invalid(format!(
                    "view[{i}]: the view has no name; give the view's name part"
                ))
            })?;
            if !is_valid_view_name(&name) {
                return Err(Error::invalid(format!(
                    "view[{i}]: '{name}' cannot name files: use 1 to 64 letters, digits, '_' or '-'"
                )));
            }
            if views.iter().any(|v| v.name == name) {
                return Err(Error::invalid(format!(
                    "view[{i}]: two views are named '{name}'"
                )));
            }
            views.push(NamedView {
                name,
                resource_type: view.resource_type.clone(),
                definition,
            });
        }
        let since = input
            .since
            .as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(|e| Error::invalid(format!("_since: {e}")))?;
        let patients = input
            .patients
            .iter()
            .map(|p| reference_id("patient", "Patient", p))
            .collect::<Result<Vec<_>, _>>()?;
        let level = match &input.group {
            Some(g) => ExportLevel::Group {
                group_id: reference_id("group", "Group", g)?,
            },
            None if !patients.is_empty() => ExportLevel::Patient,
            None => ExportLevel::System,
        };
        let mut types: Vec<String> = views.iter().map(|v| v.resource_type.clone()).collect();
        types.sort();
        types.dedup();
        if level.is_patient_based() {
            if let Some(t) = types.iter().find(|t| !in_patient_compartment(t)) {
                return Err(Error::invalid(format!(
                    "view: {t} is not in the Patient compartment, so a patient or group export cannot hold its rows"
                )));
            }
        }
        let mut request = ExportRequest {
            types,
            since,
            patients,
            views: Some(ViewExport {
                views,
                format,
                header: input.header.unwrap_or(true),
                client_tracking_id: input.client_tracking_id,
            }),
            ..ExportRequest::new(level, input.request_url)
        };
        super::export::authorize_export(&caller.access, &mut request)?;
        self.desk.check_patients(&mut request).await?;
        if let ExportLevel::Group { group_id } = &request.level {
            // 404 now rather than an empty export later.
            self.desk.group_members(group_id).await?;
        }
        Ok(request)
    }
}
