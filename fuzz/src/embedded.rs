//! The service on embedded storage in a temporary folder, built once per
//! process, for the targets that go through the routing table: in open
//! mode (the bodies), and with SMART authorization (tokens, assertions).

use std::sync::{Arc, OnceLock};

use bulk_export::clock::SystemClock;
use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteResourceStore};
use bulk_export::engine::Ports;
use bulk_export::http::Api;
use bulk_export::ports::{ArtifactStore, Clock, NoEvents, WorkQueue};
use bulk_export::service::{AuthSettings, Service, ServiceSettings};
use bytes::Bytes;

pub const ORIGIN: &str = "http://127.0.0.1:9";

pub struct Embedded {
    pub runtime: tokio::runtime::Runtime,
    pub open: Api,
    pub smart: Api,
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Sends one request to `api`; returns its status.
    pub fn status_of(&self, api: &Api, req: http::Request<Bytes>) -> u16 {
        self.runtime.block_on(api.handle(req)).status().as_u16()
    }
}

/// The one service of this process.
pub fn embedded() -> &'static Embedded {
    static SERVICE: OnceLock<Embedded> = OnceLock::new();
    SERVICE.get_or_init(build)
}

fn build() -> Embedded {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resources = SqliteResourceStore::open(&dir.path().join("resources.db"), clock.clone())
        .expect("the resource store");
    let jobs = SqliteJobs::open(&dir.path().join("jobs.db")).expect("the job store");
    let artifacts = FsArtifacts::open(&dir.path().join("files"), ORIGIN, clock.clone())
        .expect("the file store");
    let ports = Ports {
        resources: Arc::new(resources),
        clients: Arc::new(jobs.clone()),
        schedules: Arc::new(jobs.clone()),
        events: Arc::new(NoEvents),
        queue: Arc::new(jobs.queue()) as Arc<dyn WorkQueue>,
        jobs: Arc::new(jobs.clone()),
        artifacts: Arc::new(artifacts) as Arc<dyn ArtifactStore>,
        clock,
    };
    let service = |auth| {
        let settings = ServiceSettings {
            public_origin: Some(ORIGIN.into()),
            auth,
            ..Default::default()
        };
        Service::new(settings, ports.clone(), ports.clients.clone()).expect("the service")
    };
    let open = service(AuthSettings::Open);
    let smart = service(AuthSettings::Smart {
        signing_key_pem: bulk_export::auth::TokenIssuer::generate_pem(),
        external_issuer: None,
    });
    let engine = open.services(ORIGIN);
    runtime
        .block_on(bulk_export::loader::load_ndjson(
            &engine,
            crate::seeds::SAMPLES.as_bytes(),
        ))
        .expect("the samples load");
    Embedded {
        open: open.api(ORIGIN),
        smart: smart.api(ORIGIN),
        runtime,
        _dir: dir,
    }
}
