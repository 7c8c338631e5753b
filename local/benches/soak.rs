//! A soak of the local service: the real binary under mixed load for a
//! bounded time, on loopback, stopping by itself.
//!
//! `cargo bench -p bulk-export-local --bench soak -- --seconds 600 --patients 3100`
//! (`--pollers 200 --exporters 20 --writers 2`; `--patients 3100` is about
//! 100,000 resources)
//!
//! Load, all at once:
//! - `--pollers` clients polling the status URLs of the exports under way;
//! - `--exporters` clients, each kicking off an export (all types, two
//!   types, or a `_since` delta), polling it to its manifest, downloading
//!   every file through its signed link and checking it is exact against
//!   the store as of its `transactionTime`, then deleting it; every fifth
//!   export is cancelled while it runs instead;
//! - `--writers` clients updating, creating and deleting resources through
//!   transaction Bundles (whose answers give every version's time);
//! - one request in ten, from every client, malformed (it must get a 4xx).
//!
//! The store is known exactly: the sample the server loads is regenerated
//! here, and every write's answer says its version and time.
//!
//! Reports requests by status, p50/p99 latency of status polls and
//! kick-offs, the server's RSS over time and its open file descriptors at
//! the start and the end (after the clients are gone). Fails (exit 1) on
//! any 5xx, any export that is not exact, an unexpected answer, or file
//! descriptors left open.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulk_export::loader::SAMPLE_SEED;
use bulk_export::sample::{generate, SampleConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Client;
use serde_json::{json, Value};

mod common;
use common::arg;

fn main() {
    let config = Config {
        seconds: arg("--seconds", 600) as u64,
        patients: arg("--patients", 3100),
        pollers: arg("--pollers", 200),
        exporters: arg("--exporters", 20),
        writers: arg("--writers", 2),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(config));
    std::process::exit(if ok { 0 } else { 1 });
}

#[derive(Clone, Copy)]
struct Config {
    seconds: u64,
    patients: usize,
    pollers: usize,
    exporters: usize,
    writers: usize,
}

/// The server process; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &std::path::Path, patients: usize) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-export-local"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(["--sample-patients", &patients.to_string()])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let base = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "the server ended");
            if let Some(b) = line.trim().strip_prefix("bulk-export is ready: FHIR base ") {
                break b.to_string();
            }
        };
        // What it logs from here on (warnings and errors) is shown.
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).is_ok_and(|n| n > 0) {
                eprint!("server: {line}");
                line.clear();
            }
        });
        Server { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn open_fds(pid: u32) -> usize {
    fd_targets(pid).len()
}

/// What each open descriptor is (a file's path, `socket:[…]`, …).
fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// A version: (lastUpdated µs, version, deleted).
type Stamp = (i64, u64, bool);

/// Every resource's versions.
#[derive(Default)]
struct Store {
    versions: BTreeMap<(String, String), Vec<Stamp>>,
}

type Keys = BTreeSet<(String, String, String)>;

impl Store {
    fn record(&mut self, t: &str, id: &str, at: i64, version: u64, deleted: bool) {
        let vs = self.versions.entry((t.into(), id.into())).or_default();
        vs.push((at, version, deleted));
        vs.sort();
    }

    /// (live (type, id, version), deleted (type, id)) as of `as_of`.
    fn expected(
        &self,
        as_of: i64,
        since: Option<i64>,
        types: &[&str],
    ) -> (Keys, BTreeSet<(String, String)>) {
        let (mut live, mut deleted) = (BTreeSet::new(), BTreeSet::new());
        for ((t, id), vs) in &self.versions {
            if !types.is_empty() && !types.contains(&t.as_str()) {
                continue;
            }
            let Some(&(at, version, gone)) = vs.iter().rev().find(|v| v.0 <= as_of) else {
                continue;
            };
            if since.is_some_and(|s| at <= s) {
                continue;
            }
            if !gone {
                live.insert((t.clone(), id.clone(), version.to_string()));
            } else if since.is_some() {
                deleted.insert((t.clone(), id.clone()));
            }
        }
        (live, deleted)
    }
}

fn micros(instant: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(instant)
        .unwrap_or_else(|e| panic!("{instant}: {e}"))
        .timestamp_micros()
}

/// What every client records.
#[derive(Default)]
struct Stats {
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// Status polls: (answer, ms).
    status_ms: Mutex<Vec<(u16, f64)>>,
    kickoff_ms: Mutex<Vec<f64>>,
    problems: Mutex<Vec<String>>,
    exports_exact: AtomicU64,
    exports_cancelled: AtomicU64,
    writes: AtomicU64,
    malformed: AtomicU64,
}

impl Stats {
    fn count(&self, status: u16) {
        *self.by_status.lock().unwrap().entry(status).or_default() += 1;
    }

    fn problem(&self, p: String) {
        eprintln!("PROBLEM: {p}");
        self.problems.lock().unwrap().push(p);
    }
}

struct Shared {
    base: String,
    http: Client,
    stats: Stats,
    store: Mutex<Store>,
    /// Status URLs of the exports under way, for the pollers.
    running: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Per writer, when its last completed request was sent.
    writers_done_up_to: Mutex<Vec<Instant>>,
}

impl Shared {
    async fn send(&self, req: reqwest::RequestBuilder) -> Option<reqwest::Response> {
        match req.send().await {
            Ok(r) => {
                self.stats.count(r.status().as_u16());
                if r.status().is_server_error() {
                    self.stats
                        .problem(format!("{} from {}", r.status(), r.url()));
                }
                Some(r)
            }
            Err(e) => {
                self.stats.problem(format!("no answer: {e}"));
                None
            }
        }
    }

    /// A malformed request of some kind: it must get a 4xx.
    async fn malformed(&self, rng: &mut StdRng) {
        let base = &self.base;
        let kickoff = |q: &str| {
            self.http
                .get(format!("{base}/$export{q}"))
                .header("accept", "application/fhir+json")
                .header("prefer", "respond-async")
        };
        let req = match rng.random_range(0..8) {
            0 => kickoff("?_type=Nope"),
            1 => kickoff("?_since=yesterday"),
            2 => kickoff("?_typeFilter=Observation%3Fvalue-quantity%3Dxx"),
            3 => self.http.get(format!("{base}/$export-jobs/no-such-job")),
            4 => self
                .http
                .put(format!("{base}/Patient/p1"))
                .header("content-type", "application/fhir+json")
                .body("{\"resourceType\": \"Patient\", \"id\": "),
            5 => self
                .http
                .put(format!("{base}/Patient/a"))
                .header("content-type", "application/fhir+json")
                .body(r#"{"resourceType":"Patient","id":"b"}"#),
            6 => self
                .http
                .post(format!("{base}/$export"))
                .header("accept", "application/fhir+json")
                .header("prefer", "respond-async")
                .header("content-type", "application/fhir+json")
                .body(r#"{"resourceType":"Parameters","parameter":[{"name":"_type"}]}"#),
            _ => self
                .http
                .get(format!("{base}/$export"))
                .header("accept", "text/html")
                .header("prefer", "respond-async"),
        };
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = self.send(req).await {
            if !r.status().is_client_error() {
                self.stats.problem(format!(
                    "a malformed request got {}: {}",
                    r.status(),
                    r.url()
                ));
            }
        }
    }
}

async fn poller(s: Arc<Shared>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !s.stop.load(Ordering::Relaxed) {
        if rng.random_range(0..10) == 0 {
            s.malformed(&mut rng).await;
            continue;
        }
        let url = {
            let running = s.running.lock().unwrap();
            (!running.is_empty()).then(|| running[rng.random_range(0..running.len())].clone())
        };
        let Some(url) = url else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let t = Instant::now();
        let Some(r) = s.send(s.http.get(&url)).await else {
            continue;
        };
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        s.stats
            .status_ms
            .lock()
            .unwrap()
            .push((r.status().as_u16(), ms));
        // A client honours Retry-After, within a second.
        let wait = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(Duration::from_millis(500), |s| {
                Duration::from_secs(s).min(Duration::from_secs(1))
            });
        drop(r.bytes().await);
        tokio::time::sleep(wait.mul_f64(rng.random_range(0.5..1.0))).await;
    }
}

/// The writers' resources: their own Observations, made, changed and
/// deleted; and updates of the sample's Patients.
async fn writer(s: Arc<Shared>, index: usize, patients: Vec<String>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    while !s.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        if rng.random_range(0..10) == 0 {
            s.malformed(&mut rng).await;
        } else {
            n += 1;
            let patient = &patients[rng.random_range(0..patients.len())];
            let (entry, t, id) = match rng.random_range(0..4) {
                0 if !mine.is_empty() => {
                    let id = mine.swap_remove(rng.random_range(0..mine.len()));
                    let e = json!({"request": {"method": "DELETE", "url": format!("Observation/{id}")}});
                    (e, "Observation", id)
                }
                1 => {
                    let e = json!({"request": {"method": "PUT", "url": format!("Patient/{patient}")},
                        "resource": {"resourceType": "Patient", "id": patient, "gender": "other",
                                     "extension": [{"url": "http://example.org/soak", "valueDecimal": 1.50}]}});
                    (e, "Patient", patient.clone())
                }
                _ => {
                    let id = format!("soak-{index}-{n}");
                    mine.push(id.clone());
                    let e = json!({"request": {"method": "PUT", "url": format!("Observation/{id}")},
                        "resource": {"resourceType": "Observation", "id": id, "status": "final",
                            "code": {"text": "soak"}, "subject": {"reference": format!("Patient/{patient}")},
                            "valueQuantity": {"value": 0.012151678567590593}}});
                    (e, "Observation", id)
                }
            };
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
            let req = s
                .http
                .post(&s.base)
                .header("content-type", "application/fhir+json")
                .body(bundle.to_string());
            if let Some(r) = s.send(req).await {
                if r.status() == 200 {
                    let answer: Value = r.json().await.unwrap_or_default();
                    let resp = &answer["entry"][0]["response"];
                    let at = resp["lastModified"].as_str().map(micros);
                    let status = resp["status"].as_str().unwrap_or_default();
                    let version = resp["etag"].as_str().and_then(|e| {
                        e.trim_start_matches("W/\"")
                            .trim_end_matches('"')
                            .parse()
                            .ok()
                    });
                    match (status, at, version) {
                        ("204 No Content", Some(at), _) => {
                            s.store.lock().unwrap().record(t, &id, at, 0, true)
                        }
                        (_, Some(at), Some(v)) => {
                            s.store.lock().unwrap().record(t, &id, at, v, false)
                        }
                        _ => s
                            .stats
                            .problem(format!("a write's answer lacks its version: {answer}")),
                    }
                    s.stats.writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.stats.problem(format!("a write got {}", r.status()));
                }
            }
        }
        s.writers_done_up_to.lock().unwrap()[index] = sent;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..80))).await;
    }
}

/// Kick-offs, each polled to its manifest and checked, or cancelled.
async fn exporter(s: Arc<Shared>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut since: Option<String> = None;
    let mut round = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        round += 1;
        if rng.random_range(0..10) == 0 {
            s.malformed(&mut rng).await;
            continue;
        }
        let (query, types): (String, &[&str]) = match (rng.random_range(0..3), &since) {
            (0, _) => ("".into(), &[]),
            (1, Some(t)) => (
                format!("?_type=Patient,Observation&_since={t}"),
                &["Patient", "Observation"],
            ),
            _ => (
                "?_type=Patient,Observation".into(),
                &["Patient", "Observation"],
            ),
        };
        let t = Instant::now();
        let req = s
            .http
            .get(format!("{}/$export{query}", s.base))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .header("cache-control", "no-cache");
        let Some(r) = s.send(req).await else { continue };
        s.stats
            .kickoff_ms
            .lock()
            .unwrap()
            .push(t.elapsed().as_secs_f64() * 1000.0);
        if r.status() == 429 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if r.status() != 202 {
            s.stats.problem(format!("kick-off {query}: {}", r.status()));
            continue;
        }
        let status = r.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        s.running.lock().unwrap().push(status.clone());
        let cancel = round.is_multiple_of(5);
        let manifest = if cancel {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            None
        } else {
            wait_manifest(&s, &status).await
        };
        s.running.lock().unwrap().retain(|u| *u != status);
        if let Some(m) = &manifest {
            check(&s, m, &query, types).await;
            since = m["transactionTime"].as_str().map(str::to_string);
        }
        // A completed export is deleted once read (its files go); one under
        // way is cancelled.
        if let Some(r) = s.send(s.http.delete(&status)).await {
            if r.status() != 202 {
                s.stats.problem(format!("delete {status}: {}", r.status()));
            } else if manifest.is_none() {
                s.stats.exports_cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(r) = s.send(s.http.get(&status)).await {
            if r.status() != 404 {
                s.stats
                    .problem(format!("{status} after its delete: {}", r.status()));
            }
        }
    }
}

async fn wait_manifest(s: &Shared, status: &str) -> Option<Value> {
    let give_up = Instant::now() + Duration::from_secs(600);
    while Instant::now() < give_up {
        let t = Instant::now();
        let r = s.send(s.http.get(status)).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        s.stats
            .status_ms
            .lock()
            .unwrap()
            .push((r.status().as_u16(), ms));
        match r.status().as_u16() {
            200 => return r.json().await.ok(),
            202 | 429 => {
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait).min(Duration::from_millis(500))).await;
            }
            other => {
                s.stats.problem(format!("status {status}: {other}"));
                return None;
            }
        }
    }
    s.stats.problem(format!("{status} did not finish"));
    None
}

/// Downloads every file of the manifest and compares it with the store as
/// of its `transactionTime`.
async fn check(s: &Shared, manifest: &Value, query: &str, types: &[&str]) {
    let as_of = micros(manifest["transactionTime"].as_str().unwrap());
    let since = query
        .split("_since=")
        .nth(1)
        .map(|t| micros(t.split('&').next().unwrap()));
    let mut got: Keys = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for (key, entries) in [
        ("output", &manifest["output"]),
        ("deleted", &manifest["deleted"]),
    ] {
        for e in entries.as_array().into_iter().flatten() {
            let url = e["url"].as_str().unwrap();
            let Some(r) = s.send(s.http.get(url)).await else {
                return;
            };
            let text = match r.status().as_u16() {
                200 => r.text().await.unwrap_or_default(),
                other => {
                    s.stats.problem(format!("file {url}: {other}"));
                    return;
                }
            };
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if key == "output" {
                    got.insert((
                        v["resourceType"].as_str().unwrap().to_string(),
                        v["id"].as_str().unwrap().to_string(),
                        v["meta"]["versionId"].as_str().unwrap().to_string(),
                    ));
                } else {
                    let url = v["entry"][0]["request"]["url"].as_str().unwrap();
                    let (t, id) = url.split_once('/').unwrap();
                    deleted.insert((t.to_string(), id.to_string()));
                }
            }
        }
    }
    // Every write answered before the export's instant is in the store:
    // wait until each writer has finished a request sent after it.
    let completed = Instant::now();
    while s
        .writers_done_up_to
        .lock()
        .unwrap()
        .iter()
        .any(|t| *t < completed)
        && !s.stop.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (want, want_deleted) = s.store.lock().unwrap().expected(as_of, since, types);
    if got == want && deleted == want_deleted {
        s.stats.exports_exact.fetch_add(1, Ordering::Relaxed);
    } else {
        let missing = want.difference(&got).take(3).collect::<Vec<_>>();
        let extra = got.difference(&want).take(3).collect::<Vec<_>>();
        s.stats.problem(format!(
            "export {query} as of {as_of} is not exact: {} resources, {} expected; missing {missing:?}, extra {extra:?}; deleted {} vs {}",
            got.len(),
            want.len(),
            deleted.len(),
            want_deleted.len()
        ));
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn run(c: Config) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let server = Server::start(dir.path(), c.patients);
    let pid = server.pid();
    let sample: Vec<Value> = generate(SampleConfig {
        patients: c.patients,
        seed: SAMPLE_SEED,
    })
    .collect();
    let mut store = Store::default();
    let mut patients = Vec::new();
    for r in &sample {
        let (t, id) = (
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap(),
        );
        store.record(t, id, 0, 1, false);
        if t == "Patient" {
            patients.push(id.to_string());
        }
    }
    println!(
        "soak: {} resources loaded in {:.1} s; {} s of load: {} pollers, {} exporters, {} writers",
        sample.len(),
        started.elapsed().as_secs_f64(),
        c.seconds,
        c.pollers,
        c.exporters,
        c.writers
    );
    let fds_start = open_fds(pid);
    let fds_at_start = fd_targets(pid);
    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::limited(2))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        base: server.base.clone(),
        http,
        stats: Stats::default(),
        store: Mutex::new(store),
        running: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        writers_done_up_to: Mutex::new(vec![Instant::now(); c.writers]),
    });
    let mut tasks = Vec::new();
    for i in 0..c.pollers {
        tasks.push(tokio::spawn(poller(shared.clone(), 1000 + i as u64)));
    }
    for i in 0..c.writers {
        tasks.push(tokio::spawn(writer(
            shared.clone(),
            i,
            patients.clone(),
            2000 + i as u64,
        )));
    }
    for i in 0..c.exporters {
        tasks.push(tokio::spawn(exporter(shared.clone(), 3000 + i as u64)));
    }
    let mut rss = Vec::new();
    let load_started = Instant::now();
    let sample_every = Duration::from_secs((c.seconds / 20).max(1));
    while load_started.elapsed() < Duration::from_secs(c.seconds) {
        tokio::time::sleep(sample_every).await;
        rss.push((load_started.elapsed().as_secs(), rss_mb(pid)));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // The clients are gone: their connections close, and the server must
    // be back to the descriptors it had.
    let Ok(shared) = Arc::try_unwrap(shared) else {
        panic!("a client task still holds the state");
    };
    drop(shared.http);
    let mut fds_end = open_fds(pid);
    for _ in 0..50 {
        if fds_end <= fds_start {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_end = open_fds(pid);
    }
    let stats = shared.stats;

    let by_status = stats.by_status.into_inner().unwrap();
    let total: u64 = by_status.values().sum();
    let server_errors: u64 = by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    let status_ms = stats.status_ms.into_inner().unwrap();
    // A running export's poll is held until it ends or a second passes
    // (`status_wait`): those are reported apart.
    let (mut held, mut answered): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (code, ms) in status_ms {
        if code == 202 {
            held.push(ms)
        } else {
            answered.push(ms)
        }
    }
    let mut kickoff_ms = stats.kickoff_ms.into_inner().unwrap();
    println!(
        "requests: {total} ({:.0}/s)",
        total as f64 / c.seconds as f64
    );
    for (s, n) in &by_status {
        println!("  {s}: {n}");
    }
    println!(
        "writes: {}; malformed requests: {}; exports exact: {}; cancelled: {}",
        stats.writes.load(Ordering::Relaxed),
        stats.malformed.load(Ordering::Relaxed),
        stats.exports_exact.load(Ordering::Relaxed),
        stats.exports_cancelled.load(Ordering::Relaxed)
    );
    println!(
        "status polls answered at once (200, 404, 429): {}, p50 {:.1} ms, p99 {:.1} ms",
        answered.len(),
        percentile(&mut answered, 0.5),
        percentile(&mut answered, 0.99)
    );
    println!(
        "status polls of running exports (202, held up to 1 s): {}, p50 {:.1} ms, p99 {:.1} ms",
        held.len(),
        percentile(&mut held, 0.5),
        percentile(&mut held, 0.99)
    );
    println!(
        "kick-offs: {}, p50 {:.1} ms, p99 {:.1} ms",
        kickoff_ms.len(),
        percentile(&mut kickoff_ms, 0.5),
        percentile(&mut kickoff_ms, 0.99)
    );
    let samples: Vec<String> = rss.iter().map(|(t, mb)| format!("{t}s {mb:.0}")).collect();
    println!("server RSS (MB) over time: {}", samples.join(", "));
    println!("server file descriptors: {fds_start} at the start, {fds_end} at the end");
    if fds_end > fds_start {
        let count = |ts: &[String]| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for t in ts {
                let kind = t.split('[').next().unwrap_or(t).to_string();
                *m.entry(kind).or_default() += 1;
            }
            m
        };
        println!("  by kind, start: {:?}", count(&fds_at_start));
        println!("  by kind, end:   {:?}", count(&fd_targets(pid)));
    }
    let problems = stats.problems.into_inner().unwrap();
    let ok = server_errors == 0
        && problems.is_empty()
        && fds_end <= fds_start
        && stats.exports_exact.load(Ordering::Relaxed) > 0;
    println!(
        "soak: {} (5xx: {server_errors}, problems: {})",
        if ok { "passed" } else { "FAILED" },
        problems.len()
    );
    drop(server);
    ok
}
