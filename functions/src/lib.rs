//! The Lambda functions of bulk-export: thin entry points over the shared
//! engine and routing table (`bulk_export::http::Api`).
//!
//! - `kickoff`, `status`, `files`, `resources`, `token`: HTTP API routes,
//!   all served by [`http::run`] (the template decides which routes reach
//!   which function, and each function's role allows only what its routes need);
//! - `worker`: SQS work messages ([`worker`]);
//! - `sweeper`: the EventBridge schedule ([`sweeper`]);
//! - `scheduler`: export schedules, every minute or by name ([`scheduler`]).
//!
//! [`Container`] builds the AWS clients and ports once per container (cold
//! start), from [`Settings`].

pub mod container;
pub mod http;
pub mod scheduler;
pub mod settings;
pub mod sweeper;
pub mod worker;

pub use container::Container;
pub use settings::Settings;

/// Logs as JSON lines for CloudWatch, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    let _ = tracing::subscriber::set_global_default(log_subscriber(std::io::stdout));
}

/// The functions' log format: one JSON object per event (level, target,
/// message and the event's fields, such as `job`), no ANSI colours, no
/// time (CloudWatch stamps each line). Resource content is never a field:
/// the engine logs ids, counts and reasons.
pub fn log_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .with_writer(writer)
        .finish()
}
