//! The `scheduler` function: every minute (EventBridge), starts the runs of
//! due export schedules; invoked with a schedule's id, runs that one.

use std::sync::Arc;

use bulk_export_functions::{scheduler, Container};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bulk_export_functions::init_tracing();
    let container = Arc::new(Container::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let container = container.clone();
        async move {
            scheduler::handle(&container, event.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}
