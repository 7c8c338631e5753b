//! The worker function: SQS work messages, handled concurrently within the
//! invocation's remaining time, with partial batch failures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bulk_export::aws::parse_work_message;
use bulk_export::engine::{Disposition, Services};
use tokio::time::Instant;

/// Time kept back from the invocation's deadline: enough to save the
/// checkpoint and send the continuation before Lambda stops the process.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(20);

/// Deadlines below this (September 2001, in ms since the epoch) are not
/// instants: `cargo lambda watch` sends the function's timeout in ms there.
const EARLIEST_DEADLINE_MS: u64 = 1_000_000_000_000;

/// The deadline for work: the Lambda context's deadline (ms since the
/// epoch) less the safety margin (or a tenth of what is left, if smaller).
pub fn work_deadline(lambda_deadline_ms: u64) -> Instant {
    Instant::now() + work_time(lambda_deadline_ms, SystemTime::now())
}

fn work_time(lambda_deadline_ms: u64, now: SystemTime) -> Duration {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = if lambda_deadline_ms < EARLIEST_DEADLINE_MS {
        Duration::from_millis(lambda_deadline_ms)
    } else {
        Duration::from_millis(lambda_deadline_ms.saturating_sub(now_ms))
    };
    left.saturating_sub(SAFETY_MARGIN.min(left / 10 + Duration::from_secs(1)))
}

/// Handles every record; the ones that failed (and may succeed on
/// redelivery) are reported so that SQS redelivers only those.
pub async fn handle_batch(
    engine: &Services,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
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

/// `true` if the message is done with (handled, or hopeless and its job
/// failed); otherwise its visibility is set to the retry delay.
async fn handle_record(engine: &Services, record: &SqsMessage, deadline: Instant) -> bool {
    let Some(message) = record.body.as_deref().and_then(parse_work_message) else {
        tracing::error!(body = ?record.body, "dropping a message that is not a work message");
        return true;
    };
    let receive_count: u32 = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    match engine
        .worker
        .process(&message, receive_count, deadline)
        .await
    {
        Disposition::Done => true,
        Disposition::RetryAfter(delay) => {
            if let Some(receipt) = &record.receipt_handle {
                if let Err(e) = engine.ports.queue.retry_later(receipt, delay).await {
                    tracing::warn!(error = %e, "could not delay the retry");
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_time_keeps_a_margin_before_the_deadline() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let in_ms = |secs: u64| 1_800_000_000_000 + secs * 1000;
        assert_eq!(work_time(in_ms(900), now), Duration::from_secs(880));
        // Short invocations keep a tenth (and a second) back.
        assert_eq!(work_time(in_ms(10), now), Duration::from_secs(8));
        assert_eq!(work_time(in_ms(0), now), Duration::ZERO);
        assert_eq!(work_time(1_700_000_000_000, now), Duration::ZERO, "past");
        // cargo lambda watch sends the timeout itself.
        assert_eq!(work_time(600_000, now), Duration::from_secs(580));
    }
}
