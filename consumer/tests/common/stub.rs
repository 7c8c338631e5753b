//! A stub HTTP server that answers from a script, to misbehave on purpose.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raw responses per `"METHOD /path"` or `"/path"` (any method), in
/// order; the last one repeats.
pub type Script = Arc<Mutex<HashMap<String, VecDeque<Vec<u8>>>>>;

/// The request lines the stub was sent (`"GET /status"`), in order.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A body that says it is longer than it is, then the connection closes.
pub fn cut_short(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{}",
        body.len() + 100,
        body
    )
    .into_bytes()
}

/// Serves `script` on 127.0.0.1; returns its base URL and its log.
pub async fn stub(script: Script) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Default::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("GET").to_string();
                let path = words.next().unwrap_or("/").to_string();
                let line = format!("{method} {path}");
                seen.lock().unwrap().push(line.clone());
                let reply = {
                    let mut script = script.lock().unwrap();
                    let key = if script.contains_key(&line) {
                        line
                    } else {
                        path
                    };
                    match script.get_mut(&key) {
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
    (base, log)
}
