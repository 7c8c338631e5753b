//! What comes out is what went in: every JSON number a client writes is
//! read back, exported (whole, with `_elements`, as a `_since` delta, in a
//! release) and downloaded through a presigned link with the same text:
//! digits, trailing zeros, exponent form. Searches and views compare
//! decimals exactly. The scenario runs on the embedded service here and
//! through the Lambda functions on the AWS emulator (`aws::exact_numbers`).
//!
//! Numbers are compared as the tokens of the JSON text, never through a
//! parse, so a parser that rounds cannot hide a change.

use std::collections::BTreeMap;

use bulk_export::ports::Clock;
use serde_json::{json, Value};

use crate::helpers::{sha256_hex, spawn_app, Options};
use crate::revisions::Embedded;
use crate::schedules::Stack;

/// The corpus: each number as a client may write it. JSON does not say
/// how precise a number is; FHIR says a decimal's text does.
pub const CORPUS: &[&str] = &[
    "1.50",
    "0.0",
    "-0.0",
    "1e2",
    "1E-7",
    "2.5E+3",
    "0.1",
    "123456789012345678901234567890.12",
    "-0.000000000000000000000000000001",
    // 17 and 18 significant digits: a double keeps neither exactly.
    "0.012151678567590593",
    "1.23456789012345678",
    // Integers above 2^53, and above u64 and i128.
    "9007199254740993",
    "-9007199254740993",
    "18446744073709551616",
    "340282366920938463463374607431768211457",
    // Beyond a double's range.
    "1e400",
    "100",
];

/// The number tokens of JSON `text`, in order (strings skipped).
pub fn number_tokens(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
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

/// An Observation holding every number of the corpus, as pretty-printed
/// text (the server makes it one line and must keep every token).
pub fn corpus_observation(id: &str, patient: &str) -> String {
    let extensions: Vec<String> = CORPUS
        .iter()
        .map(|n| format!("    {{\"url\": \"http://example.org/n\", \"valueDecimal\": {n}}}"))
        .collect();
    format!(
        "{{\n  \"resourceType\": \"Observation\",\n  \"id\": \"{id}\",\n  \"status\": \"final\",\n  \
         \"code\": {{\"text\": \"numbers\"}},\n  \"subject\": {{\"reference\": \"Patient/{patient}\"}},\n  \
         \"valueQuantity\": {{\"value\": 1.50, \"unit\": \"mg\"}},\n  \"extension\": [\n{}\n  ]\n}}",
        extensions.join(",\n")
    )
}

/// An Observation with one quantity, written as `value`.
fn quantity_observation(id: &str, value: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"q"}},"subject":{{"reference":"Patient/np"}},"valueQuantity":{{"value":{value}}}}}"#
    )
}

/// The numbers a stored or exported corpus resource must hold.
fn expected_tokens() -> Vec<&'static str> {
    let mut want = vec!["1.50"];
    want.extend(CORPUS);
    want
}

async fn send(st: &dyn Stack, method: &str, path: &str, body: String) -> crate::revisions::Reply {
    let r = st
        .call(
            method,
            path,
            None,
            &[("content-type", "application/fhir+json")],
            Some(body),
        )
        .await;
    assert!(
        r.status < 300,
        "{method} {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r
}

/// A manifest file's text, through the file endpoint's redirect to a
/// signed link, followed without credentials.
async fn download(st: &dyn Stack, url: &str) -> String {
    let path = url.strip_prefix(&format!("{}/", st.base())).unwrap();
    let r = st.call("GET", path, None, &[], None).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    reqwest::get(r.header("location"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls a status-like path until it stops answering 202.
async fn wait(st: &dyn Stack, path: &str) -> Value {
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        st.settle().await;
        let r = st.call("GET", path, None, &[], None).await;
        if r.status != 202 {
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            return r.json();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{path} never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every output line of a manifest, by resource id.
async fn lines_by_id(st: &dyn Stack, manifest: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in manifest["output"].as_array().unwrap() {
        let text = download(st, entry["url"].as_str().unwrap()).await;
        for line in text.lines() {
            let id = serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            out.insert(id, line.to_string());
        }
    }
    out
}

/// Kicks off `path` and returns its manifest.
async fn export(st: &dyn Stack, path: &str) -> Value {
    let r = st
        .call("GET", path, None, &[("prefer", "respond-async")], None)
        .await;
    assert_eq!(
        r.status,
        202,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let status = r.header("content-location").to_string();
    let status = status
        .strip_prefix(&format!("{}/", st.base()))
        .unwrap()
        .to_string();
    wait(st, &status).await
}

pub(crate) async fn exact_numbers_scenario(st: &dyn Stack) {
    let want = expected_tokens();
    // Every write below is after this instant.
    let before = st
        .clock()
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    st.clock().advance(chrono::Duration::seconds(1));
    send(
        st,
        "PUT",
        "Patient/np",
        json!({"resourceType": "Patient", "id": "np"}).to_string(),
    )
    .await;

    // Update, read back: the text of every number, and nothing but `meta`
    // added (the body is made one line).
    let source = corpus_observation("n1", "np");
    let r = send(st, "PUT", "Observation/n1", source.clone()).await;
    let stored = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(number_tokens(&stored), want);
    let read = st.call("GET", "Observation/n1", None, &[], None).await;
    let read = String::from_utf8(read.body.to_vec()).unwrap();
    assert_eq!(read, stored);
    let one_line: String = source
        .split('\n')
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("");
    let one_line = one_line.replace("\": ", "\":").replace(", ", ",");
    let meta_at = read.find(",\"meta\":").unwrap();
    let meta_end = read[meta_at..].find("},").unwrap() + meta_at + 1;
    assert_eq!(
        format!("{}{}", &read[..meta_at], &read[meta_end..]),
        one_line,
        "only meta was added"
    );

    // Create (the server's id) and a transaction Bundle.
    let r = send(
        st,
        "POST",
        "Observation",
        corpus_observation("ignored", "np"),
    )
    .await;
    let created = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(number_tokens(&created), want);
    let created_id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(created_id, "ignored");
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"request":{{"method":"PUT","url":"Observation/n2"}},"resource":{}}}]}}"#,
        corpus_observation("n2", "np")
    );
    send(st, "POST", "", bundle).await;
    let n2 = st.call("GET", "Observation/n2", None, &[], None).await;
    assert_eq!(number_tokens(&String::from_utf8_lossy(&n2.body)), want);

    // Two quantities a double cannot tell apart.
    for (id, v) in [
        ("q593", "0.012151678567590593"),
        ("q592", "0.012151678567590592"),
    ] {
        send(
            st,
            "PUT",
            &format!("Observation/{id}"),
            quantity_observation(id, v),
        )
        .await;
    }

    // A whole export, `_elements`, and a `_since` delta.
    let corpus_ids = ["n1", "n2", created_id.as_str()];
    let check = |lines: &BTreeMap<String, String>, what: &str| {
        for id in corpus_ids {
            let line = lines
                .get(id)
                .unwrap_or_else(|| panic!("{what}: {id} missing"));
            assert_eq!(number_tokens(line), want, "{what}: {id}");
        }
        assert_eq!(
            number_tokens(&lines["q593"]),
            ["0.012151678567590593"],
            "{what}"
        );
        assert_eq!(
            number_tokens(&lines["q592"]),
            ["0.012151678567590592"],
            "{what}"
        );
    };
    let m = export(st, "$export?_type=Observation").await;
    let whole = lines_by_id(st, &m).await;
    check(&whole, "export");
    assert_eq!(whole["n1"], stored, "an export line is the stored resource");
    let m = export(
        st,
        "$export?_type=Observation&_elements=valueQuantity,extension",
    )
    .await;
    check(&lines_by_id(st, &m).await, "_elements");
    let m = export(st, &format!("$export?_type=Observation&_since={before}")).await;
    check(&lines_by_id(st, &m).await, "_since");

    // `_typeFilter` number search is exact: one of the two quantities.
    let m = export(
        st,
        "$export?_type=Observation&_typeFilter=Observation%3Fvalue-quantity%3D0.012151678567590593",
    )
    .await;
    let filtered = lines_by_id(st, &m).await;
    assert_eq!(filtered.keys().collect::<Vec<_>>(), ["q593"]);
    let m = export(
        st,
        "$export?_type=Observation&_typeFilter=Observation%3Fvalue-quantity%3Dgt0.012151678567590592",
    )
    .await;
    let filtered = lines_by_id(st, &m).await;
    assert!(filtered.contains_key("q593") && !filtered.contains_key("q592"));

    // A release.
    let r = send(
        st,
        "POST",
        "$export-releases",
        json!({"name": "numbers", "export": "$export?_type=Observation"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 201);
    let m = wait(st, "$export-releases/numbers/manifest").await;
    check(&lines_by_id(st, &m).await, "release");

    // A schedule run's presigned links, opened without credentials.
    let r = send(
        st,
        "POST",
        "$export-schedules",
        json!({"name": "numbers", "cadence": "rate(7 days)", "export": "$export?_type=Observation"})
            .to_string(),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = st
        .call(
            "POST",
            &format!("$export-schedules/{id}/run"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 202);
    wait(st, &format!("$export-schedules/{id}/runs/latest")).await;
    let links = st
        .call(
            "POST",
            &format!("$export-schedules/{id}/runs/latest/links?expiresIn=600"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(
        links.status,
        200,
        "{}",
        String::from_utf8_lossy(&links.body)
    );
    let links = links.json();
    let manifest: Value = reqwest::get(links["manifest"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut linked = BTreeMap::new();
    for entry in manifest["output"].as_array().unwrap() {
        let text = reqwest::get(entry["url"].as_str().unwrap())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            entry["extension"]["sha256"].as_str(),
            Some(sha256_hex(text.as_bytes()).as_str()),
            "the digest of {entry}"
        );
        for line in text.lines() {
            let id = serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            linked.insert(id, line.to_string());
        }
    }
    check(&linked, "presigned links");

    // A view: decimal cells carry the stored digits; FHIRPath compares
    // exactly.
    let view = json!({"resource": "Observation", "select": [
        {"column": [{"name": "id", "path": "id"}, {"name": "v", "path": "value.ofType(Quantity).value"}]}],
        "where": [{"path": "value.ofType(Quantity).value > 0.012151678567590592"}]});
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": view}, {"name": "_format", "valueCode": "csv"}]});
    let r = send(
        st,
        "POST",
        "ViewDefinition/$viewdefinition-run",
        params.to_string(),
    )
    .await;
    let mut rows: Vec<String> = String::from_utf8(r.body.to_vec())
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    rows.sort();
    let mut want_rows = vec![
        "n1,1.50".to_string(),
        "n2,1.50".to_string(),
        format!("{created_id},1.50"),
        "q593,0.012151678567590593".to_string(),
    ];
    want_rows.sort();
    assert_eq!(rows, want_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_comes_back_as_written() {
    exact_numbers_scenario(&Embedded(spawn_app(Options::default()).await)).await;
}

#[test]
fn number_tokens_skip_strings_and_keep_text() {
    assert_eq!(
        number_tokens(r#"{"a":"1.5 \"2\"","b":[1.50,-0.0,1E-7],"c":{"d":2.5e+3}}"#),
        ["1.50", "-0.0", "1E-7", "2.5e+3"]
    );
}

/// The vendored Synthea sample, loaded as its NDJSON lines hold it,
/// exported whole, and compared with its source line by line: every
/// number token the same text, and nothing but `meta` added.
/// Loads the Synthea sample (at most `per_type` resources of each type),
/// exports it and compares every resource with its source line, number by
/// number.
pub(crate) async fn synthea_round_trip_scenario(st: &dyn Stack, per_type: usize) {
    let engine = st.engine();
    let mut source: BTreeMap<(String, String), String> = BTreeMap::new();
    for path in crate::helpers::synthea_files() {
        let text = crate::helpers::gunzip(&path);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(per_type)
            .collect();
        for line in &lines {
            let v: Value = serde_json::from_str(line).unwrap();
            let key = (
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            );
            source.insert(key, line.to_string());
        }
        bulk_export::loader::load_ndjson(&engine, lines.join("\n").as_bytes())
            .await
            .unwrap();
    }
    if per_type == usize::MAX {
        assert_eq!(source.len(), 38_473);
    }
    let manifest = export(st, "$export").await;
    let mut seen = 0;
    let mut numbers = 0;
    for entry in manifest["output"].as_array().unwrap() {
        let text = download(st, entry["url"].as_str().unwrap()).await;
        for line in text.lines() {
            let mut got: Value = serde_json::from_str(line).unwrap();
            let key = (
                got["resourceType"].as_str().unwrap().to_string(),
                got["id"].as_str().unwrap().to_string(),
            );
            let want = &source[&key];
            let want_tokens = number_tokens(want);
            assert_eq!(number_tokens(line), want_tokens, "{key:?}");
            numbers += want_tokens.len();
            let mut want: Value = serde_json::from_str(want).unwrap();
            got.as_object_mut().unwrap().remove("meta");
            want.as_object_mut().unwrap().remove("meta");
            assert!(got == want, "{key:?}: only meta may differ");
            seen += 1;
        }
    }
    assert_eq!(seen, source.len(), "every resource exported once");
    if per_type == usize::MAX {
        // The sample's numbers (2.6% of them changed before the store kept text).
        assert_eq!(numbers, 95_895);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthea_sample_exports_number_for_number() {
    synthea_round_trip_scenario(&Embedded(spawn_app(Options::default()).await), usize::MAX).await;
}
