//! The resource store on SQLite: every version of every resource in one
//! table, with the instant each was superseded, so "the version current at
//! T" is a plain range (`last_updated <= T < superseded_at`).
//!
//! The table is clustered by `(type, last_updated)` (`WITHOUT ROWID`, 16 KiB
//! pages): an export reads a type as one sequential range and touches each
//! page once. `last_updated` is unique per store, and versions never move (an
//! update adds a row and stamps the old one's `superseded_at`), so a scan
//! that resumes from a cursor neither repeats nor skips a resource, however
//! many writes land meanwhile. This store uses a single shard; large types
//! are cut into time ranges instead (`segments`).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::sqlite::{backend, CachedStatements, Db, Pages};
use crate::domain::instant::{from_micros, to_micros};
use crate::domain::resource::compartment_patients;
use crate::domain::write_plan::{self, Head, Heads, Repeats, Rules};
use crate::ports::{
    Clock, PortResult, ResourceStore, Revision, RevisionScan, ScanPage, Segment, ShardScan,
    Version, WriteOp, WriteResult,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    type TEXT NOT NULL,
    last_updated INTEGER NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    superseded_at INTEGER,
    deleted INTEGER NOT NULL,
    body TEXT,
    PRIMARY KEY (type, last_updated)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_id ON versions (type, id, version);
-- Narrow and covering: counts and split points never read bodies.
CREATE INDEX IF NOT EXISTS versions_by_time
    ON versions (type, last_updated, superseded_at, deleted);
CREATE TABLE IF NOT EXISTS compartment (
    patient TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (patient, type, id)
) WITHOUT ROWID;
-- versions: how many versions a type has; every MARK_EVERY-th version's
-- last_updated is kept in type_marks, a sparse position index for planning.
CREATE TABLE IF NOT EXISTS resource_types (
    type TEXT PRIMARY KEY, versions INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS type_marks (
    type TEXT NOT NULL, last_updated INTEGER NOT NULL, PRIMARY KEY (type, last_updated)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO store_meta VALUES ('last_ts', 0);
";

/// Versions written before authorship was recorded have no author; those
/// written before `previous_live` was recorded have it NULL (the audit
/// export then reads their predecessor).
const MIGRATIONS: &[&str] = &[
    "ALTER TABLE versions ADD COLUMN author TEXT",
    "ALTER TABLE versions ADD COLUMN previous_live INTEGER",
];

pub struct SqliteResourceStore {
    db: Db,
    clock: Arc<dyn Clock>,
}

impl SqliteResourceStore {
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> PortResult<Self> {
        Ok(SqliteResourceStore {
            db: Db::open_migrated(path, Pages::Large, SCHEMA, MIGRATIONS)?,
            clock,
        })
    }

    /// Number of versions stored (all types, history included).
    pub async fn version_count(&self) -> PortResult<u64> {
        self.db
            .call(|c| {
                c.query_row("SELECT count(*) FROM versions", [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await
    }
}

/// Every this many versions of a type, the store notes where it stands.
const MARK_EVERY: u64 = 1000;

const VERSION_COLUMNS: &str = "type, id, version, last_updated, deleted, body";

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<Version> {
    Ok(Version {
        resource_type: r.get(0)?,
        id: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        last_updated: r.get(3)?,
        deleted: r.get::<_, i64>(4)? != 0,
        body: r.get(5)?,
    })
}

/// What sets this store's writes apart (see `write_plan::Rules`): it writes
/// row by row, so a write may change one resource twice, each op on top of
/// the one before; and a row holds a body of any size.
const WRITE_RULES: Rules = Rules {
    repeats: Repeats::InOrder,
    max_body_bytes: None,
};

/// The newest version of each resource the ops name, read inside the
/// write's transaction (which holds the write lock, so none moves on).
fn read_heads(c: &Connection, ops: &[WriteOp]) -> PortResult<Heads> {
    let mut heads = Heads::new();
    for op in ops {
        let (resource_type, id) = op.target();
        let target = (resource_type.to_string(), id.to_string());
        if heads.contains_key(&target) {
            continue;
        }
        if let Some(head) = read_head(c, resource_type, id)? {
            heads.insert(target, head);
        }
    }
    Ok(heads)
}

fn read_head(c: &Connection, resource_type: &str, id: &str) -> PortResult<Option<Head>> {
    c.query_row_cached(
        "SELECT last_updated, version, deleted FROM versions INDEXED BY versions_by_id
         WHERE type = ?1 AND id = ?2 ORDER BY version DESC LIMIT 1",
        params![resource_type, id],
        |r| {
            Ok(Head {
                last_updated: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                deleted: r.get::<_, i64>(2)? != 0,
            })
        },
    )
    .optional()
    .map_err(backend)
}

/// Adds one planned version: stamps the one before it superseded, links the
/// patients an upsert references, and counts it in its type.
fn store_version(
    c: &Connection,
    op: &WriteOp,
    previous: Option<Head>,
    v: &Version,
    author: &str,
) -> PortResult<()> {
    if let Some(previous) = previous {
        c.execute_cached(
            "UPDATE versions SET superseded_at = ?1 WHERE type = ?2 AND last_updated = ?3",
            params![v.last_updated, v.resource_type, previous.last_updated],
        )
        .map_err(backend)?;
    }
    if let WriteOp::Upsert { resource, .. } = op {
        for patient in compartment_patients(&v.resource_type, resource.value()) {
            c.execute_cached(
                "INSERT OR IGNORE INTO compartment VALUES (?1, ?2, ?3)",
                params![patient, v.resource_type, v.id],
            )
            .map_err(backend)?;
        }
    }
    c.execute_cached(
        "INSERT INTO versions (type, last_updated, id, version, superseded_at, deleted, body, author, previous_live)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8)",
        params![
            v.resource_type,
            v.last_updated,
            v.id,
            v.version as i64,
            v.deleted as i64,
            v.body,
            author,
            previous.map(|p| !p.deleted as i64)
        ],
    )
    .map_err(backend)?;
    count_version(c, v)
}

/// Counts a new version in its type, and notes every `MARK_EVERY`-th one's
/// instant (the count that decides it is the database's, so one at a time).
fn count_version(c: &Connection, v: &Version) -> PortResult<()> {
    let versions: i64 = c
        .query_row_cached(
            "INSERT INTO resource_types (type, versions) VALUES (?1, 1)
             ON CONFLICT (type) DO UPDATE SET versions = versions + 1
             RETURNING versions",
            params![v.resource_type],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if (versions as u64).is_multiple_of(MARK_EVERY) {
        c.execute_cached(
            "INSERT INTO type_marks VALUES (?1, ?2)",
            params![v.resource_type, v.last_updated],
        )
        .map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl ResourceStore for SqliteResourceStore {
    fn shard_count(&self) -> u16 {
        1
    }

    async fn write_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        let now = to_micros(self.clock.now());
        let author = author.to_string();
        self.db
            .call(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let clock: i64 = tx
                    .query_row(
                        "SELECT value FROM store_meta WHERE key='last_ts'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                let heads = read_heads(&tx, &ops)?;
                let plan = write_plan::plan(&heads, clock, now, &ops, WRITE_RULES)?;
                for (op, step) in ops.iter().zip(&plan.steps) {
                    if let Some(version) = step.written() {
                        store_version(&tx, op, step.previous, version, &author)?;
                    }
                }
                tx.execute_cached(
                    "UPDATE store_meta SET value = ?1 WHERE key = 'last_ts'",
                    params![plan.clock_after],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(plan.into_results())
            })
            .await
    }

    async fn read_current(&self, resource_type: &str, id: &str) -> PortResult<Option<Version>> {
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.db
            .call(move |c| {
                c.query_row_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM versions INDEXED BY versions_by_id WHERE type = ?1 AND id = ?2
                     ORDER BY version DESC LIMIT 1"
                ), params![t, i], row_to_version)
                .optional()
                .map_err(backend)
            })
            .await
    }

    async fn read_as_of(
        &self,
        resource_type: &str,
        id: &str,
        as_of: i64,
    ) -> PortResult<Option<Version>> {
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.db
            .call(move |c| {
                c.query_row_cached(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM versions INDEXED BY versions_by_id
                         WHERE type = ?1 AND id = ?2 AND last_updated <= ?3
                         ORDER BY version DESC LIMIT 1"
                    ),
                    params![t, i, as_of],
                    row_to_version,
                )
                .optional()
                .map_err(backend)
            })
            .await
    }

    async fn read_many_as_of(
        &self,
        resource_type: &str,
        ids: &[String],
        as_of: i64,
    ) -> PortResult<Vec<Version>> {
        let (t, ids) = (resource_type.to_string(), ids.to_vec());
        self.db
            .call(move |c| {
                let mut s = c
                    .prepare_cached(&format!(
                        "SELECT {VERSION_COLUMNS} FROM versions INDEXED BY versions_by_id
                         WHERE type = ?1 AND id = ?2 AND last_updated <= ?3
                         ORDER BY version DESC LIMIT 1"
                    ))
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(v) = s
                        .query_row(params![t, id, as_of], row_to_version)
                        .optional()
                        .map_err(backend)?
                    {
                        out.push(v);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn revisions(&self, scan: RevisionScan<'_>) -> PortResult<Vec<Revision>> {
        let (t, from, before, limit) = (
            scan.resource_type.to_string(),
            scan.from,
            scan.before,
            scan.limit as i64,
        );
        let body = if scan.with_bodies { "body" } else { "NULL" };
        let sql = format!(
            "SELECT type, id, version, last_updated, deleted, {body}, author, previous_live FROM versions
             WHERE type = ?1 AND last_updated >= ?2 AND last_updated < ?3
             ORDER BY last_updated DESC LIMIT ?4"
        );
        self.db
            .call(move |c| {
                let mut s = c.prepare_cached(&sql).map_err(backend)?;
                let rows = s
                    .query_map(params![t, from, before, limit], |r| {
                        Ok(Revision {
                            version: row_to_version(r)?,
                            author: r.get(6)?,
                            previous_at: None,
                            previous_live: r.get::<_, Option<i64>>(7)?.map(|live| live != 0),
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn predecessors(
        &self,
        resource_type: &str,
        of: &[Revision],
        with_bodies: bool,
    ) -> PortResult<Vec<Option<Version>>> {
        let t = resource_type.to_string();
        let wanted: Vec<(String, u64)> = of
            .iter()
            .map(|r| (r.version.id.clone(), r.version.version))
            .collect();
        let sql = if with_bodies {
            "SELECT type, id, version, last_updated, deleted, body FROM versions
             INDEXED BY versions_by_id WHERE type = ?1 AND id = ?2 AND version = ?3"
        } else {
            // From the two indexes alone: the id index holds the version's
            // time, the time index its deletion flag. The table's pages,
            // bodies and all, are not read (they were most of the audit
            // export's time).
            "SELECT i.type, i.id, i.version, i.last_updated, t.deleted, NULL
             FROM versions AS i INDEXED BY versions_by_id
             JOIN versions AS t INDEXED BY versions_by_time
               ON t.type = i.type AND t.last_updated = i.last_updated
             WHERE i.type = ?1 AND i.id = ?2 AND i.version = ?3"
        };
        self.db
            .call(move |c| {
                // One read transaction: outside one, every lookup takes and
                // releases the WAL's read lock.
                let tx = c.transaction().map_err(backend)?;
                let found = {
                    let mut s = tx.prepare_cached(sql).map_err(backend)?;
                    wanted
                        .into_iter()
                        .map(|(id, version)| match version {
                            0 | 1 => Ok(None),
                            v => s
                                .query_row(params![t, id, (v - 1) as i64], row_to_version)
                                .optional()
                                .map_err(backend),
                        })
                        .collect::<PortResult<Vec<_>>>()?
                };
                tx.commit().map_err(backend)?;
                Ok(found)
            })
            .await
    }

    async fn read_live_before(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> PortResult<Option<Version>> {
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.db
            .call(move |c| {
                c.query_row_cached(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM versions INDEXED BY versions_by_id
                         WHERE type = ?1 AND id = ?2 AND version < ?3 AND deleted = 0
                         ORDER BY version DESC LIMIT 1"
                    ),
                    params![t, i, version as i64],
                    row_to_version,
                )
                .optional()
                .map_err(backend)
            })
            .await
    }

    async fn snapshot(&self) -> PortResult<DateTime<Utc>> {
        let now = to_micros(self.clock.now());
        self.db
            .call(move |c| {
                // Inside the write lock: every committed write is <= t, and
                // bumping last_ts makes every later write > t.
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(backend)?;
                let last: i64 = tx
                    .query_row_cached(
                        "SELECT value FROM store_meta WHERE key='last_ts'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                let t = now.max(last);
                tx.execute_cached(
                    "UPDATE store_meta SET value = ?1 WHERE key = 'last_ts'",
                    params![t],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
                Ok(from_micros(t))
            })
            .await
    }

    async fn resource_types(&self) -> PortResult<Vec<String>> {
        self.db
            .call(|c| {
                let mut s = c
                    .prepare_cached("SELECT type FROM resource_types ORDER BY type")
                    .map_err(backend)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(backend)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(backend)
            })
            .await
    }

    async fn segments(
        &self,
        resource_type: &str,
        after: Option<i64>,
        as_of: i64,
        include_deleted: bool,
        target: u64,
    ) -> PortResult<Vec<Segment>> {
        let t = resource_type.to_string();
        let target = target.max(1);
        self.db
            .call(move |c| {
                if let Some(segments) = segments_from_marks(c, &t, after, as_of, target)? {
                    return Ok(segments);
                }
                // A small range: one exact pass over the narrow index, cut
                // after every `target` versions.
                let mut s = c
                    .prepare_cached(
                        "SELECT last_updated FROM versions INDEXED BY versions_by_time
                         WHERE type = ?1 AND last_updated > ?2 AND last_updated <= ?3
                           AND (superseded_at IS NULL OR superseded_at > ?3)
                           AND (?4 OR deleted = 0)
                         ORDER BY last_updated",
                    )
                    .map_err(backend)?;
                let mut rows = s
                    .query(params![
                        t,
                        after.unwrap_or(i64::MIN),
                        as_of,
                        include_deleted
                    ])
                    .map_err(backend)?;
                let (mut segments, mut count, mut lower) = (Vec::new(), 0u64, after);
                let segment = |after, until, count| Segment {
                    first_shard: 0,
                    last_shard: 0,
                    after,
                    until,
                    count,
                    empty_shards: 0,
                };
                while let Some(row) = rows.next().map_err(backend)? {
                    count += 1;
                    if count == target {
                        let cut: i64 = row.get(0).map_err(backend)?;
                        segments.push(segment(lower, Some(cut), count));
                        (lower, count) = (Some(cut), 0);
                    }
                }
                if count > 0 {
                    segments.push(segment(lower, None, count));
                } else if let Some(last) = segments.last_mut() {
                    last.until = None; // the last cut was the last version
                }
                Ok(segments)
            })
            .await
    }

    async fn scan_shard(&self, scan: ShardScan<'_>) -> PortResult<ScanPage> {
        let t = scan.resource_type.to_string();
        let ShardScan {
            after,
            until,
            as_of,
            include_deleted,
            limit,
            ..
        } = scan;
        let upper = until.map_or(as_of, |u| u.min(as_of));
        self.db
            .call(move |c| {
                // One cached statement for every page (see `open_connection`
                // on plans that do not depend on the parameters).
                let mut s = c
                    .prepare_cached(
                        "SELECT id, version, last_updated, deleted, body FROM versions
                         WHERE type = ?1 AND last_updated > ?2 AND last_updated <= ?3
                           AND (superseded_at IS NULL OR superseded_at > ?4)
                           AND (?5 OR deleted = 0)
                         ORDER BY type, last_updated LIMIT ?6",
                    )
                    .map_err(backend)?;
                let mut rows = s
                    .query(params![
                        t,
                        after.unwrap_or(i64::MIN),
                        upper,
                        as_of,
                        include_deleted,
                        limit as i64
                    ])
                    .map_err(backend)?;
                // The type is known, and bodies go straight into the page's
                // buffer, sized so that a page of the sample's larger types
                // (1.1-1.3 KB a resource) is not copied again as it grows.
                let mut page = ScanPage::with_capacity(limit.min(4096), limit.min(4096) * 1536);
                while let Some(r) = rows.next().map_err(backend)? {
                    let body = match r.get_ref(4).map_err(backend)? {
                        rusqlite::types::ValueRef::Text(b) => {
                            Some(std::str::from_utf8(b).map_err(backend)?)
                        }
                        _ => None,
                    };
                    page.push(
                        r.get_ref(0)
                            .and_then(|v| Ok(v.as_str()?))
                            .map_err(backend)?,
                        r.get::<_, i64>(1).map_err(backend)? as u64,
                        r.get(2).map_err(backend)?,
                        r.get::<_, i64>(3).map_err(backend)? != 0,
                        body,
                    );
                }
                // A full page may have been the last; one more read says so.
                page.more = page.len() == limit;
                Ok(page)
            })
            .await
    }

    async fn compartment_ids(
        &self,
        patient_id: &str,
        resource_type: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<String>> {
        let (p, t, a) = (
            patient_id.to_string(),
            resource_type.to_string(),
            after_id.unwrap_or("").to_string(),
        );
        self.db
            .call(move |c| {
                let mut s = c
                    .prepare_cached(
                        "SELECT id FROM compartment WHERE patient = ?1 AND type = ?2 AND id > ?3
                         ORDER BY id LIMIT ?4",
                    )
                    .map_err(backend)?;
                let rows = s
                    .query_map(params![p, t, a, limit as i64], |r| r.get(0))
                    .map_err(backend)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(backend)
            })
            .await
    }
}

/// Cuts a large range at its marks: O(versions / MARK_EVERY) instead of a
/// pass over every version. Counts are estimates (marks count all versions,
/// superseded ones too); the segments still cover the range exactly. `None`
/// when the range is too small for marks to help.
fn segments_from_marks(
    c: &rusqlite::Connection,
    resource_type: &str,
    after: Option<i64>,
    as_of: i64,
    target: u64,
) -> PortResult<Option<Vec<Segment>>> {
    let mut s = c
        .prepare_cached(
            "SELECT last_updated FROM type_marks
             WHERE type = ?1 AND last_updated > ?2 AND last_updated <= ?3 ORDER BY last_updated",
        )
        .map_err(backend)?;
    let marks = s
        .query_map(
            params![resource_type, after.unwrap_or(i64::MIN), as_of],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        .collect::<Result<Vec<i64>, _>>()
        .map_err(backend)?;
    let per_segment = (target / MARK_EVERY).max(1) as usize;
    if marks.len() < 2 * per_segment {
        return Ok(None);
    }
    let mut segments = Vec::new();
    let mut lower = after;
    for cut in marks.iter().skip(per_segment - 1).step_by(per_segment) {
        segments.push(Segment {
            first_shard: 0,
            last_shard: 0,
            after: lower,
            until: Some(*cut),
            count: per_segment as u64 * MARK_EVERY,
            empty_shards: 0,
        });
        lower = Some(*cut);
    }
    let tail_marks = (marks.len() % per_segment) as u64;
    segments.push(Segment {
        first_shard: 0,
        last_shard: 0,
        after: lower,
        until: None,
        count: tail_marks * MARK_EVERY + MARK_EVERY / 2,
        empty_shards: 0,
    });
    Ok(Some(segments))
}
