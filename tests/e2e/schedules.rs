//! Export schedules, releases and completion events, with a moved clock.
//! The scenarios run on the embedded service here and on moto through the
//! Lambda functions (`aws::schedules`); a test moves the clock, then fires
//! the scheduler's tick itself (the same engine call the scheduler Lambda
//! and the local ticker make).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::clock::OffsetClock;
use bulk_export::domain::schedule::{Release, Schedule};
use bulk_export::engine::Services;
use bulk_export::ports::{EventPublisher, JobEvent, PortResult, ScheduleStore};
use serde_json::{json, Value};

use crate::helpers::{sha256_hex, spawn_app, Options};
use crate::revisions::{verify_signature, webhook_receiver, Backend, Embedded, Received, Reply};

/// A service under test whose clock and scheduler the test drives.
#[async_trait]
pub(crate) trait Stack: Backend {
    fn clock(&self) -> Arc<OffsetClock>;
    /// The engine the scheduler runs (a second one for racing ticks).
    fn engine(&self) -> Services;
    /// Lets queued work run: moto pumps the worker function; the embedded
    /// service's workers run by themselves.
    async fn settle(&self);
}

#[async_trait]
impl Stack for Embedded {
    fn clock(&self) -> Arc<OffsetClock> {
        self.0.clock.clone()
    }

    fn engine(&self) -> Services {
        self.0.running.services.clone()
    }

    async fn settle(&self) {}
}

const SECRET: &str = "a-webhook-secret-of-some-length";

async fn call(st: &dyn Stack, method: &str, path: &str, body: Option<Value>) -> Reply {
    st.call(method, path, None, &[], body.map(|b| b.to_string()))
        .await
}

fn advance(st: &dyn Stack, by: chrono::Duration) {
    st.clock().advance(by);
}

async fn tick(st: &dyn Stack) -> u32 {
    st.engine().schedules.fire_due_schedules().await.unwrap()
}

/// Polls `path` (a status-like URL) until it stops answering 202.
async fn wait_done(st: &dyn Stack, path: &str) -> Reply {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        st.settle().await;
        let r = call(st, "GET", path, None).await;
        if r.status != 202 {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{path} never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A manifest file's content: the file endpoint's redirect, followed
/// without credentials (as a presigned link is).
async fn download(st: &dyn Stack, url: &str) -> String {
    let path = url
        .strip_prefix(&format!("{}/", st.base()))
        .unwrap_or_else(|| panic!("{url} is not under the base"));
    let r = call(st, "GET", path, None).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    reqwest::get(r.header("location"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn put(st: &dyn Stack, resource: Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    let r = call(st, "PUT", &path, Some(resource)).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

async fn delete(st: &dyn Stack, path: &str) {
    let r = call(st, "DELETE", path, None).await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn observation(id: &str, patient: &str, value: i64) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": value}
    })
}

async fn create_schedule(st: &dyn Stack, body: Value) -> Value {
    let r = call(st, "POST", "$export-schedules", Some(body)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let s = r.json();
    assert_eq!(
        r.header("location"),
        format!(
            "{}/$export-schedules/{}",
            st.base(),
            s["id"].as_str().unwrap()
        )
    );
    s
}

async fn schedule(st: &dyn Stack, id: &str) -> Value {
    let r = call(st, "GET", &format!("$export-schedules/{id}"), None).await;
    assert_eq!(r.status, 200);
    r.json()
}

/// Waits for run `run` of the schedule and returns its manifest.
async fn run_manifest(st: &dyn Stack, id: &str, run: &str) -> Value {
    let r = wait_done(st, &format!("$export-schedules/{id}/runs/{run}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits for `n` webhook deliveries (the worker posts them).
async fn wait_for_hooks(st: &dyn Stack, got: &Received, n: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < n {
        st.settle().await;
        assert!(
            tokio::time::Instant::now() < give_up,
            "only {} webhooks",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rate(1 day)`: one run per day, one run when two schedulers race on a
/// tick, pause and resume, one catch-up run after a week of downtime, run
/// now, and no runs and no webhooks after the schedule is deleted.
pub(crate) async fn cadence_scenario(st: &dyn Stack) {
    for (i, family) in ["Ames", "Bede", "Cole"].iter().enumerate() {
        put(st, patient(&format!("p{i}"), family)).await;
    }
    let (hook, got, _) = webhook_receiver(0).await;
    let s = create_schedule(
        st,
        json!({
            "name": "nightly-warehouse",
            "cadence": "rate(1 day)",
            "export": "$export?_type=Patient",
            "webhook": {"url": hook, "secret": SECRET}
        }),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["status"], "active");
    assert_eq!(s["runs"], 0);
    assert!(
        s["webhook"].get("secret").is_none(),
        "the secret is never shown"
    );
    assert_eq!(
        call(
            st,
            "GET",
            &format!("$export-schedules/{id}/runs/latest"),
            None
        )
        .await
        .status,
        404,
        "no run yet"
    );

    // The first run is due at once; a second tick at the same instant adds none.
    assert_eq!(tick(st).await, 1);
    assert_eq!(tick(st).await, 0);
    let m = run_manifest(st, &id, "1").await;
    assert_eq!(m["output"][0]["type"], "Patient");
    assert_eq!(m["output"][0]["count"], 3);
    // Its event is signed when it is sent: wait for it before the clock moves.
    wait_for_hooks(st, &got, 1).await;

    // Hourly ticks for a day make exactly the next day's run.
    let mut made = 0;
    for _ in 0..24 {
        advance(st, chrono::Duration::hours(1));
        made += tick(st).await;
    }
    assert_eq!(made, 1, "one run per day");
    run_manifest(st, &id, "2").await;

    // Two schedulers on the same tick: one run.
    advance(st, chrono::Duration::days(1));
    let (a, b) = (st.engine(), st.engine());
    let (x, y) = tokio::join!(
        a.schedules.fire_due_schedules(),
        b.schedules.fire_due_schedules()
    );
    assert_eq!(x.unwrap() + y.unwrap(), 1, "racing schedulers make one run");
    run_manifest(st, &id, "3").await;
    assert_eq!(schedule(st, &id).await["runs"], 3);

    // Paused: no runs; resumed: the next tick after now.
    let r = call(st, "POST", &format!("$export-schedules/{id}/pause"), None).await;
    assert_eq!(r.json()["status"], "paused");
    assert!(r.json()["nextRunAt"].is_null());
    advance(st, chrono::Duration::days(2));
    assert_eq!(tick(st).await, 0, "a paused schedule does not run");
    let r = call(st, "POST", &format!("$export-schedules/{id}/resume"), None).await;
    assert_eq!(r.json()["status"], "active");
    assert_eq!(tick(st).await, 0, "resuming does not run missed ticks");
    advance(st, chrono::Duration::days(1));
    assert_eq!(tick(st).await, 1);
    run_manifest(st, &id, "4").await;

    // A week of downtime: one catch-up run, then the cadence again.
    advance(st, chrono::Duration::days(7));
    assert_eq!(tick(st).await, 1, "one catch-up run");
    assert_eq!(tick(st).await, 0);
    let latest = run_manifest(st, &id, "latest").await;
    assert_eq!(latest["output"][0]["count"], 3);
    let runs = call(st, "GET", &format!("$export-schedules/{id}/runs"), None)
        .await
        .json();
    let numbers: Vec<u64> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_u64().unwrap())
        .collect();
    // Runs expire like any export: runs 1 to 3 are past their 7 days (run
    // 4 is at its last moments, on either side depending on timing).
    assert!(numbers == vec![5] || numbers == vec![5, 4], "{numbers:?}");
    assert_eq!(runs["runs"][0]["state"], "completed");

    // Run now, outside the cadence.
    let r = call(st, "POST", &format!("$export-schedules/{id}/run"), None).await;
    assert_eq!(r.status, 202);
    assert!(r.header("content-location").ends_with("-run-6"));
    run_manifest(st, &id, "6").await;

    // One signed webhook per run.
    wait_for_hooks(st, &got, 6).await;
    // Deliveries may arrive in any order, so each is found by its run.
    let hook_of = |run: u64| {
        got.lock()
            .unwrap()
            .iter()
            .find(|(_, body)| serde_json::from_str::<Value>(body).unwrap()["run"] == run)
            .cloned()
            .unwrap_or_else(|| panic!("no event for run {run}"))
    };
    // (Signed at the service's time: only the first run's is "now".)
    let (sig, body) = hook_of(1);
    verify_signature(SECRET, &sig, &body);
    let event: Value = serde_json::from_str(&hook_of(6).1).unwrap();
    assert_eq!(event["scheduleId"], id);
    assert_eq!(event["run"], 6);
    assert_eq!(event["outcome"], "completed");
    assert_eq!(event["counts"]["Patient"], 3);

    // Deleted: gone for its owner, no more runs, no more webhooks.
    let r = call(st, "DELETE", &format!("$export-schedules/{id}"), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        call(st, "GET", &format!("$export-schedules/{id}"), None)
            .await
            .status,
        404
    );
    advance(st, chrono::Duration::days(3));
    assert_eq!(tick(st).await, 0);
    st.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.lock().unwrap().len(), 6, "no webhooks after deletion");
}

/// A replica of the store, keyed by (type, id): the version it holds.
type Replica = BTreeMap<(String, String), String>;

fn apply_lines(replica: &mut Replica, ndjson: &str) {
    for line in ndjson.lines().filter(|l| !l.is_empty()) {
        let r: Value = serde_json::from_str(line).unwrap();
        replica.insert(
            (
                r["resourceType"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            ),
            r["meta"]["versionId"].as_str().unwrap().to_string(),
        );
    }
}

/// Applies a manifest in order: outputs, then deletions.
async fn apply(st: &dyn Stack, replica: &mut Replica, manifest: &Value) {
    for f in manifest["output"].as_array().unwrap() {
        apply_lines(replica, &download(st, f["url"].as_str().unwrap()).await);
    }
    for f in manifest["deleted"].as_array().unwrap() {
        for line in download(st, f["url"].as_str().unwrap()).await.lines() {
            let bundle: Value = serde_json::from_str(line).unwrap();
            for e in bundle["entry"].as_array().unwrap() {
                let url = e["request"]["url"].as_str().unwrap();
                let (t, id) = url.split_once('/').unwrap();
                replica.remove(&(t.to_string(), id.to_string()));
            }
        }
    }
}

/// The subscriber guarantee: a release, then incremental runs from it with
/// creates, updates and deletes between them, applied in order to an empty
/// replica, give the store as of the last run: same ids and versions,
/// nothing extra.
pub(crate) async fn subscriber_scenario(st: &dyn Stack) {
    for i in 0..4 {
        put(st, patient(&format!("s{i}"), "Sub")).await;
    }
    for i in 0..3 {
        put(st, observation(&format!("o{i}"), "s0", i)).await;
    }
    let r = call(
        st,
        "POST",
        "$export-releases",
        Some(json!({"name": "v1", "export": "$export"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let release = r.json();
    let mut replica = Replica::new();
    let m = wait_done(st, "$export-releases/v1/manifest").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["transactionTime"], release["transactionTime"]);
    apply(st, &mut replica, &m.json()).await;
    assert_eq!(replica.len(), 7);

    let s = create_schedule(
        st,
        json!({
            "name": "subscriber",
            "cadence": "rate(1 hour)",
            "mode": "incremental",
            "export": "$export",
            "startFromRelease": "v1"
        }),
    )
    .await;
    assert_eq!(s["cursor"], release["transactionTime"]);
    let id = s["id"].as_str().unwrap().to_string();
    let rounds: Vec<Vec<(&str, Value)>> = vec![
        vec![
            ("put", patient("s0", "Changed")),
            ("put", patient("s4", "New")),
            ("delete", json!("Observation/o0")),
        ],
        vec![
            ("delete", json!("Patient/s1")),
            ("put", observation("o0", "s2", 9)),
            ("put", observation("o1", "s0", 10)),
        ],
        vec![
            ("put", patient("s5", "Late")),
            ("delete", json!("Patient/s4")),
            ("put", patient("s0", "Again")),
        ],
    ];
    let mut last_time = String::new();
    for (n, changes) in rounds.into_iter().enumerate() {
        for (op, v) in changes {
            match op {
                "put" => put(st, v).await,
                _ => delete(st, v.as_str().unwrap()).await,
            }
        }
        if n > 0 {
            advance(st, chrono::Duration::hours(1));
        }
        assert_eq!(tick(st).await, 1);
        let m = run_manifest(st, &id, &(n + 1).to_string()).await;
        assert!(m["request"].as_str().unwrap().contains("_since="), "{m}");
        apply(st, &mut replica, &m).await;
        last_time = m["transactionTime"].as_str().unwrap().to_string();
    }
    // The store as of the last run: a full export, with nothing written since.
    let r = st
        .call(
            "GET",
            &format!("$export?_until={}", last_time.replace('+', "%2B")),
            None,
            &[("prefer", "respond-async")],
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let status = r.header("content-location").to_string();
    let status = status
        .strip_prefix(&format!("{}/", st.base()))
        .unwrap()
        .to_string();
    let full = wait_done(st, &status).await.json();
    let mut expected = Replica::new();
    apply(st, &mut expected, &full).await;
    assert_eq!(
        replica, expected,
        "the replica is the store as of the last run"
    );
    assert!(expected.contains_key(&("Patient".into(), "s5".into())));
    assert!(!expected.contains_key(&("Patient".into(), "s1".into())));
}

/// Lines of each type's files, sorted.
async fn sorted_lines_by_type(st: &dyn Stack, manifest: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in manifest["output"].as_array().unwrap() {
        let text = download(st, f["url"].as_str().unwrap()).await;
        out.entry(f["type"].as_str().unwrap().to_string())
            .or_default()
            .extend(text.lines().map(str::to_string));
    }
    for lines in out.values_mut() {
        lines.sort();
    }
    out
}

/// A release's files expire; asked for again, they are rebuilt (202 first)
/// as of the same `transactionTime`, byte for byte per type.
pub(crate) async fn release_rebuild_scenario(st: &dyn Stack) {
    for i in 0..5 {
        put(st, patient(&format!("r{i}"), "Rel")).await;
        put(st, observation(&format!("ro{i}"), &format!("r{i}"), i)).await;
    }
    let r = call(
        st,
        "POST",
        "$export-releases",
        Some(json!({"name": "2026.1", "export": "$export?_type=Patient,Observation"})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        call(
            st,
            "POST",
            "$export-releases",
            Some(json!({"name": "2026.1", "export": "$export"}))
        )
        .await
        .status,
        409,
        "releases are immutable"
    );
    let first = wait_done(st, "$export-releases/2026.1/manifest")
        .await
        .json();
    let original = sorted_lines_by_type(st, &first).await;
    assert_eq!(original["Patient"].len(), 5);

    // The store moves on; the files expire and are swept.
    put(st, patient("r0", "Moved")).await;
    delete(st, "Observation/ro1").await;
    advance(st, chrono::Duration::days(8));
    st.engine().sweeper.sweep().await.unwrap();
    let url = first["output"][0]["url"].as_str().unwrap();
    let path = url.strip_prefix(&format!("{}/", st.base())).unwrap();
    assert_eq!(
        call(st, "GET", path, None).await.status,
        404,
        "the files are swept"
    );

    let head = call(st, "HEAD", "$export-releases/latest", None).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-release-name"), "2026.1");
    assert_eq!(head.header("x-transaction-time"), first["transactionTime"]);
    assert!(head
        .header("link")
        .contains("/$export-releases/2026.1/manifest"));
    let info = call(st, "GET", "$export-releases/2026.1", None)
        .await
        .json();
    assert_eq!(info["transactionTime"], first["transactionTime"]);
    assert!(info["request"]
        .as_str()
        .unwrap()
        .ends_with("$export?_type=Patient,Observation"));

    let again = call(st, "GET", "$export-releases/2026.1/manifest", None).await;
    // 202 while the rebuild runs. Workers running beside the server (the
    // embedded stack's) may finish so small a rebuild before the answer is
    // made: then the answer is the rebuilt manifest.
    assert!(
        again.status == 202 || again.status == 200,
        "the files are rebuilt first: {}",
        again.status
    );
    let rebuilt = wait_done(st, "$export-releases/2026.1/manifest")
        .await
        .json();
    assert_eq!(rebuilt["transactionTime"], first["transactionTime"]);
    assert_eq!(sorted_lines_by_type(st, &rebuilt).await, original);
}

/// Presigned links for a system without a token: the manifest and each
/// file open with no credentials.
pub(crate) async fn links_scenario(st: &dyn Stack) {
    put(st, patient("l1", "Link")).await;
    let s = create_schedule(
        st,
        json!({"name": "links", "cadence": "cron(0 2 * * ? *)", "export": "$export?_type=Patient"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let r = call(st, "POST", &format!("$export-schedules/{id}/run"), None).await;
    assert_eq!(r.status, 202);
    run_manifest(st, &id, "latest").await;
    let path = format!("$export-schedules/{id}/runs/latest/links?expiresIn=600");
    let links = call(st, "POST", &path, None).await;
    assert_eq!(
        links.status,
        200,
        "{}",
        String::from_utf8_lossy(&links.body)
    );
    let links = links.json();
    let manifest: Value = reqwest::get(links["manifest"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["requiresAccessToken"], false);
    let file = reqwest::get(manifest["output"][0]["url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    let text = file.text().await.unwrap();
    assert!(text.contains("\"id\":\"l1\""), "{text}");
    // The presigned manifest carries each file's digest too.
    assert_eq!(
        manifest["output"][0]["extension"]["sha256"].as_str(),
        Some(sha256_hex(text.as_bytes()).as_str())
    );
    let too_long = format!("$export-schedules/{id}/runs/latest/links?expiresIn=99999999");
    assert_eq!(call(st, "POST", &too_long, None).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_schedule_runs_once_a_day_catches_up_once_and_stops_when_deleted() {
    cadence_scenario(&Embedded(spawn_app(Options::default()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_replica_from_a_release_and_incremental_runs_equals_the_store() {
    subscriber_scenario(&Embedded(spawn_app(Options::default()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_rebuilt_after_expiry_equals_the_original() {
    release_rebuild_scenario(&Embedded(spawn_app(Options::default()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_links_open_a_run_without_a_token() {
    links_scenario(&Embedded(spawn_app(Options::default()).await)).await;
}

/// Records every completion event it is given.
#[derive(Default)]
struct Recorder(Mutex<Vec<JobEvent>>);

#[async_trait]
impl EventPublisher for Recorder {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// A receiver down for three attempts gets the event on the fourth; the
/// run records every attempt. Every ended export (completed, cancelled)
/// emits one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_event_on_retry_and_the_run_records_each_attempt() {
    let recorder = Arc::new(Recorder::default());
    let app = spawn_app(Options {
        events: Some(recorder.clone()),
        ..Default::default()
    })
    .await;
    let st = Embedded(app);
    put(&st, patient("w1", "Hook")).await;
    let (hook, got, attempts) = webhook_receiver(3).await;
    let s = create_schedule(
        &st,
        json!({
            "name": "hooked", "cadence": "rate(1 day)", "export": "$export?_type=Patient",
            "webhook": {"url": hook, "secret": SECRET}
        }),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(tick(&st).await, 1);
    run_manifest(&st, &id, "1").await;
    wait_for_hooks(&st, &got, 1).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    let (sig, body) = got.lock().unwrap()[0].clone();
    verify_signature(SECRET, &sig, &body);
    // The event says what the export consumed so far: at least the run's
    // start. The handling that ended it may store its counters after the
    // event left, and this one-part export ends in the handling that
    // planned it, its only one.
    let event: Value = serde_json::from_str(&body).unwrap();
    assert!(
        event["usage"]["accounting.writes"].as_f64().unwrap() >= 1.0,
        "{event}"
    );
    assert!(
        event["usage"]["worker.handlings"].as_f64().unwrap_or(0.0) <= 1.0,
        "{event}"
    );
    // The attempts are recorded on the run (the last one just after delivery).
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    let deliveries = loop {
        let runs = call(&st, "GET", &format!("$export-schedules/{id}/runs"), None)
            .await
            .json();
        let d = runs["runs"][0]["deliveries"].as_array().unwrap().clone();
        if d.len() == 4 || tokio::time::Instant::now() > give_up {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statuses: Vec<Value> = deliveries.iter().map(|d| d["status"].clone()).collect();
    assert_eq!(
        statuses,
        vec![json!(503), json!(503), json!(503), json!(204)]
    );
    assert_eq!(deliveries[3]["delivered"], true);
    assert_eq!(deliveries[0]["delivered"], false);

    // The publisher got the same event; a cancelled export emits one too.
    let r = st
        .call("GET", "$export", None, &[("prefer", "respond-async")], None)
        .await;
    let status = r.header("content-location").to_string();
    let path = status.strip_prefix(&format!("{}/", st.base())).unwrap();
    assert_eq!(call(&st, "DELETE", path, None).await.status, 202);
    let events = recorder.0.lock().unwrap().clone();
    let outcomes: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.detail["jobId"].as_str().unwrap().to_string(),
                e.detail["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(outcomes[0], (format!("{id}-run-1"), "completed".into()));
    assert!(
        outcomes
            .iter()
            .any(|(j, o)| status.ends_with(j.as_str()) && o == "cancelled"),
        "{outcomes:?}"
    );
    assert_eq!(
        events[0].detail["manifest"],
        format!("{}/$export-jobs/{id}-run-1", st.base())
    );
}

/// Folder delivery: a watcher polling the folder while a slow writer
/// delivers many files never sees a run without its manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_never_sees_a_delivered_run_without_its_manifest() {
    let delivery = tempfile::tempdir().unwrap();
    let dir = delivery.path().to_path_buf();
    let app = spawn_app(Options {
        tune: Box::new({
            let dir = dir.clone();
            move |c| {
                c.delivery_dir = Some(dir);
                c.engine.max_resources_per_file = 2;
            }
        }),
        wrap_artifacts: Some(Box::new(|inner| Arc::new(SlowReads(inner)))),
        ..Default::default()
    })
    .await;
    let st = Embedded(app);
    for i in 0..12 {
        put(&st, patient(&format!("f{i}"), "Folder")).await;
    }
    let s = create_schedule(
        &st,
        json!({"name": "warehouse", "cadence": "rate(1 hour)", "export": "$export?_type=Patient"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (dir, stop) = (dir.join("warehouse"), stop.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            let mut complete_runs = std::collections::BTreeSet::new();
            // One last look after the stop: everything delivered before it
            // is seen, however late a busy machine schedules this thread.
            let mut stopping = false;
            while !stopping {
                stopping = stop.load(Ordering::SeqCst);
                looks += 1;
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') {
                        continue;
                    }
                    let manifest = entry.path().join("manifest.json");
                    assert!(manifest.exists(), "run folder {name} without its manifest");
                    let m: Value =
                        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
                    for f in m["output"].as_array().unwrap() {
                        let file = entry.path().join(f["url"].as_str().unwrap());
                        let lines = std::fs::read_to_string(file).unwrap().lines().count();
                        assert_eq!(lines as u64, f["count"].as_u64().unwrap());
                    }
                    complete_runs.insert(name);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (looks, complete_runs)
        })
    };
    assert_eq!(tick(&st).await, 1);
    run_manifest(&st, &id, "1").await;
    advance(&st, chrono::Duration::hours(1));
    assert_eq!(tick(&st).await, 1);
    run_manifest(&st, &id, "2").await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while !dir.join("warehouse/2/manifest.json").exists() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "run 2 never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (looks, runs) = watcher.join().expect("the watcher saw only whole runs");
    assert!(looks > 50, "the watcher looked {looks} times");
    assert_eq!(runs.into_iter().collect::<Vec<_>>(), vec!["1", "2"]);
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("warehouse/1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["output"].as_array().unwrap().len(),
        6,
        "12 patients, 2 a file"
    );
    assert_eq!(m["requiresAccessToken"], false);
    // Each delivered file has the digest its manifest gives.
    for entry in m["output"].as_array().unwrap() {
        let name = entry["url"].as_str().unwrap();
        let bytes = std::fs::read(dir.join("warehouse/1").join(name)).unwrap();
        assert_eq!(
            entry["extension"]["sha256"].as_str(),
            Some(sha256_hex(&bytes).as_str()),
            "{name}"
        );
    }

    // Another schedule with the same name never writes into this folder.
    let twin = create_schedule(
        &st,
        json!({"name": "warehouse", "cadence": "rate(1 day)", "export": "$export?_type=Patient"}),
    )
    .await;
    let twin_id = twin["id"].as_str().unwrap().to_string();
    let r = call(
        &st,
        "POST",
        &format!("$export-schedules/{twin_id}/run"),
        None,
    )
    .await;
    assert_eq!(r.status, 202);
    run_manifest(&st, &twin_id, "1").await;
    let own = dir.join(format!("warehouse.{}/1/manifest.json", &twin_id[..8]));
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while !own.exists() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the twin's run never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first: Value =
        serde_json::from_slice(&std::fs::read(dir.join("warehouse/1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(first, m, "the first schedule's run 1 is untouched");
}

/// An artifact store whose reads are slow: folder delivery copies file by
/// file while a watcher looks.
struct SlowReads(Arc<dyn bulk_export::ports::ArtifactStore>);

#[async_trait]
impl bulk_export::ports::ArtifactStore for SlowReads {
    async fn start_upload(&self, key: &str) -> PortResult<String> {
        self.0.start_upload(key).await
    }
    async fn upload_chunk(
        &self,
        key: &str,
        id: &str,
        n: u32,
        data: bytes::Bytes,
    ) -> PortResult<String> {
        self.0.upload_chunk(key, id, n, data).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        id: &str,
        chunks: &[bulk_export::domain::job::UploadedChunk],
    ) -> PortResult<()> {
        self.0.complete_upload(key, id, chunks).await
    }
    async fn abort_upload(&self, key: &str, id: &str) -> PortResult<()> {
        self.0.abort_upload(key, id).await
    }
    async fn delete(&self, key: &str) -> PortResult<()> {
        self.0.delete(key).await
    }
    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()> {
        self.0.retain_only(prefix, keep).await
    }
    async fn get(&self, key: &str) -> PortResult<bytes::Bytes> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<bytes::Bytes> {
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.0.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: bytes::Bytes) -> PortResult<()> {
        self.0.put(key, data).await
    }
    async fn delete_prefix(&self, prefix: &str) -> PortResult<()> {
        self.0.delete_prefix(prefix).await
    }
    async fn list(&self, prefix: &str) -> PortResult<Vec<String>> {
        self.0.list(prefix).await
    }
    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>> {
        self.0.list_uploads(prefix).await
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String> {
        self.0.presign_get(key, ttl).await
    }
}

/// Runs use the owner's access as it stands at run time; other clients see
/// nothing of a schedule; bad schedules are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_use_the_owners_access_at_run_time_and_schedules_are_private() {
    use bulk_export::auth::ClientRegistration;
    let app = spawn_app(Options {
        auth: true,
        // As deployed: webhooks may not point into the service's network.
        tune: Box::new(|c| c.engine.allow_private_webhooks = false),
        ..Default::default()
    })
    .await;
    let st = Embedded(app);
    let issuer = st.issuer();
    let clients = st.clients();
    let register = |id: &str, scope: &str| ClientRegistration {
        client_id: id.into(),
        jwks: Some(json!({"keys": []})),
        jwks_url: None,
        scope: scope.into(),
        groups: None,
        name: None,
        email: None,
        audit: false,
        webhook: None,
    };
    clients
        .put_client(&register("owner", "system/*.read"))
        .await
        .unwrap();
    clients
        .put_client(&register("other", "system/*.read"))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let token = |id: &str| issuer.issue(id, "system/*.read system/*.cud", None, now);
    let (owner, other) = (token("owner"), token("other"));
    let writer = issuer.issue("owner", "system/*.cruds", None, now);
    st.call(
        "PUT",
        "Patient/a1",
        Some(&writer),
        &[],
        Some(patient("a1", "A").to_string()),
    )
    .await;
    let body =
        json!({"name": "owned", "cadence": "rate(1 day)", "export": "$export?_type=Patient"});
    let r = st
        .call(
            "POST",
            "$export-schedules",
            Some(&owner),
            &[],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("$export-schedules/{id}");
    assert_eq!(
        st.call("GET", &path, Some(&other), &[], None).await.status,
        404
    );
    assert_eq!(
        st.call("DELETE", &path, Some(&other), &[], None)
            .await
            .status,
        404
    );
    let listed = st
        .call("GET", "$export-schedules", Some(&other), &[], None)
        .await
        .json();
    assert_eq!(listed["schedules"], json!([]));
    assert_eq!(st.call("GET", &path, None, &[], None).await.status, 401);

    // The owner's registration narrows before the run: the run fails, saying why.
    clients
        .put_client(&register("owner", "system/Observation.read"))
        .await
        .unwrap();
    assert_eq!(tick(&st).await, 1);
    let r = st
        .call("GET", &format!("{path}/runs/1"), Some(&owner), &[], None)
        .await;
    assert_eq!(r.status, 500, "a failed run answers as a failed export");
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("refused") && text.contains("Patient"),
        "{text}"
    );

    // Bad schedules: each refused with a 400 that says what is wrong.
    for (bad, words) in [
        (
            json!({"name": "x", "cadence": "daily", "export": "$export"}),
            "not a schedule expression",
        ),
        (
            json!({"name": "x y", "cadence": "rate(1 day)", "export": "$export"}),
            "name",
        ),
        (
            json!({"name": "x", "cadence": "rate(1 day)", "export": "Patient"}),
            "not a kick-off",
        ),
        (
            json!({"name": "x", "cadence": "rate(1 day)", "export": "$export", "mode": "delta"}),
            "mode",
        ),
        (
            json!({"name": "x", "cadence": "rate(1 day)", "export": "$export?_type=Nope"}),
            "Nope",
        ),
        (
            json!({"name": "x", "cadence": "rate(1 day)", "export": "$export", "startFromRelease": "v9", "mode": "incremental"}),
            "No release",
        ),
        (
            json!({"name": "x", "cadence": "rate(1 day)", "export": "$export", "extra": 1}),
            "unknown field",
        ),
    ] {
        let r = st
            .call(
                "POST",
                "$export-schedules",
                Some(&owner),
                &[],
                Some(bad.to_string()),
            )
            .await;
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            r.status == 400 || r.status == 404,
            "{bad}: {} {text}",
            r.status
        );
        assert!(text.contains(words), "{bad}: {text}");
        assert!(text.contains("OperationOutcome"));
    }
    // An incremental schedule from a release must export what the release holds.
    let release = json!({"name": "patients", "export": "$export?_type=Patient"});
    let r = st
        .call(
            "POST",
            "$export-releases",
            Some(&owner),
            &[],
            Some(release.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let wider = json!({"name": "sub", "cadence": "rate(1 day)", "mode": "incremental",
                       "export": "$export?_type=Patient,Observation", "startFromRelease": "patients"});
    let r = st
        .call(
            "POST",
            "$export-schedules",
            Some(&owner),
            &[],
            Some(wider.to_string()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("startFromRelease"));
    // A client limited to a Group sees no release (a system-wide export).
    let grouped = issuer.issue("other", "system/*.read", Some(vec!["g1".into()]), now);
    let r = st
        .call(
            "GET",
            "$export-releases/patients/manifest",
            Some(&grouped),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = st
        .call(
            "GET",
            "$export-releases/patients/manifest",
            Some(&other),
            &[],
            None,
        )
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.status);

    // A release needs read access to every type.
    let narrow = issuer.issue("other", "system/Patient.read", None, now);
    let r = st
        .call(
            "POST",
            "$export-releases",
            Some(&narrow),
            &[],
            Some(json!({"name": "n", "export": "$export"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 403);
}

/// The nightly CSV for the warehouse: a schedule whose saved request is a
/// `$viewdefinition-export`, incremental, delivered to a folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_view_export_delivers_each_runs_rows_as_csv() {
    let delivery = tempfile::tempdir().unwrap();
    let dir = delivery.path().to_path_buf();
    let app = spawn_app(Options {
        tune: Box::new({
            let dir = dir.clone();
            move |c| c.delivery_dir = Some(dir)
        }),
        ..Default::default()
    })
    .await;
    let st = Embedded(app);
    for (id, family) in [("v1", "Ames"), ("v2", "Bede"), ("v3", "Cole")] {
        put(&st, patient(id, family)).await;
    }
    let view = json!({
        "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
        "status": "active",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "family", "path": "name.family.first()"}
        ]}]
    });
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "view", "part": [{"name": "viewResource", "resource": view}]},
        {"name": "_format", "valueCode": "csv"}
    ]});
    let s = create_schedule(
        &st,
        json!({"name": "names-csv", "cadence": "rate(1 day)", "mode": "incremental",
               "viewExport": parameters}),
    )
    .await;
    assert!(s["export"].is_null() && s["viewExport"]["resourceType"] == "Parameters");
    let id = s["id"].as_str().unwrap().to_string();
    let csv_of = |run: &str| {
        let folder = dir.join("names-csv").join(run);
        let file = std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".csv"))
            .expect("a CSV file");
        let mut lines: Vec<String> = std::fs::read_to_string(file.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let wait_delivered = |run: &'static str| {
        let manifest = dir.join("names-csv").join(run).join("manifest.json");
        async move {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            while !manifest.exists() {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "run {run} never delivered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(tick(&st).await, 1);
    run_manifest(&st, &id, "1").await;
    wait_delivered("1").await;
    assert_eq!(
        csv_of("1"),
        vec!["id,family", "v1,Ames", "v2,Bede", "v3,Cole"]
    );

    put(&st, patient("v2", "Bright")).await;
    advance(&st, chrono::Duration::days(1));
    assert_eq!(tick(&st).await, 1);
    let m = run_manifest(&st, &id, "2").await;
    assert!(
        m["request"]
            .as_str()
            .unwrap()
            .ends_with("$viewdefinition-export"),
        "{m}"
    );
    wait_delivered("2").await;
    assert_eq!(
        csv_of("2"),
        vec!["id,family", "v2,Bright"],
        "only the changed row"
    );

    // A view export schedule takes no kick-off besides, and a bad view is refused now.
    let both = json!({"name": "x", "cadence": "rate(1 day)", "export": "$export",
                      "viewExport": {"resourceType": "Parameters"}});
    assert_eq!(
        call(&st, "POST", "$export-schedules", Some(both))
            .await
            .status,
        400
    );
    let bad = json!({"name": "x", "cadence": "rate(1 day)", "viewExport": {"resourceType": "Parameters",
        "parameter": [{"name": "view", "part": [{"name": "viewResource", "resource": {"resourceType": "ViewDefinition"}}]}]}});
    let r = call(&st, "POST", "$export-schedules", Some(bad)).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("view[0]"));
}

/// Passes everything through, but pauses the schedule (as its owner would)
/// just before the first claim, so the claim loses to the pause.
struct PauseBeforeClaim {
    inner: Arc<dyn ScheduleStore>,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ScheduleStore for PauseBeforeClaim {
    async fn create_schedule(&self, s: &Schedule) -> PortResult<()> {
        self.inner.create_schedule(s).await
    }
    async fn get_schedule(&self, id: &str) -> PortResult<Option<Schedule>> {
        self.inner.get_schedule(id).await
    }
    async fn update_schedule(&self, s: &Schedule) -> PortResult<Schedule> {
        if !self.done.swap(true, Ordering::SeqCst) {
            let mut paused = self.inner.get_schedule(&s.id).await?.unwrap();
            paused.paused = true;
            paused.next_due = None;
            self.inner.update_schedule(&paused).await?;
        }
        self.inner.update_schedule(s).await
    }
    async fn delete_schedule(&self, id: &str) -> PortResult<()> {
        self.inner.delete_schedule(id).await
    }
    async fn schedules_of(&self, owner: &str) -> PortResult<Vec<Schedule>> {
        self.inner.schedules_of(owner).await
    }
    async fn due_schedules(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> PortResult<Vec<Schedule>> {
        self.inner.due_schedules(now, limit).await
    }
    async fn create_release(&self, r: &Release) -> PortResult<()> {
        self.inner.create_release(r).await
    }
    async fn get_release(&self, name: &str) -> PortResult<Option<Release>> {
        self.inner.get_release(name).await
    }
    async fn update_release(&self, r: &Release) -> PortResult<Release> {
        self.inner.update_release(r).await
    }
    async fn releases(&self) -> PortResult<Vec<Release>> {
        self.inner.releases().await
    }
}

/// A pause that lands between a scheduler storing a run's job and claiming
/// the run: the claim loses, and the job, which belongs to no run, is
/// cancelled rather than left to export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_claim_loses_to_a_pause_is_cancelled() {
    let st = Embedded(spawn_app(Options::default()).await);
    put(&st, patient("c1", "Claim")).await;
    let s = create_schedule(
        &st,
        json!({"name": "raced", "cadence": "rate(1 day)", "export": "$export?_type=Patient"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let base = st.engine();
    let ports = bulk_export::engine::Ports {
        schedules: Arc::new(PauseBeforeClaim {
            inner: base.ports.schedules.clone(),
            done: Default::default(),
        }),
        ..base.ports.clone()
    };
    let racing = Services::new(ports, (*base.config).clone());
    assert_eq!(racing.schedules.fire_due_schedules().await.unwrap(), 0);
    let s = schedule(&st, &id).await;
    assert_eq!(
        (s["status"].as_str(), s["runs"].as_u64()),
        (Some("paused"), Some(0))
    );
    let job = base
        .ports
        .jobs
        .get_job(&format!("{id}-run-1"))
        .await
        .unwrap()
        .expect("the run's job was stored before the claim");
    assert_eq!(job.state, bulk_export::domain::job::JobState::Cancelled);
}
