//! Status polling under many concurrent pollers, on the local service.
//!
//! `cargo bench -p bulk-export-local --bench status_poll -- --pollers 100 --polls 100`
//! (`--interval-ms N`: each poller waits N ms between its polls, as a client
//! honouring `Retry-After` would; 0, the default, polls as fast as it can)
//!
//! Starts the real service (HTTP on a free 127.0.0.1 port, embedded
//! storage, sample data), runs one export to completion, and copies its job
//! as a second, still-running one. Then `--pollers` tasks poll each status
//! URL `--polls` times as fast as they can, and the latency of every poll
//! is reported: p50, p99, max, and polls per second, for the running job
//! (`202`: the job and its parts are read) and the completed one (`200`:
//! the manifest is built).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulk_export::domain::job::JobState;
use bulk_export_local::{start, LocalConfig, Overrides};

mod common;
use common::arg;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(
        arg("--pollers", 100),
        arg("--polls", 100),
        Duration::from_millis(arg("--interval-ms", 0) as u64),
    ));
}

async fn run(pollers: usize, polls: usize, interval: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.sample_patients = 50;
    // The read path is what is measured: a running job's status answers at
    // once instead of being held until it completes.
    config.engine.status_wait = Duration::ZERO;
    let running = start(config, Overrides::default()).await.unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(pollers)
        .build()
        .unwrap();
    let kickoff = client
        .get(format!("{}/$export", running.base_url))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kickoff.status(), 202);
    let done_url = kickoff.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    while client.get(&done_url).send().await.unwrap().status() != 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A running twin: the same job and parts, not finished, with no work
    // queued, so it answers 202 for as long as the bench polls.
    let jobs = &running.services.ports.jobs;
    let done_id = done_url.rsplit('/').next().unwrap();
    let mut job = jobs.get_job(done_id).await.unwrap().unwrap();
    let mut parts = jobs.list_parts(done_id).await.unwrap();
    job.id = uuid_like();
    job.state = JobState::Running;
    job.files.clear();
    job.completed_at = None;
    job.expires_at = None;
    job.parts_remaining = parts.len() as u32;
    jobs.create_job(&job).await.unwrap();
    for p in &mut parts {
        p.job_id = job.id.clone();
        p.done = false;
    }
    jobs.put_parts(&parts).await.unwrap();
    let running_url = done_url.replace(done_id, &job.id);

    println!(
        "status polling: {pollers} concurrent pollers x {polls} polls, {:?} apart, {} parts",
        interval,
        parts.len()
    );
    for (label, url, want) in [
        ("running (202)", running_url, 202),
        ("completed (200, manifest)", done_url, 200),
    ] {
        let url = Arc::new(url);
        let started = Instant::now();
        let tasks: Vec<_> = (0..pollers)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    // Spread the pollers over one interval, as independent
                    // clients would be.
                    tokio::time::sleep(interval * i as u32 / pollers as u32).await;
                    let mut latencies = Vec::with_capacity(polls);
                    for _ in 0..polls {
                        if !interval.is_zero() {
                            tokio::time::sleep(interval).await;
                        }
                        let t = Instant::now();
                        let resp = client.get(url.as_str()).send().await.unwrap();
                        let status = resp.status().as_u16();
                        let _ = resp.bytes().await.unwrap();
                        latencies.push(t.elapsed());
                        assert_eq!(status, want);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let took = started.elapsed();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "  {label:<26} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  {:>7.0} polls/s",
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            all.last().unwrap().as_secs_f64() * 1e3,
            all.len() as f64 / took.as_secs_f64()
        );
    }
    running.shutdown().await;
}

fn uuid_like() -> String {
    let n: u128 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
