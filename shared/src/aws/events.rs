//! Completion events on EventBridge: one `PutEvents` entry per ended job,
//! `source` [`SOURCE`], `detail-type` [`DETAIL_TYPE`], `detail` the event
//! body documented in `engine::notify` (the README lists its fields).

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::backend;
use crate::ports::{EventPublisher, JobEvent, PortError, PortResult};

pub const SOURCE: &str = "bulk-export";
pub const DETAIL_TYPE: &str = "Bulk Export Job Finished";

pub struct EventBridgePublisher {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgePublisher {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        EventBridgePublisher {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(DETAIL_TYPE)
            .resources(format!("bulk-export:job/{}", event.job.id))
            .detail(event.detail.to_string())
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(backend)?;
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .filter_map(|e| e.error_message())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PortError::transient("the event bus refused the event", why));
        }
        Ok(())
    }
}
