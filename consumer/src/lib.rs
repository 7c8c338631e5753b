//! `bulk-export-client`: the consumer's side of FHIR Bulk Data, for any
//! Bulk Data server (ours or another).
//!
//! This first part is [`fetch`]: it downloads a completed export's
//! manifest (a status URL answering `200`, or a presigned-link manifest)
//! and its files into a folder, and checks each file against the manifest
//! (its line `count`, and its SHA-256 where the server gives one as
//! `extension.sha256`). A file is written under a temporary name and
//! renamed into place only once it checks out, so a final name never holds
//! a partial or corrupt file; running the same fetch again skips the files
//! that are already there and verified.

pub mod fetch;
pub mod manifest;

pub use fetch::{fetch, FetchError, FetchOptions, Fetched};
pub use manifest::{Item, Manifest};
