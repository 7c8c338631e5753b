//! The Lambda functions of bulk-export: thin entry points over the shared
//! engine and routing table (`bulk_export::http::Api`).
//!
//! - `kickoff`, `status`, `files`, `resources`, `token`: HTTP API routes,
//!   all served by [`http::run`] (the template decides which routes reach
//!   which function, and each function's role allows only what its routes need);
//! - `worker`: SQS work messages ([`worker`]);
//! - `sweeper`: the EventBridge schedule ([`sweeper`]).
//!
//! [`Container`] builds the AWS clients and ports once per container (cold
//! start), from [`Settings`].

pub mod container;
pub mod http;
pub mod settings;
pub mod sweeper;
pub mod worker;

pub use container::Container;
pub use settings::Settings;

/// Logs as JSON lines for CloudWatch, level from `RUST_LOG` (default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .try_init();
}
