//! The Lambda functions end to end on moto: API Gateway requests through the
//! HTTP handler every HTTP function runs, and the worker function's batch
//! handler fed from the real SQS queue the way the event source mapping
//! does (messages it reports as failed, or whose invocation dies, stay on
//! the queue and come back after the visibility timeout).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use bulk_export::aws::emf::EmfLog;
use bulk_export::aws::{AwsAdapters, SharedInterceptor, SqsQueue};
use bulk_export::clock::OffsetClock;
use bulk_export::domain::job::{job_prefix, PartSpec, Position};
use bulk_export::domain::usage;
use bulk_export::engine::Services;
use bulk_export::ports::{ArtifactStore, Clock, JobEvent, JobStore, ResourceStore, WorkQueue};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export::service::ServiceSettings;
use bulk_export_functions::settings::{AuthMode, Settings};
use bulk_export_functions::{http as lambda, sweeper, worker, Container};
use serde_json::Value;
use tokio::time::Instant;

use super::moto::fresh_stack;
use crate::faults::{Gate, HoldAfter, Intercepted};

const ORIGIN: &str = "https://api.example.test";
/// Visibility timeout of the test driver: how soon an unacknowledged
/// message comes back.
const VISIBILITY: Duration = Duration::from_secs(2);

struct Stack {
    container: Container,
    /// The worker's engine (the worker function builds the same).
    engine: Services,
    queue: Arc<SqsQueue>,
    adapters: AwsAdapters,
    clock: Arc<OffsetClock>,
    /// Resource ids per type, as loaded.
    loaded: BTreeMap<String, Vec<String>>,
}

type Wrap = Box<dyn FnOnce(Arc<dyn ArtifactStore>) -> Arc<dyn ArtifactStore>>;

async fn stack(patients: usize, wrap: Option<Wrap>) -> Stack {
    stack_tuned(patients, wrap, |_| {}).await
}

/// A small full export is read in mixed parts, each in one step: the tests
/// of checkpoints and resumption within a part ask for per-type parts.
fn per_type_parts(service: &mut ServiceSettings) {
    service.engine.mixed_export_max_resources = 0;
}

/// A stack whose service settings `tune` adjusts after the test defaults.
async fn stack_tuned(
    patients: usize,
    wrap: Option<Wrap>,
    tune: impl FnOnce(&mut ServiceSettings),
) -> Stack {
    stack_observed(patients, wrap, tune, None).await
}

/// The same, with `observer` on every AWS client.
async fn stack_observed(
    patients: usize,
    wrap: Option<Wrap>,
    tune: impl FnOnce(&mut ServiceSettings),
    observer: Option<SharedInterceptor>,
) -> Stack {
    let (sdk, names) = fresh_stack().await;
    let clock = Arc::new(OffsetClock::default());
    let adapters =
        AwsAdapters::observed(&sdk, &names, 4, clock.clone() as Arc<dyn Clock>, observer);
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
    // The driver polls and then runs the worker itself: a held status
    // request would only wait for work nobody is doing.
    service.engine.status_wait = Duration::ZERO;
    // Identical kick-offs in one stack mean separate exports.
    service.engine.reuse_window = Duration::ZERO;
    tune(&mut service);
    let settings = Settings {
        names: names.clone(),
        shards: 4,
        auth: AuthMode::Open,
        signing_key: None,
        external_issuer: None,
        event_bus: None,
        service,
    };
    let container = Container::from_parts(settings, ports, adapters.jobs.clone(), None).unwrap();
    let engine = container.services(ORIGIN);
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
        self.send(method, path, "application/fhir+json", None).await
    }

    /// A request through the HTTP functions' handler, with this `Accept`
    /// (none if empty) and, if given, a FHIR JSON body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<Value>,
    ) -> http::Response<lambda_http::Body> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{ORIGIN}{path}"))
            .header("host", "api.example.test")
            .header("x-forwarded-proto", "https")
            .header("prefer", "respond-async")
            .header("content-type", "application/fhir+json");
        if !accept.is_empty() {
            req = req.header("accept", accept);
        }
        let body = match body {
            Some(b) => lambda_http::Body::Text(b.to_string()),
            None => lambda_http::Body::Empty,
        };
        lambda::handle(&self.container, req.body(body).unwrap()).await
    }

    /// A POST kick-off with these Parameters; returns the status path.
    async fn kickoff_post(&self, path: &str, parameters: Value) -> String {
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": parameters});
        let resp = self
            .send("POST", path, "application/fhir+json", Some(body))
            .await;
        assert_eq!(resp.status(), 202, "{:?}", resp.body());
        let location = resp.headers()["content-location"].to_str().unwrap();
        location.strip_prefix(ORIGIN).unwrap().to_string()
    }

    async fn kickoff(&self, path: &str) -> String {
        let resp = self.call("GET", path).await;
        assert_eq!(resp.status(), 202, "{:?}", resp.body());
        let location = resp.headers()["content-location"].to_str().unwrap();
        location.strip_prefix(ORIGIN).unwrap().to_string()
    }

    async fn invoke_worker(&self, budget: Duration, twice: bool) -> usize {
        invoke_worker(&self.engine, &self.queue, budget, twice).await
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
        let job = self.adapters.jobs.get_job(&job_id(status)).await.unwrap();
        let parts = self
            .adapters
            .jobs
            .list_parts(&job_id(status))
            .await
            .unwrap();
        panic!(
            "the export did not finish within 300 s: job {:?}, parts (done, version, position) {:?}",
            job.map(|j| (j.state, j.parts_total, j.parts_remaining)),
            parts
                .iter()
                .map(|p| (p.done, p.version, p.checkpoint.position.clone()))
                .collect::<Vec<_>>()
        );
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

/// One worker invocation: receives up to 5 messages and hands them to
/// the worker function; what it does not report failed is deleted, as
/// the SQS event source does. Returns how many messages it was given.
pub(super) async fn invoke_worker(
    engine: &Services,
    queue: &SqsQueue,
    budget: Duration,
    twice: bool,
) -> usize {
    let deliveries = queue.receive(5, VISIBILITY).await.unwrap();
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
            worker::handle_batch(engine, event.clone(), deadline),
            worker::handle_batch(engine, event, deadline)
        );
        let mut a = a;
        a.batch_item_failures.extend(b.batch_item_failures);
        a
    } else {
        worker::handle_batch(engine, event, deadline).await
    };
    for d in deliveries {
        let failed = response
            .batch_item_failures
            .iter()
            .any(|f| f.item_identifier == d.receipt);
        if !failed {
            queue.delete(&d.receipt).await.unwrap();
        }
    }
    count
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

fn hold_after(pass: usize, gate: &Arc<Gate>) -> Wrap {
    let gate = gate.clone();
    Box::new(move |inner| {
        Arc::new(Intercepted {
            inner,
            hook: HoldAfter::new(pass, gate),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_part_is_redelivered_and_resumes() {
    let gate = Gate::new();
    let s = stack_tuned(6, Some(hold_after(3, &gate)), per_type_parts).await;
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
    let mut s = stack_tuned(4, None, per_type_parts).await;
    let mut config = (*s.engine.config).clone();
    config.page_size = 20;
    s.engine = Services::new(s.engine.ports.clone(), config);
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

/// A plan of one part runs it in the same handling: the export completes
/// with the plan message alone, no second queue hop (or invocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_part_export_runs_in_the_handling_that_planned_it() {
    let s = stack(4, None).await;
    let status = s.kickoff("/fhir/$export?_type=Patient").await;
    let (manifest, handled) = s
        .drive_within(&status, false, Duration::from_secs(60))
        .await;
    let parts = s.adapters.jobs.list_parts(&job_id(&status)).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(handled, 1, "the plan message alone");
    assert_eq!(
        s.exported(&manifest).await["Patient"],
        s.expected()["Patient"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_every_part_export_each_resource_once() {
    let s = stack_tuned(4, None, per_type_parts).await;
    let status = s.kickoff("/fhir/$export").await;
    let manifest = s.drive_to_manifest(&status, true).await;
    assert_eq!(s.exported(&manifest).await, s.expected());
    let (objects, uploads) = s.leftovers(&job_id(&status)).await;
    assert!(uploads.is_empty(), "the losers' uploads are aborted");
    // Each output file and its gzip twin, and the error file.
    let listed = 2 * manifest["output"].as_array().unwrap().len()
        + manifest["error"].as_array().unwrap().len();
    assert_eq!(objects.len(), listed, "no stray objects: {objects:?}");
}

/// Counts the Query calls on the resource table (its name starts with
/// `resources-`, see `fresh_stack`).
#[derive(Clone, Debug, Default)]
struct CountResourceQueries(Arc<AtomicUsize>);

impl aws_sdk_dynamodb::config::Intercept for CountResourceQueries {
    fn name(&self) -> &'static str {
        "CountResourceQueries"
    }

    fn read_before_execution(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<
            '_,
        >,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let query = context
            .input()
            .downcast_ref::<aws_sdk_dynamodb::operation::query::QueryInput>();
        if query.is_some_and(|q| q.table_name().is_some_and(|t| t.starts_with("resources-"))) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A small full export reads its types together: one Query per shard
/// (4 here, each a single page), where per-type parts make one per type and
/// shard. Every resource is exported once, in files of its own type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_full_export_reads_its_types_together() {
    let queries = CountResourceQueries::default();
    let s = stack_observed(
        6,
        None,
        |_| {},
        Some(SharedInterceptor::new(queries.clone())),
    )
    .await;
    let mut streams = 0;
    for t in s.loaded.keys() {
        let counts = s.adapters.resources.shard_counts(t).await.unwrap().unwrap();
        streams += counts.iter().filter(|&&c| c > 0).count();
    }
    assert!(
        streams > 4 * 4,
        "per-type parts would make {streams} Queries"
    );

    let before = queries.0.load(Ordering::SeqCst);
    let status = s.kickoff("/fhir/$export").await;
    let manifest = s.drive_to_manifest(&status, false).await;
    assert_eq!(
        queries.0.load(Ordering::SeqCst) - before,
        4,
        "one Query per shard"
    );
    assert_eq!(s.exported(&manifest).await, s.expected());
    let parts = s.adapters.jobs.list_parts(&job_id(&status)).await.unwrap();
    assert_eq!(parts.len(), 1, "one mixed part: {parts:?}");
    // A type's resources from every shard go to its files in one stretch:
    // they roll over at 40 lines (the stack's setting), not per shard.
    for (t, ids) in &s.loaded {
        let files = manifest["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == t.as_str())
            .count();
        assert_eq!(
            files,
            ids.len().div_ceil(40),
            "{t}: {} resources",
            ids.len()
        );
    }
}

/// Mixed parts under duplicate delivery, for requested types with a stored
/// type between them: the run after the gap is read together, the type
/// before it on its own, and each resource is exported once with nothing
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_mixed_parts_export_each_resource_once() {
    let s = stack_tuned(4, None, |service| {
        // Parts of a shard or two: several mixed parts.
        service.engine.part_target_resources = 40;
    })
    .await;
    let wanted = ["Condition", "Observation", "Organization", "Patient"];
    let status = s
        .kickoff(&format!("/fhir/$export?_type={}", wanted.join(",")))
        .await;
    let manifest = s.drive_to_manifest(&status, true).await;
    let mut expected = s.expected();
    expected.retain(|t, _| wanted.contains(&t.as_str()));
    assert_eq!(s.exported(&manifest).await, expected);
    let parts = s.adapters.jobs.list_parts(&job_id(&status)).await.unwrap();
    let mixed: Vec<_> = parts
        .iter()
        .filter_map(|p| match &p.spec {
            PartSpec::Mixed { types, .. } => Some(types.clone()),
            _ => None,
        })
        .collect();
    assert!(mixed.len() > 1, "{parts:?}");
    assert!(
        mixed
            .iter()
            .all(|t| t == &["Observation", "Organization", "Patient"]),
        "Condition is read alone, Encounter lies between: {mixed:?}"
    );
    let (objects, uploads) = s.leftovers(&job_id(&status)).await;
    assert!(uploads.is_empty(), "the losers' uploads are aborted");
    let listed = 2 * manifest["output"].as_array().unwrap().len()
        + manifest["error"].as_array().unwrap().len();
    assert_eq!(objects.len(), listed, "no stray objects: {objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_export_leaves_no_objects_and_no_open_uploads() {
    let gate = Gate::new();
    let s = stack_tuned(6, Some(hold_after(3, &gate)), per_type_parts).await;
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

/// The conformance fixes through the functions: a kick-off whose `Accept`
/// does not allow FHIR JSON is refused at every level, and `patient` names
/// that are not in the export are reported in the manifest, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_accept_and_unknown_patients_through_the_functions() {
    let s = stack(3, None).await;
    let parameters = serde_json::json!({"resourceType": "Parameters", "parameter": []});
    let group = format!("/fhir/Group/{}/$export", s.loaded["Group"][0]);
    for path in ["/fhir/$export", "/fhir/Patient/$export", group.as_str()] {
        for (method, body) in [("GET", None), ("POST", Some(parameters.clone()))] {
            for accept in ["application/json", ""] {
                let resp = s.send(method, path, accept, body.clone()).await;
                assert_eq!(resp.status(), 400, "{method} {path} Accept: {accept}");
                let oo: Value = serde_json::from_slice(resp.body()).unwrap();
                assert_eq!(oo["resourceType"], "OperationOutcome");
            }
        }
    }

    let mut patients = s.loaded["Patient"].clone();
    patients.sort();
    let named = serde_json::json!([
        {"name": "patient", "valueReference": {"reference": format!("Patient/{}", patients[0])}},
        {"name": "patient", "valueReference": {"reference": "Patient/nobody"}},
        {"name": "_type", "valueString": "Patient"}
    ]);
    let status = s.kickoff_post("/fhir/Patient/$export", named).await;
    let manifest = s.drive_to_manifest(&status, false).await;
    assert_eq!(
        s.exported(&manifest).await["Patient"],
        [patients[0].clone()]
    );
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    let outcomes = s.download(errors[0]["url"].as_str().unwrap()).await;
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Patient/nobody"));
}

/// SMART token requests through the functions, the replay guard on
/// DynamoDB: wide scopes are narrowed to read access and named; a
/// mutation-only scope is `invalid_scope` and does not spend the assertion;
/// an assertion that got a token cannot get another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_and_one_time_assertions_on_dynamodb() {
    use crate::auth::{assertion, es384, urlencode, ASSERTION_TYPE};
    use bulk_export::auth::{ClientRegistration, TokenIssuer};
    use bulk_export::ports::ClientStore;
    use bulk_export_functions::settings::SigningKey;

    let (sdk, names) = fresh_stack().await;
    let clock = Arc::new(OffsetClock::default());
    let adapters = AwsAdapters::new(&sdk, &names, 4, clock.clone() as Arc<dyn Clock>);
    let pem = TokenIssuer::generate_pem();
    let settings = Settings {
        names: names.clone(),
        shards: 4,
        auth: AuthMode::Smart,
        signing_key: Some(SigningKey::Pem(pem.clone())),
        external_issuer: None,
        event_bus: None,
        service: ServiceSettings::default(),
    };
    let container =
        Container::from_parts(settings, adapters.ports(), adapters.jobs.clone(), Some(pem))
            .unwrap();
    let key = es384("k1");
    adapters
        .jobs
        .put_client(&ClientRegistration {
            client_id: "lims".into(),
            jwks: Some(serde_json::json!({"keys": [key.jwk.clone()]})),
            jwks_url: None,
            scope: "system/*.read".into(),
            groups: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let get = |path: &str| {
        http::Request::builder()
            .uri(format!("{ORIGIN}{path}"))
            .header("host", "api.example.test")
            .header("x-forwarded-proto", "https")
            .body(lambda_http::Body::Empty)
            .unwrap()
    };
    let conf = lambda::handle(&container, get("/fhir/.well-known/smart-configuration")).await;
    let conf: Value = serde_json::from_slice(conf.body()).unwrap();
    let token_url = conf["token_endpoint"].as_str().unwrap().to_string();
    let exchange = |signed: String, scope: &str| {
        let form = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}&scope={}",
            urlencode(ASSERTION_TYPE),
            urlencode(&signed),
            urlencode(scope)
        );
        let req = http::Request::builder()
            .method("POST")
            .uri(&token_url)
            .header("host", "api.example.test")
            .header("x-forwarded-proto", "https")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(lambda_http::Body::Text(form))
            .unwrap();
        let container = &container;
        async move {
            let resp = lambda::handle(container, req).await;
            let body: Value = serde_json::from_slice(resp.body()).unwrap();
            (resp.status().as_u16(), body)
        }
    };
    let fresh = || assertion(&key, "lims", &token_url, |_, _| {});

    for (asked, granted) in [
        ("system/*.*", "system/*.read"),
        ("system/*.cruds", "system/*.rs"),
    ] {
        let (status, body) = exchange(fresh(), asked).await;
        assert_eq!(status, 200, "{asked}: {body}");
        assert_eq!(body["scope"], granted);
    }
    let once = fresh();
    let (status, body) = exchange(once.clone(), "system/Patient.cu").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = exchange(once.clone(), "system/Patient.read").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = exchange(once, "system/Patient.read").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

/// The status function holds a request for an export in progress and
/// answers with the manifest as soon as the worker completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_function_holds_a_poll_until_the_export_completes() {
    let s = stack(3, None).await;
    let mut service = ServiceSettings::default();
    // Generous, so a busy machine cannot make the held poll miss the end;
    // a quarter-second poll keeps the shared emulator's load small.
    service.engine.status_wait = Duration::from_secs(300);
    service.engine.status_wait_poll = Duration::from_millis(250);
    let settings = Settings {
        names: s.container.settings.names.clone(),
        shards: 4,
        auth: AuthMode::Open,
        signing_key: None,
        external_issuer: None,
        event_bus: None,
        service,
    };
    let holding = Arc::new(
        Container::from_parts(settings, s.adapters.ports(), s.adapters.jobs.clone(), None).unwrap(),
    );
    let status = s.kickoff("/fhir/$export").await;
    // The held request runs in its own task, as it would in its own
    // function instance.
    let held = tokio::spawn({
        let (holding, status) = (holding.clone(), status.clone());
        async move {
            let req = http::Request::builder()
                .uri(format!("{ORIGIN}{status}"))
                .header("host", "api.example.test")
                .header("x-forwarded-proto", "https")
                .body(lambda_http::Body::Empty)
                .unwrap();
            lambda::handle(&holding, req).await
        }
    });
    let work = async {
        // Nothing completes the export but this worker: the held poll can
        // only answer 200 by seeing the worker's result.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let give_up = Instant::now() + Duration::from_secs(240);
        loop {
            if s.invoke_worker(Duration::from_secs(20), false).await == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let job = s.adapters.jobs.get_job(&job_id(&status)).await.unwrap();
            if job.as_ref().is_some_and(|j| j.completed_at.is_some()) {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "the export did not complete: {:?}",
                job.map(|j| (j.state, j.parts_remaining))
            );
        }
    };
    work.await;
    let resp = held.await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    let manifest: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(s.exported(&manifest).await, s.expected());
}

/// `includeAssociatedData` through the functions: the latest Provenance of
/// each exported resource is added, none of an unexported one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_associated_data_through_the_functions() {
    let s = stack(3, None).await;
    let obs = s.loaded["Observation"][0].clone();
    let org = s.loaded["Organization"][0].clone();
    let provenance = |id: &str, target: String, recorded: &str| {
        serde_json::json!({"resourceType": "Provenance", "id": id, "recorded": recorded,
            "target": [{"reference": target}]})
    };
    bulk_export::loader::load_values(
        &s.engine,
        [
            provenance("old", format!("Observation/{obs}"), "2020-01-01T00:00:00Z"),
            provenance("new", format!("Observation/{obs}"), "2021-01-01T00:00:00Z"),
            provenance("org", format!("Organization/{org}"), "2022-01-01T00:00:00Z"),
        ]
        .into_iter(),
    )
    .await
    .unwrap();
    for (value, want) in [
        ("LatestProvenanceResources", vec!["new"]),
        ("RelevantProvenanceResources", vec!["new", "old"]),
    ] {
        let status = s
            .kickoff(&format!(
                "/fhir/$export?_type=Observation&includeAssociatedData={value}"
            ))
            .await;
        let manifest = s.drive_to_manifest(&status, false).await;
        let exported = s.exported(&manifest).await;
        assert_eq!(exported["Observation"], s.expected()["Observation"]);
        assert_eq!(exported["Provenance"], want, "{value}");
    }
}

/// Job reuse through the functions, on DynamoDB's `by_reuse_key` index: an
/// identical kick-off gets the export in progress; `Cache-Control:
/// no-cache` or other parameters get a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_kickoff_reuses_the_export_in_progress() {
    let s = stack(2, None).await;
    let mut service = ServiceSettings::default();
    service.engine.status_wait = Duration::ZERO;
    let settings = Settings {
        names: s.container.settings.names.clone(),
        shards: 4,
        auth: AuthMode::Open,
        signing_key: None,
        external_issuer: None,
        event_bus: None,
        service,
    };
    let reusing =
        Container::from_parts(settings, s.adapters.ports(), s.adapters.jobs.clone(), None).unwrap();
    let kickoff = |path: &'static str, no_cache: bool| {
        let mut req = http::Request::builder()
            .uri(format!("{ORIGIN}{path}"))
            .header("host", "api.example.test")
            .header("x-forwarded-proto", "https")
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async");
        if no_cache {
            req = req.header("cache-control", "no-cache");
        }
        let req = req.body(lambda_http::Body::Empty).unwrap();
        let reusing = &reusing;
        async move {
            let resp = lambda::handle(reusing, req).await;
            assert_eq!(resp.status(), 202, "{:?}", resp.body());
            resp.headers()["content-location"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    // (moto's indexes are consistent at once; DynamoDB's lag a moment, so
    // there two kick-offs in the same instant may both start an export.)
    let first = kickoff("/fhir/$export?_type=Patient", false).await;
    assert_eq!(kickoff("/fhir/$export?_type=Patient", false).await, first);
    let fresh = kickoff("/fhir/$export?_type=Patient", true).await;
    assert_ne!(fresh, first, "no-cache starts a new export");
    let other = kickoff("/fhir/$export?_type=Observation", false).await;
    assert!(other != first && other != fresh);
    assert_eq!(
        kickoff("/fhir/$export?_type=Patient", false).await,
        fresh,
        "the newest identical export"
    );
}

/// `allowPartialManifests` through the functions: while the export runs,
/// status answers 202 with a page of the files already written; following
/// `next` links to the end lists every file exactly once, and together they
/// hold the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_manifests_through_the_functions() {
    let s = stack_tuned(6, None, |service| {
        per_type_parts(service);
        service.engine.page_size = 20;
        service.engine.manifest_page_files = 3;
    })
    .await;
    let status = s.kickoff("/fhir/$export?allowPartialManifests=true").await;
    let mut page_path = status.clone();
    let mut listed: Vec<Value> = Vec::new();
    let mut early_pages = 0;
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < give_up, "the export did not finish");
        let resp = s.call("GET", &page_path).await;
        let code = resp.status();
        assert!(code == 200 || code == 202, "{code}: {:?}", resp.body());
        let page: Option<Value> =
            (!resp.body().is_empty()).then(|| serde_json::from_slice(resp.body()).unwrap());
        if let Some(page) = &page {
            let files = page["output"].as_array().unwrap();
            assert!(files.len() <= 3, "a page lists at most 3 files");
            listed.extend(files.iter().cloned());
            if code == 202 {
                early_pages += 1;
                assert!(!files.is_empty());
            }
        }
        let next = page
            .as_ref()
            .and_then(|p| p["link"][0]["url"].as_str().map(str::to_string));
        match (code.as_u16(), next) {
            (200, None) => break,
            (_, Some(next)) => {
                assert_eq!(page.as_ref().unwrap()["link"][0]["relation"], "next");
                page_path = next.strip_prefix(ORIGIN).unwrap().to_string();
            }
            (_, None) => {}
        }
        if code == 202 {
            s.invoke_worker(Duration::ZERO, false).await;
        }
    }
    assert!(
        early_pages > 0,
        "some files were listed before the export completed"
    );
    let mut urls: Vec<&str> = listed.iter().map(|f| f["url"].as_str().unwrap()).collect();
    let n = urls.len();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), n, "no file on two pages");
    let all = serde_json::json!({ "output": listed });
    assert_eq!(s.exported(&all).await, s.expected());
    // A cursor that is not one is refused.
    let resp = s.call("GET", &format!("{status}?page=x")).await;
    assert_eq!(resp.status(), 400);
}

/// `organizeOutputBy=Patient` through the functions, each message handled
/// by two racing workers: one block per patient, opened by its header and
/// its Patient, and the same resources as the plain Group export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_organized_by_patient_through_the_functions() {
    let s = stack_tuned(5, None, |service| {
        service.engine.page_size = 4;
        service.engine.patients_per_part = 2;
    })
    .await;
    let group = format!("/fhir/Group/{}/$export", s.loaded["Group"][0]);
    let plain = s.kickoff(&group).await;
    let plain = s.drive_to_manifest(&plain, false).await;
    let status = s
        .kickoff(&format!("{group}?organizeOutputBy=Patient"))
        .await;
    let manifest = s.drive_to_manifest(&status, true).await;
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let mut exported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut blocks: Vec<String> = Vec::new();
    for entry in manifest["output"].as_array().unwrap() {
        assert!(entry.get("type").is_none(), "{entry}");
        let lines = s.download(entry["url"].as_str().unwrap()).await;
        assert_eq!(entry["count"], lines.len());
        let mut previous: Option<&Value> = None;
        for line in &lines {
            let t = line["resourceType"].as_str().unwrap();
            if t == "Parameters" {
                let reference = &line["parameter"][0]["valueReference"]["reference"];
                blocks.push(reference.as_str().unwrap().to_string());
            } else {
                assert!(previous.is_some(), "a file opens with a header");
                if t == "Patient" {
                    assert_eq!(previous.unwrap()["resourceType"], "Parameters");
                    assert_eq!(
                        format!("Patient/{}", line["id"].as_str().unwrap()),
                        *blocks.last().unwrap()
                    );
                }
                exported
                    .entry(t.to_string())
                    .or_default()
                    .push(line["id"].as_str().unwrap().to_string());
            }
            previous = Some(line);
        }
    }
    let n = blocks.len();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), n, "one block per patient");
    exported.values_mut().for_each(|ids| ids.sort());
    assert_eq!(exported, s.exported(&plain).await);
}

/// Compressed downloads through the functions and S3: with
/// `Accept-Encoding: gzip` the file function redirects to the gzip twin,
/// which S3 serves with `Content-Encoding: gzip`; it inflates to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_sent_gzipped_through_the_functions() {
    use std::io::Read;
    let s = stack(3, None).await;
    let status = s.kickoff("/fhir/$export?_type=Observation").await;
    let manifest = s.drive_to_manifest(&status, false).await;
    let entry = &manifest["output"][0];
    let url = entry["url"].as_str().unwrap();
    let req = http::Request::builder()
        .uri(url)
        .header("host", "api.example.test")
        .header("x-forwarded-proto", "https")
        .header("accept-encoding", "gzip, deflate")
        .body(lambda_http::Body::Empty)
        .unwrap();
    let resp = lambda::handle(&s.container, req).await;
    assert_eq!(resp.status(), 303, "{:?}", resp.body());
    let link = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(link.contains(".ndjson.gz"), "{link}");
    // No gzip decoding in the client: the test looks at what S3 sends.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let got = raw.get(&link).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-encoding"], "gzip");
    let body = got.bytes().await.unwrap();
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut inflated)
        .unwrap();
    let lines: Vec<Value> = inflated
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, s.download(url).await);
    assert_eq!(entry["count"], lines.len());
}

/// `_typeFilter` through the functions: a filtered type holds what its
/// filter selects (computed here from the loaded sample), the others are
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_through_the_functions() {
    let s = stack(6, None).await;
    let values: Vec<Value> = generate(SampleConfig {
        patients: 6,
        seed: 7,
    })
    .collect();
    let ids = |keep: &dyn Fn(&Value) -> bool, t: &str| {
        let mut ids: Vec<String> = values
            .iter()
            .filter(|v| v["resourceType"] == t && keep(v))
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let filter = "Patient%3Fgender%3Dfemale%2CObservation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C8867-4";
    let status = s
        .kickoff(&format!(
            "/fhir/$export?_type=Patient,Observation,Encounter&_typeFilter={filter}"
        ))
        .await;
    let manifest = s.drive_to_manifest(&status, false).await;
    let exported = s.exported(&manifest).await;
    let female = ids(&|v| v["gender"] == "female", "Patient");
    let heart_rate = ids(
        &|v| {
            v["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["system"] == "http://loinc.org" && c["code"] == "8867-4")
        },
        "Observation",
    );
    assert!(!female.is_empty() && !heart_rate.is_empty());
    assert_eq!(exported.get("Patient").cloned().unwrap_or_default(), female);
    assert_eq!(
        exported.get("Observation").cloned().unwrap_or_default(),
        heart_rate
    );
    assert_eq!(exported["Encounter"], s.expected()["Encounter"]);
}

/// `$viewdefinition-run` through the functions, reading DynamoDB: a stored
/// view's rows are every Patient; an inline view over inline resources
/// gives only theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_definition_run_through_the_functions() {
    let s = stack(3, None).await;
    let view = serde_json::json!({"resourceType": "ViewDefinition", "id": "pv", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "gender", "path": "gender"}]}]});
    let resp = s
        .send(
            "PUT",
            "/fhir/ViewDefinition/pv",
            "application/fhir+json",
            Some(view),
        )
        .await;
    assert!(resp.status().is_success(), "{:?}", resp.body());
    let resp = s
        .send(
            "GET",
            "/fhir/ViewDefinition/pv/$viewdefinition-run?_format=ndjson",
            "",
            None,
        )
        .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    let mut ids: Vec<String> = std::str::from_utf8(resp.body())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, s.expected()["Patient"]);
    let params = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/pv"}},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "only", "gender": "female"}}]});
    let resp = s
        .send(
            "POST",
            "/fhir/ViewDefinition/$viewdefinition-run",
            "",
            Some(params),
        )
        .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    let rows: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"id": "only", "gender": "female"}])
    );
}

/// The functions log JSON lines that name the job, and never resource
/// content: an export's logs, in the functions' own format, are searched
/// for the patients' names.
///
/// The export runs in a process of its own (this test binary, running the
/// ignored test below), which installs the functions' global subscriber
/// before anything logs, as a Lambda process does. In this process, a
/// subscriber for one thread would miss events of callsites that another
/// test's thread registered at the same instant (tracing caches each
/// callsite's interest), which a busy machine once showed.
#[test]
fn function_logs_are_json_and_hold_no_resource_content() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "aws::functions::an_export_logged_by_the_functions",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BULK_EXPORT_MOTO_URL", super::moto::endpoint())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = text
        .lines()
        .find_map(|l| l.strip_prefix("job: "))
        .unwrap_or_else(|| panic!("the child names its job: {text}"));
    // Every line the functions wrote is JSON (the harness's own words are
    // not theirs: `test ... ` may open the first line).
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    for message in ["export accepted", "export planned", "export completed"] {
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == message && l["fields"]["job"] == job),
            "{message}: {text}"
        );
    }
    let names: Vec<String> = generate(SampleConfig {
        patients: 3,
        seed: 7,
    })
    .filter(|r| r["resourceType"] == "Patient")
    .flat_map(|p| {
        p["name"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["family"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    })
    .collect();
    assert!(!names.is_empty());
    for name in names {
        assert!(
            !text.contains(&name),
            "a patient's name is in the logs: {name}"
        );
    }
}

/// The export of the test above, in its own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by function_logs_are_json_and_hold_no_resource_content in a process of its own"]
async fn an_export_logged_by_the_functions() {
    bulk_export_functions::init_tracing();
    let s = stack(3, None).await;
    let status = s.kickoff("/fhir/$export").await;
    let manifest = s.drive_to_manifest(&status, false).await;
    assert!(!manifest["output"].as_array().unwrap().is_empty());
    println!("job: {}", job_id(&status));
}

/// A view export through the functions whose worker is killed mid-part:
/// the redelivered part resumes from its checkpoint, and every row is
/// there once (Parquet on S3, several files per view; the NDJSON they were
/// converted from is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_export_killed_mid_part_resumes_with_every_row_once() {
    let gate = Gate::new();
    let s = stack_tuned(6, Some(hold_after(3, &gate)), per_type_parts).await;
    let view = serde_json::json!({"resourceType": "ViewDefinition", "resource": "Observation",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]},
                   {"forEach": "code.coding", "column": [{"name": "code", "path": "code"}]}]});
    let status = s
        .kickoff_post(
            "/fhir/ViewDefinition/$viewdefinition-export",
            serde_json::json!([
                {"name": "view", "part": [{"name": "name", "valueString": "codes"},
                                          {"name": "viewResource", "resource": view}]},
                {"name": "_format", "valueCode": "parquet"}]),
        )
        .await;
    // One part, run by the handling that plans it: that invocation is held
    // mid-part and killed, its plan message undeleted. Redelivered, the
    // plan finds the job running and sends the part's message.
    let killed = {
        let s = &s;
        let run = async move { while s.invoke_worker(Duration::from_secs(20), false).await > 0 {} };
        tokio::select! {
            _ = run => false,
            _ = gate.reached() => true,
        }
    };
    assert!(killed, "an invocation was held mid-part and killed");
    gate.open();
    let manifest = s.drive_to_manifest(&status, false).await;
    let mut rows = s.view_rows(&manifest, "parquet").await;
    rows.sort();
    assert_eq!(rows, code_rows(6, |_| true), "every row once");
    let (mut objects, uploads) = s.leftovers(&job_id(&status)).await;
    assert_eq!(uploads, Vec::<String>::new());
    let mut listed: Vec<String> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let name = o["url"].as_str().unwrap().rsplit('/').next().unwrap();
            format!("{}{name}", job_prefix(&job_id(&status)))
        })
        .collect();
    objects.sort();
    listed.sort();
    assert_eq!(objects, listed, "only the Parquet files remain");
}

/// The (id, code) rows of the codes view over the stack's sample, for the
/// Observations of the patients `keep` keeps, sorted.
fn code_rows(patients: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut rows: Vec<String> = generate(SampleConfig { patients, seed: 7 })
        .filter(|r| r["resourceType"] == "Observation")
        .filter(|r| {
            keep(
                r["subject"]["reference"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Patient/"),
            )
        })
        .flat_map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            r["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{id},{}", c["code"].as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

fn codes_export(format: &str, extra: Vec<Value>) -> Value {
    let view = serde_json::json!({"resourceType": "ViewDefinition", "resource": "Observation",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]},
                   {"forEach": "code.coding", "column": [{"name": "code", "path": "code"}]}]});
    let mut p = vec![
        serde_json::json!({"name": "view", "part": [{"name": "name", "valueString": "codes"},
                                                    {"name": "viewResource", "resource": view}]}),
        serde_json::json!({"name": "_format", "valueCode": format}),
    ];
    p.extend(extra);
    Value::Array(p)
}

impl Stack {
    /// A view export's rows, each as its cells joined by commas, whatever
    /// the format (Parquet read back with the parquet crate).
    async fn view_rows(&self, manifest: &Value, format: &str) -> Vec<String> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let mut rows = Vec::new();
        for out in manifest["output"].as_array().unwrap() {
            let resp = self
                .call(
                    "GET",
                    out["url"].as_str().unwrap().strip_prefix(ORIGIN).unwrap(),
                )
                .await;
            assert_eq!(resp.status(), 303);
            let link = resp.headers()["location"].to_str().unwrap().to_string();
            let bytes = reqwest::get(&link).await.unwrap().bytes().await.unwrap();
            let before = rows.len();
            match format {
                "parquet" => {
                    let reader = SerializedFileReader::new(bytes).unwrap();
                    for row in reader.get_row_iter(None).unwrap() {
                        let cells: Vec<String> = row
                            .unwrap()
                            .get_column_iter()
                            .map(|(_, f)| match f {
                                parquet::record::Field::Str(s) => s.clone(),
                                other => panic!("{other:?}"),
                            })
                            .collect();
                        rows.push(cells.join(","));
                    }
                }
                "csv" => {
                    let text = String::from_utf8(bytes.to_vec()).unwrap();
                    let mut lines: Vec<&str> =
                        text.split("\r\n").filter(|l| !l.is_empty()).collect();
                    assert_eq!(lines.remove(0), "id,code");
                    rows.extend(lines.iter().map(|l| l.to_string()));
                }
                _ => {
                    for line in std::str::from_utf8(&bytes).unwrap().lines() {
                        let row: Value = serde_json::from_str(line).unwrap();
                        rows.push(format!(
                            "{},{}",
                            row["id"].as_str().unwrap(),
                            row["code"].as_str().unwrap()
                        ));
                    }
                }
            }
            assert_eq!(
                out["count"],
                rows.len() - before,
                "the manifest counts the rows"
            );
        }
        rows.sort();
        rows
    }
}

/// On moto through the functions: the same view in CSV, NDJSON and Parquet
/// holds the same rows, and a Group's export exactly its members' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_exports_in_every_format_and_for_a_group_through_the_functions() {
    let s = stack(4, None).await;
    let all = code_rows(4, |_| true);
    for format in ["csv", "ndjson", "parquet"] {
        let status = s
            .kickoff_post(
                "/fhir/ViewDefinition/$viewdefinition-export",
                codes_export(format, vec![]),
            )
            .await;
        let manifest = s.drive_to_manifest(&status, false).await;
        assert_eq!(s.view_rows(&manifest, format).await, all, "{format}");
    }
    let patients: Vec<String> = s.loaded["Patient"].clone();
    let group = serde_json::json!({"resourceType": "Group", "id": "pair", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{}", patients[0])}},
                   {"entity": {"reference": format!("Patient/{}", patients[2])}}]});
    let resp = s
        .send(
            "PUT",
            "/fhir/Group/pair",
            "application/fhir+json",
            Some(group),
        )
        .await;
    assert!(resp.status().is_success(), "{:?}", resp.body());
    let status = s
        .kickoff_post(
            "/fhir/ViewDefinition/$viewdefinition-export",
            codes_export("csv", vec![serde_json::json!({"name": "group", "valueReference": {"reference": "Group/pair"}})]),
        )
        .await;
    let manifest = s.drive_to_manifest(&status, false).await;
    let members = code_rows(4, |p| p == patients[0] || p == patients[2]);
    assert!(!members.is_empty() && members.len() < all.len());
    assert_eq!(s.view_rows(&manifest, "csv").await, members);
}

/// Counts, independently of the service's own metering, the requests made
/// while a handling, kick-off or download link is metered, with the
/// capacity DynamoDB reported and the bytes sent to S3.
#[derive(Debug, Default, Clone)]
struct CountRequests(Arc<std::sync::Mutex<BTreeMap<String, f64>>>);

impl CountRequests {
    fn add(&self, key: &str, value: f64) {
        *self.0.lock().unwrap().entry(key.to_string()).or_default() += value;
    }
    fn get(&self, key: &str) -> f64 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0.0)
    }
}

impl aws_sdk_dynamodb::config::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if usage::so_far().is_none() {
            return Ok(());
        }
        let op = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .unwrap();
        let service = op.service().to_lowercase();
        self.add(&format!("requests.{service}.{}", op.name()), 1.0);
        if matches!(op.name(), "PutObject" | "UploadPart") {
            let bytes = context.request().body().content_length().unwrap();
            self.add(usage::S3_BYTES_STORED, bytes as f64);
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::AfterDeserializationInterceptorContextRef<
            '_,
        >,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_sdk_dynamodb::operation as op;
        if usage::so_far().is_none() {
            return Ok(());
        }
        let Ok(out) = context.output_or_error() else {
            return Ok(());
        };
        let units = |c: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>| {
            c.and_then(|c| c.capacity_units()).unwrap_or(0.0)
        };
        let sum = |c: &[aws_sdk_dynamodb::types::ConsumedCapacity]| {
            c.iter().filter_map(|c| c.capacity_units()).sum::<f64>()
        };
        let (read, write) = if let Some(o) = out.downcast_ref::<op::query::QueryOutput>() {
            (units(o.consumed_capacity()), 0.0)
        } else if let Some(o) = out.downcast_ref::<op::get_item::GetItemOutput>() {
            (units(o.consumed_capacity()), 0.0)
        } else if let Some(o) = out.downcast_ref::<op::batch_get_item::BatchGetItemOutput>() {
            (sum(o.consumed_capacity()), 0.0)
        } else if let Some(o) = out.downcast_ref::<op::put_item::PutItemOutput>() {
            (0.0, units(o.consumed_capacity()))
        } else if let Some(o) = out.downcast_ref::<op::update_item::UpdateItemOutput>() {
            (0.0, units(o.consumed_capacity()))
        } else if let Some(o) = out.downcast_ref::<op::delete_item::DeleteItemOutput>() {
            (0.0, units(o.consumed_capacity()))
        } else if let Some(o) = out.downcast_ref::<op::batch_write_item::BatchWriteItemOutput>() {
            (0.0, sum(o.consumed_capacity()))
        } else if let Some(o) =
            out.downcast_ref::<op::transact_write_items::TransactWriteItemsOutput>()
        {
            (0.0, sum(o.consumed_capacity()))
        } else {
            (0.0, 0.0)
        };
        self.add(usage::DYNAMODB_READ_UNITS, read);
        self.add(usage::DYNAMODB_WRITE_UNITS, write);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_recorded_consumption_matches_the_requests_counted_on_the_clients() {
    let counted = CountRequests::default();
    let s = stack_observed(
        6,
        None,
        |_| {},
        Some(SharedInterceptor::new(counted.clone())),
    )
    .await;
    let status = s.kickoff("/fhir/$export").await;
    let (manifest, handled) = s
        .drive_within(&status, false, Duration::from_secs(60))
        .await;
    let links = manifest["output"].as_array().unwrap().len();
    assert_eq!(s.exported(&manifest).await, s.expected());

    let job = job_id(&status);
    let recorded = s.adapters.jobs.usage(&job).await.unwrap();
    let mut requests = 0.0;
    for (counter, value) in recorded.counters() {
        if counter.starts_with(usage::REQUESTS_PREFIX) {
            assert_eq!(value, counted.get(counter), "{counter}");
            requests += value;
        }
    }
    let all_counted: f64 = counted
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(usage::REQUESTS_PREFIX))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(requests, all_counted, "every counted request is recorded");
    for counter in [
        usage::DYNAMODB_READ_UNITS,
        usage::DYNAMODB_WRITE_UNITS,
        usage::S3_BYTES_STORED,
    ] {
        assert!(counted.get(counter) > 0.0, "{counter}");
        assert_eq!(recorded.get(counter), counted.get(counter), "{counter}");
    }
    for request in [
        "requests.dynamodb.Query",
        "requests.dynamodb.PutItem",
        "requests.s3.UploadPart",
        "requests.sqs.SendMessageBatch",
    ] {
        assert!(recorded.get(request) > 0.0, "{request}: {recorded:?}");
    }
    assert_eq!(recorded.get(usage::WORKER_HANDLINGS), handled as f64);
    assert_eq!(recorded.get(usage::FILE_LINKS), links as f64);
    // One accounting write per handling, the kick-off and each link.
    assert_eq!(
        recorded.get(usage::ACCOUNTING_WRITES),
        (handled + 1 + links) as f64
    );
    assert!(recorded.get(usage::SQS_MESSAGES) >= 1.0);
    assert!(recorded.get(usage::WORKER_MS) > 0.0);

    // The EMF line of the completion event carries the same counters.
    let ended = s.adapters.jobs.get_job(&job).await.unwrap().unwrap();
    let event = JobEvent {
        detail: bulk_export::engine::notify::event_body(&ended, ORIGIN),
        usage: recorded.clone(),
        job: ended,
        manifest: None,
    };
    let emf = EmfLog {
        stack: "test-stack".into(),
        worker_memory_mb: 1024,
    };
    let line: Value = serde_json::from_str(&emf.line(&event)).unwrap();
    let declared = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(declared["Namespace"], "BulkExport");
    assert_eq!(
        declared["Dimensions"],
        serde_json::json!([["Stack", "Outcome"]])
    );
    assert_eq!(
        (line["Stack"].as_str(), line["Outcome"].as_str()),
        (Some("test-stack"), Some("completed"))
    );
    for metric in declared["Metrics"].as_array().unwrap() {
        let name = metric["Name"].as_str().unwrap();
        assert!(line[name].is_number(), "{name} has a value");
    }
    let total: usize = s.loaded.values().map(Vec::len).sum();
    assert_eq!(line["Resources"], total as f64);
    assert_eq!(
        line["ReadCapacityUnits"],
        recorded.get(usage::DYNAMODB_READ_UNITS)
    );
    assert_eq!(line["S3Requests"], recorded.request_count("s3"));

    // The CLI's report prices the same counters.
    let report = bulk_export::domain::cost::report(
        &recorded,
        s.loaded.values().map(|v| v.len() as u64).sum(),
        1024,
    );
    assert!(report["estimateUsd"]["total"].as_f64().unwrap() > 0.0);
    assert_eq!(report["usage"], serde_json::json!(recorded));
}
