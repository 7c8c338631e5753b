//! What the benches share: their command-line arguments, and the process's
//! CPU time and memory (each bench uses some of them).

/// The text after `name` on the command line.
#[allow(dead_code)]
pub fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The number after `name` (`1_000_000` allowed), or `default`.
#[allow(dead_code)]
pub fn arg(name: &str, default: usize) -> usize {
    arg_text(name)
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/self/status, in kB (VmRSS, VmHWM).
#[allow(dead_code)]
pub fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far, to the
/// microsecond (`/proc/self/stat` counts 10 ms ticks: a tenth of a 100k
/// export's floor).
#[allow(dead_code)]
pub fn cpu_secs() -> f64 {
    let (user, sys) = cpu_user_sys();
    user + sys
}

/// The process's user and system CPU seconds so far: the kernel's share
/// (mostly copying into the page cache) is what varies most between runs.
#[allow(dead_code)]
pub fn cpu_user_sys() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// The process's minor page faults so far: memory the allocator gave back
/// to the kernel and took again costs one each (and the kernel zeroes it).
#[allow(dead_code)]
pub fn minor_faults() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_minflt as u64
}

/// Resets the peak RSS (VmHWM) to the current RSS.
#[allow(dead_code)]
pub fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A bench's embedded stack: the store in `--dir` (kept between runs, so a
/// loaded store is reused) or a temporary directory, with its jobs, queue
/// and files cleared.
#[allow(dead_code)]
pub struct Stack {
    pub dir: std::path::PathBuf,
    pub store: std::sync::Arc<bulk_export::embedded::SqliteResourceStore>,
    pub queue: bulk_export::embedded::SqliteQueue,
    pub files: std::path::PathBuf,
    pub engine: bulk_export::engine::Services,
    _temp: tempfile::TempDir,
}

#[allow(dead_code)]
pub fn open_stack() -> Stack {
    use std::sync::Arc;

    use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteResourceStore};
    use bulk_export::engine::{EngineConfig, Ports, Services};
    use bulk_export::ports::Clock;

    let temp = tempfile::tempdir().unwrap();
    let dir = arg_text("--dir")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("files"));
    for f in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let clock: Arc<dyn Clock> = Arc::new(bulk_export::clock::SystemClock);
    let store =
        Arc::new(SqliteResourceStore::open(&dir.join("resources.db"), clock.clone()).unwrap());
    let jobs = SqliteJobs::open(&dir.join("jobs.db")).unwrap();
    let queue = jobs.queue();
    let files = dir.join("files");
    let ports = Ports {
        resources: store.clone(),
        clients: Arc::new(jobs.clone()),
        schedules: Arc::new(jobs.clone()),
        events: Arc::new(bulk_export::ports::NoEvents),
        jobs: Arc::new(jobs),
        artifacts: Arc::new(
            FsArtifacts::open(&files, "http://127.0.0.1:1", clock.clone()).unwrap(),
        ),
        queue: Arc::new(queue.clone()),
        clock,
    };
    let mut config = EngineConfig::new("http://127.0.0.1:1/fhir");
    if let Some(gzip) = arg_text("--gzip-files") {
        config.gzip_files = gzip.parse().expect("--gzip-files true|false");
    }
    Stack {
        engine: Services::new(ports, config),
        dir,
        store,
        queue,
        files,
        _temp: temp,
    }
}

/// Polls the job until it completes (a failed job fails the bench).
#[allow(dead_code)]
pub async fn wait_completed(
    engine: &bulk_export::engine::Services,
    job_id: &str,
) -> bulk_export::domain::job::Job {
    use bulk_export::domain::job::JobState;
    loop {
        let job = engine.ports.jobs.get_job(job_id).await.unwrap().unwrap();
        if job.state == JobState::Completed {
            return job;
        }
        assert_ne!(job.state, JobState::Failed, "{:?}", job.error);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The vendored Synthea sample's NDJSON files (`tests/data/synthea-r4-100`,
/// 38,473 resources): each file's path and text, in name order.
#[allow(dead_code)]
pub fn synthea_files() -> Vec<(std::path::PathBuf, String)> {
    use std::io::Read;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/synthea-r4-100");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            (path, text)
        })
        .collect()
}

/// The three views the `fhirpath` and `view_run` benches run over Synthea:
/// patients, observations with a `forEach` over codings, conditions.
#[allow(dead_code)]
pub fn synthea_views() -> [serde_json::Value; 3] {
    use serde_json::json;
    [
        json!({"resourceType": "ViewDefinition", "name": "patients", "status": "active",
            "resource": "Patient", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "gender", "path": "gender"},
            {"name": "birth_date", "path": "birthDate"},
            {"name": "family", "path": "name.where(use = 'official').family.first()"}]}]}),
        json!({"resourceType": "ViewDefinition", "name": "observations", "status": "active",
            "resource": "Observation", "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "effective", "path": "effective.ofType(dateTime)"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "unit", "path": "value.ofType(Quantity).unit"}]},
            {"forEach": "code.coding", "column": [
                {"name": "system", "path": "system"},
                {"name": "code", "path": "code"}]}]}),
        json!({"resourceType": "ViewDefinition", "name": "conditions", "status": "active",
            "resource": "Condition", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "onset", "path": "onset.ofType(dateTime)"}]}]}),
    ]
}
