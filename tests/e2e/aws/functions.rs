//! The Lambda functions end to end on moto: API Gateway requests through the
//! HTTP handler every HTTP function runs, and the worker function's batch
//! handler fed from the real SQS queue the way the event source mapping
//! does (messages it reports as failed, or whose invocation dies, stay on
//! the queue and come back after the visibility timeout).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use bulk_export::aws::{AwsAdapters, SqsQueue};
use bulk_export::clock::OffsetClock;
use bulk_export::domain::job::{job_prefix, Position};
use bulk_export::engine::Engine;
use bulk_export::ports::{ArtifactStore, Clock, JobStore, PortResult, WorkQueue};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export::service::ServiceSettings;
use bulk_export_functions::settings::{AuthMode, Settings};
use bulk_export_functions::{http as lambda, sweeper, worker, Container};
use serde_json::Value;
use tokio::time::Instant;

use super::moto::fresh_stack;
use crate::faults::{ChunkHook, Gate, Intercepted};

const ORIGIN: &str = "https://api.example.test";
/// Visibility timeout of the test driver: how soon an unacknowledged
/// message comes back.
const VISIBILITY: Duration = Duration::from_secs(2);

struct Stack {
    container: Container,
    /// The worker's engine (the worker function builds the same).
    engine: Engine,
    queue: Arc<SqsQueue>,
    adapters: AwsAdapters,
    clock: Arc<OffsetClock>,
    /// Resource ids per type, as loaded.
    loaded: BTreeMap<String, Vec<String>>,
}

type Wrap = Box<dyn FnOnce(Arc<dyn ArtifactStore>) -> Arc<dyn ArtifactStore>>;

async fn stack(patients: usize, wrap: Option<Wrap>) -> Stack {
    let (sdk, names) = fresh_stack().await;
    let clock = Arc::new(OffsetClock::default());
    let adapters = AwsAdapters::new(&sdk, &names, 4, clock.clone() as Arc<dyn Clock>);
    let mut ports = adapters.ports();
    if let Some(wrap) = wrap {
        ports.artifacts = wrap(ports.artifacts);
    }
    let mut service = ServiceSettings::default();
    // Small files and chunks: many multipart uploads and checkpoints per
    // part (moto runs with S3_UPLOAD_PART_MIN_SIZE=1).
    service.engine.max_resources_per_file = 40;
    service.engine.min_chunk_bytes = 16 << 10;
    // Failed messages come back at once (the driver's visibility is 2 s).
    service.engine.retry_base = Duration::ZERO;
    let settings = Settings {
        names: names.clone(),
        shards: 4,
        auth: AuthMode::Open,
        signing_key: None,
        external_issuer: None,
        service,
    };
    let container = Container::from_parts(settings, ports, adapters.jobs.clone(), None).unwrap();
    let engine = container.engine(ORIGIN);
    let values: Vec<Value> = generate(SampleConfig { patients, seed: 7 }).collect();
    let mut loaded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &values {
        loaded
            .entry(v["resourceType"].as_str().unwrap().to_string())
            .or_default()
            .push(v["id"].as_str().unwrap().to_string());
    }
    bulk_export::loader::load_values(&engine, values.into_iter())
        .await
        .unwrap();
    let queue = adapters.queue.clone();
    Stack {
        container,
        engine,
        queue,
        adapters,
        clock,
        loaded,
    }
}

impl Stack {
    async fn call(&self, method: &str, path: &str) -> http::Response<lambda_http::Body> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{ORIGIN}{path}"))
            .header("host", "api.example.test")
            .header("x-forwarded-proto", "https")
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .body(lambda_http::Body::Empty)
            .unwrap();
        lambda::handle(&self.container, req).await
    }

    async fn kickoff(&self, path: &str) -> String {
        let resp = self.call("GET", path).await;
        assert_eq!(resp.status(), 202, "{:?}", resp.body());
        let location = resp.headers()["content-location"].to_str().unwrap();
        location.strip_prefix(ORIGIN).unwrap().to_string()
    }

    /// One worker invocation: receives up to 5 messages and hands them to
    /// the worker function; what it does not report failed is deleted, as
    /// the SQS event source does. Returns how many messages it was given.
    async fn invoke_worker(&self, budget: Duration, twice: bool) -> usize {
        let deliveries = self.queue.receive(5, VISIBILITY).await.unwrap();
        if deliveries.is_empty() {
            return 0;
        }
        let count = deliveries.len();
        let mut event = SqsEvent::default();
        for d in &deliveries {
            let mut m = SqsMessage::default();
            m.message_id = Some(d.receipt.clone());
            m.receipt_handle = Some(d.receipt.clone());
            m.body = Some(serde_json::to_string(&d.message).unwrap());
            m.attributes.insert(
                "ApproximateReceiveCount".into(),
                d.receive_count.to_string(),
            );
            event.records.push(m);
        }
        let deadline = Instant::now() + budget;
        let response = if twice {
            // Two workers given the same messages at once (a duplicate
            // delivery): both race through every checkpoint.
            let (a, b) = tokio::join!(
                worker::handle_batch(&self.engine, event.clone(), deadline),
                worker::handle_batch(&self.engine, event, deadline)
            );
            let mut a = a;
            a.batch_item_failures.extend(b.batch_item_failures);
            a
        } else {
            worker::handle_batch(&self.engine, event, deadline).await
        };
        for d in deliveries {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == d.receipt);
            if !failed {
                self.queue.delete(&d.receipt).await.unwrap();
            }
        }
        count
    }

    /// Runs the worker until the status answers 200; returns the manifest.
    async fn drive_to_manifest(&self, status: &str, twice: bool) -> Value {
        self.drive_within(status, twice, Duration::from_secs(20))
            .await
            .0
    }

    /// Runs the worker, each invocation with `budget` of work time, until
    /// the status answers 200; returns the manifest and how many work
    /// messages were handled.
    async fn drive_within(&self, status: &str, twice: bool, budget: Duration) -> (Value, usize) {
        let handled = AtomicUsize::new(0);
        // A deadline generous enough for a machine busy with other work;
        // the loop ends as soon as the manifest is there.
        let give_up = Instant::now() + Duration::from_secs(300);
        while Instant::now() < give_up {
            let resp = self.call("GET", status).await;
            if resp.status() == 200 {
                let manifest = serde_json::from_slice(resp.body()).unwrap();
                return (manifest, handled.into_inner());
            }
            assert_eq!(resp.status(), 202, "{:?}", resp.body());
            let n = self.invoke_worker(budget, twice).await;
            handled.fetch_add(n, Ordering::SeqCst);
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!("the export did not finish within 300 s");
    }

    /// Follows a manifest URL: 303 from the files function, then the
    /// presigned S3 URL. Returns the lines.
    async fn download(&self, url: &str) -> Vec<Value> {
        let resp = self.call("GET", url.strip_prefix(ORIGIN).unwrap()).await;
        assert_eq!(resp.status(), 303, "{:?}", resp.body());
        let link = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(link.contains("X-Amz-Signature="), "{link}");
        let body = reqwest::get(&link).await.unwrap();
        assert_eq!(body.status(), 200);
        let text = body.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every output resource id per type; panics on a duplicate.
    async fn exported(&self, manifest: &Value) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in manifest["output"].as_array().unwrap() {
            let lines = self.download(entry["url"].as_str().unwrap()).await;
            assert_eq!(entry["count"], lines.len(), "the manifest counts the lines");
            let ids = out
                .entry(entry["type"].as_str().unwrap().to_string())
                .or_default();
            ids.extend(lines.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        }
        for (t, ids) in out.iter_mut() {
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(n, ids.len(), "{t}: no resource twice");
        }
        out
    }

    fn expected(&self) -> BTreeMap<String, Vec<String>> {
        let mut e = self.loaded.clone();
        e.values_mut().for_each(|ids| ids.sort());
        e
    }

    async fn leftovers(&self, job_id: &str) -> (Vec<String>, Vec<String>) {
        let prefix = job_prefix(job_id);
        let a = &self.adapters.artifacts;
        (
            a.list(&prefix).await.unwrap(),
            a.list_uploads(&prefix).await.unwrap(),
        )
    }
}

fn job_id(status: &str) -> String {
    status.rsplit('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_export_runs_through_the_functions() {
    let s = stack(6, None).await;
    let status = s.kickoff("/fhir/$export").await;
    let first = s.call("GET", &status).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().contains_key("retry-after"));
    assert!(first.headers().contains_key("x-progress"));
    let manifest = s.drive_to_manifest(&status, false).await;
    assert_eq!(s.exported(&manifest).await, s.expected());
    assert!(
        manifest["output"].as_array().unwrap().len() > s.loaded.len(),
        "types split into files of at most 40 resources"
    );
    assert_eq!(s.leftovers(&job_id(&status)).await.1, Vec::<String>::new());
}

/// A hook that lets `pass` chunk uploads through, then holds the rest at
/// the gate.
struct HoldAfter {
    pass: usize,
    calls: AtomicUsize,
    gate: Arc<Gate>,
}

#[async_trait]
impl ChunkHook for HoldAfter {
    async fn before(&self) -> PortResult<usize> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.pass {
            self.gate.before().await?;
        }
        Ok(n)
    }
    async fn after(&self, _n: usize) -> PortResult<()> {
        Ok(())
    }
}

fn hold_after(pass: usize, gate: &Arc<Gate>) -> Wrap {
    let gate = gate.clone();
    Box::new(move |inner| {
        Arc::new(Intercepted {
            inner,
            hook: HoldAfter {
                pass,
                calls: AtomicUsize::new(0),
                gate,
            },
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_part_is_redelivered_and_resumes() {
    let gate = Gate::new();
    let s = stack(6, Some(hold_after(3, &gate))).await;
    let status = s.kickoff("/fhir/$export?_type=Observation,Patient").await;
    // The plan message, then parts until one is held mid-way (after 3
    // chunk uploads): that invocation is killed, its messages undeleted.
    assert_eq!(s.invoke_worker(Duration::from_secs(20), false).await, 1);
    let killed = {
        let s = &s;
        let run = async move { while s.invoke_worker(Duration::from_secs(20), false).await > 0 {} };
        tokio::select! {
            _ = run => false,
            _ = gate.reached() => true,
        }
    };
    assert!(killed, "an invocation was held mid-part and killed");
    let job = job_id(&status);
    let parts = s.adapters.jobs.list_parts(&job).await.unwrap();
    assert!(
        parts
            .iter()
            .any(|p| !p.done && p.checkpoint.position != Position::Start),
        "a part was killed after a checkpoint: {parts:?}"
    );
    gate.open();
    // After the visibility timeout the killed messages come back and resume
    // from their checkpoints.
    let manifest = s.drive_to_manifest(&status, false).await;
    let exported = s.exported(&manifest).await;
    let expected = s.expected();
    assert_eq!(exported["Observation"], expected["Observation"]);
    assert_eq!(exported["Patient"], expected["Patient"]);
    assert_eq!(s.leftovers(&job).await.1, Vec::<String>::new());
}

/// Every invocation out of time at once: each part reads one page,
/// checkpoints, and queues its continuation, which resumes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_out_of_time_checkpoints_and_queues_its_continuation() {
    let mut s = stack(4, None).await;
    let mut config = (*s.engine.config).clone();
    config.page_size = 20;
    s.engine = Engine::new(s.engine.ports.clone(), config);
    let status = s.kickoff("/fhir/$export?_type=Observation,Patient").await;
    let (manifest, handled) = s.drive_within(&status, false, Duration::ZERO).await;
    let exported = s.exported(&manifest).await;
    let expected = s.expected();
    assert_eq!(exported["Observation"], expected["Observation"]);
    assert_eq!(exported["Patient"], expected["Patient"]);
    let parts = s.adapters.jobs.list_parts(&job_id(&status)).await.unwrap();
    assert!(
        handled > parts.len() + 1,
        "continuations were queued: {handled} messages for {} parts",
        parts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_every_part_export_each_resource_once() {
    let s = stack(4, None).await;
    let status = s.kickoff("/fhir/$export").await;
    let manifest = s.drive_to_manifest(&status, true).await;
    assert_eq!(s.exported(&manifest).await, s.expected());
    let (objects, uploads) = s.leftovers(&job_id(&status)).await;
    assert!(uploads.is_empty(), "the losers' uploads are aborted");
    let listed =
        manifest["output"].as_array().unwrap().len() + manifest["error"].as_array().unwrap().len();
    assert_eq!(objects.len(), listed, "no stray objects: {objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_export_leaves_no_objects_and_no_open_uploads() {
    let gate = Gate::new();
    let s = stack(6, Some(hold_after(3, &gate))).await;
    let status = s.kickoff("/fhir/$export").await;
    let id = job_id(&status);
    let work = async { while s.invoke_worker(Duration::from_secs(20), false).await > 0 {} };
    let cancel = async {
        gate.reached().await;
        let (objects, uploads) = s.leftovers(&id).await;
        assert!(
            !objects.is_empty() || !uploads.is_empty(),
            "the export has written something before the cancel"
        );
        let resp = s.call("DELETE", &status).await;
        assert_eq!(resp.status(), 202);
        gate.open();
    };
    tokio::join!(work, cancel);
    // Drain what is left (messages of a cancelled job end quickly).
    tokio::time::sleep(VISIBILITY).await;
    while s.invoke_worker(Duration::from_secs(20), false).await > 0 {}
    let (objects, uploads) = s.leftovers(&id).await;
    assert_eq!(objects, Vec::<String>::new(), "no objects");
    assert_eq!(uploads, Vec::<String>::new(), "no open multipart uploads");
    assert_eq!(s.call("GET", &status).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_exports_answer_404_and_the_sweeper_removes_them() {
    let s = stack(2, None).await;
    let status = s.kickoff("/fhir/$export?_type=Patient").await;
    let manifest = s.drive_to_manifest(&status, false).await;
    let id = job_id(&status);
    assert!(!s.leftovers(&id).await.0.is_empty());
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    // moto never deletes TTL-expired items: expiry must hold on its own.
    s.clock.advance(chrono::Duration::days(8));
    assert_eq!(s.call("GET", &status).await.status(), 404);
    assert_eq!(
        s.call("GET", file.strip_prefix(ORIGIN).unwrap())
            .await
            .status(),
        404
    );
    let report = sweeper::sweep(&s.engine).await.unwrap();
    assert!(report["removed"].as_u64().unwrap() >= 1, "{report}");
    assert!(s.adapters.jobs.get_job(&id).await.unwrap().is_none());
    assert_eq!(s.leftovers(&id).await, (vec![], vec![]));
}
