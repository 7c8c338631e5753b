//! How long a client waits for a small export, against the engine's own
//! time for the same export, measured in the same run.
//!
//! `cargo bench -p bulk-export-local --bench client_seen -- --runs 5`
//!
//! Starts the real service (HTTP on a free 127.0.0.1 port, embedded
//! storage) loaded with the vendored Synthea sample (38,473 resources;
//! `--resources N` loads N synthetic ones instead), twice: with
//! `status_wait` 0 and with its default. Each run, alternately:
//! - the engine's own export: a system-level kick-off straight to the
//!   engine (no HTTP, no status requests), timed to its completion event;
//! - the client's: a kick-off over HTTP, a status request at once and then
//!   after every `Retry-After`, timed to the manifest.
//!
//! Reported: the medians and bests, their ratio, and the timeline of the
//! median client run from the engine's own events (accepted, planned, the
//! parts, completed) against the client's clock.

use std::io::BufReader;
use std::time::{Duration, Instant};

use bulk_export::engine::EngineConfig;
use bulk_export::loader::load_ndjson;
use bulk_export::sample::SampleConfig;
use bulk_export_local::{start, LocalConfig, Overrides};

mod common;
use common::{arg, arg_text, synthea_files};
#[path = "common/timeline.rs"]
mod timeline;
use timeline::Timeline;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timeline = Timeline::install();
    let runs = arg("--runs", 5).max(1);
    let default_wait = EngineConfig::new("http://x").status_wait;
    for wait in [Duration::ZERO, default_wait] {
        rt.block_on(measure(&timeline, runs, wait));
    }
}

async fn measure(timeline: &Timeline, runs: usize, wait: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let synthetic = arg_text("--resources").map(|_| arg("--resources", 38_473));
    config.sample_patients = synthetic.map_or(0, |n| SampleConfig::for_resources(n, 1).patients);
    config.engine.status_wait = wait;
    if let Some(gzip) = arg_text("--gzip-files") {
        config.engine.gzip_files = gzip.parse().expect("--gzip-files true|false");
    }
    let running = start(config, Overrides::default()).await.unwrap();
    if synthetic.is_none() {
        for (_, text) in synthea_files() {
            load_ndjson(&running.services, BufReader::new(text.as_bytes()))
                .await
                .unwrap();
        }
    }
    let client = reqwest::Client::new();
    let (mut seen, mut engine) = (Vec::new(), Vec::new());
    let mut exported = 0;
    for _ in 0..runs {
        engine.push(
            timeline
                .engine_export(&running.services, "http://127.0.0.1:1/fhir/$export")
                .await,
        );
        let (secs, count, line, id) = client_export(&client, &running.base_url, timeline).await;
        exported = count;
        seen.push((secs, line, id));
    }
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    engine.sort_by(|a, b| a.total_cmp(b));
    let (seen_median, engine_median) = (seen[seen.len() / 2].0, engine[engine.len() / 2]);
    println!(
        "SUMMARY status wait {:>4} ms: {exported} resources, client-seen median {seen_median:.3} s \
         (best {:.3} s), engine median {engine_median:.3} s (best {:.3} s), {:.2}x, {runs} runs",
        wait.as_millis(),
        seen[0].0,
        engine[0],
        seen_median / engine_median,
    );
    println!("  median client run: {}", seen[seen.len() / 2].1);
    if arg_text("--marks").is_some() {
        let t0 = timeline.first_of(&seen[seen.len() / 2].2);
        for m in timeline.of(&seen[seen.len() / 2].2) {
            println!("    {:>7.1} ms {}", (m.at - t0).as_secs_f64() * 1e3, m.what);
        }
    }
}

/// A client's export over HTTP: seconds to the manifest, the resources it
/// lists, and the job's timeline.
async fn client_export(
    client: &reqwest::Client,
    base_url: &str,
    timeline: &Timeline,
) -> (f64, u64, String, String) {
    let t = Instant::now();
    let kickoff = client
        .get(format!("{base_url}/$export"))
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
    let end = Instant::now();
    let exported = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["count"].as_u64().unwrap())
        .sum::<u64>();
    let id = status_url.rsplit('/').next().unwrap();
    let line = timeline.line(id, t, end);
    (
        end.duration_since(t).as_secs_f64(),
        exported,
        line,
        id.to_string(),
    )
}
