//! Export benchmark on the AWS adapters against moto, with moto's floor.
//!
//! `benches/moto-export.sh 100000` starts moto and runs
//! `cargo bench -p bulk-export-functions --bench moto_export -- --resources 100000`
//! (with `BULK_EXPORT_MOTO_URL` set to a running moto). `--workers N`
//! (default 4), `--shards N` (default 16, the functions' setting),
//! `--mixed-max N` (the engine's `mixed_export_max_resources`; 0 makes
//! per-type parts), `--synthea` (the vendored Synthea sample instead of N
//! synthetic resources), `--client-seen RUNS` (after the export, kick-off
//! to manifest through the HTTP functions against the engine's own time:
//! `common/client_seen.rs`).
//!
//! 1. Loads N synthetic resources into fresh DynamoDB tables (timed; the
//!    bulk load path: batched puts behind a fence).
//! 2. Runs a system-level export through the engine and worker tasks fed
//!    from the real SQS queue, as the worker function is (`--workers`
//!    invocations at a time, up to 10 messages each), into S3.
//! 3. The floor, in the same run: the same N bodies as plain items (bare
//!    BatchWriteItem puts, timed), read back with plain strongly
//!    consistent Queries of 16 partitions at once, and the same bytes put
//!    to S3 — what any exporter on moto must at least do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::query::QueryInput;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use bulk_export::aws::{
    emulator_config, provision::provision, s3_client, AwsAdapters, AwsNames, SharedInterceptor,
};
use bulk_export::clock::SystemClock;
use bulk_export::domain::job::{Job, JobState};
use bulk_export::domain::request::{parse_export_request, ExportLevel, KickoffInput};
use bulk_export::domain::revisions::parse_revisions_request;
use bulk_export::engine::{Caller, Disposition, EngineConfig, Services};
use bulk_export::ports::WorkQueue;
use bulk_export::sample::{generate, SampleConfig};
use bulk_export_functions::worker::SAFETY_MARGIN;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

mod common;
use common::arg;
#[path = "common/client_seen.rs"]
mod client_seen;
#[path = "../../local/benches/common/timeline.rs"]
mod timeline;

const FLOOR_PARTITIONS: usize = 16;
/// Deliveries that came back (a failure or a lost race), for the summary.
static RETRIES: AtomicU64 = AtomicU64::new(0);
/// As deployed (template.yaml): the worker's 300 s timeout less its 20 s
/// safety margin, and the queue's visibility timeout of six times the
/// function's. With less slack, a page that moto serves slowly pushes a
/// handling past the visibility timeout, and the message is delivered twice.
const WORK_TIME: Duration = Duration::from_secs(300).saturating_sub(SAFETY_MARGIN);
const QUEUE_VISIBILITY: Duration = Duration::from_secs(1800);

fn main() {
    let Ok(endpoint) = std::env::var("BULK_EXPORT_MOTO_URL") else {
        eprintln!("set BULK_EXPORT_MOTO_URL to a running moto (benches/moto-export.sh does)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timeline = (arg("--client-seen", 0) > 0).then(timeline::Timeline::install);
    rt.block_on(run(
        &endpoint,
        arg("--resources", 100_000),
        arg("--workers", 4),
        arg("--shards", 16) as u16,
        Timing {
            work: Duration::from_secs(arg("--work-secs", WORK_TIME.as_secs() as usize) as u64),
            visibility: Duration::from_secs(arg(
                "--visibility-secs",
                QUEUE_VISIBILITY.as_secs() as usize,
            ) as u64),
            idle: Duration::from_millis(250),
        },
        timeline,
    ));
}

/// Work time per message and the queue's visibility timeout. Less slack
/// than deployed (`--work-secs 20 --visibility-secs 10`) makes messages
/// handled twice at once, the race the checkpoints must survive.
#[derive(Clone, Copy)]
struct Timing {
    work: Duration,
    visibility: Duration,
    /// How long a worker waits after finding the queue empty.
    idle: Duration,
}

async fn run(
    endpoint: &str,
    n: usize,
    workers: usize,
    shards: u16,
    timing: Timing,
    timeline: Option<timeline::Timeline>,
) {
    // moto answers a Query in time proportional to the table, and under
    // several parts at once a call on 100,000 resources can pass the
    // service's 60 s attempt timeout; the abandoned call runs on in moto
    // while its retry queues behind it, until every call times out. The
    // bench waits for moto instead.
    let sdk = emulator_config(endpoint)
        .await
        .into_builder()
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(900))
                .build(),
        )
        .build();
    let id = format!("bench-{}", std::process::id());
    let names = provision(
        &sdk,
        &AwsNames {
            jobs_table: format!("{id}-jobs"),
            resources_table: format!("{id}-resources"),
            bucket: format!("{id}-exports"),
            queue_url: String::new(),
        },
        &format!("{id}-work"),
    )
    .await
    .unwrap();
    // Every DynamoDB client counts its Query calls on the resource table:
    // moto's cost is per call. The service's clients are metered as well
    // (the job's `job-cost` report below).
    let queries = Arc::new(AtomicU64::new(0));
    let counter = CountQueries {
        count: queries.clone(),
        table: names.resources_table.clone(),
    };
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let adapters = AwsAdapters::observed(
        &sdk,
        &names,
        shards,
        Arc::new(SystemClock),
        Some(SharedInterceptor::new(counter)),
    );
    let mut config = EngineConfig::new("https://bench.example/fhir");
    // The functions' default part size.
    config.min_chunk_bytes = 8 << 20;
    // `--mixed-max 0` reads every type on its own (per-type parts), as
    // exports past `mixed_export_max_resources` are.
    config.mixed_export_max_resources =
        arg("--mixed-max", config.mixed_export_max_resources as usize) as u64;
    // Retries come back no later than a lost delivery would.
    config.retry_base = config.retry_base.min(timing.visibility);
    let engine = Services::new(adapters.ports(), config);

    let values: Vec<Value> = if std::env::args().any(|a| a == "--synthea") {
        common::synthea_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        generate(SampleConfig::for_resources(n, 7))
            .take(n)
            .collect()
    };
    let n = values.len();
    let bodies: Vec<String> = values.iter().map(|v| v.to_string()).collect();

    // 1. Load through the store.
    let t = Instant::now();
    bulk_export::loader::load_values(&engine, values.into_iter())
        .await
        .unwrap();
    let load_secs = t.elapsed().as_secs_f64();
    println!(
        "load       {n} resources in {load_secs:.1} s ({:.0} resources/s)",
        n as f64 / load_secs
    );

    // 2. The export.
    let queries_before = queries.swap(0, Ordering::Relaxed);
    let t = Instant::now();
    let exported = export_once(&engine, &adapters, workers, timing, n).await;
    let export_secs = t.elapsed().as_secs_f64();
    let export_queries = queries.swap(0, Ordering::Relaxed);
    assert_eq!(exported.0 as usize, n, "every resource exported once");
    println!(
        "export     {} resources, {:.1} MB in {export_secs:.1} s ({:.0} resources/s; {workers} workers x 10 messages; {shards} shards; {export_queries} Query calls on the resource table, {queries_before} while loading)",
        exported.0,
        exported.1 as f64 / 1e6,
        exported.0 as f64 / export_secs
    );

    // 2a. What a client waits for (`--client-seen RUNS`). The event source
    // mapping long-polls the queue, so a message reaches a worker about at
    // once: these workers look again 10 ms after finding it empty.
    if let Some(timeline) = &timeline {
        let quick = Timing {
            idle: Duration::from_millis(10),
            ..timing
        };
        let (stop_tx, tasks) = spawn_workers(&engine, &adapters, workers, quick);
        let runs = arg("--client-seen", 0);
        client_seen::measure(&engine, &adapters, &names, shards, timeline, runs).await;
        let _ = stop_tx.send(true);
        for t in tasks {
            t.await.unwrap();
        }
    }

    // 2b. The audit trail of the same store: one version per resource
    // (`--skip-revisions`: not measured; on moto it is slow past 10k).
    let revisions = if std::env::args().any(|a| a == "--skip-revisions") {
        None
    } else {
        let (rows, revisions_secs) = revisions_once(&engine, &adapters, workers, timing).await;
        let revisions_queries = queries.swap(0, Ordering::Relaxed);
        assert_eq!(rows as usize, n, "every revision once");
        println!(
            "revisions  {rows} revisions in {revisions_secs:.1} s ({:.0} revisions/s; {revisions_queries} Query calls)",
            rows as f64 / revisions_secs
        );
        Some((revisions_secs, revisions_queries))
    };

    // 3. The floor.
    let t = Instant::now();
    bare_puts(&dynamo, &names.resources_table, &bodies).await;
    let put_secs = t.elapsed().as_secs_f64();
    println!(
        "floor put  {n} items in {put_secs:.1} s ({:.0} items/s; BatchWriteItem, 25 a call)",
        n as f64 / put_secs
    );
    let s3 = s3_client(&sdk);
    let t = Instant::now();
    let (read, bytes) = bare_read_and_upload(&dynamo, &s3, &names).await;
    let floor_secs = t.elapsed().as_secs_f64();
    let floor_queries = queries.swap(0, Ordering::Relaxed);
    assert_eq!(read, n);
    println!(
        "floor read {read} items, {:.1} MB in {floor_secs:.1} s ({:.0} resources/s; {FLOOR_PARTITIONS} Query streams, {floor_queries} Query calls, then one PutObject each)",
        bytes as f64 / 1e6,
        read as f64 / floor_secs
    );
    println!(
        "SUMMARY moto, {n} resources: export {:.0} resources/s, floor {:.0} resources/s, ratio export/floor {:.2}x; load {:.0} resources/s vs bare puts {:.0} items/s ({:.2}x)",
        n as f64 / export_secs,
        n as f64 / floor_secs,
        export_secs / floor_secs,
        n as f64 / load_secs,
        n as f64 / put_secs,
        load_secs / put_secs
    );
    println!(
        "SUMMARY moto, {n} resources: Query calls on the resource table: export {export_queries}, floor {floor_queries}, ratio {:.2}x",
        export_queries as f64 / floor_queries as f64
    );
    if let Some((revisions_secs, revisions_queries)) = revisions {
        println!(
            "SUMMARY moto, {n} revisions: $export-revisions {:.0} revisions/s, ratio to the floor {:.2}x; {revisions_queries} Query calls, ratio {:.2}x",
            n as f64 / revisions_secs,
            revisions_secs / floor_secs,
            revisions_queries as f64 / floor_queries as f64
        );
    }
}

/// One system-level export; worker tasks take up to 10 messages at a time
/// from SQS and handle them concurrently, as the worker function does.
/// Returns (resources, bytes) from the manifest and S3.
async fn export_once(
    engine: &Services,
    adapters: &AwsAdapters,
    workers: usize,
    timing: Timing,
    n: usize,
) -> (u64, u64) {
    let (stop_tx, tasks) = spawn_workers(engine, adapters, workers, timing);
    let input = KickoffInput {
        level: ExportLevel::System,
        request_url: "https://bench.example/fhir/$export".into(),
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
    // Generous (100k took 22 min), and a stall fails the run instead of
    // hanging it.
    let limit = Duration::from_secs(600).max(Duration::from_millis(30 * n as u64));
    let job = wait_until_completed(engine, &job_id, Some(limit), Duration::from_millis(250)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.unwrap();
    }
    // What the job recorded it consumed (`bulk-export-aws job-cost`). On
    // moto, capacity units are moto's fixed figures per call, not AWS's.
    let usage = engine.ports.jobs.usage(&job_id).await.unwrap();
    let report = bulk_export::domain::cost::report(
        &usage,
        n as u64,
        bulk_export::domain::cost::DEFAULT_WORKER_MEMORY_MB,
    );
    println!("job-cost   {report}");
    // Read units are charged on the bytes read (DynamoDB Local and AWS
    // report them; moto's are fixed per call).
    let read_units = usage.get(bulk_export::domain::usage::DYNAMODB_READ_UNITS);
    println!(
        "SUMMARY read units: {read_units:.1} for {n} resources = {:.4} per resource (the job's reads, bookkeeping included)",
        read_units / n as f64
    );
    // Read back after the clock stopped: the bytes written.
    let mut bytes = 0;
    let mut ids = std::collections::HashSet::new();
    for f in &job.files {
        let key = bulk_export::domain::job::artifact_key(&job_id, &f.name);
        let body = engine.ports.artifacts.get(&key).await.unwrap();
        bytes += body.len() as u64;
        let lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let mut count = 0;
        for line in lines {
            let r: Value = serde_json::from_slice(line).unwrap();
            ids.insert(format!("{}/{}", r["resourceType"], r["id"]));
            count += 1;
        }
        assert_eq!(
            count, f.count,
            "{}: lines in the file vs the manifest",
            f.name
        );
    }
    let listed: u64 = job.files.iter().map(|f| f.count).sum();
    assert_eq!(ids.len() as u64, listed, "each resource once in the files");
    // Nothing left behind by handlings that lost a race, once the delayed
    // clean-up has run (here at once: every worker has stopped): no open
    // upload, no object the manifest does not list.
    let collect = bulk_export::domain::job::WorkMessage::Collect {
        job_id: job_id.clone(),
    };
    let now = tokio::time::Instant::now();
    engine.worker.handle(&collect, now).await.unwrap();
    let prefix = bulk_export::domain::job::job_prefix(&job_id);
    let uploads = engine.ports.artifacts.list_uploads(&prefix).await.unwrap();
    assert!(uploads.is_empty(), "open uploads left: {uploads:?}");
    let mut objects = engine.ports.artifacts.list(&prefix).await.unwrap();
    // Each file of the manifest, and its gzip twin.
    objects.retain(|k| {
        !job.files.iter().any(|f| {
            k.ends_with(&format!("/{}", f.name))
                || (f.gzip && k.ends_with(&format!("/{}.gz", f.name)))
        })
    });
    assert!(
        objects.is_empty(),
        "objects outside the manifest: {objects:?}"
    );
    let parts = engine.ports.jobs.list_parts(&job_id).await.unwrap().len();
    let planning_ms = job
        .started_at
        .map_or(-1, |s| (s - job.created_at).num_milliseconds());
    println!(
        "           {parts} parts, {} files, planning {planning_ms} ms, {} deliveries came back (failed or lost a race)",
        job.files.len(),
        RETRIES.load(Ordering::Relaxed)
    );
    (job.files.iter().map(|f| f.count).sum(), bytes)
}

/// Polls the job until it completes; panics if it fails, or outlasts
/// `limit` (a stall fails the run instead of hanging it). A failed read is
/// retried: moto's calls can outlast the SDK's attempt timeout.
async fn wait_until_completed(
    engine: &Services,
    job_id: &str,
    limit: Option<Duration>,
    every: Duration,
) -> Job {
    let give_up = limit.map(|l| Instant::now() + l);
    loop {
        assert!(
            give_up.is_none_or(|g| Instant::now() < g),
            "the export did not finish within {limit:?}"
        );
        let job = match engine.ports.jobs.get_job(job_id).await {
            Ok(job) => job.expect("the job exists"),
            Err(e) => {
                eprintln!("poll: reading the job failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if job.state == JobState::Completed {
            return job;
        }
        assert_ne!(job.state, JobState::Failed, "{:?}", job.error);
        tokio::time::sleep(every).await;
    }
}

/// Worker tasks that take up to 10 messages at a time from SQS and handle
/// them concurrently, as the worker function does, until told to stop.
fn spawn_workers(
    engine: &Services,
    adapters: &AwsAdapters,
    workers: usize,
    timing: Timing,
) -> (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let engine = engine.clone();
        let queue = adapters.queue.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            while !*stop.borrow() {
                // moto at 100k+ items can take longer than the SDK's
                // attempt timeout: a failed call is retried, as the event
                // source mapping would (a message not deleted comes back).
                let deliveries = match queue.receive(10, timing.visibility).await {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("worker: receive failed, retrying: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if deliveries.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(timing.idle) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                let deadline = tokio::time::Instant::now() + timing.work;
                futures::future::join_all(deliveries.iter().map(|d| {
                    let (engine, queue) = (&engine, &queue);
                    async move {
                        // As the worker function settles a record: done is
                        // deleted; a failure or a lost race comes back
                        // after the delay the engine asks for.
                        let settled = match engine
                            .worker
                            .process(&d.message, d.receive_count, deadline)
                            .await
                        {
                            Disposition::Done => queue.delete(&d.receipt).await,
                            Disposition::RetryAfter(delay) => {
                                RETRIES.fetch_add(1, Ordering::Relaxed);
                                queue.retry_later(&d.receipt, delay).await
                            }
                        };
                        if let Err(e) = settled {
                            eprintln!("worker: settling a message failed (it comes back): {e}");
                        }
                    }
                }))
                .await;
            }
        }));
    }
    (stop_tx, tasks)
}

/// `$export-revisions` of the whole store (no change log); returns the rows
/// and the seconds it took.
async fn revisions_once(
    engine: &Services,
    adapters: &AwsAdapters,
    workers: usize,
    timing: Timing,
) -> (u64, f64) {
    let (stop_tx, tasks) = spawn_workers(engine, adapters, workers, timing);
    let t = Instant::now();
    let body = br#"{"startDate": 0, "endDate": 253402300799999}"#;
    let job_id = engine
        .revisions
        .start_revisions(
            &Caller::anonymous(),
            parse_revisions_request(body, chrono::Utc::now()).unwrap(),
            "bench".into(),
        )
        .await
        .unwrap();
    let job = wait_until_completed(engine, &job_id, None, Duration::from_millis(100)).await;
    let secs = t.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.unwrap();
    }
    (job.files.iter().map(|f| f.count).sum(), secs)
}

#[derive(Debug, Clone)]
struct CountQueries {
    count: Arc<AtomicU64>,
    table: String,
}

impl Intercept for CountQueries {
    fn name(&self) -> &'static str {
        "CountQueries"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input().downcast_ref::<QueryInput>();
        if input.is_some_and(|q| q.table_name.as_deref() == Some(&self.table)) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn floor_pk(i: usize) -> String {
    format!("FLOOR#{:02}", i % FLOOR_PARTITIONS)
}

async fn bare_puts(dynamo: &aws_sdk_dynamodb::Client, table: &str, bodies: &[String]) {
    let mut requests = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let put = PutRequest::builder()
            .item("pk", AttributeValue::S(floor_pk(i)))
            .item("sk", AttributeValue::S(format!("{i:09}")))
            .item("body", AttributeValue::S(body.clone()))
            .build()
            .unwrap();
        requests.push(WriteRequest::builder().put_request(put).build());
    }
    for batch in requests.chunks(25) {
        let mut pending = batch.to_vec();
        while !pending.is_empty() {
            let out = dynamo
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .unwrap();
            pending = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
        }
    }
}

/// Reads the floor items back (16 partitions at once) and puts each
/// partition's bodies to S3 as one NDJSON object. Returns (items, bytes).
async fn bare_read_and_upload(
    dynamo: &aws_sdk_dynamodb::Client,
    s3: &aws_sdk_s3::Client,
    names: &AwsNames,
) -> (usize, usize) {
    let results: Vec<(usize, usize)> = futures::stream::iter(0..FLOOR_PARTITIONS)
        .map(|p| async move {
            let mut ndjson = String::new();
            let mut count = 0;
            let mut start = None;
            loop {
                let out = dynamo
                    .query()
                    .table_name(&names.resources_table)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", AttributeValue::S(floor_pk(p)))
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .unwrap();
                for item in out.items() {
                    if let Some(AttributeValue::S(body)) = item.get("body") {
                        ndjson.push_str(body);
                        ndjson.push('\n');
                        count += 1;
                    }
                }
                match out.last_evaluated_key {
                    Some(k) => start = Some(k),
                    None => break,
                }
            }
            let bytes = ndjson.len();
            s3.put_object()
                .bucket(&names.bucket)
                .key(format!("jobs/floor/{p}.ndjson"))
                .body(ndjson.into_bytes().into())
                .send()
                .await
                .unwrap();
            (count, bytes)
        })
        .buffer_unordered(FLOOR_PARTITIONS)
        .collect()
        .await;
    results
        .iter()
        .fold((0, 0), |(c, b), (c2, b2)| (c + c2, b + b2))
}
