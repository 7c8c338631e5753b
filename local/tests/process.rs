//! The real `bulk-export-local` binary: it prints its base URL when ready,
//! shuts down cleanly on SIGTERM, and a committed write survives a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-export-local"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sample-patients",
            "2",
            "--data-dir",
        ])
        .arg(data_dir)
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
