//! `$export-revisions`: the audit trail as one CSV, started like an export
//! and answered the seed's way: the file's id when it is ready within the
//! wait budget, else `fileId: null` and a status link (the completion
//! webhook announces the file; see `notify`).

use super::{Exports, JobDesk};

use std::time::Duration;

use super::Caller;
use crate::domain::access::TypeAccess;
use crate::domain::job::{JobState, REVISIONS_FILE};
use crate::domain::request::{ExportLevel, ExportRequest};
use crate::domain::revisions::RevisionsQuery;
use crate::domain::Error;

/// What the wait for a revisions file came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionsOutcome {
    /// Ready: the id to fetch it by.
    Ready { file_id: String },
    /// Still being written (or failed: `error`); the job's status link tells.
    Pending {
        job_id: String,
        error: Option<String>,
    },
}

/// The answer to a client without the audit permission.
pub(crate) fn audit_refused() -> Error {
    Error::forbidden(
        "This client may not read the audit trail: that needs the audit permission on \
         its registration (and no Group limit)",
    )
}

/// The audit export (`$export-revisions`).
#[derive(Clone)]
pub struct Revisions {
    pub(crate) desk: JobDesk,
    pub(crate) exports: Exports,
}

impl Revisions {
    /// Authorizes an `$export-revisions` query and starts the job; returns
    /// its id.
    pub async fn start_revisions(
        &self,
        caller: &Caller,
        query: RevisionsQuery,
        request_url: String,
    ) -> Result<String, Error> {
        if !caller.access.can_audit() {
            return Err(audit_refused());
        }
        // Revisions name records and, with includeModifiedProps, show their
        // content: only types the caller may read.
        if let Some(t) = query.entities.iter().find(|t| !caller.access.can_read(t)) {
            return Err(Error::forbidden(format!(
                "entities: the access token's scopes do not permit reading {t}"
            )));
        }
        let types = match (&query.entities, &caller.access.types) {
            (named, _) if !named.is_empty() => named.clone(),
            (_, TypeAccess::Only(readable)) if readable.is_empty() => {
                return Err(Error::forbidden(
                    "The access token's scopes permit reading no resource type",
                ))
            }
            (_, TypeAccess::Only(readable)) => readable.iter().cloned().collect(),
            (_, TypeAccess::All) => Vec::new(),
        };
        self.desk.check_active_limit(caller).await?;
        let request = ExportRequest {
            types,
            revisions: Some(query),
            ..ExportRequest::new(ExportLevel::System, request_url)
        };
        let id = self.desk.record_job(caller, request).await?;
        tracing::info!(job = %id, owner = %caller.subject, "revisions export accepted");
        Ok(id)
    }

    /// Waits up to `budget` for the job's file.
    pub async fn wait_for_revisions(
        &self,
        caller: &Caller,
        job_id: &str,
        budget: Duration,
    ) -> Result<RevisionsOutcome, Error> {
        let poll = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let job = self.desk.visible_job(caller, job_id).await?;
            match job.state {
                JobState::Completed => {
                    return Ok(RevisionsOutcome::Ready {
                        file_id: job.id.clone(),
                    })
                }
                JobState::Failed => {
                    return Ok(RevisionsOutcome::Pending {
                        job_id: job.id.clone(),
                        error: job.error.clone(),
                    })
                }
                _ if tokio::time::Instant::now() + poll > deadline => {
                    return Ok(RevisionsOutcome::Pending {
                        job_id: job.id.clone(),
                        error: None,
                    })
                }
                _ => tokio::time::sleep(poll).await,
            }
        }
    }

    /// A short-lived link to a finished revisions file (its id is its job's).
    pub async fn revisions_file_link(
        &self,
        caller: &Caller,
        file_id: &str,
        accepts_gzip: bool,
    ) -> Result<String, Error> {
        if !caller.access.can_audit() {
            return Err(audit_refused());
        }
        let job = self.desk.visible_job(caller, file_id).await.map_err(|_| {
            Error::not_found(format!(
                "No revisions file '{file_id}' (unknown, expired or not yours)"
            ))
        })?;
        if job.request.revisions.is_none() {
            return Err(Error::not_found(format!(
                "No revisions file '{file_id}' (that job is a resource export)"
            )));
        }
        if job.state != JobState::Completed {
            return Err(Error::conflict(format!(
                "The revisions file '{file_id}' is not ready yet; its status is at \
                 $export-jobs/{file_id}"
            )));
        }
        self.exports
            .file_link(caller, file_id, REVISIONS_FILE, accepts_gzip)
            .await
    }
}
