//! Processing work messages: planning, parts, finalizing.
//!
//! A part reads pages from its checkpointed position, streams lines into its
//! sink, and saves a checkpoint whenever something became durable. The save
//! is conditional on the part's version, so of two workers racing on one
//! part exactly one wins each checkpoint; the loser stops. Out of time, a
//! part checkpoints and queues its own continuation.

use super::accounting::save_usage;
use super::compartment::compartment_page;
use super::digest::sha256_hex;
use super::modify::{modify_job, Modified};
use super::{Announcer, Collector, EngineConfig};
use crate::domain::Error;
use crate::ports::{ArtifactStore, ClientStore, Clock, JobStore, ResourceStore, WorkQueue};
use std::sync::Arc;

use std::collections::{BTreeSet, HashMap};

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::sink::Sink;
use crate::domain::elements::subset;
use crate::domain::instant::to_micros;
use crate::domain::job::{
    job_prefix, patient_block_header, FileKind, Job, JobState, OutputFile, Part, PartSpec,
    Position, WorkMessage, PATIENT_BLOCKS,
};
use crate::domain::outcome::operation_outcome;
use crate::domain::request::ExportLevel;
use crate::domain::resource::compartment_patients;
use crate::domain::usage;
use crate::domain::view_export::TableFormat;
use crate::ports::{PortError, PortResult, ScanItem, ScanPage, ShardScan, TypesScan, Version};
use fhir_query::search::{matches_any, parse_type_filters, TypeFilter};
use fhir_query::view::output::{write_row, Line};

mod provenance;
mod revisions;

/// How a message was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    Done,
    /// Out of time: a checkpoint is saved and a continuation queued.
    Continued,
    /// Another handling of the part won a checkpoint first. It may yet die
    /// before it finishes or hands on, so this message must come back
    /// later rather than be deleted (a redelivered copy is the same SQS
    /// message: deleting it would delete the winner's too).
    Contended,
}

/// What becomes of a delivery once it was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled, or hopeless and its job failed: delete it.
    Done,
    /// Hand it out again after this delay.
    RetryAfter(Duration),
}

/// Handles queued work: plans jobs, runs their parts, finalizes them,
/// posts webhooks and collects garbage.
#[derive(Clone)]
pub struct Worker {
    pub(crate) announcer: Announcer,
    pub(crate) collector: Collector,
    pub(crate) resources: Arc<dyn ResourceStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) artifacts: Arc<dyn ArtifactStore>,
    /// Who authors are, for the audit export's user columns.
    pub(crate) clients: Arc<dyn ClientStore>,
    pub(crate) queue: Arc<dyn WorkQueue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Worker {
    /// Handles one delivery and decides its fate, the same way for the
    /// local workers and the worker Lambda. A failure that retrying can
    /// fix comes back with a growing delay; a permanent one, or the last
    /// allowed attempt, fails the job at once, with words a client may read
    /// (the backend's own text goes to the log only).
    ///
    /// What the handling consumed is added to its job's counters (a
    /// delayed collection's is not: its job may be gone).
    pub async fn process(
        &self,
        message: &WorkMessage,
        receive_count: u32,
        deadline: Instant,
    ) -> Disposition {
        let started = std::time::Instant::now();
        let (disposition, mut used) =
            usage::metered(self.dispose(message, receive_count, deadline)).await;
        if !matches!(message, WorkMessage::Collect { .. }) {
            used.add(usage::WORKER_HANDLINGS, 1.0);
            // Lambda bills by the millisecond, rounded up.
            used.add(
                usage::WORKER_MS,
                started.elapsed().as_micros().div_ceil(1000) as f64,
            );
            save_usage(&*self.jobs, message.job_id(), used).await;
        }
        disposition
    }

    async fn dispose(
        &self,
        message: &WorkMessage,
        receive_count: u32,
        deadline: Instant,
    ) -> Disposition {
        let error = match self.handle(message, deadline).await {
            Ok(WorkOutcome::Contended) => {
                return Disposition::RetryAfter(self.retry_delay(receive_count))
            }
            Ok(_) => return Disposition::Done,
            Err(e) => e,
        };
        if self.job_has_ended(message.job_id()).await {
            // Cancelled (or failed, or swept) under the work, which may have
            // lost its files or records to that: nothing of it is wanted.
            // Not a failure, and not retried; what it wrote is removed now.
            tracing::debug!(?message, %error, "work for an ended job stopped");
            if let Err(e) = self.collector.collect(message.job_id()).await {
                tracing::debug!(?message, error = %e, "left for the sweeper");
            }
            return Disposition::Done;
        }
        let permanent = matches!(
            error,
            PortError::Permanent { .. } | PortError::Unsupported(_)
        );
        let reason = if permanent {
            format!("The export failed: {}.", error.public_message())
        } else if receive_count >= self.config.max_attempts {
            format!(
                "The export failed after {receive_count} attempts: {}.",
                error.public_message()
            )
        } else {
            let delay = self.retry_delay(receive_count);
            tracing::warn!(?message, %error, receive_count, ?delay, "work failed; it will be retried");
            return Disposition::RetryAfter(delay);
        };
        tracing::error!(?message, %error, receive_count, "work failed for good");
        match self.fail_job(message.job_id(), &reason).await {
            Ok(()) => Disposition::Done,
            Err(_) => Disposition::RetryAfter(self.retry_delay(receive_count)),
        }
    }

    /// Whether the job is known to want no more work: cancelled, failed or
    /// gone. A store that cannot say is taken to mean it may still.
    async fn job_has_ended(&self, job_id: &str) -> bool {
        match self.jobs.get_job(job_id).await {
            Ok(None) => true,
            Ok(Some(job)) => matches!(job.state, JobState::Cancelled | JobState::Failed),
            Err(_) => false,
        }
    }

    /// Exponential backoff from `retry_base`, at most `retry_max`.
    pub fn retry_delay(&self, receive_count: u32) -> Duration {
        let factor = 1u32 << receive_count.saturating_sub(1).min(16);
        (self.config.retry_base * factor).min(self.config.retry_max)
    }

    /// Handles one work message. An error means "retry later" (leave the
    /// message on the queue); the checkpoint makes the retry resume.
    pub async fn handle(
        &self,
        message: &WorkMessage,
        deadline: Instant,
    ) -> PortResult<WorkOutcome> {
        match message {
            WorkMessage::Plan { job_id } => self.plan(job_id, deadline).await,
            WorkMessage::Part { job_id, index } => self.run_part(job_id, *index, deadline).await,
            WorkMessage::Collect { job_id } => self
                .collector
                .collect(job_id)
                .await
                .map(|_| WorkOutcome::Done),
            WorkMessage::Announce { job_id } => {
                self.announcer.post_webhook(job_id).await;
                Ok(WorkOutcome::Done)
            }
        }
    }

    pub(crate) async fn run_part(
        &self,
        job_id: &str,
        index: u32,
        deadline: Instant,
    ) -> PortResult<WorkOutcome> {
        let Some(job) = self.jobs.get_job(job_id).await? else {
            return Ok(WorkOutcome::Done);
        };
        match job.state {
            JobState::Running => {}
            JobState::Queued => return Ok(WorkOutcome::Done),
            // A late duplicate: sweep up what a straggler may have left.
            _ => {
                return self
                    .collector
                    .collect(job_id)
                    .await
                    .map(|_| WorkOutcome::Done)
            }
        }
        let Some(mut part) = self.jobs.get_part(job_id, index).await? else {
            return Ok(WorkOutcome::Done);
        };
        if part.done {
            self.finalize(job_id).await?;
            return Ok(WorkOutcome::Done);
        }
        tracing::debug!(job = %job_id, part = index, "part started");
        let mut sink = Sink::resume(self, &part);
        if let Some(views) = &job.request.views {
            sink.describe_views(views);
        }
        if sink.needs_claim() {
            // The checkpoint names uploads a rival handling may be using:
            // claim them (fresh chunk numbers) before writing anything.
            if !sink.load_spills().await? || !self.save_checkpoint(&mut part, &mut sink).await? {
                return Ok(WorkOutcome::Contended);
            }
            sink.complete_sealed().await?;
        }
        let result = self.drive(&job, part, &mut sink, deadline).await;
        if matches!(result, Ok(Driven::LostRace)) {
            // Only a lost race is certain; after an error the checkpoint
            // write may still have landed, and garbage collection at
            // completion removes what is left.
            sink.discard_unrecorded().await;
        }
        Ok(match result? {
            Driven::Paused => WorkOutcome::Continued,
            Driven::LostRace => WorkOutcome::Contended,
            Driven::Finished | Driven::Stopped => WorkOutcome::Done,
        })
    }

    async fn drive(
        &self,
        job: &Job,
        mut part: Part,
        sink: &mut Sink<'_>,
        deadline: Instant,
    ) -> PortResult<Driven> {
        let mut reader = PartReader::new(self, job);
        // At least one page per invocation, however little time is left:
        // otherwise a part could pass its continuation on forever.
        let mut progressed = false;
        loop {
            if part.checkpoint.position == Position::Finished {
                break;
            }
            if progressed && Instant::now() >= deadline {
                if !self.save_checkpoint(&mut part, sink).await? {
                    return Ok(Driven::LostRace);
                }
                sink.complete_sealed().await?;
                self.queue
                    .send(&[WorkMessage::Part {
                        job_id: job.id.clone(),
                        index: part.index,
                    }])
                    .await?;
                return Ok(Driven::Paused);
            }
            reader
                .next_page(&part.spec, &mut part.checkpoint, sink)
                .await?;
            progressed = true;
            if sink.end_of_page().await? {
                if !self.save_checkpoint(&mut part, sink).await? {
                    return Ok(Driven::LostRace);
                }
                sink.complete_sealed().await?;
                if !self.still_running(&job.id).await? {
                    // Cancelled (or failed): nothing of it is wanted any more.
                    self.artifacts.delete_prefix(&job_prefix(&job.id)).await?;
                    return Ok(Driven::Stopped);
                }
            }
        }
        sink.finish().await?;
        if sink.has_sealed() {
            // The last files are completed only once a checkpoint sealing
            // them has won.
            if !self.save_checkpoint(&mut part, sink).await? {
                return Ok(Driven::LostRace);
            }
            sink.complete_sealed().await?;
        }
        part.checkpoint.files = sink.files.clone();
        part.checkpoint.next_file_seq = sink.next_file_seq;
        part.checkpoint.output = None;
        part.checkpoint.deleted = None;
        part.checkpoint.sealed = Vec::new();
        let remaining = match self.jobs.complete_part(&part).await {
            Ok(n) => n,
            Err(PortError::Conflict) => return Ok(Driven::LostRace),
            Err(e) => return Err(e),
        };
        sink.checkpoint_saved().await;
        tracing::debug!(job = %job.id, part = part.index, remaining, "part finished");
        if remaining == 0 {
            self.finalize(&job.id).await?;
        }
        if !self.still_running_or_done(&job.id).await? {
            // Cancelled while this part was finishing: leave nothing behind.
            self.artifacts.delete_prefix(&job_prefix(&job.id)).await?;
        }
        Ok(Driven::Finished)
    }

    /// Settles the sink and saves the part's checkpoint; `false` when
    /// another handling got there first.
    async fn save_checkpoint(&self, part: &mut Part, sink: &mut Sink<'_>) -> PortResult<bool> {
        sink.settle().await?;
        let (output, deleted, sealed) = sink.checkpoint_state();
        part.checkpoint.output = output;
        part.checkpoint.deleted = deleted;
        part.checkpoint.sealed = sealed;
        part.checkpoint.files = sink.files.clone();
        part.checkpoint.next_file_seq = sink.next_file_seq;
        match self.jobs.save_part(part).await {
            Ok(saved) => {
                *part = saved;
                sink.checkpoint_saved().await;
                Ok(true)
            }
            Err(PortError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn still_running(&self, job_id: &str) -> PortResult<bool> {
        Ok(matches!(self.jobs.get_job(job_id).await?, Some(j) if j.state == JobState::Running))
    }

    async fn still_running_or_done(&self, job_id: &str) -> PortResult<bool> {
        Ok(matches!(
            self.jobs.get_job(job_id).await?,
            Some(j) if matches!(j.state, JobState::Running | JobState::Completed)
        ))
    }

    /// Marks a job failed (a message that kept failing); its files go at expiry.
    pub async fn fail_job(&self, job_id: &str, reason: &str) -> Result<(), Error> {
        let expires_at = self.clock.now() + self.config.retention;
        let failed = modify_job(&*self.jobs, job_id, |job| {
            if !job.is_active() {
                return Ok::<_, PortError>(false);
            }
            job.state = JobState::Failed;
            job.error = Some(reason.to_string());
            job.expires_at = Some(expires_at);
            Ok(true)
        })
        .await?;
        if let Modified::Saved(job) = failed {
            tracing::error!(job = %job_id, reason, "export failed");
            self.announcer.announce(&job).await;
            self.collector.collect_later(job_id).await?;
        }
        Ok(())
    }

    /// Writes the manifest once every part is done (idempotent).
    pub(crate) async fn finalize(&self, job_id: &str) -> PortResult<()> {
        let Some(job) = self.jobs.get_job(job_id).await? else {
            return Ok(());
        };
        if job.state == JobState::Completed {
            return self.collector.collect_garbage(&job).await;
        }
        if job.state != JobState::Running || job.parts_remaining > 0 {
            return Ok(());
        }
        let Some(files) = self.manifest_files(&job).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        let completed = modify_job(&*self.jobs, job_id, |job| {
            if job.state != JobState::Running || job.parts_remaining > 0 {
                return Ok::<_, PortError>(false);
            }
            job.files = files.clone();
            job.state = JobState::Completed;
            job.completed_at = Some(now);
            job.expires_at = Some(now + self.config.retention);
            Ok(true)
        })
        .await?;
        match completed {
            Modified::Saved(job) => {
                tracing::info!(job = %job_id, files = job.files.len(), "export completed");
                self.announcer.announce(&job).await;
                self.collector.collect_garbage(&job).await?;
                self.collector.collect_later(job_id).await
            }
            // Completed by a twin meanwhile.
            Modified::Unchanged(job) if job.state == JobState::Completed => {
                self.collector.collect_garbage(&job).await
            }
            _ => Ok(()),
        }
    }

    /// The manifest's files, in manifest order, once every part is done
    /// (`None`: one is not).
    async fn manifest_files(&self, job: &Job) -> PortResult<Option<Vec<OutputFile>>> {
        let parts = self.jobs.list_parts(&job.id).await?;
        if parts.iter().any(|p| !p.done) {
            return Ok(None);
        }
        let mut files: Vec<OutputFile> =
            parts.into_iter().flat_map(|p| p.checkpoint.files).collect();
        if !job.request.lenient_issues.is_empty() || !job.request.excluded_patients.is_empty() {
            files.push(self.write_error_file(job).await?);
        }
        files.sort_by(|a, b| {
            (a.kind as u8, &a.resource_type, &a.name).cmp(&(
                b.kind as u8,
                &b.resource_type,
                &b.name,
            ))
        });
        Ok(Some(files))
    }

    /// The manifest's `error` file: one OperationOutcome per problem the
    /// export went on without.
    async fn write_error_file(&self, job: &Job) -> PortResult<OutputFile> {
        let outcomes: Vec<Value> = job
            .request
            .lenient_issues
            .iter()
            .map(|issue| operation_outcome("warning", "not-supported", issue))
            .chain(job.request.excluded_patients.iter().map(|p| {
                operation_outcome(
                    "error",
                    "not-found",
                    &excluded_patient_message(p, &job.request.level),
                )
            }))
            .collect();
        let mut text = String::new();
        for outcome in &outcomes {
            text.push_str(&outcome.to_string());
            text.push('\n');
        }
        let name = "OperationOutcome-errors.ndjson".to_string();
        let sha256 = sha256_hex(text.as_bytes());
        self.artifacts
            .put(
                &crate::domain::job::artifact_key(&job.id, &name),
                text.into(),
            )
            .await?;
        Ok(OutputFile {
            kind: FileKind::Error,
            resource_type: "OperationOutcome".into(),
            name,
            source_type: None,
            count: outcomes.len() as u64,
            gzip: false,
            sha256: Some(sha256),
            gzip_sha256: None,
        })
    }
}

/// The export's `_typeFilter`s by type (checked at kick-off; a query that
/// no longer parses filters nothing).
fn type_filters(queries: &[String]) -> HashMap<String, Vec<TypeFilter>> {
    let mut by_type: HashMap<String, Vec<TypeFilter>> = HashMap::new();
    for q in queries {
        if let Ok((filters, _)) = parse_type_filters(q) {
            for f in filters {
                by_type.entry(f.resource_type.clone()).or_default().push(f);
            }
        }
    }
    by_type
}

/// One message whether the patient does not exist or is not a member, so
/// the manifest never tells a client more than it could read itself.
fn excluded_patient_message(patient: &str, level: &ExportLevel) -> String {
    let population = match level {
        ExportLevel::Group { group_id } => format!("Group/{group_id}"),
        _ => "this export".to_string(),
    };
    format!(
        "patient: Patient/{patient} is not a patient of {population}; nothing was exported for it"
    )
}

/// Attempts at one page of a mixed part before the part fails: a failed
/// mixed part starts over, so a transient error is worth retrying here
/// rather than losing every page read so far.
const MIXED_READ_ATTEMPTS: u32 = 3;

async fn read_mixed_page(
    store: &dyn crate::ports::ResourceStore,
    scan: TypesScan<'_>,
) -> PortResult<ScanPage> {
    let mut attempt = 1;
    loop {
        match store.scan_types(scan.clone()).await {
            Err(e) if e.is_retryable() && attempt < MIXED_READ_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "a mixed part's read failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2u64 << attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// After a page of a shard scan: the next page of the same shard if the
/// scan goes on, else the next shard; and the progress it made.
fn advance_shard_cursor(cp: &mut crate::domain::job::Checkpoint, shard: u16, page: &ScanPage) {
    cp.position = match page.items.last() {
        Some(v) if page.more => Position::Shard {
            shard,
            after: Some(v.last_updated),
        },
        _ => Position::Shard {
            shard: shard + 1,
            after: None,
        },
    };
    cp.progress_done += page.len() as u64;
}

/// Where a patient part stands: type index, patient index, the last id read
/// in that compartment, and whether the patient's block is open. Any other
/// position is past the end.
fn patient_cursor(
    position: &Position,
    types: usize,
    patients: usize,
) -> (usize, usize, Option<String>, bool) {
    match position {
        Position::Start => (0, 0, None, false),
        Position::Patients {
            type_index,
            patient_index,
            after_id,
            block_started,
        } => (
            *type_index,
            *patient_index,
            after_id.clone(),
            *block_started,
        ),
        _ => (types, patients, None, false),
    }
}

/// Moves a patient part's cursor past a page. A full page goes on after its
/// last id. Otherwise the compartment is done: organized by patient, the
/// same patient's next type follows (its block stays open), then the next
/// patient; if not, the same type's next patient, then the next type.
fn advance_patient_cursor(
    cp: &mut crate::domain::job::Checkpoint,
    (ti, pi): (usize, usize),
    (types, patients): (usize, usize),
    (page_full, last_id): (bool, Option<String>),
    organized: bool,
    block_started: bool,
) {
    cp.position = match (page_full, organized) {
        (true, _) => Position::Patients {
            type_index: ti,
            patient_index: pi,
            after_id: last_id,
            block_started,
        },
        (false, false) => {
            cp.progress_done += 1;
            if pi + 1 < patients {
                Position::Patients {
                    type_index: ti,
                    patient_index: pi + 1,
                    after_id: None,
                    block_started: false,
                }
            } else {
                Position::Patients {
                    type_index: ti + 1,
                    patient_index: 0,
                    after_id: None,
                    block_started: false,
                }
            }
        }
        (false, true) => {
            cp.progress_done += 1;
            if ti + 1 < types {
                Position::Patients {
                    type_index: ti + 1,
                    patient_index: pi,
                    after_id: None,
                    block_started,
                }
            } else {
                Position::Patients {
                    type_index: 0,
                    patient_index: pi + 1,
                    after_id: None,
                    block_started: false,
                }
            }
        }
    };
}

enum Driven {
    Finished,
    Paused,
    LostRace,
    Stopped,
}

/// Reads a part's pages as of the job's transaction time.
struct PartReader<'a> {
    engine: &'a Worker,
    job: &'a Job,
    as_of: i64,
    since: Option<i64>,
    /// Export patients, for choosing the one part that writes a resource
    /// shared by several of them (loaded on first need).
    patient_set: Option<BTreeSet<String>>,
    patient_exists: HashMap<String, bool>,
    /// For `includeAssociatedData` (loaded on first need): the export's
    /// types, which Provenance targets are exported, and per target the
    /// latest Provenance's id.
    export_types: Option<Vec<String>>,
    target_exported: HashMap<(String, String), bool>,
    latest_provenance: Option<HashMap<(String, String), String>>,
    /// `_typeFilter`s by type: a resource of a filtered type is written
    /// only if one of its type's filters matches it.
    type_filters: HashMap<String, Vec<TypeFilter>>,
    /// `$export-revisions`: the open merge of the audit trail's streams,
    /// and the authors looked up so far.
    revisions: Option<revisions::RevisionMerge>,
    people: HashMap<String, std::sync::Arc<revisions::Person>>,
    /// `$viewdefinition-export`: the views, by name, parsed once.
    views: Vec<(String, fhir_query::view::View)>,
    row_lines: Line,
}

impl<'a> PartReader<'a> {
    fn new(engine: &'a Worker, job: &'a Job) -> Self {
        PartReader {
            engine,
            job,
            as_of: super::as_of_micros(job),
            since: job.request.since.map(to_micros),
            patient_set: None,
            patient_exists: HashMap::new(),
            export_types: None,
            target_exported: HashMap::new(),
            latest_provenance: None,
            type_filters: type_filters(&job.request.type_filters),
            revisions: None,
            people: HashMap::new(),
            views: job
                .request
                .views
                .iter()
                .flat_map(|e| &e.views)
                .filter_map(|v| {
                    Some((
                        v.name.clone(),
                        fhir_query::view::View::parse(&v.definition).ok()?,
                    ))
                })
                .collect(),
            row_lines: match job.request.views.as_ref().map(|e| e.format) {
                Some(TableFormat::Csv) => Line::Csv,
                Some(TableFormat::Parquet) => Line::Array,
                _ => Line::Object,
            },
        }
    }

    /// Reads the next page and writes its lines into `sink`.
    async fn next_page(
        &mut self,
        spec: &PartSpec,
        cp: &mut crate::domain::job::Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        match spec {
            PartSpec::Shards {
                resource_type,
                first_shard,
                last_shard,
                after,
                until,
                empty_shards,
            } => {
                let shards = (*first_shard, *last_shard, *empty_shards);
                let range = (*after, *until);
                self.shard_page(resource_type, shards, range, cp, sink)
                    .await
            }
            PartSpec::Mixed {
                types,
                first_shard,
                last_shard,
                empty_shards,
            } => {
                let shards = (*first_shard, *last_shard, *empty_shards);
                self.mixed_part(types, shards, cp, sink).await
            }
            PartSpec::Patients { types, patients } => {
                self.patient_page(types, patients, cp, sink).await
            }
            PartSpec::Provenance { latest_only } => {
                self.provenance_page(*latest_only, cp, sink).await
            }
            PartSpec::Revisions { types } => self.revisions_page(types, cp, sink).await,
        }
    }

    async fn shard_page(
        &mut self,
        resource_type: &str,
        (first, last, empty): (u16, u16, u64),
        (range_after, until): (Option<i64>, Option<i64>),
        cp: &mut crate::domain::job::Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let (mut shard, after) = match &cp.position {
            Position::Start => (first, None),
            Position::Shard { shard, after } => (*shard, *after),
            _ => (last + 1, None),
        };
        // Shards that were empty when planned hold nothing as of the
        // snapshot (planning follows it): they are passed over unread.
        while shard <= last && !crate::ports::reads_shard(shard, first, last, empty) {
            shard += 1;
        }
        if shard > last {
            cp.position = Position::Finished;
            return Ok(());
        }
        let limit = self.engine.config.page_size;
        let page = self
            .engine
            .resources
            .scan_shard(ShardScan {
                resource_type,
                shard,
                // A part's range starts inside the `_since` window already.
                after: after.or(range_after).or(self.since),
                until,
                as_of: self.as_of,
                include_deleted: self.since.is_some(),
                limit,
            })
            .await?;
        advance_shard_cursor(cp, shard, &page);
        let as_stored = self.writes_bodies_as_stored(resource_type);
        for item in &page.items {
            self.write_scanned(sink, resource_type, as_stored, &page, item)
                .await?;
        }
        Ok(())
    }

    /// A mixed part in one step: every shard's key range of its types is
    /// read into memory (the planner keeps such parts small), then written
    /// type by type, so each type gets one file however the shards
    /// interleave them. A resumed handling starts it over: nothing it wrote
    /// counts until the checkpoint that ends the part.
    async fn mixed_part(
        &mut self,
        types: &[String],
        (first, last, empty): (u16, u16, u64),
        cp: &mut crate::domain::job::Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let store = &self.engine.resources;
        let mut pages = Vec::new();
        for shard in (first..=last).filter(|&s| crate::ports::reads_shard(s, first, last, empty)) {
            let mut after = None;
            loop {
                let scan = TypesScan {
                    types,
                    shard,
                    after,
                    as_of: self.as_of,
                };
                let page = read_mixed_page(store.as_ref(), scan).await?;
                after = page.items.last().map(|v| (v.type_index, v.last_updated));
                let more = page.more;
                pages.push(page);
                if !more || after.is_none() {
                    break;
                }
            }
        }
        for (index, resource_type) in types.iter().enumerate() {
            let as_stored = self.writes_bodies_as_stored(resource_type);
            for page in &pages {
                for item in page.items.iter().filter(|v| v.type_index as usize == index) {
                    self.write_scanned(sink, resource_type, as_stored, page, item)
                        .await?;
                }
            }
        }
        cp.progress_done += pages.iter().map(|p| p.len() as u64).sum::<u64>();
        cp.position = Position::Finished;
        Ok(())
    }

    /// Reads the next page of one type's resources in one patient's
    /// compartment and writes the wanted ones, in a block of their own when
    /// organized by patient.
    async fn patient_page(
        &mut self,
        types: &[String],
        patients: &[String],
        cp: &mut crate::domain::job::Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let organized = self.job.request.organize_by_patient;
        let (ti, pi, after_id, block_started) =
            patient_cursor(&cp.position, types.len(), patients.len());
        if ti >= types.len() || pi >= patients.len() {
            cp.position = Position::Finished;
            return Ok(());
        }
        let (resource_type, patient) = (&types[ti], &patients[pi]);
        let (versions, page_full, last_id) = self
            .read_compartment_page(resource_type, patient, after_id.as_deref())
            .await?;
        let wanted = self
            .wanted_versions(resource_type, patient, versions)
            .await?;
        // Organized by patient, a block opens (in a file that may roll over
        // only between blocks) with its header, before its first line.
        let opens_block = organized && !block_started && wanted.iter().any(|v| !v.deleted);
        if opens_block {
            sink.end_block().await?;
            let header = patient_block_header(patient);
            sink.push(FileKind::Output, PATIENT_BLOCKS, header.as_bytes())
                .await?;
        }
        let block_started = block_started || opens_block;
        advance_patient_cursor(
            cp,
            (ti, pi),
            (types.len(), patients.len()),
            (page_full, last_id),
            organized,
            block_started,
        );
        for v in wanted {
            self.emit(sink, resource_type, &v.id, v.body.as_deref())
                .await?;
        }
        Ok(())
    }

    /// One page of `patient`'s versions of `resource_type` as of the
    /// snapshot (see [`compartment_page`]).
    async fn read_compartment_page(
        &self,
        resource_type: &str,
        patient: &str,
        after_id: Option<&str>,
    ) -> PortResult<(Vec<Version>, bool, Option<String>)> {
        let store = self.engine.resources.as_ref();
        let limit = self.engine.config.page_size;
        compartment_page(store, resource_type, patient, after_id, limit, self.as_of).await
    }

    /// The versions of a page this part writes: changed since `_since`
    /// (deletions only with `_since`), written under this patient rather
    /// than another one of the export (see [`PartReader::belongs_here`]),
    /// and through the type's `_typeFilter`s.
    async fn wanted_versions(
        &mut self,
        resource_type: &str,
        patient: &str,
        versions: Vec<Version>,
    ) -> PortResult<Vec<Version>> {
        let mut wanted = Vec::with_capacity(versions.len());
        for v in versions {
            if v.deleted && self.since.is_none() {
                continue;
            }
            if self.since.is_some_and(|s| v.last_updated <= s) {
                continue;
            }
            if resource_type != "Patient" && !self.belongs_here(resource_type, patient, &v).await? {
                continue;
            }
            if !self.passes_type_filters(resource_type, v.body.as_deref())? {
                continue;
            }
            wanted.push(v);
        }
        Ok(wanted)
    }

    /// True when `v` is in `patient`'s compartment and `patient` is the
    /// first (by id) export patient it belongs to, so a resource shared by
    /// several patients is written exactly once.
    async fn belongs_here(
        &mut self,
        resource_type: &str,
        patient: &str,
        v: &Version,
    ) -> PortResult<bool> {
        let body = if v.deleted {
            let store = &self.engine.resources;
            store
                .read_live_before(resource_type, &v.id, v.version)
                .await?
                .and_then(|l| l.body)
        } else {
            v.body.clone()
        };
        let Some(body) = body else { return Ok(false) };
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?;
        let refs = compartment_patients(resource_type, &value);
        if !refs.iter().any(|r| r == patient) {
            return Ok(false);
        }
        for other in refs.iter().take_while(|r| r.as_str() < patient) {
            if self.in_export(other).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn in_export(&mut self, patient: &str) -> PortResult<bool> {
        if self.job.request.named_patients().is_some()
            || matches!(self.job.request.level, ExportLevel::Group { .. })
        {
            if self.patient_set.is_none() {
                let set = self
                    .engine
                    .export_patients(self.job, &self.job.request.level)
                    .await?;
                self.patient_set = Some(set.into_iter().collect());
            }
            return Ok(self
                .patient_set
                .as_ref()
                .is_some_and(|s| s.contains(patient)));
        }
        if let Some(&known) = self.patient_exists.get(patient) {
            return Ok(known);
        }
        let exists = matches!(
            self.engine.resources.read_as_of("Patient", patient, self.as_of).await?,
            Some(v) if !v.deleted
        );
        self.patient_exists.insert(patient.to_string(), exists);
        Ok(exists)
    }

    /// Writes one scanned version: its stored body as it is when
    /// `as_stored` (see [`PartReader::writes_bodies_as_stored`]), otherwise
    /// through its type's filters and [`PartReader::emit`].
    async fn write_scanned(
        &self,
        sink: &mut Sink<'_>,
        resource_type: &str,
        as_stored: bool,
        page: &ScanPage,
        item: &ScanItem,
    ) -> PortResult<()> {
        let body = page.body(item);
        match body {
            Some(body) if as_stored => {
                sink.push(FileKind::Output, resource_type, body.as_bytes())
                    .await
            }
            _ if self.passes_type_filters(resource_type, body)? => {
                self.emit(sink, resource_type, page.id(item), body).await
            }
            _ => Ok(()),
        }
    }

    /// Whether a type's stored bodies are its lines as they are: no view,
    /// `_typeFilter`, `_elements` or blocks by patient. Decided once per
    /// page, not per resource, as [`PartReader::emit`] would.
    fn writes_bodies_as_stored(&self, resource_type: &str) -> bool {
        self.views.is_empty()
            && self.job.request.views.is_none()
            && !self.job.request.organize_by_patient
            && !self.type_filters.contains_key(resource_type)
            && self.job.request.elements.for_type(resource_type).is_none()
    }

    /// Whether a version passes its type's `_typeFilter`s (deletions, and
    /// types without a filter, always do).
    fn passes_type_filters(&self, resource_type: &str, body: Option<&str>) -> PortResult<bool> {
        let (Some(filters), Some(body)) = (self.type_filters.get(resource_type), body) else {
            return Ok(true);
        };
        let value: Value = serde_json::from_str(body)
            .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?;
        Ok(matches_any(filters, &value))
    }

    /// Writes one version: a body (whole, or reduced by `_elements`), or for
    /// a deletion (no body) a transaction Bundle with its DELETE entry.
    async fn emit(
        &self,
        sink: &mut Sink<'_>,
        resource_type: &str,
        id: &str,
        body: Option<&str>,
    ) -> PortResult<()> {
        if self.job.request.views.is_some() {
            return self.emit_rows(sink, resource_type, id, body).await;
        }
        let Some(body) = body else {
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{ "request": { "method": "DELETE", "url": format!("{resource_type}/{id}") } }]
            });
            return sink
                .push(
                    FileKind::Deleted,
                    resource_type,
                    bundle.to_string().as_bytes(),
                )
                .await;
        };
        let file_type = if self.job.request.organize_by_patient {
            PATIENT_BLOCKS
        } else {
            resource_type
        };
        match self.job.request.elements.for_type(resource_type) {
            None => {
                sink.push(FileKind::Output, file_type, body.as_bytes())
                    .await
            }
            Some(keep) => {
                let subset = subset(body, resource_type, &keep)
                    .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?;
                sink.push(FileKind::Output, file_type, subset.as_bytes())
                    .await
            }
        }
    }

    /// A view export writes each view's rows of the resource to the view's
    /// files; deletions make no rows.
    async fn emit_rows(
        &self,
        sink: &mut Sink<'_>,
        resource_type: &str,
        id: &str,
        body: Option<&str>,
    ) -> PortResult<()> {
        let Some(body) = body else { return Ok(()) };
        for (name, view) in &self.views {
            if view.resource_type != resource_type {
                continue;
            }
            // Only what the view reads is parsed.
            let value = view
                .read_resource(body)
                .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?;
            let rows = view.rows(&value).map_err(|e| {
                PortError::permanent(
                    format!("view '{name}' failed on {resource_type}/{id}: {e}"),
                    e.to_string(),
                )
            })?;
            let mut line = Vec::new();
            for row in &rows {
                line.clear();
                write_row(view.columns(), row, self.row_lines, &mut line);
                if self.row_lines == Line::Csv {
                    // RFC 4180 lines end in CRLF; the sink adds the LF.
                    line.push(b'\r');
                }
                sink.push(FileKind::Output, name, &line).await?;
            }
        }
        Ok(())
    }
}
