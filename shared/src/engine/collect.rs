//! Garbage collection of ended jobs: what a job's manifest does not list
//! goes, at once and once more after any handling still running has ended.

use std::sync::Arc;

use super::EngineConfig;
use crate::domain::job::{job_prefix, Job, JobState, WorkMessage};
use crate::ports::{ArtifactStore, JobStore, PortResult, WorkQueue};

#[derive(Clone)]
pub struct Collector {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) artifacts: Arc<dyn ArtifactStore>,
    pub(crate) queue: Arc<dyn WorkQueue>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Collector {
    /// Garbage collection of an ended job: a completed job keeps its
    /// manifest's files, a cancelled or failed one (or one already swept)
    /// keeps nothing. A running job is left alone.
    pub(crate) async fn collect(&self, job_id: &str) -> PortResult<()> {
        match self.jobs.get_job(job_id).await? {
            Some(job) if job.state == JobState::Completed => self.collect_garbage(&job).await,
            Some(job) if matches!(job.state, JobState::Running | JobState::Queued) => Ok(()),
            _ => self.artifacts.delete_prefix(&job_prefix(job_id)).await,
        }
    }

    /// Queues one more collection, after any handling still running now
    /// has ended.
    pub(crate) async fn collect_later(&self, job_id: &str) -> PortResult<()> {
        self.queue
            .send_delayed(
                &[WorkMessage::Collect {
                    job_id: job_id.to_string(),
                }],
                self.config.collect_delay,
            )
            .await
    }

    /// Removes everything under the job's prefix that its manifest does
    /// not list: uploads and chunks of handlings that lost a race or
    /// crashed, and spills. Idempotent; run whenever a completed job's
    /// message comes by.
    pub(crate) async fn collect_garbage(&self, job: &Job) -> PortResult<()> {
        let keep: Vec<String> = job
            .files
            .iter()
            .flat_map(|f| {
                let key = crate::domain::job::artifact_key(&job.id, &f.name);
                let twin = f.gzip.then(|| super::gzip_twin::twin_key(&key));
                std::iter::once(key).chain(twin)
            })
            .collect();
        self.artifacts
            .retain_only(&job_prefix(&job.id), &keep)
            .await
    }
}
