//! The whole service in one process: embedded storage (SQLite + files), the
//! shared HTTP routes on axum, a worker pool draining the embedded queue,
//! and a periodic sweeper.
//!
//! Tests start it in-process with [`start`] on a free port, with overrides
//! for the clock, the authenticator and the artifact store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bulk_export::auth::TokenIssuer;
use bulk_export::clock::SystemClock;
use bulk_export::domain::job::content_type_of;
use bulk_export::embedded::artifacts::BLOB_PATH_PREFIX;
use bulk_export::embedded::{
    FolderDelivery, FsArtifacts, SqliteJobs, SqliteQueue, SqliteResourceStore,
};
use bulk_export::engine::{EngineConfig, Ports, Services};
use bulk_export::http::ApiError;
use bulk_export::http::{error_response, Api, Authenticator, MAX_BODY_BYTES};
use bulk_export::ports::{
    AllPublishers, ArtifactStore, ClientStore, Clock, EventPublisher, WorkQueue,
};
use bulk_export::service::{AuthSettings, Service, ServiceSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod admin;
pub use bulk_export::loader;
pub mod workers;

/// Settings of the local service. The engine's settings keep the
/// library's defaults (`EngineConfig::new`) unless changed.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Patients of synthetic sample data to load into an empty store.
    pub sample_patients: usize,
    /// Public origin if not `http://<listen address>` (behind a proxy).
    pub public_origin: Option<String>,
    pub base_path: String,
    /// Concurrent work-message handlers.
    pub workers: usize,
    /// Time one message may run before the part checkpoints and re-queues
    /// itself (a Lambda invocation's budget, locally); capped at half the
    /// visibility timeout.
    pub invocation_budget: Duration,
    /// A received message stays hidden this long; it comes back if its
    /// handler died without deleting it.
    pub visibility_timeout: Duration,
    pub sweep_interval: Duration,
    /// Retention, file size, pages, chunks, parts, retries.
    pub engine: EngineConfig,
    /// SMART Backend Services authorization (tokens required); off = open mode.
    pub auth: bool,
    /// Also accept tokens of this issuer (`iss`, JWKS URL), besides the
    /// built-in one.
    pub external_issuer: Option<(String, String)>,
    /// The token signing key (PKCS#8 PEM, P-256) from configuration; without
    /// it, a key is generated into the data directory on first start.
    pub token_signing_key: Option<String>,
    /// How long access tokens live (1 to 300 s; default 300).
    pub access_token_seconds: i64,
    /// Completed runs of schedules are also copied here, one folder per
    /// run (`FolderDelivery`).
    pub delivery_dir: Option<PathBuf>,
    /// How often the in-process scheduler looks for due schedules (zero:
    /// never; tests fire them by hand).
    pub schedule_tick: Duration,
}

impl LocalConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        let service = ServiceSettings::default();
        LocalConfig {
            listen,
            data_dir,
            sample_patients: 0,
            public_origin: None,
            base_path: service.base_path,
            workers: 4,
            invocation_budget: Duration::from_secs(300),
            visibility_timeout: Duration::from_secs(360),
            sweep_interval: Duration::from_secs(60),
            engine: service.engine,
            auth: false,
            external_issuer: None,
            token_signing_key: None,
            access_token_seconds: bulk_export::auth::ACCESS_TOKEN_SECONDS,
            delivery_dir: None,
            schedule_tick: Duration::from_secs(20),
        }
    }
}

/// Wraps the artifact store, e.g. to inject a failure mid-export.
pub type ArtifactWrapper = Box<dyn FnOnce(Arc<dyn ArtifactStore>) -> Arc<dyn ArtifactStore> + Send>;

/// Replaceable parts, for tests.
#[derive(Default)]
pub struct Overrides {
    pub clock: Option<Arc<dyn Clock>>,
    pub auth: Option<Arc<dyn Authenticator>>,
    /// Wraps the artifact store (e.g. to inject a failure mid-export).
    #[allow(clippy::type_complexity)]
    pub wrap_artifacts:
        Option<Box<dyn FnOnce(Arc<dyn ArtifactStore>) -> Arc<dyn ArtifactStore> + Send>>,
    /// Gets every completion event too (after folder delivery, if any).
    pub events: Option<Arc<dyn EventPublisher>>,
}

/// A running service.
pub struct Running {
    pub addr: SocketAddr,
    /// e.g. `http://127.0.0.1:8080/fhir`
    pub base_url: String,
    pub services: Services,
    pub queue: SqliteQueue,
    /// Client registrations (for tests and the admin CLI).
    pub clients: Arc<dyn ClientStore>,
    /// The built-in token issuer, when authorization is on.
    pub issuer: Option<Arc<TokenIssuer>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets in-flight ones finish, stops the
    /// workers between messages and waits for everything to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Clone)]
struct AppState {
    api: Api,
    blobs: Arc<FsArtifacts>,
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StartError {}

fn start_err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> StartError + '_ {
    move |e| StartError(format!("{what}: {e}"))
}

/// Opens the stores, loads sample data into an empty store, binds the
/// listener and starts the server, the workers and the sweeper.
pub async fn start(config: LocalConfig, overrides: Overrides) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| start_err("creating the data directory")(&e))?;
    let (listener, addr) = bind(config.listen).await?;
    let origin = public_origin(&config, addr);

    let clock: Arc<dyn Clock> = overrides.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let stores = open_stores(&config, &origin, &clock).await?;
    let clients: Arc<dyn ClientStore> = Arc::new(stores.jobs.clone());
    let mut artifacts: Arc<dyn ArtifactStore> = stores.blobs.clone();
    if let Some(wrap) = overrides.wrap_artifacts {
        artifacts = wrap(artifacts);
    }
    let auth = auth_settings(&config)?;
    let events = publishers(&config, &artifacts, overrides.events);
    let queue = stores.queue.clone();
    let blobs = stores.blobs.clone();
    let ports = stores.into_ports(clients.clone(), events, artifacts, clock);
    let service = assemble_service(
        &config,
        &origin,
        auth,
        ports,
        clients.clone(),
        overrides.auth,
    )?;
    let engine = service.services(&origin);
    let issuer = service.issuer(&origin);
    let base_url = service.base_url(&origin);

    if config.sample_patients > 0 {
        load_sample(&engine, config.sample_patients).await?;
    }

    let app = router(AppState {
        api: service.api(&origin),
        blobs,
    });
    let (stop, tasks) = spawn_tasks(&config, listener, app, &engine, &queue);
    Ok(Running {
        addr,
        base_url,
        services: engine,
        queue,
        clients,
        issuer,
        stop,
        tasks,
    })
}

/// Binds the listen address; port 0 picks a free port, hence the address
/// read back.
async fn bind(listen: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| start_err("binding the listen address")(&e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| start_err("reading the bound address")(&e))?;
    Ok((listener, addr))
}

/// The origin links are built on: the configured one (behind a proxy) or
/// the bound address, without a trailing slash.
fn public_origin(config: &LocalConfig, addr: SocketAddr) -> String {
    config
        .public_origin
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_string()
}

/// The embedded stores in the data directory.
struct Stores {
    resources: SqliteResourceStore,
    jobs: SqliteJobs,
    queue: SqliteQueue,
    blobs: Arc<FsArtifacts>,
}

impl Stores {
    /// The engine's ports over these stores; `artifacts` is the file store,
    /// possibly wrapped by a test.
    fn into_ports(
        self,
        clients: Arc<dyn ClientStore>,
        events: AllPublishers,
        artifacts: Arc<dyn ArtifactStore>,
        clock: Arc<dyn Clock>,
    ) -> Ports {
        Ports {
            resources: Arc::new(self.resources),
            clients,
            schedules: Arc::new(self.jobs.clone()),
            events: Arc::new(events),
            jobs: Arc::new(self.jobs),
            artifacts,
            queue: Arc::new(self.queue) as Arc<dyn WorkQueue>,
            clock,
        }
    }
}

/// Opens the stores and puts back on the queue the messages a previous run
/// left in flight, so that its exports resume.
async fn open_stores(
    config: &LocalConfig,
    origin: &str,
    clock: &Arc<dyn Clock>,
) -> Result<Stores, StartError> {
    let resources = SqliteResourceStore::open(&config.data_dir.join("resources.db"), clock.clone())
        .map_err(|e| start_err("opening the resource store")(&e))?;
    let jobs = SqliteJobs::open(&config.data_dir.join("jobs.db"))
        .map_err(|e| start_err("opening the job store")(&e))?;
    let queue = jobs.queue();
    let reclaimed = queue
        .reclaim_in_flight()
        .await
        .map_err(|e| start_err("reclaiming in-flight work")(&e))?;
    if reclaimed > 0 {
        tracing::info!(
            messages = reclaimed,
            "resuming work a previous run left in flight"
        );
    }
    let blobs = Arc::new(
        FsArtifacts::open(&config.data_dir.join("files"), origin, clock.clone())
            .map_err(|e| start_err("opening the file store")(&e))?,
    );
    Ok(Stores {
        resources,
        jobs,
        queue,
        blobs,
    })
}

/// SMART Backend Services with the configured signing key, or one kept in
/// the data directory (created on first start); open mode without `auth`.
fn auth_settings(config: &LocalConfig) -> Result<AuthSettings, StartError> {
    if !config.auth {
        return Ok(AuthSettings::Open);
    }
    let signing_key_pem = match &config.token_signing_key {
        Some(pem) => pem.clone(),
        None => TokenIssuer::load_or_create_pem(&config.data_dir.join("token-signing-key.pem"))
            .map_err(|e| start_err("loading the token signing key")(&e))?,
    };
    Ok(AuthSettings::Smart {
        signing_key_pem,
        external_issuer: config.external_issuer.clone(),
    })
}

/// Completion events go to the delivery folder first, if any, then to the
/// test's publisher.
fn publishers(
    config: &LocalConfig,
    artifacts: &Arc<dyn ArtifactStore>,
    extra: Option<Arc<dyn EventPublisher>>,
) -> AllPublishers {
    let mut publishers: Vec<Arc<dyn EventPublisher>> = Vec::new();
    if let Some(dir) = &config.delivery_dir {
        publishers.push(Arc::new(FolderDelivery::new(dir, artifacts.clone())));
    }
    publishers.extend(extra);
    AllPublishers(publishers)
}

/// The shared service over the local ports, with a test's authenticator if
/// given.
fn assemble_service(
    config: &LocalConfig,
    origin: &str,
    auth: AuthSettings,
    ports: Ports,
    clients: Arc<dyn ClientStore>,
    authenticator: Option<Arc<dyn Authenticator>>,
) -> Result<Service, StartError> {
    let mut engine_config = config.engine.clone();
    // No handling outlives the visibility timeout (its budget is half).
    engine_config.collect_delay = config.visibility_timeout;
    let settings = ServiceSettings {
        base_path: config.base_path.clone(),
        public_origin: Some(origin.to_string()),
        engine: engine_config,
        auth,
        access_token_seconds: config.access_token_seconds,
    };
    let mut service = Service::new(settings, ports, clients)
        .map_err(|e| start_err("assembling the service")(&e))?;
    if let Some(auth) = authenticator {
        service = service.with_authenticator(auth);
    }
    Ok(service)
}

/// Loads synthetic patients into an empty store (a store with data is left
/// alone).
async fn load_sample(engine: &Services, patients: usize) -> Result<(), StartError> {
    let loaded = loader::load_sample_if_empty(engine, patients)
        .await
        .map_err(|e| start_err("loading sample data")(&e))?;
    if loaded > 0 {
        tracing::info!(resources = loaded, "loaded sample data");
    }
    Ok(())
}

/// Presigned downloads under the blob prefix; everything else goes to the
/// shared routing table.
fn router(state: AppState) -> Router {
    Router::new()
        .route(
            &format!("{BLOB_PATH_PREFIX}{{*key}}"),
            axum::routing::get(serve_blob),
        )
        .fallback(serve_api)
        .with_state(state)
}

/// Starts the server, the workers, the scheduler (unless its tick is zero)
/// and the sweeper; they all stop when the returned sender says `true`.
fn spawn_tasks(
    config: &LocalConfig,
    listener: tokio::net::TcpListener,
    app: Router,
    engine: &Services,
    queue: &SqliteQueue,
) -> (watch::Sender<bool>, Vec<JoinHandle<()>>) {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(serve(listener, app, stop_rx.clone()))];
    // As with SQS and Lambda, a message must not reappear while its handler
    // still runs: the budget stays well inside the visibility timeout.
    let budget = config.invocation_budget.min(config.visibility_timeout / 2);
    for n in 0..config.workers.max(1) {
        tasks.push(tokio::spawn(workers::work_loop(
            n,
            engine.clone(),
            queue.clone(),
            budget,
            config.visibility_timeout,
            stop_rx.clone(),
        )));
    }
    if !config.schedule_tick.is_zero() {
        tasks.push(tokio::spawn(workers::schedule_loop(
            engine.clone(),
            config.schedule_tick,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(workers::sweep_loop(
        engine.clone(),
        config.sweep_interval,
        stop_rx,
    )));
    (stop, tasks)
}

/// Serves until `stop` turns `true`, letting in-flight requests finish.
async fn serve(listener: tokio::net::TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "server failed");
    }
}

async fn serve_api(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::too_large(format!("The body is larger than {MAX_BODY_BYTES} bytes"));
            return error_response(&e).map(Body::from);
        }
    };
    let resp = state
        .api
        .handle(http::Request::from_parts(parts, bytes))
        .await;
    resp.map(Body::from)
}

/// Serves a presigned download, the way S3 would: the signature and expiry
/// are the only credentials.
async fn serve_blob(State(state): State<AppState>, req: Request) -> Response {
    let key = req
        .uri()
        .path()
        .strip_prefix(BLOB_PATH_PREFIX)
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let signed = match state.blobs.open_signed(&key, &query) {
        Ok(f) => f,
        Err(e) => return error_response(&ApiError::from(e)).map(Body::from),
    };
    if let Some(expected) = &signed.sha256 {
        if let Err(e) = check_digest(&signed.path, expected).await {
            tracing::error!(%key, error = %e.message, "a stored file is not served");
            return error_response(&e).map(Body::from);
        }
    }
    let path = signed.path;
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let len = file.metadata().await.map(|m| m.len()).ok();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
            let mut resp = Body::from_stream(stream).into_response();
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type_of(&key)),
            );
            // A gzip twin is the NDJSON compressed, as S3 serves it.
            if key.ends_with(".gz") {
                h.insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
            }
            if let Some(len) = len {
                h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            }
            resp
        }
        Err(_) => error_response(&ApiError::not_found("No such file")).map(Body::from),
    }
}

/// Refuses a file whose bytes no longer have the SHA-256 its manifest
/// gives: it is never served silently. Read once before it is sent (the
/// operating system's cache then serves the send).
async fn check_digest(path: &std::path::Path, expected: &str) -> Result<(), ApiError> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let unreadable =
        |e: std::io::Error| ApiError::internal(format!("The file cannot be read: {e}"));
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).await.map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let actual: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if actual == expected {
        Ok(())
    } else {
        Err(ApiError::internal(
            "The stored file no longer matches its SHA-256 in the manifest, so it is not served",
        ))
    }
}

/// Caps glibc's malloc arenas at two. By default glibc gives each thread
/// its own arena (up to eight per core), and memory freed in one stays
/// there: a view export of 1M resources, which parses a resource per row on
/// every worker thread, peaked at 393 MB of RSS, and at 138 MB with two
/// arenas at the same speed (`cargo bench -p bulk-export-local --bench
/// view_export`).
///
/// It also keeps buffers of up to 16 MiB (an export's 1 MiB chunks, a
/// page of bodies) in the arenas, and 32 MiB of free memory at an arena's
/// top before handing it back: by default glibc maps such buffers afresh
/// or trims them away when freed, and each reuse then faults its pages in
/// again, zeroed by the kernel. A 100k export took 4,000-7,000 page faults
/// after the first run, and a median of about 330 with these settings, at
/// about the same peak RSS (`cargo bench -p bulk-export-local --bench
/// export`).
/// Call it before any thread starts.
pub fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}
