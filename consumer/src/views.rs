//! Views for `sync --view`: SQL on FHIR ViewDefinitions whose rows the
//! mirror keeps as tables, refreshed whole from `$viewdefinition-export`
//! (CSV) at each sync.

use std::path::Path;

use serde_json::{json, Value};

use crate::fetch::{status_error, FetchError};
use crate::session::Session;

/// A view named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewSource {
    /// A ViewDefinition from a file, sent whole (`viewResource`).
    Inline(Value),
    /// One the server holds (`viewReference`): `ViewDefinition/ID` or a
    /// canonical URL.
    Reference(String),
}

impl ViewSource {
    /// A file holding a ViewDefinition, or else the name of one the server
    /// holds (`ID`, `ViewDefinition/ID` or a canonical URL).
    pub fn from_arg(arg: &str) -> Result<Self, String> {
        let path = Path::new(arg);
        if path.is_file() {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let view: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
            if view.get("resourceType").and_then(Value::as_str) != Some("ViewDefinition") {
                return Err(format!("{}: not a ViewDefinition", path.display()));
            }
            return Ok(ViewSource::Inline(view));
        }
        if arg.contains('/') {
            Ok(ViewSource::Reference(arg.to_string()))
        } else {
            Ok(ViewSource::Reference(format!("ViewDefinition/{arg}")))
        }
    }

    fn part(&self) -> Value {
        match self {
            ViewSource::Inline(view) => json!({"name": "viewResource", "resource": view}),
            ViewSource::Reference(r) => {
                json!({"name": "viewReference", "valueReference": {"reference": r}})
            }
        }
    }
}

/// The `$viewdefinition-export` body for `views`, as CSV with a header.
pub fn export_parameters(views: &[ViewSource]) -> Value {
    let mut parameter: Vec<Value> = views
        .iter()
        .map(|v| json!({"name": "view", "part": [v.part()]}))
        .collect();
    parameter.push(json!({"name": "_format", "valueCode": "csv"}));
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// Kicks off a `$viewdefinition-export`; returns its status URL.
pub async fn kick_off(
    session: &Session,
    base: &str,
    views: &[ViewSource],
) -> Result<String, FetchError> {
    let url = format!("{base}/ViewDefinition/$viewdefinition-export");
    let body = export_parameters(views).to_string();
    let resp = session
        .send(&url, true, |http| {
            http.post(&url)
                .header("accept", "application/fhir+json")
                .header("prefer", "respond-async")
                .header("content-type", "application/fhir+json")
                .body(body.clone())
        })
        .await?;
    if resp.status() != reqwest::StatusCode::ACCEPTED {
        return Err(status_error(&url, resp.status(), resp).await);
    }
    resp.headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| FetchError::Manifest("the kick-off's 202 has no Content-Location".into()))
}

/// The table a view's rows go to: `view_` and its name, in letters,
/// digits and underscores.
pub fn table_name(view: &str) -> String {
    let safe: String = view
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("view_{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_come_from_files_or_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.json");
        std::fs::write(
            &file,
            r#"{"resourceType": "ViewDefinition", "name": "pts"}"#,
        )
        .unwrap();
        let inline = ViewSource::from_arg(file.to_str().unwrap()).unwrap();
        assert!(matches!(inline, ViewSource::Inline(_)));
        assert_eq!(
            ViewSource::from_arg("patients").unwrap(),
            ViewSource::Reference("ViewDefinition/patients".into())
        );
        let p = export_parameters(&[inline, ViewSource::from_arg("patients").unwrap()]);
        assert_eq!(p["parameter"][0]["part"][0]["resource"]["name"], "pts");
        assert_eq!(
            p["parameter"][1]["part"][0]["valueReference"]["reference"],
            "ViewDefinition/patients"
        );
        std::fs::write(&file, r#"{"resourceType": "Patient"}"#).unwrap();
        assert!(ViewSource::from_arg(file.to_str().unwrap()).is_err());
        assert_eq!(table_name("patient-demo.v2"), "view_patient_demo_v2");
    }
}
