//! The export request: parsed once at the edge, so the engine never sees an
//! unchecked parameter ("parse, don't validate").
//!
//! Both kick-off forms (GET query string, POST `Parameters`) are first turned
//! into a list of [`RawParam`]s; [`parse_export_request`] is the single place
//! where the Bulk Data parameter rules live.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::fhir_types::{is_resource_type, patient_compartment_paths};
use super::instant::{format_instant, parse_instant};
use super::params::{read_params, Param};
use super::Error;
use fhir_query::search::{parse_type_filters, FilterIssue};

/// Output formats accepted for `_outputFormat` (all mean NDJSON).
pub const NDJSON_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "lowercase")]
pub enum ExportLevel {
    System,
    Patient,
    Group { group_id: String },
}

impl ExportRequest {
    /// A request of `level` with no parameters: every type, from the start.
    pub fn new(level: ExportLevel, request_url: String) -> Self {
        ExportRequest {
            level,
            request_url,
            types: Vec::new(),
            since: None,
            until: None,
            elements: ElementSelection::default(),
            patients: Vec::new(),
            excluded_patients: Vec::new(),
            associated_provenance: None,
            allow_partial_manifests: false,
            organize_by_patient: false,
            type_filters: Vec::new(),
            lenient_issues: Vec::new(),
            revisions: None,
            views: None,
        }
    }

    /// The patients named by the `patient` parameter, or `None` when it
    /// was not given (every patient of the level). `Some(&[])` means all
    /// the named patients were excluded: the export holds nobody.
    pub fn named_patients(&self) -> Option<&[String]> {
        if self.patients.is_empty() && self.excluded_patients.is_empty() {
            None
        } else {
            Some(&self.patients)
        }
    }
}

impl ExportLevel {
    pub fn is_patient_based(&self) -> bool {
        !matches!(self, ExportLevel::System)
    }
}

/// `_elements`: element names for every type, and per type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementSelection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_types: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_type: BTreeMap<String, Vec<String>>,
}

impl ElementSelection {
    pub fn is_empty(&self) -> bool {
        self.all_types.is_empty() && self.by_type.is_empty()
    }

    /// The elements to keep for `resource_type`, or `None` to export it whole.
    pub fn for_type(&self, resource_type: &str) -> Option<Vec<&str>> {
        let typed = self.by_type.get(resource_type);
        if self.all_types.is_empty() && typed.is_none() {
            return None;
        }
        let mut names: Vec<&str> = self.all_types.iter().map(String::as_str).collect();
        names.extend(typed.into_iter().flatten().map(String::as_str));
        Some(names)
    }
}

/// `includeAssociatedData`: which Provenance resources of the exported
/// resources ride along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssociatedProvenance {
    /// `LatestProvenanceResources`: per exported resource, the Provenance
    /// that targets it with the latest `recorded`.
    Latest,
    /// `RelevantProvenanceResources`: every Provenance that targets an
    /// exported resource (so also the latest ones).
    Relevant,
}

/// A validated export request, as stored on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: ExportLevel,
    /// The kick-off URL as the client sent it (the manifest's `request`).
    pub request_url: String,
    /// Requested types; empty means every type the caller may read.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub elements: ElementSelection,
    /// `patient` parameter: Patient ids (POST only) that are in the export.
    #[serde(default)]
    pub patients: Vec<String>,
    /// `patient` ids that are not (no such patient, or not in the Group):
    /// accepted, exported as nothing, and reported in the manifest's `error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_patients: Vec<String>,
    /// `includeAssociatedData`: Provenance to add, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associated_provenance: Option<AssociatedProvenance>,
    /// `allowPartialManifests`: the manifest comes in pages, the first
    /// ones while the export is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_partial_manifests: bool,
    /// `organizeOutputBy=Patient`: each patient's resources together, after
    /// a header line naming the patient, in files of mixed types.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub organize_by_patient: bool,
    /// `_typeFilter` queries (`Observation?code=...`), each as given; the
    /// worker evaluates them (see `fhir_query::search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub type_filters: Vec<String>,
    /// Problems ignored under `Prefer: handling=lenient`; reported in the
    /// manifest's `error` files.
    #[serde(default)]
    pub lenient_issues: Vec<String>,
    /// `$export-revisions`: the job exports the audit trail, not resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<super::revisions::RevisionsQuery>,
    /// `$viewdefinition-export`: the job writes these views' rows, not
    /// resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<super::view_export::ViewExport>,
}

pub use super::params::{params_from_parameters_resource, query_params, ParamValue, RawParam};

/// Everything the edge knows about a kick-off request.
#[derive(Debug, Clone)]
pub struct KickoffInput {
    pub level: ExportLevel,
    pub request_url: String,
    pub params: Vec<RawParam>,
    pub lenient: bool,
    pub via_post: bool,
    pub now: DateTime<Utc>,
}

/// Applies the Bulk Data parameter rules ([`EXPORT_PARAMS`]) and checks
/// the times against the kick-off's now. Checks that need the data (does
/// the Group exist, is a patient a member) are the engine's.
pub fn parse_export_request(input: KickoffInput) -> Result<ExportRequest, Error> {
    let now = input.now;
    parse_export_params(input)?.as_of(now)
}

/// The parameter rules alone: `_since` and `_until` as given, for a request
/// made later (a schedule's runs), which [`ExportRequest::as_of`] checks
/// then.
pub fn parse_export_params(input: KickoffInput) -> Result<ExportRequest, Error> {
    let mut draft = Draft {
        req: ExportRequest::new(input.level, input.request_url),
        lenient: input.lenient,
        via_post: input.via_post,
    };
    read_params(EXPORT_PARAMS, &input.params, &mut draft, |d, p| {
        d.unsupported(format!("Unknown parameter '{}'", p.name))
    })?;
    draft.drop_filters_of_absent_types()?;
    Ok(draft.req)
}

impl ExportRequest {
    /// The request as made at `now`: `_since` may not be after it, and
    /// `_until` stops at it.
    pub fn as_of(mut self, now: DateTime<Utc>) -> Result<Self, Error> {
        if let Some(since) = self.since.filter(|s| *s > now) {
            return Err(Error::invalid_param(
                "_since",
                format!("_since {} is in the future", format_instant(since)),
            ));
        }
        self.until = self.until.map(|u| u.min(now));
        if let (Some(s), Some(u)) = (self.since, self.until) {
            if u < s {
                return Err(Error::invalid_param(
                    "_until",
                    "_until is earlier than _since",
                ));
            }
        }
        Ok(self)
    }
}

/// The Bulk Data kick-off parameters this server takes.
pub const EXPORT_PARAMS: &[Param<Draft>] = &[
    Param::once("_outputFormat", output_format),
    Param::once("_since", since),
    Param::once("_until", until),
    Param::many("_type", types),
    Param::many("_elements", elements),
    Param::many("patient", patient),
    Param::many("includeAssociatedData", associated_data),
    Param::once("allowPartialManifests", allow_partial_manifests),
    Param::once("organizeOutputBy", organize_output_by),
    Param::many("_typeFilter", type_filter),
];

/// An export request while its parameters are read.
pub struct Draft {
    req: ExportRequest,
    lenient: bool,
    via_post: bool,
}

impl Draft {
    /// Under lenient handling an unsupported parameter is recorded (the
    /// manifest's `error` files report it), not fatal.
    fn unsupported(&mut self, message: String) -> Result<(), Error> {
        if self.lenient {
            self.req.lenient_issues.push(message);
            Ok(())
        } else {
            Err(Error::not_supported(message))
        }
    }

    /// A filter on a type the export cannot hold filters nothing.
    fn drop_filters_of_absent_types(&mut self) -> Result<(), Error> {
        let filtered_types: Vec<String> = self
            .req
            .type_filters
            .iter()
            .filter_map(|f| f.split_once('?').map(|(t, _)| t.to_string()))
            .collect();
        for t in filtered_types {
            let excluded = (!self.req.types.is_empty() && !self.req.types.contains(&t))
                || (self.req.level.is_patient_based() && !in_patient_compartment(&t));
            if excluded {
                self.unsupported(format!(
                    "_typeFilter: {t} is not among the types this export holds, so its filter is not used"
                ))?;
            }
        }
        Ok(())
    }
}

fn output_format(_: &mut Draft, p: &RawParam) -> Result<(), Error> {
    let text = p.as_text()?;
    if !NDJSON_FORMATS.contains(&text.to_ascii_lowercase().as_str()) {
        return Err(Error::not_supported(format!(
            "_outputFormat '{text}' is not supported; use application/fhir+ndjson"
        )));
    }
    Ok(())
}

fn since(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    let t = parse_instant(p.as_text()?).map_err(|e| Error::invalid(format!("_since: {e}")))?;
    d.req.since = Some(t);
    Ok(())
}

fn until(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    let t = parse_instant(p.as_text()?).map_err(|e| Error::invalid(format!("_until: {e}")))?;
    d.req.until = Some(t);
    Ok(())
}

fn types(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    for t in p.as_text()?.split(',').map(str::trim) {
        if t.is_empty() {
            return Err(Error::invalid("_type has an empty entry"));
        }
        if !is_resource_type(t) {
            return Err(Error::invalid(format!(
                "_type: '{t}' is not a FHIR R4 resource type"
            )));
        }
        if d.req.level.is_patient_based() && !in_patient_compartment(t) {
            let level = level_name(&d.req.level);
            d.unsupported(format!(
                "_type: {t} is not in the Patient compartment, so a {level} export cannot contain it"
            ))?;
            continue;
        }
        if !d.req.types.iter().any(|x| x == t) {
            d.req.types.push(t.to_string());
        }
    }
    Ok(())
}

fn elements(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    for spec in p.as_text()?.split(',').map(str::trim) {
        element(d, spec)?;
    }
    Ok(())
}

fn element(d: &mut Draft, spec: &str) -> Result<(), Error> {
    let (ty, name) = match spec.split_once('.') {
        Some((t, n)) if t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => (Some(t), n),
        _ => (None, spec),
    };
    if let Some(t) = ty {
        if !is_resource_type(t) {
            return Err(Error::invalid(format!(
                "_elements: '{t}' in '{spec}' is not a FHIR R4 resource type"
            )));
        }
    }
    let simple = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric());
    if !simple {
        return d.unsupported(format!(
            "_elements: '{spec}' is not supported; only top-level element names (optionally prefixed by a resource type) are"
        ));
    }
    let list = match ty {
        Some(t) => d.req.elements.by_type.entry(t.to_string()).or_default(),
        None => &mut d.req.elements.all_types,
    };
    if !list.iter().any(|x| x == name) {
        list.push(name.to_string());
    }
    Ok(())
}

fn patient(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    if !d.via_post {
        return Err(Error::invalid(
            "The 'patient' parameter is accepted only in a POST kick-off (Parameters body)",
        ));
    }
    if !d.req.level.is_patient_based() {
        return Err(Error::invalid(
            "The 'patient' parameter applies to Patient and Group exports, not to a system export",
        ));
    }
    let ParamValue::Reference(r) = &p.value else {
        return Err(Error::invalid(
            "The 'patient' parameter must be a valueReference to Patient/{id}",
        ));
    };
    let id = r
        .strip_prefix("Patient/")
        .filter(|id| super::resource::is_valid_id(id))
        .ok_or_else(|| {
            Error::invalid(format!(
                "patient: '{r}' is not a reference of the form Patient/{{id}}"
            ))
        })?;
    if !d.req.patients.iter().any(|x| x == id) {
        d.req.patients.push(id.to_string());
    }
    Ok(())
}

fn associated_data(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    for value in p.as_text()?.split(',').map(str::trim) {
        let wanted = match value {
            "LatestProvenanceResources" => AssociatedProvenance::Latest,
            "RelevantProvenanceResources" => AssociatedProvenance::Relevant,
            custom if custom.starts_with('_') => {
                d.unsupported(format!(
                    "includeAssociatedData: the custom value '{custom}' is not supported by this server"
                ))?;
                continue;
            }
            other => {
                return Err(Error::invalid(format!(
                    "includeAssociatedData: '{other}' is not LatestProvenanceResources, \
                     RelevantProvenanceResources or a custom value starting with '_'"
                )))
            }
        };
        // Relevant includes Latest.
        d.req.associated_provenance = d.req.associated_provenance.max(Some(wanted));
    }
    Ok(())
}

fn allow_partial_manifests(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    let text = p.as_text()?;
    d.req.allow_partial_manifests = match text.to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(Error::invalid(format!(
                "allowPartialManifests: '{text}' is not true or false"
            )))
        }
    };
    Ok(())
}

fn organize_output_by(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    match p.as_text()? {
        "Patient" if d.req.level.is_patient_based() => {
            d.req.organize_by_patient = true;
            Ok(())
        }
        "Patient" => d.unsupported(
            "organizeOutputBy: a system export cannot be organized by patient; \
             use Patient/$export or Group/[id]/$export"
                .to_string(),
        ),
        t if is_resource_type(t) => d.unsupported(format!(
            "organizeOutputBy: output can be organized by Patient only, not {t}"
        )),
        other => Err(Error::invalid(format!(
            "organizeOutputBy: '{other}' is not a FHIR R4 resource type"
        ))),
    }
}

fn type_filter(d: &mut Draft, p: &RawParam) -> Result<(), Error> {
    let (filters, issues) = parse_type_filters(p.as_text()?).map_err(|issue| match issue {
        FilterIssue::Invalid(m) | FilterIssue::Unsupported(m) => Error::invalid(m),
    })?;
    // Under lenient handling unsupported clauses are left out: the filter
    // lets more through, and the manifest says so. Strict handling refuses
    // the request instead.
    for FilterIssue::Invalid(m) | FilterIssue::Unsupported(m) in issues {
        let m = if d.lenient {
            format!("{m}; the filter was applied without it")
        } else {
            m
        };
        d.unsupported(m)?;
    }
    d.req
        .type_filters
        .extend(filters.into_iter().map(|f| f.text));
    Ok(())
}

/// Patient itself and every type of the Patient compartment.
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || patient_compartment_paths(resource_type).is_some()
}

fn level_name(level: &ExportLevel) -> &'static str {
    match level {
        ExportLevel::System => "system",
        ExportLevel::Patient => "Patient",
        ExportLevel::Group { .. } => "Group",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(level: ExportLevel, params: &[(&str, &str)]) -> KickoffInput {
        KickoffInput {
            level,
            request_url: "http://x/fhir/$export".into(),
            params: params.iter().map(|(n, v)| RawParam::text(n, v)).collect(),
            lenient: false,
            via_post: false,
            now: parse_instant("2025-01-01T00:00:00Z").unwrap(),
        }
    }

    #[test]
    fn parses_types_since_and_elements() {
        let r = parse_export_request(input(
            ExportLevel::System,
            &[
                ("_type", "Patient,Observation"),
                ("_type", "Observation , Encounter"),
                ("_since", "2024-01-01T00:00:00Z"),
                ("_elements", "id,Observation.status,code"),
                ("_outputFormat", "application/fhir+ndjson"),
            ],
        ))
        .unwrap();
        assert_eq!(r.types, ["Patient", "Observation", "Encounter"]);
        assert_eq!(
            r.since,
            Some(parse_instant("2024-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(
            r.elements.for_type("Observation").unwrap(),
            ["id", "code", "status"]
        );
        assert_eq!(r.elements.for_type("Patient").unwrap(), ["id", "code"]);
    }

    #[test]
    fn rejects_bad_parameters() {
        let cases: &[&[(&str, &str)]] = &[
            &[("_type", "Nope")],
            &[("_type", "Patient,,Observation")],
            &[("_since", "2024-01-01")],
            &[("_since", "2030-01-01T00:00:00Z")],
            &[
                ("_since", "2024-01-01T00:00:00Z"),
                ("_since", "2024-01-01T00:00:00Z"),
            ],
            &[("_outputFormat", "text/csv")],
            &[("_elements", "code.coding")],
            &[("_elements", "Nope.code")],
            &[("_typeFilter", "Observation")],
            &[("_typeFilter", "Nope?status=final")],
            &[("_typeFilter", "Observation?code")],
            &[("_typeFilter", "Observation?_count=10")],
            &[("_typeFilter", "Observation?date=ge2020-13")],
            &[("_typeFilter", "Observation?foo=1")],
            &[("_typeFilter", "Observation?code:below=1")],
            &[
                ("_type", "Patient"),
                ("_typeFilter", "Observation?status=final"),
            ],
            &[("includeAssociatedData", "Nope")],
            &[("includeAssociatedData", "LatestProvenanceResources,")],
            &[("includeAssociatedData", "_custom")],
            &[("allowPartialManifests", "yes")],
            &[("organizeOutputBy", "Patient")],
            &[("organizeOutputBy", "Encounter")],
            &[("organizeOutputBy", "patient")],
            &[
                ("allowPartialManifests", "true"),
                ("allowPartialManifests", "true"),
            ],
            &[("foo", "bar")],
            &[("patient", "Patient/1")],
        ];
        for params in cases {
            let err = parse_export_request(input(ExportLevel::System, params)).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { .. } | Error::NotSupported(_)),
                "{params:?} -> {err:?}"
            );
        }
    }

    #[test]
    fn include_associated_data_values() {
        let parse = |params: &[(&str, &str)]| {
            parse_export_request(input(ExportLevel::System, params))
                .map(|r| r.associated_provenance)
        };
        assert_eq!(
            parse(&[("includeAssociatedData", "LatestProvenanceResources")]),
            Ok(Some(AssociatedProvenance::Latest))
        );
        for both in [
            &[(
                "includeAssociatedData",
                "LatestProvenanceResources,RelevantProvenanceResources",
            )][..],
            &[
                ("includeAssociatedData", "RelevantProvenanceResources"),
                ("includeAssociatedData", "LatestProvenanceResources"),
            ],
        ] {
            assert_eq!(parse(both), Ok(Some(AssociatedProvenance::Relevant)));
        }
        let mut i = input(
            ExportLevel::System,
            &[("includeAssociatedData", "_custom,LatestProvenanceResources")],
        );
        i.lenient = true;
        let r = parse_export_request(i).unwrap();
        assert_eq!(r.associated_provenance, Some(AssociatedProvenance::Latest));
        assert_eq!(r.lenient_issues.len(), 1);
    }

    #[test]
    fn lenient_records_unsupported_parameters() {
        let mut i = input(
            ExportLevel::System,
            &[
                ("_typeFilter", "Observation?foo=1&status=final"),
                ("foo", "1"),
            ],
        );
        i.lenient = true;
        let r = parse_export_request(i).unwrap();
        assert_eq!(r.lenient_issues.len(), 2);
        assert_eq!(r.type_filters, ["Observation?foo=1&status=final"]);
        // A malformed filter is refused whatever the handling.
        let mut i = input(
            ExportLevel::System,
            &[("_typeFilter", "Observation?_sort=date")],
        );
        i.lenient = true;
        assert!(matches!(
            parse_export_request(i).unwrap_err(),
            Error::Invalid { .. } | Error::NotSupported(_)
        ));
    }

    #[test]
    fn type_filters_split_at_each_query() {
        let r = parse_export_request(input(
            ExportLevel::System,
            &[
                (
                    "_typeFilter",
                    "Observation?code=a,b&status=final,Patient?gender=female",
                ),
                ("_typeFilter", "Condition?clinical-status:not=resolved"),
            ],
        ))
        .unwrap();
        assert_eq!(
            r.type_filters,
            [
                "Observation?code=a,b&status=final",
                "Patient?gender=female",
                "Condition?clinical-status:not=resolved"
            ]
        );
    }

    #[test]
    fn patient_level_refuses_types_outside_the_compartment() {
        let err = parse_export_request(input(ExportLevel::Patient, &[("_type", "Organization")]))
            .unwrap_err();
        assert!(err.message().contains("Patient compartment"), "{err}");
    }

    #[test]
    fn reads_post_parameters() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Observation"},
            {"name":"patient","valueReference":{"reference":"Patient/p1"}}]}"#;
        let params = params_from_parameters_resource(body).unwrap();
        let mut i = input(ExportLevel::Patient, &[]);
        i.params = params;
        i.via_post = true;
        let r = parse_export_request(i).unwrap();
        assert_eq!(r.patients, ["p1"]);
        assert_eq!(r.types, ["Observation"]);
        assert!(params_from_parameters_resource(b"{\"resourceType\":\"Patient\"}").is_err());
        assert!(params_from_parameters_resource(b"not json").is_err());
    }
}
