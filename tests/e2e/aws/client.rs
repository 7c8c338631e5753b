//! `bulk-export-client` against the Lambda functions on the AWS emulator:
//! the functions' HTTP handler behind a local HTTP front (as API Gateway
//! would be), the worker pumped from the real SQS queue, files on the
//! emulator's S3 behind presigned links.
//!
//! - `sync` from a release, then two runs of an incremental schedule with
//!   updates and deletions, then `--check`;
//! - `fetch` of a run's presigned-link manifest, with no credentials.

use std::sync::Arc;
use std::time::Duration;

use bulk_export_client::mirror::Mirror;
use bulk_export_client::progress::Quiet;
use bulk_export_client::sync::Sync;
use bulk_export_client::{fetch, FetchOptions, Session};
use bulk_export_functions::http as lambda;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::functions::invoke_worker;
use super::moto::fresh_stack;
use super::schedules::OnMoto;

/// The functions behind an HTTP front on 127.0.0.1; returns its FHIR base.
/// The worker function runs all the while, as SQS would invoke it.
async fn functions_over_http() -> String {
    let (sdk, names) = fresh_stack().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let on = Arc::new(OnMoto::at(&sdk, &names, None, &origin).await);
    let worker = on.clone();
    tokio::spawn(async move {
        loop {
            let handled = invoke_worker(
                &worker.engine,
                &worker.queue,
                Duration::from_secs(20),
                false,
            )
            .await;
            if handled == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let front = origin.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (on, origin) = (on.clone(), front.clone());
        async move { forward(&on, &origin, req).await }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("{origin}/fhir")
}

/// One HTTP request through the functions' handler, as API Gateway's
/// proxy integration hands it over.
async fn forward(
    on: &OnMoto,
    origin: &str,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("{origin}{path}").parse().unwrap();
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        lambda_http::Body::Binary(bytes.to_vec())
    };
    let resp = lambda::handle(&on.container, http::Request::from_parts(parts, body)).await;
    let (parts, body) = resp.into_parts();
    let bytes = match body {
        lambda_http::Body::Text(t) => t.into_bytes(),
        lambda_http::Body::Binary(b) => b,
        _ => Vec::new(),
    };
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
    let mut req = Client::new()
        .request(method, url)
        .header("accept", "application/fhir+json");
    if let Some(body) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A patient, as text: the decimal's trailing zero is the client's.
fn patient(id: &str, family: &str) -> Value {
    let text = format!(
        r#"{{"resourceType": "Patient", "id": "{id}", "name": [{{"family": "{family}"}}], "weight": 70.50}}"#
    );
    serde_json::from_str(&text).unwrap()
}

fn sync(base: &str, mirror: &std::path::Path, release: Option<&str>, schedule: &str) -> Sync {
    Sync {
        session: Session::open(Client::new()),
        base: base.to_string(),
        mirror: mirror.to_path_buf(),
        release: release.map(str::to_string),
        schedule: Some(schedule.to_string()),
        types: Vec::new(),
        views: Vec::new(),
        options: FetchOptions {
            parallel: 3,
            tries: 3,
            pause: Duration::from_millis(50),
        },
        timeout: Duration::from_secs(120),
        progress: Arc::new(Quiet),
    }
}

/// Runs the schedule now and waits for its run to complete.
async fn run_now(base: &str, schedule: &str) {
    let http = Client::new();
    let resp = http
        .post(format!("{base}/$export-schedules/{schedule}/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..1200 {
        if http.get(&status).send().await.unwrap().status() == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run did not complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_syncs_a_mirror_and_fetches_presigned_links_from_the_functions() {
    let base = functions_over_http().await;
    for i in 0..6 {
        let id = format!("p{i}");
        send(
            reqwest::Method::PUT,
            &format!("{base}/Patient/{id}"),
            Some(patient(&id, "First")),
        )
        .await;
    }
    send(
        reqwest::Method::POST,
        &format!("{base}/$export-releases"),
        Some(json!({"name": "v1", "export": "$export"})),
    )
    .await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let schedule = send(
        reqwest::Method::POST,
        &format!("{base}/$export-schedules"),
        Some(
            json!({"name": "subscriber", "cadence": "rate(1 day)", "export": "$export",
                    "mode": "incremental", "startFromRelease": "v1", "startAt": tomorrow}),
        ),
    )
    .await;
    let id = schedule["id"].as_str().unwrap().to_string();

    // The first sync: the release.
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.db");
    let first = sync(&base, &mirror, Some("v1"), &id).run().await.unwrap();
    assert_eq!(first.resources, 6, "{first:?}");

    // Two runs, each with an update, a creation and a deletion.
    for (round, gone) in [(1, "p0"), (2, "p1")] {
        let family = format!("Round{round}");
        send(
            reqwest::Method::PUT,
            &format!("{base}/Patient/p5"),
            Some(patient("p5", &family)),
        )
        .await;
        let new = format!("n{round}");
        send(
            reqwest::Method::PUT,
            &format!("{base}/Patient/{new}"),
            Some(patient(&new, &family)),
        )
        .await;
        send(
            reqwest::Method::DELETE,
            &format!("{base}/Patient/{gone}"),
            None,
        )
        .await;
        run_now(&base, &id).await;
    }
    let synced = sync(&base, &mirror, None, &id).run().await.unwrap();
    let steps: Vec<_> = synced
        .steps
        .iter()
        .map(|(n, a)| (n.as_str(), a.deleted))
        .collect();
    assert_eq!(steps, [("run-1", 1), ("run-2", 1)]);
    let m = Mirror::open(&mirror).unwrap();
    assert_eq!(m.count().unwrap(), 6);
    for gone in ["p0", "p1"] {
        assert_eq!(m.get("Patient", gone).unwrap(), None);
    }
    let p5: Value = serde_json::from_str(&m.get("Patient", "p5").unwrap().unwrap()).unwrap();
    assert_eq!(p5["name"][0]["family"], "Round2");
    let n1 = m.get("Patient", "n1").unwrap().unwrap();
    assert!(n1.contains("70.50"), "kept as exported: {n1}");
    drop(m);
    let differences = sync(&base, &mirror, None, &id).check().await.unwrap();
    assert!(differences.is_empty(), "{differences:?}");

    // The latest run's presigned links: fetched with no credentials.
    let links = send(
        reqwest::Method::POST,
        &format!("{base}/$export-schedules/{id}/runs/latest/links?expiresIn=600"),
        None,
    )
    .await;
    let manifest_url = links["manifest"].as_str().unwrap();
    assert!(
        !manifest_url.starts_with(&base),
        "an S3 link: {manifest_url}"
    );
    let out = tempfile::tempdir().unwrap();
    let session = Session::open(Client::new());
    let options = FetchOptions::default();
    let done = fetch(
        &session,
        manifest_url,
        out.path(),
        &options,
        Arc::new(Quiet),
    )
    .await
    .unwrap();
    assert!(done.downloaded.len() >= 2, "{done:?}");
    let local: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    for entry in local["output"]
        .as_array()
        .unwrap()
        .iter()
        .chain(local["deleted"].as_array().unwrap())
    {
        assert_eq!(
            entry["extension"]["sha256"].as_str().map(str::len),
            Some(64),
            "{entry}"
        );
    }
}
