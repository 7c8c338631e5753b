//! `$viewdefinition-run` by patient over the Synthea sample: what a
//! patient-level call costs, read through the compartment index.
//!
//! `cargo bench -p bulk-export-local --bench view_run -- --patients 100`
//!
//! Loads the vendored Synthea sample (`tests/data/synthea-r4-100`, 38,473
//! resources) into the local service, then for each of three views
//! (patients, observations with a `forEach` over codings, conditions)
//! runs it once per patient over HTTP (`POST $viewdefinition-run` with the
//! view inline and `patient`), the first `--patients` patients, one run
//! at a time. One untimed run of each view first warms the caches.
//! Reported: the time of all runs of a view, and their rows.

use std::io::BufReader;
use std::time::Instant;

use bulk_export::loader::load_ndjson;
use bulk_export_local::{start, LocalConfig, Overrides};
use serde_json::{json, Value};

mod common;
use common::{arg, synthea_files, synthea_views};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(arg("--patients", 100)));
}

async fn run(wanted: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let running = start(config, Overrides::default()).await.unwrap();
    let t = Instant::now();
    let mut loaded = 0;
    let mut patients = Vec::new();
    for (path, text) in synthea_files() {
        if path.ends_with("Patient.ndjson.gz") {
            patients = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string())
                .map(|id| id.trim_matches('"').to_string())
                .collect();
        }
        loaded += load_ndjson(&running.services, BufReader::new(text.as_bytes()))
            .await
            .unwrap();
    }
    patients.truncate(wanted);
    println!(
        "loaded {loaded} resources in {:.1} s; {} patients",
        t.elapsed().as_secs_f64(),
        patients.len()
    );
    let http = reqwest::Client::new();
    let url = format!("{}/ViewDefinition/$viewdefinition-run", running.base_url);
    for view in synthea_views() {
        let name = view["resource"].as_str().unwrap().to_string();
        let run_for = |patient: &str| {
            let body = json!({"resourceType": "Parameters", "parameter": [
                {"name": "viewResource", "resource": view},
                {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}]});
            let request = http
                .post(&url)
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
            async move {
                let resp = request.send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.json::<Vec<Value>>().await.unwrap().len()
            }
        };
        run_for(&patients[0]).await;
        let t = Instant::now();
        let mut rows = 0;
        for p in &patients {
            rows += run_for(p).await;
        }
        let took = t.elapsed().as_secs_f64();
        println!(
            "{name} view: {} one-patient runs in {took:.3} s ({:.1} ms each), {rows} rows",
            patients.len(),
            took * 1000.0 / patients.len() as f64
        );
    }
    running.shutdown().await;
}
