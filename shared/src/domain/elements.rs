//! `_elements` subsetting: keep the requested top-level elements plus the
//! mandatory ones, and mark the result SUBSETTED as the Bulk Data IG requires.

use serde_json::{json, Value};

use super::fhir_types::mandatory_elements;

const ALWAYS_KEPT: &[&str] = &["resourceType", "id", "meta"];

/// Reduces `resource` in place to `keep` + mandatory elements.
pub fn subset(resource: &mut Value, resource_type: &str, keep: &[&str]) {
    let mandatory = mandatory_elements(resource_type);
    if let Some(obj) = resource.as_object_mut() {
        obj.retain(|k, _| {
            ALWAYS_KEPT.contains(&k.as_str())
                || keep.contains(&k.as_str())
                || mandatory.contains(&k.as_str())
        });
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED"
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_requested_and_mandatory_elements() {
        let mut obs = json!({"resourceType":"Observation","id":"o","meta":{"versionId":"1"},
            "status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},"valueQuantity":{"value":1}});
        subset(&mut obs, "Observation", &["subject"]);
        let keys: Vec<&String> = obs.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["resourceType", "id", "meta", "status", "code", "subject"]
        );
        assert_eq!(obs["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(obs["meta"]["versionId"], "1");
    }
}
