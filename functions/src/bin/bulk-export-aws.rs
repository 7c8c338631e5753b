//! `bulk-export-aws`: administration of a deployment (or of an emulator):
//! create its tables, bucket and queue, load data, count what the store
//! holds. Reads the same `BULK_EXPORT_*` variables as the functions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bulk_export::aws::{provision::provision, sdk_config, AwsAdapters, AwsNames};
use bulk_export::cli::RegisterClient;
use bulk_export::clock::SystemClock;
use bulk_export::domain::cost;
use bulk_export::domain::job::FileKind;
use bulk_export::engine::{EngineConfig, Services};
use bulk_export::loader;
use bulk_export::ports::{JobStore, ResourceStore, ShardScan};
use bulk_export::sample::{generate, SampleConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the tables, bucket and queue (what the SAM template creates
    /// on AWS) and prints their names as `export` lines for a shell.
    Provision {
        /// Prefix of every name.
        #[arg(long, default_value = "bulk-export")]
        prefix: String,
    },
    /// Loads synthetic sample patients (about 32 resources each).
    LoadSample {
        #[arg(long, default_value_t = 100)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Loads NDJSON files (one resource per line), or every `*.ndjson` in a
    /// directory.
    LoadNdjson { paths: Vec<PathBuf> },
    /// Prints the number of current (not deleted) resources per type, as JSON.
    Count,
    /// Registers (or replaces) a SMART Backend Services client in the jobs
    /// table, for `AuthMode=smart`.
    RegisterClient(RegisterClient),
    /// Prints what an export consumed (AWS requests, capacity units, bytes,
    /// worker time) and its estimated cost at on-demand list prices, as JSON.
    JobCost {
        job_id: String,
        /// The worker function's memory (template.yaml: WorkerFunction).
        #[arg(long, default_value_t = bulk_export::domain::cost::DEFAULT_WORKER_MEMORY_MB)]
        worker_memory_mb: u32,
    },
}

/// The store's names from the environment (the functions' variables).
fn names_from_env() -> Result<AwsNames, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    Ok(AwsNames {
        jobs_table: var("BULK_EXPORT_JOBS_TABLE")?,
        resources_table: var("BULK_EXPORT_RESOURCES_TABLE")?,
        bucket: var("BULK_EXPORT_BUCKET")?,
        queue_url: var("BULK_EXPORT_QUEUE_URL")?,
    })
}

fn shards_from_env() -> Result<u16, String> {
    match std::env::var("BULK_EXPORT_SHARDS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("BULK_EXPORT_SHARDS={v} is not a number")),
        Err(_) => Ok(16),
    }
}

/// The adapters of the stack the environment names.
async fn adapters() -> Result<AwsAdapters, String> {
    Ok(AwsAdapters::new(
        &sdk_config().await,
        &names_from_env()?,
        shards_from_env()?,
        Arc::new(SystemClock),
    ))
}

async fn engine() -> Result<Services, String> {
    let adapters = adapters().await?;
    Ok(Services::new(
        adapters.ports(),
        EngineConfig::new("https://localhost/fhir".to_string()),
    ))
}

/// Current resources per type, read the way an export reads them.
async fn count(store: &dyn ResourceStore) -> Result<BTreeMap<String, u64>, String> {
    let as_of = store
        .snapshot()
        .await
        .map_err(|e| e.to_string())?
        .timestamp_micros();
    let mut counts = BTreeMap::new();
    for resource_type in store.resource_types().await.map_err(|e| e.to_string())? {
        let mut total = 0;
        for shard in 0..store.shard_count() {
            let mut after = None;
            loop {
                let page = store
                    .scan_shard(ShardScan {
                        resource_type: &resource_type,
                        shard,
                        after,
                        until: None,
                        as_of,
                        include_deleted: false,
                        limit: 1000,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                total += page.len() as u64;
                match page.items.last() {
                    Some(last) if page.more => after = Some(last.last_updated),
                    _ => break,
                }
            }
        }
        if total > 0 {
            counts.insert(resource_type, total);
        }
    }
    Ok(counts)
}

fn ndjson_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

async fn run(args: Args) -> Result<(), String> {
    match args.command {
        Command::Provision { prefix } => provision_stack(&prefix).await,
        Command::LoadSample { patients, seed } => load_sample(patients, seed).await,
        Command::LoadNdjson { paths } => load_ndjson_files(&paths).await,
        Command::RegisterClient(args) => {
            args.registration()?;
            args.run(&*adapters().await?.jobs).await?;
            Ok(())
        }
        Command::JobCost {
            job_id,
            worker_memory_mb,
        } => job_cost(job_id, worker_memory_mb).await,
        Command::Count => print_counts().await,
    }
}

/// Creates the stack's tables, bucket and queue named after `prefix` and
/// prints the names they got as `export` lines.
async fn provision_stack(prefix: &str) -> Result<(), String> {
    let sdk = sdk_config().await;
    let wanted = AwsNames {
        jobs_table: format!("{prefix}-jobs"),
        resources_table: format!("{prefix}-resources"),
        bucket: format!("{prefix}-exports"),
        queue_url: String::new(),
    };
    let names = provision(&sdk, &wanted, &format!("{prefix}-work"))
        .await
        .map_err(|e| e.to_string())?;
    println!("export BULK_EXPORT_JOBS_TABLE={}", names.jobs_table);
    println!(
        "export BULK_EXPORT_RESOURCES_TABLE={}",
        names.resources_table
    );
    println!("export BULK_EXPORT_BUCKET={}", names.bucket);
    println!("export BULK_EXPORT_QUEUE_URL={}", names.queue_url);
    Ok(())
}

async fn load_sample(patients: usize, seed: u64) -> Result<(), String> {
    let engine = engine().await?;
    let n = loader::load_values(&engine, generate(SampleConfig { patients, seed }))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("loaded {n} resources");
    Ok(())
}

/// Loads the files one after another; an error names its file.
async fn load_ndjson_files(paths: &[PathBuf]) -> Result<(), String> {
    let engine = engine().await?;
    let mut total = 0;
    for file in ndjson_files(paths)? {
        let reader = std::fs::File::open(&file)
            .map(std::io::BufReader::new)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        total += loader::load_ndjson(&engine, reader)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    eprintln!("loaded {total} resources");
    Ok(())
}

/// Prints a job's usage and estimated cost, with its id and state; the
/// resources it exported are the counts of its output files.
async fn job_cost(job_id: String, worker_memory_mb: u32) -> Result<(), String> {
    let jobs = adapters().await?.jobs;
    let job = jobs
        .get_job(&job_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no job {job_id}"))?;
    let usage = jobs.usage(&job_id).await.map_err(|e| e.to_string())?;
    let resources = job
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Output)
        .map(|f| f.count)
        .sum();
    let mut report = cost::report(&usage, resources, worker_memory_mb);
    report["jobId"] = job_id.into();
    report["state"] = serde_json::to_value(job.state).map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn print_counts() -> Result<(), String> {
    let engine = engine().await?;
    let counts = count(&*engine.ports.resources).await?;
    println!(
        "{}",
        serde_json::to_string(&counts).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("bulk-export-aws: {e}");
        std::process::exit(1);
    }
}
