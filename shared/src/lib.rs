//! bulk-export: a FHIR Bulk Data export service.
//!
//! - [`auth`]: SMART Backend Services token endpoint and token verification.
//! - [`domain`]: pure types and rules (requests, jobs, manifests, outcomes).
//! - [`ports`]: the traits the engine needs (stores, queue, clock).
//! - [`engine`]: every use case, written against the ports.
//! - [`embedded`]: the local adapters (SQLite + filesystem).
//! - `aws` (feature `aws`): the AWS adapters (DynamoDB, S3, SQS).
//! - [`http`]: the one routing table shared by the local server and Lambdas.
//! - [`sample`]: a deterministic synthetic data generator.
//! - [`service`]: the one assembly of ports, settings, engine and routes.

pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod domain;
pub mod embedded;
pub mod engine;
pub mod http;
pub mod loader;
pub mod ports;
pub mod private_file;
pub mod sample;
pub mod service;
// FHIRPath, search and views live in their own crate; these paths stay.
pub use fhir_query::{fhirpath, search, view};
