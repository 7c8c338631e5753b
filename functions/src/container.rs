//! What a Lambda container builds once, at cold start: the AWS clients, the
//! ports over them, the token signing key and the assembled service. A bad
//! key or setting fails here, before the first request.

use std::sync::Arc;

use bulk_export::aws::{read_secure_parameter, sdk_config, AwsAdapters};
use bulk_export::clock::SystemClock;
use bulk_export::engine::{Ports, Services};
use bulk_export::http::Api;
use bulk_export::ports::{ClientStore, Clock};
use bulk_export::service::Service;

use crate::settings::{AuthMode, Settings, SigningKey};

pub struct Container {
    pub settings: Settings,
    pub service: Service,
}

impl Container {
    /// Settings from the environment, the system clock.
    pub async fn from_env() -> Result<Self, String> {
        Self::new(Settings::from_env()?, Arc::new(SystemClock)).await
    }

    pub async fn new(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let sdk = sdk_config().await;
        let mut adapters = AwsAdapters::new(&sdk, &settings.names, settings.shards, clock);
        if let Some(stack) = std::env::var("BULK_EXPORT_METRICS_STACK")
            .ok()
            .filter(|s| !s.is_empty())
        {
            adapters = adapters.with_metrics(&stack, worker_memory_mb()?);
        }
        if let Some(bus) = &settings.event_bus {
            adapters = adapters.with_event_bus(&sdk, bus);
        }
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
        Self::from_parts(settings, ports, adapters.jobs, signing_key_pem)
    }

    /// A container over given ports (tests wrap adapters to inject faults).
    pub fn from_parts(
        settings: Settings,
        ports: Ports,
        clients: Arc<dyn ClientStore>,
        signing_key_pem: Option<String>,
    ) -> Result<Self, String> {
        let service = Service::new(settings.service_settings(signing_key_pem), ports, clients)
            .map_err(|e| e.to_string())?;
        if let Some(origin) = &settings.service.public_origin {
            // The routing table of the one public origin, built now.
            service.api(origin);
        }
        Ok(Container { settings, service })
    }

    pub fn ports(&self) -> &Ports {
        &self.service.ports
    }

    /// The engine, with absolute URLs under `origin`.
    pub fn services(&self, origin: &str) -> Services {
        self.service.services(origin)
    }

    /// The engine of the functions that serve no HTTP requests (worker,
    /// sweeper).
    pub fn background_services(&self) -> Services {
        self.service.background_services()
    }

    /// The routing table for requests that arrived at `origin`.
    pub fn api(&self, origin: &str) -> Api {
        self.service.api(origin)
    }
}

/// The worker function's memory, which prices its time in the EMF line
/// (the template sets it beside the worker's `MemorySize`).
fn worker_memory_mb() -> Result<u32, String> {
    match std::env::var("BULK_EXPORT_WORKER_MEMORY_MB") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("BULK_EXPORT_WORKER_MEMORY_MB={v} is not a number")),
        Err(_) => Ok(bulk_export::domain::cost::DEFAULT_WORKER_MEMORY_MB),
    }
}
