//! Export jobs, their parts and checkpoints, and the manifest.
//!
//! A job is split into parts (a resource type's shard range, or a chunk of
//! patients). A part's [`Checkpoint`] records exactly what is durably
//! written: the read position, the multipart uploads in flight with their
//! uploaded chunks, and the finished files. Resuming from it neither loses
//! nor repeats a resource.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::instant::format_instant;
use super::request::ExportRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not yet planned.
    Queued,
    /// Planned into parts; parts are being processed.
    Running,
    Completed,
    Failed,
    /// Cancelled by its owner: answers 404 until the sweeper removes it.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Output,
    Deleted,
    Error,
}

/// A finished file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub kind: FileKind,
    pub resource_type: String,
    /// File name, unique within the job (the artifact key is derived from it).
    pub name: String,
    /// For deletion files (`resource_type` "Bundle"): the type deleted, so
    /// downloads can be checked against the caller's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    pub count: u64,
    /// A gzip twin of the file exists (`engine::gzip_twin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gzip: bool,
    /// The SHA-256 of the file's bytes, lowercase hex: the manifest's
    /// `extension.sha256` (`None` for files written before digests were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The SHA-256 of the gzip twin's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The subject (client) that started the export; only it may see the job.
    pub owner: String,
    pub request: ExportRequest,
    pub state: JobState,
    /// The instant the export is consistent as of.
    pub transaction_time: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// From this instant the job and its files are gone (checked on read).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub parts_total: u32,
    /// Decremented atomically as parts finish; the part that brings it to 0
    /// writes the manifest.
    #[serde(default)]
    pub parts_remaining: u32,
    #[serde(default)]
    pub files: Vec<OutputFile>,
    #[serde(default)]
    pub error: Option<String>,
    /// What planning read from live store metadata, fixed on the job before
    /// any part is written (see [`PlanInputs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_inputs: Option<PlanInputs>,
    /// A schedule's run: which schedule, which run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_of: Option<super::schedule::RunOf>,
    /// Each attempt to deliver the job's completion event to a webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<super::schedule::DeliveryAttempt>,
    /// Optimistic-concurrency version; every store write checks it.
    #[serde(default)]
    pub version: u64,
}

/// The part of a plan that is not a function of the data as of the
/// transaction time: the stored types, and the shard segments (and their
/// sizes) of a type, which come from live counters. A planner fixes them on
/// the job first, with a conditional write; every planner of the job (a
/// redelivered plan message, a twin) then makes exactly the same parts from
/// them and from as-of reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanInputs {
    /// The types the export writes.
    pub types: Vec<String>,
    /// Parts that do not depend on patients, with their progress totals:
    /// a system export's shard segments, the associated-data part.
    #[serde(default)]
    pub fixed_parts: Vec<(PartSpec, u64)>,
}

impl Job {
    /// The key under which an identical request by the same owner finds
    /// this job for reuse, while it is queued, running or completed (a
    /// failed or cancelled job is never reused). The request is compared
    /// without its URL, with its lists in a canonical order.
    pub fn reuse_key(&self) -> Option<String> {
        matches!(
            self.state,
            JobState::Queued | JobState::Running | JobState::Completed
        )
        .then(|| reuse_key(&self.owner, &self.request))
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Queued or running: it counts against its owner's limit.
    pub fn is_active(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }

    /// Whether the owner may still see this job at `now`.
    pub fn is_visible(&self, now: DateTime<Utc>) -> bool {
        self.state != JobState::Cancelled && !self.is_expired(now)
    }
}

/// The `type` of the files of an export organized by patient, which hold
/// blocks of every type (it names the files; the manifest omits it).
pub const PATIENT_BLOCKS: &str = "PatientBlocks";

/// The `type` of the audit trail's CSV (`$export-revisions`), and its name.
pub const REVISIONS: &str = "Revisions";
pub const REVISIONS_FILE: &str = "revisions.csv";

/// The header line that opens a patient's block (`organizeOutputBy`).
pub fn patient_block_header(patient: &str) -> String {
    json!({
        "resourceType": "Parameters",
        "parameter": [{ "name": "header", "valueReference": { "reference": format!("Patient/{patient}") } }]
    })
    .to_string()
}

/// The media type a job's file is served with, by its name (a gzip twin
/// is its file's type, sent with `Content-Encoding: gzip`).
pub fn content_type_of(key: &str) -> &'static str {
    let key = key.strip_suffix(".gz").unwrap_or(key);
    if key.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else if key.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else {
        "application/fhir+ndjson"
    }
}

/// Artifact key of a job's file: every file of a job sits under its prefix.
pub fn artifact_key(job_id: &str, name: &str) -> String {
    format!("{}{name}", job_prefix(job_id))
}

pub fn job_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}/")
}

/// The URL of a job's file on the service's own file endpoint.
pub fn file_url(base_url: &str, job_id: &str, name: &str) -> String {
    format!("{base_url}/$export-jobs/{job_id}/files/{name}")
}

pub fn status_url(base_url: &str, job_id: &str) -> String {
    format!("{base_url}/$export-jobs/{job_id}")
}

/// The completion manifest of the Bulk Data IG.
pub fn manifest(job: &Job, base_url: &str, requires_access_token: bool) -> Value {
    manifest_of(job, &job.files, base_url, requires_access_token)
}

/// The completion manifest with each file's `url` given by `url_of`: a
/// presigned link, or a name in a delivery folder, instead of the file
/// endpoint's URL.
pub fn manifest_with_urls(
    job: &Job,
    requires_access_token: bool,
    url_of: &dyn Fn(&OutputFile) -> String,
) -> Value {
    manifest_listing(job, &job.files, requires_access_token, url_of)
}

/// A manifest listing `files` of `job`.
fn manifest_of(
    job: &Job,
    files: &[OutputFile],
    base_url: &str,
    requires_access_token: bool,
) -> Value {
    manifest_listing(job, files, requires_access_token, &|f| {
        file_url(base_url, &job.id, &f.name)
    })
}

/// The key of a manifest item's `extension` that holds the SHA-256 of the
/// file's bytes (64 lowercase hex digits).
pub const SHA256_EXTENSION: &str = "sha256";

fn manifest_listing(
    job: &Job,
    files: &[OutputFile],
    requires_access_token: bool,
    url_of: &dyn Fn(&OutputFile) -> String,
) -> Value {
    let entries = |kind: FileKind| -> Vec<Value> {
        files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                let mut entry = json!({
                    "url": url_of(f),
                    "count": f.count,
                });
                // Files organized by patient mix types: the IG omits `type`.
                if !(job.request.organize_by_patient && kind == FileKind::Output) {
                    entry["type"] = json!(f.resource_type);
                }
                // The IG reserves `extension` (a JSON object) for servers.
                if let Some(sha256) = &f.sha256 {
                    entry["extension"] = json!({ SHA256_EXTENSION: sha256 });
                }
                entry
            })
            .collect()
    };
    let mut m = json!({
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request.request_url,
        "requiresAccessToken": requires_access_token,
        "output": entries(FileKind::Output),
        "deleted": entries(FileKind::Deleted),
        "error": entries(FileKind::Error),
    });
    if job.request.organize_by_patient {
        m["outputOrganizedBy"] = json!("Patient");
    }
    if let Some(id) = job
        .request
        .views
        .as_ref()
        .and_then(|v| v.client_tracking_id.as_ref())
    {
        m["clientTrackingId"] = json!(id);
    }
    m
}

/// Where a client stands in a paged manifest (`allowPartialManifests`):
/// for each part, in index order, how many of its files earlier pages
/// listed. A part's files only ever grow at the end, so the files after a
/// cursor are exactly the ones no earlier page listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestCursor(Vec<u32>);

impl ManifestCursor {
    /// The `page` query parameter's form: counts joined by `.`, without
    /// trailing zeros (the first page is the empty cursor).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::default());
        }
        text.split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u32>>>()
            .map(ManifestCursor)
    }

    pub fn to_text(&self) -> String {
        let used = self.0.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        let counts: Vec<String> = self.0[..used].iter().map(u32::to_string).collect();
        counts.join(".")
    }

    fn get(&self, part: usize) -> usize {
        self.0.get(part).copied().unwrap_or(0) as usize
    }
}

/// One page of a paged manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPage {
    pub files: Vec<OutputFile>,
    /// Where the next page starts; `None` on the last page of a completed job.
    pub next: Option<ManifestCursor>,
}

/// The files after `cursor`, at most `limit`, taking each part's finished
/// files in part order. Once the job is `complete` and nothing is left
/// after this page, the job's error files close it.
pub fn manifest_page(
    job: &Job,
    parts: &[Part],
    cursor: &ManifestCursor,
    limit: usize,
    complete: bool,
) -> ManifestPage {
    let mut parts: Vec<&Part> = parts.iter().collect();
    parts.sort_by_key(|p| p.index);
    let mut files = Vec::new();
    let mut next = Vec::with_capacity(parts.len());
    let mut left = false;
    for (i, part) in parts.iter().enumerate() {
        let finished = &part.checkpoint.files;
        let from = cursor.get(i).min(finished.len());
        let take = limit.saturating_sub(files.len()).min(finished.len() - from);
        files.extend_from_slice(&finished[from..from + take]);
        left |= from + take < finished.len();
        next.push((from + take) as u32);
    }
    if complete && !left {
        files.extend(
            job.files
                .iter()
                .filter(|f| f.kind == FileKind::Error)
                .cloned(),
        );
        return ManifestPage { files, next: None };
    }
    ManifestPage {
        files,
        next: Some(ManifestCursor(next)),
    }
}

/// A page of the manifest, with a `next` link when another follows.
pub fn paged_manifest(
    job: &Job,
    page: &ManifestPage,
    base_url: &str,
    requires_access_token: bool,
) -> Value {
    let mut m = manifest_of(job, &page.files, base_url, requires_access_token);
    if let Some(next) = &page.next {
        let url = format!("{}?page={}", status_url(base_url, &job.id), next.to_text());
        m["link"] = json!([{ "relation": "next", "url": url }]);
    }
    m
}

/// What one part reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartSpec {
    /// One resource type, shards `first_shard..=last_shard` of the store,
    /// and within them the versions with `after < lastUpdated <= until`.
    Shards {
        resource_type: String,
        first_shard: u16,
        last_shard: u16,
        #[serde(default)]
        after: Option<i64>,
        #[serde(default)]
        until: Option<i64>,
        /// Shards of the range that held nothing when planned (a bit per
        /// shard, see `ports::Segment::empty_shards`): not queried.
        #[serde(default, skip_serializing_if = "is_zero")]
        empty_shards: u64,
    },
    /// Several types of a full export at once (a store that keeps types in
    /// shared partitions, see `ResourceStore::scan_types`): in each of shards
    /// `first_shard..=last_shard`, one key range of these adjacent types.
    /// The part is read whole, then written type by type, a file each.
    Mixed {
        types: Vec<String>,
        first_shard: u16,
        last_shard: u16,
        #[serde(default, skip_serializing_if = "is_zero")]
        empty_shards: u64,
    },
    /// A chunk of the export's patients, every requested type.
    Patients {
        types: Vec<String>,
        patients: Vec<String>,
    },
    /// `includeAssociatedData`: every shard of Provenance, keeping those
    /// that target an exported resource (with `latest_only`, only the
    /// latest for some target).
    Provenance { latest_only: bool },
    /// `$export-revisions`: every version of these types in the request's
    /// time range, newest first, as one CSV.
    Revisions { types: Vec<String> },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a part's reading stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Position {
    #[default]
    Start,
    /// In `shard`, after the version last updated at `after` (µs).
    Shard {
        shard: u16,
        after: Option<i64>,
    },
    /// At `types[type_index]`, `patients[patient_index]`, after `after_id`.
    /// A part reads type by type, patient by patient within a type; output
    /// organized by patient reads patient by patient, and `block_started`
    /// says whether the patient's header line is written.
    Patients {
        type_index: usize,
        patient_index: usize,
        after_id: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        block_started: bool,
    },
    /// Revisions newer than `before` (µs, exclusive) are written.
    Revisions {
        before: i64,
    },
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedChunk {
    pub number: u32,
    pub etag: String,
}

/// A file being written through a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    pub kind: FileKind,
    pub resource_type: String,
    pub name: String,
    pub upload_id: String,
    /// The chunks that make up the file so far, in order. Their numbers
    /// ascend but need not be consecutive (see `reserved_to`).
    pub chunks: Vec<UploadedChunk>,
    /// Resources in the uploaded chunks plus `carry` (or `spill`).
    pub count: u64,
    /// Lines read but too few to upload as a chunk yet; kept in the
    /// checkpoint (bounded small) so the read position can move past them.
    #[serde(default)]
    pub carry: String,
    /// Like `carry`, for buffers too large to ride in the checkpoint: the
    /// key of a small object that holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill: Option<String>,
    /// Chunk numbers up to here may be in use by the handling that saved
    /// this checkpoint. A handling that resumes the upload starts above it,
    /// so two handlings of one part never upload under the same number.
    #[serde(default)]
    pub reserved_to: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    pub position: Position,
    #[serde(default)]
    pub output: Option<OpenFile>,
    #[serde(default)]
    pub deleted: Option<OpenFile>,
    #[serde(default)]
    pub files: Vec<OutputFile>,
    /// Files whose every chunk is uploaded, to be completed now that this
    /// checkpoint has won (completing is idempotent, so a resumed handling
    /// completes them again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<OpenFile>,
    #[serde(default)]
    pub next_file_seq: u32,
    /// Progress units done (resources for shard parts, patient×type steps
    /// for patient parts).
    #[serde(default)]
    pub progress_done: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub job_id: String,
    pub index: u32,
    pub spec: PartSpec,
    pub progress_total: u64,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub version: u64,
}

/// A message on the work queue. Delivery is at least once: handling the
/// same message twice must be harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkMessage {
    Plan {
        job_id: String,
    },
    Part {
        job_id: String,
        index: u32,
    },
    /// Sent, delayed past the longest a handling can live, when a job ends:
    /// removes what handlings still running at that moment left behind
    /// (see `Collector::collect_garbage`).
    Collect {
        job_id: String,
    },
    /// Posts an ended job's completion event to its webhook, off the path
    /// of the request or handling that ended the job.
    Announce {
        job_id: String,
    },
}

impl WorkMessage {
    pub fn job_id(&self) -> &str {
        match self {
            WorkMessage::Plan { job_id }
            | WorkMessage::Part { job_id, .. }
            | WorkMessage::Collect { job_id }
            | WorkMessage::Announce { job_id } => job_id,
        }
    }
}

/// See [`Job::reuse_key`]: a hash of the owner and the canonical request.
pub fn reuse_key(owner: &str, request: &ExportRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut canonical = request.clone();
    canonical.request_url.clear();
    canonical.types.sort();
    canonical.patients.sort();
    canonical.excluded_patients.sort();
    canonical.elements.all_types.sort();
    let body = serde_json::to_string(&canonical).unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(owner.as_bytes())
        .chain_update([0])
        .chain_update(body.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_cursor_reads_back_what_it_writes() {
        for text in ["", "3", "0.2.1", "1.0.4"] {
            assert_eq!(ManifestCursor::parse(text).unwrap().to_text(), text);
        }
        assert_eq!(ManifestCursor(vec![2, 0, 0]).to_text(), "2");
        for bad in ["x", "1..2", "-1", "1.2."] {
            assert_eq!(ManifestCursor::parse(bad), None, "{bad}");
        }
    }
}
