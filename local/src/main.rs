//! `bulk-export-local`: the whole service in one process on embedded storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulk_export::cli::RegisterClient;
use bulk_export_local::{admin, start, LocalConfig, Overrides};
use clap::{Parser, Subcommand};

/// FHIR Bulk Data export server on embedded storage (SQLite + files).
/// Without a subcommand it runs the server.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "BULK_EXPORT_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the databases and export files (created if missing).
    #[arg(
        long,
        env = "BULK_EXPORT_DATA_DIR",
        default_value = "./data",
        global = true
    )]
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
    // The engine's settings default to the library's (EngineConfig::new).
    /// Days a completed export's files are kept [default: 7].
    #[arg(long, env = "BULK_EXPORT_RETENTION_DAYS")]
    retention_days: Option<i64>,
    /// Resources per output file before the next file starts [default: 100000].
    #[arg(long, env = "BULK_EXPORT_MAX_RESOURCES_PER_FILE")]
    max_resources_per_file: Option<u64>,
    /// Resources read per page of the store (each page may end in a
    /// checkpoint) [default: 1000].
    #[arg(long, env = "BULK_EXPORT_PAGE_SIZE")]
    page_size: Option<usize>,
    /// Exports a client may have queued or running at once; more get 429
    /// (0: no limit) [default: 10].
    #[arg(long, env = "BULK_EXPORT_MAX_ACTIVE_EXPORTS_PER_CLIENT")]
    max_active_exports_per_client: Option<u32>,
    /// Milliseconds a status request for an export in progress is held
    /// open, answered as soon as the export completes (0: at once)
    /// [default: 1000].
    #[arg(long, env = "BULK_EXPORT_STATUS_WAIT_MS")]
    status_wait_ms: Option<u64>,
    /// Seconds an identical kick-off of the same client reuses its export
    /// (queued, running, or completed that long ago) instead of starting a
    /// new one; `Cache-Control: no-cache` forces a new one (0: never reuse)
    /// [default: 600].
    #[arg(long, env = "BULK_EXPORT_JOB_REUSE_SECONDS")]
    job_reuse_seconds: Option<u64>,
    /// Whether each finished file gets a gzip twin, sent to clients that
    /// accept gzip [default: true].
    #[arg(long, env = "BULK_EXPORT_GZIP_FILES")]
    gzip_files: Option<bool>,
    /// Seconds `$export-revisions` waits for its file before answering
    /// with a status link instead [default: 30].
    #[arg(long, env = "BULK_EXPORT_REVISIONS_WAIT_SECONDS")]
    revisions_wait_seconds: Option<u64>,
    /// Announce every finished export to this URL (a signed POST; clients
    /// registered with a webhook of their own get theirs instead).
    #[arg(long, env = "BULK_EXPORT_WEBHOOK_URL", requires = "webhook_secret")]
    webhook_url: Option<String>,
    /// The secret webhook signatures are made with.
    #[arg(long, env = "BULK_EXPORT_WEBHOOK_SECRET", requires = "webhook_url")]
    webhook_secret: Option<String>,
    /// Copy each completed scheduled run, files then manifest.json, to
    /// DIR/<schedule-name>/<run-number>/ (renamed into place when whole).
    #[arg(long, env = "BULK_EXPORT_DELIVERY_DIR", value_name = "DIR")]
    delivery_dir: Option<PathBuf>,
    /// Let schedules' webhooks point at loopback or private addresses
    /// (trials on one machine; never on a shared server).
    #[arg(long, env = "BULK_EXPORT_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// Seconds between looks for due export schedules (0: none run).
    #[arg(long, env = "BULK_EXPORT_SCHEDULE_TICK_SECONDS", default_value_t = 20)]
    schedule_tick_seconds: u64,
    /// Seconds between sweeps of expired exports.
    #[arg(long, env = "BULK_EXPORT_SWEEP_SECONDS", default_value_t = 60)]
    sweep_seconds: u64,
    /// Require SMART Backend Services access tokens (off: open mode).
    #[arg(long, env = "BULK_EXPORT_AUTH")]
    auth: bool,
    /// With --auth: also accept tokens whose `iss` is this external issuer...
    #[arg(
        long,
        env = "BULK_EXPORT_EXTERNAL_ISSUER",
        requires = "external_jwks_url"
    )]
    external_issuer: Option<String>,
    /// ...verified with the keys published at this JWKS URL.
    #[arg(
        long,
        env = "BULK_EXPORT_EXTERNAL_JWKS_URL",
        requires = "external_issuer"
    )]
    external_jwks_url: Option<String>,
    /// The token signing key (P-256, PKCS#8 PEM) from configuration (on AWS:
    /// a secret parameter); otherwise one is generated into the data dir.
    #[arg(long, env = "BULK_EXPORT_TOKEN_SIGNING_KEY", hide_env_values = true)]
    token_signing_key: Option<String>,
    /// How long access tokens live, in seconds (SMART allows at most 300).
    #[arg(long, env = "BULK_EXPORT_ACCESS_TOKEN_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(1..=300))]
    access_token_seconds: i64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register (or replace) a client allowed to get access tokens.
    RegisterClient(RegisterClient),
    /// Make an ES384 client key: private-key.pem and jwks.json in OUT_DIR.
    ClientKey {
        #[arg(long)]
        out_dir: PathBuf,
        #[arg(long, default_value = "client-key-1")]
        kid: String,
    },
    /// Print a signed client assertion for the token endpoint.
    ClientAssertion {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "client-key-1")]
        kid: String,
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        token_url: String,
    },
}

fn main() {
    bulk_export_local::bound_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(run());
}

async fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours for a terminal only: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(command) = args.command {
        if let Err(e) = run_command(command, &args.data_dir).await {
            eprintln!("bulk-export-local: {e}");
            std::process::exit(2);
        }
        return;
    }
    let mut config = LocalConfig::new(args.listen, args.data_dir);
    config.sample_patients = args.sample_patients;
    config.public_origin = args.public_url;
    config.workers = args.workers;
    let engine = &mut config.engine;
    if let Some(days) = args.retention_days {
        engine.retention = chrono::Duration::days(days.max(1));
    }
    if let Some(n) = args.max_resources_per_file {
        engine.max_resources_per_file = n.max(1);
    }
    if let Some(n) = args.page_size {
        engine.page_size = n.max(1);
    }
    if let Some(n) = args.max_active_exports_per_client {
        engine.max_active_exports_per_client = n;
    }
    if let Some(secs) = args.job_reuse_seconds {
        engine.reuse_window = Duration::from_secs(secs);
    }
    if let Some(ms) = args.status_wait_ms {
        engine.status_wait = Duration::from_millis(ms);
    }
    if let Some(gzip) = args.gzip_files {
        engine.gzip_files = gzip;
    }
    if let Some(secs) = args.revisions_wait_seconds {
        engine.revisions_wait = Duration::from_secs(secs);
    }
    if let (Some(url), Some(secret)) = (args.webhook_url, args.webhook_secret) {
        engine.webhook = Some(bulk_export::engine::notify::Webhook { url, secret });
    }
    config.sweep_interval = Duration::from_secs(args.sweep_seconds.max(1));
    config.delivery_dir = args.delivery_dir;
    config.engine.allow_private_webhooks = args.allow_private_webhooks;
    config.schedule_tick = Duration::from_secs(args.schedule_tick_seconds);
    config.auth = args.auth;
    config.external_issuer = args.external_issuer.zip(args.external_jwks_url);
    config.token_signing_key = args.token_signing_key;
    config.access_token_seconds = args.access_token_seconds;

    let running = match start(config, Overrides::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulk-export-local: {e}");
            std::process::exit(1);
        }
    };
    // The handlers are in place before "ready": a supervisor (or a test)
    // that sends SIGTERM as soon as it reads that line gets a clean stop.
    let signal = shutdown_signal();
    println!("bulk-export is ready: FHIR base {}", running.base_url);
    signal.await;
    println!("bulk-export: shutting down");
    running.shutdown().await;
}

async fn run_command(command: Command, data_dir: &std::path::Path) -> Result<(), String> {
    match command {
        Command::RegisterClient(args) => admin::register_client(data_dir, &args).await,
        Command::ClientKey { out_dir, kid } => {
            admin::make_client_key(&out_dir, &kid)?;
            println!(
                "wrote {0}/private-key.pem and {0}/jwks.json",
                out_dir.display()
            );
            Ok(())
        }
        Command::ClientAssertion {
            key,
            kid,
            client_id,
            token_url,
        } => {
            println!(
                "{}",
                admin::client_assertion(&key, &kid, &client_id, &token_url)?
            );
            Ok(())
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM. Both handlers are installed when
/// this is called, not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
