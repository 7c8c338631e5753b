//! Schedules and releases in the jobs table:
//!
//! | item | pk | sk |
//! |---|---|---|
//! | schedule | `SCHEDULE#<id>` | `SCHEDULE` |
//! | release | `RELEASE#<name>` | `RELEASE` |
//!
//! Beside `doc` and `version`: `list_key` (`SCHEDULES#<owner>`, or
//! `RELEASES`) for the `by_list_key` index that lists them, and, while a
//! schedule is active, `due_bucket` and `next_due` (µs) for the sparse
//! `by_due` index the scheduler queries: the due schedules are read by key,
//! never by a scan.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::backend;
use super::dynamo::{get_n, get_s, key, n, s, Item};
use super::jobs::{from_json, to_json, DynamoJobs};
use crate::domain::schedule::{Release, Schedule};
use crate::ports::{PortError, PortResult, ScheduleStore};

pub const DUE_INDEX: &str = "by_due";
pub const LIST_INDEX: &str = "by_list_key";
const DUE: &str = "due";
const RELEASES: &str = "RELEASES";

fn schedule_key(id: &str) -> Item {
    key(format!("SCHEDULE#{id}"), "SCHEDULE")
}

fn release_key(name: &str) -> Item {
    key(format!("RELEASE#{name}"), "RELEASE")
}

fn schedule_item(sc: &Schedule) -> PortResult<Item> {
    let mut item = schedule_key(&sc.id);
    item.insert("doc".into(), s(to_json(sc)?));
    item.insert("version".into(), n(sc.version));
    item.insert("list_key".into(), s(format!("SCHEDULES#{}", sc.owner)));
    if let Some(due) = sc.next_due.filter(|_| !sc.paused) {
        item.insert("due_bucket".into(), s(DUE));
        item.insert("next_due".into(), n(due.timestamp_micros()));
    }
    Ok(item)
}

fn release_item(r: &Release) -> PortResult<Item> {
    let mut item = release_key(&r.name);
    item.insert("doc".into(), s(to_json(r)?));
    item.insert("version".into(), n(r.version));
    item.insert("list_key".into(), s(RELEASES));
    Ok(item)
}

fn from_item<T: serde::de::DeserializeOwned>(item: &Item) -> PortResult<(T, u64)> {
    Ok((from_json(get_s(item, "doc")?)?, get_n(item, "version")?))
}

fn schedule_from(item: &Item) -> PortResult<Schedule> {
    let (mut sc, version): (Schedule, u64) = from_item(item)?;
    sc.version = version;
    Ok(sc)
}

fn release_from(item: &Item) -> PortResult<Release> {
    let (mut r, version): (Release, u64) = from_item(item)?;
    r.version = version;
    Ok(r)
}

impl DynamoJobs {
    async fn listed(&self, list_key: String) -> PortResult<Vec<Item>> {
        self.client
            .query()
            .table_name(&self.table)
            .index_name(LIST_INDEX)
            .key_condition_expression("list_key = :k")
            .expression_attribute_values(":k", s(list_key))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(backend)
    }

    /// A conditional put on `version`: `NotFound` if the item is gone.
    async fn put_versioned(&self, item: Item, expected: u64) -> PortResult<()> {
        self.put_if(
            item,
            "attribute_exists(pk) AND version = :expected",
            HashMap::from([(":expected".into(), n(expected))]),
        )
        .await
    }

    async fn exists(&self, key: Item) -> PortResult<bool> {
        Ok(self.get_item(key).await?.is_some())
    }
}

#[async_trait]
impl ScheduleStore for DynamoJobs {
    async fn create_schedule(&self, schedule: &Schedule) -> PortResult<()> {
        let mut sc = schedule.clone();
        sc.version = 1;
        self.put_new(schedule_item(&sc)?).await
    }

    async fn get_schedule(&self, id: &str) -> PortResult<Option<Schedule>> {
        self.get_item(schedule_key(id))
            .await?
            .map(|i| schedule_from(&i))
            .transpose()
    }

    async fn update_schedule(&self, schedule: &Schedule) -> PortResult<Schedule> {
        let mut sc = schedule.clone();
        let expected = sc.version;
        sc.version += 1;
        match self.put_versioned(schedule_item(&sc)?, expected).await {
            Ok(()) => Ok(sc),
            Err(PortError::Conflict) if !self.exists(schedule_key(&sc.id)).await? => {
                Err(PortError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_schedule(&self, id: &str) -> PortResult<()> {
        self.delete_keys(vec![schedule_key(id)]).await
    }

    async fn schedules_of(&self, owner: &str) -> PortResult<Vec<Schedule>> {
        let mut all = self
            .listed(format!("SCHEDULES#{owner}"))
            .await?
            .iter()
            .map(schedule_from)
            .collect::<PortResult<Vec<_>>>()?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<Schedule>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(DUE_INDEX)
            .key_condition_expression("due_bucket = :due AND next_due <= :now")
            .expression_attribute_values(":due", s(DUE))
            .expression_attribute_values(":now", n(now.timestamp_micros()))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(backend)?;
        out.items().iter().map(schedule_from).collect()
    }

    async fn create_release(&self, release: &Release) -> PortResult<()> {
        let mut r = release.clone();
        r.version = 1;
        self.put_new(release_item(&r)?).await
    }

    async fn get_release(&self, name: &str) -> PortResult<Option<Release>> {
        self.get_item(release_key(name))
            .await?
            .map(|i| release_from(&i))
            .transpose()
    }

    async fn update_release(&self, release: &Release) -> PortResult<Release> {
        let mut r = release.clone();
        let expected = r.version;
        r.version += 1;
        self.put_versioned(release_item(&r)?, expected).await?;
        Ok(r)
    }

    async fn releases(&self) -> PortResult<Vec<Release>> {
        let mut all = self
            .listed(RELEASES.into())
            .await?
            .iter()
            .map(release_from)
            .collect::<PortResult<Vec<_>>>()?;
        all.sort_by(|a, b| (a.transaction_time, &a.name).cmp(&(b.transaction_time, &b.name)));
        Ok(all)
    }
}
