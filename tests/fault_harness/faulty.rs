//! Port wrappers that inject faults into one handling: a kill before or
//! after any port call (the handling's future is dropped there, as when a
//! Lambda dies), and transient "throttled" errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::domain::job::{Job, Part, UploadedChunk, WorkMessage};
use bulk_export::domain::usage::Usage;
use bulk_export::engine::Ports;
use bulk_export::ports::{
    ArtifactStore, Delivery, JobStore, PortError, PortResult, ResourceStore, Revision,
    RevisionScan, ScanPage, Segment, ShardScan, Version, WorkQueue, WriteOp, WriteResult,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// The services a port call goes to (DynamoDB, S3, SQS on AWS).
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Resources = 0,
    Jobs = 1,
    Files = 2,
    Queue = 3,
}

pub const SERVICES: [&str; 4] = ["resources", "jobs", "files", "queue"];

/// How many faults of each kind were injected.
#[derive(Default)]
pub struct Tally {
    pub kill_before: AtomicU64,
    pub kill_after: AtomicU64,
    pub throttled: [AtomicU64; 4],
    pub duplicate: AtomicU64,
    pub delayed_redelivery: AtomicU64,
    pub cancel: AtomicU64,
}

impl Tally {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-call probabilities of one export.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub kill_before: f64,
    pub kill_after: f64,
    pub throttle: f64,
}

/// The fault context of one handling.
pub struct Faults {
    rng: Mutex<StdRng>,
    rates: Rates,
    tally: Arc<Tally>,
    killed: watch::Sender<bool>,
}

impl Faults {
    pub fn new(seed: u64, rates: Rates, tally: Arc<Tally>) -> Arc<Faults> {
        Arc::new(Faults {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            rates,
            tally,
            killed: watch::channel(false).0,
        })
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random_bool(p.min(1.0))
    }

    /// Resolves once the handling was killed (its future is then dropped).
    pub async fn killed(&self) {
        let mut rx = self.killed.subscribe();
        let _ = rx.wait_for(|k| *k).await;
    }

    /// Never returns: the handling stops here, mid-call.
    async fn die(&self, counter: &AtomicU64) -> ! {
        Tally::add(counter);
        self.killed.send_replace(true);
        std::future::pending().await
    }

    async fn before(&self, service: Service) -> PortResult<()> {
        if *self.killed.borrow() {
            std::future::pending::<()>().await;
        }
        if self.roll(self.rates.kill_before) {
            self.die(&self.tally.kill_before).await;
        }
        if self.roll(self.rates.throttle) {
            Tally::add(&self.tally.throttled[service as usize]);
            return Err(PortError::transient(
                "the service's storage is unavailable or busy",
                "SlowDown: injected throttling",
            ));
        }
        Ok(())
    }

    async fn after(&self) {
        if self.roll(self.rates.kill_after) {
            self.die(&self.tally.kill_after).await;
        }
    }

    /// The ports of one handling, every call passing through these faults.
    pub fn wrap(self: &Arc<Self>, base: &Ports) -> Ports {
        Ports {
            clients: base.clients.clone(),
            schedules: base.schedules.clone(),
            events: base.events.clone(),
            resources: Arc::new(Faulty {
                inner: base.resources.clone(),
                faults: self.clone(),
            }),
            jobs: Arc::new(Faulty {
                inner: base.jobs.clone(),
                faults: self.clone(),
            }),
            artifacts: Arc::new(Faulty {
                inner: base.artifacts.clone(),
                faults: self.clone(),
            }),
            queue: Arc::new(Faulty {
                inner: base.queue.clone(),
                faults: self.clone(),
            }),
            clock: base.clock.clone(),
        }
    }
}

struct Faulty<T: ?Sized> {
    inner: Arc<T>,
    faults: Arc<Faults>,
}

/// One port call under the handling's faults.
macro_rules! through {
    ($self:ident, $service:expr, $call:expr) => {{
        $self.faults.before($service).await?;
        let result = $call.await;
        $self.faults.after().await;
        result
    }};
}

#[async_trait]
impl ResourceStore for Faulty<dyn ResourceStore> {
    fn shard_count(&self) -> u16 {
        self.inner.shard_count()
    }
    async fn write_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        through!(self, Service::Resources, self.inner.write_as(author, ops))
    }
    async fn revisions(&self, scan: RevisionScan<'_>) -> PortResult<Vec<Revision>> {
        through!(self, Service::Resources, self.inner.revisions(scan))
    }
    async fn predecessors(
        &self,
        t: &str,
        of: &[Revision],
        with_bodies: bool,
    ) -> PortResult<Vec<Option<Version>>> {
        through!(
            self,
            Service::Resources,
            self.inner.predecessors(t, of, with_bodies)
        )
    }
    async fn read_current(&self, t: &str, id: &str) -> PortResult<Option<Version>> {
        through!(self, Service::Resources, self.inner.read_current(t, id))
    }
    async fn read_as_of(&self, t: &str, id: &str, as_of: i64) -> PortResult<Option<Version>> {
        through!(
            self,
            Service::Resources,
            self.inner.read_as_of(t, id, as_of)
        )
    }
    async fn read_many_as_of(
        &self,
        t: &str,
        ids: &[String],
        as_of: i64,
    ) -> PortResult<Vec<Version>> {
        through!(
            self,
            Service::Resources,
            self.inner.read_many_as_of(t, ids, as_of)
        )
    }
    async fn read_live_before(&self, t: &str, id: &str, v: u64) -> PortResult<Option<Version>> {
        through!(
            self,
            Service::Resources,
            self.inner.read_live_before(t, id, v)
        )
    }
    async fn snapshot(&self) -> PortResult<DateTime<Utc>> {
        through!(self, Service::Resources, self.inner.snapshot())
    }
    async fn resource_types(&self) -> PortResult<Vec<String>> {
        through!(self, Service::Resources, self.inner.resource_types())
    }
    async fn segments(
        &self,
        t: &str,
        after: Option<i64>,
        as_of: i64,
        include_deleted: bool,
        target: u64,
    ) -> PortResult<Vec<Segment>> {
        through!(
            self,
            Service::Resources,
            self.inner
                .segments(t, after, as_of, include_deleted, target)
        )
    }
    async fn scan_shard(&self, scan: ShardScan<'_>) -> PortResult<ScanPage> {
        through!(self, Service::Resources, self.inner.scan_shard(scan))
    }
    async fn compartment_ids(
        &self,
        patient: &str,
        t: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<String>> {
        through!(
            self,
            Service::Resources,
            self.inner.compartment_ids(patient, t, after_id, limit)
        )
    }
}

#[async_trait]
impl JobStore for Faulty<dyn JobStore> {
    async fn create_job(&self, job: &Job) -> PortResult<()> {
        through!(self, Service::Jobs, self.inner.create_job(job))
    }
    async fn get_job(&self, id: &str) -> PortResult<Option<Job>> {
        through!(self, Service::Jobs, self.inner.get_job(id))
    }
    fn job_updates(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.job_updates()
    }
    async fn update_job(&self, job: &Job) -> PortResult<Job> {
        through!(self, Service::Jobs, self.inner.update_job(job))
    }
    async fn delete_job(&self, id: &str) -> PortResult<()> {
        through!(self, Service::Jobs, self.inner.delete_job(id))
    }
    async fn put_parts(&self, parts: &[Part]) -> PortResult<()> {
        through!(self, Service::Jobs, self.inner.put_parts(parts))
    }
    async fn add_usage(&self, job_id: &str, usage: &Usage) -> PortResult<()> {
        through!(self, Service::Jobs, self.inner.add_usage(job_id, usage))
    }
    async fn usage(&self, job_id: &str) -> PortResult<Usage> {
        through!(self, Service::Jobs, self.inner.usage(job_id))
    }
    async fn get_part(&self, job_id: &str, index: u32) -> PortResult<Option<Part>> {
        through!(self, Service::Jobs, self.inner.get_part(job_id, index))
    }
    async fn list_parts(&self, job_id: &str) -> PortResult<Vec<Part>> {
        through!(self, Service::Jobs, self.inner.list_parts(job_id))
    }
    async fn save_part(&self, part: &Part) -> PortResult<Part> {
        through!(self, Service::Jobs, self.inner.save_part(part))
    }
    async fn complete_part(&self, part: &Part) -> PortResult<u32> {
        through!(self, Service::Jobs, self.inner.complete_part(part))
    }
    async fn count_active_jobs(&self, owner: &str) -> PortResult<u32> {
        through!(self, Service::Jobs, self.inner.count_active_jobs(owner))
    }
    async fn jobs_with_reuse_key(&self, reuse_key: &str) -> PortResult<Vec<Job>> {
        through!(
            self,
            Service::Jobs,
            self.inner.jobs_with_reuse_key(reuse_key)
        )
    }
    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<String>> {
        through!(self, Service::Jobs, self.inner.expired_jobs(now, limit))
    }
}

#[async_trait]
impl ArtifactStore for Faulty<dyn ArtifactStore> {
    async fn start_upload(&self, key: &str) -> PortResult<String> {
        through!(self, Service::Files, self.inner.start_upload(key))
    }
    async fn upload_chunk(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> PortResult<String> {
        through!(
            self,
            Service::Files,
            self.inner.upload_chunk(key, upload_id, number, data)
        )
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        chunks: &[UploadedChunk],
    ) -> PortResult<()> {
        through!(
            self,
            Service::Files,
            self.inner.complete_upload(key, upload_id, chunks)
        )
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> PortResult<()> {
        through!(
            self,
            Service::Files,
            self.inner.abort_upload(key, upload_id)
        )
    }
    async fn delete(&self, key: &str) -> PortResult<()> {
        through!(self, Service::Files, self.inner.delete(key))
    }
    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()> {
        through!(self, Service::Files, self.inner.retain_only(prefix, keep))
    }
    async fn get(&self, key: &str) -> PortResult<Bytes> {
        through!(self, Service::Files, self.inner.get(key))
    }
    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<Bytes> {
        through!(self, Service::Files, self.inner.get_range(key, offset, len))
    }
    async fn put(&self, key: &str, data: Bytes) -> PortResult<()> {
        through!(self, Service::Files, self.inner.put(key, data))
    }
    async fn delete_prefix(&self, prefix: &str) -> PortResult<()> {
        through!(self, Service::Files, self.inner.delete_prefix(prefix))
    }
    async fn list(&self, prefix: &str) -> PortResult<Vec<String>> {
        through!(self, Service::Files, self.inner.list(prefix))
    }
    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>> {
        through!(self, Service::Files, self.inner.list_uploads(prefix))
    }
    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String> {
        through!(self, Service::Files, self.inner.presign_get(key, ttl))
    }
}

#[async_trait]
impl WorkQueue for Faulty<dyn WorkQueue> {
    async fn send(&self, messages: &[WorkMessage]) -> PortResult<()> {
        through!(self, Service::Queue, self.inner.send(messages))
    }
    async fn send_delayed(&self, messages: &[WorkMessage], delay: Duration) -> PortResult<()> {
        through!(
            self,
            Service::Queue,
            self.inner.send_delayed(messages, delay)
        )
    }
    async fn receive(&self, max: usize, visibility: Duration) -> PortResult<Vec<Delivery>> {
        through!(self, Service::Queue, self.inner.receive(max, visibility))
    }
    async fn delete(&self, receipt: &str) -> PortResult<()> {
        through!(self, Service::Queue, self.inner.delete(receipt))
    }
    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()> {
        through!(self, Service::Queue, self.inner.retry_later(receipt, delay))
    }
}
