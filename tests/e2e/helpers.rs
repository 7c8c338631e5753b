//! The harness: start the real service on a free port with fresh storage,
//! and speak the Bulk Data protocol to it over HTTP.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bulk_export::clock::OffsetClock;
use bulk_export::domain::access::Access;
use bulk_export::engine::Caller;
use bulk_export::http::ApiError;
use bulk_export::http::Authenticator;
use bulk_export_local::{start, ArtifactWrapper, LocalConfig, Overrides, Running};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

/// The Synthea sample, vendored with the tests (see its README).
pub const SYNTHEA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/synthea-r4-100");

/// Test-only identity: `X-Test-Subject` names the caller, `X-Test-Scope`
/// (if present) gives its SMART scopes and `X-Test-Groups` its Group
/// allow-list, so access rules can be exercised before real tokens exist.
pub struct HeaderSubject;

#[async_trait]
impl Authenticator for HeaderSubject {
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let subject = text("x-test-subject").unwrap_or("alice").to_string();
        let access = match text("x-test-scope") {
            Some(scopes) => Access::from_scopes(scopes),
            None => Access::unrestricted(),
        };
        let groups = text("x-test-groups").map(|g| g.split(',').map(str::to_string).collect());
        Ok(Caller {
            subject,
            access: access.with_groups(groups),
        })
    }
}

pub struct TestApp {
    pub running: Running,
    pub client: Client,
    pub clock: Arc<OffsetClock>,
    /// Keeps the data directory alive for the test.
    pub _dir: tempfile::TempDir,
}

pub struct Options {
    pub sample_patients: usize,
    pub wrap_artifacts: Option<ArtifactWrapper>,
    pub tune: Box<dyn FnOnce(&mut LocalConfig) + Send>,
    pub header_subject: bool,
    /// Authorization on: bearer tokens from the built-in issuer.
    pub auth: bool,
    /// Gets every completion event.
    pub events: Option<Arc<dyn bulk_export::ports::EventPublisher>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sample_patients: 0,
            wrap_artifacts: None,
            tune: Box::new(|_| {}),
            header_subject: false,
            auth: false,
            events: None,
        }
    }
}

pub async fn spawn_app(opts: Options) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.sample_patients = opts.sample_patients;
    config.auth = opts.auth;
    config.visibility_timeout = Duration::from_secs(5);
    config.engine.retry_base = Duration::from_millis(100);
    config.sweep_interval = Duration::from_secs(3600);
    // Tests kick off identical exports and mean separate ones; the reuse
    // test turns reuse on.
    config.engine.reuse_window = Duration::ZERO;
    // Polls answer at once, as before the hold existed: a held poll re-reads
    // the job every 25 ms, load that tests with many polls do not need. The
    // hold's own test turns it on.
    config.engine.status_wait = Duration::ZERO;
    // Schedules fire when a test says so (it moves the clock, then ticks).
    config.schedule_tick = Duration::ZERO;
    // Test webhook receivers listen on 127.0.0.1.
    config.engine.allow_private_webhooks = true;
    (opts.tune)(&mut config);
    let clock = Arc::new(OffsetClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        auth: if opts.header_subject {
            Some(Arc::new(HeaderSubject))
        } else {
            None
        },
        wrap_artifacts: opts.wrap_artifacts,
        events: opts.events,
    };
    let running = start(config, overrides).await.expect("service starts");
    // No gzip: the tests look at what the server sends (reqwest's gzip
    // feature, on for the client crate, would inflate it and drop
    // Content-Encoding); a test that wants gzip asks for it.
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .build()
        .unwrap();
    TestApp {
        running,
        client,
        clock,
        _dir: dir,
    }
}

impl TestApp {
    pub fn base(&self) -> &str {
        &self.running.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base(), path.trim_start_matches('/'))
    }

    pub async fn put(&self, resource: &Value) -> Value {
        let t = resource["resourceType"].as_str().unwrap();
        let id = resource["id"].as_str().unwrap();
        let resp = self
            .client
            .put(self.url(&format!("{t}/{id}")))
            .header("content-type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "PUT {t}/{id}: {}",
            resp.status()
        );
        resp.json().await.unwrap()
    }

    pub async fn delete(&self, t: &str, id: &str) {
        let resp = self
            .client
            .delete(self.url(&format!("{t}/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }

    /// GET `path` under the base (no credentials) and parse the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn kickoff_get(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.url(path_and_query))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
    }

    pub fn kickoff_post(&self, path: &str, params: Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
    }

    /// Sends a kick-off and returns the status URL.
    pub async fn start_export(&self, req: reqwest::RequestBuilder) -> String {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get("content-location")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "kick-off: {}",
            resp.text().await.unwrap()
        );
        let location = location.expect("Content-Location");
        assert!(
            location.starts_with("http://"),
            "absolute status URL: {location}"
        );
        location
    }

    /// Polls until the export completes; returns the manifest.
    /// Polls until the status is no longer 202; returns that answer.
    pub async fn wait_until_done(&self, status_url: &str) -> Response {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let resp = self.client.get(status_url).send().await.unwrap();
            if resp.status() != StatusCode::ACCEPTED {
                return resp;
            }
            assert!(Instant::now() < deadline, "the job did not end in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_manifest(&self, status_url: &str) -> Value {
        self.wait_manifest_as(status_url, None).await
    }

    /// The same, with an `Authorization` header.
    pub async fn wait_manifest_as(&self, status_url: &str, authorization: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut req = self.client.get(status_url);
            if let Some(a) = authorization {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            match resp.status() {
                StatusCode::OK => {
                    assert_eq!(resp.headers()["content-type"], "application/json");
                    assert!(resp.headers().contains_key("expires"));
                    return resp.json().await.unwrap();
                }
                StatusCode::ACCEPTED => {
                    let retry: u64 = resp.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!((1..=60).contains(&retry));
                    let progress = resp.headers()["x-progress"].to_str().unwrap();
                    assert!(
                        progress == "scheduled" || progress == "started",
                        "{progress}"
                    );
                }
                other => panic!("status poll: {other}: {}", resp.text().await.unwrap()),
            }
            assert!(Instant::now() < deadline, "export did not finish in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follows a manifest URL (303 to a signed link) and returns the lines.
    pub async fn download(&self, url: &str) -> Vec<Value> {
        ndjson_lines(&self.download_text(url).await)
    }

    pub async fn download_text(&self, url: &str) -> String {
        let resp = self.client.get(url).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "file endpoint answers 303"
        );
        let signed = resp.headers()["location"].to_str().unwrap().to_string();
        let resp = self.client.get(&signed).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let expected = if url.ends_with(".csv") {
            "text/csv; charset=utf-8"
        } else {
            "application/fhir+ndjson"
        };
        assert_eq!(resp.headers()["content-type"], expected);
        resp.text().await.unwrap()
    }

    /// Every output resource of a manifest, by type, checking `count`s.
    /// and that each file's bytes have the SHA-256 its `extension` gives.
    pub async fn outputs(&self, manifest: &Value, key: &str) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for entry in manifest[key].as_array().unwrap() {
            let text = self.download_text(entry["url"].as_str().unwrap()).await;
            assert_eq!(
                entry["extension"]["sha256"].as_str(),
                Some(sha256_hex(text.as_bytes()).as_str()),
                "manifest digest of {entry}"
            );
            let lines = ndjson_lines(&text);
            assert_eq!(
                entry["count"].as_u64().unwrap(),
                lines.len() as u64,
                "manifest count of {entry}"
            );
            out.entry(entry["type"].as_str().unwrap().to_string())
                .or_default()
                .extend(lines);
        }
        out
    }

    /// Files (and open uploads) left on disk for a job.
    pub async fn leftovers(&self, job_id: &str) -> Vec<String> {
        let prefix = format!("jobs/{job_id}/");
        let a = &self.running.services.ports.artifacts;
        let mut all = a.list(&prefix).await.unwrap();
        all.extend(a.list_uploads(&prefix).await.unwrap());
        all
    }
}

/// The JSON lines of an NDJSON file, each ending in a newline.
pub fn ndjson_lines(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every line ends in a newline"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// SHA-256 in lowercase hex, as manifests give it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn job_id_of(status_url: &str) -> String {
    status_url.rsplit('/').next().unwrap().to_string()
}

pub async fn expect_outcome(resp: Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    body
}

/// Removes `meta` so stored and exported resources can be compared.
pub fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("meta");
    v
}

pub fn ids(resources: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = resources
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The Synthea sample's files (gzipped NDJSON, one per type), in order.
pub fn synthea_files() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(Path::new(SYNTHEA_DIR))
        .expect("the Synthea sample beside the repo")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    paths.sort();
    paths
}

/// A gzipped file's text.
pub fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    let f = std::fs::File::open(path).unwrap();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text).unwrap();
    text
}

/// Reads the Synthea sample (gzipped NDJSON per type).
pub fn synthea() -> Vec<Value> {
    synthea_files()
        .iter()
        .flat_map(|p| {
            gunzip(p)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}
