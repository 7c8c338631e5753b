//! The local default adapters: SQLite for resources, jobs and the work queue,
//! the filesystem for export files. No AWS account, no Docker.

pub mod artifacts;
pub mod folder_delivery;
pub mod job_store;
pub mod resource_store;
mod schedule_store;
pub mod sqlite;

pub use artifacts::FsArtifacts;
pub use folder_delivery::FolderDelivery;
pub use job_store::{SqliteJobs, SqliteQueue};
pub use resource_store::SqliteResourceStore;
