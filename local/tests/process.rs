//! The real `bulk-export-local` binary: it prints its base URL when ready,
//! shuts down cleanly on SIGTERM, a committed write survives a restart, and
//! the authorization walk-through (docs/src/user/authorization.md) works with its helpers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The running binary. Dropping it kills the process if it still runs, so
/// a test that fails before it stops its server leaves none behind.
struct Server(Child, std::sync::Arc<std::sync::Mutex<String>>);

impl Server {
    /// What the server logged since it was ready.
    fn logged(&self) -> String {
        self.1.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start(data_dir: &std::path::Path) -> (Server, String) {
    start_with(data_dir, &[])
}

fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> (Server, String) {
    let (child, base, _) = start_logged(data_dir, extra, "warn");
    (child, base)
}

/// Starts the binary; returns it, its FHIR base and what it logged before
/// it was ready (at `log_level`).
fn start_logged(
    data_dir: &std::path::Path,
    extra: &[&str],
    log_level: &str,
) -> (Server, String, String) {
    let sample: &[&str] = if extra.contains(&"--sample-patients") {
        &[]
    } else {
        &["--sample-patients", "2"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-export-local"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(sample)
        .args(extra)
        .env("RUST_LOG", log_level)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let child = Server(child, Default::default());
    let mut before = String::new();
    let base = loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the binary ended before it was ready: {before}");
        }
        if let Some(base) = line.trim().strip_prefix("bulk-export is ready: FHIR base ") {
            break base.to_string();
        }
        before.push_str(&line);
    };
    // Keep draining stdout so the server never blocks on a full pipe; what
    // it logs from here on is kept.
    let after = child.1.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            after.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    (child, base, before)
}

fn terminate(mut server: Server) {
    let child = &mut server.0;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the server did not stop within 10 s of SIGTERM");
}

#[test]
fn prints_its_url_stops_on_sigterm_and_keeps_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, base) = start(dir.path());
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/fhir"),
        "{base}"
    );
    let client = reqwest::blocking::Client::new();
    let resp = client
        .put(format!("{base}/Patient/kept"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","id":"kept","gender":"other"}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    terminate(child);

    let (child, base) = start(dir.path());
    let resp = client.get(format!("{base}/Patient/kept")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["gender"], "other");
    assert_eq!(body["meta"]["versionId"], "1");
    terminate(child);
}

/// Runs a subcommand of the binary and returns what it printed.
fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bulk-export-local"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The authorization walk-through (docs/src/user/authorization.md), with the shipped helpers:
/// make a key, register the client, get a token, export with it.
#[test]
fn authorized_export_with_the_shipped_client_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, client) = (dir.path().join("data"), dir.path().join("client"));
    let (data_s, client_s) = (data.to_str().unwrap(), client.to_str().unwrap());
    run(&["client-key", "--out-dir", client_s]);
    let jwks = format!("{client_s}/jwks.json");
    run(&[
        "register-client",
        "--data-dir",
        data_s,
        "--client-id",
        "my-client",
        "--jwks-file",
        &jwks,
        "--scope",
        "system/*.read",
    ]);
    let (child, base) = start_with(&data, &["--auth"]);
    let token_url = base.replace("/fhir", "/auth/token");
    let key = format!("{client_s}/private-key.pem");
    let assertion = run(&[
        "client-assertion",
        "--key",
        &key,
        "--client-id",
        "my-client",
        "--token-url",
        &token_url,
    ]);

    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token: serde_json::Value = http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.trim()),
            ("scope", "system/*.read"),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let kickoff = |auth: Option<&str>| {
        let mut r = http
            .get(format!("{base}/$export?_type=Patient"))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async");
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    assert_eq!(kickoff(None).status(), 401);
    let resp = kickoff(Some(&token));
    assert_eq!(resp.status(), 202);
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = loop {
        let r = http.get(&status).bearer_auth(&token).send().unwrap();
        if r.status() == 200 {
            break r.json().unwrap();
        }
        assert_eq!(r.status(), 202);
        std::thread::sleep(Duration::from_millis(50));
    };
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let r = http.get(file).bearer_auth(&token).send().unwrap();
    assert_eq!(r.status(), 303);
    let lines = http
        .get(r.headers()["location"].to_str().unwrap())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(lines.lines().count(), 2);
    terminate(child);
}

/// `kill -9` in the middle of an export, then a restart on the same data
/// directory: the new process takes back the work the dead one held (it is
/// its queue's only consumer), so the export finishes within seconds, not
/// after the 360 s visibility timeout, and exactly.
#[test]
fn killed_mid_export_a_restart_resumes_at_once_and_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Many small pages on one worker: the export takes seconds.
    let slow = [
        "--sample-patients",
        "400",
        "--workers",
        "1",
        "--page-size",
        "2",
        // Polls answer at once: the test must see the export mid-way.
        "--status-wait-ms",
        "0",
    ];
    let (mut child, base) = start_with(dir.path(), &slow);
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .get(format!("{base}/$export?_type=Observation"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    // Kill it once the export has made progress.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = http.get(&status).send().unwrap();
        assert_eq!(r.status(), 202, "still running when killed");
        let pct: u32 = r
            .headers()
            .get("x-progress-percent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_end_matches('%').parse().ok())
            .unwrap_or(0);
        if pct > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let restarted = std::time::Instant::now();
    let (child, base2, log) = start_logged(dir.path(), &slow, "info");
    assert!(
        log.contains("resuming work a previous run left in flight"),
        "the dead process held the export's work: {log}"
    );
    let status = status.replace(&base, &base2);
    let manifest: serde_json::Value = loop {
        let r = http.get(&status).send().unwrap();
        if r.status() == 200 {
            break r.json().unwrap();
        }
        assert_eq!(r.status(), 202);
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "the export did not resume"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let resumed_in = restarted.elapsed();
    // Exactly once: every Observation of the sample, none twice.
    let expected: std::collections::BTreeSet<String> =
        bulk_export::sample::generate(bulk_export::sample::SampleConfig {
            patients: 400,
            seed: bulk_export::loader::SAMPLE_SEED,
        })
        .filter(|r| r["resourceType"] == "Observation")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let mut seen = Vec::new();
    for file in manifest["output"].as_array().unwrap() {
        let url = file["url"].as_str().unwrap().replace(&base, &base2);
        let r = http.get(&url).send().unwrap();
        assert_eq!(r.status(), 303);
        let text = http
            .get(r.headers()["location"].to_str().unwrap())
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(text.lines().count() as u64, file["count"].as_u64().unwrap());
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            seen.push(v["id"].as_str().unwrap().to_string());
        }
    }
    let n = seen.len();
    let seen: std::collections::BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(n, seen.len(), "no resource twice");
    assert_eq!(seen, expected, "every resource once");
    eprintln!("resumed and finished {resumed_in:?} after the restart");
    terminate(child);
}

/// Exports cancelled at once or mid-way (as a conformance suite does) end
/// quietly: no warning in the log, no retried work, and no file left once
/// the sweeper has run.
#[test]
fn a_cancel_race_leaves_no_warning_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _) = start_logged(
        dir.path(),
        &["--sample-patients", "40", "--sweep-seconds", "1"],
        "warn",
    );
    let http = reqwest::blocking::Client::new();
    for round in 0..24u64 {
        let resp = http
            .get(format!("{base}/$export"))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .header("cache-control", "no-cache")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 202);
        let status = resp.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        // At once, or after the export has started writing.
        std::thread::sleep(Duration::from_millis((round % 6) * 15));
        let resp = http.delete(&status).send().unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(http.get(&status).send().unwrap().status(), 404);
    }
    // The sweeper runs every second: every job's files are gone within a
    // few of its runs.
    let jobs = dir.path().join("files").join("jobs");
    let mut left = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        left = std::fs::read_dir(&jobs)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
    }
    let logged = server.logged();
    terminate(server);
    assert!(left.is_empty(), "files left: {left:?}");
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}
