//! Where each target starts: inputs taken from the test suites (the SQL on
//! FHIR suite's views and paths, the R4 search parameters' expressions,
//! the requests of the end-to-end tests), so a short run already reaches
//! deep into each parser.

use std::path::{Path, PathBuf};

use bulk_export::auth::TokenIssuer;
use serde_json::{json, Value};

use crate::targets::BODY_ROUTES;

/// Sample resources, one per line: a few of the Synthea sample's, and an
/// Observation with decimals in every form.
pub const SAMPLES: &str = include_str!("../data/samples.ndjson");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the fuzz crate is in the repository")
        .to_path_buf()
}

/// The SQL on FHIR suite's files, parsed.
fn sql_on_fhir() -> Vec<Value> {
    let dir = repo().join("tests/data/sql-on-fhir-v2");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the vendored SQL on FHIR suite")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("a suite file")).expect("JSON"))
        .collect()
}

/// Every string under a `path` key, at any depth.
fn paths_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("path", Value::String(s)) => out.push(s.clone()),
                    _ => paths_in(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| paths_in(x, out)),
        _ => {}
    }
}

fn views() -> Vec<Value> {
    let mut out: Vec<Value> = sql_on_fhir()
        .iter()
        .flat_map(|f| f["tests"].as_array().cloned().unwrap_or_default())
        .map(|t| t["view"].clone())
        .collect();
    for name in ["patients", "observations", "conditions"] {
        let p = repo().join(format!("local/sample-views/{name}.json"));
        out.push(serde_json::from_slice(&std::fs::read(p).expect("a sample view")).expect("JSON"));
    }
    out
}

fn type_filters() -> Vec<String> {
    [
        "Patient?gender=female",
        "Patient?birthdate=ge2000-01-01&gender:not=male",
        "Observation?code=http://loinc.org|29463-7",
        "Observation?value-quantity=gt1.5|http://unitsofmeasure.org|kg",
        "Observation?value-quantity=0.012151678567590593",
        "Observation?date=2020-03&status=final,amended",
        "Observation?subject=Patient/p1&code:text=weight",
        "Condition?clinical-status=active&onset-date=lt2019",
        "Encounter?date=sa2020-01-01T00:00:00Z&class=AMB",
        "MedicationRequest?status=active&authoredon=le2021-05-05",
        "Patient?name:contains=ann&address-city:exact=Boston",
        "Patient?_id=p1,p2&_lastUpdated=gt2020",
        "Observation?value-quantity:missing=true",
        "Patient?foo=1",
        "Observation?code%3Atext=heart%20rate",
        "Observation?combo-value-quantity=ap100",
        "Patient?birthdate=eb1990-05-05T10:00:00.123+02:00",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn parameters(params: Value) -> String {
    json!({"resourceType": "Parameters", "parameter": params}).to_string()
}

fn kickoff_bodies() -> Vec<String> {
    vec![
        parameters(json!([{"name": "_type", "valueString": "Patient,Observation"}])),
        parameters(json!([
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"},
            {"name": "_until", "valueInstant": "2025-01-01T00:00:00Z"},
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
            {"name": "_typeFilter", "valueString": "Observation?status=final"},
            {"name": "_elements", "valueString": "Patient.id,status"},
            {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"},
            {"name": "organizeOutputBy", "valueString": "Patient"},
            {"name": "allowPartialManifests", "valueBoolean": true}
        ])),
    ]
}

fn kickoff_queries() -> Vec<String> {
    [
        "_type=Patient,Observation",
        "_outputFormat=application/fhir+ndjson&_since=2020-01-01T00:00:00Z",
        "_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C29463-7",
        "_elements=id,status&_type=Observation&_until=2024-05-05",
        "includeAssociatedData=LatestProvenanceResources&organizeOutputBy=Patient",
        "allowPartialManifests=true&_outputFormat=ndjson",
        "_since=2020&_type=Nope",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A corpus resource: every kind of number, pretty-printed.
fn numbers() -> String {
    r#"{
  "resourceType": "Observation", "id": "n1", "status": "final", "code": {"text": "n"},
  "meta": {"tag": [{"code": "t"}]},
  "valueQuantity": {"value": 1.50},
  "extension": [{"valueDecimal": 1e2}, {"valueDecimal": -0.0}, {"valueDecimal": 1E-7},
                {"valueDecimal": 123456789012345678901234567890.12}, {"valueInteger": 9007199254740993}],
  "note": [{"text": "a \"quoted\" \u00e9 note"}]
}"#
    .to_string()
}

fn bodies_for(route: &str) -> Vec<String> {
    let view = json!({"resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "g", "path": "gender"}]}]});
    match route {
        "$export-schedules" => vec![
            json!({"name": "nightly", "cadence": "cron(0 2 * * ? *)", "mode": "incremental",
                   "export": "$export?_type=Patient", "startAt": "2026-01-01T00:00:00Z"})
            .to_string(),
            json!({"name": "views", "cadence": "rate(1 day)", "viewExport": parameters(json!([
                {"name": "view", "part": [{"name": "viewResource", "resource": view}]}]))})
            .to_string(),
            json!({"name": "hook", "cadence": "rate(7 days)", "export": "$export",
                   "webhook": {"url": "https://example.org/hook", "secret": "0123456789abcdef0123"}})
            .to_string(),
        ],
        "$export-releases" => vec![
            json!({"name": "2026.1", "export": "$export?_type=Patient,Observation"}).to_string(),
            json!({"name": "v2", "export": "Group/g1/$export", "transactionTime": "2026-01-01T00:00:00Z"})
                .to_string(),
        ],
        "$export-revisions" => vec![
            json!({"startDate": 1551398400000_i64, "endDate": 1900000000000_i64,
                   "users": ["alice"], "recordTypes": ["Patient"], "includeModifiedProps": true})
            .to_string(),
            String::new(),
        ],
        "ViewDefinition/$viewdefinition-run" => vec![
            parameters(json!([{"name": "viewResource", "resource": view},
                              {"name": "_format", "valueCode": "csv"}, {"name": "_limit", "valueInteger": 5}])),
            parameters(json!([{"name": "viewResource", "resource": view},
                              {"name": "resource", "resource": {"resourceType": "Patient", "id": "x"}},
                              {"name": "patient", "valueReference": {"reference": "Patient/p1"}}])),
        ],
        "ViewDefinition/$viewdefinition-export" => vec![parameters(json!([
            {"name": "view", "part": [{"name": "name", "valueString": "p"}, {"name": "viewResource", "resource": view}]},
            {"name": "_format", "valueCode": "parquet"}]))],
        "" => vec![json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "PUT", "url": "Patient/b1"}, "resource": {"resourceType": "Patient", "id": "b1"}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}},
            {"request": {"method": "DELETE", "url": "Patient/b2"}}]})
        .to_string()],
        "Patient/fuzz-p" => vec![r#"{"resourceType":"Patient","id":"fuzz-p","gender":"other"}"#.into()],
        "Observation" => vec![numbers()],
        _ => kickoff_bodies(),
    }
}

/// A signed JWT (with a key the service does not know): structurally an
/// access token or a client assertion, so the parsers get past the syntax.
fn jwt() -> String {
    let issuer = TokenIssuer::from_pem(
        &TokenIssuer::generate_pem(),
        "c1",
        "http://127.0.0.1:9/auth/token",
    )
    .expect("a fresh key");
    issuer.issue("c1", "system/*.read", None, chrono::Utc::now())
}

/// The seeds of `target`.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let text = |v: Vec<String>| v.into_iter().map(String::into_bytes).collect();
    match target {
        "fhirpath" => {
            let mut paths = Vec::new();
            for f in sql_on_fhir() {
                paths_in(&f["tests"], &mut paths);
            }
            let params: Value = serde_json::from_slice(
                &std::fs::read(repo().join("fhir-query/src/search/r4-search-parameters.json"))
                    .expect("the search parameters"),
            )
            .expect("JSON");
            paths.extend(
                params
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["expression"].as_str().map(str::to_string)),
            );
            paths.extend(["value.ofType(Quantity).value > 0.012151678567590592".to_string()]);
            paths.sort();
            paths.dedup();
            text(paths)
        }
        "type_filter" => text(type_filters()),
        "kickoff" => {
            let mut out = Vec::new();
            for (q, b) in kickoff_queries()
                .iter()
                .zip(kickoff_bodies().iter().cycle())
            {
                out.push(format!("{q}\n{b}"));
            }
            text(out)
        }
        "view_definition" => views().iter().map(|v| v.to_string().into_bytes()).collect(),
        "resource_write" => {
            let mut out: Vec<String> = SAMPLES.lines().map(str::to_string).collect();
            out.push(numbers());
            text(out)
        }
        "api_bodies" => BODY_ROUTES
            .iter()
            .enumerate()
            .flat_map(|(i, (_, path))| {
                bodies_for(path).into_iter().map(move |b| {
                    let mut input = vec![i as u8];
                    input.extend(b.into_bytes());
                    input
                })
            })
            .collect(),
        "auth" => {
            let token = jwt();
            let form = format!(
                "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={token}&scope=system%2F*.read"
            );
            vec![
                [b"\0", form.as_bytes()].concat(),
                [b"\x01", token.as_bytes()].concat(),
            ]
        }
        other => panic!("no target '{other}'"),
    }
}

/// The inputs a fuzzer once crashed `target` on, kept as regressions.
pub fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("a directory entry").path())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&p).expect("a regression input"))
        })
        .collect();
    out.sort();
    out
}
