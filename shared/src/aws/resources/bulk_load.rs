//! Bulk loading without transactions.
//!
//! Transactions cost twice the write units, hold at most about 30 resources
//! here, and serialise on the clock item; an initial import of millions of
//! resources needs none of that for resources that do not exist yet. So a
//! load writes new resources with plain (batched) puts, and only updates and
//! deletions go through [`ResourceStore::write`].
//!
//! What keeps exports consistent is a *fence* on the clock item: the load
//! reserves a block of `lastUpdated` instants (advancing the clock past it)
//! and sets `fence` to the block's start. While the fence stands, a snapshot
//! answers "just before the fence" without moving the clock, so no export
//! can see part of the block; every later write still lands after the block.
//! The fence is released when the block is written, and lapses after
//! [`FENCE_LEASE`] if the loader dies.
//!
//! Versions are written before heads (a head never points at nothing); a
//! version whose head could not be written is deleted before the fence is
//! lowered. A loader that dies mid-block cannot do that, so the fence also
//! records the block (`fence_end`, `fence_types`), and whoever next finds
//! the lease lapsed (a snapshot or the next load) repairs the block before
//! anything can read it: versions no head points at are deleted. A loader
//! stops writing heads well before its lease lapses, so a repair never races
//! a live loader. Shard counts are added before the versions are written:
//! an overcount only makes a part larger, an undercount could hide a shard.
//!
//! A head is put with `attribute_not_exists`: a resource someone created
//! through the API meanwhile is not overwritten; that load op is redone as
//! an ordinary update.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{
    head_pk, key, max_atomic_ops, stamped_body, stats_add, stats_pk, target, version_key,
    DynamoResources, META, SK,
};
use crate::aws::backend;
use crate::aws::dynamo::{b, is_condition_failure, n, opt_n};
use crate::domain::instant::to_micros;
use crate::domain::resource::shard_of;
use crate::ports::{
    PortError, PortResult, ResourceStore, ShardScan, Version, WriteOp, WriteResult,
};

/// How long a fence holds if its loader never releases it.
pub const FENCE_LEASE: Duration = Duration::from_secs(600);
/// A loader writes no head later than this before its lease lapses (room
/// for clock skew and one slow request).
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// Concurrent single-item writes (head puts) per load.
const CONCURRENCY: usize = 16;

/// A block of instants reserved by a load: `start..=end`, held until `until`.
struct Fence {
    start: i64,
    end: i64,
    until: i64,
    types: Vec<String>,
}

impl Fence {
    /// The fence a META item records, if one is raised. Without a recorded
    /// end or types, the block is taken to reach the clock and span every
    /// type: larger than needed, never smaller.
    fn recorded(meta: &HashMap<String, AttributeValue>) -> Option<Fence> {
        let types = match meta.get("fence_types").or_else(|| meta.get("types")) {
            Some(AttributeValue::Ss(types)) => types.clone(),
            _ => Vec::new(),
        };
        Some(Fence {
            start: opt_n(meta, "fence")?,
            end: opt_n(meta, "fence_end").or_else(|| opt_n(meta, "last"))?,
            until: opt_n(meta, "fence_until")?,
            types,
        })
    }
}

impl DynamoResources {
    pub(super) async fn bulk_load(
        &self,
        author: &str,
        ops: Vec<WriteOp>,
    ) -> PortResult<Vec<WriteResult>> {
        let mut results = Vec::with_capacity(ops.len());
        for run in runs_without_repeats(ops) {
            results.extend(self.load_run(author, run).await?);
        }
        Ok(results)
    }

    /// Loads ops that change each resource at most once.
    async fn load_run(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        let targets: Vec<(String, String)> = ops.iter().map(target).collect();
        let heads = self.heads(&targets).await?;
        let mut results: Vec<Option<WriteResult>> = vec![None; ops.len()];
        let (fresh, mut rest): (Vec<usize>, Vec<usize>) = (0..ops.len()).partition(|&i| {
            matches!(ops[i], WriteOp::Upsert { .. }) && {
                let (t, id) = &targets[i];
                !heads.contains_key(&head_pk(t, id))
            }
        });
        if !fresh.is_empty() {
            let fresh_ops: Vec<WriteOp> = fresh.iter().map(|&i| ops[i].clone()).collect();
            let outcome = self.put_fresh(author, &fresh_ops).await?;
            for (slot, result) in fresh.iter().zip(outcome) {
                match result {
                    Some(r) => results[*slot] = Some(r),
                    None => rest.push(*slot),
                }
            }
        }
        rest.sort_unstable();
        // Updates, deletions and lost races: atomic writes as large as a
        // transaction allows.
        let mut chunk: Vec<usize> = Vec::new();
        let mut types = HashSet::new();
        for i in rest {
            types.insert(targets[i].0.as_str());
            if chunk.len() + 1 > max_atomic_ops(types.len()) {
                self.write_slots(author, &ops, &mut chunk, &mut results)
                    .await?;
                types = HashSet::from([targets[i].0.as_str()]);
            }
            chunk.push(i);
        }
        self.write_slots(author, &ops, &mut chunk, &mut results)
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn write_slots(
        &self,
        author: &str,
        ops: &[WriteOp],
        chunk: &mut Vec<usize>,
        results: &mut [Option<WriteResult>],
    ) -> PortResult<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let written = self
            .write_as(author, chunk.iter().map(|&i| ops[i].clone()).collect())
            .await?;
        for (i, r) in chunk.drain(..).zip(written) {
            results[i] = Some(r);
        }
        Ok(())
    }

    /// Puts new resources as version 1 inside a fence. `None` for a
    /// resource that someone else created meanwhile (nothing of it written).
    async fn put_fresh(
        &self,
        author: &str,
        ops: &[WriteOp],
    ) -> PortResult<Vec<Option<WriteResult>>> {
        let types: Vec<String> = ops
            .iter()
            .map(|op| target(op).0)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let fence = self.raise_fence(ops.len() as i64, types).await?;
        let versions = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let WriteOp::Upsert {
                    resource_type,
                    id,
                    resource,
                } = op
                else {
                    unreachable!("only upserts are fresh");
                };
                let last_updated = fence.start + i as i64;
                Ok(Version {
                    resource_type: resource_type.clone(),
                    id: id.clone(),
                    version: 1,
                    last_updated,
                    deleted: false,
                    body: Some(stamped_body(resource, resource_type, id, 1, last_updated)?),
                })
            })
            .collect::<PortResult<Vec<_>>>();
        let written = match versions {
            Ok(versions) => match self.put_fenced(author, ops, versions.clone(), &fence).await {
                Ok(written) => Ok(written),
                // Versions without a head must not outlive the fence.
                Err(e) => match self.remove_headless(&versions).await {
                    Ok(()) => Err(e),
                    // The fence stays until its lease lapses.
                    Err(_) => return Err(e),
                },
            },
            Err(e) => Err(e),
        };
        self.lower_fence(&fence).await?;
        written
    }

    async fn put_fenced(
        &self,
        author: &str,
        ops: &[WriteOp],
        versions: Vec<Version>,
        fence: &Fence,
    ) -> PortResult<Vec<Option<WriteResult>>> {
        self.put_links(ops).await?;
        let mut counts: BTreeMap<&str, BTreeMap<u16, u64>> = BTreeMap::new();
        for v in &versions {
            *counts
                .entry(v.resource_type.as_str())
                .or_default()
                .entry(shard_of(&v.id, self.shards))
                .or_default() += 1;
        }
        for (resource_type, counts) in counts {
            self.add_stats(resource_type, &counts).await?;
        }
        self.put_many(
            versions
                .iter()
                .map(|v| self.version_item(v, author, None))
                .collect(),
        )
        .await?;
        let last_head_at = fence.until - LEASE_MARGIN.as_micros() as i64;
        let heads_written: Vec<bool> = stream::iter(versions.iter().cloned())
            .map(|v| async move {
                if to_micros(self.clock.now()) >= last_head_at {
                    return Err(PortError::permanent(
                        "a bulk load ran out of time",
                        "a bulk load block outlived its fence lease",
                    ));
                }
                self.put_new_head(&v).await
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(versions
            .into_iter()
            .zip(heads_written)
            .map(|(version, written)| {
                written.then_some(WriteResult {
                    version,
                    created: true,
                })
            })
            .collect())
    }

    /// Deletes the versions of a failed load that no head points at (and
    /// that were never superseded, see [`Self::delete_version`]).
    async fn remove_headless(&self, versions: &[Version]) -> PortResult<()> {
        let targets: Vec<(String, String)> = versions
            .iter()
            .map(|v| (v.resource_type.clone(), v.id.clone()))
            .collect();
        let heads = self.heads(&targets).await?;
        let headless: Vec<Version> = versions
            .iter()
            .filter(|v| {
                heads
                    .get(&head_pk(&v.resource_type, &v.id))
                    .is_none_or(|h| h.last_updated != v.last_updated)
            })
            .cloned()
            .collect();
        stream::iter(headless)
            .map(|v| async move { self.delete_version(&v).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Deletes a version of a load unless it was superseded: a head that
    /// has moved on from a loaded version 1 marked it `sup`, and then it is
    /// history, not debris.
    async fn delete_version(&self, v: &Version) -> PortResult<()> {
        let shard = shard_of(&v.id, self.shards);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(version_key(&v.resource_type, shard, v.last_updated)))
            .condition_expression("attribute_not_exists(sup)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Repairs the block of a fence whose lease lapsed (its loader died):
    /// deletes the versions in it that no head points at, then lowers the
    /// fence. Idempotent, so concurrent repairs are harmless.
    pub(super) async fn repair_lapsed_fence(
        &self,
        meta: &HashMap<String, AttributeValue>,
    ) -> PortResult<()> {
        let Some(fence) = Fence::recorded(meta) else {
            return Ok(());
        };
        let mut versions = Vec::new();
        for resource_type in &fence.types {
            for shard in 0..self.shards {
                versions.extend(self.versions_in(resource_type, shard, &fence).await?);
            }
        }
        self.remove_headless(&versions).await?;
        self.lower_fence(&fence).await
    }

    /// The versions of one shard inside a fence's block.
    async fn versions_in(
        &self,
        resource_type: &str,
        shard: u16,
        fence: &Fence,
    ) -> PortResult<Vec<Version>> {
        const PAGE: usize = 1000;
        let mut versions = Vec::new();
        let mut after = Some(fence.start - 1);
        loop {
            let page = self
                .scan_shard(ShardScan {
                    resource_type,
                    shard,
                    after,
                    until: Some(fence.end),
                    // Superseded since or not: the repair keeps history anyway.
                    as_of: fence.end,
                    include_deleted: true,
                    limit: PAGE,
                })
                .await?;
            after = page.items.last().map(|v| v.last_updated);
            let more = page.more;
            versions.extend(page.items.iter().map(|v| Version {
                resource_type: resource_type.to_string(),
                id: page.id(v).to_string(),
                version: v.version,
                last_updated: v.last_updated,
                deleted: v.deleted,
                body: None,
            }));
            if !more {
                return Ok(versions);
            }
        }
    }

    /// Puts the head of a new resource; `false` (and its version item
    /// removed) if the resource exists by now.
    async fn put_new_head(&self, v: &Version) -> PortResult<bool> {
        let mut head = key(head_pk(&v.resource_type, &v.id), SK);
        head.insert("v".into(), n(1));
        head.insert("lu".into(), n(v.last_updated));
        head.insert("del".into(), b(false));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(head))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => {
                self.delete_version(v).await?;
                Ok(false)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn add_stats(&self, resource_type: &str, counts: &BTreeMap<u16, u64>) -> PortResult<()> {
        let (expression, values) = stats_add(counts);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(stats_pk(resource_type), SK)))
            .update_expression(expression)
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Reserves `count` instants after every write so far and fences them
    /// off, waiting while another load's fence stands (and repairing one
    /// whose lease lapsed).
    async fn raise_fence(&self, count: i64, types: Vec<String>) -> PortResult<Fence> {
        let give_up = tokio::time::Instant::now() + FENCE_LEASE + Duration::from_secs(10);
        loop {
            let meta = self.get_item(key(META, SK)).await?;
            let now = to_micros(self.clock.now());
            let last = meta.as_ref().and_then(|m| opt_n::<i64>(m, "last"));
            let fenced_until = meta.as_ref().and_then(|m| opt_n::<i64>(m, "fence_until"));
            if fenced_until.is_some_and(|until| until > now) {
                if tokio::time::Instant::now() > give_up {
                    return Err(crate::ports::PortError::transient(
                        "another bulk load is running",
                        "another bulk load holds the store's fence",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let Some(meta) = meta.as_ref().filter(|m| Self::lapsed_fence(m, now)) {
                self.repair_lapsed_fence(meta).await?;
                continue;
            }
            let start = now.max(last.unwrap_or(0) + 1);
            let end = start + count - 1;
            let until = now + FENCE_LEASE.as_micros() as i64;
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(META, SK)))
                .update_expression(
                    "SET #last = :end, fence = :start, fence_end = :end, fence_until = :until, \
                     fence_types = :types ADD #types :types",
                )
                .expression_attribute_names("#last", "last")
                .expression_attribute_names("#types", "types")
                .expression_attribute_values(":end", n(end))
                .expression_attribute_values(":start", n(start))
                .expression_attribute_values(":until", n(until))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":types", AttributeValue::Ss(types.clone()));
            let unfenced = "(attribute_not_exists(fence_until) OR fence_until <= :now)";
            update = match last {
                Some(seen) => update
                    .condition_expression(format!("#last = :seen AND {unfenced}"))
                    .expression_attribute_values(":seen", n(seen)),
                None => update
                    .condition_expression(format!("attribute_not_exists(#last) AND {unfenced}")),
            };
            match update.send().await {
                Ok(_) => {
                    return Ok(Fence {
                        start,
                        end,
                        until,
                        types,
                    })
                }
                // A write or another load moved the clock: read it again.
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn lower_fence(&self, fence: &Fence) -> PortResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(META, SK)))
            .update_expression("REMOVE fence, fence_end, fence_until, fence_types")
            .condition_expression("fence = :start")
            .expression_attribute_values(":start", n(fence.start))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The lease lapsed and another load took the fence.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// While a load's fence stands: the instant just before it (every write
    /// up to it is committed; `None` when no fence stands).
    pub(super) fn fenced_snapshot(meta: &HashMap<String, AttributeValue>, now: i64) -> Option<i64> {
        let until: i64 = opt_n(meta, "fence_until")?;
        let start: i64 = opt_n(meta, "fence")?;
        (until > now).then_some(start - 1)
    }

    /// Whether a fence stands whose lease lapsed: its block needs a repair.
    pub(super) fn lapsed_fence(meta: &HashMap<String, AttributeValue>, now: i64) -> bool {
        opt_n::<i64>(meta, "fence").is_some()
            && opt_n::<i64>(meta, "fence_until").is_some_and(|until| until <= now)
    }
}

/// Splits ops into consecutive runs in which each resource appears once,
/// so that a later op on the same resource sees the earlier one.
fn runs_without_repeats(ops: Vec<WriteOp>) -> Vec<Vec<WriteOp>> {
    let mut runs = vec![Vec::new()];
    let mut seen = HashSet::new();
    for op in ops {
        if !seen.insert(target(&op)) {
            runs.push(Vec::new());
            seen = HashSet::from([target(&op)]);
        }
        runs.last_mut().expect("one run at least").push(op);
    }
    runs.retain(|r| !r.is_empty());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(id: &str) -> WriteOp {
        WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: id.into(),
            resource: json!({"resourceType": "Patient", "id": id}).into(),
        }
    }

    #[test]
    fn a_repeated_resource_starts_a_new_run() {
        let runs = runs_without_repeats(vec![put("a"), put("b"), put("a"), put("c"), put("b")]);
        let ids: Vec<Vec<String>> = runs
            .iter()
            .map(|r| r.iter().map(|op| target(op).1).collect())
            .collect();
        assert_eq!(ids, [vec!["a", "b"], vec!["a", "c", "b"]]);
        assert!(runs_without_repeats(vec![]).is_empty());
    }
}
