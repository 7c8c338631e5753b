//! The functions' configuration, from environment variables that
//! `template.yaml` sets (and `scripts/lambda-e2e.sh` sets locally).

use std::env;
use std::time::Duration;

use bulk_export::aws::AwsNames;

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

#[derive(Debug, Clone)]
pub struct Settings {
    pub names: AwsNames,
    /// The FHIR base path, e.g. `/fhir`.
    pub base_path: String,
    /// The public origin (`https://host`), if not the request's own host.
    pub public_url: Option<String>,
    pub retention: chrono::Duration,
    pub max_resources_per_file: u64,
    /// S3 multipart part size; S3 needs at least 5 MiB.
    pub part_size_bytes: usize,
    pub presign_ttl: Duration,
    /// First delay before a transiently failed work message comes back
    /// (doubled at each further attempt).
    pub retry_base: Duration,
    /// Shards of the resource table: part of its layout, the same everywhere.
    pub shards: u16,
    pub auth: AuthMode,
    pub signing_key: Option<SigningKey>,
    /// An external token issuer and its JWKS URL, accepted besides ours.
    pub external_issuer: Option<(String, String)>,
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
    match optional(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v} is not a valid number")),
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        let auth = match optional("BULK_EXPORT_AUTH").as_deref() {
            None | Some("smart") => AuthMode::Smart,
            Some("open") => AuthMode::Open,
            Some(other) => return Err(format!("BULK_EXPORT_AUTH={other}: use smart or open")),
        };
        let signing_key = match (
            optional("BULK_EXPORT_TOKEN_SIGNING_KEY"),
            optional("BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER"),
        ) {
            (Some(pem), _) => Some(SigningKey::Pem(pem)),
            (None, Some(name)) => Some(SigningKey::Parameter(name)),
            (None, None) => None,
        };
        if auth == AuthMode::Smart && signing_key.is_none() {
            return Err(
                "BULK_EXPORT_AUTH=smart needs BULK_EXPORT_TOKEN_SIGNING_KEY_PARAMETER \
                        (or BULK_EXPORT_TOKEN_SIGNING_KEY)"
                    .into(),
            );
        }
        let part_size_mib: usize = number("BULK_EXPORT_PART_SIZE_MIB", 8)?;
        if part_size_mib < 5 {
            return Err("BULK_EXPORT_PART_SIZE_MIB must be at least 5 (S3's minimum)".into());
        }
        let external_issuer = match (
            optional("BULK_EXPORT_EXTERNAL_ISSUER"),
            optional("BULK_EXPORT_EXTERNAL_JWKS_URL"),
        ) {
            (Some(iss), Some(jwks)) => Some((iss, jwks)),
            (None, None) => None,
            _ => {
                return Err(
                    "BULK_EXPORT_EXTERNAL_ISSUER and BULK_EXPORT_EXTERNAL_JWKS_URL \
                            go together"
                        .into(),
                )
            }
        };
        Ok(Settings {
            names: AwsNames {
                jobs_table: required("BULK_EXPORT_JOBS_TABLE")?,
                resources_table: required("BULK_EXPORT_RESOURCES_TABLE")?,
                bucket: required("BULK_EXPORT_BUCKET")?,
                queue_url: required("BULK_EXPORT_QUEUE_URL")?,
            },
            base_path: optional("BULK_EXPORT_BASE_PATH").unwrap_or_else(|| "/fhir".into()),
            public_url: optional("BULK_EXPORT_PUBLIC_URL")
                .map(|u| u.trim_end_matches('/').to_string()),
            retention: chrono::Duration::days(number("BULK_EXPORT_RETENTION_DAYS", 7)?),
            max_resources_per_file: number("BULK_EXPORT_MAX_RESOURCES_PER_FILE", 100_000)?,
            part_size_bytes: part_size_mib << 20,
            presign_ttl: Duration::from_secs(number("BULK_EXPORT_PRESIGN_SECONDS", 300)?),
            retry_base: Duration::from_secs(number("BULK_EXPORT_RETRY_BASE_SECONDS", 10)?),
            shards: number("BULK_EXPORT_SHARDS", 16)?,
            auth,
            signing_key,
            external_issuer,
        })
    }
}
