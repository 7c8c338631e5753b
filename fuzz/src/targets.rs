//! The targets. Each takes any bytes and fails (panics) only on a bug: a
//! panic in the service's code, or an answer it must never give: a 5xx for
//! a client's bytes, or a stored resource that is not the client's text
//! with the server's `id` and `meta`.

use std::sync::OnceLock;

use bulk_export::domain::request::{
    params_from_parameters_resource, parse_export_request, query_params, ExportLevel, KickoffInput,
};
use bulk_export::domain::resource_text::{subset_text, ResourceText};
use bulk_export::fhirpath::Path;
use bulk_export::search::parse_type_filters;
use bulk_export::view::View;
use bytes::Bytes;
use serde_json::Value;

use crate::embedded::{embedded, ORIGIN};
use crate::seeds::SAMPLES;

/// The sample resources the targets evaluate on (Synthea, and one with
/// decimals in every form).
fn samples() -> &'static [Value] {
    static PARSED: OnceLock<Vec<Value>> = OnceLock::new();
    PARSED.get_or_init(|| {
        SAMPLES
            .lines()
            .map(|l| serde_json::from_str(l).expect("a sample resource"))
            .collect()
    })
}

/// FHIRPath: parse, then evaluate on every sample.
pub fn fhirpath(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = Path::parse(text) {
        for r in samples() {
            let _ = path.evaluate(r);
        }
    }
}

/// `_typeFilter` and its search parameters: parse, then match every sample.
pub fn type_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((filters, _)) = parse_type_filters(text) {
        for f in &filters {
            for r in samples() {
                let _ = f.matches(r);
            }
        }
    }
}

/// Kick-off parameters: the first line as a GET query string, the rest as
/// a POST `Parameters` body, at every level, strict and lenient.
pub fn kickoff(data: &[u8]) {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("an instant");
    let levels = [
        ExportLevel::System,
        ExportLevel::Patient,
        ExportLevel::Group {
            group_id: "g1".into(),
        },
    ];
    let get = std::str::from_utf8(query)
        .ok()
        .and_then(|q| query_params(q).ok());
    let post = params_from_parameters_resource(body).ok();
    for (params, via_post) in [(get, false), (post, true)] {
        let Some(params) = params else { continue };
        for level in &levels {
            for lenient in [false, true] {
                let _ = parse_export_request(KickoffInput {
                    level: level.clone(),
                    request_url: format!("{ORIGIN}/fhir/$export"),
                    params: params.clone(),
                    lenient,
                    via_post,
                    now,
                });
            }
        }
    }
}

/// A ViewDefinition: read it, then run it on every sample.
pub fn view_definition(data: &[u8]) {
    let Ok(definition) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(view) = View::parse(&definition) else {
        return;
    };
    for line in SAMPLES.lines() {
        if let Ok(resource) = view.read_resource(line) {
            let _ = view.rows(&resource);
        }
    }
}

/// The write API's body: what the store keeps is the client's text, one
/// line, with the server's `id` and `meta`; `_elements` keeps stored bytes.
pub fn resource_write(data: &[u8]) {
    let Ok(resource) = ResourceText::parse(data) else {
        return;
    };
    let Some(object) = resource.value().as_object() else {
        return;
    };
    let stamped = resource.stamped("fuzz-1", 7, "2026-12-04T00:00:00Z");
    let written: Value = serde_json::from_str(&stamped).expect("a stamped resource is JSON");
    assert_eq!(written["id"], "fuzz-1");
    assert_eq!(written["meta"]["versionId"], "7");
    assert!(!stamped.contains('\n'), "one line");
    // Where the client's `id` was a string and `meta` an object (what the
    // write API lets through), every number is the client's, as written.
    let ours = |k: &str| match object.get(k) {
        None => true,
        Some(v) => (k == "id" && v.is_string()) || (k == "meta" && v.is_object()),
    };
    if ours("id") && ours("meta") {
        assert_eq!(number_tokens(&stamped), number_tokens(resource.text()));
    }
    let subset = subset_text(&stamped, |k| k.len() % 2 == 1).expect("a stored object");
    let _: Value = serde_json::from_str(&subset).expect("a subset is JSON");
}

/// The number tokens of JSON text, in order.
fn number_tokens(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&text[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// The routes whose bodies a client writes; the first byte of an input
/// picks one, the rest is the body.
pub const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "$export-schedules"),
    ("POST", "$export-releases"),
    ("POST", "$export-revisions"),
    ("POST", "ViewDefinition/$viewdefinition-run"),
    ("POST", "ViewDefinition/$viewdefinition-export"),
    ("POST", ""),
    ("PUT", "Patient/fuzz-p"),
    ("POST", "Observation"),
    ("POST", "$export"),
    ("POST", "Patient/$export"),
];

/// The bodies of the write API (Bundles too), schedules, releases, the
/// audit export, views and POST kick-offs, through the routing table on
/// embedded storage: any answer but a 5xx.
pub fn api_bodies(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = BODY_ROUTES[pick as usize % BODY_ROUTES.len()];
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{ORIGIN}/fhir/{path}"))
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body(Bytes::copy_from_slice(body))
        .expect("a request");
    let service = embedded();
    let status = service.status_of(&service.open, req);
    assert!(status < 500, "{method} {path}: {status}");
}

/// Client assertions (the token endpoint's form) and access tokens (a
/// bearer token on a kick-off), with SMART authorization on: an even first
/// byte sends the rest as the form, an odd one as the token.
pub fn auth(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let builder = if pick % 2 == 0 {
        http::Request::builder()
            .method("POST")
            .uri(format!("{ORIGIN}/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
    } else {
        let Ok(token) = http::HeaderValue::from_bytes(&[b"Bearer ", rest].concat()) else {
            return;
        };
        http::Request::builder()
            .method("GET")
            .uri(format!("{ORIGIN}/fhir/$export"))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .header("authorization", token)
    };
    let body = if pick % 2 == 0 { rest } else { &[][..] };
    let req = builder
        .body(Bytes::copy_from_slice(body))
        .expect("a request");
    let service = embedded();
    let status = service.status_of(&service.smart, req);
    assert!(status < 500, "auth: {status}");
}
