//! How long a client waits for a small export: kick-off to manifest, as a
//! client sees it over HTTP, with the status request held open (the
//! default) and without.
//!
//! `cargo bench -p bulk-export-local --bench client_seen -- --resources 38473 --runs 5`
//!
//! Starts the real service (HTTP on a free 127.0.0.1 port, embedded
//! storage, synthetic sample data of about `--resources` resources) twice:
//! with `status_wait` 0 and with its default. Each run kicks off a
//! system-level export, polls at once and then after every `Retry-After`,
//! and stops at the manifest. Reported: the median and the best of the
//! client-seen times, and the time the export itself took (job created to
//! job completed) for comparison.

use std::time::{Duration, Instant};

use bulk_export::engine::EngineConfig;
use bulk_export::sample::SampleConfig;
use bulk_export_local::{start, LocalConfig, Overrides};

mod common;
use common::arg;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (resources, runs) = (arg("--resources", 38_473), arg("--runs", 5).max(1));
    let default_wait = EngineConfig::new("http://x").status_wait;
    for wait in [Duration::ZERO, default_wait] {
        rt.block_on(measure(resources, runs, wait));
    }
}

async fn measure(resources: usize, runs: usize, wait: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.sample_patients = SampleConfig::for_resources(resources, 1).patients;
    config.engine.status_wait = wait;
    let running = start(config, Overrides::default()).await.unwrap();
    let client = reqwest::Client::new();
    let (mut seen, mut work) = (Vec::new(), Vec::new());
    let mut exported = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let kickoff = client
            .get(format!("{}/$export", running.base_url))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            // Every run a new export, not the last one reused.
            .header("cache-control", "no-cache")
            .send()
            .await
            .unwrap();
        assert_eq!(kickoff.status(), 202);
        let status_url = kickoff.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let manifest: serde_json::Value = loop {
            let resp = client.get(&status_url).send().await.unwrap();
            if resp.status() == 200 {
                break resp.json().await.unwrap();
            }
            assert_eq!(resp.status(), 202);
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            tokio::time::sleep(Duration::from_secs(retry)).await;
        };
        seen.push(t.elapsed().as_secs_f64());
        exported = manifest["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["count"].as_u64().unwrap())
            .sum::<u64>();
        let id = status_url.rsplit('/').next().unwrap();
        let job = running
            .services
            .ports
            .jobs
            .get_job(id)
            .await
            .unwrap()
            .unwrap();
        work.push((job.completed_at.unwrap() - job.created_at).num_milliseconds() as f64 / 1e3);
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[0])
    };
    let ((seen_median, seen_best), (work_median, _)) = (stats(seen), stats(work));
    println!(
        "SUMMARY status wait {:>4} ms: {exported} resources, client-seen median {seen_median:.3} s \
         (best {seen_best:.3} s), export itself median {work_median:.3} s, {runs} runs",
        wait.as_millis()
    );
}
