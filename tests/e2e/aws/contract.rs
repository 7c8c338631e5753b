//! The port contract suites (`crate::contract`) on the AWS adapters, against
//! moto.

use std::sync::Arc;
use std::time::Duration;

use bulk_export::aws::AwsAdapters;
use bulk_export::clock::SystemClock;
use bulk_export::ports::{ArtifactStore, ResourceStore, WriteOp};

use super::moto::fresh_stack;
use crate::contract::{
    artifact_store_contract, cover, job_store_contract, resource_store_contract,
    work_queue_contract,
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

/// A bulk load writes without transactions behind a fence: what a snapshot
/// taken while it runs sees never changes afterwards (no part of the load
/// slips in under an earlier snapshot, where a later `_since` would miss it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_sees_part_of_a_bulk_load() {
    const N: usize = 600;
    let store: Arc<dyn ResourceStore> = adapters().await.resources;
    // Large bodies, so that writing the versions takes a while.
    let padding = "x".repeat(8_000);
    let ops: Vec<WriteOp> = (0..N)
        .map(|i| WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: format!("p{i:04}"),
            resource: serde_json::json!({
                "resourceType": "Patient",
                "id": format!("p{i:04}"),
                "text": {"status": "generated", "div": padding},
            }),
        })
        .collect();
    let loading = tokio::spawn({
        let store = store.clone();
        async move { store.load(ops).await.unwrap() }
    });
    let visible_at = |t: i64| {
        let store = store.clone();
        async move {
            let segments = store
                .segments("Patient", None, t, false, 10_000)
                .await
                .unwrap();
            cover(&*store, "Patient", &segments, t, false).await.len()
        }
    };
    let mut snapshots = Vec::new();
    while !loading.is_finished() {
        let t = store.snapshot().await.unwrap().timestamp_micros();
        snapshots.push((t, visible_at(t).await));
    }
    let results = loading.await.unwrap();
    assert_eq!(results.len(), N);
    assert!(results.iter().all(|r| r.created && r.version.version == 1));
    assert!(snapshots.len() > 1, "snapshots were taken during the load");
    for (t, seen) in snapshots {
        assert_eq!(visible_at(t).await, seen, "the snapshot at {t} changed");
    }
    let t = store.snapshot().await.unwrap().timestamp_micros();
    assert_eq!(visible_at(t).await, N);
    // Loading again updates (through transactions): version 2.
    let again = store
        .load(vec![WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: "p0000".into(),
            resource: serde_json::json!({"resourceType": "Patient", "id": "p0000", "active": true}),
        }])
        .await
        .unwrap();
    assert_eq!(again[0].version.version, 2);
    assert!(!again[0].created);
}
