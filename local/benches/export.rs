//! End-to-end export benchmark on the embedded default, with its floor.
//!
//! `cargo bench -p bulk-export-local --bench export -- --resources 1000000`
//! (`--dir PATH` keeps the loaded store there and reuses it on the next run;
//! `--workers N` sets the worker count, default 2 = the cores here.)
//!
//! 1. Loads N synthetic resources into a fresh store (timed, for reference).
//! 2. Runs a system-level export through the real engine and worker loop:
//!    resources/s, bytes/s, and the process's peak RSS during the export
//!    (the peak is reset after loading via /proc/self/clear_refs).
//! 3. The floor: the same rows read straight from SQLite and the same bytes
//!    written to a file, no engine around them. Ratio = export / floor.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulk_export::clock::SystemClock;
use bulk_export::domain::job::JobState;
use bulk_export::domain::request::{ExportLevel, KickoffInput};
use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteResourceStore};
use bulk_export::engine::{Caller, Engine, EngineConfig, Ports};
use bulk_export::ports::{Clock, WriteOp};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export_local::workers::work_loop;
use tokio::sync::watch;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // utime, stime in clock ticks (USER_HZ = 100)
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

fn main() {
    let resources = arg("--resources", 100_000);
    let workers = arg("--workers", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(resources, workers));
}

async fn run(n: usize, workers: usize) {
    let temp = tempfile::tempdir().unwrap();
    let dir_path = arg_text("--dir")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir_path).unwrap();
    // Exports of earlier runs in a kept directory are not part of this one.
    let _ = std::fs::remove_dir_all(dir_path.join("files"));
    for f in ["jobs.db", "jobs.db-wal", "jobs.db-shm", "floor.ndjson"] {
        let _ = std::fs::remove_file(dir_path.join(f));
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store =
        Arc::new(SqliteResourceStore::open(&dir_path.join("resources.db"), clock.clone()).unwrap());
    let jobs = SqliteJobs::open(&dir_path.join("jobs.db")).unwrap();
    let queue = jobs.queue();
    let files = dir_path.join("files");
    let artifacts =
        Arc::new(FsArtifacts::open(&files, "http://127.0.0.1:1", clock.clone()).unwrap());
    let ports = Ports {
        resources: store.clone(),
        jobs: Arc::new(jobs),
        artifacts,
        queue: Arc::new(queue.clone()),
        clock,
    };
    let engine = Engine::new(ports, EngineConfig::new("http://127.0.0.1:1/fhir"));

    // 1. Load (unless a kept directory already holds the data).
    let t = Instant::now();
    let existing = store.version_count().await.unwrap() as usize;
    let mut batch = Vec::with_capacity(5000);
    let mut loaded = 0usize;
    let fresh = if existing == 0 {
        SampleConfig::for_resources(n, 7).patients
    } else {
        0
    };
    for v in generate(SampleConfig {
        patients: fresh,
        seed: 7,
    })
    .filter(|_| fresh > 0)
    {
        let resource_type = v["resourceType"].as_str().unwrap().to_string();
        let id = v["id"].as_str().unwrap().to_string();
        batch.push(WriteOp::Upsert {
            resource_type,
            id,
            resource: v,
        });
        if batch.len() == 5000 {
            loaded += batch.len();
            engine.load(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    loaded += batch.len();
    if !batch.is_empty() {
        engine.load(batch).await.unwrap();
    }
    if existing > 0 {
        loaded = existing;
        println!("reusing    {existing} resources in {}", dir_path.display());
    }
    let load_secs = t.elapsed().as_secs_f64();
    println!(
        "loaded     {loaded} resources in {load_secs:.1} s ({:.0} resources/s)",
        loaded as f64 / load_secs
    );

    // 2. Export through the engine and the worker loop.
    reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..workers {
        tasks.push(tokio::spawn(work_loop(
            i,
            engine.clone(),
            queue.clone(),
            Duration::from_secs(600),
            Duration::from_secs(900),
            stop_rx.clone(),
        )));
    }
    let t = Instant::now();
    let cpu = cpu_secs();
    let input = KickoffInput {
        level: ExportLevel::System,
        request_url: "http://127.0.0.1:1/fhir/$export".into(),
        params: vec![],
        lenient: false,
        via_post: false,
        now: chrono::Utc::now(),
    };
    let job_id = engine.kickoff(&Caller::anonymous(), input).await.unwrap();
    let job = loop {
        let job = engine.ports.jobs.get_job(&job_id).await.unwrap().unwrap();
        if job.state == JobState::Completed {
            break job;
        }
        assert_ne!(
            job.state,
            JobState::Failed,
            "export failed: {:?}",
            job.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let export_secs = t.elapsed().as_secs_f64();
    let export_cpu = cpu_secs() - cpu;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let peak_kb = status_kb("VmHWM:");
    let exported: u64 = job.files.iter().map(|f| f.count).sum();
    let bytes = dir_bytes(&files.join("objects"));
    assert_eq!(exported as usize, loaded, "every resource exported once");
    println!(
        "export     {exported} resources, {:.1} MB in {export_secs:.2} s: {:.0} resources/s, {:.1} MB/s, {} files",
        bytes as f64 / 1e6,
        exported as f64 / export_secs,
        bytes as f64 / 1e6 / export_secs,
        job.files.len()
    );
    let phase = |a: Option<chrono::DateTime<chrono::Utc>>,
                 b: Option<chrono::DateTime<chrono::Utc>>| {
        a.zip(b)
            .map(|(a, b)| (b - a).num_milliseconds())
            .unwrap_or(-1)
    };
    println!(
        "phases     queued->planned {} ms, planned->completed {} ms",
        phase(Some(job.created_at), job.started_at),
        phase(job.started_at, job.completed_at)
    );
    println!(
        "peak RSS   {:.1} MB during the export (RSS before it: {:.1} MB)",
        peak_kb as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );

    // 3. Floor: the same rows, the same bytes, no engine.
    if std::env::args().any(|a| a == "--no-floor") {
        return;
    }
    let db = dir_path.join("resources.db");
    let out = dir_path.join("floor.ndjson");
    let t = Instant::now();
    let cpu = cpu_secs();
    let (rows, floor_bytes) = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT body FROM versions WHERE superseded_at IS NULL AND deleted = 0
                 ORDER BY type, last_updated",
            )
            .unwrap();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out).unwrap());
        let mut rows = stmt.query([]).unwrap();
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(row) = rows.next().unwrap() {
            let body: &str = row.get_ref(0).unwrap().as_str().unwrap();
            w.write_all(body.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
            n += 1;
            bytes += body.len() as u64 + 1;
        }
        w.flush().unwrap();
        (n, bytes)
    })
    .await
    .unwrap();
    let floor_secs = t.elapsed().as_secs_f64();
    let floor_cpu = cpu_secs() - cpu;
    assert_eq!(rows, exported);
    assert_eq!(floor_bytes, bytes, "the floor writes the same bytes");
    println!(
        "floor      {rows} rows, {:.1} MB in {floor_secs:.2} s: {:.0} resources/s, {:.1} MB/s",
        floor_bytes as f64 / 1e6,
        rows as f64 / floor_secs,
        floor_bytes as f64 / 1e6 / floor_secs
    );
    println!("cpu        export {export_cpu:.2} s, floor {floor_cpu:.2} s (user + system)");
    println!(
        "ratio      export / floor = {:.2}x",
        export_secs / floor_secs
    );
}
