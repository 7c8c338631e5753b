//! The functions' configuration, from environment variables that
//! `template.yaml` sets (and `scripts/lambda-e2e.sh` sets locally).

use std::env;
use std::time::Duration;

use bulk_export::aws::AwsNames;
use bulk_export::engine::EngineConfig;
use bulk_export::service::{AuthSettings, ServiceSettings};

/// How callers are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// SMART Backend Services: a bearer token from the built-in token
    /// endpoint (or the configured external issuer) on every request.
    Smart,
    /// No tokens: every caller is the same anonymous owner. Demos only.
    Open,
}

/// Where the token signing key (PKCS#8 PEM, P-256) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// An SSM SecureString parameter, read at cold start.
    Parameter(String),
    /// The PEM itself (local runs against an emulator).
    Pem(String),
}

/// S3 multipart part size when `BULK_EXPORT_PART_SIZE_MIB` is unset (the
/// template's default too); S3 needs at least 5 MiB.
pub const DEFAULT_PART_SIZE_MIB: usize = 8;

#[derive(Debug, Clone)]
pub struct Settings {
    pub names: AwsNames,
    /// Shards of the resource table: part of its layout, the same everywhere.
    pub shards: u16,
    pub auth: AuthMode,
    /// Where the signing key comes from (read at cold start).
    pub signing_key: Option<SigningKey>,
    /// An external token issuer and its JWKS URL, accepted besides ours.
    pub external_issuer: Option<(String, String)>,
    /// The EventBridge bus completion events go to (`None`: none are sent).
    pub event_bus: Option<String>,
    /// Base path, public origin and the engine's settings; what the
    /// environment does not set keeps the library's defaults.
    pub service: ServiceSettings,
}

fn required(name: &str) -> Result<String, String> {
    match env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!("{name} is not set")),
    }
}

fn optional(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    Ok(optional_number(name)?.unwrap_or(default))
}

fn optional_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    optional(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{name}={v} is not a valid value"))
        })
        .transpose()
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        // Read in a fixed order: with several mistakes, the same one is
        // reported first.
        let auth = auth_mode()?;
        let signing_key = signing_key(&auth)?;
        let part_size_mib = part_size_mib()?;
        let external_issuer = external_issuer()?;
        let service = service_settings(part_size_mib)?;
        Ok(Settings {
            names: AwsNames {
                jobs_table: required("BULK_EXPORT_JOBS_TABLE")?,
                resources_table: required("BULK_EXPORT_RESOURCES_TABLE")?,
                bucket: required("BULK_EXPORT_BUCKET")?,
                queue_url: required("BULK_EXPORT_QUEUE_URL")?,
            },
            shards: number("BULK_EXPORT_SHARDS", 16)?,
            auth,
            signing_key,
            external_issuer,
            event_bus: optional("BULK_EXPORT_EVENT_BUS"),
            service,
        })
    }
}

fn auth_mode() -> Result<AuthMode, String> {
    match optional("BULK_EXPORT_AUTH").as_deref() {
        None | Some("smart") => Ok(AuthMode::Smart),
        Some("open") => Ok(AuthMode::Open),
        Some(other) => Err(format!("BULK_EXPORT_AUTH={other}: use smart or open")),
    }
}

/// The PEM itself wins over an SSM parameter; SMART needs one of them.
fn signing_key(auth: &AuthMode) -> Result<Option<SigningKey>, String> {
    let signing_key = match (
        optional("BULK_EXPORT_TOKEN_SIGNING_KEY"),
        optional("BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER"),
    ) {
        (Some(pem), _) => Some(SigningKey::Pem(pem)),
        (None, Some(name)) => Some(SigningKey::Parameter(name)),
        (None, None) => None,
    };
    if *auth == AuthMode::Smart && signing_key.is_none() {
        return Err(
            "BULK_EXPORT_AUTH=smart needs BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER \
                    (or BULK_EXPORT_TOKEN_SIGNING_KEY)"
                .into(),
        );
    }
    Ok(signing_key)
}

fn part_size_mib() -> Result<usize, String> {
    let part_size_mib: usize = number("BULK_EXPORT_PART_SIZE_MIB", DEFAULT_PART_SIZE_MIB)?;
    if part_size_mib < 5 {
        return Err("BULK_EXPORT_PART_SIZE_MIB must be at least 5 (S3's minimum)".into());
    }
    Ok(part_size_mib)
}

/// An external issuer needs both its name and where its keys are.
fn external_issuer() -> Result<Option<(String, String)>, String> {
    match (
        optional("BULK_EXPORT_EXTERNAL_ISSUER"),
        optional("BULK_EXPORT_EXTERNAL_JWKS_URL"),
    ) {
        (Some(iss), Some(jwks)) => Ok(Some((iss, jwks))),
        (None, None) => Ok(None),
        _ => Err(
            "BULK_EXPORT_EXTERNAL_ISSUER and BULK_EXPORT_EXTERNAL_JWKS_URL \
                        go together"
                .into(),
        ),
    }
}

/// The library's defaults, with what the environment sets.
fn service_settings(part_size_mib: usize) -> Result<ServiceSettings, String> {
    let mut service = ServiceSettings::default();
    if let Some(path) = optional("BULK_EXPORT_BASE_PATH") {
        service.base_path = path;
    }
    service.public_origin =
        optional("BULK_EXPORT_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_string());
    let engine = &mut service.engine;
    engine.min_chunk_bytes = part_size_mib << 20;
    set_engine(engine)?;
    Ok(service)
}

/// The engine's settings the environment sets (in a fixed order, as above).
fn set_engine(engine: &mut EngineConfig) -> Result<(), String> {
    if let Some(days) = optional_number::<i64>("BULK_EXPORT_RETENTION_DAYS")? {
        engine.retention = chrono::Duration::days(days);
    }
    if let Some(n) = optional_number("BULK_EXPORT_MAX_RESOURCES_PER_FILE")? {
        engine.max_resources_per_file = n;
    }
    if let Some(secs) = optional_number("BULK_EXPORT_PRESIGN_SECONDS")? {
        engine.presign_ttl = Duration::from_secs(secs);
    }
    if let Some(n) = optional_number("BULK_EXPORT_MAX_ACTIVE_EXPORTS_PER_CLIENT")? {
        engine.max_active_exports_per_client = n;
    }
    if let Some(secs) = optional_number("BULK_EXPORT_JOB_REUSE_SECONDS")? {
        engine.reuse_window = Duration::from_secs(secs);
    }
    if let Some(ms) = optional_number("BULK_EXPORT_STATUS_WAIT_MS")? {
        engine.status_wait = Duration::from_millis(ms);
    }
    if let Some(gzip) = optional_number::<bool>("BULK_EXPORT_GZIP_FILES")? {
        engine.gzip_files = gzip;
    }
    if let Some(secs) = optional_number("BULK_EXPORT_REVISIONS_WAIT_SECONDS")? {
        engine.revisions_wait = Duration::from_secs(secs);
    }
    // DynamoDB reads of a held status request: ten a second.
    engine.status_wait_poll = Duration::from_millis(100);
    if let Some(secs) = optional_number("BULK_EXPORT_LINK_MAX_SECONDS")? {
        engine.max_link_ttl = Duration::from_secs(secs);
    }
    if let Some(secs) = optional_number("BULK_EXPORT_RETRY_BASE_SECONDS")? {
        engine.retry_base = Duration::from_secs(secs);
    }
    Ok(())
}

impl Settings {
    /// The service's settings, with the signing key once it is read.
    pub fn service_settings(&self, signing_key_pem: Option<String>) -> ServiceSettings {
        let mut service = self.service.clone();
        service.auth = match (&self.auth, signing_key_pem) {
            (AuthMode::Smart, Some(signing_key_pem)) => AuthSettings::Smart {
                signing_key_pem,
                external_issuer: self.external_issuer.clone(),
            },
            _ => AuthSettings::Open,
        };
        service
    }
}
