//! The worker function: SQS work messages, handled concurrently within the
//! invocation's remaining time, with partial batch failures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bulk_export::aws::parse_work_message;
use bulk_export::engine::Engine;
use tokio::time::Instant;

/// Time kept back from the invocation's deadline: enough to save the
/// checkpoint and send the continuation before Lambda stops the process.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(20);

/// The deadline for work: the Lambda context's deadline (ms since the
/// epoch) less the safety margin (or a tenth of what is left, if smaller).
pub fn work_deadline(lambda_deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(lambda_deadline_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(SAFETY_MARGIN.min(left / 10 + Duration::from_secs(1)))
}

/// Handles every record; the ones that failed (and may succeed on
/// redelivery) are reported so that SQS redelivers only those.
pub async fn handle_batch(engine: &Engine, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
    // Records are few (the batch size) and mostly wait on I/O: run them
    // together.
    let handled = futures::future::join_all(event.records.into_iter().map(|record| async move {
        let done = handle_record(engine, &record, deadline).await;
        (record.message_id, done)
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (message_id, ok) in handled {
        if !ok {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = message_id.unwrap_or_default();
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// `true` if the message is done with (handled, or hopeless).
async fn handle_record(engine: &Engine, record: &SqsMessage, deadline: Instant) -> bool {
    let Some(message) = record.body.as_deref().and_then(parse_work_message) else {
        tracing::error!(body = ?record.body, "dropping a message that is not a work message");
        return true;
    };
    let receive_count: u32 = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    match engine.handle(&message, deadline).await {
        Ok(_) => true,
        // Only failures count: a duplicate delivery that succeeds (and loses
        // its checkpoint race harmlessly) never fails a job.
        Err(e) if receive_count >= engine.config.max_attempts => {
            let reason = format!("work failed {receive_count} times; last error: {e}");
            engine.fail_job(message.job_id(), &reason).await.is_ok()
        }
        Err(e) => {
            tracing::warn!(?message, error = %e, receive_count, "work failed; it will be retried");
            false
        }
    }
}
