//! End-to-end export benchmark on the embedded default, with its floor.
//!
//! `cargo bench -p bulk-export-local --bench export -- --resources 1000000`
//! (`--dir PATH` keeps the loaded store there and reuses it on the next run;
//! `--workers N` sets the worker count, default 4 like the local server:
//! parts wait on reads and writes, so more workers than cores keep both busy;
//! `--chunk-kib N` sets the chunk size, 1024 by default as in the service;
//! `--page-size N` the resources read per page, 1000 by default.)
//!
//! 1. Loads N synthetic resources into a fresh store (timed, for reference).
//! 2. Runs a system-level export through the real engine and worker loop:
//!    resources/s, bytes/s, and the process's peak RSS during the exports
//!    (the peak is reset after loading via /proc/self/clear_refs).
//! 3. The floor: the same rows read straight from SQLite and the same bytes
//!    written to a file, no engine around them. Ratio = export / floor.
//!
//! Steps 2 and 3 alternate `--runs` times (default 3), after one read of
//! the store and one export that are not timed (the first of each pays for
//! cold caches; the peak RSS includes that export); the summary gives the
//! best and the median of each. The export writes gzip twins as the
//! service does (`--gzip-files false` leaves them out); the floor does not.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulk_export::clock::SystemClock;
use bulk_export::domain::job::JobState;
use bulk_export::domain::request::{parse_export_request, ExportLevel, KickoffInput};
use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteQueue, SqliteResourceStore};
use bulk_export::engine::{Caller, EngineConfig, Ports, Services};
use bulk_export::ports::{Clock, EventPublisher, JobEvent, PortResult, WriteOp};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export_local::workers::work_loop;
use tokio::sync::watch;

mod common;
use common::{arg, arg_text, cpu_user_sys, minor_faults, reset_peak_rss, status_kb};

/// Bytes of the files under `path` whose names end in `.gz` (`gz`) or not.
fn dir_bytes(path: &std::path::Path, gz: bool) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p, gz)
            } else if p.extension().is_some_and(|x| x == "gz") == gz {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            } else {
                0
            };
        }
    }
    total
}

fn main() {
    bulk_export_local::bound_malloc_arenas();
    let resources = arg("--resources", 100_000);
    let workers = arg("--workers", 4);
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
    let ended = JobEnded::default();
    let store =
        Arc::new(SqliteResourceStore::open(&dir_path.join("resources.db"), clock.clone()).unwrap());
    let jobs = SqliteJobs::open(&dir_path.join("jobs.db")).unwrap();
    let queue = jobs.queue();
    let files = dir_path.join("files");
    let artifacts =
        Arc::new(FsArtifacts::open(&files, "http://127.0.0.1:1", clock.clone()).unwrap());
    let ports = Ports {
        resources: store.clone(),
        clients: Arc::new(jobs.clone()),
        schedules: Arc::new(jobs.clone()),
        events: Arc::new(ended.clone()),
        jobs: Arc::new(jobs),
        artifacts,
        queue: Arc::new(queue.clone()),
        clock,
    };
    let mut config = EngineConfig::new("http://127.0.0.1:1/fhir");
    if let Some(gzip) = arg_text("--gzip-files") {
        config.gzip_files = gzip.parse().expect("--gzip-files true|false");
    }
    if let Some(rows) = arg_text("--page-size") {
        config.page_size = rows.parse().expect("--page-size N");
    }
    if let Some(kib) = arg_text("--chunk-kib") {
        config.min_chunk_bytes = kib.parse::<usize>().expect("--chunk-kib N") << 10;
    }
    let engine = Services::new(ports, config);

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
            resource: v.into(),
        });
        if batch.len() == 5000 {
            loaded += batch.len();
            engine
                .resources
                .load(std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    loaded += batch.len();
    if !batch.is_empty() {
        engine.resources.load(batch).await.unwrap();
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

    // 2 and 3, alternating, `--runs` times: page-cache writeback makes single
    // runs noisy, so the best and the median of each are reported.
    let runs = arg("--runs", 3).max(1);
    let db = dir_path.join("resources.db");
    // The store read once, untimed: every run then starts from the page
    // cache, instead of the first one paying for the disk.
    if !std::env::args().any(|a| a == "--no-floor") {
        let warm = floor_once(&db, &dir_path.join("floor.ndjson")).await;
        println!("warm-up    the store read once ({:.2} s)", warm.secs);
    }
    reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    // One export not timed either (its peak RSS counts): the process's
    // first export grows the allocator's arenas and starts the blocking
    // pool's threads.
    let warm = export_once(&engine, &queue, &ended, workers, &files).await;
    println!(
        "warm-up    one export ({:.2} s, cpu {:.3} s)",
        warm.secs, warm.cpu
    );
    let (mut exports, mut floors) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let e = export_once(&engine, &queue, &ended, workers, &files).await;
        assert_eq!(e.resources as usize, loaded, "every resource exported once");
        println!(
            "export #{run}  {} resources, {:.1} MB (gzip twins {:.1} MB) in {:.2} s ({:.0} resources/s, {:.1} MB/s, {} files; planning {} ms; cpu {:.3} s, of it kernel {:.3} s; {} page faults)",
            e.resources,
            e.bytes as f64 / 1e6,
            e.gzip_bytes as f64 / 1e6,
            e.secs,
            e.resources as f64 / e.secs,
            e.bytes as f64 / 1e6 / e.secs,
            e.files,
            e.planning_ms,
            e.cpu,
            e.sys,
            e.faults
        );
        if std::env::args().any(|a| a == "--no-floor") {
            exports.push(e);
            continue;
        }
        let f = floor_once(&db, &dir_path.join("floor.ndjson")).await;
        assert_eq!(f.resources, e.resources);
        assert_eq!(f.bytes, e.bytes, "the floor writes the same bytes");
        println!(
            "floor  #{run}  {} rows, {:.1} MB in {:.2} s ({:.0} resources/s, {:.1} MB/s; cpu {:.3} s, of it kernel {:.3} s)",
            f.resources,
            f.bytes as f64 / 1e6,
            f.secs,
            f.resources as f64 / f.secs,
            f.bytes as f64 / 1e6 / f.secs,
            f.cpu,
            f.sys
        );
        exports.push(e);
        floors.push(f);
    }
    let peak_kb = status_kb("VmHWM:");
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let e_cpu = median(exports.iter().map(|e| e.cpu).collect());
    if !floors.is_empty() {
        let f_cpu = median(floors.iter().map(|f| f.cpu).collect());
        println!(
            "SUMMARY cpu per export, median: export {e_cpu:.3} s, floor {f_cpu:.3} s, ratio {:.2}x",
            e_cpu / f_cpu
        );
    }
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[0], v[v.len() / 2])
    };
    let n = exports[0].resources as f64;
    let (e_best, e_median) = stats(exports.iter().map(|e| e.secs).collect());
    println!(
        "SUMMARY export of {n} resources: best {e_best:.2} s = {:.0} resources/s, median {e_median:.2} s = {:.0} resources/s",
        n / e_best,
        n / e_median
    );
    println!(
        "SUMMARY peak RSS {:.1} MB during the exports (RSS before them: {:.1} MB)",
        peak_kb as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    if !floors.is_empty() {
        let (f_best, f_median) = stats(floors.iter().map(|f| f.secs).collect());
        println!(
            "SUMMARY floor: best {f_best:.2} s = {:.0} resources/s, median {f_median:.2} s",
            n / f_best
        );
        println!(
            "SUMMARY ratio export / floor: best/best {:.2}x, median/median {:.2}x",
            e_best / f_best,
            e_median / f_median
        );
    }
}

struct ExportRun {
    secs: f64,
    cpu: f64,
    /// The kernel's share of `cpu`.
    sys: f64,
    faults: u64,
    planning_ms: i64,
    resources: u64,
    bytes: u64,
    /// The gzip twins'.
    gzip_bytes: u64,
    files: usize,
}

/// One system-level export through the engine and the worker loop.
async fn export_once(
    engine: &Services,
    queue: &SqliteQueue,
    ended: &JobEnded,
    workers: usize,
    files: &std::path::Path,
) -> ExportRun {
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
    let (user, sys) = cpu_user_sys();
    let faults = minor_faults();
    let input = KickoffInput {
        level: ExportLevel::System,
        request_url: "http://127.0.0.1:1/fhir/$export".into(),
        params: vec![],
        lenient: false,
        via_post: false,
        now: chrono::Utc::now(),
    };
    let job_id = engine
        .exports
        .kickoff(&Caller::anonymous(), parse_export_request(input).unwrap())
        .await
        .unwrap();
    // The completion event says when it ended: polling the job store
    // meanwhile would add the bench's own reads to the export's CPU.
    let job = loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), ended.0.notified()).await;
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
    };
    let secs = t.elapsed().as_secs_f64();
    let (user_end, sys_end) = cpu_user_sys();
    let (cpu, sys) = (user_end - user + sys_end - sys, sys_end - sys);
    let faults = minor_faults() - faults;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let job_dir = files.join("objects").join("jobs").join(&job_id);
    let bytes = dir_bytes(&job_dir, false);
    let gzip_bytes = dir_bytes(&job_dir, true);
    let _ = std::fs::remove_dir_all(&job_dir);
    let planning_ms = job
        .started_at
        .map(|s| (s - job.created_at).num_milliseconds())
        .unwrap_or(-1);
    ExportRun {
        secs,
        cpu,
        sys,
        faults,
        planning_ms,
        resources: job.files.iter().map(|f| f.count).sum(),
        bytes,
        gzip_bytes,
        files: job.files.len(),
    }
}

/// Wakes the bench when a job's completion event is published.
#[derive(Clone, Default)]
struct JobEnded(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl EventPublisher for JobEnded {
    async fn publish(&self, _event: &JobEvent) -> PortResult<()> {
        self.0.notify_one();
        Ok(())
    }
}

struct FloorRun {
    secs: f64,
    cpu: f64,
    sys: f64,
    resources: u64,
    bytes: u64,
}

/// The same rows read straight from SQLite, the same bytes written to a file.
async fn floor_once(db: &std::path::Path, out: &std::path::Path) -> FloorRun {
    let (db, out) = (db.to_path_buf(), out.to_path_buf());
    let t = Instant::now();
    let (user, sys) = cpu_user_sys();
    let (resources, bytes) = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT body FROM versions WHERE superseded_at IS NULL AND deleted = 0
                 ORDER BY type, last_updated",
            )
            .unwrap();
        let mut w =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out).unwrap());
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
        drop(w);
        let _ = std::fs::remove_file(&out);
        (n, bytes)
    })
    .await
    .unwrap();
    let (user_end, sys_end) = cpu_user_sys();
    FloorRun {
        secs: t.elapsed().as_secs_f64(),
        cpu: user_end - user + sys_end - sys,
        sys: sys_end - sys,
        resources,
        bytes,
    }
}
