//! Completion events on EventBridge: one `PutEvents` entry per ended job,
//! `source` [`SOURCE`], `detail-type` [`DETAIL_TYPE`], `detail` the event
//! body documented in `engine::notify` (docs/src/user/completion-events.md lists its fields).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::json_api::{JsonClient, EVENTBRIDGE};
use super::SdkConfig;
use crate::ports::{EventPublisher, JobEvent, PortError, PortResult};

pub const SOURCE: &str = "bulk-export";
pub const DETAIL_TYPE: &str = "Bulk Export Job Finished";

pub struct EventBridgePublisher {
    client: JsonClient,
    bus: String,
}

impl EventBridgePublisher {
    pub fn new(sdk: &SdkConfig, bus: impl Into<String>) -> Self {
        EventBridgePublisher {
            client: JsonClient::new(sdk, &EVENTBRIDGE),
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        let entry = json!({
            "EventBusName": self.bus,
            "Source": SOURCE,
            "DetailType": DETAIL_TYPE,
            "Resources": [format!("bulk-export:job/{}", event.job.id)],
            "Detail": event.detail.to_string(),
        });
        let out = self
            .client
            .call("PutEvents", &json!({ "Entries": [entry] }))
            .await?;
        // A refused entry comes back in a 200 answer.
        if out["FailedEntryCount"].as_u64().unwrap_or(0) > 0 {
            let why = out["Entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("ErrorMessage").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PortError::transient("the event bus refused the event", why));
        }
        Ok(())
    }
}
