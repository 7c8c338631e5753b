//! `fetch` against the local service: a real export's files, checked;
//! run again, kept; damaged locally, fetched again; damaged on the server,
//! refused without a file left under its name.

use std::time::Duration;

use bulk_export::domain::job::artifact_key;
use std::sync::Arc;

use bulk_export_client::progress::Quiet;
use bulk_export_client::{fetch, FetchError, FetchOptions, Session};
use bulk_export_local::{start, LocalConfig, Overrides, Running};
use reqwest::{Client, StatusCode};
use serde_json::Value;

async fn service(dir: &std::path::Path) -> Running {
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.sample_patients = 4;
    config.engine.max_resources_per_file = 40;
    config.engine.reuse_window = Duration::ZERO;
    start(config, Overrides::default())
        .await
        .expect("service starts")
}

/// Kicks off an export of `types` and waits for its status URL to answer 200.
async fn completed_export(running: &Running, types: &str) -> String {
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/$export?_type={types}", running.base_url))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..600 {
        if http.get(&status).send().await.unwrap().status() == StatusCode::OK {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the export did not complete");
}

fn quick() -> FetchOptions {
    FetchOptions {
        parallel: 3,
        tries: 2,
        pause: Duration::from_millis(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_downloads_checks_keeps_and_refuses() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path()).await;
    let status = completed_export(&running, "Patient,Observation").await;
    let out = tempfile::tempdir().unwrap();
    let http = Session::open(Client::new());

    // Every file of the manifest, each with the lines and digest it names.
    let first = fetch(&http, &status, out.path(), &quick(), Arc::new(Quiet))
        .await
        .unwrap();
    let copy: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let outputs = copy["output"].as_array().unwrap();
    assert!(outputs.len() > 2, "{copy}");
    assert_eq!(first.downloaded.len(), outputs.len());
    assert!(first.kept.is_empty());
    let mut resources = 0;
    for entry in outputs {
        let name = entry["url"].as_str().unwrap();
        let text = std::fs::read_to_string(out.path().join(name)).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            entry["count"].as_u64().unwrap()
        );
        resources += text.lines().count();
    }
    assert!(resources > 4, "{resources} resources");

    // Run again: everything is kept, nothing downloaded.
    let again = fetch(&http, &status, out.path(), &quick(), Arc::new(Quiet))
        .await
        .unwrap();
    assert!(again.downloaded.is_empty());
    assert_eq!(again.kept.len(), outputs.len());

    // A file damaged locally is fetched again, and only that one.
    let damaged = outputs[0]["url"].as_str().unwrap().to_string();
    std::fs::write(out.path().join(&damaged), b"{}\n").unwrap();
    let repaired = fetch(&http, &status, out.path(), &quick(), Arc::new(Quiet))
        .await
        .unwrap();
    assert_eq!(repaired.downloaded, vec![damaged.clone()]);

    // A file damaged on the server: refused, naming the file, and no file
    // is left under its name (nor a partial one).
    let job = status.rsplit('/').next().unwrap().to_string();
    let victim = outputs[1]["url"].as_str().unwrap().to_string();
    let artifacts = &running.services.ports.artifacts;
    // Both the file and its gzip twin, which the client asks for.
    let key = artifact_key(&job, &victim);
    for key in [key.clone(), format!("{key}.gz")] {
        let mut bytes = artifacts.get(&key).await.unwrap().to_vec();
        bytes[20] ^= 1;
        artifacts.put(&key, bytes.into()).await.unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    let err = fetch(&http, &status, fresh.path(), &quick(), Arc::new(Quiet))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&victim), "{err}");
    assert!(
        matches!(
            err,
            FetchError::Status { status: 500, .. } | FetchError::Mismatch { .. }
        ),
        "{err:?}"
    );
    let left: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.contains(&victim), "{left:?}");
    assert!(!left.iter().any(|n| n.ends_with(".part")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_export_is_an_error_with_its_status() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path()).await;
    let missing = format!("{}/$export-jobs/nope", running.base_url);
    let out = tempfile::tempdir().unwrap();
    let err = fetch(
        &Session::open(Client::new()),
        &missing,
        out.path(),
        &quick(),
        Arc::new(Quiet),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err:?}"
    );
}
