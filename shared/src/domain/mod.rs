//! Pure domain types and rules: no I/O, no AWS, no HTTP framework.

pub mod access;
pub mod client;
pub mod cost;
pub mod elements;
pub mod error;
pub mod fhir_types;
pub mod instant;
pub mod job;
pub mod outcome;
pub mod params;
pub mod request;
pub mod resource;
pub mod resource_text;
pub mod revisions;
pub mod schedule;
pub mod schedule_input;
pub mod usage;
pub mod view_export;
pub mod write_plan;

pub use error::Error;
/// CSV records: the writer is shared with view exports.
pub use fhir_query::csv;
