//! `sync` against the local service: a mirror from a release, then
//! `_since` exports or an incremental schedule's runs with updates and
//! deletions; `--check` finds none after a correct sync, and finds a
//! mirror changed behind its back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulk_export_client::mirror::Mirror;
use bulk_export_client::progress::Quiet;
use bulk_export_client::sync::Sync;
use bulk_export_client::views::ViewSource;
use bulk_export_client::{FetchOptions, Session};
use bulk_export_local::{start, LocalConfig, Overrides, Running};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn service(dir: &Path) -> Running {
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.sample_patients = 5;
    config.engine.max_resources_per_file = 50;
    config.engine.reuse_window = Duration::ZERO;
    start(config, Overrides::default())
        .await
        .expect("service starts")
}

fn sync(base: &str, mirror: &Path, release: Option<&str>, schedule: Option<&str>) -> Sync {
    Sync {
        session: Session::open(Client::new()),
        base: base.to_string(),
        mirror: mirror.to_path_buf(),
        release: release.map(str::to_string),
        schedule: schedule.map(str::to_string),
        types: Vec::new(),
        views: Vec::new(),
        options: FetchOptions {
            parallel: 3,
            tries: 3,
            pause: Duration::from_millis(20),
        },
        timeout: Duration::from_secs(60),
        progress: Arc::new(Quiet),
    }
}

async fn post(url: &str, body: Value) -> Value {
    let resp = Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

/// Some changes: one resource updated, one deleted, one created.
async fn change(base: &str, mirror: &Path, n: u32) -> (String, String, String) {
    let http = Client::new();
    let conn = rusqlite::Connection::open(mirror).unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM resources WHERE type = 'Patient' ORDER BY id")
        .unwrap();
    let ids: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let current: Value = http
        .get(format!("{base}/Patient/{}", ids[n as usize]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut updated = current;
    updated["gender"] = json!(if n.is_multiple_of(2) {
        "other"
    } else {
        "unknown"
    });
    updated["multipleBirthInteger"] = json!(n);
    let id = ids[n as usize].clone();
    let resp = http
        .put(format!("{base}/Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body(updated.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // Each call changes other patients (the mirror may be behind).
    let gone = ids[ids.len() - n as usize].clone();
    let resp = http
        .delete(format!("{base}/Patient/{gone}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let created: Value = http
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        // As text: the decimal's trailing zero is the client's.
        .body(r#"{"resourceType": "Patient", "birthDate": "2001-01-01", "weight": 70.50}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (id, gone, created["id"].as_str().unwrap().to_string())
}

/// The mirror holds each change as the server now has it.
async fn holds(base: &str, mirror: &Path, (updated, gone, created): &(String, String, String)) {
    let m = Mirror::open(mirror).unwrap();
    for id in [updated, created] {
        let stored: Value = serde_json::from_str(&m.get("Patient", id).unwrap().unwrap()).unwrap();
        let live: Value = Client::new()
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stored, live);
    }
    assert_eq!(m.get("Patient", gone).unwrap(), None, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_from_a_release_then_since_exports() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path()).await;
    let base = running.base_url.clone();
    post(
        &format!("{base}/$export-releases"),
        json!({"name": "r1", "export": "$export"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.db");

    let first = sync(&base, &mirror, Some("latest"), None)
        .run()
        .await
        .unwrap();
    assert_eq!(first.steps.len(), 1);
    assert_eq!(first.steps[0].0, "release-r1");
    assert!(first.resources > 50, "{first:?}");
    assert_eq!(first.steps[0].1.upserted, first.resources);
    assert!(sync(&base, &mirror, None, None)
        .check()
        .await
        .unwrap()
        .is_empty());

    let changes = change(&base, &mirror, 1).await;
    let second = sync(&base, &mirror, None, None).run().await.unwrap();
    let applied = &second.steps[0].1;
    assert!(second.steps[0].0.starts_with("since-"), "{second:?}");
    assert!(applied.upserted >= 2 && applied.deleted == 1, "{applied:?}");
    assert_eq!(second.resources, first.resources);
    holds(&base, &mirror, &changes).await;
    assert!(sync(&base, &mirror, None, None)
        .check()
        .await
        .unwrap()
        .is_empty());
    assert!(!dir.path().join("mirror.db.steps/since").exists());

    // Kept exactly as exported: the decimal keeps its trailing zero.
    let created = Mirror::open(&mirror)
        .unwrap()
        .get("Patient", &changes.2)
        .unwrap();
    assert!(created.unwrap().contains("70.50"));

    // A mirror changed behind the client's back is found out.
    let conn = rusqlite::Connection::open(&mirror).unwrap();
    conn.execute("DELETE FROM resources WHERE id = ?1", [&changes.2])
        .unwrap();
    conn.execute(
        "UPDATE resources SET json = replace(json, '\"gender\"', '\"sex\"') WHERE id = ?1",
        [&changes.0],
    )
    .unwrap();
    drop(conn);
    let d = sync(&base, &mirror, None, None).check().await.unwrap();
    assert_eq!(d.missing, vec![format!("Patient/{}", changes.2)]);
    assert_eq!(d.changed, vec![format!("Patient/{}", changes.0)]);
    assert!(d.extra.is_empty());
    running.shutdown().await;
}

/// Runs the schedule now and waits for the run to complete.
async fn run_now(base: &str, schedule: &str) {
    let http = Client::new();
    let resp = http
        .post(format!("{base}/$export-schedules/{schedule}/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..600 {
        if http.get(&status).send().await.unwrap().status() == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run did not complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_from_a_release_then_an_incremental_schedule() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path()).await;
    let base = running.base_url.clone();
    post(
        &format!("{base}/$export-releases"),
        json!({"name": "r1", "export": "$export"}),
    )
    .await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let schedule = post(
        &format!("{base}/$export-schedules"),
        json!({"name": "nightly", "cadence": "rate(1 day)", "export": "$export",
               "mode": "incremental", "startFromRelease": "r1", "startAt": tomorrow}),
    )
    .await;
    let id = schedule["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.db");
    let first = sync(&base, &mirror, Some("r1"), Some(&id))
        .run()
        .await
        .unwrap();
    assert_eq!(first.steps.len(), 1, "the release; no run yet");

    // Two runs, each with an update, a deletion and a creation.
    let one = change(&base, &mirror, 1).await;
    run_now(&base, &id).await;
    let two = change(&base, &mirror, 2).await;
    run_now(&base, &id).await;
    let synced = sync(&base, &mirror, None, Some(&id)).run().await.unwrap();
    let names: Vec<&str> = synced.steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["run-1", "run-2"]);
    assert_eq!(synced.resources, first.resources, "+1 -1 twice");
    holds(&base, &mirror, &two).await;
    let m = Mirror::open(&mirror).unwrap();
    assert_eq!(m.get("Patient", &one.1).unwrap(), None);
    assert!(m.get("Patient", &one.2).unwrap().is_some());
    drop(m);
    assert!(sync(&base, &mirror, None, Some(&id))
        .check()
        .await
        .unwrap()
        .is_empty());

    // Nothing new: nothing applied, nothing changed.
    let again = sync(&base, &mirror, None, Some(&id)).run().await.unwrap();
    assert!(again.steps.is_empty());
    assert_eq!(again.cursor, synced.cursor);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_kept_as_tables_beside_the_resources() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path()).await;
    let base = running.base_url.clone();
    let view = |name: &str| {
        json!({"resourceType": "ViewDefinition", "name": name, "resource": "Patient",
               "status": "active",
               "select": [{"column": [{"name": "id", "path": "id"},
                                      {"name": "gender", "path": "gender"},
                                      {"name": "family", "path": "name.first().family"}]}]})
    };
    // One from a file, one the server holds.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.json");
    std::fs::write(&file, view("patient_demo").to_string()).unwrap();
    let resp = Client::new()
        .put(format!("{base}/ViewDefinition/stored"))
        .header("content-type", "application/fhir+json")
        .body({
            let mut v = view("stored_demo");
            v["id"] = json!("stored");
            v.to_string()
        })
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mirror = dir.path().join("mirror.db");
    let mut job = sync(&base, &mirror, None, None);
    job.views = vec![
        ViewSource::from_arg(file.to_str().unwrap()).unwrap(),
        ViewSource::from_arg("stored").unwrap(),
    ];
    let first = job.run().await.unwrap();
    let patients = {
        let conn = rusqlite::Connection::open(&mirror).unwrap();
        conn.query_row(
            "SELECT count(*) FROM resources WHERE type = 'Patient'",
            [],
            |r| r.get::<_, u64>(0),
        )
        .unwrap()
    };
    assert_eq!(
        first.views,
        vec![
            ("view_patient_demo".to_string(), patients),
            ("view_stored_demo".to_string(), patients)
        ]
    );

    // A change on the server reaches the table at the next sync.
    let changed = change(&base, &mirror, 1).await;
    job.run().await.unwrap();
    let conn = rusqlite::Connection::open(&mirror).unwrap();
    let gender: String = conn
        .query_row(
            "SELECT gender FROM view_patient_demo WHERE id = ?1",
            [&changed.0],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gender, "unknown");
    let gone: u64 = conn
        .query_row(
            "SELECT count(*) FROM view_stored_demo WHERE id = ?1",
            [&changed.1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gone, 0);
    running.shutdown().await;
}
