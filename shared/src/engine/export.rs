//! Kick-off, status, cancel and file links: the client-facing use cases.

use super::accounting::charged;
use super::job_desk::job_not_found;
use super::modify::{modify_job, Modified};
use super::{Announcer, Collector, EngineConfig, JobDesk};
use crate::ports::{ArtifactStore, Clock, JobStore};
use std::sync::Arc;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::gzip_twin::twin_key;
use super::Caller;
use crate::domain::access::{Access, TypeAccess};
use crate::domain::job::{
    artifact_key, job_prefix, manifest, manifest_page, paged_manifest, reuse_key, FileKind, Job,
    JobState, ManifestCursor, OutputFile, Part, PATIENT_BLOCKS, REVISIONS,
};
use crate::domain::request::{in_patient_compartment, ExportLevel, ExportRequest};
use crate::domain::usage;
use crate::domain::Error;

/// What a status poll answers.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusReply {
    InProgress {
        /// `scheduled` or `started` (the `X-Progress` header).
        progress: &'static str,
        percent: Option<u8>,
        retry_after_secs: u64,
        /// With `allowPartialManifests`, a page of the files ready so far.
        manifest: Option<Value>,
    },
    Complete {
        manifest: Value,
        expires: DateTime<Utc>,
    },
    Failed {
        message: String,
    },
}

/// Kick-off, status, cancel and file links: what an export's client asks.
#[derive(Clone)]
pub struct Exports {
    pub(crate) desk: JobDesk,
    pub(crate) announcer: Announcer,
    pub(crate) collector: Collector,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) artifacts: Arc<dyn ArtifactStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Exports {
    /// Authorizes the request, records the job and queues its planning.
    /// Returns the new job's id.
    pub async fn kickoff(&self, caller: &Caller, request: ExportRequest) -> Result<String, Error> {
        self.kickoff_or_reuse(caller, request, false).await
    }

    /// The same, but with `reuse` an identical export of the caller that
    /// is in progress or completed within `reuse_window` is answered
    /// instead: its id is returned, and nothing new is started.
    pub async fn kickoff_or_reuse(
        &self,
        caller: &Caller,
        mut request: ExportRequest,
        reuse: bool,
    ) -> Result<String, Error> {
        authorize_export(&caller.access, &mut request)?;
        self.desk.check_patients(&mut request).await?;
        if reuse && !self.config.reuse_window.is_zero() {
            if let Some(id) = self.reusable_job(caller, &request).await? {
                tracing::info!(job = %id, owner = %caller.subject, "identical export reused");
                return Ok(id);
            }
        }
        self.desk.check_active_limit(caller).await?;
        self.desk.record_job(caller, request).await
    }

    /// The newest of the caller's jobs for an identical request that is
    /// queued, running, or completed within the reuse window, and not
    /// expired.
    async fn reusable_job(
        &self,
        caller: &Caller,
        request: &ExportRequest,
    ) -> Result<Option<String>, Error> {
        let key = reuse_key(&caller.subject, request);
        let now = self.clock.now();
        let window =
            chrono::Duration::from_std(self.config.reuse_window).unwrap_or(chrono::Duration::MAX);
        let candidates = self.jobs.jobs_with_reuse_key(&key).await?;
        Ok(candidates
            .into_iter()
            // The index may lag behind: the job as read now must still carry the key.
            .filter(|j| j.owner == caller.subject && j.reuse_key().as_deref() == Some(&key))
            .filter(|j| j.is_visible(now))
            .filter(|j| match j.state {
                JobState::Queued | JobState::Running => true,
                JobState::Completed => j.completed_at.is_some_and(|t| now - t <= window),
                _ => false,
            })
            .max_by_key(|j| j.created_at)
            .map(|j| j.id))
    }

    /// The job's status. While it is in progress the answer is held up to
    /// `status_wait` and given as soon as the export completes: woken by
    /// the store's job updates where it has them (embedded), else looking
    /// at the job every `status_wait_poll`. `page` is a paged manifest's
    /// cursor (the `next` link's `page` parameter).
    pub async fn status(
        &self,
        caller: &Caller,
        job_id: &str,
        page: Option<&str>,
    ) -> Result<StatusReply, Error> {
        // Subscribed before the first read, so no update after it is missed.
        let mut updates = self.jobs.job_updates();
        let mut job = self.desk.readable_job(caller, job_id).await?;
        let cursor = match page {
            None => ManifestCursor::default(),
            Some(_) if !job.request.allow_partial_manifests => {
                return Err(Error::invalid(
                    "page: this export's manifest is not paged (it was not started with \
                     allowPartialManifests=true)",
                ))
            }
            Some(text) => ManifestCursor::parse(text).ok_or_else(|| {
                Error::invalid(format!(
                    "page: '{text}' is not a page of this manifest; follow the manifest's next link"
                ))
            })?,
        };
        let poll = self.config.status_wait_poll.max(Duration::from_millis(1));
        let deadline = tokio::time::Instant::now() + self.config.status_wait;
        while matches!(job.state, JobState::Queued | JobState::Running) {
            let woken = match updates.as_mut() {
                Some(updates) => matches!(
                    tokio::time::timeout_at(deadline, updates.changed()).await,
                    Ok(Ok(()))
                ),
                None if tokio::time::Instant::now() + poll <= deadline => {
                    tokio::time::sleep(poll).await;
                    true
                }
                None => false,
            };
            if !woken {
                break;
            }
            job = self.desk.readable_job(caller, job_id).await?;
        }
        self.status_of(job, &cursor).await
    }

    async fn status_of(&self, job: Job, cursor: &ManifestCursor) -> Result<StatusReply, Error> {
        let job_id = job.id.clone();
        let job_id = job_id.as_str();
        match job.state {
            JobState::Queued => Ok(StatusReply::InProgress {
                progress: "scheduled",
                percent: None,
                retry_after_secs: 1,
                manifest: None,
            }),
            JobState::Running => {
                let parts = self.jobs.list_parts(job_id).await?;
                let total: u64 = parts.iter().map(|p| p.progress_total).sum();
                let done: u64 = parts
                    .iter()
                    .map(|p| {
                        if p.done {
                            p.progress_total
                        } else {
                            p.checkpoint.progress_done.min(p.progress_total)
                        }
                    })
                    .sum();
                let fraction = if total == 0 {
                    0.0
                } else {
                    done as f64 / total as f64
                };
                let elapsed = job
                    .started_at
                    .map(|s| (self.clock.now() - s).num_milliseconds().max(1) as f64 / 1000.0)
                    .unwrap_or(0.0);
                Ok(StatusReply::InProgress {
                    progress: "started",
                    percent: Some((fraction * 100.0).floor().min(99.0) as u8),
                    retry_after_secs: estimate_retry_after(elapsed, fraction),
                    manifest: self.partial_manifest(&job, &parts, cursor),
                })
            }
            JobState::Completed => {
                let manifest = if job.request.allow_partial_manifests {
                    let parts = self.jobs.list_parts(job_id).await?;
                    let page =
                        manifest_page(&job, &parts, cursor, self.config.manifest_page_files, true);
                    paged_manifest(
                        &job,
                        &page,
                        &self.config.base_url,
                        self.config.requires_access_token,
                    )
                } else {
                    manifest(
                        &job,
                        &self.config.base_url,
                        self.config.requires_access_token,
                    )
                };
                Ok(StatusReply::Complete {
                    manifest,
                    expires: job.expires_at.unwrap_or(job.created_at),
                })
            }
            JobState::Failed => Ok(StatusReply::Failed {
                message: job.error.unwrap_or_else(|| "The export failed".into()),
            }),
            JobState::Cancelled => Err(job_not_found(job_id)),
        }
    }

    /// A running job's manifest page at `cursor`, when the client asked for
    /// partial manifests and files past the cursor are ready.
    fn partial_manifest(
        &self,
        job: &Job,
        parts: &[Part],
        cursor: &ManifestCursor,
    ) -> Option<Value> {
        if !job.request.allow_partial_manifests {
            return None;
        }
        let page = manifest_page(job, parts, cursor, self.config.manifest_page_files, false);
        (!page.files.is_empty()).then(|| {
            paged_manifest(
                job,
                &page,
                &self.config.base_url,
                self.config.requires_access_token,
            )
        })
    }

    /// Cancels a job: it disappears for its owner at once, workers stop at
    /// their next page, and its files are deleted.
    pub async fn cancel(&self, caller: &Caller, job_id: &str) -> Result<(), Error> {
        self.desk.visible_job(caller, job_id).await?;
        let now = self.clock.now();
        let cancelled = modify_job(&*self.jobs, job_id, |job| {
            if !job.is_visible(now) {
                return Ok::<_, Error>(false); // cancelled or expired meanwhile
            }
            job.state = JobState::Cancelled;
            // The sweeper removes the record (and anything a worker wrote
            // after this point) at its next run.
            job.expires_at = Some(now);
            Ok(true)
        })
        .await?;
        let Modified::Saved(job) = cancelled else {
            return Err(job_not_found(job_id));
        };
        self.announcer.announce(&job).await;
        // The job is cancelled from here on, whatever follows. Deleting its
        // files may race a worker still writing them (a directory refilled
        // as it is removed); what is left, that worker (at its next page),
        // the delayed collection and the sweeper (the job expires now)
        // remove. An expected race, so not a warning.
        if let Err(e) = self.artifacts.delete_prefix(&job_prefix(job_id)).await {
            tracing::debug!(job = %job_id, error = %e, "cancel: files left for the sweeper");
        }
        // Handlings still running may write a little more.
        if let Err(e) = self.collector.collect_later(job_id).await {
            tracing::warn!(job = %job_id, error = %e, "cancel: no delayed collection queued");
        }
        tracing::info!(job = %job_id, "export cancelled");
        Ok(())
    }

    /// A short-lived presigned link to one of a completed job's files: to
    /// its gzip twin when the client accepts gzip and the twin exists.
    /// Each link issued counts in the job's consumption.
    pub async fn file_link(
        &self,
        caller: &Caller,
        job_id: &str,
        name: &str,
        accepts_gzip: bool,
    ) -> Result<String, Error> {
        charged(&*self.jobs, job_id, async {
            let link = self
                .link_to_file(caller, job_id, name, accepts_gzip)
                .await?;
            usage::record(|u| u.add(usage::FILE_LINKS, 1.0));
            Ok(link)
        })
        .await
    }

    async fn link_to_file(
        &self,
        caller: &Caller,
        job_id: &str,
        name: &str,
        accepts_gzip: bool,
    ) -> Result<String, Error> {
        let job = self.desk.readable_job(caller, job_id).await?;
        let file = match job.state {
            JobState::Completed => job.files.iter().find(|f| f.name == name).cloned(),
            // A partial manifest lists the files of parts still running.
            JobState::Running if job.request.allow_partial_manifests => self
                .jobs
                .list_parts(job_id)
                .await?
                .into_iter()
                .flat_map(|p| p.checkpoint.files)
                .find(|f| f.name == name),
            _ => None,
        };
        let Some(file) = file else {
            return Err(Error::not_found(format!(
                "Export job '{job_id}' has no file '{name}'"
            )));
        };
        self.check_file_access(caller, &job, &file)?;
        let key = artifact_key(job_id, name);
        let (key, sha256) = if accepts_gzip && file.gzip {
            (twin_key(&key), file.gzip_sha256.as_deref())
        } else {
            (key, file.sha256.as_deref())
        };
        Ok(self
            .artifacts
            .presign_checked_get(&key, self.config.presign_ttl, sha256)
            .await?)
    }

    /// Scopes are checked again at download: the token may be a newer,
    /// narrower one than the one that started the export. A file of
    /// patient blocks may hold any of the export's types.
    pub(crate) fn check_file_access(
        &self,
        caller: &Caller,
        job: &Job,
        file: &OutputFile,
    ) -> Result<(), Error> {
        if file.resource_type == REVISIONS && !caller.access.can_audit() {
            return Err(super::revisions::audit_refused());
        }
        let data_types: Vec<&str> = match (file.kind, file.resource_type.as_str()) {
            (FileKind::Error, _) => Vec::new(),
            (_, PATIENT_BLOCKS | REVISIONS) => job
                .plan_inputs
                .iter()
                .flat_map(|p| p.types.iter().map(String::as_str))
                .collect(),
            _ => vec![file.source_type.as_deref().unwrap_or(&file.resource_type)],
        };
        if let Some(t) = data_types.iter().find(|t| !caller.access.can_read(t)) {
            return Err(Error::forbidden(format!(
                "The access token's scopes do not permit reading {t}"
            )));
        }
        Ok(())
    }
}

/// Applies the caller's access to a parsed request: requested types must be
/// readable, no `_type` means exactly the readable types, and a client
/// limited to Groups may export only those Groups.
pub(crate) fn authorize_export(access: &Access, request: &mut ExportRequest) -> Result<(), Error> {
    match &request.level {
        ExportLevel::Group { group_id } if !access.can_use_group(group_id) => {
            return Err(Error::forbidden(format!(
                "This client may not export Group/{group_id}"
            )));
        }
        ExportLevel::System | ExportLevel::Patient if access.groups.is_some() => {
            return Err(Error::forbidden(
                "This client is limited to its Groups: use [base]/Group/{id}/$export",
            ));
        }
        _ => {}
    }
    if let Some(t) = request.types.iter().find(|t| !access.can_read(t)) {
        return Err(Error::forbidden(format!(
            "_type: the access token's scopes do not permit reading {t}"
        )));
    }
    if let (true, TypeAccess::Only(readable)) = (request.types.is_empty(), &access.types) {
        let patient_based = request.level.is_patient_based();
        request.types = readable
            .iter()
            .filter(|t| !patient_based || in_patient_compartment(t))
            .cloned()
            .collect();
        if request.types.is_empty() {
            return Err(Error::forbidden(
                "The access token's scopes permit reading no resource type this export can contain",
            ));
        }
    }
    Ok(())
}

/// Seconds until the next poll is worth making: the projected remaining
/// time, polled about four times over, within 1..=60 s.
fn estimate_retry_after(elapsed_secs: f64, fraction_done: f64) -> u64 {
    if fraction_done <= 0.0 || elapsed_secs <= 0.0 {
        return 2;
    }
    let remaining = elapsed_secs * (1.0 - fraction_done) / fraction_done;
    (remaining / 4.0).ceil().clamp(1.0, 60.0) as u64
}

#[cfg(test)]
mod tests {
    use super::estimate_retry_after;

    #[test]
    fn retry_after_follows_progress() {
        assert_eq!(estimate_retry_after(10.0, 0.0), 2);
        assert_eq!(estimate_retry_after(10.0, 0.5), 3);
        assert_eq!(estimate_retry_after(10.0, 0.99), 1);
        assert_eq!(estimate_retry_after(1000.0, 0.01), 60);
    }
}
