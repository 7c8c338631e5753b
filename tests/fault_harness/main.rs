//! The fault harness: many exports, each under randomly injected faults at
//! the port boundaries, each verified exactly.
//!
//! ```sh
//! cargo test -p bulk-export-tests --test fault_harness -- --seed 1 --embedded 200 --aws 30
//! ```
//!
//! Faults, drawn per export and per handling from the seed:
//! - a handling killed before or after any port call (its future is dropped
//!   there; its message comes back after the visibility timeout);
//! - the same delivery handed to two handlings at once;
//! - a delivery left alone, so it is redelivered after a delay;
//! - transient "throttled" errors on resource, job, file and queue calls;
//! - a cancel at a random moment;
//! - and, between steps, creates, updates and deletes in the store.
//!
//! Each export is verified: the (type, id, versionId) in its files equal
//! the store as of `transactionTime` (computed from the harness's own
//! record of every write), deletions likewise for `_since` exports, every
//! file holds the manifest's count, no resource twice, and afterwards no
//! open upload and no object outside the manifest (nothing at all after a
//! cancel). The AWS emulator is chosen as for the tests
//! (`BULK_EXPORT_AWS_EMULATOR=moto|localstack`, or `BULK_EXPORT_MOTO_URL`);
//! between exports the harness resets a moto it started itself (or any,
//! with `--reset-moto`), since moto slows down as its state grows.
//! `--moto N` is the old name of `--aws N`.

mod faulty;
#[path = "../e2e/aws/moto.rs"]
mod moto;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulk_export::aws::{AwsAdapters, SqsQueue};
use bulk_export::clock::SystemClock;
use bulk_export::domain::instant::{format_instant, to_micros};
use bulk_export::domain::job::{artifact_key, job_prefix, JobState};
use bulk_export::domain::request::{parse_export_request, ExportLevel, KickoffInput, RawParam};
use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteQueue, SqliteResourceStore};
use bulk_export::engine::{Caller, Disposition, EngineConfig, Ports, Services, StatusReply};
use bulk_export::ports::{Clock, Delivery, Version, WriteOp};
use bulk_export::sample::{generate, SampleConfig};
use faulty::{Faults, Rates, Tally, SERVICES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seed = arg("--seed", 1);
    let embedded = arg("--embedded", 20) as usize;
    let on_aws = arg("--aws", arg("--moto", 3)) as usize;
    // Reset a moto this process did not start (CI's, before its tests).
    let reset_moto = std::env::args().any(|a| a == "--reset-moto");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failed = 0;
    let mut passed = 0;
    for (backend, count) in [(Backend::Embedded, embedded), (Backend::Aws, on_aws)] {
        if count == 0 {
            continue;
        }
        let tally = Arc::new(Tally::default());
        let started = Instant::now();
        let (mut ok, mut bad) = (0, 0);
        for i in 0..count {
            let export_seed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64 * 2 + backend as u64);
            if matches!(backend, Backend::Aws) && (reset_moto || moto::owned()) {
                // moto slows down as it accumulates tables and buckets.
                moto::reset();
            }
            let took = Instant::now();
            match rt.block_on(one_export(backend, export_seed, tally.clone())) {
                Ok(_) => {
                    ok += 1;
                    eprintln!(
                        "{backend:?} export {i} (seed {export_seed}): exact, {:.1?}",
                        took.elapsed()
                    );
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("FAILED {backend:?} export {i} (seed {export_seed}): {e}");
                }
            }
        }
        print_tally(backend, ok, bad, started.elapsed(), &tally);
        passed += ok;
        failed += bad;
    }
    println!("fault harness, seed {seed}:");
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn print_tally(backend: Backend, ok: usize, bad: usize, took: Duration, t: &Tally) {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{backend:?}: {} exports in {:.0?}: {ok} exact, {bad} not",
        ok + bad,
        took
    );
    println!(
        "  injected: kill before a call {}, kill after a call {}, duplicate delivery {}, \
         delayed redelivery {}, cancel {}",
        n(&t.kill_before),
        n(&t.kill_after),
        n(&t.duplicate),
        n(&t.delayed_redelivery),
        n(&t.cancel),
    );
    let throttled: Vec<String> = SERVICES
        .iter()
        .zip(&t.throttled)
        .map(|(s, c)| format!("{s} {}", n(c)))
        .collect();
    println!("  injected throttling: {}", throttled.join(", "));
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Embedded = 0,
    Aws = 1,
}

/// The adapters of one export, and what the driver needs beyond the ports.
struct Stack {
    ports: Ports,
    pending: Pending,
    visibility: Duration,
    _dir: Option<tempfile::TempDir>,
}

enum Pending {
    Sqlite(SqliteQueue),
    Sqs(Arc<SqsQueue>),
}

impl Pending {
    /// Messages waiting, in flight or delayed.
    async fn count(&self) -> u64 {
        match self {
            Pending::Sqlite(q) => q.len().await.unwrap(),
            Pending::Sqs(q) => q.pending().await.unwrap(),
        }
    }
}

async fn stack(backend: Backend) -> Stack {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            let resources =
                SqliteResourceStore::open(&dir.path().join("resources.db"), clock.clone()).unwrap();
            let jobs = SqliteJobs::open(&dir.path().join("jobs.db")).unwrap();
            let queue = jobs.queue();
            let files = FsArtifacts::open(
                &dir.path().join("files"),
                "http://127.0.0.1:9",
                clock.clone(),
            )
            .unwrap();
            Stack {
                ports: Ports {
                    resources: Arc::new(resources),
                    clients: Arc::new(jobs.clone()),
                    schedules: Arc::new(jobs.clone()),
                    events: Arc::new(bulk_export::ports::NoEvents),
                    jobs: Arc::new(jobs),
                    artifacts: Arc::new(files),
                    queue: Arc::new(queue.clone()),
                    clock,
                },
                pending: Pending::Sqlite(queue),
                visibility: Duration::from_millis(300),
                _dir: Some(dir),
            }
        }
        Backend::Aws => {
            let (sdk, names) = moto::fresh_stack().await;
            let adapters = AwsAdapters::new(&sdk, &names, 4, clock);
            Stack {
                ports: adapters.ports(),
                pending: Pending::Sqs(adapters.queue.clone()),
                // SQS counts visibility in whole seconds.
                visibility: Duration::from_secs(1),
                _dir: None,
            }
        }
    }
}

/// What an export must hold: (type, id, versionId) of the output, and
/// (type, id) of the deletions.
type Expected = (
    BTreeSet<(String, String, String)>,
    BTreeSet<(String, String)>,
);

/// Every version the harness wrote, per resource.
#[derive(Default)]
struct History {
    versions: BTreeMap<(String, String), Vec<Version>>,
    bodies: BTreeMap<(String, String), Value>,
}

impl History {
    fn record(&mut self, v: Version) {
        self.versions
            .entry((v.resource_type.clone(), v.id.clone()))
            .or_default()
            .push(v);
    }

    /// What an export as of `as_of` (µs) must hold: live versions, and the
    /// deletions a `_since` export reports.
    fn expected(
        &self,
        as_of: i64,
        since: Option<i64>,
        types: &Option<BTreeSet<String>>,
    ) -> Expected {
        let (mut live, mut deleted) = (BTreeSet::new(), BTreeSet::new());
        for ((t, id), versions) in &self.versions {
            if types.as_ref().is_some_and(|ts| !ts.contains(t)) {
                continue;
            }
            let Some(v) = versions.iter().rev().find(|v| v.last_updated <= as_of) else {
                continue;
            };
            if since.is_some_and(|s| v.last_updated <= s) {
                continue;
            }
            if !v.deleted {
                live.insert((t.clone(), id.clone(), v.version.to_string()));
            } else if since.is_some() {
                deleted.insert((t.clone(), id.clone()));
            }
        }
        (live, deleted)
    }
}

/// Creates, updates or deletes one resource, outside any handling.
async fn mutate(ports: &Ports, history: &mut History, rng: &mut StdRng, n: usize) {
    let live: Vec<(String, String)> = history
        .bodies
        .keys()
        .filter(|k| history.versions[*k].last().is_some_and(|v| !v.deleted))
        .cloned()
        .collect();
    let op = match rng.random_range(0..3) {
        0 if !live.is_empty() => {
            let (t, id) = live[rng.random_range(0..live.len())].clone();
            WriteOp::Delete {
                resource_type: t,
                id,
            }
        }
        1 if !live.is_empty() => {
            let (t, id) = live[rng.random_range(0..live.len())].clone();
            let resource = history.bodies[&(t.clone(), id.clone())].clone();
            WriteOp::Upsert {
                resource_type: t,
                id,
                resource: resource.into(),
            }
        }
        _ => {
            let id = format!("added-{n}");
            let resource = serde_json::json!({"resourceType": "Patient", "id": id});
            history
                .bodies
                .insert(("Patient".into(), id.clone()), resource.clone());
            WriteOp::Upsert {
                resource_type: "Patient".into(),
                id,
                resource: resource.into(),
            }
        }
    };
    for r in ports.resources.write(vec![op]).await.unwrap() {
        history.record(r.version);
    }
}

fn pick<T: Copy>(rng: &mut StdRng, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())]
}

async fn one_export(backend: Backend, seed: u64, tally: Arc<Tally>) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let stack = stack(backend).await;
    let mut config = EngineConfig::new("http://harness.test/fhir");
    config.page_size = pick(&mut rng, &[2, 5, 50]);
    config.max_resources_per_file = pick(&mut rng, &[4, 15, 1000]);
    config.min_chunk_bytes = pick(&mut rng, &[1, 1500, 64 << 10]);
    config.carry_limit_bytes = pick(&mut rng, &[0, 400, 96 << 10]);
    config.part_target_resources = pick(&mut rng, &[8, 40, 20_000]);
    config.max_attempts = 1000;
    config.retry_base = Duration::ZERO;
    config.collect_delay = match backend {
        Backend::Embedded => Duration::ZERO,
        Backend::Aws => Duration::from_secs(1),
    };
    let base = Services::new(stack.ports.clone(), config.clone());
    let rates = Rates {
        kill_before: rng.random_range(0.0..0.02),
        kill_after: rng.random_range(0.0..0.02),
        throttle: rng.random_range(0.0..0.03),
    };
    let (p_duplicate, p_delay) = (rng.random_range(0.0..0.3), rng.random_range(0.0..0.2));

    // The data, and every version written, as the harness saw it.
    let mut history = History::default();
    let patients = rng.random_range(1..=3);
    let values: Vec<Value> = generate(SampleConfig { patients, seed }).collect();
    let ops: Vec<WriteOp> = values
        .iter()
        .map(|v| {
            let (t, id) = (
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap(),
            );
            history
                .bodies
                .insert((t.to_string(), id.to_string()), v.clone());
            WriteOp::Upsert {
                resource_type: t.into(),
                id: id.into(),
                resource: v.clone().into(),
            }
        })
        .collect();
    for r in stack.ports.resources.load(ops).await.unwrap() {
        history.record(r.version);
    }
    for n in 0..rng.random_range(0..6) {
        mutate(&stack.ports, &mut history, &mut rng, n).await;
    }

    // The request: all types or a few, from the start or `_since`.
    let mut params = Vec::new();
    let mut types = None;
    if rng.random_bool(0.3) {
        let t: BTreeSet<String> = ["Patient", "Observation", "Encounter"]
            .into_iter()
            .filter(|_| rng.random_bool(0.6))
            .map(String::from)
            .collect();
        if !t.is_empty() {
            params.push(RawParam::text(
                "_type",
                &t.iter().cloned().collect::<Vec<_>>().join(","),
            ));
            types = Some(t);
        }
    }
    let mut since = None;
    if rng.random_bool(0.3) {
        let all: Vec<i64> = history
            .versions
            .values()
            .flatten()
            .map(|v| v.last_updated)
            .collect();
        let at = all[rng.random_range(0..all.len())];
        // `_since` is read at second precision or finer: a written instant.
        let instant = bulk_export::domain::instant::from_micros(at);
        params.push(RawParam::text("_since", &format_instant(instant)));
        since = Some(to_micros(
            bulk_export::domain::instant::parse_instant(&format_instant(instant)).unwrap(),
        ));
    }
    let caller = Caller::anonymous();
    let job_id = base
        .exports
        .kickoff(
            &caller,
            parse_export_request(KickoffInput {
                level: ExportLevel::System,
                request_url: "http://harness.test/fhir/$export".into(),
                params,
                lenient: false,
                via_post: false,
                now: stack.ports.clock.now(),
            })
            .expect("the harness's request parses"),
        )
        .await
        .map_err(|e| format!("kick-off: {e:?}"))?;
    let job = stack.ports.jobs.get_job(&job_id).await.unwrap().unwrap();
    let as_of = to_micros(job.transaction_time);
    let expected = history.expected(as_of, since, &types);

    // Drive the queue until the job ended and nothing is left in it.
    let cancel_at = rng.random_bool(0.15).then(|| rng.random_range(1..12));
    let mut cancelled = false;
    let give_up = Instant::now()
        + match backend {
            Backend::Embedded => Duration::from_secs(120),
            Backend::Aws => Duration::from_secs(240),
        };
    let mut step = 0;
    loop {
        if Instant::now() > give_up {
            let job = stack.ports.jobs.get_job(&job_id).await.unwrap();
            let parts = stack.ports.jobs.list_parts(&job_id).await.unwrap();
            return Err(format!(
                "the export did not end in time: {:?}, {} messages pending, parts {:?}",
                job.map(|j| (j.state, j.parts_remaining)),
                stack.pending.count().await,
                parts
                    .iter()
                    .map(|p| (p.done, p.version, p.checkpoint.position.clone()))
                    .collect::<Vec<_>>()
            ));
        }
        step += 1;
        if rng.random_bool(0.1) {
            mutate(&stack.ports, &mut history, &mut rng, 100 + step).await;
        }
        if cancel_at == Some(step) && base.exports.cancel(&caller, &job_id).await.is_ok() {
            Tally::add(&tally.cancel);
            cancelled = true;
        }
        if rng.random_bool(rates.throttle) {
            // The receive call is throttled: nothing this round.
            Tally::add(&tally.throttled[faulty::Service::Queue as usize]);
            continue;
        }
        let deliveries = stack
            .ports
            .queue
            .receive(4, stack.visibility)
            .await
            .unwrap();
        if deliveries.is_empty() {
            let state = stack
                .ports
                .jobs
                .get_job(&job_id)
                .await
                .unwrap()
                .map(|j| j.state);
            let ended = !matches!(state, Some(JobState::Queued | JobState::Running));
            if ended && stack.pending.count().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut handlings = Vec::new();
        for d in deliveries {
            let roll: f64 = rng.random();
            if roll < p_delay {
                Tally::add(&tally.delayed_redelivery);
                continue;
            }
            let copies = if rng.random_bool(p_duplicate) {
                Tally::add(&tally.duplicate);
                2
            } else {
                1
            };
            let budget = pick(
                &mut rng,
                &[
                    Duration::ZERO,
                    Duration::from_millis(2),
                    Duration::from_millis(30),
                    Duration::from_secs(30),
                ],
            );
            let seeds: Vec<u64> = (0..copies).map(|_| rng.random()).collect();
            let delete_throttled = rng.random_bool(rates.throttle);
            handlings.push(handle(
                &stack,
                &config,
                d,
                (seeds, rates, budget),
                delete_throttled,
                &tally,
            ));
        }
        futures::future::join_all(handlings).await;
    }

    verify(&stack, &base, &caller, &job_id, cancelled, &expected).await
}

/// Runs one delivery through `seeds.len()` concurrent handlings, each with
/// its own faults, and settles the message as the queue's consumer would.
async fn handle(
    stack: &Stack,
    config: &EngineConfig,
    d: Delivery,
    (seeds, rates, budget): (Vec<u64>, Rates, Duration),
    delete_throttled: bool,
    tally: &Arc<Tally>,
) {
    let runs = seeds.into_iter().map(|seed| {
        let faults = Faults::new(seed, rates, tally.clone());
        let engine = Services::new(faults.wrap(&stack.ports), config.clone());
        let message = d.message.clone();
        async move {
            let deadline = tokio::time::Instant::now() + budget;
            tokio::select! {
                disposition = engine.worker.process(&message, d.receive_count, deadline) => Some(disposition),
                _ = faults.killed() => None,
            }
        }
    });
    let outcomes = futures::future::join_all(runs).await;
    let queue = &stack.ports.queue;
    if outcomes.contains(&Some(Disposition::Done)) {
        if delete_throttled {
            // The delete is throttled: the message comes back, done already.
            Tally::add(&tally.throttled[faulty::Service::Queue as usize]);
        } else {
            queue.delete(&d.receipt).await.unwrap();
        }
    } else if let Some(Some(Disposition::RetryAfter(delay))) = outcomes.iter().find(|o| o.is_some())
    {
        queue.retry_later(&d.receipt, *delay).await.unwrap();
    }
    // Every handling killed: the message comes back after its visibility.
}

async fn verify(
    stack: &Stack,
    base: &Services,
    caller: &Caller,
    job_id: &str,
    cancelled: bool,
    (live, deleted): &Expected,
) -> Result<(), String> {
    let files = &stack.ports.artifacts;
    let prefix = job_prefix(job_id);
    let objects: BTreeSet<String> = files.list(&prefix).await.unwrap().into_iter().collect();
    let uploads = files.list_uploads(&prefix).await.unwrap();
    if !uploads.is_empty() {
        return Err(format!("open uploads left: {uploads:?}"));
    }
    if cancelled {
        if base.exports.status(caller, job_id, None).await.is_ok() {
            return Err("a cancelled job still answers".into());
        }
        if !objects.is_empty() {
            return Err(format!("objects left after the cancel: {objects:?}"));
        }
        return Ok(());
    }
    let manifest = match base.exports.status(caller, job_id, None).await {
        Ok(StatusReply::Complete { manifest, .. }) => manifest,
        other => return Err(format!("not complete: {other:?}")),
    };
    let mut listed = BTreeSet::new();
    let mut got_live = Vec::new();
    let mut got_deleted = Vec::new();
    for (kind, entry) in ["output", "deleted"].iter().flat_map(|k| {
        manifest[*k]
            .as_array()
            .unwrap()
            .iter()
            .map(move |e| (*k, e))
    }) {
        let name = entry["url"].as_str().unwrap().rsplit('/').next().unwrap();
        let key = artifact_key(job_id, name);
        let text = files.get(&key).await.map_err(|e| format!("{key}: {e}"))?;
        listed.insert(key.clone());
        // Its gzip twin holds the same bytes.
        let twin = format!("{key}.gz");
        let gz = files.get(&twin).await.map_err(|e| format!("{twin}: {e}"))?;
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut inflated)
            .map_err(|e| format!("{twin}: {e}"))?;
        if inflated != text {
            return Err(format!("{twin} does not inflate to {key}"));
        }
        listed.insert(twin);
        let text = std::str::from_utf8(&text).unwrap();
        let count = text.lines().count() as u64;
        if Some(count) != entry["count"].as_u64() {
            return Err(format!(
                "{key}: {count} lines, manifest says {}",
                entry["count"]
            ));
        }
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{key}: {e}"))?;
            if kind == "output" {
                got_live.push((
                    v["resourceType"].as_str().unwrap_or("").to_string(),
                    v["id"].as_str().unwrap_or("").to_string(),
                    v["meta"]["versionId"].as_str().unwrap_or("").to_string(),
                ));
            } else {
                let url = v["entry"][0]["request"]["url"].as_str().unwrap_or("");
                let (t, id) = url.split_once('/').unwrap_or(("", ""));
                got_deleted.push((t.to_string(), id.to_string()));
            }
        }
    }
    let live_set: BTreeSet<_> = got_live.iter().cloned().collect();
    let deleted_set: BTreeSet<_> = got_deleted.iter().cloned().collect();
    if live_set.len() != got_live.len() || deleted_set.len() != got_deleted.len() {
        return Err("a resource appears twice".into());
    }
    if &live_set != live {
        let missing: Vec<_> = live.difference(&live_set).take(5).collect();
        let extra: Vec<_> = live_set.difference(live).take(5).collect();
        return Err(format!(
            "output differs from the store as of transactionTime: missing {missing:?}, extra {extra:?}"
        ));
    }
    if &deleted_set != deleted {
        return Err(format!(
            "deletions differ: got {deleted_set:?}, expected {deleted:?}"
        ));
    }
    if objects != listed {
        let stray: Vec<_> = objects.difference(&listed).collect();
        return Err(format!("objects outside the manifest: {stray:?}"));
    }
    Ok(())
}
