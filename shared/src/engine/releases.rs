//! Releases: named exports frozen at their `transactionTime`, made once
//! for every subscriber. The record never expires; the files do, and are
//! rebuilt on demand exactly as of the same instant (the store keeps
//! every version), under the next generation's job.

use super::{Exports, JobDesk};
use crate::ports::{Clock, JobStore, ScheduleStore};
use std::sync::Arc;

use super::export::authorize_export;
use super::modify::{modify_release, Modified};
use super::{Caller, StatusReply};
use crate::domain::job::JobState;
use crate::domain::schedule::{check_name, Release, LATEST, RELEASE_OWNER_PREFIX};
use crate::domain::schedule_input::NewRelease;
use crate::domain::Error;
use crate::ports::PortError;

fn release_not_found(name: &str) -> Error {
    Error::not_found(format!("No release '{name}'"))
}

/// Named system exports every reader shares, built once.
#[derive(Clone)]
pub struct Releases {
    pub(crate) desk: JobDesk,
    pub(crate) exports: Exports,
    pub(crate) schedules: Arc<dyn ScheduleStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Releases {
    /// Freezes a release as of now and starts building its files.
    /// Publishing needs read access to every type and no Group limit.
    pub async fn create_release(&self, caller: &Caller, new: NewRelease) -> Result<Release, Error> {
        if !caller.access.perms_on("*").read || caller.access.groups.is_some() {
            return Err(Error::forbidden(
                "Publishing a release needs read access to every type (system/*.read)",
            ));
        }
        let now = self.clock.now();
        let mut request = new.request;
        authorize_export(&caller.access, &mut request)?;
        self.desk.check_patients(&mut request).await?;
        let transaction_time = self.desk.transaction_time_for(&request).await?;
        let release = Release {
            name: new.name,
            export: new.export,
            request,
            transaction_time,
            created_at: now,
            created_by: caller.subject.clone(),
            generation: 0,
            version: 0,
        };
        match self.schedules.create_release(&release).await {
            Ok(()) => {}
            Err(PortError::AlreadyExists) => {
                return Err(Error::conflict(format!(
                    "A release named '{}' exists; releases are immutable",
                    release.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.build_release(&release).await?;
        tracing::info!(release = %release.name, "release created");
        Ok(release)
    }

    pub async fn releases(&self) -> Result<Vec<Release>, Error> {
        Ok(self.schedules.releases().await?)
    }

    /// A release by name; `latest` is the one with the newest
    /// `transactionTime`.
    pub async fn release_record(&self, name: &str) -> Result<Release, Error> {
        let found = if name == LATEST {
            self.schedules.releases().await?.pop()
        } else {
            check_name("release", name)?;
            self.schedules.get_release(name).await?
        };
        found.ok_or_else(|| release_not_found(name))
    }

    /// The release's manifest: its files as built, or, once they have
    /// expired (or a build failed), a rebuild as of the same instant, in
    /// progress (202) until it is done.
    pub async fn release_status(&self, caller: &Caller, name: &str) -> Result<StatusReply, Error> {
        let mut release = self.release_record(name).await?;
        loop {
            let job = self.jobs.get_job(&release.job_id()).await?;
            let now = self.clock.now();
            let usable = job.as_ref().is_some_and(|j| {
                j.is_visible(now) && !matches!(j.state, JobState::Failed | JobState::Cancelled)
            });
            if usable {
                break;
            }
            if job.is_none() {
                // Swept after expiry (or never stored, by a create that
                // died): the same generation's id is free to build again.
                self.build_release(&release).await?;
                tracing::info!(release = %release.name, "release files rebuilt");
                break;
            }
            // Expired but not swept yet, or failed: the next generation,
            // unless someone else started it (then use theirs).
            let seen = release.generation;
            let next = modify_release(&*self.schedules, &release.name, |r| {
                if r.generation != seen {
                    return Ok::<_, Error>(false);
                }
                r.generation += 1;
                Ok(true)
            })
            .await?;
            match next {
                Modified::Saved(saved) => {
                    release = saved;
                    self.build_release(&release).await?;
                    tracing::info!(release = %release.name, generation = release.generation, "release files rebuilt");
                    break;
                }
                Modified::Unchanged(theirs) => {
                    release = theirs;
                    self.build_release(&release).await?;
                }
                Modified::Missing => return Err(release_not_found(&release.name)),
            }
        }
        self.exports.status(caller, &release.job_id(), None).await
    }

    /// Stores (once) and queues the build of the release's generation.
    async fn build_release(&self, release: &Release) -> Result<(), PortError> {
        let owner = format!("{RELEASE_OWNER_PREFIX}{}", release.name);
        let job = self.desk.queued_job(
            release.job_id(),
            &owner,
            release.request.clone(),
            release.transaction_time,
        );
        self.desk.start_job_once(&job).await
    }
}
