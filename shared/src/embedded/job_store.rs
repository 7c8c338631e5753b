//! Jobs, parts and the work queue on SQLite (one database file).
//!
//! Every update is conditional on the stored version, the way the DynamoDB
//! adapter does it with a condition expression: a lost race is
//! `PortError::Conflict`, never a silent overwrite.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tokio::sync::{watch, Notify};

use super::sqlite::{backend, CachedStatements, Db, Pages};
use crate::domain::client::ClientRegistration;
use crate::domain::job::{Job, Part, WorkMessage};
use crate::domain::usage::Usage;
use crate::ports::{ClientStore, Delivery, JobStore, PortError, PortResult, WorkQueue};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS parts (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS job_usage (
    job_id TEXT NOT NULL,
    counter TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (job_id, counter)
);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS queue_by_visibility ON queue (visible_at);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    next_due INTEGER,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_by_owner ON schedules (owner);
CREATE INDEX IF NOT EXISTS schedules_by_due ON schedules (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS releases (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS used_jtis (
    client_id TEXT NOT NULL, jti TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
";

/// The jobs database; hands out the job store and the queue over one file.
#[derive(Clone)]
pub struct SqliteJobs {
    pub(super) db: Db,
    /// Counts job updates, for held status requests (`job_updates`).
    updates: Arc<watch::Sender<u64>>,
}

/// Applied at open, in order; each may already be applied to an older
/// database. Jobs in progress are indexed by owner (a partial index:
/// finished jobs leave it).
const MIGRATIONS: &[&str] = &[
    "ALTER TABLE jobs ADD COLUMN active_owner TEXT",
    "CREATE INDEX IF NOT EXISTS jobs_by_active_owner ON jobs (active_owner)
     WHERE active_owner IS NOT NULL",
    // Jobs an identical request may reuse, by request key.
    "ALTER TABLE jobs ADD COLUMN reuse_key TEXT",
    "CREATE INDEX IF NOT EXISTS jobs_by_reuse_key ON jobs (reuse_key)
     WHERE reuse_key IS NOT NULL",
];

impl SqliteJobs {
    pub fn open(path: &Path) -> PortResult<Self> {
        Ok(SqliteJobs {
            db: Db::open_migrated(path, Pages::Small, SCHEMA, MIGRATIONS)?,
            updates: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The JSON records a one-parameter query selects, decoded.
    pub(super) async fn bodies<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> PortResult<Vec<T>> {
        let key = key.to_string();
        self.db
            .call(move |c| {
                let mut s = c.prepare_cached(sql).map_err(backend)?;
                let rows = s
                    .query_map(params![key], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(from_json(&row.map_err(backend)?)?);
                }
                Ok(out)
            })
            .await
    }

    pub fn queue(&self) -> SqliteQueue {
        SqliteQueue {
            db: self.db.clone(),
            wake: Arc::new(Notify::new()),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> PortResult<String> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> PortResult<T> {
    serde_json::from_str(s).map_err(|e| PortError::corrupt("a stored record is corrupt", e))
}

fn expiry_key(job: &Job) -> Option<i64> {
    job.expires_at.map(|t| t.timestamp_micros())
}

/// The owner while the job is in progress (the per-client limit counts it).
fn active_owner(job: &Job) -> Option<&str> {
    job.is_active().then_some(job.owner.as_str())
}

#[async_trait]
impl JobStore for SqliteJobs {
    async fn create_job(&self, job: &Job) -> PortResult<()> {
        let mut job = job.clone();
        job.version = 1;
        self.db
            .call(move |c| {
                let n = c
                    .execute_cached(
                        "INSERT OR IGNORE INTO jobs (id, version, expires_at, active_owner, reuse_key, body)
                         VALUES (?1, 1, ?2, ?3, ?4, ?5)",
                        params![
                            job.id,
                            expiry_key(&job),
                            active_owner(&job),
                            job.reuse_key(),
                            to_json(&job)?
                        ],
                    )
                    .map_err(backend)?;
                if n == 0 {
                    return Err(PortError::AlreadyExists);
                }
                Ok(())
            })
            .await
    }

    async fn get_job(&self, id: &str) -> PortResult<Option<Job>> {
        let id = id.to_string();
        self.db
            .call(move |c| {
                let body: Option<String> = c
                    .query_row_cached("SELECT body FROM jobs WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(backend)?;
                body.map(|b| from_json(&b)).transpose()
            })
            .await
    }

    fn job_updates(&self) -> Option<watch::Receiver<u64>> {
        Some(self.updates.subscribe())
    }

    async fn update_job(&self, job: &Job) -> PortResult<Job> {
        let mut job = job.clone();
        let updated = self
            .db
            .call(move |c| {
                let expected = job.version;
                job.version += 1;
                let n = c
                    .execute_cached(
                        "UPDATE jobs SET version = ?1, expires_at = ?2, active_owner = ?3,
                         reuse_key = ?4, body = ?5 WHERE id = ?6 AND version = ?7",
                        params![
                            job.version as i64,
                            expiry_key(&job),
                            active_owner(&job),
                            job.reuse_key(),
                            to_json(&job)?,
                            job.id,
                            expected as i64
                        ],
                    )
                    .map_err(backend)?;
                if n == 0 {
                    return Err(PortError::Conflict);
                }
                Ok(job)
            })
            .await?;
        self.updates.send_modify(|n| *n = n.wrapping_add(1));
        Ok(updated)
    }

    async fn jobs_with_reuse_key(&self, reuse_key: &str) -> PortResult<Vec<Job>> {
        self.bodies("SELECT body FROM jobs WHERE reuse_key = ?1", reuse_key)
            .await
    }

    async fn delete_job(&self, id: &str) -> PortResult<()> {
        let id = id.to_string();
        self.db
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                tx.execute_cached("DELETE FROM parts WHERE job_id = ?1", params![id])
                    .map_err(backend)?;
                tx.execute_cached("DELETE FROM job_usage WHERE job_id = ?1", params![id])
                    .map_err(backend)?;
                tx.execute_cached("DELETE FROM jobs WHERE id = ?1", params![id])
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn add_usage(&self, job_id: &str, usage: &Usage) -> PortResult<()> {
        let job_id = job_id.to_string();
        let counters: Vec<(String, f64)> =
            usage.counters().map(|(k, v)| (k.to_string(), v)).collect();
        self.db
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                for (counter, value) in &counters {
                    tx.execute_cached(
                        "INSERT INTO job_usage (job_id, counter, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (job_id, counter) DO UPDATE SET value = value + excluded.value",
                        params![job_id, counter, value],
                    )
                    .map_err(backend)?;
                }
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn usage(&self, job_id: &str) -> PortResult<Usage> {
        let job_id = job_id.to_string();
        self.db
            .call(move |c| {
                let mut stmt = c
                    .prepare("SELECT counter, value FROM job_usage WHERE job_id = ?1")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(backend)?;
                rows.collect::<Result<Usage, _>>().map_err(backend)
            })
            .await
    }

    async fn put_parts(&self, parts: &[Part]) -> PortResult<()> {
        let parts = parts.to_vec();
        self.db
            .call(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
                for p in &parts {
                    let mut p = p.clone();
                    p.version = 1;
                    tx.execute_cached(
                        "INSERT OR IGNORE INTO parts (job_id, idx, version, body) VALUES (?1, ?2, 1, ?3)",
                        params![p.job_id, p.index, to_json(&p)?],
                    )
                    .map_err(backend)?;
                }
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn get_part(&self, job_id: &str, index: u32) -> PortResult<Option<Part>> {
        let job_id = job_id.to_string();
        self.db
            .call(move |c| {
                let body: Option<String> = c
                    .query_row_cached(
                        "SELECT body FROM parts WHERE job_id = ?1 AND idx = ?2",
                        params![job_id, index],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                body.map(|b| from_json(&b)).transpose()
            })
            .await
    }

    async fn list_parts(&self, job_id: &str) -> PortResult<Vec<Part>> {
        self.bodies(
            "SELECT body FROM parts WHERE job_id = ?1 ORDER BY idx",
            job_id,
        )
        .await
    }

    async fn save_part(&self, part: &Part) -> PortResult<Part> {
        let part = part.clone();
        self.db
            .call(move |c| write_part_if_unchanged(c, part))
            .await
    }

    async fn complete_part(&self, part: &Part) -> PortResult<u32> {
        let mut part = part.clone();
        self.db
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                part.done = true;
                let part = write_part_if_unchanged(&tx, part)?;
                let body: String = tx
                    .query_row_cached(
                        "SELECT body FROM jobs WHERE id = ?1",
                        params![part.job_id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?
                    .ok_or(PortError::NotFound)?;
                let mut job: Job = from_json(&body)?;
                job.parts_remaining = job.parts_remaining.saturating_sub(1);
                job.version += 1;
                tx.execute_cached(
                    "UPDATE jobs SET version = ?1, body = ?2 WHERE id = ?3",
                    params![job.version as i64, to_json(&job)?, job.id],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(job.parts_remaining)
            })
            .await
    }

    async fn count_active_jobs(&self, owner: &str) -> PortResult<u32> {
        let owner = owner.to_string();
        self.db
            .call(move |c| {
                c.query_row_cached(
                    "SELECT count(*) FROM jobs WHERE active_owner = ?1",
                    params![owner],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u32)
                .map_err(backend)
            })
            .await
    }

    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<String>> {
        let now = now.timestamp_micros();
        self.db
            .call(move |c| {
                let mut s = c
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?1
                         ORDER BY expires_at LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = s
                    .query_map(params![now, limit as i64], |r| r.get(0))
                    .map_err(backend)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(backend)
            })
            .await
    }
}

/// Writes `part` if the stored version is still `part.version` (the
/// condition every part update carries); returns it with its new version.
fn write_part_if_unchanged(c: &rusqlite::Connection, mut part: Part) -> PortResult<Part> {
    let expected = part.version;
    part.version += 1;
    let n = c
        .execute_cached(
            "UPDATE parts SET version = ?1, body = ?2 WHERE job_id = ?3 AND idx = ?4 AND version = ?5",
            params![part.version as i64, to_json(&part)?, part.job_id, part.index, expected as i64],
        )
        .map_err(backend)?;
    if n == 0 {
        return Err(PortError::Conflict);
    }
    Ok(part)
}

#[async_trait]
impl ClientStore for SqliteJobs {
    async fn put_client(&self, client: &ClientRegistration) -> PortResult<()> {
        let (id, body) = (client.client_id.clone(), to_json(client)?);
        self.db
            .call(move |c| {
                c.execute_cached(
                    "INSERT OR REPLACE INTO clients (client_id, body) VALUES (?1, ?2)",
                    params![id, body],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await
    }

    async fn get_client(&self, client_id: &str) -> PortResult<Option<ClientRegistration>> {
        let id = client_id.to_string();
        self.db
            .call(move |c| {
                let body: Option<String> = c
                    .query_row_cached(
                        "SELECT body FROM clients WHERE client_id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                body.map(|b| from_json(&b)).transpose()
            })
            .await
    }

    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires: DateTime<Utc>,
    ) -> PortResult<bool> {
        let (id, jti) = (client_id.to_string(), jti.to_string());
        self.db
            .call(move |c| {
                let now = Utc::now().timestamp();
                c.execute_cached("DELETE FROM used_jtis WHERE expires_at < ?1", params![now]).map_err(backend)?;
                let n = c
                    .execute_cached(
                        "INSERT OR IGNORE INTO used_jtis (client_id, jti, expires_at) VALUES (?1, ?2, ?3)",
                        params![id, jti, expires.timestamp()],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await
    }
}

/// The durable embedded work queue (SQS semantics: visibility timeout,
/// receive count, delete by receipt handle).
#[derive(Clone)]
pub struct SqliteQueue {
    db: Db,
    wake: Arc<Notify>,
}

impl SqliteQueue {
    /// Resolves when a message may have been sent (or after a short while).
    pub async fn wait_for_work(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake.notified()).await;
    }

    /// Makes every in-flight message visible at once. The local process is
    /// its queue's only consumer, so at start-up anything in flight was
    /// held by a previous instance that died: waiting out its visibility
    /// timeout would only stall those exports. Returns how many came back.
    pub async fn reclaim_in_flight(&self) -> PortResult<usize> {
        self.db
            .call(|c| {
                let now = wall_micros();
                c.execute_cached(
                    "UPDATE queue SET visible_at = ?1, receipt = NULL
                     WHERE receipt IS NOT NULL AND visible_at > ?1",
                    params![now],
                )
                .map_err(backend)
            })
            .await
    }

    /// Messages waiting or in flight (for tests and shutdown).
    pub async fn len(&self) -> PortResult<u64> {
        self.db
            .call(|c| {
                c.query_row_cached("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await
    }
}

fn wall_micros() -> i64 {
    // Queue visibility is operational time, not the (movable) business clock.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, messages: &[WorkMessage]) -> PortResult<()> {
        self.send_delayed(messages, Duration::ZERO).await
    }

    async fn send_delayed(&self, messages: &[WorkMessage], delay: Duration) -> PortResult<()> {
        let bodies = messages
            .iter()
            .map(to_json)
            .collect::<PortResult<Vec<_>>>()?;
        self.db
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let at = wall_micros() + delay.as_micros() as i64;
                for b in &bodies {
                    tx.execute_cached(
                        "INSERT INTO queue (body, visible_at) VALUES (?1, ?2)",
                        params![b, at],
                    )
                    .map_err(backend)?;
                }
                tx.commit().map_err(backend)
            })
            .await?;
        // Wake every idle worker, and leave a permit for one that is between
        // two receives so it does not sleep through the message.
        self.wake.notify_waiters();
        self.wake.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration) -> PortResult<Vec<Delivery>> {
        self.db
            .call(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
                let now = wall_micros();
                let rows: Vec<(i64, String, i64)> = {
                    let mut s = tx
                        .prepare_cached(
                            "SELECT seq, body, receive_count FROM queue WHERE visible_at <= ?1 ORDER BY seq LIMIT ?2",
                        )
                        .map_err(backend)?;
                    let rows = s
                        .query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .map_err(backend)?;
                    rows.collect::<Result<_, _>>().map_err(backend)?
                };
                let mut out = Vec::with_capacity(rows.len());
                for (seq, body, count) in rows {
                    let receipt = format!("{seq}:{}", uuid::Uuid::new_v4());
                    tx.execute_cached(
                        "UPDATE queue SET visible_at = ?1, receive_count = receive_count + 1, receipt = ?2 WHERE seq = ?3",
                        params![now + visibility.as_micros() as i64, receipt, seq],
                    )
                    .map_err(backend)?;
                    match from_json(&body) {
                        Ok(message) => out.push(Delivery { message, receipt, receive_count: count as u32 + 1 }),
                        Err(_) => {
                            // A message that cannot be read can never succeed: drop it.
                            tracing::error!(seq, "dropping unreadable work message");
                            tx.execute_cached("DELETE FROM queue WHERE seq = ?1", params![seq]).map_err(backend)?;
                        }
                    }
                }
                tx.commit().map_err(backend)?;
                Ok(out)
            })
            .await
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        let receipt = receipt.to_string();
        self.db
            .call(move |c| {
                c.execute_cached("DELETE FROM queue WHERE receipt = ?1", params![receipt])
                    .map_err(backend)?;
                Ok(())
            })
            .await
    }

    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()> {
        let receipt = receipt.to_string();
        self.db
            .call(move |c| {
                let at = wall_micros() + delay.as_micros() as i64;
                c.execute_cached(
                    "UPDATE queue SET visible_at = ?1 WHERE receipt = ?2",
                    params![at, receipt],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await
    }
}
