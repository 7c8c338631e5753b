//! What a job's [`Usage`] costs on AWS, at on-demand list prices.
//!
//! The prices are the published us-east-1 list prices on the date in
//! [`PRICES_AS_OF`]; other regions and later price changes differ, so the
//! estimate is a guide for comparing exports, not a bill.

use serde::Serialize;

use super::usage::{self, Usage};

/// When the prices below were read off the AWS pricing pages (us-east-1).
pub const PRICES_AS_OF: &str = "2025-01-15";
/// DynamoDB on-demand: per read and per write request unit.
pub const DYNAMODB_USD_PER_READ_UNIT: f64 = 0.125 / 1e6;
pub const DYNAMODB_USD_PER_WRITE_UNIT: f64 = 0.625 / 1e6;
/// S3 Standard: PUT, COPY, POST and LIST requests; GET and the others.
pub const S3_USD_PER_CLASS_A_REQUEST: f64 = 0.005 / 1e3;
pub const S3_USD_PER_CLASS_B_REQUEST: f64 = 0.0004 / 1e3;
/// S3 Standard storage, per GB-month (files live 7 days, then expire).
pub const S3_USD_PER_GB_MONTH: f64 = 0.023;
pub const FILE_RETENTION_DAYS: f64 = 7.0;
/// SQS standard queue, per request.
pub const SQS_USD_PER_REQUEST: f64 = 0.40 / 1e6;
/// Lambda on arm64 (the template's architecture): per GB-second, per request.
pub const LAMBDA_USD_PER_GB_SECOND: f64 = 0.000_013_333_4;
pub const LAMBDA_USD_PER_REQUEST: f64 = 0.20 / 1e6;
/// EventBridge custom events.
pub const EVENTBRIDGE_USD_PER_EVENT: f64 = 1.0 / 1e6;
/// Data transfer out to the internet, first 10 TB a month.
pub const EGRESS_USD_PER_GB: f64 = 0.09;
/// The worker function's memory in template.yaml.
pub const DEFAULT_WORKER_MEMORY_MB: u32 = 1024;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

/// S3 operations billed as class A (the rest of those counted are class B,
/// except deletes and aborts, which are free).
const S3_CLASS_A: &[&str] = &[
    "PutObject",
    "UploadPart",
    "UploadPartCopy",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "CopyObject",
    "ListObjectsV2",
    "ListMultipartUploads",
    "ListParts",
];
const S3_FREE: &[&str] = &["DeleteObject", "DeleteObjects", "AbortMultipartUpload"];

/// The estimate, by service, in US dollars.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub dynamodb: f64,
    pub s3_requests: f64,
    pub s3_storage: f64,
    pub sqs: f64,
    pub lambda: f64,
    pub eventbridge: f64,
    pub total: f64,
}

/// The cost of `usage`, with the worker's memory size (Lambda bills
/// GB-seconds). Egress is not in it: see [`egress_usd`].
pub fn estimate(usage: &Usage, worker_memory_mb: u32) -> Cost {
    // Each accounting write is a small UpdateItem: one write unit.
    let write_units = usage.get(usage::DYNAMODB_WRITE_UNITS) + usage.get(usage::ACCOUNTING_WRITES);
    let dynamodb = usage.get(usage::DYNAMODB_READ_UNITS) * DYNAMODB_USD_PER_READ_UNIT
        + write_units * DYNAMODB_USD_PER_WRITE_UNIT;
    let (mut class_a, mut class_b) = (0.0, 0.0);
    for (op, n) in usage.requests("s3") {
        if S3_CLASS_A.contains(&op) {
            class_a += n;
        } else if !S3_FREE.contains(&op) {
            class_b += n;
        }
    }
    let s3_requests = class_a * S3_USD_PER_CLASS_A_REQUEST + class_b * S3_USD_PER_CLASS_B_REQUEST;
    let s3_storage =
        usage.get(usage::S3_BYTES_STORED) / GB * S3_USD_PER_GB_MONTH * (FILE_RETENTION_DAYS / 30.0);
    // Every handled message was also received and deleted by the queue's
    // poller (Lambda's event source mapping): two more requests each.
    let handlings = usage.get(usage::WORKER_HANDLINGS);
    let sqs = (usage.request_count("sqs") + 2.0 * handlings) * SQS_USD_PER_REQUEST;
    let lambda = handlings * LAMBDA_USD_PER_REQUEST
        + usage.get(usage::WORKER_MS) / 1000.0
            * (f64::from(worker_memory_mb) / 1024.0)
            * LAMBDA_USD_PER_GB_SECOND;
    let eventbridge = usage.request_count("eventbridge") * EVENTBRIDGE_USD_PER_EVENT;
    Cost {
        dynamodb,
        s3_requests,
        s3_storage,
        sqs,
        lambda,
        eventbridge,
        total: dynamodb + s3_requests + s3_storage + sqs + lambda + eventbridge,
    }
}

/// The `job-cost` report: the counters, the estimate by service, per
/// million resources, and the egress if every stored byte is downloaded
/// once (egress is not in the total: it depends on who downloads what).
pub fn report(usage: &Usage, resources: u64, worker_memory_mb: u32) -> serde_json::Value {
    let cost = estimate(usage, worker_memory_mb);
    let per_million = (resources > 0).then(|| cost.total * 1e6 / resources as f64);
    let stored = usage.get(usage::S3_BYTES_STORED);
    serde_json::json!({
        "resources": resources,
        "usage": usage,
        "estimateUsd": cost,
        "estimateUsdPerMillionResources": per_million,
        "egressIfDownloadedOnce": {"bytes": stored, "usd": egress_usd(stored)},
        "pricesAsOf": PRICES_AS_OF,
        "region": "us-east-1",
        "workerMemoryMb": worker_memory_mb,
    })
}

/// What serving `bytes` to the internet costs.
pub fn egress_usd(bytes: f64) -> f64 {
    bytes / GB * EGRESS_USD_PER_GB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_priced_by_its_service() {
        let mut u = Usage::default();
        u.add(usage::DYNAMODB_READ_UNITS, 1e6);
        u.add(usage::DYNAMODB_WRITE_UNITS, 1e6);
        u.add(usage::ACCOUNTING_WRITES, 1e6);
        for _ in 0..1000 {
            u.add_request("s3", "UploadPart");
            u.add_request("s3", "GetObject");
            u.add_request("s3", "DeleteObject");
        }
        u.add(usage::S3_BYTES_STORED, 30.0 * GB);
        u.add(usage::WORKER_HANDLINGS, 1e6);
        u.add(usage::WORKER_MS, 1000.0);
        u.add_request("sqs", "SendMessageBatch");
        let c = estimate(&u, 2048);
        assert!((c.dynamodb - (0.125 + 2.0 * 0.625)).abs() < 1e-9);
        assert!((c.s3_requests - (0.005 + 0.0004)).abs() < 1e-9);
        assert!((c.s3_storage - 30.0 * 0.023 * 7.0 / 30.0).abs() < 1e-9);
        assert!((c.sqs - (1.0 + 2e6) * 0.4 / 1e6).abs() < 1e-9);
        assert!((c.lambda - (0.20 + 2.0 * LAMBDA_USD_PER_GB_SECOND)).abs() < 1e-9);
        let sum = c.dynamodb + c.s3_requests + c.s3_storage + c.sqs + c.lambda + c.eventbridge;
        assert!((c.total - sum).abs() < 1e-12);
        assert!((egress_usd(2.0 * GB) - 0.18).abs() < 1e-12);
    }
}
