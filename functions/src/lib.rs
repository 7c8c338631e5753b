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
    use tracing_subscriber::layer::SubscriberExt;
    tracing_subscriber::fmt()
        .json()
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .with_writer(writer)
        .finish()
        .with(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
}

/// Levels per target (`info`, `debug`, `bulk_export=debug,warn`), not the
/// span and field matching of `EnvFilter`: that one carries a regex engine,
/// about 0.5 MB of every function binary. A setting that does not parse
/// falls back to `info` (and says so).
fn log_filter(setting: Option<&str>) -> tracing_subscriber::filter::Targets {
    let info = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    match setting.map(str::trim).filter(|s| !s.is_empty()) {
        None => info(),
        Some(s) => s.parse().unwrap_or_else(|e| {
            eprintln!(
                "RUST_LOG={s} is not a list of target=level directives ({e}); logging at info"
            );
            info()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_falls_back_to_info() {
        let unset = log_filter(None);
        assert!(unset.would_enable("bulk_export::engine", &Level::INFO));
        assert!(!unset.would_enable("bulk_export::engine", &Level::DEBUG));

        let debug = log_filter(Some("debug"));
        assert!(debug.would_enable("aws_smithy_runtime", &Level::DEBUG));

        let one = log_filter(Some("bulk_export=debug,warn"));
        assert!(one.would_enable("bulk_export::worker", &Level::DEBUG));
        assert!(!one.would_enable("hyper", &Level::INFO));
        assert!(one.would_enable("hyper", &Level::WARN));

        let bad = log_filter(Some("bulk_export=loud"));
        assert!(bad.would_enable("bulk_export", &Level::INFO));
        assert!(!bad.would_enable("bulk_export", &Level::DEBUG));
    }
}
