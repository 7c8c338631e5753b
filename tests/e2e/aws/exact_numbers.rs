//! The exact-numbers scenario (`crate::exact_numbers`) through the Lambda
//! functions on the AWS emulator: DynamoDB keeps the client's text, and
//! files come from S3 through presigned URLs.

use super::schedules::on_moto;
use crate::exact_numbers::exact_numbers_scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_comes_back_as_written_on_the_functions() {
    exact_numbers_scenario(&on_moto().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthea_sample_exports_number_for_number_on_the_functions() {
    crate::exact_numbers::synthea_round_trip_scenario(&on_moto().await).await;
}
