//! The AWS emulator for the AWS adapter tests: moto's server, or
//! LocalStack.
//!
//! `BULK_EXPORT_AWS_EMULATOR` chooses which: `moto` (the default) or
//! `localstack`. `BULK_EXPORT_MOTO_URL` points the tests at a running
//! server of that kind instead (`.ci/run` starts them).
//!
//! moto: the first test that needs it installs moto into `<repo>/.venv` if
//! it is not there (`python3 -m venv`, `pip install 'moto[server]'`), and
//! starts it once for this test binary on a free 127.0.0.1 port, under a
//! shell that stops it when this process exits (the shell waits on its
//! stdin, which closes with us).
//!
//! LocalStack: `scripts/emulators/localstack.sh start` installs it once
//! (into a cache outside the clone) and starts it, or finds the one it
//! started before; the same shell stops it when this process exits if this
//! process started it.
//!
//! Both run with S3's multipart minimum lowered (`S3_UPLOAD_PART_MIN_SIZE`),
//! so that tests can cut small files into many chunks; the service itself
//! never writes a part under 5 MiB but the last on AWS.
//!
//! Every test provisions its own tables, bucket and queue under fresh names,
//! so tests sharing the server never see each other's state.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulk_export::aws::{emulator_config, provision::provision, AwsNames, SdkConfig};

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
/// Keeps the shell (and the pipe to its stdin) alive while we run.
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

fn ensure_installed() -> Result<PathBuf, String> {
    let venv = repo_root().join(".venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!("installing moto[server] into {} (once)", venv.display());
    let run = |cmd: &mut Command| -> Result<(), String> {
        let status = cmd
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("{cmd:?} failed: {status}"))
    };
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "moto[server]"]))?;
    Ok(server)
}

fn start() -> Result<String, String> {
    // Set but empty (`BULK_EXPORT_MOTO_URL= cargo test`) means unset.
    if let Ok(url) = std::env::var("BULK_EXPORT_MOTO_URL").map(|u| u.trim().to_string()) {
        if !url.is_empty() {
            return Ok(url.trim_end_matches('/').to_string());
        }
    }
    match std::env::var("BULK_EXPORT_AWS_EMULATOR").as_deref() {
        Err(_) | Ok("moto") => start_moto(),
        Ok("localstack") => start_localstack(),
        Ok(other) => Err(format!(
            "BULK_EXPORT_AWS_EMULATOR={other}: expected moto or localstack"
        )),
    }
}

/// LocalStack through its script, which prints its URL once it is up.
fn start_localstack() -> Result<String, String> {
    let (url, child) = start_by_script("scripts/emulators/localstack.sh", "LocalStack")?;
    *CHILD.lock().unwrap() = Some(child);
    Ok(url)
}

/// Starts an emulator through its script under `scripts/emulators/`
/// (`start` prints its URL once it is up), under a shell that stops it
/// when our stdin closes, that is when this process exits; one found
/// running already is left running. Keep the returned child alive.
pub(super) fn start_by_script(script: &str, what: &str) -> Result<(String, Child), String> {
    let script = repo_root().join(script);
    let already = Command::new(&script)
        .arg("url")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" start && { cat >/dev/null; [ -n "$1" ] || "$0" stop; }"#)
        .arg(&script)
        .arg(if already { "already" } else { "" })
        .env("S3_UPLOAD_PART_MIN_SIZE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    let mut url = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut url)
        .map_err(|e| format!("reading {what}'s URL: {e}"))?;
    let url = url.trim().to_string();
    if url.starts_with("http://") {
        Ok((url, child))
    } else {
        Err(format!(
            "{what} did not start ({} start says why)",
            script.display()
        ))
    }
}

fn start_moto() -> Result<String, String> {
    let server = ensure_installed()?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // moto's server through scripts/moto_server.py, which makes its
    // DynamoDB writes atomic (see there), with the venv's Python.
    let python = server.with_file_name("python");
    let launcher = repo_root().join("scripts/moto_server.py");
    let script = format!(
        "'{}' '{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; cat >/dev/null; kill $m",
        python.display(),
        launcher.display()
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        // Multipart chunks below S3's 5 MiB minimum, so small tests can
        // upload many chunks.
        .env("S3_UPLOAD_PART_MIN_SIZE", "1")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting moto: {e}"))?;
    *CHILD.lock().unwrap() = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read(&mut buf).is_ok_and(|n| n > 0) {
                return Ok(format!("http://127.0.0.1:{port}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("moto did not start within 60 s".into())
}

/// Clears the emulator's state (every table, bucket and queue). Only for a
/// caller that owns the emulator: tests sharing it would lose theirs.
#[allow(dead_code)] // used by the fault harness, not by the tests
pub fn reset() {
    if std::env::var("BULK_EXPORT_AWS_EMULATOR").as_deref() == Ok("localstack") {
        return; // moto's API only
    }
    let url = endpoint();
    let addr = url.trim_start_matches("http://");
    if let Ok(mut s) = TcpStream::connect(addr) {
        use std::io::Write;
        let _ = s.write_all(b"POST /moto-api/reset HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
}

/// Whether this process started the emulator (so it may reset it).
#[allow(dead_code)] // used by the fault harness, not by the tests
pub fn owned() -> bool {
    endpoint();
    CHILD.lock().unwrap().is_some()
}

/// The emulator's endpoint, starting it on first use.
pub fn endpoint() -> String {
    SERVER
        .get_or_init(start)
        .clone()
        .unwrap_or_else(|e| panic!("the AWS emulator is unavailable: {e}"))
}

/// Fresh tables, bucket and queue on the emulator.
pub async fn fresh_stack() -> (SdkConfig, AwsNames) {
    let sdk = emulator_config(&endpoint()).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = AwsNames {
        jobs_table: format!("jobs-{id}"),
        resources_table: format!("resources-{id}"),
        bucket: format!("exports-{id}"),
        queue_url: String::new(),
    };
    let names = provision(&sdk, &names, &format!("work-{id}"))
        .await
        .expect("provisioning on the emulator");
    (sdk, names)
}
