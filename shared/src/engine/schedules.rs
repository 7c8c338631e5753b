//! Export schedules: the owner's API, and firing due runs.
//!
//! The scheduler Lambda (every minute) and the local ticker both call
//! [`Schedules::fire_due_schedules`]; the clock decides what is due. A run is
//! claimed by the schedule's conditional update, and its job has an id
//! fixed by (schedule, run number), so schedulers racing on a tick make one
//! run. A schedule that was not looked at for a while (downtime) fires once
//! and then moves to its next due time after now: missed ticks are caught
//! up once, not once each.

use super::{Announcer, EngineConfig, Exports, JobDesk, Releases, Views};
use crate::ports::{ClientStore, Clock, JobStore, ScheduleStore};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::export::authorize_export;
use super::modify::{modify_schedule, Modified, MAX_TRIES};
use super::Caller;
use crate::domain::access::Access;
use crate::domain::error::STORE_RETRY_SECS;
use crate::domain::job::{manifest, Job, JobState};
use crate::domain::request::ExportRequest;
use crate::domain::schedule::{check_webhook_url, run_job_id, RunOf, Schedule, ScheduleMode};
use crate::domain::schedule_input::{NewSchedule, SavedExport};
use crate::domain::view_export::view_export_url;
use crate::domain::Error;
use crate::ports::{PortError, PortResult};

/// Which run of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSelector {
    Latest,
    Number(u64),
}

impl RunSelector {
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "latest" => Ok(RunSelector::Latest),
            n => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(RunSelector::Number)
                .ok_or_else(|| {
                    Error::invalid(format!("'{n}' is not a run: use a run number or latest"))
                }),
        }
    }
}

/// Whether two requests export the same data (their `_since` aside).
fn same_scope(a: &ExportRequest, b: &ExportRequest) -> bool {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    a.level == b.level
        && sorted(&a.types) == sorted(&b.types)
        && a.elements == b.elements
        && sorted(&a.type_filters) == sorted(&b.type_filters)
        && a.associated_provenance == b.associated_provenance
        && a.views.is_none()
        && b.views.is_none()
}

/// Schedules due in one tick are fired in pages of this many.
const DUE_PAGE: usize = 100;
/// A run list shows at most this many runs, newest first.
const RUNS_LISTED: u64 = 50;

fn schedule_not_found(id: &str) -> Error {
    Error::not_found(format!("No export schedule '{id}'"))
}

/// Recurring exports: created, listed, paused, run now, fired when due.
#[derive(Clone)]
pub struct Schedules {
    pub(crate) desk: JobDesk,
    pub(crate) exports: Exports,
    pub(crate) announcer: Announcer,
    pub(crate) views: Views,
    pub(crate) releases: Releases,
    pub(crate) schedules: Arc<dyn ScheduleStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) clients: Arc<dyn ClientStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Schedules {
    /// Checks a new schedule of the caller's against the store and the
    /// caller's access, and stores it.
    pub async fn create_schedule(
        &self,
        caller: &Caller,
        new: NewSchedule,
    ) -> Result<Schedule, Error> {
        let now = self.clock.now();
        let start_at = new.start_at.unwrap_or(now);
        let release = match &new.start_from_release {
            Some(name) => Some(self.releases.release_record(name).await?),
            None => None,
        };
        let cursor = release.as_ref().map(|r| r.transaction_time);
        if let Some(hook) = &new.webhook {
            check_webhook_url(&hook.url, self.config.allow_private_webhooks)
                .map_err(|why| Error::invalid_param("webhook", format!("webhook: {why}")))?;
        }
        self.check_may_own_schedules(caller).await?;
        // The request must be one the caller may make now; at each run it
        // is checked again against the owner's access as it stands then.
        // An incremental run sets `_since`: the first one's is checked.
        let since = (new.mode == ScheduleMode::Incremental).then(|| cursor.unwrap_or(now));
        let url = match new.view_export {
            Some(_) => view_export_url(&self.config.base_url),
            None => format!("{}/{}", self.config.base_url, new.export),
        };
        let request = self
            .authorized(caller, new.request.for_run(url, since), now)
            .await?;
        if let Some(release) = &release {
            // Changes since the release complete it only if the release
            // holds what the schedule exports.
            if !same_scope(&release.request, &request) {
                return Err(Error::invalid_param(
                    "startFromRelease",
                    format!(
                        "startFromRelease: release '{}' exports {}; an incremental schedule from \
                         it must export the same (level, _type, _elements, _typeFilter)",
                        release.name, release.export
                    ),
                ));
            }
        }
        let first = new
            .cadence
            .next_after(start_at, start_at - chrono::Duration::microseconds(1))
            .ok_or_else(|| {
                Error::invalid_param("cadence", "cadence: the expression never fires again")
            })?;
        let schedule = Schedule {
            id: uuid::Uuid::new_v4().to_string(),
            owner: caller.subject.clone(),
            name: new.name,
            cadence: new.cadence,
            mode: new.mode,
            export: new.export,
            view_export: new.view_export,
            request: Some(new.request),
            created_at: now,
            start_at,
            paused: false,
            next_due: Some(first),
            runs: 0,
            cursor,
            from_release: new.start_from_release,
            webhook: new.webhook,
            last_event_at: None,
            version: 0,
        };
        self.schedules.create_schedule(&schedule).await?;
        tracing::info!(schedule = %schedule.id, owner = %schedule.owner, cadence = schedule.cadence.as_str(), "schedule created");
        self.owned_schedule(caller, &schedule.id).await
    }

    /// Schedules run without a token, on their owner's registration: with
    /// tokens required, only registered clients may own them.
    async fn check_may_own_schedules(&self, caller: &Caller) -> Result<(), Error> {
        if self.config.requires_access_token
            && self.clients.get_client(&caller.subject).await?.is_none()
        {
            return Err(Error::forbidden(
                "Schedules run without a token, on the owner's registration: only \
                 registered clients may create them",
            ));
        }
        Ok(())
    }

    pub async fn schedules_of(&self, caller: &Caller) -> Result<Vec<Schedule>, Error> {
        Ok(self.schedules.schedules_of(&caller.subject).await?)
    }

    /// The caller's schedule; anyone else's is the same 404 as none.
    pub async fn owned_schedule(&self, caller: &Caller, id: &str) -> Result<Schedule, Error> {
        match self.schedules.get_schedule(id).await? {
            Some(s) if s.owner == caller.subject => Ok(s),
            _ => Err(schedule_not_found(id)),
        }
    }

    /// Pauses (no further runs) or resumes (the next due time after now).
    pub async fn set_schedule_paused(
        &self,
        caller: &Caller,
        id: &str,
        paused: bool,
    ) -> Result<Schedule, Error> {
        let now = self.clock.now();
        let set = modify_schedule(&*self.schedules, id, |s| {
            if s.owner != caller.subject || s.paused == paused {
                return Ok::<_, Error>(false);
            }
            s.paused = paused;
            s.next_due = if paused {
                None
            } else {
                s.cadence.next_after(s.start_at, now)
            };
            Ok(true)
        })
        .await?;
        match set {
            Modified::Saved(s) => Ok(s),
            Modified::Unchanged(s) if s.owner == caller.subject => Ok(s),
            _ => Err(schedule_not_found(id)),
        }
    }

    /// Deletes the schedule: no further runs, and a run in progress is
    /// cancelled (its events go nowhere: the schedule's webhook is gone).
    pub async fn delete_schedule(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        let s = self.owned_schedule(caller, id).await?;
        self.schedules.delete_schedule(id).await?;
        if s.runs > 0 {
            let job_id = run_job_id(id, s.runs);
            if let Some(job) = self.jobs.get_job(&job_id).await? {
                if job.is_active() {
                    let _ = self.exports.cancel(caller, &job_id).await;
                }
            }
        }
        tracing::info!(schedule = %id, "schedule deleted");
        Ok(())
    }

    /// Starts a run now, outside the cadence; returns its job id.
    pub async fn run_schedule_now(&self, caller: &Caller, id: &str) -> Result<String, Error> {
        for _ in 0..MAX_TRIES {
            let s = self.owned_schedule(caller, id).await?;
            match self.claim_run(s, None).await {
                Ok(Some(job_id)) => return Ok(job_id),
                Ok(None) | Err(PortError::Conflict) => continue,
                Err(PortError::NotFound) => return Err(schedule_not_found(id)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(PortError::Conflict.into())
    }

    /// The schedule's recent runs, newest first (runs whose files have
    /// expired are gone).
    pub async fn schedule_runs(&self, caller: &Caller, id: &str) -> Result<Vec<Job>, Error> {
        let s = self.owned_schedule(caller, id).await?;
        let mut runs = Vec::new();
        let now = self.clock.now();
        let oldest = s.runs.saturating_sub(RUNS_LISTED) + 1;
        for n in (oldest..=s.runs).rev() {
            if let Some(job) = self.jobs.get_job(&run_job_id(id, n)).await? {
                if job.is_visible(now) {
                    runs.push(job);
                }
            }
        }
        Ok(runs)
    }

    /// The job id of one of the caller's runs.
    pub async fn run_job(
        &self,
        caller: &Caller,
        id: &str,
        run: RunSelector,
    ) -> Result<String, Error> {
        let s = self.owned_schedule(caller, id).await?;
        let n = match run {
            RunSelector::Latest if s.runs == 0 => {
                return Err(Error::not_found(format!(
                    "Schedule '{id}' has not run yet; its first run is due at {}",
                    s.next_due
                        .map(crate::domain::instant::format_instant)
                        .unwrap_or_else(|| "no time (paused)".into())
                )))
            }
            RunSelector::Latest => s.runs,
            RunSelector::Number(n) if n > s.runs => {
                return Err(Error::not_found(format!(
                    "Schedule '{id}' has made {} runs",
                    s.runs
                )))
            }
            RunSelector::Number(n) => n,
        };
        Ok(run_job_id(id, n))
    }

    /// The scheduler's tick: fires every schedule due at the clock's now.
    /// Returns how many runs this call started (a racing scheduler may
    /// start the others).
    pub async fn fire_due_schedules(&self) -> PortResult<u32> {
        let now = self.clock.now();
        let mut fired = 0;
        loop {
            // A fired schedule leaves the due index, so each page is new work.
            let due = self.schedules.due_schedules(now, DUE_PAGE).await?;
            let full_page = due.len() == DUE_PAGE;
            let mut moved = 0;
            for s in due {
                let id = s.id.clone();
                match self.fire_if_due(s, now).await {
                    Ok(true) => {
                        fired += 1;
                        moved += 1;
                    }
                    // Fired by a racing scheduler: it moved on too.
                    Ok(false) => moved += 1,
                    Err(e) => tracing::warn!(schedule = %id, error = %e, "schedule not fired"),
                }
            }
            // A page that failed as a whole would come back unchanged.
            if !full_page || moved == 0 {
                return Ok(fired);
            }
        }
    }

    /// A direct invocation (a team's own EventBridge rule or Scheduler)
    /// naming a schedule: one run per distinct `at` (the event's time), so
    /// a redelivered event does not run it twice.
    pub async fn fire_named_schedule(&self, id: &str, at: DateTime<Utc>) -> PortResult<bool> {
        for _ in 0..MAX_TRIES {
            let Some(mut s) = self.schedules.get_schedule(id).await? else {
                return Err(PortError::NotFound);
            };
            // The claim records the event's time: an event at or before the
            // last one claimed is a redelivery (or older), not a new run.
            if s.paused || s.last_event_at.is_some_and(|t| t >= at) {
                return Ok(false);
            }
            s.last_event_at = Some(at);
            match self.claim_run(s, Some(at)).await {
                Ok(Some(_)) => return Ok(true),
                Ok(None) | Err(PortError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(PortError::Conflict)
    }

    /// Fires `s` if it is still due at `now`; false if another scheduler
    /// fired it first.
    async fn fire_if_due(&self, mut s: Schedule, now: DateTime<Utc>) -> PortResult<bool> {
        for _ in 0..MAX_TRIES {
            let Some(due) = s.next_due.filter(|d| *d <= now && !s.paused) else {
                return Ok(false);
            };
            let run = s.runs + 1;
            match self.claim_run(s.clone(), Some(due)).await {
                Ok(Some(_)) => return Ok(true),
                Ok(None) | Err(PortError::Conflict) | Err(PortError::NotFound) => {
                    let fresh = self.schedules.get_schedule(&s.id).await?;
                    let still_due = fresh.as_ref().is_some_and(|f| {
                        !f.paused && f.runs < run && f.next_due.is_some_and(|d| d <= now)
                    });
                    let claimed = fresh.as_ref().is_some_and(|f| f.runs >= run);
                    if !still_due && !claimed {
                        // Paused or deleted between storing the run's job and
                        // claiming it: that job belongs to no run.
                        self.cancel_unclaimed_run(&s.owner, &run_job_id(&s.id, run))
                            .await;
                    }
                    match fresh {
                        Some(fresh) => s = fresh,
                        None => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(PortError::Conflict)
    }

    async fn cancel_unclaimed_run(&self, owner: &str, job_id: &str) {
        let owner = Caller {
            subject: owner.to_string(),
            access: Access::unrestricted(),
        };
        match self.exports.cancel(&owner, job_id).await {
            Ok(()) => tracing::info!(job = %job_id, "unclaimed run cancelled"),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(job = %job_id, error = %e, "unclaimed run left"),
        }
    }

    /// Starts run `runs + 1` of `s` (for `due`, or on demand) and claims it
    /// with the schedule's conditional update. The job is stored first, under
    /// the run's fixed id: a scheduler that dies after storing it leaves a
    /// job the next claim of the same run finds, and a lost claim leaves
    /// the winner's job (the same one). `Ok(None)`: the schedule changed.
    async fn claim_run(
        &self,
        mut s: Schedule,
        due: Option<DateTime<Utc>>,
    ) -> PortResult<Option<String>> {
        let run = s.runs + 1;
        let job_id = run_job_id(&s.id, run);
        let run_of = RunOf {
            schedule_id: s.id.clone(),
            schedule_name: s.name.clone(),
            run,
            due_at: due,
        };
        self.start_run(&s, &job_id, run_of).await?;
        let now = self.clock.now();
        s.runs = run;
        if due.is_some() && due == s.next_due {
            // The next tick after now: missed ticks are not run one by one.
            s.next_due = s.cadence.next_after(s.start_at, now);
        }
        match self.schedules.update_schedule(&s).await {
            Ok(_) => {
                tracing::info!(schedule = %s.id, run, job = %job_id, "scheduled run started");
                // A run refused at start is announced by the claim's winner,
                // whichever scheduler stored it.
                if let Some(job) = self.jobs.get_job(&job_id).await? {
                    if job.state == JobState::Failed {
                        self.announcer.announce(&job).await;
                    }
                }
                Ok(Some(job_id))
            }
            Err(PortError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the run's job: queued, or failed with the cause when the
    /// owner may no longer make the request (the claim's winner announces
    /// a failed one).
    async fn start_run(&self, s: &Schedule, job_id: &str, run_of: RunOf) -> PortResult<()> {
        match self.jobs.get_job(job_id).await? {
            // An unclaimed run cancelled after a lost claim: this run is
            // new, so its job is made afresh (parts and all).
            Some(existing) if existing.state == JobState::Cancelled => {
                self.jobs.delete_job(job_id).await?;
            }
            // Stored by a racing or an earlier scheduler that may have died
            // before queuing its planning (planning twice is harmless).
            Some(existing) => {
                if existing.state == JobState::Queued {
                    self.desk.queue_planning(&existing).await?;
                }
                return Ok(());
            }
            None => {}
        }
        let now = self.clock.now();
        let since = match s.mode {
            ScheduleMode::Incremental => s.cursor,
            ScheduleMode::Full => None,
        };
        match self.run_request(s, since, now).await {
            Ok(request) => {
                let tt = self.desk.transaction_time_for(&request).await?;
                let mut job = self.desk.queued_job(job_id.into(), &s.owner, request, tt);
                job.run_of = Some(run_of);
                self.desk.start_job_once(&job).await?;
                Ok(())
            }
            Err(why) => {
                let url = s.request_url(&self.config.base_url);
                let level = crate::domain::request::ExportLevel::System;
                let mut job = self.desk.queued_job(
                    job_id.into(),
                    &s.owner,
                    ExportRequest::new(level, url),
                    now,
                );
                job.run_of = Some(run_of);
                job.state = JobState::Failed;
                job.error = Some(why.to_string());
                job.completed_at = Some(now);
                job.expires_at = Some(now + self.config.retention);
                match self.jobs.create_job(&job).await {
                    Ok(()) | Err(PortError::AlreadyExists) => {}
                    Err(e) => return Err(e),
                }
                tracing::warn!(job = %job.id, reason = job.error.as_deref().unwrap_or(""), "scheduled run refused");
                Ok(())
            }
        }
    }

    /// The run's export request, authorized with the owner's access as it
    /// stands now; `Err` says why the owner may no longer make it.
    async fn run_request(
        &self,
        s: &Schedule,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<ExportRequest, Error> {
        let owner = Caller {
            subject: s.owner.clone(),
            access: self.owner_access(&s.owner).await?,
        };
        let base_url = &self.config.base_url;
        let run = s
            .saved_export(base_url)?
            .for_run(s.request_url(base_url), since);
        self.authorized(&owner, run, now)
            .await
            .map_err(|e| e.within("The scheduled export was refused"))
    }

    /// A saved request as made at `now`, checked and authorized for
    /// `caller`.
    async fn authorized(
        &self,
        caller: &Caller,
        saved: SavedExport,
        now: DateTime<Utc>,
    ) -> Result<ExportRequest, Error> {
        match saved {
            SavedExport::Views(input) => self.views.view_export_request(caller, *input).await,
            SavedExport::Kickoff(request) => {
                let mut request = request.as_of(now)?;
                authorize_export(&caller.access, &mut request)?;
                self.desk.check_patients(&mut request).await?;
                Ok(request)
            }
        }
    }

    /// The owner's access as its registration stands now (open mode: all).
    async fn owner_access(&self, owner: &str) -> Result<Access, Error> {
        match self.clients.get_client(owner).await {
            Ok(Some(reg)) => Ok(Access::from_scopes(&reg.scope)
                .with_groups(reg.groups.map(|g| g.into_iter().collect()))
                .with_audit(reg.audit)),
            Ok(None) if !self.config.requires_access_token => Ok(Access::unrestricted()),
            Ok(None) => Err(Error::forbidden(format!(
                "The schedule's owner '{owner}' is no longer registered: its access was revoked"
            ))),
            Err(e) => Err(Error::unavailable(
                format!(
                    "The owner's registration could not be read: {}",
                    e.public_message()
                ),
                STORE_RETRY_SECS,
            )),
        }
    }

    /// A run as its schedule's run list shows it.
    pub fn scheduled_run_view(&self, job: &Job) -> Value {
        use crate::domain::instant::format_instant;
        let run = job.run_of.as_ref();
        let mut v = serde_json::json!({
            "run": run.map(|r| r.run),
            "jobId": job.id,
            "state": job.state,
            "dueAt": run.and_then(|r| r.due_at).map(format_instant),
            "createdAt": format_instant(job.created_at),
            "transactionTime": format_instant(job.transaction_time),
            "since": job.request.since.map(format_instant),
            "error": job.error,
            "status": crate::domain::job::status_url(&self.config.base_url, &job.id),
            "deliveries": job.deliveries,
        });
        if job.state == JobState::Completed {
            v["manifest"] = manifest(
                job,
                &self.config.base_url,
                self.config.requires_access_token,
            );
        }
        v
    }
}
