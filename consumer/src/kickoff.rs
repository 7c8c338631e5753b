//! The kick-off request of a Bulk Data export: its level, its parameters,
//! and the request that carries them (a GET, or a POST of `Parameters`
//! when a parameter can only be posted).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fetch::{status_error, FetchError};
use crate::session::Session;

/// Which resources an export covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    System,
    Patient,
    Group(String),
}

/// An export as asked for: the same one, asked again, resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: Option<Level>,
    /// `_type`, comma-joined when given more than once.
    pub types: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// `_typeFilter`, each one `Type?params`.
    pub type_filters: Vec<String>,
    pub elements: Vec<String>,
    /// `patient` references (`Patient/123`); these make the kick-off a POST.
    pub patients: Vec<String>,
    pub include_associated_data: Vec<String>,
    pub organize_output_by: Option<String>,
    pub allow_partial_manifests: bool,
}

impl ExportRequest {
    /// The kick-off URL under `base`.
    pub fn url(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match self.level.as_ref().unwrap_or(&Level::System) {
            Level::System => format!("{base}/$export"),
            Level::Patient => format!("{base}/Patient/$export"),
            Level::Group(id) => format!("{base}/Group/{id}/$export"),
        }
    }

    /// The parameters as (name, value) pairs, in a fixed order.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut joined = |name, values: &[String]| {
            if !values.is_empty() {
                out.push((name, values.join(",")));
            }
        };
        joined("_type", &self.types);
        joined("_elements", &self.elements);
        joined("includeAssociatedData", &self.include_associated_data);
        for filter in &self.type_filters {
            out.push(("_typeFilter", filter.clone()));
        }
        if let Some(v) = &self.since {
            out.push(("_since", v.clone()));
        }
        if let Some(v) = &self.until {
            out.push(("_until", v.clone()));
        }
        if let Some(v) = &self.organize_output_by {
            out.push(("organizeOutputBy", v.clone()));
        }
        if self.allow_partial_manifests {
            out.push(("allowPartialManifests", "true".into()));
        }
        out
    }

    /// The `Parameters` resource of a POST kick-off, each value typed as
    /// the Bulk Data specification types it.
    pub fn parameters_resource(&self) -> Value {
        let mut parameter: Vec<Value> = self
            .params()
            .into_iter()
            .map(|(name, value)| match name {
                "_since" | "_until" => json!({"name": name, "valueInstant": value}),
                "allowPartialManifests" => json!({"name": name, "valueBoolean": true}),
                "includeAssociatedData" | "organizeOutputBy" => {
                    json!({"name": name, "valueCode": value})
                }
                _ => json!({"name": name, "valueString": value}),
            })
            .collect();
        for p in &self.patients {
            parameter.push(json!({"name": "patient", "valueReference": {"reference": p}}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    }

    /// Kicks the export off; returns its status URL.
    pub async fn kick_off(&self, session: &Session, base: &str) -> Result<String, FetchError> {
        let url = self.url(base);
        let resp = if self.patients.is_empty() {
            let mut full = url::Url::parse(&url).map_err(|e| FetchError::Network {
                url: url.clone(),
                cause: format!("not a URL: {e}"),
            })?;
            let params = self.params();
            if !params.is_empty() {
                full.query_pairs_mut().extend_pairs(params);
            }
            let full = full.to_string();
            session
                .send(&full, true, |http| kick_off_headers(http.get(&full)))
                .await?
        } else {
            let body = self.parameters_resource().to_string();
            session
                .send(&url, true, |http| {
                    kick_off_headers(http.post(&url))
                        .header("content-type", "application/fhir+json")
                        .body(body.clone())
                })
                .await?
        };
        if resp.status() != reqwest::StatusCode::ACCEPTED {
            return Err(status_error(&url, resp.status(), resp).await);
        }
        let location = resp
            .headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                FetchError::Manifest("the kick-off's 202 has no Content-Location".into())
            })?;
        Ok(location.to_string())
    }
}

fn kick_off_headers(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_go_in_a_fixed_order_and_post_typed() {
        let r = ExportRequest {
            level: Some(Level::Group("g1".into())),
            types: vec!["Patient".into(), "Observation".into()],
            since: Some("2026-01-01T00:00:00Z".into()),
            type_filters: vec!["Observation?status=final".into()],
            patients: vec!["Patient/p1".into()],
            allow_partial_manifests: true,
            ..Default::default()
        };
        assert_eq!(r.url("http://x/fhir/"), "http://x/fhir/Group/g1/$export");
        let names: Vec<_> = r.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["_type", "_typeFilter", "_since", "allowPartialManifests"]
        );
        let p = r.parameters_resource();
        assert_eq!(p["parameter"][0]["valueString"], "Patient,Observation");
        assert_eq!(p["parameter"][2]["valueInstant"], "2026-01-01T00:00:00Z");
        assert_eq!(p["parameter"][3]["valueBoolean"], true);
        assert_eq!(
            p["parameter"][4]["valueReference"]["reference"],
            "Patient/p1"
        );
    }
}
