//! The HTTP functions: API Gateway (HTTP API, payload 2.0) requests into the
//! shared routing table and back.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use lambda_http::{service_fn, Body};

use crate::Container;

/// Serves HTTP API events until the runtime stops the container.
pub async fn run() -> Result<(), lambda_http::Error> {
    crate::init_tracing();
    let container = match Container::from_env().await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            // Fails the cold start: Lambda reports an init error and serves nothing.
            tracing::error!(error = %e, "bulk-export cannot start");
            return Err(e.into());
        }
    };
    lambda_http::run(service_fn(move |req: lambda_http::Request| {
        let container = container.clone();
        async move { Ok::<_, Infallible>(handle(&container, req).await) }
    }))
    .await
}

/// The origin absolute URLs are built on: the configured public URL, or
/// the host the request came to (API Gateway sets `x-forwarded-proto`).
fn origin(container: &Container, req: &lambda_http::Request) -> String {
    if let Some(url) = &container.settings.service.public_origin {
        return url.clone();
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let proto = header("x-forwarded-proto").unwrap_or_else(|| "https".into());
    let host = header("host").unwrap_or_else(|| "localhost".into());
    format!("{proto}://{host}")
}

pub async fn handle(container: &Container, req: lambda_http::Request) -> http::Response<Body> {
    let origin = origin(container, &req);
    let api = container.api(&origin);
    let (parts, body) = req.into_parts();
    let body = match body {
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    to_lambda(api.handle(http::Request::from_parts(parts, body)).await)
}

fn to_lambda(resp: http::Response<Bytes>) -> http::Response<Body> {
    let (parts, body) = resp.into_parts();
    let body = if body.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    http::Response::from_parts(parts, body)
}
