//! The AWS adapters: jobs, parts and clients in DynamoDB ([`DynamoJobs`]),
//! resources in DynamoDB ([`DynamoResources`]), export files in S3
//! ([`S3Artifacts`]) and work messages in SQS ([`SqsQueue`]).
//!
//! Clients are built once per process (a Lambda container) from
//! [`sdk_config`], which honours `AWS_ENDPOINT_URL` so the same code runs
//! against moto or LocalStack.

mod artifacts;
pub mod body_codec;
mod dynamo;
pub mod emf;
pub mod events;
mod jobs;
pub mod json_api;
mod metering;
pub mod provision;
mod queue;
mod resources;
mod schedules;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
pub use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

use std::sync::Arc;

pub use artifacts::S3Artifacts;
pub use aws_config::SdkConfig;
pub use jobs::DynamoJobs;
pub use queue::{parse_work_message, SqsQueue};
pub use resources::{DynamoResources, FENCE_LEASE};

use crate::ports::Ports;
use crate::ports::{AllPublishers, Clock, EventPublisher, NoEvents, PortError, PortResult};

/// Where the service's state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsNames {
    pub jobs_table: String,
    pub resources_table: String,
    pub bucket: String,
    pub queue_url: String,
}

/// The AWS adapter of every port, built once per process.
#[derive(Clone)]
pub struct AwsAdapters {
    pub resources: Arc<DynamoResources>,
    pub jobs: Arc<DynamoJobs>,
    pub artifacts: Arc<S3Artifacts>,
    pub queue: Arc<SqsQueue>,
    pub clock: Arc<dyn Clock>,
    /// Completion events: the EMF log line ([`Self::with_metrics`]) and
    /// EventBridge ([`Self::with_event_bus`]), else nowhere.
    pub events: Arc<dyn EventPublisher>,
}

impl AwsAdapters {
    /// `shards`: how many partitions each resource type is spread over
    /// (part of the resource table's layout: never change it on a table
    /// that has data).
    pub fn new(sdk: &SdkConfig, names: &AwsNames, shards: u16, clock: Arc<dyn Clock>) -> Self {
        Self::observed(sdk, names, shards, clock, None)
    }

    /// The same, with `observer` on every client besides the metering
    /// (tests count requests with it).
    pub fn observed(
        sdk: &SdkConfig,
        names: &AwsNames,
        shards: u16,
        clock: Arc<dyn Clock>,
        observer: Option<SharedInterceptor>,
    ) -> Self {
        let clients = Clients { sdk, observer };
        let dynamo = clients.dynamodb();
        AwsAdapters {
            resources: Arc::new(DynamoResources::new(
                dynamo.clone(),
                &names.resources_table,
                shards,
                clock.clone(),
            )),
            jobs: Arc::new(DynamoJobs::new(dynamo, &names.jobs_table)),
            artifacts: Arc::new(
                S3Artifacts::new(clients.s3(), &names.bucket)
                    .with_credentials(sdk.credentials_provider()),
            ),
            queue: Arc::new(SqsQueue::new(clients.sqs(), &names.queue_url)),
            clock,
            events: Arc::new(NoEvents),
        }
    }

    /// Prints one EMF metrics line per ended export (see [`emf`]).
    pub fn with_metrics(mut self, stack: &str, worker_memory_mb: u32) -> Self {
        self.events = Arc::new(AllPublishers(vec![
            Arc::new(emf::EmfLog {
                stack: stack.to_string(),
                worker_memory_mb,
            }),
            self.events,
        ]));
        self
    }

    /// Publishes completion events to the EventBridge bus `bus` too.
    pub fn with_event_bus(mut self, sdk: &SdkConfig, bus: &str) -> Self {
        self.events = Arc::new(AllPublishers(vec![
            Arc::new(events::EventBridgePublisher::new(sdk, bus)),
            self.events,
        ]));
        self
    }

    pub fn ports(&self) -> Ports {
        Ports {
            resources: self.resources.clone(),
            jobs: self.jobs.clone(),
            artifacts: self.artifacts.clone(),
            queue: self.queue.clone(),
            clock: self.clock.clone(),
            clients: self.jobs.clone(),
            schedules: self.jobs.clone(),
            events: self.events.clone(),
        }
    }
}

/// Builds the service clients, each metered (and observed, in tests).
struct Clients<'a> {
    sdk: &'a SdkConfig,
    observer: Option<SharedInterceptor>,
}

/// The same builder calls for every service's config type.
macro_rules! client_config {
    ($clients:expr, $service:ident) => {{
        let mut config =
            $service::config::Builder::from($clients.sdk).interceptor(metering::Metering);
        if let Some(observer) = &$clients.observer {
            config = config.interceptor(observer.clone());
        }
        config
    }};
}

impl Clients<'_> {
    fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(client_config!(self, aws_sdk_dynamodb).build())
    }

    /// Path-style addressing when an endpoint is configured (emulators
    /// serve `host/bucket`, not `bucket.host`).
    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            client_config!(self, aws_sdk_s3)
                .force_path_style(self.sdk.endpoint_url().is_some())
                .build(),
        )
    }

    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(client_config!(self, aws_sdk_sqs).build())
    }
}

/// Reads an SSM SecureString parameter (the token signing key).
pub async fn read_secure_parameter(sdk: &SdkConfig, name: &str) -> PortResult<String> {
    let input = serde_json::json!({ "Name": name, "WithDecryption": true });
    let out = json_api::JsonClient::new(sdk, &json_api::SSM)
        .call("GetParameter", &input)
        .await?;
    out["Parameter"]["Value"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            PortError::permanent(
                "the service's configuration is incomplete",
                format!("parameter {name} has no value"),
            )
        })
}

/// The SDK configuration from the environment (credentials, region,
/// `AWS_ENDPOINT_URL`), on one rustls + ring HTTPS client.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(timeouts())
        .load()
        .await
}

/// The SDK sets no timeout on an attempt by default, so a call whose answer
/// never comes would hold its handling (and its message) forever. With
/// these, a stuck attempt fails and is retried by the SDK, then surfaces as
/// a transient error the engine retries later.
fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_attempt_timeout(std::time::Duration::from_secs(60))
        .build()
}

fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The SDK configuration for an emulator at `endpoint` (moto, LocalStack):
/// fixed test credentials and region, nothing read from the environment.
/// `test`/`test` are the keys LocalStack checks presigned URLs against
/// (moto takes any).
pub async fn emulator_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(timeouts())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "emulator",
        ))
        .load()
        .await
}

/// An S3 client; path-style addressing when an endpoint is configured
/// (emulators serve `host/bucket`, not `bucket.host`).
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An AWS error, classified by its kind (the SDK's error variant, the HTTP
/// status and the service's error code), never by its message text.
pub(crate) trait Classify: std::error::Error + Send + Sync + Sized + 'static {
    /// `Some(words for a client)` if retrying cannot help.
    fn permanent(&self) -> Option<&'static str>;
}

/// Error codes that mean "slow down" whatever the HTTP status.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
];

impl<E> Classify for SdkError<E, HttpResponse>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn permanent(&self) -> Option<&'static str> {
        let SdkError::ServiceError(s) = self else {
            // Timeouts, connection failures and unreadable answers pass;
            // a request the SDK could not build never will.
            return matches!(self, SdkError::ConstructionFailure(_))
                .then_some("the service built an invalid storage request");
        };
        refusal(
            s.raw().status().as_u16(),
            s.err().code().unwrap_or_default(),
        )
    }
}

/// `Some(words for a client)` if an AWS service's refusal, by its HTTP
/// status and error code, is one that retrying cannot help.
fn refusal(status: u16, code: &str) -> Option<&'static str> {
    if status >= 500 || status == 429 || THROTTLING.contains(&code) {
        return None;
    }
    Some(match code {
        c if c.starts_with("AccessDenied")
            || c.contains("UnrecognizedClient")
            || c.contains("InvalidClientTokenId")
            || c.contains("ExpiredToken")
            || c == "Forbidden" =>
        {
            "the service was denied access to its storage"
        }
        "ResourceNotFoundException"
        | "NoSuchBucket"
        | "QueueDoesNotExist"
        | "AWS.SimpleQueueService.NonExistentQueue"
        | "ParameterNotFound" => "the service's storage is missing a table, bucket or queue",
        _ => "the service's storage rejected a request",
    })
}

impl Classify for aws_sdk_dynamodb::error::BuildError {
    fn permanent(&self) -> Option<&'static str> {
        Some("the service built an invalid storage request")
    }
}

impl Classify for aws_sdk_s3::primitives::ByteStreamError {
    fn permanent(&self) -> Option<&'static str> {
        None
    }
}

impl Classify for aws_sdk_s3::presigning::PresigningConfigError {
    fn permanent(&self) -> Option<&'static str> {
        Some("the service could not sign a download link")
    }
}

/// A backend failure, classified, with the SDK's whole error chain as its
/// cause (the SDK's own `Display` says only "service error").
fn backend<E: Classify>(e: E) -> PortError {
    classified(e.permanent(), DisplayErrorContext(&e).to_string())
}

/// A failure that is permanent if `permanent` gives words for a client,
/// else one retrying may get past.
fn classified(permanent: Option<&'static str>, cause: String) -> PortError {
    match permanent {
        Some(what) => PortError::permanent(what, cause),
        None => unavailable(cause),
    }
}

fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PortError {
    PortError::transient("the service's storage is unavailable or busy", cause)
}
