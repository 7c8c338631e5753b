//! Bulk loads on DynamoDB (plain puts behind a fence on the store's clock):
//! what snapshots see while a load runs, and what is left when its loader
//! dies mid-block.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use bulk_export::aws::{AwsAdapters, DynamoResources, SdkConfig, FENCE_LEASE};
use bulk_export::clock::{OffsetClock, SystemClock};
use bulk_export::domain::resource::shard_of;
use bulk_export::ports::{ResourceStore, ShardScan, WriteOp};
use serde_json::json;

use super::moto::fresh_stack;
use crate::contract::cover;

const SHARDS: u16 = 16;

fn patient(i: usize, padding: &str) -> WriteOp {
    let id = format!("p{i:04}");
    WriteOp::Upsert {
        resource_type: "Patient".into(),
        id: id.clone(),
        resource: json!({
            "resourceType": "Patient",
            "id": id,
            "text": {"status": "generated", "div": padding},
        })
        .into(),
    }
}

fn patients(range: std::ops::Range<usize>) -> Vec<WriteOp> {
    range.map(|i| patient(i, "")).collect()
}

fn ids(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("p{i:04}")).collect()
}

/// The Patient ids a system export at `t` reads (planned from the shard
/// counts, as the engine plans it), with repeats if any.
async fn exported_at(store: &dyn ResourceStore, t: i64) -> Vec<String> {
    let segments = store
        .segments("Patient", None, t, false, 10_000)
        .await
        .unwrap();
    cover(store, "Patient", &segments, t, false)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The patients of `range` that exist (have a head).
async fn with_head(store: &dyn ResourceStore, range: std::ops::Range<usize>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for id in ids(range) {
        if store.read_current("Patient", &id).await.unwrap().is_some() {
            found.insert(id);
        }
    }
    found
}

/// Every Patient version item that claims to be current, read straight
/// from every shard (no shard counts, no snapshot): debris shows here.
async fn unsuperseded_versions(store: &dyn ResourceStore) -> Vec<String> {
    let far_future = chrono::Utc::now().timestamp_micros() + 10 * 365 * 86_400_000_000;
    let mut ids = Vec::new();
    for shard in 0..SHARDS {
        let mut after = None;
        loop {
            let page = store
                .scan_shard(ShardScan {
                    resource_type: "Patient",
                    shard,
                    after,
                    until: None,
                    as_of: far_future,
                    include_deleted: true,
                    limit: 1000,
                })
                .await
                .unwrap();
            after = page.items.last().map(|v| v.last_updated);
            let more = page.more;
            ids.extend(page.ids().map(str::to_string));
            if !more {
                break;
            }
        }
    }
    ids.sort();
    ids
}

/// A bulk load writes without transactions behind a fence: what a snapshot
/// taken while it runs sees never changes afterwards (no part of the load
/// slips in under an earlier snapshot, where a later `_since` would miss it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_sees_part_of_a_bulk_load() {
    const N: usize = 600;
    let (sdk, names) = fresh_stack().await;
    let store: Arc<dyn ResourceStore> =
        AwsAdapters::new(&sdk, &names, SHARDS, Arc::new(SystemClock)).resources;
    // Large bodies, so that writing the versions takes a while.
    let padding = "x".repeat(8_000);
    let ops: Vec<WriteOp> = (0..N).map(|i| patient(i, &padding)).collect();
    let loading = tokio::spawn({
        let store = store.clone();
        async move { store.load(ops).await.unwrap() }
    });
    let mut snapshots = Vec::new();
    while !loading.is_finished() {
        let t = store.snapshot().await.unwrap().timestamp_micros();
        snapshots.push((t, exported_at(&*store, t).await.len()));
    }
    let results = loading.await.unwrap();
    assert_eq!(results.len(), N);
    assert!(results.iter().all(|r| r.created && r.version.version == 1));
    assert!(snapshots.len() > 1, "snapshots were taken during the load");
    for (t, seen) in snapshots {
        assert_eq!(
            exported_at(&*store, t).await.len(),
            seen,
            "the snapshot at {t} changed"
        );
    }
    let t = store.snapshot().await.unwrap().timestamp_micros();
    assert_eq!(exported_at(&*store, t).await.len(), N);
    // Loading again updates (through transactions): version 2.
    let again = store
        .load(vec![WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: "p0000".into(),
            resource: json!({"resourceType": "Patient", "id": "p0000", "active": true}).into(),
        }])
        .await
        .unwrap();
    assert_eq!(again[0].version.version, 2);
    assert!(!again[0].created);
}

/// Fresh tables on moto and a clock tests can move.
struct Tables {
    sdk: SdkConfig,
    table: String,
    clock: Arc<OffsetClock>,
}

impl Tables {
    async fn fresh() -> Tables {
        let (sdk, names) = fresh_stack().await;
        Tables {
            sdk,
            table: names.resources_table,
            clock: Arc::new(OffsetClock::default()),
        }
    }

    fn store(&self, client: aws_sdk_dynamodb::Client) -> DynamoResources {
        DynamoResources::new(client, &self.table, SHARDS, self.clock.clone())
    }

    fn healthy(&self) -> DynamoResources {
        self.store(aws_sdk_dynamodb::Client::new(&self.sdk))
    }
}

/// A DynamoDB client for a loader: `on_head_put` runs before each head put
/// it sends; once it answers `false`, the loader's process is gone and
/// every request fails (no cleanup, no lowering of its fence).
fn loader_client(
    sdk: &SdkConfig,
    on_head_put: impl Fn() -> bool + Send + Sync + 'static,
) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk)
            .interceptor(HeadPuts {
                hook: Box::new(on_head_put),
                dead: AtomicBool::new(false),
            })
            .build(),
    )
}

struct HeadPuts {
    hook: Box<dyn Fn() -> bool + Send + Sync>,
    dead: AtomicBool,
}

impl std::fmt::Debug for HeadPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadPuts")
    }
}

impl Intercept for HeadPuts {
    fn name(&self) -> &'static str {
        "HeadPuts"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let puts_a_head = context
            .input()
            .downcast_ref::<PutItemInput>()
            .and_then(|put| put.item()?.get("pk")?.as_s().ok())
            .is_some_and(|pk| pk.starts_with("H#"));
        if puts_a_head && !(self.hook)() {
            self.dead.store(true, Ordering::SeqCst);
        }
        if self.dead.load(Ordering::SeqCst) {
            return Err("the loader's process is gone".into());
        }
        Ok(())
    }
}

struct CrashedLoad {
    healthy: DynamoResources,
    clock: Arc<OffsetClock>,
    /// The resources of the dead load whose head was written.
    headed: BTreeSet<String>,
}

/// An initial load of p0000..p0019 whose loader dies after writing every
/// version and three heads (the store held nothing before it, so no other
/// write counted any shard).
async fn crashed_load() -> CrashedLoad {
    let tables = Tables::fresh().await;
    let (clock, healthy) = (tables.clock.clone(), tables.healthy());

    let heads_left = AtomicIsize::new(3);
    let dying = tables.store(loader_client(&tables.sdk, move || {
        heads_left.fetch_sub(1, Ordering::SeqCst) > 0
    }));
    assert!(dying.load(patients(0..20)).await.is_err());

    let headed = with_head(&healthy, 0..20).await;
    assert!(
        !headed.is_empty() && headed.len() < 20,
        "the load died between heads: {headed:?}"
    );
    // Every version of the block was written, headless or not.
    assert_eq!(unsuperseded_versions(&healthy).await.len(), 20);
    CrashedLoad {
        healthy,
        clock,
        headed,
    }
}

/// While the dead loader's lease holds, snapshots stop before its block;
/// once it lapsed, the next snapshot repairs the block first: versions no
/// head points at are deleted, history is kept, and every resource with a
/// head is exported (its shard was counted before its version was written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_that_dies_mid_block_leaves_nothing_an_export_reads() {
    let CrashedLoad {
        healthy,
        clock,
        headed,
    } = crashed_load().await;
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    assert!(exported_at(&healthy, t).await.is_empty(), "the fence holds");
    // Meanwhile one of the dead load's resources is updated: its loaded
    // version 1 is history now, not debris.
    let updated = headed.first().unwrap().clone();
    let v1 = healthy
        .read_current("Patient", &updated)
        .await
        .unwrap()
        .unwrap();
    let v2 = healthy
        .write(vec![WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: updated.clone(),
            resource: json!({"resourceType": "Patient", "id": updated, "active": true}).into(),
        }])
        .await
        .unwrap();
    assert_eq!(v2[0].version.version, 2);

    clock.advance(chrono::Duration::from_std(FENCE_LEASE).unwrap() + chrono::Duration::seconds(1));
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    let expected = Vec::from_iter(headed.iter().cloned());
    assert_eq!(exported_at(&healthy, t).await, expected);
    assert_eq!(unsuperseded_versions(&healthy).await, expected);
    let history = healthy
        .read_as_of("Patient", &updated, v1.last_updated)
        .await
        .unwrap()
        .expect("version 1 kept as history");
    assert_eq!(history.version, 1);

    // The load is retried: every resource once.
    let results = healthy.load(patients(0..20)).await.unwrap();
    assert_eq!(
        results.iter().filter(|r| r.created).count(),
        20 - headed.len()
    );
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    assert_eq!(exported_at(&healthy, t).await, Vec::from_iter(ids(0..20)));
}

/// The next load finds the lapsed fence and repairs the block before
/// raising its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_load_repairs_the_block_of_a_dead_loader() {
    let CrashedLoad { healthy, clock, .. } = crashed_load().await;
    clock.advance(chrono::Duration::from_std(FENCE_LEASE).unwrap() + chrono::Duration::seconds(1));
    healthy.load(patients(0..20)).await.unwrap();
    assert_eq!(
        unsuperseded_versions(&healthy).await,
        Vec::from_iter(ids(0..20))
    );
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    assert_eq!(exported_at(&healthy, t).await, Vec::from_iter(ids(0..20)));
}

/// A loader stops writing heads a minute before its lease lapses (so that
/// it never races a repair), and cleans up after itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_near_the_end_of_its_lease_stops_and_cleans_up() {
    let tables = Tables::fresh().await;
    let (clock, healthy) = (tables.clock.clone(), tables.healthy());
    // The first head put takes (as far as the clock can tell) all but 30 s
    // of the lease.
    let slow = AtomicBool::new(true);
    let loader = tables.store(loader_client(&tables.sdk, {
        let clock = clock.clone();
        move || {
            if slow.swap(false, Ordering::SeqCst) {
                clock.advance(
                    chrono::Duration::from_std(FENCE_LEASE).unwrap()
                        - chrono::Duration::seconds(30),
                );
            }
            true
        }
    }));
    let err = loader.load(patients(0..20)).await.unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");

    let headed = Vec::from_iter(with_head(&healthy, 0..20).await);
    assert!(!headed.is_empty() && headed.len() < 20, "{headed:?}");
    // Nothing without a head is left, and the fence is down: a snapshot
    // now covers exactly what was written.
    assert_eq!(unsuperseded_versions(&healthy).await, headed);
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    assert!(
        t >= chrono::Utc::now().timestamp_micros(),
        "not a fenced snapshot"
    );
    assert_eq!(exported_at(&healthy, t).await, headed);
}

/// The repair reads the dead loader's block page by page: a shard holding
/// more than DynamoDB's 1 MB page of its debris is cleaned whole, so the
/// retried load writes every resource once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_loaders_block_larger_than_a_page_is_repaired_whole() {
    let tables = Tables::fresh().await;
    let (clock, healthy) = (tables.clock.clone(), tables.healthy());
    // Eight resources of 300 KB in one shard: 2.4 MB, three pages at least.
    let in_shard_0: Vec<usize> = (0..)
        .filter(|i| shard_of(&format!("p{i:04}"), SHARDS) == 0)
        .take(8)
        .collect();
    let padding = "x".repeat(300_000);
    let ops = || -> Vec<WriteOp> { in_shard_0.iter().map(|&i| patient(i, &padding)).collect() };
    let all: Vec<String> = in_shard_0.iter().map(|i| format!("p{i:04}")).collect();

    let heads_left = AtomicIsize::new(2);
    let dying = tables.store(loader_client(&tables.sdk, move || {
        heads_left.fetch_sub(1, Ordering::SeqCst) > 0
    }));
    assert!(dying.load(ops()).await.is_err());
    assert_eq!(
        unsuperseded_versions(&healthy).await,
        all,
        "every version written"
    );

    clock.advance(chrono::Duration::from_std(FENCE_LEASE).unwrap() + chrono::Duration::seconds(1));
    healthy.load(ops()).await.unwrap();
    // Debris past the first page would be here twice: once left over, once
    // written again by the retried load.
    assert_eq!(unsuperseded_versions(&healthy).await, all);
    let t = healthy.snapshot().await.unwrap().timestamp_micros();
    let mut exported = exported_at(&healthy, t).await;
    exported.sort();
    assert_eq!(exported, all);
}
