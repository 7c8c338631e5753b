//! `$viewdefinition-export`: the views a job writes as tables, and how. It
//! rides on an ordinary export job (`ExportRequest::views`), so a view
//! export plans, checkpoints, resumes, expires and can be scheduled like a
//! resource export.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use chrono::{DateTime, Utc};

use super::instant::parse_instant;
use super::params::{parameters_as_json, read_params, Param};
use super::resource::is_valid_id;
use super::Error;

/// The table formats of a view export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// RFC 4180, a header row first unless `header` is false.
    Csv,
    /// One JSON object per row, keyed by column name.
    Ndjson,
    /// Typed columns, Snappy-compressed (see `view::parquet`).
    Parquet,
}

impl TableFormat {
    /// `_format`: a short name or a media type.
    pub fn parse(text: &str) -> Option<TableFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(TableFormat::Csv),
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Some(TableFormat::Ndjson),
            "parquet" | "application/vnd.apache.parquet" | "application/parquet" => {
                Some(TableFormat::Parquet)
            }
            _ => None,
        }
    }

    /// The extension of the files the parts write (Parquet files are
    /// converted from NDJSON ones: `engine::parquet_files`).
    pub fn extension(self) -> &'static str {
        match self {
            TableFormat::Csv => "csv",
            TableFormat::Ndjson | TableFormat::Parquet => "ndjson",
        }
    }
}

/// One view of the export, checked at kick-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedView {
    /// Names its files and its manifest entries.
    pub name: String,
    /// The view's `resource`.
    pub resource_type: String,
    /// The ViewDefinition itself (a stored one is copied at kick-off, so
    /// later edits do not change a running export).
    pub definition: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewExport {
    pub views: Vec<NamedView>,
    pub format: TableFormat,
    /// CSV: a header row at the top of each file.
    pub header: bool,
    /// `clientTrackingId`, echoed in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tracking_id: Option<String>,
}

/// A view name is used in file names: 1 to 64 of `A-Z a-z 0-9 _ -`,
/// starting with a letter or a digit.
pub fn is_valid_view_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The URL a `$viewdefinition-export` is requested at (the manifest's
/// `request`).
pub fn view_export_url(base_url: &str) -> String {
    format!("{base_url}/ViewDefinition/$viewdefinition-export")
}

/// At most this many views in one export.
pub const MAX_VIEWS: usize = 20;

/// A view as the request names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewRef {
    Inline(Value),
    /// `ViewDefinition/{id}` or a canonical URL.
    Reference(String),
}

/// A `$viewdefinition-export` request, its parameters read (a schedule
/// keeps it so; references to stored views resolve at each run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewExportInput {
    /// (name, view) per `view` parameter.
    pub views: Vec<(Option<String>, ViewRef)>,
    pub format: Option<String>,
    pub header: Option<bool>,
    /// `patient` references (`Patient/{id}` or an id).
    pub patients: Vec<String>,
    pub group: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub client_tracking_id: Option<String>,
    pub request_url: String,
}

/// `Type/id` or `id`, for a reference parameter to `resource_type`.
pub(crate) fn reference_id(param: &str, resource_type: &str, text: &str) -> Result<String, Error> {
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
        let text = value_text(p.as_json(), &p.name)?;
        let since = parse_instant(&text).map_err(|e| Error::invalid(format!("_since: {e}")))?;
        input.since = Some(since);
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
pub fn value_text(p: &Value, name: &str) -> Result<String, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats() {
        for good in ["patients", "obs_2024", "a-b", "V1"] {
            assert!(is_valid_view_name(good), "{good}");
        }
        for bad in ["", "-x", "_x", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(!is_valid_view_name(bad), "{bad}");
        }
        assert_eq!(TableFormat::parse("text/csv"), Some(TableFormat::Csv));
        assert_eq!(TableFormat::parse("NDJSON"), Some(TableFormat::Ndjson));
        assert_eq!(TableFormat::parse("json"), None);
        assert_eq!(TableFormat::parse("parquet"), Some(TableFormat::Parquet));
    }
}
