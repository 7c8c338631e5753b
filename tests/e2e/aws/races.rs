//! The race scenarios (`crate::races`) on the DynamoDB adapters: on
//! Amazon's DynamoDB Local, whose conditional writes and transactions
//! behave as DynamoDB's, and on the AWS emulator the other tests use.
//! Each engine has adapters (and SDK clients) of its own, as separate
//! Lambda containers would.

use std::sync::Arc;

use bulk_export::aws::{AwsAdapters, AwsNames, SdkConfig};
use bulk_export::clock::OffsetClock;
use bulk_export::embedded::{FsArtifacts, SqliteJobs};
use bulk_export::engine::{EngineConfig, Services};
use bulk_export::ports::Clock;

use super::dynamodb_local::fresh_tables;
use super::moto::fresh_stack;
use crate::races::{
    checkpoint_race, completion_race, release_build_race, resource_write_race, schedule_claim_race,
    usage_race, within, WRITERS,
};

/// Engines on the same tables. DynamoDB Local has no S3 or SQS, so there
/// the runs' files and messages go to a folder and SQLite instead (these
/// races are about the tables).
fn engines(
    sdk: &SdkConfig,
    names: &AwsNames,
    clock: &Arc<OffsetClock>,
    local: Option<&std::path::Path>,
) -> Vec<Services> {
    let queue = local.map(|dir| Arc::new(SqliteJobs::open(&dir.join("q.db")).unwrap().queue()));
    (0..WRITERS)
        .map(|_| {
            let clock = clock.clone() as Arc<dyn Clock>;
            let mut ports = AwsAdapters::new(sdk, names, 4, clock.clone()).ports();
            if let (Some(dir), Some(queue)) = (local, &queue) {
                ports.queue = queue.clone();
                ports.artifacts =
                    Arc::new(FsArtifacts::open(dir, "http://127.0.0.1:9", clock).unwrap());
            }
            Services::new(ports, EngineConfig::new("http://127.0.0.1:9/fhir"))
        })
        .collect()
}

async fn every_race(sdk: SdkConfig, names: AwsNames, local: Option<&std::path::Path>) {
    let clock = Arc::new(OffsetClock::default());
    let adapters = AwsAdapters::new(&sdk, &names, 4, clock.clone() as Arc<dyn Clock>);
    within("checkpoint race", checkpoint_race(adapters.jobs.clone())).await;
    within("completion race", completion_race(adapters.jobs.clone())).await;
    within("usage race", usage_race(adapters.jobs.clone())).await;
    within(
        "resource race",
        resource_write_race(adapters.resources.clone()),
    )
    .await;
    let engines = engines(&sdk, &names, &clock, local);
    within("schedule race", schedule_claim_race(&engines, &clock)).await;
    within("release race", release_build_race(&engines)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_dynamodb_local() {
    let dir = tempfile::tempdir().unwrap();
    let (sdk, names) = fresh_tables().await;
    every_race(sdk, names, Some(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_emulator() {
    let (sdk, names) = fresh_stack().await;
    every_race(sdk, names, None).await;
}
