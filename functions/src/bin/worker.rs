//! The `worker` function: SQS work messages (plan a job, run a part).

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use bulk_export_functions::{worker, Container};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    bulk_export_functions::init_tracing();
    let container = Container::from_env().await?;
    let engine = Arc::new(container.background_services());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let engine = engine.clone();
        async move {
            let deadline = worker::work_deadline(event.context.deadline);
            tracing::info!(
                records = event.payload.records.len(),
                lambda_deadline_ms = event.context.deadline,
                work_ms = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64,
                "work batch"
            );
            Ok::<SqsBatchResponse, lambda_runtime::Error>(
                worker::handle_batch(&engine, event.payload, deadline).await,
            )
        }
    }))
    .await
}
