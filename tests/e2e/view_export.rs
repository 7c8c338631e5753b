//! `$viewdefinition-export` end to end over HTTP against the local service:
//! the rows of each view, in CSV and NDJSON, for the whole store, a Group
//! and `_since`; cancel; and malformed requests.

use std::collections::BTreeMap;

use bulk_export::domain::resource::{compartment_patients, group_member_ids};
use bulk_export::sample::{generate, SampleConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const PATIENTS: usize = 6;

fn sample() -> Vec<Value> {
    generate(SampleConfig {
        patients: PATIENTS,
        seed: 42,
    })
    .collect()
}

fn patients_view() -> Value {
    json!({"resourceType": "ViewDefinition", "id": "patients", "name": "patients",
        "url": "https://example.org/views/patients",
        "resource": "Patient", "status": "active",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "gender", "path": "gender", "type": "code"},
            {"name": "birth_date", "path": "birthDate", "type": "date"}]}]})
}

/// A row per Observation coding.
fn codes_view() -> Value {
    json!({"resourceType": "ViewDefinition", "resource": "Observation", "status": "active",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"},
                        {"name": "patient", "path": "subject.getReferenceKey(Patient)"}]},
            {"forEach": "code.coding", "column": [
                {"name": "system", "path": "system"}, {"name": "code", "path": "code"}]}]})
}

/// Rows as sorted lists of cells, by view name.
type Tables = BTreeMap<String, Vec<Vec<String>>>;

fn expected(data: &[Value], keep_patient: impl Fn(&str) -> bool) -> Tables {
    let mut t = Tables::new();
    let mut patients: Vec<Vec<String>> = data
        .iter()
        .filter(|r| r["resourceType"] == "Patient" && keep_patient(r["id"].as_str().unwrap()))
        .map(|p| {
            vec![
                p["id"].as_str().unwrap().to_string(),
                p["gender"].as_str().unwrap().to_string(),
                p["birthDate"].as_str().unwrap().to_string(),
            ]
        })
        .collect();
    patients.sort();
    let mut codes: Vec<Vec<String>> = data
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .filter(|r| {
            compartment_patients("Observation", r)
                .iter()
                .any(|p| keep_patient(p))
        })
        .flat_map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            let patient = r["subject"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_string();
            r["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| {
                    vec![
                        id.clone(),
                        patient.clone(),
                        c["system"].as_str().unwrap().to_string(),
                        c["code"].as_str().unwrap().to_string(),
                    ]
                })
        })
        .collect();
    codes.sort();
    t.insert("patients".into(), patients);
    t.insert("codes".into(), codes);
    t
}

fn params(format: &str, extra: Value) -> Value {
    let mut p = vec![
        // By its canonical URL.
        json!({"name": "view", "part": [
            {"name": "viewReference", "valueCanonical": "https://example.org/views/patients"}]}),
        json!({"name": "view", "part": [
            {"name": "name", "valueString": "codes"},
            {"name": "viewResource", "resource": codes_view()}]}),
        json!({"name": "_format", "valueCode": format}),
    ];
    p.extend(extra.as_array().unwrap().iter().cloned());
    json!({"resourceType": "Parameters", "parameter": p})
}

fn kickoff(app: &TestApp, body: Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("ViewDefinition/$viewdefinition-export"))
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body(body.to_string())
}

/// Runs the export; returns the manifest and the rows of each view.
async fn export(app: &TestApp, body: Value) -> (Value, Tables) {
    let status = app.start_export(kickoff(app, body.clone())).await;
    let manifest = app.wait_manifest(&status).await;
    let csv = body.to_string().contains("\"csv\"");
    let parquet = body.to_string().contains("\"parquet\"");
    let headers = [
        ("patients", "id,gender,birth_date"),
        ("codes", "id,patient,system,code"),
    ];
    let mut tables = Tables::new();
    for out in manifest["output"].as_array().unwrap() {
        let view = out["type"].as_str().unwrap().to_string();
        let url = out["url"].as_str().unwrap();
        if parquet {
            assert!(url.ends_with(".parquet"), "{url}");
            let mut rows = parquet_rows(app, url).await;
            assert_eq!(out["count"], rows.len(), "the manifest counts the rows");
            tables.entry(view).or_default().append(&mut rows);
            continue;
        }
        let text = app.download_text(url).await;
        let mut rows: Vec<Vec<String>> = if csv {
            let mut lines: Vec<&str> = text.split("\r\n").collect();
            assert_eq!(lines.pop(), Some(""), "every record ends in CRLF");
            let header = lines.remove(0);
            assert_eq!(
                header,
                headers.iter().find(|h| h.0 == view).unwrap().1,
                "each file starts with its header"
            );
            lines
                .iter()
                .map(|l| l.split(',').map(str::to_string).collect())
                .collect()
        } else {
            let columns: Vec<&str> = headers
                .iter()
                .find(|h| h.0 == view)
                .unwrap()
                .1
                .split(',')
                .collect();
            text.lines()
                .map(|l| {
                    let row: Value = serde_json::from_str(l).unwrap();
                    columns
                        .iter()
                        .map(|c| row[*c].as_str().unwrap().to_string())
                        .collect()
                })
                .collect()
        };
        assert_eq!(out["count"], rows.len(), "the manifest counts the rows");
        tables.entry(view).or_default().append(&mut rows);
    }
    for rows in tables.values_mut() {
        rows.sort();
    }
    (manifest, tables)
}

/// A Parquet file's rows, read back with the `parquet` crate: each cell as
/// text (the test views' columns are all strings).
async fn parquet_rows(app: &TestApp, url: &str) -> Vec<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let resp = app.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let link = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = reqwest::get(&link).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    let bytes = resp.bytes().await.unwrap();
    let reader = SerializedFileReader::new(bytes).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(_, field)| match field {
                    Field::Str(s) => s.clone(),
                    other => panic!("a string column holds {other:?}"),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_export_holds_each_views_rows_in_csv_ndjson_and_parquet() {
    let app = spawn_app(Options {
        sample_patients: PATIENTS,
        // Several files per view.
        tune: Box::new(|c| c.engine.max_resources_per_file = 7),
        ..Default::default()
    })
    .await;
    let data = sample();
    app.put(&patients_view()).await;

    let tracking = json!([{"name": "clientTrackingId", "valueString": "nightly-42"}]);
    let (manifest, csv) = export(&app, params("csv", tracking)).await;
    assert_eq!(manifest["clientTrackingId"], "nightly-42");
    assert!(
        manifest["output"].as_array().unwrap().len() > 2,
        "split into files"
    );
    assert_eq!(csv, expected(&data, |_| true));
    let (_, ndjson) = export(&app, params("ndjson", json!([]))).await;
    assert_eq!(ndjson, csv, "the same rows in either format");
    let (_, parquet) = export(&app, params("parquet", json!([]))).await;
    assert_eq!(parquet, csv, "the same rows in Parquet");

    // A Group: exactly its members' rows.
    let patient_ids: Vec<&str> = data
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let group = json!({"resourceType": "Group", "id": "pair", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{}", patient_ids[1])}},
                   {"entity": {"reference": format!("Patient/{}", patient_ids[3])}}]});
    app.put(&group).await;
    let members = group_member_ids(&group);
    assert_eq!(members.len(), 2);
    let group_ref = json!([{"name": "group", "valueReference": {"reference": format!("Group/{}", group["id"].as_str().unwrap())}}]);
    let (_, rows) = export(&app, params("csv", group_ref)).await;
    assert_eq!(rows, expected(&data, |p| members.iter().any(|m| m == p)));

    // One named patient.
    let one = members[0].clone();
    let patient_ref =
        json!([{"name": "patient", "valueReference": {"reference": format!("Patient/{one}")}}]);
    let (_, rows) = export(&app, params("ndjson", patient_ref)).await;
    assert_eq!(rows, expected(&data, |p| p == one));

    // _since: only what changed after it.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut changed = data
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .unwrap()
        .clone();
    changed["gender"] = json!("unknown");
    app.put(&changed).await;
    let (_, rows) = export(
        &app,
        params("csv", json!([{"name": "_since", "valueInstant": since}])),
    )
    .await;
    assert_eq!(
        rows["patients"],
        vec![vec![
            changed["id"].as_str().unwrap().to_string(),
            "unknown".to_string(),
            changed["birthDate"].as_str().unwrap().to_string()
        ]]
    );
    assert!(!rows.contains_key("codes"), "no Observation changed");

    // Cancel: the job is gone.
    let status = app
        .start_export(kickoff(&app, params("csv", json!([]))))
        .await;
    let resp = app.client.delete(&status).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = app.client.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_view_exports_get_4xx_outcomes() {
    let app = spawn_app(Options {
        sample_patients: 2,
        ..Default::default()
    })
    .await;
    app.put(&patients_view()).await;
    let body = |p: Value| json!({"resourceType": "Parameters", "parameter": p});
    let inline = |v: Value| json!({"name": "view", "part": [{"name": "name", "valueString": "v"}, {"name": "viewResource", "resource": v}]});
    let column = |path: &str| {
        inline(
            json!({"resource": "Patient", "select": [{"column": [{"name": "c", "path": path}]}]}),
        )
    };
    let stored = json!({"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]});
    let with = |extra: Value| body(json!([stored, extra]));
    let mut cases: Vec<(Value, StatusCode)> = vec![
        (json!({"resourceType": "Patient"}), StatusCode::BAD_REQUEST),
        (json!([]), StatusCode::BAD_REQUEST),
        (
            json!({"resourceType": "Parameters", "parameter": {}}),
            StatusCode::BAD_REQUEST,
        ),
        (body(json!([])), StatusCode::BAD_REQUEST),
        (body(json!([{"name": "view"}])), StatusCode::BAD_REQUEST),
        (
            body(json!([{"name": "view", "part": []}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([{"name": "view", "part": [{"name": "name", "valueString": "x"}]}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([{"name": "view", "part": [{"name": "viewResource"}]}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([{"name": "view", "part": [{"name": "oops", "valueString": "x"}]}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([{"name": "view", "part": [
            {"name": "viewResource", "resource": patients_view()},
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(
                json!([{"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/missing"}}]}]),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            body(
                json!([{"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "Patient/x"}}]}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([inline(
                json!({"select": [{"column": [{"name": "id", "path": "id"}]}]})
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([inline(
                json!({"resource": "Nope", "select": [{"column": [{"name": "id", "path": "id"}]}]})
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([inline(json!({"resource": "Patient"}))])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([column(
                "conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')"
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([column("frobnicate()")])),
            StatusCode::BAD_REQUEST,
        ),
        (body(json!([column("(((")])), StatusCode::BAD_REQUEST),
        (body(json!([column("%undefined")])), StatusCode::BAD_REQUEST),
        (
            body(json!([inline(
                json!({"resource": "Patient", "select": [{"column": [{"name": "c"}]}]})
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([inline(
                json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]})
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(json!([inline(
                json!({"resource": "Patient", "select": [{"forEach": 1}]})
            )])),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(
                json!([{"name": "view", "part": [{"name": "viewResource", "resource": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}}]}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(
                json!([{"name": "view", "part": [{"name": "name", "valueString": "bad name"}, {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (body(json!([stored, stored])), StatusCode::BAD_REQUEST),
        (
            with(json!({"name": "_format", "valueCode": "xlsx"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "_format", "valueCode": "json"})),
            StatusCode::BAD_REQUEST,
        ),
        (with(json!({"name": "_format"})), StatusCode::BAD_REQUEST),
        (
            body(
                json!([stored, {"name": "_format", "valueCode": "csv"}, {"name": "_format", "valueCode": "csv"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(
                json!([stored, {"name": "_format", "valueCode": "ndjson"}, {"name": "header", "valueBoolean": false}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "header", "valueString": "yes"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "_since", "valueInstant": "yesterday"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "_since", "valueDate": "2024-01-01"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "patient", "valueReference": {"reference": "Observation/x"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "patient", "valueReference": {"reference": "Patient/bad id!"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "group", "valueReference": {"reference": "Group/none"}})),
            StatusCode::NOT_FOUND,
        ),
        (
            with(json!({"name": "group", "valueReference": {"reference": "Patient/x"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            body(
                json!([stored, {"name": "group", "valueString": "Group/a"}, {"name": "group", "valueString": "Group/b"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "clientTrackingId", "valueString": ""})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "source", "valueString": "s3://elsewhere"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"name": "surprise", "valueString": "x"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            with(json!({"valueString": "no name"})),
            StatusCode::BAD_REQUEST,
        ),
        // A type outside the Patient compartment at Group level.
        (
            body(
                json!([{"name": "view", "part": [{"name": "name", "valueString": "meds"}, {"name": "viewResource", "resource": {"resourceType": "ViewDefinition", "resource": "Medication", "select": [{"column": [{"name": "id", "path": "id"}]}]}}]},
                     {"name": "group", "valueString": "Group/g"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
    ];
    cases.push((
        body(json!([{"name": "view", "part": [{"name": "viewReference", "valueCanonical": "https://example.org/views/none"}]}])),
        StatusCode::NOT_FOUND,
    ));
    cases.push((
        body(json!((0..21).map(|i| json!({"name": "view", "part": [{"name": "name", "valueString": format!("v{i}")}, {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]})).collect::<Vec<_>>())),
        StatusCode::BAD_REQUEST,
    ));
    assert!(cases.len() >= 40, "{}", cases.len());
    for (b, want) in cases {
        let resp = kickoff(&app, b.clone()).send().await.unwrap();
        assert_eq!(resp.status(), want, "{b}");
        let oo = expect_outcome(resp, want).await;
        assert_eq!(oo["resourceType"], "OperationOutcome", "{b}");
    }
    // Not JSON, not FHIR JSON, a query string, a GET.
    let resp = app
        .client
        .post(app.url("ViewDefinition/$viewdefinition-export"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let resp = app
        .client
        .post(app.url("ViewDefinition/$viewdefinition-export?_format=csv"))
        .header("content-type", "application/fhir+json")
        .body(with(json!({"name": "_format", "valueCode": "csv"})).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::BAD_REQUEST).await;
    let resp = app
        .client
        .get(app.url("ViewDefinition/$viewdefinition-export"))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::METHOD_NOT_ALLOWED).await;
}

/// Handlings that crash before and after chunk uploads (their messages come
/// back after the visibility timeout and resume from their checkpoints):
/// the view export still holds every row once, and so does the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_and_audit_exports_survive_crashed_handlings() {
    use crate::faults::{Crashes, Intercepted};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let app = spawn_app(Options {
        sample_patients: PATIENTS,
        wrap_artifacts: Some(Box::new(move |inner| {
            let hook = Crashes {
                calls: AtomicUsize::new(0),
                fail_before: vec![3, 11],
                fail_after: vec![6, 15],
                failures: f,
            };
            Arc::new(Intercepted { inner, hook })
        })),
        tune: Box::new(|c| {
            c.engine.page_size = 7;
            c.engine.min_chunk_bytes = 1;
            c.visibility_timeout = std::time::Duration::from_millis(500);
        }),
        ..Default::default()
    })
    .await;
    let data = sample();
    app.put(&patients_view()).await;
    let (_, rows) = export(&app, params("parquet", json!([]))).await;
    assert_eq!(
        failures.load(Ordering::SeqCst),
        4,
        "every injected crash happened"
    );
    assert_eq!(rows, expected(&data, |_| true));

    // The audit trail: one row per stored version, each once, newest first.
    let resp = app
        .client
        .post(app.url("$export-revisions"))
        .header("content-type", "application/json")
        .body(r#"{"startDate": 0}"#)
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    let id = answer["fileId"].as_str().unwrap();
    let resp = app
        .client
        .get(app.url(&format!("$export-revisions/file?fileId={id}")))
        .send()
        .await
        .unwrap();
    let link = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = reqwest::get(&link).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.unwrap();
    let ids: Vec<i64> = text
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    let versions = data.len() + 1; // the sample, and the stored view
    assert_eq!(ids.len(), versions);
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, each once"
    );
}
