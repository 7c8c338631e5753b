//! One CloudWatch Embedded Metric Format line per ended export, printed to
//! standard output, where Lambda's log capture hands it to CloudWatch,
//! which turns it into metrics with no API call of ours.
//!
//! Namespace [`NAMESPACE`], dimensions `Stack` (the CloudFormation stack)
//! and `Outcome` (`completed`, `failed`, `cancelled`); the metrics are
//! listed in [`metrics`]. `JobId` and `Kind`
//! ride along as properties (searchable in Logs Insights, not dimensions:
//! a dimension per job would be a metric per job).

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::domain::cost;
use crate::domain::usage::{self, Usage};
use crate::ports::{EventPublisher, JobEvent, PortResult};

pub const NAMESPACE: &str = "BulkExport";

pub struct EmfLog {
    /// The `Stack` dimension: stacks in one account keep apart.
    pub stack: String,
    pub worker_memory_mb: u32,
}

#[async_trait]
impl EventPublisher for EmfLog {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        println!("{}", self.line(event));
        Ok(())
    }
}

/// `(name, unit, value)` of each metric of an ended job.
pub fn metrics(event: &JobEvent, worker_memory_mb: u32) -> Vec<(&'static str, &'static str, f64)> {
    let u: &Usage = &event.usage;
    let seconds = match (event.job.started_at, event.job.completed_at) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(0) as f64 / 1000.0,
        _ => 0.0,
    };
    let resources = event.detail["count"].as_f64().unwrap_or(0.0);
    vec![
        ("Jobs", "Count", 1.0),
        ("Resources", "Count", resources),
        ("DurationSeconds", "Seconds", seconds),
        (
            "ResourcesPerSecond",
            "Count/Second",
            if seconds > 0.0 {
                resources / seconds
            } else {
                0.0
            },
        ),
        (
            "ReadCapacityUnits",
            "Count",
            u.get(usage::DYNAMODB_READ_UNITS),
        ),
        (
            "WriteCapacityUnits",
            "Count",
            u.get(usage::DYNAMODB_WRITE_UNITS),
        ),
        ("DynamoDBRequests", "Count", u.request_count("dynamodb")),
        ("S3Requests", "Count", u.request_count("s3")),
        ("S3BytesStored", "Bytes", u.get(usage::S3_BYTES_STORED)),
        ("SQSMessages", "Count", u.get(usage::SQS_MESSAGES)),
        ("WorkerHandlings", "Count", u.get(usage::WORKER_HANDLINGS)),
        (
            "WorkerMilliseconds",
            "Milliseconds",
            u.get(usage::WORKER_MS),
        ),
        (
            "EstimatedCostUSD",
            "None",
            cost::estimate(u, worker_memory_mb).total,
        ),
    ]
}

impl EmfLog {
    pub fn line(&self, event: &JobEvent) -> String {
        let metrics = metrics(event, self.worker_memory_mb);
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": event.job.completed_at.unwrap_or_else(chrono::Utc::now).timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Stack", "Outcome"]],
                    "Metrics": metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
                }],
            }),
        );
        root.insert("Stack".into(), json!(self.stack));
        root.insert("Outcome".into(), event.detail["outcome"].clone());
        root.insert("JobId".into(), json!(event.job.id));
        root.insert("Kind".into(), event.detail["kind"].clone());
        for (name, _, value) in metrics {
            root.insert(name.into(), json!(value));
        }
        Value::Object(root).to_string()
    }
}
