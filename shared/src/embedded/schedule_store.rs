//! Schedules and releases in the jobs database. `schedules_by_due` is a
//! partial index: paused schedules leave it, as they leave DynamoDB's
//! sparse `by_due` index.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::job_store::SqliteJobs;
use super::sqlite::backend;
use crate::domain::schedule::{Release, Schedule};
use crate::ports::{PortError, PortResult, ScheduleStore};

fn to_json<T: serde::Serialize>(v: &T) -> PortResult<String> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> PortResult<T> {
    serde_json::from_str(s).map_err(|e| PortError::corrupt("a stored record is corrupt", e))
}

fn due_key(s: &Schedule) -> Option<i64> {
    s.next_due
        .filter(|_| !s.paused)
        .map(|t| t.timestamp_micros())
}

#[async_trait]
impl ScheduleStore for SqliteJobs {
    async fn create_schedule(&self, schedule: &Schedule) -> PortResult<()> {
        let mut s = schedule.clone();
        s.version = 1;
        self.db
            .call(move |c| {
                let n = c
                    .execute(
                        "INSERT OR IGNORE INTO schedules (id, owner, next_due, version, body)
                         VALUES (?1, ?2, ?3, 1, ?4)",
                        params![s.id, s.owner, due_key(&s), to_json(&s)?],
                    )
                    .map_err(backend)?;
                if n == 0 {
                    return Err(PortError::AlreadyExists);
                }
                Ok(())
            })
            .await
    }

    async fn get_schedule(&self, id: &str) -> PortResult<Option<Schedule>> {
        Ok(self
            .bodies("SELECT body FROM schedules WHERE id = ?1", id)
            .await?
            .pop())
    }

    async fn update_schedule(&self, schedule: &Schedule) -> PortResult<Schedule> {
        let mut s = schedule.clone();
        self.db
            .call(move |c| {
                let expected = s.version;
                s.version += 1;
                let n = c
                    .execute(
                        "UPDATE schedules SET next_due = ?1, version = ?2, body = ?3
                         WHERE id = ?4 AND version = ?5",
                        params![
                            due_key(&s),
                            s.version as i64,
                            to_json(&s)?,
                            s.id,
                            expected as i64
                        ],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    return Ok(s);
                }
                let exists: Option<i64> = c
                    .query_row(
                        "SELECT 1 FROM schedules WHERE id = ?1",
                        params![s.id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                Err(match exists {
                    Some(_) => PortError::Conflict,
                    None => PortError::NotFound,
                })
            })
            .await
    }

    async fn delete_schedule(&self, id: &str) -> PortResult<()> {
        let id = id.to_string();
        self.db
            .call(move |c| {
                c.execute("DELETE FROM schedules WHERE id = ?1", params![id])
                    .map_err(backend)?;
                Ok(())
            })
            .await
    }

    async fn schedules_of(&self, owner: &str) -> PortResult<Vec<Schedule>> {
        let mut all: Vec<Schedule> = self
            .bodies("SELECT body FROM schedules WHERE owner = ?1", owner)
            .await?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<Schedule>> {
        let now = now.timestamp_micros();
        self.db
            .call(move |c| {
                let mut q = c
                    .prepare_cached(
                        "SELECT body FROM schedules WHERE next_due IS NOT NULL AND next_due <= ?1
                         ORDER BY next_due LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = q
                    .query_map(params![now, limit as i64], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(from_json(&row.map_err(backend)?)?);
                }
                Ok(out)
            })
            .await
    }

    async fn create_release(&self, release: &Release) -> PortResult<()> {
        let mut r = release.clone();
        r.version = 1;
        self.db
            .call(move |c| {
                let n = c
                    .execute(
                        "INSERT OR IGNORE INTO releases (name, version, body) VALUES (?1, 1, ?2)",
                        params![r.name, to_json(&r)?],
                    )
                    .map_err(backend)?;
                if n == 0 {
                    return Err(PortError::AlreadyExists);
                }
                Ok(())
            })
            .await
    }

    async fn get_release(&self, name: &str) -> PortResult<Option<Release>> {
        Ok(self
            .bodies("SELECT body FROM releases WHERE name = ?1", name)
            .await?
            .pop())
    }

    async fn update_release(&self, release: &Release) -> PortResult<Release> {
        let mut r = release.clone();
        self.db
            .call(move |c| {
                let expected = r.version;
                r.version += 1;
                let n = c
                    .execute(
                        "UPDATE releases SET version = ?1, body = ?2 WHERE name = ?3 AND version = ?4",
                        params![r.version as i64, to_json(&r)?, r.name, expected as i64],
                    )
                    .map_err(backend)?;
                match n {
                    1 => Ok(r),
                    _ => Err(PortError::Conflict),
                }
            })
            .await
    }

    async fn releases(&self) -> PortResult<Vec<Release>> {
        let mut all: Vec<Release> = self
            .bodies("SELECT body FROM releases WHERE ?1 = ?1", "")
            .await?;
        all.sort_by(|a, b| (a.transaction_time, &a.name).cmp(&(b.transaction_time, &b.name)));
        Ok(all)
    }
}
