//! `$viewdefinition-export` on the embedded default, with its floor.
//!
//! `cargo bench -p bulk-export-local --bench view_export -- --resources 1000000`
//! (`--dir PATH` keeps the loaded store and reuses it; `--runs N`, default 3;
//! `--workers N`, default 4 like the local server; `--formats csv` or
//! `--formats parquet` measures one format, default both; `--gzip-files
//! false` makes no gzip twins, which the default config makes; `--floor
//! false` skips the floor, for profiling the export alone.)
//!
//! 1. Loads N synthetic resources (unless `--dir` holds a store already).
//! 2. After one export to warm the caches, exports the three sample views
//!    (`local/sample-views`: patients, observations with a row per coding,
//!    conditions) through the engine and worker loops, to CSV and to
//!    Parquet: rows/s, CPU, and the process's peak RSS.
//! 3. The floor: the same current resources read straight from SQLite, the
//!    same views run on them (each resource parsed as the export parses it:
//!    only the elements the view reads), and the same format written to one
//!    file per view, single-threaded, no engine around it. Ratio = export /
//!    floor.

use std::io::Write;
use std::time::{Duration, Instant};

use bulk_export::embedded::SqliteQueue;
use bulk_export::engine::{Caller, Services, ViewExportInput, ViewRef};
use bulk_export::ports::{ResourceStore, WriteOp};
use bulk_export::sample::{generate, SampleConfig};
use bulk_export::view::output::{header_line, write_row, Line};
use bulk_export::view::parquet::ParquetTable;
use bulk_export::view::View;
use bulk_export_local::workers::work_loop;
use serde_json::Value;
use tokio::sync::watch;

mod common;
use common::{arg, arg_text, cpu_secs, open_stack, reset_peak_rss, status_kb, wait_completed};

const VIEWS: [&str; 3] = [
    include_str!("../sample-views/patients.json"),
    include_str!("../sample-views/observations.json"),
    include_str!("../sample-views/conditions.json"),
];

fn main() {
    bulk_export_local::bound_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(arg("--resources", 100_000), arg("--workers", 4)));
}

async fn run(n: usize, workers: usize) {
    let stack = open_stack();
    let (dir, store, queue, files, engine) = (
        &stack.dir,
        stack.store.clone(),
        stack.queue.clone(),
        &stack.files,
        &stack.engine,
    );

    if store.version_count().await.unwrap() == 0 {
        let t = Instant::now();
        let mut batch = Vec::with_capacity(5000);
        for v in generate(SampleConfig::for_resources(n, 7)).take(n) {
            let (t, id) = (
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            );
            batch.push(WriteOp::Upsert {
                resource_type: t,
                id,
                resource: v.into(),
            });
            if batch.len() == 5000 {
                store.load(std::mem::take(&mut batch)).await.unwrap();
            }
        }
        store.load(batch).await.unwrap();
        println!(
            "loaded     {n} resources in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "reusing    {} versions in {}",
            store.version_count().await.unwrap(),
            dir.display()
        );
    }

    let views: Vec<Value> = VIEWS
        .iter()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect();
    let runs = arg("--runs", 3).max(1);
    reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    // The first export after opening the store runs on cold caches (SQLite's
    // and the kernel's); it is not one of the measured runs.
    let formats = arg_text("--formats").unwrap_or_else(|| "csv,parquet".into());
    let first = formats.split(',').next().unwrap_or("csv");
    let with_floor = arg_text("--floor").as_deref() != Some("false");
    let (secs, ..) = export_once(engine, &queue, workers, files, &views, first).await;
    println!("warm-up    one {first} export, not counted ({secs:.2} s)");
    for format in formats.split(',') {
        let (mut exports, mut floors) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let (secs, cpu, rows, bytes) =
                export_once(engine, &queue, workers, files, &views, format).await;
            println!(
                "{format} export #{run}  {rows} rows, {:.1} MB in {secs:.2} s ({:.0} rows/s; cpu {cpu:.2} s)",
                bytes as f64 / 1e6,
                rows as f64 / secs
            );
            exports.push((secs, rows));
            if !with_floor {
                continue;
            }
            let (fsecs, fcpu, frows, fbytes) = floor_once(dir, &views, format).await;
            assert_eq!(frows, rows, "the floor makes the same rows");
            println!(
                "{format} floor  #{run}  {frows} rows, {:.1} MB in {fsecs:.2} s ({:.0} rows/s; cpu {fcpu:.2} s)",
                fbytes as f64 / 1e6,
                frows as f64 / fsecs
            );
            floors.push(fsecs);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        if floors.is_empty() {
            continue;
        }
        let rows = exports[0].1 as f64;
        let (e, f) = (
            median(exports.iter().map(|e| e.0).collect()),
            median(floors),
        );
        println!(
            "SUMMARY {format}: {rows} rows, median export {e:.2} s = {:.0} rows/s, floor {f:.2} s = {:.0} rows/s, ratio {:.2}x",
            rows / e,
            rows / f,
            e / f
        );
    }
    println!(
        "SUMMARY peak RSS {:.1} MB during the exports (RSS before them: {:.1} MB)",
        status_kb("VmHWM:") as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
}

/// One three-view export through the engine and `workers` worker loops.
async fn export_once(
    engine: &Services,
    queue: &SqliteQueue,
    workers: usize,
    files: &std::path::Path,
    views: &[Value],
    format: &str,
) -> (f64, f64, u64, u64) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(work_loop(
                i,
                engine.clone(),
                queue.clone(),
                Duration::from_secs(600),
                Duration::from_secs(900),
                stop_rx.clone(),
            ))
        })
        .collect();
    let t = Instant::now();
    let cpu = cpu_secs();
    let input = ViewExportInput {
        views: views
            .iter()
            .map(|v| (None, ViewRef::Inline(v.clone())))
            .collect(),
        format: Some(format.into()),
        request_url: "bench".into(),
        ..Default::default()
    };
    let job_id = engine
        .views
        .kickoff_view_export(&Caller::anonymous(), input)
        .await
        .unwrap();
    let job = wait_completed(engine, &job_id).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let dir = files.join("objects").join("jobs").join(&job_id);
    let bytes: u64 = job
        .files
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(&f.name))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let _ = std::fs::remove_dir_all(&dir);
    (secs, cpu, job.files.iter().map(|f| f.count).sum(), bytes)
}

/// The same views over the same current resources, straight from SQLite,
/// one file per view.
async fn floor_once(dir: &std::path::Path, views: &[Value], format: &str) -> (f64, f64, u64, u64) {
    let (db, out) = (dir.join("resources.db"), dir.join("floor"));
    let views: Vec<View> = views.iter().map(|v| View::parse(v).unwrap()).collect();
    let parquet = format == "parquet";
    let t = Instant::now();
    let cpu = cpu_secs();
    let (rows, bytes) = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        let (mut rows, mut bytes) = (0u64, 0u64);
        for view in &views {
            let mut stmt = conn
                .prepare(
                    "SELECT body FROM versions WHERE type = ?1 AND superseded_at IS NULL
                     AND deleted = 0 ORDER BY last_updated",
                )
                .unwrap();
            let mut w =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out).unwrap());
            let mut table = parquet.then(|| ParquetTable::new(view.columns(), 50_000).unwrap());
            if !parquet {
                w.write_all(&header_line(view.columns())).unwrap();
                w.write_all(b"\r\n").unwrap();
            }
            let mut result = stmt.query([&view.resource_type]).unwrap();
            let mut line = Vec::new();
            while let Some(row) = result.next().unwrap() {
                let body: &str = row.get_ref(0).unwrap().as_str().unwrap();
                // As the export reads it: only what the view needs.
                let value = view.read_resource(body).unwrap();
                for r in view.rows(&value).unwrap() {
                    rows += 1;
                    match table.as_mut() {
                        Some(t) => {
                            t.push(r).unwrap();
                            w.write_all(&t.take_bytes()).unwrap();
                        }
                        None => {
                            line.clear();
                            write_row(view.columns(), &r, Line::Csv, &mut line);
                            line.extend_from_slice(b"\r\n");
                            w.write_all(&line).unwrap();
                        }
                    }
                }
            }
            if let Some(t) = table {
                w.write_all(&t.finish().unwrap()).unwrap();
            }
            w.flush().unwrap();
            drop(w);
            bytes += std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(&out);
        }
        (rows, bytes)
    })
    .await
    .unwrap();
    (t.elapsed().as_secs_f64(), cpu_secs() - cpu, rows, bytes)
}
