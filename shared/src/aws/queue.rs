//! Work messages on SQS. The worker Lambda receives them through its event
//! source; `receive` serves the local drivers and tests.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};

use super::backend;
use crate::domain::job::WorkMessage;
use crate::ports::{Delivery, PortError, PortResult, WorkQueue};

/// SQS takes at most this many messages per send or receive call.
const SQS_BATCH: usize = 10;

#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Messages waiting, in flight or delayed (SQS's approximate counts;
    /// exact on an emulator). For drivers that wait for a drained queue.
    pub async fn pending(&self) -> PortResult<u64> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0))
    }
}

/// Parses a message body; `None` for a body no version of this service
/// wrote (it can never succeed, so it must not be retried).
pub fn parse_work_message(body: &str) -> Option<WorkMessage> {
    serde_json::from_str(body).ok()
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, messages: &[WorkMessage]) -> PortResult<()> {
        self.send_delayed(messages, Duration::ZERO).await
    }

    async fn send_delayed(&self, messages: &[WorkMessage], delay: Duration) -> PortResult<()> {
        // SQS delays a message by at most 15 minutes.
        let delay_seconds = delay.as_secs().min(900) as i32;
        for batch in messages.chunks(SQS_BATCH) {
            let mut entries = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                let body = serde_json::to_string(m)
                    .map_err(|e| PortError::corrupt("a work message", e))?;
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .delay_seconds(delay_seconds)
                        .build()
                        .map_err(backend)?,
                );
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(backend)?;
            if let Some(f) = out.failed().first() {
                return Err(PortError::transient(
                    "the work queue refused a message",
                    format!(
                        "SQS refused a message: {} {}",
                        f.code(),
                        f.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration) -> PortResult<Vec<Delivery>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(visibility.as_secs().max(1) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(backend)?;
        let mut deliveries = Vec::new();
        for m in out.messages() {
            let receipt = m.receipt_handle().unwrap_or_default().to_string();
            let Some(message) = m.body().and_then(parse_work_message) else {
                tracing::error!(body = ?m.body(), "dropping a message that is not a work message");
                self.delete(&receipt).await?;
                continue;
            };
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            deliveries.push(Delivery {
                message,
                receipt,
                receive_count,
            });
        }
        Ok(deliveries)
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        match self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already deleted (a twin delivery's handler got there first).
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()> {
        // SQS caps a message's visibility at 12 hours.
        let seconds = delay.as_secs().clamp(0, 43_200) as i32;
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Deleted or received again meanwhile: it comes back anyway.
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }
}
