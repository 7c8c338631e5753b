//! `kill -9` of the client in the middle of its work, then the same
//! command again: everything ends complete and checked, nothing twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulk_export_local::{start, LocalConfig, Overrides};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT: &str = env!("CARGO_BIN_EXE_bulk-export-client");

fn final_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_midway_completes_when_run_again() {
    let data = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), data.path().to_path_buf());
    config.sample_patients = 300;
    config.engine.max_resources_per_file = 40;
    let running = start(config, Overrides::default()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (base, dir) = (running.base_url.clone(), out.path().to_path_buf());
    let args = move |json: bool| {
        let mut cmd = Command::new(CLIENT);
        cmd.args(["export", &base, "--parallel", "1", "--out"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if json {
            cmd.arg("--json");
        }
        cmd
    };

    // Killed once some files are in place, and before all are.
    let mut child = args(false).spawn().unwrap();
    let mut in_place = 0;
    for _ in 0..3000 {
        in_place = final_files(out.path())
            .iter()
            .filter(|n| n.ends_with(".ndjson"))
            .count();
        if in_place >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still downloading when killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(in_place >= 3);
    assert!(
        !out.path().join("manifest.json").exists(),
        "killed before the end"
    );

    // The same command again.
    let mut again = args(true);
    let output = tokio::task::spawn_blocking(move || again.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["resumed"], true, "{summary}");
    let kept = summary["kept"].as_array().unwrap().len();
    assert!(kept >= 3, "the files in place were kept: {summary}");

    // Every file complete and checked, each once, and nothing else.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let mut expected = BTreeSet::from([
        "manifest.json".to_string(),
        ".bulk-export-client.json".into(),
    ]);
    for entry in manifest["output"].as_array().unwrap() {
        let name = entry["url"].as_str().unwrap();
        assert!(expected.insert(name.to_string()), "{name} listed twice");
        let bytes = std::fs::read(out.path().join(name)).unwrap();
        let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(lines, entry["count"].as_u64().unwrap(), "{name}");
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            entry["extension"]["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    let downloaded = summary["downloaded"].as_array().unwrap().len();
    assert_eq!(kept + downloaded, expected.len() - 2);
    assert_eq!(
        final_files(out.path()),
        expected,
        "no partial or stray file"
    );
    running.shutdown().await;
}

/// The mirror's cursor and resource count, read directly.
fn mirror_state(path: &Path) -> (Option<String>, u64) {
    if !path.exists() {
        return (None, 0);
    }
    let m = bulk_export_client::mirror::Mirror::open(path).unwrap();
    (m.cursor().unwrap(), m.count().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_at_any_point_leaves_a_whole_step_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("127.0.0.1:0".parse().unwrap(), data.path().to_path_buf());
    config.sample_patients = 300;
    config.engine.max_resources_per_file = 200;
    let running = start(config, Overrides::default()).await.unwrap();
    let base = running.base_url.clone();
    let release: Value = reqwest::Client::new()
        .post(format!("{base}/$export-releases"))
        .header("content-type", "application/json")
        .body(r#"{"name": "r1", "export": "$export"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let release_time = release["transactionTime"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.db");
    let sync = |extra: &[&str]| {
        let mut cmd = Command::new(CLIENT);
        cmd.args(["sync", &base, "--release", "r1", "--json", "--mirror"])
            .arg(&mirror)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };

    // Killed at several points: each time the mirror is empty, or equals
    // the server as of its cursor (the release, or a later `_since` step),
    // never a part of a step.
    let same_as_server = |sync: &dyn Fn(&[&str]) -> Command| {
        let check = sync(&["--check"]).output().unwrap();
        let report: Value = serde_json::from_slice(&check.stdout).unwrap_or(Value::Null);
        assert_eq!(check.status.code(), Some(0), "{report}");
        assert_eq!(report["same"], true, "{report}");
    };
    let mut stopped_with_a_cursor = 0;
    for delay_ms in [150, 400, 700, 1000] {
        let mut child = sync(&[]).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        child.wait().unwrap();
        match mirror_state(&mirror) {
            (None, 0) => {}
            (Some(cursor), count) => {
                assert!(cursor >= release_time && count > 0, "{cursor} {count}");
                stopped_with_a_cursor += 1;
                same_as_server(&sync);
            }
            other => panic!("a part of a step: {other:?}"),
        }
    }
    eprintln!("{stopped_with_a_cursor} of 4 kills came after a step was applied");

    let output = sync(&[]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        summary["cursor"].as_str().unwrap() >= release_time.as_str(),
        "{summary}"
    );
    same_as_server(&sync);
    running.shutdown().await;
}
