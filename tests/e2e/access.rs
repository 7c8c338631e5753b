//! What a caller may export and download, by scopes and Group allow-list.
//! (Identities come from the test authenticator until tokens land.)

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn app() -> TestApp {
    spawn_app(Options {
        sample_patients: 4,
        header_subject: true,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_the_types_a_caller_may_export() {
    let app = app().await;
    let scoped = |r: reqwest::RequestBuilder, scope: &'static str| r.header("x-test-scope", scope);

    // A _type outside the scopes: 403.
    let resp = scoped(
        app.kickoff_get("$export?_type=Patient,Condition"),
        "system/Patient.read",
    )
    .send()
    .await
    .unwrap();
    let oo = expect_outcome(resp, StatusCode::FORBIDDEN).await;
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Condition"));
    // Non-system and write scopes grant nothing.
    for scope in [
        "patient/*.read",
        "user/*.rs",
        "system/*.write",
        "system/Observation.rs?category=laboratory",
    ] {
        let resp = scoped(app.kickoff_get("$export?_type=Observation"), scope)
            .send()
            .await
            .unwrap();
        expect_outcome(resp, StatusCode::FORBIDDEN).await;
    }

    // No _type: exactly the permitted types (v1 and v2 scopes alike).
    let req = scoped(
        app.kickoff_get("$export"),
        "system/Patient.read system/Encounter.rs",
    );
    let status = app.start_export(req).await;
    let manifest = app.wait_manifest(&status).await;
    let types: BTreeSet<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, BTreeSet::from(["Encounter", "Patient"]));

    // Downloads re-check the scopes: a narrower token cannot fetch Encounters.
    let enc = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Encounter")
        .unwrap();
    let url = enc["url"].as_str().unwrap();
    let resp = scoped(app.client.get(url), "system/Patient.read")
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    let resp = scoped(app.client.get(url), "system/Encounter.rs")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limited_to_groups_exports_and_reads_only_those() {
    let app = app().await;
    let limited = |r: reqwest::RequestBuilder| {
        r.header("x-test-groups", "sample-cohort-1")
            .header("x-test-scope", "system/*.read")
    };
    let resp = limited(app.kickoff_get("Group/sample-all-patients/$export"))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    for level in ["$export", "Patient/$export"] {
        let resp = limited(app.kickoff_get(level)).send().await.unwrap();
        expect_outcome(resp, StatusCode::FORBIDDEN).await;
    }
    let resp = limited(app.client.get(app.url("Group/sample-all-patients")))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    let resp = limited(app.client.get(app.url("Group/sample-cohort-1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let status = app
        .start_export(limited(
            app.kickoff_get("Group/sample-cohort-1/$export?_type=Patient"),
        ))
        .await;
    let manifest = app.wait_manifest(&status).await;
    assert_eq!(manifest["output"][0]["count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_holders_cannot_write() {
    let app = app().await;
    let resp = app
        .client
        .put(app.url("Patient/p1"))
        .header("x-test-scope", "system/*.read")
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "p1"}).to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(
        app.client
            .get(app.url("Patient/p1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}
