//! The real `bulk-export-local` binary: it prints its base URL when ready,
//! shuts down cleanly on SIGTERM, a committed write survives a restart, and
//! the README's authorization walk-through works with its helpers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start(data_dir: &std::path::Path) -> (Child, String) {
    start_with(data_dir, &[])
}

fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-export-local"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sample-patients",
            "2",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("bulk-export is ready: FHIR base ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, base)
}

fn terminate(mut child: Child) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            let mut rest = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut rest).unwrap();
            return rest;
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
    let rest = terminate(child);
    assert!(rest.contains("shutting down"), "{rest}");

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

/// The README's authorization walk-through, with the shipped helpers:
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
