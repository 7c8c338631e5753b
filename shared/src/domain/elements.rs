//! `_elements` subsetting: keep the requested top-level elements plus the
//! mandatory ones, and mark the result SUBSETTED as the Bulk Data IG requires.
//! It works on the stored text, so what it keeps is byte for byte what the
//! client wrote.

use super::fhir_types::mandatory_elements;
use super::resource_text::{subset_text, TextError};

const ALWAYS_KEPT: &[&str] = &["resourceType", "id", "meta"];

/// The stored resource `text` reduced to `keep` + mandatory elements.
pub fn subset(text: &str, resource_type: &str, keep: &[&str]) -> Result<String, TextError> {
    let mandatory = mandatory_elements(resource_type);
    subset_text(text, |k| {
        ALWAYS_KEPT.contains(&k) || keep.contains(&k) || mandatory.contains(&k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn keeps_requested_and_mandatory_elements() {
        let obs = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},"valueQuantity":{"value":1.50}}"#;
        let out = subset(obs, "Observation", &["subject"]).unwrap();
        let obs: Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<&String> = obs.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["resourceType", "id", "meta", "status", "code", "subject"]
        );
        assert_eq!(obs["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(obs["meta"]["versionId"], "1");
        let kept = subset(
            r#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":1.50}}"#,
            "Observation",
            &["valueQuantity"],
        )
        .unwrap();
        assert!(kept.contains(r#""valueQuantity":{"value":1.50}"#), "{kept}");
    }
}
