//! The exact-numbers scenario (`crate::exact_numbers`) through the Lambda
//! functions on the AWS emulator: DynamoDB keeps the client's text, and
//! files come from S3 through presigned URLs.

use super::schedules::on_moto;
use crate::exact_numbers::exact_numbers_scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_comes_back_as_written_on_the_functions() {
    exact_numbers_scenario(&on_moto().await).await;
}

/// The first 250 resources of each Synthea type (3,300 of 38,473): the
/// whole sample takes moto about 400 s to load and export, too long for
/// every CI run; the embedded test takes all of it. Set
/// BULK_EXPORT_SYNTHEA_ALL=1 to run the whole sample here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthea_sample_exports_number_for_number_on_the_functions() {
    let per_type = match std::env::var("BULK_EXPORT_SYNTHEA_ALL").as_deref() {
        Ok("1") => usize::MAX,
        _ => 250,
    };
    crate::exact_numbers::synthea_round_trip_scenario(&on_moto().await, per_type).await;
}
