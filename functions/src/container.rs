//! What a Lambda container builds once, at cold start: the AWS clients, the
//! ports over them, and the token signing key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bulk_export::auth::{AuthServer, JwksCache, TokenIssuer};
use bulk_export::aws::{read_secure_parameter, sdk_config, AwsAdapters};
use bulk_export::clock::SystemClock;
use bulk_export::engine::{Engine, EngineConfig, Ports};
use bulk_export::http::{
    Api, Authenticator, ExternalIssuer, OpenAccess, TokenAuthenticator, TOKEN_PATH,
};
use bulk_export::ports::{ClientStore, Clock};

use crate::settings::{AuthMode, Settings, SigningKey};

pub struct Container {
    pub settings: Settings,
    pub ports: Ports,
    pub clients: Arc<dyn ClientStore>,
    signing_key_pem: Option<String>,
    jwks: Arc<JwksCache>,
    /// One routing table per public origin (normally exactly one).
    apis: Mutex<HashMap<String, Api>>,
}

impl Container {
    /// Settings from the environment, the system clock.
    pub async fn from_env() -> Result<Self, String> {
        Self::new(Settings::from_env()?, Arc::new(SystemClock)).await
    }

    pub async fn new(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let sdk = sdk_config().await;
        let adapters = AwsAdapters::new(&sdk, &settings.names, settings.shards, clock);
        let ports = adapters.ports();
        let signing_key_pem = match (&settings.auth, &settings.signing_key) {
            (AuthMode::Open, _) | (_, None) => None,
            (AuthMode::Smart, Some(SigningKey::Pem(pem))) => Some(pem.clone()),
            (AuthMode::Smart, Some(SigningKey::Parameter(name))) => Some(
                read_secure_parameter(&sdk, name)
                    .await
                    .map_err(|e| format!("reading the signing key parameter {name}: {e}"))?,
            ),
        };
        Ok(Self::from_parts(
            settings,
            ports,
            adapters.jobs,
            signing_key_pem,
        ))
    }

    /// A container over given ports (tests wrap adapters to inject faults).
    pub fn from_parts(
        settings: Settings,
        ports: Ports,
        clients: Arc<dyn ClientStore>,
        signing_key_pem: Option<String>,
    ) -> Self {
        Container {
            settings,
            ports,
            clients,
            signing_key_pem,
            jwks: Arc::new(JwksCache::default()),
            apis: Mutex::new(HashMap::new()),
        }
    }

    /// The engine, with absolute URLs under `origin`.
    pub fn engine(&self, origin: &str) -> Engine {
        let s = &self.settings;
        let mut config = EngineConfig::new(format!("{origin}{}", s.base_path));
        config.retention = s.retention;
        config.max_resources_per_file = s.max_resources_per_file;
        config.min_chunk_bytes = s.part_size_bytes;
        config.presign_ttl = s.presign_ttl;
        config.retry_base = s.retry_base;
        if self.signing_key_pem.is_some() {
            config.requires_access_token = true;
            config.token_url = Some(format!("{origin}{TOKEN_PATH}"));
        }
        Engine::new(self.ports.clone(), config)
    }

    /// The engine of the functions that serve no HTTP requests (worker,
    /// sweeper): they build no URLs, so the origin only fills the config.
    pub fn background_engine(&self) -> Engine {
        self.engine(
            self.settings
                .public_url
                .as_deref()
                .unwrap_or("https://localhost"),
        )
    }

    /// The routing table for requests that arrived at `origin`.
    pub fn api(&self, origin: &str) -> Result<Api, String> {
        let mut apis = self.apis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(api) = apis.get(origin) {
            return Ok(api.clone());
        }
        let engine = self.engine(origin);
        let base_url = engine.config.base_url.clone();
        let (auth, auth_server): (Arc<dyn Authenticator>, _) = match &self.signing_key_pem {
            None => (Arc::new(OpenAccess), None),
            Some(pem) => {
                let token_url = format!("{origin}{TOKEN_PATH}");
                let issuer = Arc::new(
                    TokenIssuer::from_pem(pem, &token_url, &base_url)
                        .map_err(|e| format!("the token signing key: {e}"))?,
                );
                let authenticator =
                    TokenAuthenticator {
                        issuer: issuer.clone(),
                        clock: self.ports.clock.clone(),
                        external: self.settings.external_issuer.clone().map(
                            |(issuer, jwks_url)| ExternalIssuer {
                                issuer,
                                jwks_url,
                                jwks: self.jwks.clone(),
                            },
                        ),
                    };
                let server = AuthServer {
                    issuer,
                    clients: self.clients.clone(),
                    clock: self.ports.clock.clone(),
                    token_url,
                    jwks: self.jwks.clone(),
                };
                (Arc::new(authenticator), Some(Arc::new(server)))
            }
        };
        let mut api = Api::new(engine, auth, &self.settings.base_path);
        api.auth_server = auth_server;
        apis.insert(origin.to_string(), api.clone());
        Ok(api)
    }
}
