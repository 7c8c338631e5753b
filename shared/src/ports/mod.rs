//! The engine's ports: what it needs from storage, queues and time, shaped
//! after DynamoDB/S3/SQS semantics (conditional writes, resumable paged
//! reads, multipart uploads, at-least-once messages) so that the embedded and
//! the AWS adapters are interchangeable.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::job::{Job, Part, UploadedChunk, WorkMessage};
use crate::domain::schedule::{Release, Schedule};
use crate::domain::usage::Usage;

pub use crate::domain::error::{Cause, PortError, PortResult};
/// What a write is and answers is the domain's (its write plan decides it).
pub use crate::domain::resource::{Version, WriteOp, WriteResult};

/// Current time, injectable so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Who wrote what the store loads by itself (the sample loader, bulk loads).
pub const SYSTEM_AUTHOR: &str = "bulk-export-loader";

/// One version as an audit trail sees it: what changed, who changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The version (its body only if the scan asked for bodies).
    pub version: Version,
    /// The subject that wrote it; `None` for versions written before the
    /// store recorded authors.
    pub author: Option<String>,
    /// `lastUpdated` of the version before it, where the store knows it
    /// (lets a store fetch predecessors by key).
    pub previous_at: Option<i64>,
    /// Whether the version before it was live (not a deletion), where the
    /// store recorded it at write time: enough to tell Add from Edit without
    /// reading the predecessor. `None` for a first version and for versions
    /// written before the stores recorded it.
    pub previous_live: Option<bool>,
}

/// A page request over one type's revisions in one shard, newest first.
#[derive(Debug, Clone)]
pub struct RevisionScan<'a> {
    pub resource_type: &'a str,
    pub shard: u16,
    /// Inclusive lower bound on `last_updated` (µs).
    pub from: i64,
    /// Exclusive upper bound on `last_updated` (µs): the range's end, or the
    /// oldest revision already read.
    pub before: i64,
    pub with_bodies: bool,
    pub limit: usize,
}

/// A page of a scan. Ids and bodies share one buffer: an export copies
/// each body once, from the store's row into this page, and from here to
/// its file, and allocates nothing per resource.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    pub items: Vec<ScanItem>,
    text: String,
    /// The scan goes on after this page. A store may serve fewer items
    /// than asked (DynamoDB stops at 1 MB), so a short page is not the end.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanItem {
    /// Its id's place in the page ([`ScanPage::id`]).
    id: (usize, usize),
    pub version: u64,
    pub last_updated: i64,
    pub deleted: bool,
    /// Its type, as an index into [`TypesScan::types`] (0 in a one-type scan).
    pub type_index: u16,
    body: Option<(usize, usize)>,
}

impl ScanPage {
    pub fn with_capacity(items: usize, body_bytes: usize) -> Self {
        ScanPage {
            items: Vec::with_capacity(items),
            text: String::with_capacity(body_bytes),
            more: false,
        }
    }

    pub fn push(
        &mut self,
        id: &str,
        version: u64,
        last_updated: i64,
        deleted: bool,
        body: Option<&str>,
    ) {
        self.push_typed(0, id, version, last_updated, deleted, body)
    }

    /// [`ScanPage::push`] for a scan of several types.
    pub fn push_typed(
        &mut self,
        type_index: u16,
        id: &str,
        version: u64,
        last_updated: i64,
        deleted: bool,
        body: Option<&str>,
    ) {
        let mut append = |s: &str| {
            let start = self.text.len();
            self.text.push_str(s);
            (start, self.text.len())
        };
        let id = append(id);
        let body = body.map(append);
        self.items.push(ScanItem {
            id,
            version,
            last_updated,
            deleted,
            type_index,
            body,
        });
    }

    pub fn id(&self, item: &ScanItem) -> &str {
        &self.text[item.id.0..item.id.1]
    }

    pub fn body(&self, item: &ScanItem) -> Option<&str> {
        item.body.map(|(a, b)| &self.text[a..b])
    }

    /// The page's ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|item| self.id(item))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A page request over one shard of one type, as of an instant.
#[derive(Debug, Clone)]
pub struct ShardScan<'a> {
    pub resource_type: &'a str,
    pub shard: u16,
    /// Exclusive lower bound on `last_updated` (µs): the cursor or `_since`.
    pub after: Option<i64>,
    /// Inclusive upper bound on `last_updated` (µs): the end of the part's
    /// range, when a shard is split by time.
    pub until: Option<i64>,
    /// The snapshot instant (µs): versions current at this instant are read.
    pub as_of: i64,
    /// Include tombstones (for `_since` exports, which report deletions).
    pub include_deleted: bool,
    pub limit: usize,
}

/// A page request over several types' versions in one shard: those current
/// at `as_of`, without tombstones, ordered by type and then
/// `last_updated`. A full export reads a store's small types this way when
/// they share partitions ([`ResourceStore::shard_counts`]): one stream per
/// shard instead of one per type and shard.
#[derive(Debug, Clone)]
pub struct TypesScan<'a> {
    /// Ascending, and adjacent in the store's order of types (no other type
    /// between two of them), so one key range holds exactly these.
    pub types: &'a [String],
    pub shard: u16,
    /// Exclusive: the page starts after this version (type index, µs).
    pub after: Option<(u16, i64)>,
    pub as_of: i64,
}

/// A slice of one type's versions: shards `first_shard..=last_shard`, and in
/// them the versions with `after < last_updated <= until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub first_shard: u16,
    pub last_shard: u16,
    pub after: Option<i64>,
    pub until: Option<i64>,
    /// How many versions it holds (for progress).
    pub count: u64,
    /// Shards in `first_shard..=last_shard` that held no version of the
    /// type when the segment was cut (bit `n` for shard `n`, shards below
    /// 64): a reader skips them instead of querying them for nothing.
    pub empty_shards: u64,
}

impl Segment {
    /// Whether `shard` is in the segment and may hold versions.
    pub fn reads(&self, shard: u16) -> bool {
        reads_shard(shard, self.first_shard, self.last_shard, self.empty_shards)
    }
}

/// Consecutive shards grouped into segments of up to about `target`
/// versions (a shard is never split), from each shard's count; shards that
/// hold nothing are marked empty inside a segment and start none.
pub fn group_shards(per_shard: &[u64], target: u64) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for (shard, &count) in per_shard.iter().enumerate() {
        let shard = shard as u16;
        if count == 0 {
            continue;
        }
        match segments.last_mut() {
            Some(seg) if seg.count + count <= target.max(1) => {
                for skipped in seg.last_shard + 1..shard.min(64) {
                    seg.empty_shards |= 1u64 << skipped;
                }
                seg.last_shard = shard;
                seg.count += count;
            }
            _ => segments.push(Segment {
                first_shard: shard,
                last_shard: shard,
                after: None,
                until: None,
                count,
                empty_shards: 0,
            }),
        }
    }
    segments
}

/// Whether a reader of shards `first..=last` without `empty` reads `shard`.
pub fn reads_shard(shard: u16, first: u16, last: u16, empty: u64) -> bool {
    (first..=last).contains(&shard) && (shard >= 64 || empty & (1u64 << shard) == 0)
}

/// Current versions and full history of FHIR resources.
#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Resources are spread over this many shards by a hash of their id
    /// (`domain::resource::shard_of`), so a store like DynamoDB can spread a
    /// type over partitions. A store may use a single shard.
    fn shard_count(&self) -> u16;

    /// Applies the writes atomically (all or none), each with a fresh
    /// version and a strictly increasing `lastUpdated`, recording `author`
    /// (the subject that made the change) on every version.
    async fn write_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>>;

    /// `write_as` under the [`SYSTEM_AUTHOR`].
    async fn write(&self, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        self.write_as(SYSTEM_AUTHOR, ops).await
    }

    /// Bulk loading: each resource's write is atomic and versioned as with
    /// `write`, but the whole need not be one atomic write (a store with a
    /// limit on atomic writes splits it; one may write new resources
    /// without transactions). Results come back in order.
    async fn load_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        self.write_as(author, ops).await
    }

    /// `load_as` under the [`SYSTEM_AUTHOR`] (the sample loader, benches).
    async fn load(&self, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        self.load_as(SYSTEM_AUTHOR, ops).await
    }

    /// One page of a type's revisions (every version, tombstones included)
    /// in one shard, newest first: `from <= lastUpdated < before`.
    async fn revisions(&self, scan: RevisionScan<'_>) -> PortResult<Vec<Revision>>;

    /// For each revision, the version just before it (`version - 1`), if
    /// any; bodies only when `with_bodies`.
    async fn predecessors(
        &self,
        resource_type: &str,
        of: &[Revision],
        with_bodies: bool,
    ) -> PortResult<Vec<Option<Version>>>;

    /// The newest version (a tombstone if deleted).
    async fn read_current(&self, resource_type: &str, id: &str) -> PortResult<Option<Version>>;

    /// The version that was current at `as_of` (µs).
    async fn read_as_of(
        &self,
        resource_type: &str,
        id: &str,
        as_of: i64,
    ) -> PortResult<Option<Version>>;

    /// For each id, the version current at `as_of` (ids with none are left out).
    async fn read_many_as_of(
        &self,
        resource_type: &str,
        ids: &[String],
        as_of: i64,
    ) -> PortResult<Vec<Version>>;

    /// The newest live version older than `version` (what a tombstone deleted).
    async fn read_live_before(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> PortResult<Option<Version>>;

    /// An instant that every committed write is at or before and every later
    /// write is strictly after: the export's `transactionTime`.
    async fn snapshot(&self) -> PortResult<DateTime<Utc>>;

    /// Every resource type that has at least one version.
    async fn resource_types(&self) -> PortResult<Vec<String>>;

    /// Cuts what a scan with these bounds would read into segments of
    /// about `target` versions each (the store knows its layout: a shard
    /// range, a time range within a shard, or both). Empty segments are left
    /// out; together the segments cover the scan exactly once.
    async fn segments(
        &self,
        resource_type: &str,
        after: Option<i64>,
        as_of: i64,
        include_deleted: bool,
        target: u64,
    ) -> PortResult<Vec<Segment>>;

    /// One page of versions current at `as_of`, ordered by `last_updated`:
    /// at most `limit`, maybe fewer before the end (`ScanPage::more`).
    async fn scan_shard(&self, scan: ShardScan<'_>) -> PortResult<ScanPage>;

    /// Versions per shard of `resource_type` (history included), when the
    /// store keeps its types in shared partitions and serves
    /// [`ResourceStore::scan_types`]; `None` (the default) when each type
    /// is read on its own.
    async fn shard_counts(&self, _resource_type: &str) -> PortResult<Option<Vec<u64>>> {
        Ok(None)
    }

    /// One page of a [`TypesScan`]: only for a store whose `shard_counts`
    /// are `Some`.
    async fn scan_types(&self, _scan: TypesScan<'_>) -> PortResult<ScanPage> {
        Err(PortError::permanent(
            "this store reads each type on its own",
            "scan_types is not supported",
        ))
    }

    /// Ids of resources of `resource_type` that ever referenced the patient
    /// through a compartment element, ordered by id, after `after_id`. A
    /// superset: callers re-check the version they export.
    async fn compartment_ids(
        &self,
        patient_id: &str,
        resource_type: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<String>>;
}

/// Jobs and their parts, with optimistic concurrency on every update.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Fails with `AlreadyExists` if the id is taken.
    async fn create_job(&self, job: &Job) -> PortResult<()>;
    async fn get_job(&self, id: &str) -> PortResult<Option<Job>>;
    /// A signal that changes whenever a job is updated, so a held status
    /// request wakes when its export completes instead of re-reading the
    /// job on a timer. `None` when the store cannot tell: DynamoDB's
    /// writers are other processes (the worker function), reachable only
    /// through a stream that cannot address one waiting request; its
    /// callers poll.
    fn job_updates(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Writes `job` if the stored version equals `job.version`; returns the
    /// job with its new version. `Conflict` otherwise.
    async fn update_job(&self, job: &Job) -> PortResult<Job>;
    /// Deletes the job and its parts.
    async fn delete_job(&self, id: &str) -> PortResult<()>;
    /// Writes the plan's parts, keeping any that already exist: planning is
    /// deterministic, so a twin planner (a redelivered plan message) wrote
    /// the same parts, and they may already be in progress.
    async fn put_parts(&self, parts: &[Part]) -> PortResult<()>;
    async fn get_part(&self, job_id: &str, index: u32) -> PortResult<Option<Part>>;
    async fn list_parts(&self, job_id: &str) -> PortResult<Vec<Part>>;
    /// Conditional on `part.version`: exactly one of two racing writers wins.
    async fn save_part(&self, part: &Part) -> PortResult<Part>;
    /// Atomically marks the part done (conditional on its version) and
    /// decrements the job's `parts_remaining`; returns the new count.
    async fn complete_part(&self, part: &Part) -> PortResult<u32>;
    /// How many of `owner`'s jobs are queued or running. May lag a moment
    /// behind the latest writes (DynamoDB answers from an index).
    async fn count_active_jobs(&self, owner: &str) -> PortResult<u32>;
    /// Jobs (queued, running or completed) stored under this
    /// [`Job::reuse_key`](crate::domain::job::Job::reuse_key). May lag a
    /// moment behind the latest writes (DynamoDB answers from an index).
    async fn jobs_with_reuse_key(&self, reuse_key: &str) -> PortResult<Vec<Job>>;
    /// Ids of jobs whose `expires_at` is at or before `now`.
    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<String>>;
    /// Adds to the job's consumption counters, atomically per counter (many
    /// handlings add at once). Kept apart from the job's record, which
    /// updates replace whole; deleted with the job.
    async fn add_usage(&self, job_id: &str, usage: &Usage) -> PortResult<()>;
    /// The job's counters so far (empty for an unknown job).
    async fn usage(&self, job_id: &str) -> PortResult<Usage>;
}

/// Export files, written with S3-style multipart uploads. Both adapters
/// keep S3's semantics, and the contract suite checks them:
/// - chunk numbers run from 1 to 10,000, in any order and with gaps;
///   uploading a number again replaces that chunk, and the returned tag
///   names the bytes;
/// - completing assembles exactly the listed chunks (ascending numbers,
///   each with the tag of its latest upload) and drops the others;
///   completing again once the object exists succeeds (a resumed handling
///   repeats it);
/// - aborting a finished or unknown upload succeeds.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    async fn start_upload(&self, key: &str) -> PortResult<String>;
    /// Uploads chunk `number` (1 to 10,000); uploading the same number
    /// again replaces it. Returns the chunk's tag.
    async fn upload_chunk(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> PortResult<String>;
    /// Assembles the listed chunks, in order, into the object `key`.
    /// `NotFound` if the upload is gone and the object does not exist.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        chunks: &[UploadedChunk],
    ) -> PortResult<()>;
    async fn abort_upload(&self, key: &str, upload_id: &str) -> PortResult<()>;
    /// Deletes one object (gone already is fine).
    async fn delete(&self, key: &str) -> PortResult<()>;
    /// Aborts every upload under `prefix` and deletes every object there
    /// except `keep` (garbage collection of a finished job).
    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()>;
    /// Reads a whole object (small ones: error files, tests).
    async fn get(&self, key: &str) -> PortResult<Bytes>;
    /// Reads up to `len` bytes of an object from `offset`: fewer at its
    /// end, none past it.
    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<Bytes>;
    /// Writes a small object in one go.
    async fn put(&self, key: &str, data: Bytes) -> PortResult<()>;
    /// Deletes every object and aborts every upload under `prefix`.
    async fn delete_prefix(&self, prefix: &str) -> PortResult<()>;
    /// Keys of the objects under `prefix`.
    async fn list(&self, prefix: &str) -> PortResult<Vec<String>>;
    /// Keys of the multipart uploads still open under `prefix`.
    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>>;
    /// A URL that lets anyone holding it GET the object until `ttl` passes.
    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String>;
    /// The same for a file whose bytes have the SHA-256 `sha256` (hex). A
    /// store that serves its links itself refuses bytes that no longer
    /// match; S3 serves presigned links directly and cannot, so there the
    /// manifest's digest is the client's check.
    async fn presign_checked_get(
        &self,
        key: &str,
        ttl: Duration,
        sha256: Option<&str>,
    ) -> PortResult<String> {
        let _ = sha256;
        self.presign_get(key, ttl).await
    }
    /// When links signed now stop working whatever their own expiry: the
    /// expiry of the temporary credentials that sign them (a Lambda role's).
    /// `None`: only their own expiry counts.
    async fn signing_credentials_expiry(&self) -> PortResult<Option<DateTime<Utc>>> {
        Ok(None)
    }
}

/// A received message and the handle to acknowledge it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: WorkMessage,
    pub receipt: String,
    /// How many times this message has been received (1 on first delivery).
    pub receive_count: u32,
}

/// At-least-once work queue (SQS semantics: a received message is hidden for
/// the visibility timeout and comes back unless deleted).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    async fn send(&self, messages: &[WorkMessage]) -> PortResult<()>;
    /// Sends messages that become visible only after `delay` (SQS
    /// `DelaySeconds`, at most 15 minutes).
    async fn send_delayed(&self, messages: &[WorkMessage], delay: Duration) -> PortResult<()>;
    async fn receive(&self, max: usize, visibility: Duration) -> PortResult<Vec<Delivery>>;
    async fn delete(&self, receipt: &str) -> PortResult<()>;
    /// Makes a received message visible again after `delay` (SQS
    /// `ChangeMessageVisibility`): a transient failure's backoff.
    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()>;
}

/// Registered clients and the assertion ids they have used (replay guard),
/// kept with the jobs (DynamoDB on AWS, SQLite locally).
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Creates or replaces a registration.
    async fn put_client(
        &self,
        client: &crate::domain::client::ClientRegistration,
    ) -> PortResult<()>;
    async fn get_client(
        &self,
        client_id: &str,
    ) -> PortResult<Option<crate::domain::client::ClientRegistration>>;
    /// Records `jti` until `expires`; `false` if it was already recorded
    /// (a replayed assertion). Expired entries may be forgotten.
    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires: DateTime<Utc>,
    ) -> PortResult<bool>;
}

/// Export schedules (with an index of due times) and releases, kept with
/// the jobs. Updates are conditional on the stored `version`, as for jobs.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// `AlreadyExists` if the id is taken.
    async fn create_schedule(&self, schedule: &Schedule) -> PortResult<()>;
    async fn get_schedule(&self, id: &str) -> PortResult<Option<Schedule>>;
    /// Writes `schedule` if the stored version equals its `version`;
    /// returns it with the new version. `Conflict` otherwise, `NotFound`
    /// if it was deleted.
    async fn update_schedule(&self, schedule: &Schedule) -> PortResult<Schedule>;
    /// Deleting a schedule that is gone already is fine.
    async fn delete_schedule(&self, id: &str) -> PortResult<()>;
    /// `owner`'s schedules, oldest first.
    async fn schedules_of(&self, owner: &str) -> PortResult<Vec<Schedule>>;
    /// Schedules with a due time at or before `now`, earliest first, read
    /// from an index of due times (never a scan of every schedule).
    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<Schedule>>;
    /// `AlreadyExists` if the name is taken.
    async fn create_release(&self, release: &Release) -> PortResult<()>;
    async fn get_release(&self, name: &str) -> PortResult<Option<Release>>;
    /// Conditional on `release.version`, as `update_schedule`.
    async fn update_release(&self, release: &Release) -> PortResult<Release>;
    /// Every release, oldest `transaction_time` first.
    async fn releases(&self) -> PortResult<Vec<Release>>;
}

/// An export that ended (completed, failed or cancelled), as publishers
/// get it: the job, the event's documented JSON (`engine::notify`) and,
/// for a completed job, its manifest.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub job: Job,
    /// What the job consumed up to its end (see `domain::usage`).
    pub usage: Usage,
    pub detail: Value,
    pub manifest: Option<Value>,
}

/// Where ended exports are announced besides webhooks: EventBridge on AWS,
/// folder delivery locally, a recorder in tests.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn publish(&self, event: &JobEvent) -> PortResult<()>;
}

/// Publishes nowhere.
pub struct NoEvents;

#[async_trait]
impl EventPublisher for NoEvents {
    async fn publish(&self, _event: &JobEvent) -> PortResult<()> {
        Ok(())
    }
}

/// Publishes to each of several publishers, in order; all are tried, and
/// the first failure is returned.
pub struct AllPublishers(pub Vec<Arc<dyn EventPublisher>>);

#[async_trait]
impl EventPublisher for AllPublishers {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        let mut result = Ok(());
        for p in &self.0 {
            if let Err(e) = p.publish(event).await {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// The adapters the engine runs on.
#[derive(Clone)]
pub struct Ports {
    pub resources: Arc<dyn ResourceStore>,
    pub jobs: Arc<dyn JobStore>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub clock: Arc<dyn Clock>,
    /// Client registrations: who authors are (the audit export) and where
    /// a client's exports are announced.
    pub clients: Arc<dyn ClientStore>,
    /// Export schedules and releases.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Where ended exports are announced (EventBridge, folder delivery).
    pub events: Arc<dyn EventPublisher>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_grouped_up_to_the_target_with_empty_ones_marked() {
        let seg = |first, last, empty, count| Segment {
            first_shard: first,
            last_shard: last,
            after: None,
            until: None,
            count,
            empty_shards: empty,
        };
        // Shard 1 is empty inside the first group; shard 4 alone exceeds
        // the target and is never split; trailing empty shards start none.
        let groups = group_shards(&[3, 0, 2, 4, 12, 1, 0, 0], 10);
        assert_eq!(
            groups,
            vec![seg(0, 3, 0b10, 9), seg(4, 4, 0, 12), seg(5, 5, 0, 1)]
        );
        assert!(!groups[0].reads(1) && groups[0].reads(2));
        assert_eq!(group_shards(&[0, 0], 10), vec![]);
    }
}
