//! Cold starts of the function binaries: each is started as Lambda starts
//! it, against a stand-in for the Lambda runtime API on 127.0.0.1 that
//! also answers the AWS calls a start makes (SSM's GetParameter for the
//! signing key, DynamoDB's GetItem for a job). Per function it prints:
//! - init: from exec to the first `GET /runtime/invocation/next`;
//! - for `status`, a status poll with a valid token (an unknown job, so
//!   the token is verified and the job read, and the answer is a 404): the
//!   first invocation's time and the steady state's p50/p99, from the
//!   event handed out to the response posted;
//! - peak RSS (VmHWM) after those;
//! - the binary's size, stripped.
//!
//! Run it on the release binaries as `sam build` ships them: the release
//! profile (fat LTO, cold code optimised for size) with the `panic =
//! "abort"` that `cargo lambda build --release` adds when the profile
//! leaves `panic` unset. Copy them away first, because `cargo bench`
//! writes its own non-LTO builds of them to the same `target/release`:
//!
//! ```sh
//! cargo build --release --locked -p bulk-export-functions --bins --config 'profile.release.panic="abort"'
//! mkdir -p /tmp/lambda-bins && cp target/release/{kickoff,status,files,token,resources,schedules,worker,scheduler,sweeper} /tmp/lambda-bins/
//! cargo bench -p bulk-export-functions --bench cold_start -- --bin-dir /tmp/lambda-bins --runs 5 --polls 500
//! ```
//!
//! Without `--bin-dir` it starts the bench profile's builds. Either is
//! built for this machine's target (x86_64); Lambda runs the arm64 build,
//! whose size differs a little.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulk_export::auth::issuer::TokenIssuer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

mod common;
use common::arg;

const ORIGIN: &str = "https://bench.example";

/// The functions Lambda runs (the admin CLI aside), and whether they serve
/// HTTP.
const FUNCTIONS: &[(&str, &str, bool)] = &[
    ("kickoff", env!("CARGO_BIN_EXE_kickoff"), true),
    ("status", env!("CARGO_BIN_EXE_status"), true),
    ("files", env!("CARGO_BIN_EXE_files"), true),
    ("token", env!("CARGO_BIN_EXE_token"), true),
    ("resources", env!("CARGO_BIN_EXE_resources"), true),
    ("schedules", env!("CARGO_BIN_EXE_schedules"), true),
    ("worker", env!("CARGO_BIN_EXE_worker"), false),
    ("scheduler", env!("CARGO_BIN_EXE_scheduler"), false),
    ("sweeper", env!("CARGO_BIN_EXE_sweeper"), false),
];

/// What the stand-in saw: when the function first asked for work, and the
/// responses it posted.
struct Stand {
    pem: String,
    events: Mutex<Option<mpsc::Receiver<(String, String)>>>,
    first_next: Mutex<Option<Instant>>,
    asked: Notify,
    responses: mpsc::UnboundedSender<(String, Instant, String)>,
}

fn main() {
    let runs = arg("--runs", 5);
    let polls = arg("--polls", 500);
    let bin_dir = common::arg_text("--bin-dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pem = TokenIssuer::generate_pem();
    println!(
        "function    init p50 (min-max)       first poll  steady p50  p99     peak RSS  stripped"
    );
    for (name, path, http) in FUNCTIONS {
        let mut inits = Vec::new();
        let mut firsts = Vec::new();
        let mut steady = Vec::new();
        let mut rss = 0;
        let path = match &bin_dir {
            Some(dir) => format!("{dir}/{name}"),
            None => path.to_string(),
        };
        let path = path.as_str();
        for run in 0..runs {
            let polls = if *name == "status" && run == 0 {
                polls
            } else {
                0
            };
            let r = rt.block_on(start_once(name, path, *http, &pem, polls));
            inits.push(r.init);
            firsts.extend(r.first);
            steady.extend(r.steady);
            rss = rss.max(r.peak_rss_kb);
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        inits.sort();
        steady.sort();
        let first = firsts.iter().map(ms).sum::<f64>() / firsts.len().max(1) as f64;
        let poll = |q: f64| {
            steady
                .get(((steady.len() as f64 - 1.0) * q) as usize)
                .map(ms)
        };
        println!(
            "{name:<11} {:>6.1} ms ({:.1}-{:.1})   {:>10}  {:>10}  {:>6}  {:>5.1} MB  {:>5.1} MB",
            ms(&inits[inits.len() / 2]),
            ms(&inits[0]),
            ms(&inits[inits.len() - 1]),
            if firsts.is_empty() {
                "-".into()
            } else {
                format!("{first:.2} ms")
            },
            poll(0.5).map_or("-".into(), |v| format!("{v:.2} ms")),
            poll(0.99).map_or("-".into(), |v| format!("{v:.2}")),
            rss as f64 / 1024.0,
            stripped_size(path) as f64 / 1e6,
        );
        if *name == "status" {
            println!(
                "SUMMARY status poll handler time: p50 {:.2} ms, p99 {:.2} ms over {} polls; init {:.1} ms",
                poll(0.5).unwrap_or(0.0),
                poll(0.99).unwrap_or(0.0),
                steady.len(),
                ms(&inits[inits.len() / 2])
            );
        }
    }
}

struct Run {
    init: Duration,
    first: Option<Duration>,
    steady: Vec<Duration>,
    peak_rss_kb: u64,
}

async fn start_once(name: &str, path: &str, http: bool, pem: &str, polls: usize) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (event_tx, event_rx) = mpsc::channel(1);
    let (resp_tx, mut resp_rx) = mpsc::unbounded_channel();
    let stand = Arc::new(Stand {
        pem: pem.to_string(),
        events: Mutex::new(Some(event_rx)),
        first_next: Mutex::new(None),
        asked: Notify::new(),
        responses: resp_tx,
    });
    let server = tokio::spawn(serve(listener, stand.clone()));
    let started = Instant::now();
    let mut child = spawn(name, path, &addr);
    // Init: exec to the first request for work.
    let init = loop {
        if let Some(at) = *stand.first_next.lock().unwrap() {
            break at - started;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited during init: {status}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), stand.asked.notified()).await;
    };
    let mut first = None;
    let mut steady = Vec::new();
    if http && polls > 0 {
        let token = TokenIssuer::from_pem(
            pem,
            &format!("{ORIGIN}/auth/token"),
            &format!("{ORIGIN}/fhir"),
        )
        .unwrap()
        .issue("bench-client", "system/*.read", None, chrono::Utc::now());
        for i in 0..=polls {
            let id = format!("req-{i}");
            let handed = Instant::now();
            event_tx
                .send((id.clone(), status_poll(&token)))
                .await
                .unwrap();
            let (got, at, body) = resp_rx.recv().await.unwrap();
            assert_eq!(got, id);
            assert!(body.contains("\"statusCode\":404"), "{name}: {body}");
            if i == 0 {
                first = Some(at - handed);
            } else {
                steady.push(at - handed);
            }
        }
    }
    let peak_rss_kb = peak_rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    Run {
        init,
        first,
        steady,
        peak_rss_kb,
    }
}

fn spawn(name: &str, path: &str, runtime_api: &str) -> Child {
    Command::new(path)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", format!("http://{runtime_api}"))
        .env("BULK_EXPORT_JOBS_TABLE", "jobs")
        .env("BULK_EXPORT_RESOURCES_TABLE", "resources")
        .env("BULK_EXPORT_BUCKET", "bucket")
        .env(
            "BULK_EXPORT_QUEUE_URL",
            format!("http://{runtime_api}/queue"),
        )
        .env("BULK_EXPORT_AUTH", "smart")
        .env(
            "BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER",
            "/bulk-export/token-signing-key",
        )
        .env("BULK_EXPORT_PUBLIC_URL", ORIGIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

/// An API Gateway HTTP API (v2) event: a status poll for a job that does
/// not exist.
fn status_poll(token: &str) -> String {
    let path = "/fhir/$export-jobs/00000000-0000-0000-0000-000000000000";
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "authorization": format!("Bearer {token}"),
            "host": "bench.example",
            "x-forwarded-proto": "https",
            "accept": "application/json"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.example",
            "domainPrefix": "bench",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": "r",
            "routeKey": "$default",
            "stage": "$default",
            "time": "06/Dec/2026:00:00:00 +0000",
            "timeEpoch": 0
        },
        "isBase64Encoded": false
    })
    .to_string()
}

async fn serve(listener: TcpListener, stand: Arc<Stand>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(connection(socket, stand.clone()));
    }
}

/// HTTP/1.1 requests on one kept-alive connection.
async fn connection(socket: TcpStream, stand: Arc<Stand>) {
    let _ = socket.set_nodelay(true);
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if read.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).to_string();
        let (status, extra, reply) = answer(&stand, &method, &path, &headers, body).await;
        // One write: a head and a body written apart would wait on the
        // client's delayed ACK (Nagle), 40 ms a response.
        let message = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{reply}",
            reply.len()
        );
        if write.write_all(message.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn answer(
    stand: &Stand,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: String,
) -> (&'static str, String, String) {
    const NEXT: &str = "/2018-06-01/runtime/invocation/next";
    if method == "GET" && path == NEXT {
        stand
            .first_next
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        stand.asked.notify_one();
        let rx = stand.events.lock().unwrap().take();
        let Some(mut rx) = rx else {
            // A second connection asking at once: never answered.
            std::future::pending::<()>().await;
            unreachable!()
        };
        let event = rx.recv().await;
        *stand.events.lock().unwrap() = Some(rx);
        let Some((id, event)) = event else {
            std::future::pending::<()>().await;
            unreachable!()
        };
        let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
        let extra = format!(
            "lambda-runtime-aws-request-id: {id}\r\nlambda-runtime-deadline-ms: {deadline}\r\n\
             lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
             lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\n"
        );
        return ("200 OK", extra, event);
    }
    if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
        let at = Instant::now();
        let id = rest.split('/').next().unwrap_or("").to_string();
        let _ = stand.responses.send((id, at, body));
        return ("202 Accepted", String::new(), "{}".into());
    }
    match headers.get("x-amz-target").map(String::as_str) {
        Some("AmazonSSM.GetParameter") => {
            let reply = serde_json::json!({"Parameter": {
                "Name": "/bulk-export/token-signing-key", "Type": "SecureString",
                "Value": stand.pem, "Version": 1
            }});
            ("200 OK", String::new(), reply.to_string())
        }
        // The job does not exist.
        Some("DynamoDB_20120810.GetItem") => ("200 OK", String::new(), "{}".into()),
        _ => ("400 Bad Request", String::new(), "{}".into()),
    }
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The binary's size after `strip` (as a Lambda package would ship it);
/// its size as built if `strip` is not there.
fn stripped_size(path: &str) -> u64 {
    let out = std::env::temp_dir().join(format!("cold-start-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    let size = std::fs::metadata(if ok { out.as_path() } else { path.as_ref() })
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    size
}
