//! Jobs, parts, client registrations and used assertion ids in one DynamoDB
//! table (`pk`, `sk`):
//!
//! | item | pk | sk |
//! |---|---|---|
//! | job | `JOB#<id>` | `JOB` |
//! | part | `JOB#<id>` | `PART#<index, 8 digits>` |
//! | job's consumption counters | `JOB#<id>` | `USAGE` |
//! | client | `CLIENT#<client_id>` | `CLIENT` |
//! | used assertion id | `JTI#<client_id>#<jti>` | `JTI` |
//!
//! Records are JSON in `doc`; what conditions and queries need sits beside
//! it: `version` (every update is conditional on it), the job's
//! `parts_remaining` (decremented in the same transaction that completes a
//! part), and `expires_at` (µs) with `expiry_bucket`, the sparse `by_expiry`
//! index the sweeper queries. `ttl` (epoch seconds) lets DynamoDB drop
//! expired items on its own, two days after the sweeper's turn.
//! `active_owner` is set while a job is queued or running, so the sparse
//! `by_active_owner` index counts a client's exports in progress.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::backend;
use super::dynamo::{
    self, backoff, batch_write, get_n, get_s, is_condition_failure, key, n, s, tx_failure, BatchOp,
    Item, TxFailure,
};
use crate::domain::client::ClientRegistration;
use crate::domain::job::{Job, Part};
use crate::domain::usage::Usage;
use crate::ports::{ClientStore, JobStore, PortError, PortResult};

/// The `by_expiry` index: its one partition key value, and its name.
pub const EXPIRY_INDEX: &str = "by_expiry";
/// The sparse `by_active_owner` index: jobs in progress, by owner.
pub const ACTIVE_OWNER_INDEX: &str = "by_active_owner";
/// The sparse `by_reuse_key` index: reusable jobs, by request key.
pub const REUSE_KEY_INDEX: &str = "by_reuse_key";
const EXPIRING: &str = "expiring";
/// DynamoDB's own expiry runs this long after the sweeper's.
const TTL_GRACE_SECONDS: i64 = 2 * 86_400;
/// A job's consumption counters: one item beside the job, `u.<counter>`
/// attributes. It outlives a job the sweeper missed by DynamoDB's TTL.
const USAGE_SK: &str = "USAGE";
const USAGE_ATTRIBUTE_PREFIX: &str = "u.";
const USAGE_TTL_SECONDS: i64 = 30 * 86_400;
/// Concurrent requests when writing many items.
const CONCURRENCY: usize = 16;
/// BatchWriteItem takes at most 25 requests.

#[derive(Clone)]
pub struct DynamoJobs {
    pub(super) client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
}

fn job_pk(id: &str) -> String {
    format!("JOB#{id}")
}

fn part_sk(index: u32) -> String {
    format!("PART#{index:08}")
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> PortResult<String> {
    serde_json::to_string(v).map_err(|e| PortError::corrupt("a record", e))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> PortResult<T> {
    serde_json::from_str(s).map_err(|e| PortError::corrupt("a stored record is corrupt", e))
}

fn job_item(job: &Job) -> PortResult<Item> {
    let mut item = key(job_pk(&job.id), "JOB");
    item.insert("doc".into(), s(to_json(job)?));
    item.insert("version".into(), n(job.version));
    item.insert("parts_remaining".into(), n(job.parts_remaining));
    if job.is_active() {
        item.insert("active_owner".into(), s(&job.owner));
    }
    if let Some(key) = job.reuse_key() {
        item.insert("reuse_key".into(), s(key));
    }
    if let Some(t) = job.expires_at {
        item.insert("expires_at".into(), n(t.timestamp_micros()));
        item.insert("expiry_bucket".into(), s(EXPIRING));
        item.insert("ttl".into(), n(t.timestamp() + TTL_GRACE_SECONDS));
    }
    Ok(item)
}

fn job_from_item(item: &Item) -> PortResult<Job> {
    let mut job: Job = from_json(get_s(item, "doc")?)?;
    // The counter and version are updated outside `doc` (complete_part).
    job.version = get_n(item, "version")?;
    job.parts_remaining = get_n(item, "parts_remaining")?;
    Ok(job)
}

fn part_item(part: &Part) -> PortResult<Item> {
    let mut item = key(job_pk(&part.job_id), part_sk(part.index));
    item.insert("doc".into(), s(to_json(part)?));
    item.insert("version".into(), n(part.version));
    Ok(item)
}

fn part_from_item(item: &Item) -> PortResult<Part> {
    let mut part: Part = from_json(get_s(item, "doc")?)?;
    part.version = get_n(item, "version")?;
    Ok(part)
}

impl DynamoJobs {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoJobs {
            client,
            table: table.into(),
        }
    }

    pub(super) async fn get_item(&self, key: Item) -> PortResult<Option<Item>> {
        dynamo::get_item(&self.client, &self.table, key).await
    }

    /// Puts `item` if `condition` holds; `Conflict` if it does not.
    pub(super) async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> PortResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await
            .map_err(|e| {
                if is_condition_failure(&e) {
                    PortError::Conflict
                } else {
                    backend(e)
                }
            })?;
        Ok(())
    }

    /// Puts a new item: `AlreadyExists` if its key is taken.
    pub(super) async fn put_new(&self, item: Item) -> PortResult<()> {
        self.put_if(item, "attribute_not_exists(pk)", HashMap::new())
            .await
            .map_err(|e| match e {
                PortError::Conflict => PortError::AlreadyExists,
                e => e,
            })
    }

    /// Every item under a partition key, strongly consistent.
    async fn query_partition(&self, pk: &str, sk_prefix: &str) -> PortResult<Vec<Item>> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(sk_prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(backend)
    }

    pub(super) async fn delete_keys(&self, keys: Vec<Item>) -> PortResult<()> {
        batch_write(
            &self.client,
            &self.table,
            keys.into_iter().map(BatchOp::Delete).collect(),
        )
        .await
    }
}

#[async_trait]
impl JobStore for DynamoJobs {
    async fn create_job(&self, job: &Job) -> PortResult<()> {
        let mut job = job.clone();
        job.version = 1;
        self.put_new(job_item(&job)?).await
    }

    async fn get_job(&self, id: &str) -> PortResult<Option<Job>> {
        self.get_item(key(job_pk(id), "JOB"))
            .await?
            .map(|item| job_from_item(&item))
            .transpose()
    }

    async fn update_job(&self, job: &Job) -> PortResult<Job> {
        let mut job = job.clone();
        let expected = job.version;
        job.version += 1;
        self.put_if(
            job_item(&job)?,
            "version = :expected",
            HashMap::from([(":expected".into(), n(expected))]),
        )
        .await?;
        Ok(job)
    }

    async fn delete_job(&self, id: &str) -> PortResult<()> {
        // Parts first, the job last: a crash in between leaves the job, so
        // the sweeper finds it again.
        let mut keys: Vec<Item> = self
            .query_partition(&job_pk(id), "PART#")
            .await?
            .into_iter()
            .map(|mut item| {
                key(
                    get_s(&item, "pk").unwrap_or_default().to_string(),
                    match item.remove("sk") {
                        Some(AttributeValue::S(sk)) => sk,
                        _ => String::new(),
                    },
                )
            })
            .collect();
        keys.push(key(job_pk(id), USAGE_SK));
        self.delete_keys(std::mem::take(&mut keys)).await?;
        self.delete_keys(vec![key(job_pk(id), "JOB")]).await
    }

    async fn add_usage(&self, job_id: &str, usage: &Usage) -> PortResult<()> {
        if usage.is_empty() {
            return Ok(());
        }
        // One attribute per counter, added in place: concurrent handlings
        // never overwrite each other. A counter name is not a valid
        // attribute path, so each goes through a placeholder.
        let mut names = HashMap::from([("#ttl".to_string(), "ttl".to_string())]);
        let mut values = HashMap::from([(
            ":ttl".to_string(),
            n(chrono::Utc::now().timestamp() + USAGE_TTL_SECONDS),
        )]);
        let mut adds = Vec::new();
        for (i, (counter, value)) in usage.counters().enumerate() {
            names.insert(
                format!("#c{i}"),
                format!("{USAGE_ATTRIBUTE_PREFIX}{counter}"),
            );
            values.insert(format!(":c{i}"), n(value));
            adds.push(format!("#c{i} :c{i}"));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job_id), USAGE_SK)))
            .update_expression(format!("SET #ttl = :ttl ADD {}", adds.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn usage(&self, job_id: &str) -> PortResult<Usage> {
        let item = self.get_item(key(job_pk(job_id), USAGE_SK)).await?;
        Ok(item
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let counter = name.strip_prefix(USAGE_ATTRIBUTE_PREFIX)?.to_string();
                match value {
                    AttributeValue::N(v) => Some((counter, v.parse().ok()?)),
                    _ => None,
                }
            })
            .collect())
    }

    async fn put_parts(&self, parts: &[Part]) -> PortResult<()> {
        futures::stream::iter(parts.iter().cloned())
            .map(|mut p| async move {
                p.version = 1;
                match self
                    .put_if(part_item(&p)?, "attribute_not_exists(pk)", HashMap::new())
                    .await
                {
                    // A twin planner wrote it first; keep its (maybe advanced) state.
                    Ok(()) | Err(PortError::Conflict) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }

    async fn get_part(&self, job_id: &str, index: u32) -> PortResult<Option<Part>> {
        self.get_item(key(job_pk(job_id), part_sk(index)))
            .await?
            .map(|item| part_from_item(&item))
            .transpose()
    }

    async fn list_parts(&self, job_id: &str) -> PortResult<Vec<Part>> {
        self.query_partition(&job_pk(job_id), "PART#")
            .await?
            .iter()
            .map(part_from_item)
            .collect()
    }

    async fn save_part(&self, part: &Part) -> PortResult<Part> {
        let mut part = part.clone();
        let expected = part.version;
        part.version += 1;
        self.put_if(
            part_item(&part)?,
            "version = :expected",
            HashMap::from([(":expected".into(), n(expected))]),
        )
        .await?;
        Ok(part)
    }

    async fn complete_part(&self, part: &Part) -> PortResult<u32> {
        let mut done = part.clone();
        done.done = true;
        done.version += 1;
        let put_part = Put::builder()
            .table_name(&self.table)
            .set_item(Some(part_item(&done)?))
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", n(part.version))
            .build()
            .map_err(backend)?;
        let count_down = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&part.job_id), "JOB")))
            .update_expression(
                "SET parts_remaining = parts_remaining - :one, version = version + :one",
            )
            .condition_expression("attribute_exists(pk) AND parts_remaining > :zero")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0))
            .build()
            .map_err(backend)?;
        for attempt in 0u32.. {
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put_part.clone()).build())
                .transact_items(
                    TransactWriteItem::builder()
                        .update(count_down.clone())
                        .build(),
                )
                .send()
                .await;
            match result {
                Ok(_) => break,
                Err(e) => match tx_failure(&e) {
                    // The part changed: another worker won the race.
                    Some(TxFailure::Condition(0)) => return Err(PortError::Conflict),
                    Some(TxFailure::Condition(_)) => return Err(PortError::NotFound),
                    // Another transaction on the job item (a twin part
                    // finishing): try again.
                    Some(TxFailure::Contention) => backoff(attempt).await?,
                    None => return Err(backend(e)),
                },
            }
        }
        // Not read atomically with the decrement: two parts finishing at
        // once may both read 0, and both finalize. Finalizing is idempotent
        // and conditional, so that is harmless; a part that read 0 always
        // finalizes, so the job never stalls.
        let job = self
            .get_job(&part.job_id)
            .await?
            .ok_or(PortError::NotFound)?;
        Ok(job.parts_remaining)
    }

    async fn count_active_jobs(&self, owner: &str) -> PortResult<u32> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(ACTIVE_OWNER_INDEX)
            .key_condition_expression("active_owner = :o")
            .expression_attribute_values(":o", s(owner))
            .select(aws_sdk_dynamodb::types::Select::Count)
            .into_paginator()
            .send();
        let mut count = 0;
        while let Some(page) = pages.next().await {
            count += page.map_err(backend)?.count().max(0) as u32;
        }
        Ok(count)
    }

    async fn jobs_with_reuse_key(&self, reuse_key: &str) -> PortResult<Vec<Job>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(REUSE_KEY_INDEX)
            .key_condition_expression("reuse_key = :k")
            .expression_attribute_values(":k", s(reuse_key))
            .limit(20)
            .send()
            .await
            .map_err(backend)?;
        let mut jobs = Vec::new();
        for item in out.items() {
            let id = get_s(item, "pk")?.trim_start_matches("JOB#").to_string();
            if let Some(job) = self.get_job(&id).await? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    async fn expired_jobs(&self, now: DateTime<Utc>, limit: usize) -> PortResult<Vec<String>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(EXPIRY_INDEX)
            .key_condition_expression("expiry_bucket = :b AND expires_at <= :now")
            .expression_attribute_values(":b", s(EXPIRING))
            .expression_attribute_values(":now", n(now.timestamp_micros()))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .items()
            .iter()
            .filter_map(|item| {
                get_s(item, "pk")
                    .ok()?
                    .strip_prefix("JOB#")
                    .map(str::to_string)
            })
            .take(limit)
            .collect())
    }
}

#[async_trait]
impl ClientStore for DynamoJobs {
    async fn put_client(&self, client: &ClientRegistration) -> PortResult<()> {
        let mut item = key(format!("CLIENT#{}", client.client_id), "CLIENT");
        item.insert("doc".into(), s(to_json(client)?));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_client(&self, client_id: &str) -> PortResult<Option<ClientRegistration>> {
        self.get_item(key(format!("CLIENT#{client_id}"), "CLIENT"))
            .await?
            .map(|item| from_json(get_s(&item, "doc")?))
            .transpose()
    }

    async fn remember_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires: DateTime<Utc>,
    ) -> PortResult<bool> {
        let mut item = key(format!("JTI#{client_id}#{jti}"), "JTI");
        item.insert("expires_at".into(), n(expires.timestamp()));
        item.insert("ttl".into(), n(expires.timestamp() + TTL_GRACE_SECONDS));
        // An entry past its expiry may be reused (DynamoDB's TTL deletes
        // late, and emulators never do).
        match self
            .put_if(
                item,
                "attribute_not_exists(pk) OR expires_at < :now",
                HashMap::from([(":now".into(), n(Utc::now().timestamp()))]),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(PortError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
