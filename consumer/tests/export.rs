//! `export` against the local service: every level and kick-off
//! parameter, SMART tokens that expire during downloads, gzip, manifest
//! pages, and resuming in the same folder.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulk_export::auth::ClientRegistration;
use bulk_export::domain::job::artifact_key;
use bulk_export_client::auth::{ClientKey, Credentials, TokenSource};
use bulk_export_client::progress::{Progress, Quiet};
use bulk_export_client::{
    Export, ExportRequest, Exported, FetchError, FetchOptions, Level, Session,
};
use bulk_export_local::{start, LocalConfig, Overrides, Running};
use reqwest::Client;
use serde_json::{json, Value};

async fn service(dir: &Path, tune: impl FnOnce(&mut LocalConfig)) -> Running {
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    config.sample_patients = 4;
    config.engine.max_resources_per_file = 40;
    config.engine.reuse_window = Duration::ZERO;
    tune(&mut config);
    start(config, Overrides::default())
        .await
        .expect("service starts")
}

fn export(session: Session, base: &str, request: ExportRequest, dir: &Path) -> Export {
    Export {
        session,
        base: base.to_string(),
        request,
        dir: dir.to_path_buf(),
        options: FetchOptions {
            parallel: 3,
            tries: 3,
            pause: Duration::from_millis(20),
        },
        timeout: Duration::from_secs(60),
        progress: Arc::new(Quiet),
    }
}

async fn run(export: &Export) -> Result<Exported, FetchError> {
    let (status, resumed) = export.start().await?;
    export.complete(&status, resumed).await
}

fn open() -> Session {
    Session::open(Client::new())
}

/// Each output file's lines, parsed, checked against its manifest count.
fn lines_of(dir: &Path, list: &str) -> Vec<Value> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut all = Vec::new();
    for entry in manifest[list].as_array().cloned().unwrap_or_default() {
        let text = std::fs::read_to_string(dir.join(entry["url"].as_str().unwrap())).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            entry["count"].as_u64().unwrap()
        );
        all.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    all
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|r| r["resourceType"] == t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_and_parameter_reaches_the_server() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path(), |_| {}).await;
    let base = running.base_url.clone();
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    // System level: _type, _typeFilter and _elements.
    let out = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        types: vec!["Patient".into(), "Observation".into()],
        type_filters: vec!["Observation?status=final".into()],
        elements: vec!["status".into()],
        ..Default::default()
    };
    let done = run(&export(open(), &base, request, out.path()))
        .await
        .unwrap();
    assert_eq!(done.error_files, 0);
    let lines = lines_of(out.path(), "output");
    let observations = of_type(&lines, "Observation");
    assert!(!observations.is_empty() && !of_type(&lines, "Patient").is_empty());
    assert_eq!(
        lines.len(),
        observations.len() + of_type(&lines, "Patient").len()
    );
    for o in &observations {
        assert_eq!(o["status"], "final");
        assert!(
            o.get("subject").is_none(),
            "_elements kept only status: {o}"
        );
        assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    // Patient level, organized by patient, with associated Provenance.
    let out = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        level: Some(Level::Patient),
        types: vec!["Patient".into(), "Condition".into()],
        organize_output_by: Some("Patient".into()),
        include_associated_data: vec!["LatestProvenanceResources".into()],
        ..Default::default()
    };
    let done = run(&export(open(), &base, request, out.path()))
        .await
        .unwrap();
    let asked = done.manifest.json["request"].as_str().unwrap();
    assert!(asked.contains("/Patient/$export?"), "{asked}");
    assert!(asked.contains("organizeOutputBy=Patient"), "{asked}");
    assert!(
        asked.contains("includeAssociatedData=LatestProvenanceResources"),
        "{asked}"
    );
    assert_eq!(of_type(&lines_of(out.path(), "output"), "Patient").len(), 4);

    // Group level, one patient named: a POST of Parameters.
    let out = tempfile::tempdir().unwrap();
    let patients = of_type(&lines, "Patient");
    let id = patients[0]["id"].as_str().unwrap();
    let request = ExportRequest {
        level: Some(Level::Group("sample-all-patients".into())),
        types: vec!["Patient".into()],
        patients: vec![format!("Patient/{id}")],
        ..Default::default()
    };
    run(&export(open(), &base, request, out.path()))
        .await
        .unwrap();
    let only = lines_of(out.path(), "output");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["id"], id);

    // _since and _until: a deletion since `before` comes in deleted[].
    let http = Client::new();
    let gone = patients[1]["id"].as_str().unwrap();
    let resp = http
        .delete(format!("{base}/Patient/{gone}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let out = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        types: vec!["Patient".into()],
        since: Some(before.clone()),
        until: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        ..Default::default()
    };
    let done = run(&export(open(), &base, request, out.path()))
        .await
        .unwrap();
    assert!(lines_of(out.path(), "output").is_empty());
    let deleted = lines_of(out.path(), "deleted");
    assert_eq!(deleted.len(), 1, "{:?}", done.manifest.json);
    assert_eq!(
        deleted[0]["entry"][0]["request"]["url"],
        format!("Patient/{gone}")
    );
    running.shutdown().await;
}

/// Sleeps after each file, as a slow disk would: downloads outlast tokens.
struct Slow(Duration);
impl Progress for Slow {
    fn file_done(&self, _name: &str, _kept: bool) {
        std::thread::sleep(self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_tokens_that_expire_during_downloads_are_renewed() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path(), |c| {
        c.auth = true;
        c.access_token_seconds = 2;
        c.engine.max_resources_per_file = 25;
    })
    .await;
    let base = running.base_url.clone();
    // An ES384 key as a JWK, registered by its public half.
    let secret = p384::SecretKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
    let mut private: Value = serde_json::from_str(&secret.to_jwk_string()).unwrap();
    private["kid"] = json!("k1");
    let mut public: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    public["kid"] = json!("k1");
    running
        .clients
        .put_client(&ClientRegistration {
            client_id: "warehouse".into(),
            jwks: Some(json!({"keys": [public]})),
            scope: "system/*.read".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = ClientKey::from_jwk(&private.to_string()).unwrap();
    let credentials = Credentials {
        client_id: "warehouse".into(),
        key,
        scope: "system/*.read".into(),
        token_url: None,
    };
    let http = Client::new();
    let tokens = TokenSource::discover(&http, &base, credentials)
        .await
        .unwrap();
    let session = Session {
        http,
        tokens: Some(Arc::new(tokens)),
    };

    // Without a token the server refuses.
    let out = tempfile::tempdir().unwrap();
    let refused = run(&export(open(), &base, ExportRequest::default(), out.path())).await;
    assert!(
        matches!(refused, Err(FetchError::Status { status: 401, .. })),
        "{refused:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let mut job = export(session.clone(), &base, ExportRequest::default(), out.path());
    job.options.parallel = 1;
    job.progress = Arc::new(Slow(Duration::from_millis(700)));
    let done = run(&job).await.unwrap();
    assert_eq!(done.manifest.json["requiresAccessToken"], true);
    let files = done.fetched.downloaded.len();
    assert!(files >= 5, "{files} files");
    // 5+ files at 0.7 s each outlast several 2 s tokens.
    assert!(
        session.tokens_fetched() >= 2,
        "{} tokens",
        session.tokens_fetched()
    );
    assert!(!lines_of(out.path(), "output").is_empty());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_come_gzipped_and_are_undone_and_checked() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path(), |_| {}).await;
    let base = running.base_url.clone();
    let out = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        types: vec!["Patient".into()],
        ..Default::default()
    };
    let job = export(open(), &base, request, out.path());
    let (status, _) = job.start().await.unwrap();
    let first = job.complete(&status, false).await.unwrap();
    let name = first.fetched.downloaded[0].clone();
    let plain = std::fs::read(out.path().join(&name)).unwrap();

    // Damage the plain file on the server: the client asks for gzip, so it
    // gets the intact twin and, undone, the same bytes.
    let job_id = status.rsplit('/').next().unwrap();
    let key = artifact_key(job_id, &name);
    let artifacts = &running.services.ports.artifacts;
    let mut damaged = artifacts.get(&key).await.unwrap().to_vec();
    damaged[5] ^= 1;
    artifacts.put(&key, damaged.into()).await.unwrap();
    std::fs::remove_file(out.path().join(&name)).unwrap();
    let again = job.complete(&status, true).await.unwrap();
    assert_eq!(again.fetched.downloaded, vec![name.clone()]);
    assert_eq!(std::fs::read(out.path().join(&name)).unwrap(), plain);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_pages_are_followed_while_the_export_runs() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path(), |c| {
        c.sample_patients = 10;
        c.engine.max_resources_per_file = 10;
        c.engine.manifest_page_files = 2;
    })
    .await;
    let base = running.base_url.clone();
    let whole = tempfile::tempdir().unwrap();
    run(&export(
        open(),
        &base,
        ExportRequest::default(),
        whole.path(),
    ))
    .await
    .unwrap();
    let paged = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        allow_partial_manifests: true,
        ..Default::default()
    };
    let done = run(&export(open(), &base, request, paged.path()))
        .await
        .unwrap();
    let files = done.manifest.items.len();
    assert!(files > 6, "{files} files over pages of 2");
    assert!(done.manifest.json.get("link").is_none());
    let ids = |dir: &Path| {
        let mut ids: Vec<String> = lines_of(dir, "output")
            .iter()
            .map(|r| format!("{}/{}", r["resourceType"], r["id"]))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(paged.path()), ids(whole.path()), "every resource, once");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_command_again_continues_the_same_export() {
    let data = tempfile::tempdir().unwrap();
    let running = service(data.path(), |_| {}).await;
    let base = running.base_url.clone();
    let out = tempfile::tempdir().unwrap();
    let request = ExportRequest {
        types: vec!["Patient".into(), "Observation".into()],
        ..Default::default()
    };
    let first = run(&export(open(), &base, request.clone(), out.path()))
        .await
        .unwrap();
    assert!(!first.resumed);
    let lost = first.fetched.downloaded[1].clone();
    std::fs::remove_file(out.path().join(&lost)).unwrap();

    let again = run(&export(open(), &base, request.clone(), out.path()))
        .await
        .unwrap();
    assert!(again.resumed);
    assert_eq!(
        again.status_url, first.status_url,
        "the same export, not a new one"
    );
    assert_eq!(again.fetched.downloaded, vec![lost]);
    assert_eq!(again.fetched.kept.len(), first.fetched.downloaded.len() - 1);

    // Another export is refused in a folder that holds one.
    let other = ExportRequest {
        types: vec!["Condition".into()],
        ..Default::default()
    };
    let err = run(&export(open(), &base, other, out.path()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds another export"), "{err}");

    // Gone from the server (cancelled): started again.
    Client::new()
        .delete(&first.status_url)
        .send()
        .await
        .unwrap();
    let restarted = run(&export(open(), &base, request, out.path()))
        .await
        .unwrap();
    assert_ne!(restarted.status_url, first.status_url);
    running.shutdown().await;
}
