//! The export engine: one service per use case, each written against only
//! the ports it uses.
//!
//! | service      | file(s)                                   | serves                      |
//! |--------------|-------------------------------------------|-----------------------------|
//! | [`Exports`]  | `export.rs`, `links.rs`                   | kick-off, status, cancel, files, links |
//! | [`Worker`]   | `worker.rs`, `plan.rs`, `sink.rs`, `worker/` | queued work: plan, parts, finalize |
//! | [`Sweeper`]  | `sweep.rs`                                | expired jobs                |
//! | [`Schedules`]| `schedules.rs`                            | recurring exports           |
//! | [`Releases`] | `releases.rs`                             | named, shared exports       |
//! | [`Resources`]| `resources.rs`                            | the write and read API      |
//! | [`Views`]    | `views.rs`, `view_export.rs`              | ViewDefinition run and export |
//! | [`Revisions`]| `revisions.rs`                            | the audit export            |
//!
//! They share three collaborators: [`JobDesk`] (`job_desk.rs`: starting
//! and finding a caller's jobs), [`Announcer`] (`notify.rs`: events and
//! webhooks when a job ends) and [`Collector`] (`collect.rs`: an ended
//! job's garbage). [`Services`] wires them from the ports; every service
//! is cheap to clone.

mod accounting;
mod capability;
mod collect;
mod compartment;
mod digest;
mod export;
pub mod gzip_twin;
mod job_desk;
mod links;
mod modify;
pub mod notify;
mod parquet_files;
mod plan;
mod releases;
mod resources;
mod revisions;
mod schedules;
pub use revisions::RevisionsOutcome;
pub use schedules::RunSelector;
mod sink;
mod sweep;
mod view_export;
mod views;
pub use crate::domain::view_export::{ViewExportInput, ViewRef};
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use export::StatusReply;
pub use resources::{BundleReply, EntryWritten, Written};
pub use views::ViewSource;
pub use worker::{Disposition, WorkOutcome};

pub use crate::ports::Ports;

pub use collect::Collector;
pub use export::Exports;
pub use job_desk::JobDesk;
pub use notify::Announcer;
pub use releases::Releases;
pub use resources::Resources;
pub use revisions::Revisions;
pub use schedules::Schedules;
pub use sweep::Sweeper;
pub use views::Views;
pub use worker::Worker;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Absolute FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
    pub base_url: String,
    /// How long a completed export's files are kept.
    pub retention: chrono::Duration,
    /// A file holds at most this many resources (then the next file starts).
    pub max_resources_per_file: u64,
    /// Resources read per store page.
    pub page_size: usize,
    /// Upload chunk size: buffered output is uploaded once it reaches this
    /// (S3 needs >= 5 MiB for all but a file's last chunk: the functions
    /// set their part size, 8 MiB by default). The default, 1 MiB, suits
    /// local files: the kernel copies a chunk into the page cache while it
    /// is still in the CPU's cache, and a 1M export took about 8% less CPU
    /// and 20 MB less RSS than with 4 MiB chunks (`cargo bench -p
    /// bulk-export-local --bench export -- --chunk-kib N`).
    pub min_chunk_bytes: usize,
    /// Buffered lines up to this size ride along in the checkpoint instead
    /// of forcing a short file.
    pub carry_limit_bytes: usize,
    /// A resource type is split into parts of about this many resources.
    pub part_target_resources: u64,
    /// A full system export of at most this many versions reads its types
    /// together, on a store that keeps them in shared partitions (DynamoDB):
    /// one Query stream per shard instead of one per type and shard, which
    /// for a small export is most of its requests. Past it, pages of data
    /// outnumber the streams, and per-type parts give fewer, larger files.
    pub mixed_export_max_resources: u64,
    /// A mixed part holds its versions in memory until it writes them, so
    /// it reads at most about this many (a worker handles several parts at
    /// once). Its size does not change the number of Queries.
    pub mixed_part_max_resources: u64,
    /// Patient and Group exports are split into parts of this many patients.
    pub patients_per_part: usize,
    /// Lifetime of the presigned links the file endpoint hands out.
    pub presign_ttl: Duration,
    /// Whether manifests say a token is needed to fetch the files.
    pub requires_access_token: bool,
    /// The token endpoint, when authorization is on (for discovery).
    pub token_url: Option<String>,
    /// A message received this many times without success fails its job.
    pub max_attempts: u32,
    /// A transiently failed message comes back after `retry_base`, doubled
    /// at each further attempt, at most `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long after a job ends its garbage is collected once more: longer
    /// than any handling can live (a Lambda's timeout, the local budget),
    /// so nothing a straggler writes survives it.
    pub collect_delay: Duration,
    /// A client with this many exports queued or running gets 429 for the
    /// next one (0: no limit). Two kick-offs at the same instant may both
    /// pass: the limit is a guard against runaway clients, not a quota.
    pub max_active_exports_per_client: u32,
    /// A status request for an export in progress is held open up to this
    /// long, and answered as soon as the export completes: a small export
    /// reaches the client in the time it takes, not in `Retry-After`'s
    /// whole second. Zero answers at once.
    pub status_wait: Duration,
    /// How often a held status request looks at the job again, on a store
    /// that cannot signal job updates (DynamoDB; see `JobStore::job_updates`).
    pub status_wait_poll: Duration,
    /// A kick-off identical to one of the same owner's jobs that is queued,
    /// running, or completed at most this long ago gets that job instead
    /// of a new one (`Cache-Control: no-cache` forces a new one). Zero
    /// turns reuse off.
    pub reuse_window: Duration,
    /// A page of a paged manifest (`allowPartialManifests`) lists at most
    /// this many files.
    pub manifest_page_files: usize,
    /// Each finished file gets a gzip twin, served to clients that accept
    /// gzip (see `gzip_twin`).
    pub gzip_files: bool,
    /// `$viewdefinition-run` answers at most this many rows (more is a 422
    /// pointing to `$viewdefinition-export`).
    pub view_run_row_limit: usize,
    /// `$export-revisions` answers with the file's id if the file is ready
    /// within this long, else with a status link (the seed's 30 s).
    pub revisions_wait: Duration,
    /// Where finished exports are announced when the owner's registration
    /// names no webhook of its own (open mode has no registrations).
    pub webhook: Option<notify::Webhook>,
    /// The longest a presigned link for a downstream system may live (see
    /// `run_links`): with temporary credentials, a link dies with them.
    pub max_link_ttl: Duration,
    /// Whether a schedule's webhook (a client's choice) may point at
    /// loopback, private or link-local addresses. Off except for trials
    /// and tests: the service must not be a client's proxy into its own
    /// network.
    pub allow_private_webhooks: bool,
}

impl EngineConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        EngineConfig {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            retention: chrono::Duration::days(7),
            max_resources_per_file: 100_000,
            page_size: 1000,
            min_chunk_bytes: 1 << 20,
            carry_limit_bytes: 96 << 10,
            part_target_resources: 20_000,
            mixed_export_max_resources: 250_000,
            mixed_part_max_resources: 10_000,
            patients_per_part: 500,
            presign_ttl: Duration::from_secs(300),
            requires_access_token: false,
            token_url: None,
            max_attempts: 5,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(900),
            collect_delay: Duration::from_secs(900),
            max_active_exports_per_client: 10,
            status_wait: Duration::from_secs(1),
            status_wait_poll: Duration::from_millis(25),
            reuse_window: Duration::from_secs(600),
            manifest_page_files: 200,
            gzip_files: true,
            view_run_row_limit: 10_000,
            revisions_wait: Duration::from_secs(30),
            webhook: None,
            max_link_ttl: Duration::from_secs(6 * 3600),
            allow_private_webhooks: false,
        }
    }
}

pub use crate::domain::access::Caller;

/// Every use case, wired from the ports: the router calls the service a
/// route needs, each function binary the one it serves.
#[derive(Clone)]
pub struct Services {
    pub exports: Exports,
    pub worker: Worker,
    pub sweeper: Sweeper,
    pub schedules: Schedules,
    pub releases: Releases,
    pub resources: Resources,
    pub views: Views,
    pub revisions: Revisions,
    pub config: Arc<EngineConfig>,
    /// The ports the services were built on (loaders and tests reach the
    /// stores through them; no service does).
    pub ports: Ports,
}

impl Services {
    /// Builds the shared collaborators once, then each service over the
    /// ports and collaborators it uses.
    pub fn new(ports: Ports, config: EngineConfig) -> Self {
        let config = Arc::new(config);
        let p = &ports;
        let desk = Self::job_desk(p, &config);
        let announcer = Self::announcer(p, &config);
        let collector = Self::collector(p, &config);
        let exports = Exports {
            desk: desk.clone(),
            announcer: announcer.clone(),
            collector: collector.clone(),
            jobs: p.jobs.clone(),
            artifacts: p.artifacts.clone(),
            clock: p.clock.clone(),
            config: config.clone(),
        };
        let resources = Resources {
            resources: p.resources.clone(),
            config: config.clone(),
        };
        let views = Views {
            desk: desk.clone(),
            reader: resources.clone(),
            resources: p.resources.clone(),
            config: config.clone(),
        };
        let releases = Releases {
            desk: desk.clone(),
            exports: exports.clone(),
            schedules: p.schedules.clone(),
            jobs: p.jobs.clone(),
            clock: p.clock.clone(),
        };
        Services {
            worker: Self::worker(p, &config, &announcer, &collector),
            sweeper: Sweeper {
                jobs: p.jobs.clone(),
                artifacts: p.artifacts.clone(),
                clock: p.clock.clone(),
            },
            schedules: Schedules {
                desk: desk.clone(),
                exports: exports.clone(),
                announcer,
                views: views.clone(),
                releases: releases.clone(),
                schedules: p.schedules.clone(),
                jobs: p.jobs.clone(),
                clients: p.clients.clone(),
                clock: p.clock.clone(),
                config: config.clone(),
            },
            revisions: Revisions {
                desk,
                exports: exports.clone(),
            },
            exports,
            releases,
            resources,
            views,
            config,
            ports,
        }
    }

    /// Starts and finds a caller's jobs, for every service that starts one.
    fn job_desk(p: &Ports, config: &Arc<EngineConfig>) -> JobDesk {
        JobDesk {
            resources: p.resources.clone(),
            jobs: p.jobs.clone(),
            queue: p.queue.clone(),
            clock: p.clock.clone(),
            config: config.clone(),
        }
    }

    /// Sends a job's events and webhooks when it ends, wherever it ends.
    fn announcer(p: &Ports, config: &Arc<EngineConfig>) -> Announcer {
        Announcer {
            jobs: p.jobs.clone(),
            clients: p.clients.clone(),
            schedules: p.schedules.clone(),
            events: p.events.clone(),
            queue: p.queue.clone(),
            clock: p.clock.clone(),
            config: config.clone(),
        }
    }

    /// Removes an ended job's garbage, for whoever ends it.
    fn collector(p: &Ports, config: &Arc<EngineConfig>) -> Collector {
        Collector {
            jobs: p.jobs.clone(),
            artifacts: p.artifacts.clone(),
            queue: p.queue.clone(),
            config: config.clone(),
        }
    }

    fn worker(
        p: &Ports,
        config: &Arc<EngineConfig>,
        announcer: &Announcer,
        collector: &Collector,
    ) -> Worker {
        Worker {
            announcer: announcer.clone(),
            collector: collector.clone(),
            resources: p.resources.clone(),
            jobs: p.jobs.clone(),
            artifacts: p.artifacts.clone(),
            clients: p.clients.clone(),
            queue: p.queue.clone(),
            clock: p.clock.clone(),
            config: config.clone(),
        }
    }
}

/// A job's transaction time in the stores' microseconds.
pub(crate) fn as_of_micros(job: &crate::domain::job::Job) -> i64 {
    crate::domain::instant::to_micros(job.transaction_time)
}
