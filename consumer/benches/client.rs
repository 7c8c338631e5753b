//! The client against the local service: download, sync apply, a delta.
//!
//! `cargo bench -p bulk-export-client --bench client -- --resources 1000000`
//! (`--dir PATH` keeps the service's store there and reuses it; `--runs N`,
//! default 3; `--parallel N` files at once, default 4.)
//!
//! 1. **Download.** A system export's files fetched by the client binary
//!    (`fetch STATUS_URL`, a separate process: its wall time and peak RSS),
//!    against the floor: the same files fetched by plain HTTP GETs, the
//!    same number at once, written to disk with no check at all. The two
//!    alternate `--runs` times after one untimed run of each.
//! 2. **Sync apply.** The downloaded files applied to an empty mirror as
//!    one step, `--runs` times: resources/s.
//! 3. **A delta.** 1% of the resources changed on the server (nine in ten
//!    of them updated, one deleted), then the step `sync` takes for it: a
//!    `_since` export from the mirror's cursor, downloaded, then applied;
//!    each part timed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulk_export::domain::resource::WriteOp;
use bulk_export::domain::resource_text::ResourceText;
use bulk_export::sample::SampleConfig;
use bulk_export_client::mirror::{Mirror, Step};
use bulk_export_client::progress::Quiet;
use bulk_export_client::{Export, ExportRequest, FetchOptions, Manifest, Session};
use bulk_export_local::{start, LocalConfig, Overrides, Running};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const CLIENT: &str = env!("CARGO_BIN_EXE_bulk-export-client");

fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str, default: usize) -> usize {
    arg_text(name)
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n = arg("--resources", 100_000);
    let runs = arg("--runs", 3);
    let parallel = arg("--parallel", 4);
    let temp = tempfile::tempdir().unwrap();
    let dir = arg_text("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    let service_dir = dir.join("service");
    for stale in ["files", "jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let _ = std::fs::remove_dir_all(service_dir.join(stale));
        let _ = std::fs::remove_file(service_dir.join(stale));
    }
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), service_dir);
    config.sample_patients = SampleConfig::for_resources(n, 42).patients;
    config.engine.reuse_window = Duration::ZERO;
    let t = Instant::now();
    let running = start(config, Overrides::default()).await.unwrap();
    println!(
        "service ready (store loaded or reused) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (status, manifest) = export(&running, "").await;
    let total: u64 = manifest.items.iter().filter_map(|i| i.count).sum();
    let files = manifest.items.len();
    println!("export: {total} resources in {files} files");

    // 1. Download, alternating with the floor.
    let out = dir.join("download");
    let (mut client_walls, mut floor_walls, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let _ = std::fs::remove_dir_all(&out);
        let (wall, peak_kb) = client_fetch(&status, &out, parallel);
        let _ = std::fs::remove_dir_all(dir.join("floor"));
        let floor = floor_fetch(&manifest, &dir.join("floor"), parallel).await;
        if run > 0 {
            client_walls.push(wall);
            floor_walls.push(floor);
            peaks.push(peak_kb);
        }
    }
    let (client, floor) = (median(&mut client_walls), median(&mut floor_walls));
    let bytes = dir_bytes(&out);
    println!(
        "download: client {:.2} s (median of {runs}), floor {:.2} s: {:.2}x; {:.0} MB at {:.0} MB/s; client peak RSS {} MB (max)",
        client,
        floor,
        client / floor,
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / client,
        peaks.iter().max().unwrap() / 1024
    );

    // 2. Sync apply into an empty mirror, `--runs` times. The downloads'
    // dirty pages are written out first, so the kernel's writeback of
    // them does not land on the apply.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mirror_path = dir.join("mirror.db");
    let mut applies = Vec::new();
    let mut applied = None;
    for _ in 0..runs {
        for f in ["mirror.db", "mirror.db-journal"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let mut mirror = Mirror::open(&mirror_path).unwrap();
        mirror.set_state("base", &running.base_url).unwrap();
        let step = Step {
            name: "full",
            dir: &out,
            manifest: &manifest,
        };
        let t = Instant::now();
        applied = Some(mirror.apply(&step).unwrap());
        applies.push(t.elapsed().as_secs_f64());
    }
    let upserted = applied.unwrap().upserted;
    let apply = median(&mut applies);
    println!(
        "sync apply: {upserted} resources in {apply:.2} s (median of {runs}; best {:.2} s) = {:.0} resources/s (mirror {} MB)",
        applies[0],
        upserted as f64 / apply,
        std::fs::metadata(&mirror_path).map(|m| m.len()).unwrap_or(0) >> 20
    );

    // 3. A 1% delta: a `_since` export from the mirror's cursor, downloaded
    // and applied as `sync` does, each part timed.
    let mut mirror = Mirror::open(&mirror_path).unwrap();
    let (updated, deleted) = change_one_percent(&running, &mirror).await;
    let cursor = mirror.cursor().unwrap();
    let delta_dir = dir.join("delta");
    let _ = std::fs::remove_dir_all(&delta_dir);
    let delta = Export {
        session: Session::open(Session::http_client()),
        base: running.base_url.clone(),
        request: ExportRequest {
            since: cursor,
            ..Default::default()
        },
        dir: delta_dir.clone(),
        options: FetchOptions {
            parallel,
            ..Default::default()
        },
        timeout: Duration::from_secs(600),
        progress: Arc::new(Quiet),
    };
    let t = Instant::now();
    let (status, _) = delta.start().await.unwrap();
    let done = delta.complete(&status, false).await.unwrap();
    let fetched = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let step = Step {
        name: "delta",
        dir: &delta_dir,
        manifest: &done.manifest,
    };
    let applied = mirror.apply(&step).unwrap();
    let apply = t.elapsed().as_secs_f64();
    println!(
        "delta: {updated} updated and {deleted} deleted on the server; export and download {fetched:.2} s, apply {apply:.2} s ({} upserted, {} deleted): {:.2} s in all",
        applied.upserted,
        applied.deleted,
        fetched + apply
    );
    running.shutdown().await;
}

/// A completed system export: its status URL and manifest.
async fn export(running: &Running, query: &str) -> (String, Manifest) {
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/$export{query}", running.base_url))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    loop {
        let resp = http.get(&status).send().await.unwrap();
        if resp.status() == 200 {
            let json: Value = resp.json().await.unwrap();
            return (status, Manifest::parse(json).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `bulk-export-client fetch`; its wall seconds and peak RSS (kB).
// wait4 reaps the child (and gives its own peak RSS), not Child::wait.
#[allow(clippy::zombie_processes)]
fn client_fetch(status: &str, out: &Path, parallel: usize) -> (f64, u64) {
    let t = Instant::now();
    let child = std::process::Command::new(CLIENT)
        .args([
            "fetch",
            status,
            "--json",
            "--parallel",
            &parallel.to_string(),
            "--out",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut code, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // The child's own peak: wait4's ru_maxrss would count this process's
    // memory, which the child shares until it execs.
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0;
    loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let hwm = text.lines().find(|l| l.starts_with("VmHWM:"));
        match hwm.and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()) {
            Some(kb) => peak_kb = peak_kb.max(kb),
            None => break, // exited: no memory left to report
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: waits for our own child, writing only the two values given.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut code, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert_eq!(code, 0, "the client failed");
    (t.elapsed().as_secs_f64(), peak_kb)
}

/// The floor: every file fetched by a plain GET (no gzip, no checks),
/// `parallel` at once, written to `out`.
async fn floor_fetch(manifest: &Manifest, out: &Path, parallel: usize) -> f64 {
    std::fs::create_dir_all(out).unwrap();
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for item in manifest.items.clone() {
        let (http, gate, path) = (http.clone(), gate.clone(), out.join(&item.name));
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let mut resp = http.get(&item.url).send().await.unwrap();
            let file = tokio::fs::File::create(&path).await.unwrap();
            let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
            while let Some(chunk) = resp.chunk().await.unwrap() {
                file.write_all(&chunk).await.unwrap();
            }
            file.flush().await.unwrap();
        });
    }
    while tasks.join_next().await.is_some() {}
    t.elapsed().as_secs_f64()
}

/// Updates nine in a thousand resources and deletes one in a thousand.
async fn change_one_percent(running: &Running, mirror: &Mirror) -> (usize, usize) {
    let rows = mirror.sample_rows(100).unwrap();
    let mut ops = Vec::new();
    let (mut updated, mut deleted) = (0, 0);
    for (i, (resource_type, id, json)) in rows.into_iter().enumerate() {
        if i % 10 == 9 {
            deleted += 1;
            ops.push(WriteOp::Delete { resource_type, id });
        } else {
            let mut value: Value = serde_json::from_str(&json).unwrap();
            value["language"] = Value::String("en-GB".into());
            updated += 1;
            ops.push(WriteOp::Upsert {
                resource_type,
                id,
                resource: ResourceText::from(value),
            });
        }
    }
    while !ops.is_empty() {
        let batch: Vec<WriteOp> = ops.drain(..ops.len().min(5000)).collect();
        running.services.resources.load(batch).await.unwrap();
    }
    (updated, deleted)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
