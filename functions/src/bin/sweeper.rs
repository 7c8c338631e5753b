//! The `sweeper` function: on its EventBridge schedule, removes expired jobs.

use std::sync::Arc;

use bulk_export_functions::{sweeper, Container};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bulk_export_functions::init_tracing();
    let container = Container::from_env().await?;
    let engine = Arc::new(container.background_services());
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| {
        let engine = engine.clone();
        async move {
            sweeper::sweep(&engine)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
