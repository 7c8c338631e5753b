//! A function with a malformed signing key fails its cold start: it says
//! why, exits, and never asks the Lambda runtime for a request.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_malformed_signing_key_fails_init_and_serves_nothing() {
    // A stand-in for the Lambda runtime API: any connection is a request
    // for work the function must not make.
    let runtime = TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime_api = runtime.local_addr().unwrap().to_string();
    let asked = Arc::new(AtomicBool::new(false));
    let flag = asked.clone();
    std::thread::spawn(move || {
        for _ in runtime.incoming().flatten() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_kickoff"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "kickoff")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("BULK_EXPORT_JOBS_TABLE", "jobs")
        .env("BULK_EXPORT_RESOURCES_TABLE", "resources")
        .env("BULK_EXPORT_BUCKET", "bucket")
        .env("BULK_EXPORT_QUEUE_URL", "http://127.0.0.1:9/queue")
        .env("BULK_EXPORT_AUTH", "smart")
        .env(
            "BULK_EXPORT_TOKEN_SIGNING_KEY",
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kickoff binary starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the function kept running with a malformed signing key");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!status.success(), "init failed: {out}");
    assert!(
        out.contains("token signing key is not a P-256 PKCS#8 PEM key"),
        "the log says why: {out}"
    );
    assert!(
        !asked.load(Ordering::SeqCst),
        "no request was asked for: {out}"
    );
}
