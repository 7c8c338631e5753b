//! The sweeper: deletes expired and cancelled jobs with their files.
//! DynamoDB TTL and the S3 lifecycle rule are only backstops; status and
//! files already answer 404 from the expiry instant on (checked on read).

use crate::ports::{ArtifactStore, Clock, JobStore};
use std::sync::Arc;

use crate::domain::job::job_prefix;
use crate::ports::PortResult;

#[derive(Clone)]
pub struct Sweeper {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) artifacts: Arc<dyn ArtifactStore>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Sweeper {
    /// Removes every job whose expiry has passed; returns how many.
    pub async fn sweep(&self) -> PortResult<usize> {
        let mut swept = 0;
        loop {
            let ids = self.jobs.expired_jobs(self.clock.now(), 100).await?;
            if ids.is_empty() {
                return Ok(swept);
            }
            for id in &ids {
                // Files first: a job record is only dropped once nothing of it is left.
                self.artifacts.delete_prefix(&job_prefix(id)).await?;
                self.artifacts
                    .delete_prefix(&super::links::links_prefix(id))
                    .await?;
                self.jobs.delete_job(id).await?;
                swept += 1;
            }
            tracing::info!(count = ids.len(), "swept expired jobs");
        }
    }
}
