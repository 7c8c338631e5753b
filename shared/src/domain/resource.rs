//! Stored FHIR resources: their versions and the writes that add them, id
//! syntax, body validation for the write API, and the references that place
//! a resource in a patient's compartment or a patient in a Group.

use serde_json::Value;

use super::fhir_types::{is_resource_type, patient_compartment_paths};
use super::resource_text::ResourceText;
use super::Error;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    /// `meta.lastUpdated` in µs since the epoch; unique and increasing per store.
    pub last_updated: i64,
    pub deleted: bool,
    /// The stored JSON (compact, `meta` stamped); `None` for a tombstone.
    pub body: Option<String>,
}

/// One change an atomic write makes.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create or update `resource_type/id` with `resource` (validated),
    /// stored as its client wrote it but for `id` and `meta`.
    Upsert {
        resource_type: String,
        id: String,
        resource: ResourceText,
    },
    Delete {
        resource_type: String,
        id: String,
    },
}

impl WriteOp {
    /// The resource it changes: `(type, id)`.
    pub fn target(&self) -> (&str, &str) {
        match self {
            WriteOp::Upsert {
                resource_type, id, ..
            }
            | WriteOp::Delete { resource_type, id } => (resource_type, id),
        }
    }
}

/// What one [`WriteOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    pub version: Version,
    /// True when the write created the resource (no live version before).
    pub created: bool,
}

/// FHIR `id`: 1–64 characters of `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A resource's shard: FNV-1a of its id, stable across versions and releases.
pub fn shard_of(id: &str, shards: u16) -> u16 {
    let mut h: u32 = 0x811c9dc5;
    for b in id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    (h % shards.max(1) as u32) as u16
}

/// The types the store takes: R4's, and SQL on FHIR's ViewDefinition
/// (which `$viewdefinition-run` can reference).
pub fn check_type(resource_type: &str) -> Result<(), Error> {
    if is_resource_type(resource_type) || resource_type == "ViewDefinition" {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "'{resource_type}' is not a FHIR R4 resource type"
        )))
    }
}

pub fn check_id(id: &str) -> Result<(), Error> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{id}' is not a valid FHIR id (1-64 characters of A-Z a-z 0-9 - .)"
        )))
    }
}

pub fn check_resource_value(
    value: &Value,
    expected_type: &str,
    url_id: Option<&str>,
) -> Result<(), Error> {
    let obj = value
        .as_object()
        .ok_or_else(|| Error::invalid("A resource must be a JSON object"))?;
    match obj.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == expected_type => {}
        Some(t) => {
            return Err(Error::invalid(format!(
                "resourceType '{t}' does not match the URL's type '{expected_type}'"
            )))
        }
        None => return Err(Error::invalid("The resource has no resourceType")),
    }
    match (obj.get("id"), url_id) {
        (Some(Value::String(body_id)), Some(url_id)) if body_id != url_id => Err(Error::invalid(
            format!("The body's id '{body_id}' does not match the URL's id '{url_id}'"),
        )),
        (Some(Value::String(body_id)), _) if !is_valid_id(body_id) => Err(Error::invalid(format!(
            "'{body_id}' is not a valid FHIR id"
        ))),
        (Some(v), _) if !v.is_string() => Err(Error::invalid("The resource's id must be a string")),
        (None, Some(_)) => Err(Error::invalid(
            "An update must carry the resource's id in the body",
        )),
        _ => Ok(()),
    }
}

/// Ids of the Patients whose compartment holds this resource (R4 patient
/// CompartmentDefinition). A Patient is not indexed in its own compartment:
/// exports read it by id.
pub fn compartment_patients(resource_type: &str, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if resource_type == "Patient" {
        return out;
    }
    for path in patient_compartment_paths(resource_type).unwrap_or(&[]) {
        collect_references(value, path, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// Active Patient members of a Group (`member.entity`, not `inactive`).
pub fn group_member_ids(group: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for member in group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if member.get("inactive").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(id) = member
            .pointer("/entity/reference")
            .and_then(Value::as_str)
            .and_then(patient_id_of_reference)
        {
            out.push(id.to_string());
        }
    }
    out
}

fn collect_references(value: &Value, path: &str, out: &mut Vec<String>) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(child) = value.get(head) else {
        return;
    };
    let items: Vec<&Value> = match child {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for item in items {
        match rest {
            Some(rest) => collect_references(item, rest, out),
            None => {
                if let Some(id) = item
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(patient_id_of_reference)
                {
                    out.push(id.to_string());
                }
            }
        }
    }
}

/// The resources a Provenance names in `target`, as (type, id): relative
/// or absolute references, without a `_history` suffix.
pub fn provenance_targets(provenance: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = provenance
        .get("target")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("reference").and_then(Value::as_str))
        .filter_map(|r| {
            let r = r.split("/_history/").next()?;
            let mut segments = r.rsplit('/');
            let (id, ty) = (segments.next()?, segments.next()?);
            (is_resource_type(ty) && is_valid_id(id)).then(|| (ty.to_string(), id.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `Patient/123` (also with a base URL or a `_history` suffix) -> `123`.
fn patient_id_of_reference(reference: &str) -> Option<&str> {
    let reference = reference.split("/_history/").next()?;
    let mut segments = reference.rsplit('/');
    let id = segments.next()?;
    (segments.next()? == "Patient" && is_valid_id(id)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provenance_targets_are_typed_references() {
        let p = json!({"resourceType": "Provenance", "target": [
            {"reference": "Observation/o1"},
            {"reference": "https://fhir.example/r4/Patient/p1/_history/3"},
            {"reference": "Observation/o1"},
            {"reference": "urn:uuid:0a1b"},
            {"display": "no reference"}
        ]});
        assert_eq!(
            provenance_targets(&p),
            [
                ("Observation".to_string(), "o1".to_string()),
                ("Patient".to_string(), "p1".to_string())
            ]
        );
        assert!(provenance_targets(&json!({"resourceType": "Provenance"})).is_empty());
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }

    /// Parses and checks a body as the write API does.
    fn parse_resource_body(body: &[u8], t: &str, url_id: Option<&str>) -> Result<(), Error> {
        let r = crate::domain::resource_text::ResourceText::parse(body)
            .map_err(|e| Error::invalid(e.0))?;
        check_resource_value(r.value(), t, url_id)
    }

    #[test]
    fn validates_bodies() {
        assert!(parse_resource_body(b"{", "Patient", None).is_err());
        assert!(parse_resource_body(b"[]", "Patient", None).is_err());
        assert!(
            parse_resource_body(br#"{"resourceType":"Observation"}"#, "Patient", None).is_err()
        );
        assert!(parse_resource_body(
            br#"{"resourceType":"Patient","id":"a"}"#,
            "Patient",
            Some("b")
        )
        .is_err());
        assert!(
            parse_resource_body(br#"{"resourceType":"Patient"}"#, "Patient", Some("b")).is_err()
        );
        assert!(parse_resource_body(
            br#"{"resourceType":"Patient","id":"b"}"#,
            "Patient",
            Some("b")
        )
        .is_ok());
        assert!(parse_resource_body(br#"{"resourceType":"Patient"}"#, "Patient", None).is_ok());
    }

    #[test]
    fn finds_compartment_patients() {
        let obs = json!({"resourceType":"Observation","subject":{"reference":"Patient/p1"},
            "performer":[{"reference":"Practitioner/d"},{"reference":"http://h/fhir/Patient/p2/_history/3"}]});
        assert_eq!(compartment_patients("Observation", &obs), ["p1", "p2"]);
        let org = json!({"resourceType":"Organization","partOf":{"reference":"Patient/p1"}});
        assert!(compartment_patients("Organization", &org).is_empty());
        assert!(compartment_patients(
            "Observation",
            &json!({"subject":{"reference":"NotPatient/p1"}})
        )
        .is_empty());
    }

    #[test]
    fn reads_group_members() {
        let g = json!({"member":[{"entity":{"reference":"Patient/a"}},
            {"entity":{"reference":"Patient/b"},"inactive":true},{"entity":{"reference":"Device/c"}}]});
        assert_eq!(group_member_ids(&g), ["a"]);
    }
}
