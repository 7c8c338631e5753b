//! `fetch` and `export` against a stub server that misbehaves on purpose:
//! a 503 with `Retry-After`, a body cut short, a count or a digest that
//! does not match, a 429, an export that never finishes, and Ctrl-C.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bulk_export_client::progress::Quiet;
use bulk_export_client::{fetch, Export, ExportRequest, FetchError, FetchOptions, Session};

#[path = "common/stub.rs"]
mod stub;
use stub::{cut_short, response, stub, Script};

fn open() -> Session {
    Session::open(reqwest::Client::new())
}

fn options() -> FetchOptions {
    FetchOptions {
        parallel: 2,
        tries: 3,
        pause: Duration::from_millis(10),
    }
}

const GOOD: &str = "{\"id\":\"1\"}\n{\"id\":\"2\"}\n";

#[tokio::test]
async fn a_503_and_a_body_cut_short_are_tried_again() {
    let script: Script = Default::default();
    let (base, _) = stub(script.clone()).await;
    let manifest = format!(
        r#"{{"output": [{{"type": "Patient", "url": "{base}/f/a.ndjson", "count": 2}},
                        {{"type": "Patient", "url": "{base}/f/b.ndjson", "count": 2}}]}}"#
    );
    {
        let mut s = script.lock().unwrap();
        s.insert(
            "/status".into(),
            VecDeque::from([
                response("503 Service Unavailable", "retry-after: 0\r\n", "busy"),
                response("200 OK", "content-type: application/json\r\n", &manifest),
            ]),
        );
        s.insert(
            "/f/a.ndjson".into(),
            VecDeque::from([response("200 OK", "", GOOD)]),
        );
        s.insert(
            "/f/b.ndjson".into(),
            VecDeque::from([cut_short("{\"id\":\"1\"}\n"), response("200 OK", "", GOOD)]),
        );
    }
    let out = tempfile::tempdir().unwrap();
    let done = fetch(
        &open(),
        &format!("{base}/status"),
        out.path(),
        &options(),
        Arc::new(Quiet),
    )
    .await
    .unwrap();
    assert_eq!(done.downloaded, ["a.ndjson", "b.ndjson"]);
    // Both misbehaving answers were used up: each was tried again.
    let s = script.lock().unwrap();
    assert_eq!((s["/status"].len(), s["/f/b.ndjson"].len()), (1, 1));
    for name in ["a.ndjson", "b.ndjson"] {
        assert_eq!(
            std::fs::read_to_string(out.path().join(name)).unwrap(),
            GOOD
        );
    }
}

#[tokio::test]
async fn a_count_that_does_not_match_fails_naming_the_file_and_leaves_nothing() {
    let script: Script = Default::default();
    let (base, _) = stub(script.clone()).await;
    let manifest = format!(r#"{{"output": [{{"url": "{base}/f/c.ndjson", "count": 3}}]}}"#);
    {
        let mut s = script.lock().unwrap();
        s.insert(
            "/status".into(),
            VecDeque::from([response("200 OK", "", &manifest)]),
        );
        s.insert(
            "/f/c.ndjson".into(),
            VecDeque::from([response("200 OK", "", GOOD)]),
        );
    }
    let out = tempfile::tempdir().unwrap();
    let err = fetch(
        &open(),
        &format!("{base}/status"),
        out.path(),
        &options(),
        Arc::new(Quiet),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, FetchError::Mismatch { file, .. } if file == "c.ndjson"),
        "{err:?}"
    );
    assert!(err.to_string().contains("3 lines"), "{err}");
    let left = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(left, 0, "no file, partial or final, is left");
}

#[tokio::test]
async fn a_status_that_is_not_complete_is_said_so() {
    let script: Script = Default::default();
    let (base, _) = stub(script.clone()).await;
    script.lock().unwrap().insert(
        "/status".into(),
        VecDeque::from([response("202 Accepted", "x-progress: 10%\r\n", "")]),
    );
    let out = tempfile::tempdir().unwrap();
    let err = fetch(
        &open(),
        &format!("{base}/status"),
        out.path(),
        &options(),
        Arc::new(Quiet),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::NotComplete { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_digest_fails_naming_the_file_and_leaves_nothing() {
    let script: Script = Default::default();
    let (base, _) = stub(script.clone()).await;
    let wrong = "0".repeat(64);
    let manifest = format!(
        r#"{{"output": [{{"url": "{base}/f/d.ndjson", "count": 2, "extension": {{"sha256": "{wrong}"}}}}]}}"#
    );
    {
        let mut s = script.lock().unwrap();
        s.insert(
            "/status".into(),
            VecDeque::from([response("200 OK", "", &manifest)]),
        );
        s.insert(
            "/f/d.ndjson".into(),
            VecDeque::from([response("200 OK", "", GOOD)]),
        );
    }
    let out = tempfile::tempdir().unwrap();
    let err = fetch(
        &open(),
        &format!("{base}/status"),
        out.path(),
        &options(),
        Arc::new(Quiet),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, FetchError::Mismatch { file, .. } if file == "d.ndjson"),
        "{err:?}"
    );
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let script: Script = Default::default();
    let (base, log) = stub(script.clone()).await;
    let manifest = format!(r#"{{"output": [{{"url": "{base}/f/e.ndjson", "count": 2}}]}}"#);
    {
        let mut s = script.lock().unwrap();
        s.insert(
            "/status".into(),
            VecDeque::from([response("200 OK", "", &manifest)]),
        );
        s.insert(
            "/f/e.ndjson".into(),
            VecDeque::from([
                response("429 Too Many Requests", "retry-after: 1\r\n", "slow down"),
                response("200 OK", "", GOOD),
            ]),
        );
    }
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    fetch(
        &open(),
        &format!("{base}/status"),
        out.path(),
        &options(),
        Arc::new(Quiet),
    )
    .await
    .unwrap();
    // The pause between tries is 10 ms; the server asked for 1 s.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let file_requests = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("e.ndjson"))
        .count();
    assert_eq!(file_requests, 2);
    assert_eq!(
        std::fs::read_to_string(out.path().join("e.ndjson")).unwrap(),
        GOOD
    );
}

/// A server whose export never finishes: the kick-off answers 202, the
/// status 202 forever, a DELETE 202.
async fn endless_export() -> (String, stub::Log) {
    let script: Script = Default::default();
    let (base, log) = stub(script.clone()).await;
    let mut s = script.lock().unwrap();
    s.insert(
        "GET /fhir/$export".into(),
        VecDeque::from([response(
            "202 Accepted",
            &format!("content-location: {base}/status\r\n"),
            "",
        )]),
    );
    s.insert(
        "GET /status".into(),
        VecDeque::from([response(
            "202 Accepted",
            "retry-after: 1\r\nx-progress: still going\r\n",
            "",
        )]),
    );
    s.insert(
        "DELETE /status".into(),
        VecDeque::from([response("202 Accepted", "", "")]),
    );
    drop(s);
    (format!("{base}/fhir"), log)
}

#[tokio::test]
async fn an_export_that_never_finishes_ends_at_the_time_limit() {
    let (base, log) = endless_export().await;
    let out = tempfile::tempdir().unwrap();
    let export = Export {
        session: open(),
        base,
        request: ExportRequest::default(),
        dir: out.path().to_path_buf(),
        options: options(),
        timeout: Duration::from_secs(2),
        progress: Arc::new(Quiet),
    };
    let started = std::time::Instant::now();
    let (status, resumed) = export.start().await.unwrap();
    assert!(!resumed);
    let err = export.complete(&status, resumed).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("still not complete"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let polls = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| *l == "GET /status")
        .count();
    assert!(
        (1..=3).contains(&polls),
        "Retry-After: 1 is honoured: {polls} polls"
    );
}

/// Runs the binary's `export` against `base`, interrupts it with SIGINT once
/// it polls, and returns its exit code and standard error.
async fn interrupted_export(
    base: &str,
    log: &stub::Log,
    out: &std::path::Path,
    keep: bool,
) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-export-client"));
    cmd.args(["export", base, "--out"]).arg(out);
    if keep {
        cmd.arg("--keep");
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if log.lock().unwrap().iter().any(|l| l == "GET /status") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_export_on_the_server_unless_kept() {
    let (base, log) = endless_export().await;
    let out = tempfile::tempdir().unwrap();
    let (code, stderr) = interrupted_export(&base, &log, out.path(), false).await;
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("was cancelled on the server"), "{stderr}");
    assert!(log.lock().unwrap().iter().any(|l| l == "DELETE /status"));
    assert!(
        !out.path().join(".bulk-export-client.json").exists(),
        "a cancelled export is forgotten"
    );

    let (base, log) = endless_export().await;
    let kept = tempfile::tempdir().unwrap();
    let (code, stderr) = interrupted_export(&base, &log, kept.path(), true).await;
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("left running on the server"), "{stderr}");
    assert!(!log.lock().unwrap().iter().any(|l| l.starts_with("DELETE")));
    assert!(
        kept.path().join(".bulk-export-client.json").exists(),
        "kept to continue"
    );
}
