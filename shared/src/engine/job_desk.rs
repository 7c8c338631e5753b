//! The job desk: what every use case that starts an export, or looks up a
//! caller's, goes through. Limits, the patients named, the transaction
//! time, the job record and its planning message; and which jobs a caller
//! may see.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::accounting::charged;
use super::{Caller, EngineConfig};
use crate::domain::job::{Job, JobState, WorkMessage};
use crate::domain::request::{ExportLevel, ExportRequest};
use crate::domain::resource::group_member_ids;
use crate::domain::schedule::RELEASE_OWNER_PREFIX;
use crate::domain::Error;
use crate::ports::{Clock, JobStore, PortError, ResourceStore, WorkQueue};

/// How long a client over its limit of exports in progress is told to wait.
const ACTIVE_LIMIT_RETRY_AFTER_SECS: u64 = 30;

#[derive(Clone)]
pub struct JobDesk {
    pub(crate) resources: Arc<dyn ResourceStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) queue: Arc<dyn WorkQueue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<EngineConfig>,
}

pub(crate) fn job_not_found(id: &str) -> Error {
    Error::not_found(format!(
        "No export job '{id}' (unknown, expired or cancelled)"
    ))
}

impl JobDesk {
    /// Records a new job for an authorized request and queues its planning.
    pub(crate) async fn record_job(
        &self,
        caller: &Caller,
        request: ExportRequest,
    ) -> Result<String, Error> {
        let id = uuid::Uuid::new_v4().to_string();
        charged(&*self.jobs, &id, async {
            let transaction_time = self.transaction_time_for(&request).await?;
            let job = self.queued_job(id.clone(), &caller.subject, request, transaction_time);
            self.jobs.create_job(&job).await?;
            self.queue_planning(&job).await?;
            tracing::info!(job = %job.id, owner = %job.owner, level = ?job.request.level, "export accepted");
            Ok::<_, Error>(())
        })
        .await?;
        Ok(id)
    }

    /// The instant a new export of `request` is consistent as of: now, or
    /// its `_until` if that is earlier.
    pub(crate) async fn transaction_time_for(
        &self,
        request: &ExportRequest,
    ) -> Result<DateTime<Utc>, PortError> {
        let snapshot = self.resources.snapshot().await?;
        Ok(request.until.map_or(snapshot, |u| u.min(snapshot)))
    }

    /// A new, queued job.
    pub(crate) fn queued_job(
        &self,
        id: String,
        owner: &str,
        request: ExportRequest,
        transaction_time: DateTime<Utc>,
    ) -> Job {
        Job {
            id,
            owner: owner.to_string(),
            request,
            state: JobState::Queued,
            transaction_time,
            created_at: self.clock.now(),
            started_at: None,
            completed_at: None,
            expires_at: None,
            parts_total: 0,
            parts_remaining: 0,
            files: Vec::new(),
            error: None,
            plan_inputs: None,
            run_of: None,
            deliveries: Vec::new(),
            version: 0,
        }
    }

    pub(crate) async fn queue_planning(&self, job: &Job) -> Result<(), PortError> {
        self.queue
            .send(&[WorkMessage::Plan {
                job_id: job.id.clone(),
            }])
            .await
    }

    /// Stores a job whose id is fixed by what it is (a schedule's run, a
    /// release's build) and queues its planning. If another caller stored
    /// it first, that job stands; its planning is queued again while it is
    /// still queued, in case that caller died before queuing it (planning
    /// a job twice makes the same parts).
    pub(crate) async fn start_job_once(&self, job: &Job) -> Result<(), PortError> {
        charged(&*self.jobs, &job.id, async {
            match self.jobs.create_job(job).await {
                Ok(()) => self.queue_planning(job).await,
                Err(PortError::AlreadyExists) => match self.jobs.get_job(&job.id).await? {
                    Some(j) if j.state == JobState::Queued => self.queue_planning(&j).await,
                    _ => Ok(()),
                },
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// 429 when the caller already has its limit of exports in progress.
    pub(crate) async fn check_active_limit(&self, caller: &Caller) -> Result<(), Error> {
        let limit = self.config.max_active_exports_per_client;
        if limit == 0 {
            return Ok(());
        }
        let active = self.jobs.count_active_jobs(&caller.subject).await?;
        if active >= limit {
            return Err(Error::throttled(
                format!(
                    "This client already has {active} exports in progress (the limit is \
                     {limit}); wait for one to finish, or cancel one"
                ),
                ACTIVE_LIMIT_RETRY_AFTER_SECS,
            ));
        }
        Ok(())
    }

    /// The Group must exist. Named patients that do not exist (Patient
    /// level) or are not members (Group level) are moved to
    /// `excluded_patients`: the export goes on without them, and its
    /// manifest says so, in the same words for both cases.
    pub(crate) async fn check_patients(&self, request: &mut ExportRequest) -> Result<(), Error> {
        let resources = &self.resources;
        let named = std::mem::take(&mut request.patients);
        let members = match &request.level {
            ExportLevel::System => return Ok(()),
            ExportLevel::Patient => None,
            ExportLevel::Group { group_id } => Some(self.group_members(group_id).await?),
        };
        for p in named {
            let included = match &members {
                Some(members) => members.contains(&p),
                None => matches!(
                    resources.read_current("Patient", &p).await?,
                    Some(v) if !v.deleted
                ),
            };
            if included {
                request.patients.push(p);
            } else {
                request.excluded_patients.push(p);
            }
        }
        Ok(())
    }

    /// The member patients of the current Group `group_id`; 404 if there is
    /// none.
    pub(crate) async fn group_members(&self, group_id: &str) -> Result<Vec<String>, Error> {
        let group = match self.resources.read_current("Group", group_id).await? {
            Some(v) if !v.deleted => v,
            _ => return Err(Error::not_found(format!("Group/{group_id} does not exist"))),
        };
        let body: Value = serde_json::from_str(group.body.as_deref().unwrap_or("{}"))
            .map_err(|_| Error::internal("stored Group is not JSON"))?;
        Ok(group_member_ids(&body))
    }

    /// Loads a job the caller may see; anything else is the same 404.
    pub(crate) async fn visible_job(&self, caller: &Caller, job_id: &str) -> Result<Job, Error> {
        let job = self.jobs.get_job(job_id).await?;
        match job {
            Some(job) if job.owner == caller.subject && job.is_visible(self.clock.now()) => Ok(job),
            _ => Err(job_not_found(job_id)),
        }
    }

    /// A job the caller may read: its own, or a release's (a release is a
    /// system-wide export: any client not limited to Groups may fetch it,
    /// and each file is checked against its scopes).
    pub(crate) async fn readable_job(&self, caller: &Caller, job_id: &str) -> Result<Job, Error> {
        let job = self.jobs.get_job(job_id).await?;
        match job {
            Some(job)
                if (job.owner == caller.subject
                    || (job.owner.starts_with(RELEASE_OWNER_PREFIX)
                        && caller.access.groups.is_none()))
                    && job.is_visible(self.clock.now()) =>
            {
                Ok(job)
            }
            _ => Err(job_not_found(job_id)),
        }
    }
}
