//! The audit trail scenario (`crate::revisions`) through the Lambda
//! functions on moto: the HTTP handler every HTTP function runs, with the
//! worker function pumped from the real SQS queue while a request is open
//! (as the worker Lambda would run beside a waiting kick-off).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::auth::TokenIssuer;
use bulk_export::aws::{AwsAdapters, SqsQueue};
use bulk_export::clock::OffsetClock;
use bulk_export::engine::Services;
use bulk_export::ports::{ClientStore, Clock};
use bulk_export::service::ServiceSettings;
use bulk_export_functions::settings::{AuthMode, Settings, SigningKey};
use bulk_export_functions::{http as lambda, Container};

use super::functions::invoke_worker;
use super::moto::fresh_stack;
use crate::revisions::{audit_trail_scenario, Backend, Reply};

pub(super) const ORIGIN: &str = "https://api.example.test";

struct OnMoto {
    container: Container,
    engine: Services,
    queue: Arc<SqsQueue>,
    adapters: AwsAdapters,
}

/// A request as API Gateway hands it to an HTTP function: `path` under the
/// FHIR base at `ORIGIN`, a bearer token, extra headers, a JSON body.
pub(super) fn lambda_request(
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> http::Request<lambda_http::Body> {
    let uri = match path {
        "" => format!("{ORIGIN}/fhir"),
        p => format!("{ORIGIN}/fhir/{p}"),
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.test")
        .header("x-forwarded-proto", "https")
        .header("accept", "application/fhir+json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => lambda_http::Body::Text(b),
        None => lambda_http::Body::Empty,
    };
    req.body(body).unwrap()
}

/// A function's answer as the scenarios read it.
pub(super) fn reply_of(resp: http::Response<lambda_http::Body>) -> Reply {
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: bytes::Bytes::copy_from_slice(&body),
    }
}

#[async_trait]
impl Backend for OnMoto {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let req = lambda_request(method, path, token, headers, body);
        // The worker runs while the request is open, until it is answered.
        let answered = AtomicBool::new(false);
        let request = async {
            let r = lambda::handle(&self.container, req).await;
            answered.store(true, Ordering::SeqCst);
            r
        };
        let pump = async {
            while !answered.load(Ordering::SeqCst) {
                if invoke_worker(&self.engine, &self.queue, Duration::from_secs(20), false).await
                    == 0
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (resp, ()) = tokio::join!(request, pump);
        reply_of(resp)
    }

    fn base(&self) -> String {
        format!("{ORIGIN}/fhir")
    }

    fn issuer(&self) -> Arc<TokenIssuer> {
        self.container.service.issuer(ORIGIN).unwrap()
    }

    fn clients(&self) -> Arc<dyn ClientStore> {
        self.adapters.jobs.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_of_three_clients_with_every_filter_on_moto() {
    let (sdk, names) = fresh_stack().await;
    let clock = Arc::new(OffsetClock::default());
    let adapters = AwsAdapters::new(&sdk, &names, 4, clock.clone() as Arc<dyn Clock>);
    let pem = TokenIssuer::generate_pem();
    let mut service = ServiceSettings::default();
    service.engine.retry_base = Duration::ZERO;
    service.engine.status_wait = Duration::ZERO;
    // Generous: the worker is pumped only while a request is open.
    service.engine.revisions_wait = Duration::from_secs(120);
    let settings = Settings {
        names: names.clone(),
        shards: 4,
        auth: AuthMode::Smart,
        signing_key: Some(SigningKey::Pem(pem.clone())),
        external_issuer: None,
        event_bus: None,
        service,
    };
    let container =
        Container::from_parts(settings, adapters.ports(), adapters.jobs.clone(), Some(pem))
            .unwrap();
    let engine = container.services(ORIGIN);
    let queue = adapters.queue.clone();
    audit_trail_scenario(&OnMoto {
        container,
        engine,
        queue,
        adapters,
    })
    .await;
}
