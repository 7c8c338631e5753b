//! The audit trail export (`$export-revisions`) on the embedded default,
//! with its floor.
//!
//! `cargo bench -p bulk-export-local --bench revisions -- --revisions 1000000`
//! (`--dir PATH` keeps the loaded store and reuses it; `--runs N`, default 3;
//! `--only plain|log` runs one of the two exports.)
//!
//! 1. Loads a history of about N revisions: synthetic resources written by
//!    one author, then a fifth of them updated and a twentieth deleted by
//!    others (timed, for reference).
//! 2. Exports the whole trail through the engine and a worker loop, without
//!    and with the change log: revisions/s, CPU, and the process's peak RSS
//!    (reset after loading).
//! 3. The floors: the same rows read straight from SQLite newest first and
//!    written as the same CSV columns, no engine around them. The change
//!    log's floor also reads each row's body and its predecessor's (by id
//!    and version, as a store that keeps no diffs must) and writes the same
//!    change log. When the export writes the CSV's gzip twin (the default;
//!    `--gzip-files false` turns both off), the floor gzips the same bytes
//!    as it writes them, at the export's level. Ratio = export / its floor.

use std::io::Write;
use std::time::{Duration, Instant};

use bulk_export::domain::instant::{format_instant, from_micros};
use bulk_export::domain::revisions::{
    change_log, csv_line, parse_revisions_request, Operation, HEADER,
};
use bulk_export::embedded::SqliteQueue;
use bulk_export::engine::gzip_twin::TWIN_LEVEL;
use bulk_export::engine::{Caller, Services};
use bulk_export::ports::{ResourceStore, WriteOp};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export_local::workers::work_loop;
use flate2::write::GzEncoder;
use flate2::Compression;
use tokio::sync::watch;

mod common;
use common::{arg, arg_text, cpu_secs, open_stack, reset_peak_rss, status_kb, wait_completed};

fn main() {
    bulk_export_local::bound_malloc_arenas();
    let revisions = arg("--revisions", 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(revisions));
}

async fn run(n: usize) {
    let stack = open_stack();
    let (dir, store, queue, files, engine) = (
        &stack.dir,
        stack.store.clone(),
        stack.queue.clone(),
        &stack.files,
        &stack.engine,
    );

    // 1. Load: creates by the loader, then updates and deletions by others.
    let t = Instant::now();
    let mut total = store.version_count().await.unwrap() as usize;
    if total == 0 {
        // n = creates × (1 + 1/5 + 1/20)
        let creates = n * 20 / 25;
        let target = SampleConfig::for_resources(creates, 7);
        // Every fifth resource is updated; every fourth of those is then deleted.
        let mut changed: Vec<(String, String, serde_json::Value)> = Vec::new();
        let mut batch = Vec::with_capacity(5000);
        for (i, v) in generate(target).take(creates).enumerate() {
            let (t, id) = (
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            );
            if i.is_multiple_of(5) {
                changed.push((t.clone(), id.clone(), v.clone()));
            }
            batch.push(WriteOp::Upsert {
                resource_type: t,
                id,
                resource: v.into(),
            });
            if batch.len() == 5000 {
                store.load(std::mem::take(&mut batch)).await.unwrap();
            }
        }
        store.load(std::mem::take(&mut batch)).await.unwrap();
        for chunk in changed.chunks(5000) {
            let updates = chunk
                .iter()
                .map(|(t, id, v)| {
                    let mut v = v.clone();
                    v["meta"] = serde_json::json!({"tag": [{"code": "reviewed"}]});
                    WriteOp::Upsert {
                        resource_type: t.clone(),
                        id: id.clone(),
                        resource: v.into(),
                    }
                })
                .collect();
            store.load_as("lab-a", updates).await.unwrap();
        }
        let deletions: Vec<WriteOp> = changed
            .iter()
            .step_by(4)
            .map(|(t, id, _)| WriteOp::Delete {
                resource_type: t.clone(),
                id: id.clone(),
            })
            .collect();
        for chunk in deletions.chunks(5000) {
            store.load_as("lab-b", chunk.to_vec()).await.unwrap();
        }
        total = store.version_count().await.unwrap() as usize;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "loaded     {total} revisions in {secs:.1} s ({:.0} revisions/s)",
            total as f64 / secs
        );
    } else {
        println!("reusing    {total} revisions in {}", dir.display());
    }

    let runs = arg("--runs", 3).max(1);
    // `--only plain` or `--only log`: one of the two exports (to profile it).
    let only = arg_text("--only").map(|o| o == "log");
    reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    let (mut plain, mut logged) = (Vec::new(), Vec::new());
    let (mut floors, mut log_floors) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (with_log, into) in [(false, &mut plain), (true, &mut logged)] {
            if only.is_some_and(|o| o != with_log) {
                continue;
            }
            let (secs, cpu, rows) = export_once(engine, &queue, files, with_log).await;
            assert_eq!(rows, total as u64, "every revision once");
            println!(
                "export #{run}{}  {rows} revisions in {secs:.2} s ({:.0} revisions/s; cpu {cpu:.2} s)",
                if with_log { " with change log" } else { "" },
                rows as f64 / secs
            );
            into.push(secs);
        }
        for (with_log, into) in [(false, &mut floors), (true, &mut log_floors)] {
            if with_log && only == Some(false) {
                continue;
            }
            let out = dir.join("floor.csv");
            let twin = engine.config.gzip_files;
            let (secs, cpu, rows) =
                floor_once(&dir.join("resources.db"), &out, with_log, twin).await;
            assert_eq!(rows, total as u64);
            println!(
                "floor  #{run}{}  {rows} rows in {secs:.2} s ({:.0} rows/s; cpu {cpu:.2} s)",
                if with_log { " with change log" } else { "" },
                rows as f64 / secs
            );
            into.push(secs);
        }
    }
    let peak_kb = status_kb("VmHWM:");
    let median = |mut v: Vec<f64>| {
        if v.is_empty() {
            return f64::NAN; // left out by --only
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (p, l) = (median(plain), median(logged));
    let (f, lf) = (median(floors), median(log_floors));
    let n = total as f64;
    println!("SUMMARY {n} revisions, medians: export {p:.2} s = {:.0} revisions/s; with change log {l:.2} s = {:.0} revisions/s; floor {f:.2} s = {:.0} rows/s; with change log {lf:.2} s", n / p, n / l, n / f);
    println!(
        "SUMMARY ratio export / its floor (median/median): {:.2}x, with change log {:.2}x (against the plain floor {:.2}x)",
        p / f,
        l / lf,
        l / f
    );
    println!(
        "SUMMARY peak RSS {:.1} MB during the exports (RSS before them: {:.1} MB)",
        peak_kb as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
}

/// One `$export-revisions` of everything through the engine and a worker.
async fn export_once(
    engine: &Services,
    queue: &SqliteQueue,
    files: &std::path::Path,
    with_log: bool,
) -> (f64, f64, u64) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(work_loop(
        0,
        engine.clone(),
        queue.clone(),
        Duration::from_secs(600),
        Duration::from_secs(900),
        stop_rx,
    ));
    let t = Instant::now();
    let cpu = cpu_secs();
    let body = format!(
        r#"{{"startDate": 0, "endDate": 253402300799999, "includeModifiedProps": {with_log}}}"#
    );
    let job_id = engine
        .revisions
        .start_revisions(
            &Caller::anonymous(),
            parse_revisions_request(body.as_bytes(), chrono::Utc::now()).unwrap(),
            "bench".into(),
        )
        .await
        .unwrap();
    let job = wait_completed(engine, &job_id).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = std::fs::remove_dir_all(files.join("objects").join("jobs").join(&job_id));
    (secs, cpu, job.files.iter().map(|f| f.count).sum())
}

/// The same rows straight from SQLite, newest first, as the same CSV
/// columns. Without the change log it knows Add from Edit by the version
/// number alone (a re-creation after a deletion would need the
/// predecessor, as the engine reads it); with it, it reads the
/// predecessor's body by id and version, and tells them apart by it. With
/// `twin`, the same bytes also go through gzip at level 1, as they are
/// written: the least a store that serves a gzip twin must do.
async fn floor_once(
    db: &std::path::Path,
    out: &std::path::Path,
    with_log: bool,
    twin: bool,
) -> (f64, f64, u64) {
    let (db, out) = (db.to_path_buf(), out.to_path_buf());
    let t = Instant::now();
    let cpu = cpu_secs();
    let rows = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        let body = if with_log { "body" } else { "NULL" };
        let mut stmt = conn
            .prepare(&format!("SELECT last_updated, author, deleted, version, type, id, {body} FROM versions ORDER BY last_updated DESC"))
            .unwrap();
        let mut before = conn
            .prepare("SELECT deleted, body FROM versions INDEXED BY versions_by_id WHERE type = ?1 AND id = ?2 AND version = ?3")
            .unwrap();
        let mut w = FloorOutput::create(&out, twin);
        w.line(&csv_line(&HEADER));
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0u64;
        while let Some(r) = rows.next().unwrap() {
            let at: i64 = r.get(0).unwrap();
            let author: String = r.get::<_, Option<String>>(1).unwrap().unwrap_or_default();
            let (deleted, version) = (r.get::<_, i64>(2).unwrap() != 0, r.get::<_, i64>(3).unwrap());
            let (t, id): (String, String) = (r.get(4).unwrap(), r.get(5).unwrap());
            let (op, log) = if with_log {
                let previous: Option<(bool, Option<String>)> = if version > 1 {
                    before
                        .query_row(rusqlite::params![t, id, version - 1], |p| {
                            Ok((p.get::<_, i64>(0)? != 0, p.get(1)?))
                        })
                        .ok()
                } else {
                    None
                };
                let live = previous.filter(|(was_deleted, _)| !was_deleted);
                let current: Option<String> = r.get(6).unwrap();
                let log = change_log(live.as_ref().and_then(|(_, b)| b.as_deref()), current.as_deref()).unwrap();
                (Operation::of(deleted, live.is_some()), log)
            } else {
                (Operation::of(deleted, version > 1), String::new())
            };
            let line = csv_line(&[
                &at.to_string(),
                &format_instant(from_micros(at)),
                &author,
                "",
                op.as_str(),
                &t,
                &id,
                &log,
            ]);
            w.line(&line);
            n += 1;
        }
        w.finish();
        n
    })
    .await
    .unwrap();
    (t.elapsed().as_secs_f64(), cpu_secs() - cpu, rows)
}

type Gzip = GzEncoder<std::io::BufWriter<std::fs::File>>;

/// The floor's CSV file and, with a twin, its gzip beside it.
struct FloorOutput {
    path: std::path::PathBuf,
    csv: std::io::BufWriter<std::fs::File>,
    /// Buffered in front of the encoder too: deflate called per line costs
    /// twice what it costs on large blocks, as the export feeds it.
    twin: Option<(std::path::PathBuf, std::io::BufWriter<Gzip>)>,
}

impl FloorOutput {
    fn create(path: &std::path::Path, twin: bool) -> Self {
        let file = |p: &std::path::Path| {
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(p).unwrap())
        };
        let twin = twin.then(|| {
            let gz = path.with_extension("csv.gz");
            let encoder = GzEncoder::new(file(&gz), Compression::new(TWIN_LEVEL));
            (gz, std::io::BufWriter::with_capacity(1 << 20, encoder))
        });
        FloorOutput {
            path: path.to_path_buf(),
            csv: file(path),
            twin,
        }
    }

    fn line(&mut self, line: &[u8]) {
        self.csv.write_all(line).unwrap();
        self.csv.write_all(b"\r\n").unwrap();
        if let Some((_, gz)) = &mut self.twin {
            gz.write_all(line).unwrap();
            gz.write_all(b"\r\n").unwrap();
        }
    }

    /// Flushes both files to the OS, then removes them.
    fn finish(mut self) {
        self.csv.flush().unwrap();
        let _ = std::fs::remove_file(&self.path);
        if let Some((gz_path, gz)) = self.twin.take() {
            let encoder = gz.into_inner().map_err(|e| e.into_error()).unwrap();
            encoder.finish().unwrap().flush().unwrap();
            let _ = std::fs::remove_file(gz_path);
        }
    }
}
