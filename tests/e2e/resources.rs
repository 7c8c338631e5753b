//! The FHIR write API and the CapabilityStatement.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_read_delete_keep_versions() {
    let app = spawn_app(Options::default()).await;
    let url = app.url("Patient/p1");
    let put = |body: Value| {
        app.client
            .put(&url)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let resp = put(json!({"resourceType": "Patient", "id": "p1", "gender": "female"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    let v1: Value = resp.json().await.unwrap();
    assert_eq!(v1["meta"]["versionId"], "1");
    assert!(v1["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));

    let resp = put(json!({"resourceType": "Patient", "id": "p1", "gender": "male"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v2: Value = resp.json().await.unwrap();
    assert_eq!(v2["meta"]["versionId"], "2");
    assert!(v2["meta"]["lastUpdated"].as_str() > v1["meta"]["lastUpdated"].as_str());

    let got: Value = app
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, v2);

    let resp = app.client.delete(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_outcome(app.client.get(&url).send().await.unwrap(), StatusCode::GONE).await;
    // Deleting again is harmless.
    assert_eq!(
        app.client.delete(&url).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    // The history is kept: the tombstone is version 3.
    let v = app
        .running
        .services
        .ports
        .resources
        .read_current("Patient", "p1")
        .await
        .unwrap()
        .unwrap();
    assert!(v.deleted && v.version == 3);

    // POST create: the server picks the id.
    let resp = app
        .client
        .post(app.url("Observation"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Observation", "id": "ignored", "status": "final", "code": {"text": "x"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_ne!(created["id"], "ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reports_each_entry_and_transaction_is_atomic() {
    let app = spawn_app(Options::default()).await;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PUT", "url": "Patient/a"}, "resource": {"resourceType": "Patient", "id": "a"}},
        {"request": {"method": "PUT", "url": "Patient/b"}, "resource": {"resourceType": "Patient", "id": "c"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/a"}}
    ]});
    let resp = app
        .client
        .post(app.base())
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["type"], "batch-response");
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 invalid",
            "201 Created",
            "204 No Content"
        ]
    );
    assert_eq!(
        app.client
            .get(app.url("Patient/a"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::GONE
    );
    assert_eq!(
        app.client
            .get(app.url("Patient/b"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_statement_declares_the_export_operations() {
    let app = spawn_app(Options::default()).await;
    let cs: Value = app.get_json("metadata").await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    assert_eq!(cs["rest"][0]["operation"][0]["name"], "export");
    let op_of = |t: &str| {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .unwrap()["operation"][0]["name"]
            .clone()
    };
    assert_eq!(op_of("Patient"), "patient-export");
    assert_eq!(op_of("Group"), "group-export");
    // Each operation names the kick-off parameters the server supports.
    let documentation = cs["rest"][0]["operation"][0]["documentation"]
        .as_str()
        .unwrap();
    for parameter in [
        "_outputFormat",
        "_since",
        "_until",
        "_type",
        "_elements",
        "patient",
        "includeAssociatedData",
        "_typeFilter",
        "organizeOutputBy",
        "allowPartialManifests",
    ] {
        assert!(documentation.contains(parameter), "{parameter}");
    }
    assert_eq!(cs["rest"][0]["operation"][1]["name"], "viewdefinition-run");
}
