//! `fetch` against a stub server that misbehaves on purpose: a 503 with
//! `Retry-After`, a body cut short, a count that does not match.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulk_export_client::{fetch, FetchError, FetchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raw responses per path, in order; the last one repeats.
type Script = Arc<Mutex<HashMap<String, VecDeque<Vec<u8>>>>>;

fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A body that says it is longer than it is, then the connection closes.
fn cut_short(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{}",
        body.len() + 100,
        body
    )
    .into_bytes()
}

/// Serves `script` on 127.0.0.1; returns its base URL.
async fn stub(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = {
                    let mut script = script.lock().unwrap();
                    match script.get_mut(&path) {
                        Some(queue) if queue.len() > 1 => queue.pop_front().unwrap(),
                        Some(queue) => queue[0].clone(),
                        None => response("404 Not Found", "", "no"),
                    }
                };
                let _ = socket.write_all(&reply).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    base
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
    let base = stub(script.clone()).await;
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
        &reqwest::Client::new(),
        &format!("{base}/status"),
        out.path(),
        &options(),
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
    let base = stub(script.clone()).await;
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
        &reqwest::Client::new(),
        &format!("{base}/status"),
        out.path(),
        &options(),
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
    let base = stub(script.clone()).await;
    script.lock().unwrap().insert(
        "/status".into(),
        VecDeque::from([response("202 Accepted", "x-progress: 10%\r\n", "")]),
    );
    let out = tempfile::tempdir().unwrap();
    let err = fetch(
        &reqwest::Client::new(),
        &format!("{base}/status"),
        out.path(),
        &options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::NotComplete { .. }), "{err:?}");
}
