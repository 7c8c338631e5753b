//! Per-export accounting: what each handling, kick-off and download link
//! consumed is added to its job's counters (`domain::usage`), which the
//! completion event, the EMF log line and `bulk-export-aws job-cost` read.
//!
//! The write that stores a handling's counters cannot count itself: it
//! runs after the metered scope, and is counted as one accounting write.
//! A failed write loses that handling's counters (logged), never the work.

use std::future::Future;

use crate::domain::usage::{self, Usage};
use crate::ports::JobStore;

/// Runs `work` metered and, if it succeeded, adds what it consumed to
/// the counters of `job_id` (a failed kick-off has no job to charge).
pub(crate) async fn charged<T, E>(
    jobs: &dyn JobStore,
    job_id: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let (out, used) = usage::metered(work).await;
    if out.is_ok() {
        save_usage(jobs, job_id, used).await;
    }
    out
}

pub(crate) async fn save_usage(jobs: &dyn JobStore, job_id: &str, mut used: Usage) {
    used.add(usage::ACCOUNTING_WRITES, 1.0);
    if let Err(e) = jobs.add_usage(job_id, &used).await {
        tracing::warn!(job = %job_id, error = %e, "the job's consumption was not recorded");
    }
}

/// The job's stored counters plus what the current handling has
/// counted and not yet stored.
pub(crate) async fn usage_so_far(jobs: &dyn JobStore, job_id: &str) -> Usage {
    let mut total = match jobs.usage(job_id).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(job = %job_id, error = %e, "the job's consumption could not be read");
            Usage::default()
        }
    };
    if let Some(current) = usage::so_far() {
        total.merge(&current);
    }
    total
}
