//! A small SQLite connection pool for async callers.
//!
//! SQLite calls block, so each runs on tokio's blocking pool with a pooled
//! connection. WAL mode lets readers run while one writer commits; every
//! write transaction is `BEGIN IMMEDIATE` so two writers queue on the lock
//! instead of failing to upgrade a read lock.
//!
//! The pool is a fixed set of connections, opened with the database: a
//! caller beyond them waits for one. Opening a connection per burst of
//! callers cost its set-up (pragmas, an empty statement cache) each time,
//! and closing one kept its descriptor open anyway (SQLite defers the
//! close while another connection holds a lock on the file): a soak of
//! the local service found the descriptors growing with the load.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::ports::{PortError, PortResult};

#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    path: PathBuf,
    page_size: u32,
    idle: Mutex<Vec<Connection>>,
    /// One per connection: a caller holds one while it uses a connection.
    free: Arc<tokio::sync::Semaphore>,
}

/// Connections per database: more callers than cores wait on SQLite's one
/// writer or on the CPU anyway.
pub const CONNECTIONS: usize = 8;

/// Page sizes: large rows (resource bodies) read in few pages, against
/// small rows updated often (jobs, parts, the queue), where every commit
/// writes each page it changed to the WAL whole.
#[derive(Debug, Clone, Copy)]
pub enum Pages {
    Large = 16384,
    Small = 4096,
}

impl Db {
    /// Opens (creating if needed) the database with pages of `pages` (a
    /// new database only), applies `schema`, then `migrations`
    /// (statements that may already have been applied to an older
    /// database: "duplicate column" is fine).
    pub fn open_migrated(
        path: &Path,
        pages: Pages,
        schema: &str,
        migrations: &[&str],
    ) -> PortResult<Db> {
        let page_size = pages as u32;
        let conn = open_connection(path, page_size)?;
        conn.execute_batch(schema).map_err(backend)?;
        for m in migrations {
            match conn.execute(m, []) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(backend(e)),
            }
        }
        let mut idle = vec![conn];
        while idle.len() < CONNECTIONS {
            idle.push(open_connection(path, page_size)?);
        }
        Ok(Db {
            inner: Arc::new(DbInner {
                path: path.to_path_buf(),
                page_size,
                idle: Mutex::new(idle),
                free: Arc::new(tokio::sync::Semaphore::new(CONNECTIONS)),
            }),
        })
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> PortResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        // The permit goes with the blocking call, which may outlive this
        // future if its caller gives up on it.
        let permit = inner
            .free
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| backend(format!("the connection pool is closed: {e}")))?;
        tokio::task::spawn_blocking(move || {
            // A free permit means an idle connection, unless a call panicked
            // with one: then a new one replaces it.
            let idle = inner.idle.lock().expect("pool lock").pop();
            let mut conn = match idle {
                Some(c) => c,
                None => open_connection(&inner.path, inner.page_size)?,
            };
            let result = f(&mut conn);
            inner.idle.lock().expect("pool lock").push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(backend)?
    }
}

/// `execute` and `query_row` through the connection's statement cache: the
/// stores run the same few statements many times per export or write
/// batch, and parsing and planning one again costs more than running it.
pub trait CachedStatements {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn open_connection(path: &Path, page_size: u32) -> PortResult<Connection> {
    let conn = Connection::open(path).map_err(backend)?;
    // Room for every statement a store runs (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
    // The same plan whatever the parameters: SQLite built with STAT4
    // otherwise prepares a cached statement again whenever a parameter it
    // planned with is bound anew (every page of an export's scan, every
    // queue receive: 3% of an export's CPU), and every query here is a key
    // range whose plan does not depend on the values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(backend)?;
    conn.execute_batch(&format!(
        // page_size only takes effect on a new database (before WAL is on).
        "PRAGMA page_size = {page_size};
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 30000;
         PRAGMA cache_size = -2048;",
    ))
    .map_err(backend)?;
    Ok(conn)
}

/// A failure of local storage (SQLite or the filesystem), classified: a
/// corrupt, unreadable or read-only database or a denied file is permanent;
/// anything else (busy, I/O, a full disk) may pass, so it is transient.
pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PortError {
    use rusqlite::ErrorCode::*;
    let cause = e.into();
    let permanent = if let Some(e) = cause.downcast_ref::<rusqlite::Error>() {
        matches!(
            e.sqlite_error_code(),
            Some(DatabaseCorrupt | NotADatabase | PermissionDenied | ReadOnly | CannotOpen)
        )
    } else if let Some(e) = cause.downcast_ref::<std::io::Error>() {
        matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    } else {
        false
    };
    if permanent {
        PortError::permanent("the local storage refused the operation", cause)
    } else {
        PortError::transient("the local storage is unavailable", cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, StatementStatus};

    #[test]
    fn a_cached_statement_is_not_prepared_again_for_new_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("t.db"), Pages::Small as u32).unwrap();
        // Skewed values and STAT4 statistics: without a stable plan, every
        // new value bound to `a` would make SQLite plan the query again.
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER, b TEXT);
             CREATE INDEX t_a ON t (a);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT CASE WHEN i % 10 = 0 THEN i ELSE 0 END, 'x' FROM n;
             ANALYZE;",
        )
        .unwrap();
        let mut s = conn
            .prepare_cached("SELECT count(*) FROM t WHERE a > ?1 AND a <= ?2")
            .unwrap();
        let mut counts = Vec::new();
        for low in [0, 100, 1000, -1] {
            counts.push(
                s.query_row(params![low, 5000], |r| r.get::<_, i64>(0))
                    .unwrap(),
            );
        }
        assert_eq!(counts, [200, 190, 100, 2000]);
        assert_eq!(s.get_status(StatementStatus::RePrepare), 0);
    }
}
