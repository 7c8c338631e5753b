//! `bulk-export-local`: the whole service in one process on embedded storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulk_export_local::{start, LocalConfig, Overrides};
use clap::Parser;

/// FHIR Bulk Data export server on embedded storage (SQLite + files).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BULK_EXPORT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the databases and export files (created if missing).
    #[arg(long, env = "BULK_EXPORT_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Synthetic patients to load when the store is empty (0 = none).
    #[arg(long, env = "BULK_EXPORT_SAMPLE_PATIENTS", default_value_t = 0)]
    sample_patients: usize,
    /// Public origin for links, if clients reach the server by another name.
    #[arg(long, env = "BULK_EXPORT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Concurrent export workers.
    #[arg(long, env = "BULK_EXPORT_WORKERS", default_value_t = 4)]
    workers: usize,
    /// Days a completed export's files are kept.
    #[arg(long, env = "BULK_EXPORT_RETENTION_DAYS", default_value_t = 7)]
    retention_days: i64,
    /// Resources per output file before the next file starts.
    #[arg(
        long,
        env = "BULK_EXPORT_MAX_RESOURCES_PER_FILE",
        default_value_t = 100_000
    )]
    max_resources_per_file: u64,
    /// Seconds between sweeps of expired exports.
    #[arg(long, env = "BULK_EXPORT_SWEEP_SECONDS", default_value_t = 60)]
    sweep_seconds: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = LocalConfig::new(args.listen, args.data_dir);
    config.sample_patients = args.sample_patients;
    config.public_origin = args.public_url;
    config.workers = args.workers;
    config.retention = chrono::Duration::days(args.retention_days.max(1));
    config.max_resources_per_file = args.max_resources_per_file.max(1);
    config.sweep_interval = Duration::from_secs(args.sweep_seconds.max(1));

    let running = match start(config, Overrides::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulk-export-local: {e}");
            std::process::exit(1);
        }
    };
    println!("bulk-export is ready: FHIR base {}", running.base_url);
    wait_for_signal().await;
    println!("bulk-export: shutting down");
    running.shutdown().await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
