//! One way to assemble the service, for the local process and every Lambda
//! function alike: from ports and settings to the engine, the token issuer
//! and the routing table.
//!
//! Defaults are stated once: the engine's in `EngineConfig::new`, the rest
//! in [`ServiceSettings::default`]. The signing key is checked when the
//! service is built (a Lambda's cold start, the local process's start), so
//! a bad key stops the service before it serves anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::{AuthServer, JwksCache, TokenIssuer, ACCESS_TOKEN_SECONDS};
use crate::engine::{EngineConfig, Ports, Services};
use crate::http::{Api, Authenticator, ExternalIssuer, OpenAccess, TokenAuthenticator, TOKEN_PATH};
use crate::ports::ClientStore;

/// How callers are authenticated.
#[derive(Clone, Debug)]
pub enum AuthSettings {
    /// No tokens: every caller is `anonymous`. Demos and trials only.
    Open,
    /// SMART Backend Services, with the built-in token endpoint.
    Smart {
        /// The access-token signing key: P-256, PKCS#8 PEM.
        signing_key_pem: String,
        /// An identity provider (`iss`, JWKS URL) whose tokens are accepted too.
        external_issuer: Option<(String, String)>,
    },
}

#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Path of the FHIR base, e.g. `/fhir`.
    pub base_path: String,
    /// The origin links are built on (`https://host`); without it, each
    /// request's own.
    pub public_origin: Option<String>,
    /// The engine's settings (`base_url` is set per origin).
    pub engine: EngineConfig,
    pub auth: AuthSettings,
    /// How long the built-in issuer's access tokens live (1 to 300 s).
    pub access_token_seconds: i64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            base_path: "/fhir".into(),
            public_origin: None,
            engine: EngineConfig::new(""),
            auth: AuthSettings::Open,
            access_token_seconds: ACCESS_TOKEN_SECONDS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("the token signing key is not a P-256 PKCS#8 PEM key ({0})")]
    SigningKey(String),
}

/// The assembled service: ports, settings and, per public origin, one
/// routing table (normally exactly one origin).
pub struct Service {
    pub settings: ServiceSettings,
    pub ports: Ports,
    pub clients: Arc<dyn ClientStore>,
    signer: Option<TokenIssuer>,
    authenticator: Option<Arc<dyn Authenticator>>,
    jwks: Arc<JwksCache>,
    apis: Mutex<HashMap<String, Api>>,
}

impl Service {
    pub fn new(
        settings: ServiceSettings,
        ports: Ports,
        clients: Arc<dyn ClientStore>,
    ) -> Result<Self, AssemblyError> {
        let signer = match &settings.auth {
            AuthSettings::Open => None,
            AuthSettings::Smart {
                signing_key_pem, ..
            } => Some(
                TokenIssuer::from_pem(signing_key_pem, "", "")
                    .map_err(|e| AssemblyError::SigningKey(e.to_string()))?
                    .lasting(settings.access_token_seconds),
            ),
        };
        Ok(Service {
            settings,
            ports,
            clients,
            signer,
            authenticator: None,
            jwks: Arc::new(JwksCache::default()),
            apis: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces how callers are identified (tests).
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The FHIR base URL under `origin`.
    pub fn base_url(&self, origin: &str) -> String {
        format!(
            "{}{}",
            origin.trim_end_matches('/'),
            self.settings.base_path.trim_end_matches('/')
        )
    }

    fn token_url(origin: &str) -> String {
        format!("{}{TOKEN_PATH}", origin.trim_end_matches('/'))
    }

    /// The engine, with absolute URLs under `origin`.
    pub fn services(&self, origin: &str) -> Services {
        let mut config = self.settings.engine.clone();
        config.base_url = self.base_url(origin);
        if self.signer.is_some() {
            config.requires_access_token = true;
            config.token_url = Some(Self::token_url(origin));
        }
        Services::new(self.ports.clone(), config)
    }

    /// The engine of work that answers no request (workers, sweeper): the
    /// public origin if there is one, else a placeholder.
    pub fn background_services(&self) -> Services {
        let origin = self.settings.public_origin.as_deref();
        self.services(origin.unwrap_or("https://localhost"))
    }

    /// The token issuer for requests that arrived at `origin`.
    pub fn issuer(&self, origin: &str) -> Option<Arc<TokenIssuer>> {
        self.signer
            .as_ref()
            .map(|s| Arc::new(s.at(&Self::token_url(origin), &self.base_url(origin))))
    }

    /// The routing table for requests that arrived at `origin`.
    pub fn api(&self, origin: &str) -> Api {
        let mut apis = self.apis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(api) = apis.get(origin) {
            return api.clone();
        }
        let engine = self.services(origin);
        let issuer = self.issuer(origin);
        let external = match &self.settings.auth {
            AuthSettings::Smart {
                external_issuer: Some((issuer, jwks_url)),
                ..
            } => Some(ExternalIssuer {
                issuer: issuer.clone(),
                jwks_url: jwks_url.clone(),
                jwks: self.jwks.clone(),
            }),
            _ => None,
        };
        let auth: Arc<dyn Authenticator> = match (&self.authenticator, &issuer) {
            (Some(a), _) => a.clone(),
            (None, Some(issuer)) => Arc::new(TokenAuthenticator {
                issuer: issuer.clone(),
                clock: self.ports.clock.clone(),
                external,
            }),
            (None, None) => Arc::new(OpenAccess),
        };
        let mut api = Api::new(engine, auth, &self.settings.base_path);
        api.auth_server = issuer.map(|issuer| {
            Arc::new(AuthServer {
                issuer,
                clients: self.clients.clone(),
                clock: self.ports.clock.clone(),
                token_url: Self::token_url(origin),
                jwks: self.jwks.clone(),
            })
        });
        apis.insert(origin.to_string(), api.clone());
        api
    }
}
