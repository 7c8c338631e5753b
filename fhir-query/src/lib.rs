//! fhir-query: questions asked of FHIR R4 resources held as `serde_json`
//! values, with no storage, no I/O and no knowledge of the export service
//! that uses it.
//!
//! - [`fhirpath`]: FHIRPath (the whole grammar parsed, the functions a
//!   ViewDefinition and the R4 search parameters need evaluated), with
//!   FHIR's decimal and date-time semantics.
//! - [`search`]: FHIR search queries (`Observation?code=...&date=ge2020`)
//!   matched in memory, with the R4 search parameters' own expressions.
//! - [`view`]: SQL on FHIR v2 ViewDefinitions, checked when read, turning a
//!   resource into rows; written as CSV, NDJSON or Parquet.
//! - [`resource_types`] and [`csv`]: the R4 resource type names and an
//!   RFC 4180 record writer.
//!
//! The official SQL on FHIR v2 test suite runs against [`view`]
//! (`tests/sql_on_fhir_suite.rs`).

pub mod csv;
pub mod fhirpath;
pub mod resource_types;
pub mod search;
pub mod view;
