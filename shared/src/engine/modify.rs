//! Read, change, write back on condition: the one loop every record
//! update goes through.
//!
//! The stores write a job, a schedule or a release only if it is still the
//! version that was read (`PortError::Conflict` otherwise). [`modify`]
//! reads the record, lets the caller decide on the fresh copy, and writes
//! it back, reading again after a conflict. It gives up after
//! [`MAX_TRIES`] with `PortError::Conflict`, which is transient: a worker's
//! message is retried, and an HTTP caller gets 409 and may try again.
//!
//! A schedule's run is claimed the same way, but its job is stored before
//! the conditional write (`Schedules::claim_run`), so those loops call the
//! claim themselves, bounded by the same [`MAX_TRIES`].

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::error::{PortError, PortResult};
use crate::domain::job::Job;
use crate::domain::schedule::{Release, Schedule};
use crate::ports::{JobStore, ScheduleStore};

/// Conditional writes tried before giving up. A conflict means another
/// writer got through, so the store as a whole always moves on; this bounds
/// how long one writer keeps losing.
pub(crate) const MAX_TRIES: u32 = 8;

/// What [`modify`] did.
#[derive(Debug)]
pub(crate) enum Modified<T> {
    /// There is no such record (or it went before the write).
    Missing,
    /// The change left the record as it was, given here as read.
    Unchanged(T),
    /// The record as stored.
    Saved(T),
}

/// A kind of record that is written back on condition: read by id, and
/// written only if the stored one is still the version that was read.
#[async_trait]
pub(crate) trait Records<T>: Sync {
    async fn read(&self, id: &str) -> PortResult<Option<T>>;
    /// `PortError::Conflict`: the stored record moved on since it was read.
    async fn write(&self, record: &T) -> PortResult<T>;
}

/// Reads a record, passes it to `change`, and writes it back on condition
/// when `change` returns `true` (`false`: leave it as it is). `change` runs
/// again on a fresh copy after each conflict, so it decides from what is
/// stored now, never from what was read before.
pub(crate) async fn modify<T: Send + Sync, E>(
    records: &dyn Records<T>,
    id: &str,
    mut change: impl FnMut(&mut T) -> Result<bool, E> + Send,
) -> Result<Modified<T>, E>
where
    E: From<PortError>,
{
    for attempt in 0..MAX_TRIES {
        if attempt > 0 {
            // Short and growing: the writer that won is usually done.
            tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
        }
        let Some(mut record) = records.read(id).await? else {
            return Ok(Modified::Missing);
        };
        if !change(&mut record)? {
            return Ok(Modified::Unchanged(record));
        }
        match records.write(&record).await {
            Ok(saved) => return Ok(Modified::Saved(saved)),
            Err(PortError::Conflict) => continue,
            Err(PortError::NotFound) => return Ok(Modified::Missing),
            Err(e) => return Err(e.into()),
        }
    }
    Err(PortError::Conflict.into())
}

struct Jobs<'a>(&'a dyn JobStore);
struct Schedules<'a>(&'a dyn ScheduleStore);
struct Releases<'a>(&'a dyn ScheduleStore);

#[async_trait]
impl Records<Job> for Jobs<'_> {
    async fn read(&self, id: &str) -> PortResult<Option<Job>> {
        self.0.get_job(id).await
    }
    async fn write(&self, job: &Job) -> PortResult<Job> {
        self.0.update_job(job).await
    }
}

#[async_trait]
impl Records<Schedule> for Schedules<'_> {
    async fn read(&self, id: &str) -> PortResult<Option<Schedule>> {
        self.0.get_schedule(id).await
    }
    async fn write(&self, schedule: &Schedule) -> PortResult<Schedule> {
        self.0.update_schedule(schedule).await
    }
}

#[async_trait]
impl Records<Release> for Releases<'_> {
    async fn read(&self, name: &str) -> PortResult<Option<Release>> {
        self.0.get_release(name).await
    }
    async fn write(&self, release: &Release) -> PortResult<Release> {
        self.0.update_release(release).await
    }
}

/// [`modify`] on a job.
pub(crate) async fn modify_job<E: From<PortError>>(
    jobs: &dyn JobStore,
    id: &str,
    change: impl FnMut(&mut Job) -> Result<bool, E> + Send,
) -> Result<Modified<Job>, E> {
    modify(&Jobs(jobs), id, change).await
}

/// [`modify`] on a schedule.
pub(crate) async fn modify_schedule<E: From<PortError>>(
    schedules: &dyn ScheduleStore,
    id: &str,
    change: impl FnMut(&mut Schedule) -> Result<bool, E> + Send,
) -> Result<Modified<Schedule>, E> {
    modify(&Schedules(schedules), id, change).await
}

/// [`modify`] on a release.
pub(crate) async fn modify_release<E: From<PortError>>(
    schedules: &dyn ScheduleStore,
    name: &str,
    change: impl FnMut(&mut Release) -> Result<bool, E> + Send,
) -> Result<Modified<Release>, E> {
    modify(&Releases(schedules), name, change).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A record with a version, stored the way the stores do: a write
    /// succeeds only on the version it read, and `conflicts` more writers
    /// get in first.
    struct Cell {
        stored: Mutex<Option<(u32, i32)>>,
        conflicts: AtomicU32,
        writes: AtomicU32,
    }

    impl Cell {
        fn new(value: Option<i32>, conflicts: u32) -> Self {
            Cell {
                stored: Mutex::new(value.map(|v| (1, v))),
                conflicts: AtomicU32::new(conflicts),
                writes: AtomicU32::new(0),
            }
        }
    }

    #[async_trait]
    impl Records<(u32, i32)> for Cell {
        async fn read(&self, _: &str) -> PortResult<Option<(u32, i32)>> {
            Ok(*self.stored.lock().unwrap())
        }

        async fn write(&self, record: &(u32, i32)) -> PortResult<(u32, i32)> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut stored = self.stored.lock().unwrap();
            if self.conflicts.load(Ordering::SeqCst) > 0 {
                // Another writer adds 100 first.
                self.conflicts.fetch_sub(1, Ordering::SeqCst);
                let (v, value) = stored.unwrap();
                *stored = Some((v + 1, value + 100));
                return Err(PortError::Conflict);
            }
            match *stored {
                Some((v, _)) if v == record.0 => {
                    *stored = Some((v + 1, record.1));
                    Ok(stored.unwrap())
                }
                _ => Err(PortError::Conflict),
            }
        }
    }

    impl Cell {
        async fn add_one(&self) -> PortResult<Modified<(u32, i32)>> {
            modify(self, "cell", |r: &mut (u32, i32)| {
                r.1 += 1;
                Ok::<_, PortError>(true)
            })
            .await
        }
    }

    #[tokio::test]
    async fn a_change_after_conflicts_builds_on_what_the_winners_wrote() {
        let cell = Cell::new(Some(0), 3);
        let out = cell.add_one().await.unwrap();
        // Three others added 100 each; ours comes on top, once.
        assert!(matches!(out, Modified::Saved((5, 301))), "{out:?}");
        assert_eq!(cell.writes.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn it_gives_up_with_a_conflict_after_the_last_try() {
        let cell = Cell::new(Some(0), MAX_TRIES);
        let err = cell.add_one().await.unwrap_err();
        assert!(matches!(err, PortError::Conflict), "{err:?}");
        assert_eq!(cell.writes.load(Ordering::SeqCst), MAX_TRIES);
        // One conflict fewer, and the last try gets through.
        let cell = Cell::new(Some(0), MAX_TRIES - 1);
        assert!(matches!(cell.add_one().await, Ok(Modified::Saved(_))));
    }

    #[tokio::test]
    async fn a_missing_record_is_reported_not_written() {
        let cell = Cell::new(None, 0);
        assert!(matches!(cell.add_one().await, Ok(Modified::Missing)));
        assert_eq!(cell.writes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_change_that_declines_writes_nothing_and_gives_the_record() {
        let cell = Cell::new(Some(7), 0);
        let out = modify(&cell, "cell", |r: &mut (u32, i32)| {
            Ok::<_, PortError>(r.1 > 10)
        })
        .await
        .unwrap();
        assert!(matches!(out, Modified::Unchanged((1, 7))), "{out:?}");
        assert_eq!(cell.writes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_change_decides_again_on_each_fresh_copy() {
        // The winner's write makes ours unnecessary: it is not written.
        let cell = Cell::new(Some(0), 1);
        let out = modify(&cell, "cell", |r: &mut (u32, i32)| {
            if r.1 >= 100 {
                return Ok::<_, PortError>(false);
            }
            r.1 = 100;
            Ok(true)
        })
        .await
        .unwrap();
        assert!(matches!(out, Modified::Unchanged((2, 100))), "{out:?}");
        assert_eq!(cell.writes.load(Ordering::SeqCst), 1);
    }
}
