//! SSM and EventBridge through the signed JSON client (`aws::json_api`),
//! on moto. (The EventBridge publisher's events are read back in
//! `schedules::completion_events_reach_eventbridge_and_a_named_invocation_runs_once`.)

use bulk_export::aws::json_api::{JsonClient, SSM};
use bulk_export::aws::{emulator_config, read_secure_parameter};
use bulk_export::domain::usage::metered;
use bulk_export::ports::PortError;
use serde_json::json;

use super::moto::endpoint;

/// The token signing key, a SecureString parameter, read as a SMART
/// deployment's functions read it at cold start, and metered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_parameter_is_read_from_ssm() {
    let sdk = emulator_config(&endpoint()).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("/bulk-export-{id}/token-signing-key");
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{id}\n-----END PRIVATE KEY-----\n");
    let put = json!({ "Name": name, "Value": pem, "Type": "SecureString" });
    JsonClient::new(&sdk, &SSM)
        .call("PutParameter", &put)
        .await
        .unwrap();

    let (read, usage) = metered(read_secure_parameter(&sdk, &name)).await;
    assert_eq!(read.unwrap(), pem);
    assert_eq!(usage.request_count("ssm"), 1.0, "{usage:?}");

    // A missing parameter is a deployment error: permanent, so not retried.
    let (missing, usage) = metered(read_secure_parameter(&sdk, &format!("{name}-gone"))).await;
    let e = missing.unwrap_err();
    assert!(matches!(e, PortError::Permanent { .. }), "{e:?}");
    assert!(e.public_message().contains("missing"), "{e}");
    assert_eq!(usage.request_count("ssm"), 1.0, "{usage:?}");
}
