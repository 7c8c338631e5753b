//! The port contract suites (`crate::contract`) on the AWS adapters, against
//! moto.

use std::sync::Arc;
use std::time::Duration;

use bulk_export::aws::AwsAdapters;
use bulk_export::clock::SystemClock;
use bulk_export::ports::ArtifactStore;

use super::moto::fresh_stack;
use crate::contract::{
    artifact_store_contract, client_store_contract, job_store_contract, resource_store_contract,
    schedule_store_contract, work_queue_contract,
};

async fn adapters() -> AwsAdapters {
    let (sdk, names) = fresh_stack().await;
    AwsAdapters::new(&sdk, &names, 16, Arc::new(SystemClock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_store() {
    job_store_contract(adapters().await.jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_store() {
    resource_store_contract(adapters().await.resources).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_store() {
    artifact_store_contract(adapters().await.artifacts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue() {
    work_queue_contract(adapters().await.queue).await;
}

/// moto accepts any presigned URL, so the link's lifetime is checked in the
/// URL itself: SigV4 query parameters with the configured expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_links_expire_after_their_ttl() {
    let store = adapters().await.artifacts;
    store
        .put("jobs/x/Patient-1.ndjson", "{}\n".into())
        .await
        .unwrap();
    let url = store
        .presign_get("jobs/x/Patient-1.ndjson", Duration::from_secs(120))
        .await
        .unwrap();
    let parsed = reqwest::Url::parse(&url).unwrap();
    let query: std::collections::HashMap<String, String> =
        parsed.query_pairs().into_owned().collect();
    assert_eq!(query.get("X-Amz-Expires").map(String::as_str), Some("120"));
    assert_eq!(
        query.get("X-Amz-Algorithm").map(String::as_str),
        Some("AWS4-HMAC-SHA256")
    );
    assert!(query.get("X-Amz-Signature").is_some_and(|s| s.len() == 64));
    let signed_at = chrono::NaiveDateTime::parse_from_str(&query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc();
    assert!((chrono::Utc::now() - signed_at).num_seconds().abs() < 60);
    assert!(parsed.path().ends_with("/jobs/x/Patient-1.ndjson"), "{url}");
    // The link works (moto does not check signatures, but serves the object).
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(body, "{}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_store() {
    client_store_contract(adapters().await.jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_store() {
    schedule_store_contract(adapters().await.jobs).await;
}
