//! `bulk-export-client`: the consumer's side of FHIR Bulk Data, for any
//! Bulk Data server (ours or another).
//!
//! - [`export`]: kicks an export off ([`kickoff`]), waits for it
//!   ([`status`]), and downloads its files as they are listed, with SMART
//!   Backend Services tokens where the server wants them ([`auth`]).
//! - [`fetch`]: downloads a completed export's manifest (a status URL
//!   answering `200`, or a presigned-link manifest) and its files.
//!
//! Either way each file is checked against the manifest (its line
//! `count`, and its SHA-256 where the server gives one as
//! `extension.sha256`), written under a temporary name and renamed into
//! place only once it checks out, so a final name never holds a partial or
//! corrupt file; running the same command again skips the files that are
//! already there and verified.

pub mod auth;
pub mod export;
pub mod fetch;
pub mod kickoff;
pub mod manifest;
pub mod mirror;
pub mod progress;
pub mod session;
pub mod status;
pub mod sync;
pub mod views;

pub use export::{Export, Exported};
pub use fetch::{fetch, FetchError, FetchOptions, Fetched};
pub use kickoff::{ExportRequest, Level};
pub use manifest::{Item, Manifest};
pub use session::Session;
