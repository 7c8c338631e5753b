//! The AWS adapters and the Lambda functions, against moto's server.

mod bulk_load;
mod client;
mod contract;
mod dynamodb_local;
mod exact_numbers;
mod functions;
mod mixed_scan;
pub mod moto;
mod races;
mod revisions;
mod schedules;
mod signed_requests;
