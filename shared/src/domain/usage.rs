//! What an export consumed: AWS requests by service and operation, DynamoDB
//! capacity units, S3 bytes, SQS messages and worker time, as named counters.
//!
//! Counting is ambient: a handling runs inside [`metered`], and the storage
//! adapters add what each request consumed with [`record`], so no port
//! signature carries a meter. Outside a metered scope `record` does nothing.
//! The counters are a flat name→number map so that stores can add them
//! atomically, counter by counter (DynamoDB `ADD`, SQLite upserts).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// DynamoDB read and write capacity units, as DynamoDB reported them
/// (`ReturnConsumedCapacity = TOTAL`).
pub const DYNAMODB_READ_UNITS: &str = "dynamodb.readUnits";
pub const DYNAMODB_WRITE_UNITS: &str = "dynamodb.writeUnits";
/// Bytes sent to S3 in `PutObject` and `UploadPart` bodies.
pub const S3_BYTES_STORED: &str = "s3.bytesStored";
/// Bytes read back from S3 by the service (`GetObject` bodies).
pub const S3_BYTES_READ: &str = "s3.bytesRead";
/// Download links handed to clients: S3 serves the bytes itself, so their
/// number is what the service can count.
pub const FILE_LINKS: &str = "files.links";
/// Work messages sent to the queue (each is also received and deleted).
pub const SQS_MESSAGES: &str = "sqs.messagesSent";
/// Work messages handled, and the wall time spent handling them.
pub const WORKER_HANDLINGS: &str = "worker.handlings";
pub const WORKER_MS: &str = "worker.ms";
/// Writes that stored these counters (one per handling, kick-off and
/// download link): they cannot count themselves, so they are counted here
/// and left out of the request counts.
pub const ACCOUNTING_WRITES: &str = "accounting.writes";
/// Request counters are `requests.<service>.<Operation>`.
pub const REQUESTS_PREFIX: &str = "requests.";

/// Named counters; absent means zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Usage(BTreeMap<String, f64>);

impl Usage {
    pub fn add(&mut self, counter: &str, value: f64) {
        if value != 0.0 {
            *self.0.entry(counter.to_string()).or_default() += value;
        }
    }

    /// Counts one request to `service` (lowercase: `dynamodb`, `s3`, ...).
    pub fn add_request(&mut self, service: &str, operation: &str) {
        self.add(
            &format!(
                "{REQUESTS_PREFIX}{}.{operation}",
                service.to_ascii_lowercase()
            ),
            1.0,
        );
    }

    pub fn get(&self, counter: &str) -> f64 {
        self.0.get(counter).copied().unwrap_or(0.0)
    }

    /// Requests to one service, by operation.
    pub fn requests(&self, service: &str) -> impl Iterator<Item = (&str, f64)> {
        let prefix = format!("{REQUESTS_PREFIX}{service}.");
        self.0
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix.as_str())?, *v)))
    }

    pub fn request_count(&self, service: &str) -> f64 {
        // (An empty float `sum` is -0.0.)
        self.requests(service).fold(0.0, |total, (_, n)| total + n)
    }

    pub fn merge(&mut self, other: &Usage) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    pub fn counters(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, f64)> for Usage {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        let mut usage = Usage::default();
        for (k, v) in iter {
            usage.add(&k, v);
        }
        usage
    }
}

tokio::task_local! {
    static METER: Arc<Mutex<Usage>>;
}

/// Runs `work`, counting what it consumed (including retries the AWS SDK
/// made inside it). Nested scopes count into the innermost only.
pub async fn metered<F: Future>(work: F) -> (F::Output, Usage) {
    let meter = Arc::new(Mutex::new(Usage::default()));
    let out = METER.scope(meter.clone(), work).await;
    let usage = std::mem::take(&mut *meter.lock().unwrap_or_else(|e| e.into_inner()));
    (out, usage)
}

/// Adds to the current scope's counters, if any.
pub fn record(update: impl FnOnce(&mut Usage)) {
    let _ = METER.try_with(|meter| update(&mut meter.lock().unwrap_or_else(|e| e.into_inner())));
}

/// What the current scope has counted so far (`None` outside a scope).
pub fn so_far() -> Option<Usage> {
    METER
        .try_with(|meter| meter.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_counts_what_runs_inside_it_and_nothing_outside() {
        record(|u| u.add_request("s3", "PutObject"));
        let ((), usage) = metered(async {
            record(|u| u.add_request("DynamoDB", "Query"));
            record(|u| u.add(DYNAMODB_READ_UNITS, 0.5));
            tokio::task::yield_now().await;
            record(|u| u.add_request("dynamodb", "Query"));
            assert_eq!(so_far().unwrap().get("requests.dynamodb.Query"), 2.0);
        })
        .await;
        assert_eq!(usage.get("requests.dynamodb.Query"), 2.0);
        assert_eq!(usage.get(DYNAMODB_READ_UNITS), 0.5);
        assert_eq!(usage.request_count("s3"), 0.0);
        assert!(so_far().is_none());
    }

    #[tokio::test]
    async fn concurrent_scopes_in_one_task_keep_their_own_counts() {
        let one = metered(async {
            for _ in 0..3 {
                record(|u| u.add(SQS_MESSAGES, 1.0));
                tokio::task::yield_now().await;
            }
        });
        let two = metered(async {
            record(|u| u.add(SQS_MESSAGES, 10.0));
            tokio::task::yield_now().await;
        });
        let (((), a), ((), b)) = tokio::join!(one, two);
        assert_eq!(a.get(SQS_MESSAGES), 3.0);
        assert_eq!(b.get(SQS_MESSAGES), 10.0);
    }
}
