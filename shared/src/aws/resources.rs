//! The resource store on DynamoDB: every version of every resource, read by
//! key and index only (never a table scan).
//!
//! | item | pk | sk | what |
//! |---|---|---|---|
//! | version | `V#<shard>` | `<type>#<lastUpdated>` (µs, 17 digits) | `rid` = `<type>#<id>`, `ver`, `bz` (the body, compressed: [`body_codec`]) or `body`, `by` (author), `plu` (previous version's `lastUpdated`), `plv` (whether that version was live), `sup` (superseded at, µs); `del` on tombstones only |
//! | head | `H#<type>#<id>` | `#` | the newest version: `v`, `lu`, `del` |
//! | compartment link | `C#<patient>` | `<type>#<id>` | the resource ever referenced the patient |
//! | type statistics | `STATS#<type>` | `#` | `s<shard>`: versions per shard |
//! | store clock | `META` | `#` | `last` (µs, the newest `lastUpdated`), `types`; while a bulk load writes: `fence`, `fence_end`, `fence_until`, `fence_types` |
//!
//! Versions are spread over `shards` partitions by a hash of the id, and
//! within a partition they are ordered by type and then `lastUpdated`: an
//! export reads each shard of a type as a strongly consistent key range
//! (`_since` is its lower bound, the snapshot its upper bound), and parts
//! read shards in parallel. Types share the partitions so that a full
//! export reads small types together, a key range of adjacent types per
//! shard ([`ResourceStore::scan_types`]), not one Query per type and shard.
//! "Current at T" is `lastUpdated <= T` (the key range) and no `sup <= T`
//! (the query's filter).
//! The `by_id` index (`rid`, `ver`) serves history reads.
//!
//! Every write is one transaction that also advances the clock item
//! conditionally: `lastUpdated` is unique and increasing across the store,
//! and `snapshot` (which advances the clock too) splits committed writes
//! from later ones exactly. That one item bounds write throughput to a few
//! hundred transactions a second, which suits a store fed by a system of
//! record's sync; exports only read. Bulk loads of new resources skip the
//! transactions and fence off a block of instants instead ([`bulk_load`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};

mod bulk_load;
pub use bulk_load::FENCE_LEASE;

use super::dynamo::{
    self, b, backoff, batch_write, get_b, get_n, get_s, is_condition_failure, key, n, opt_n, opt_s,
    s, tx_failure, BatchOp, Item,
};
use super::{backend, body_codec};
use crate::domain::instant::{from_micros, to_micros};
use crate::domain::resource::{compartment_patients, shard_of};
use crate::domain::resource_text::ResourceText;
use crate::domain::write_plan::{self, Head, Heads, Repeats, Rules, Step};
use crate::ports::{
    group_shards, Clock, PortError, PortResult, ResourceStore, Revision, RevisionScan, ScanPage,
    Segment, ShardScan, TypesScan, Version, WriteOp, WriteResult,
};

pub const BY_ID_INDEX: &str = "by_id";
const SK: &str = "#";
const META: &str = "META";
/// DynamoDB transactions hold at most 100 items.
const MAX_TX_ITEMS: usize = 100;
/// Items are limited to 400 KB; this leaves room for the other attributes.
const MAX_BODY_BYTES: usize = 390_000;
/// BatchGetItem takes at most 100 keys.
const BATCH_GET: usize = 100;

pub struct DynamoResources {
    client: aws_sdk_dynamodb::Client,
    table: String,
    shards: u16,
    clock: Arc<dyn Clock>,
}

fn head_pk(resource_type: &str, id: &str) -> String {
    format!("H#{resource_type}#{id}")
}

/// Every type's versions in a shard share its partition, ordered by type
/// and then `lastUpdated`: a Query reads one type's time range, or several
/// adjacent types at once (see `scan_types`).
fn version_pk(shard: u16) -> String {
    format!("V#{shard:03}")
}

fn version_sk(resource_type: &str, last_updated: i64) -> String {
    format!("{resource_type}#{last_updated:017}")
}

fn version_key(resource_type: &str, shard: u16, last_updated: i64) -> Item {
    key(version_pk(shard), version_sk(resource_type, last_updated))
}

fn stats_pk(resource_type: &str) -> String {
    format!("STATS#{resource_type}")
}

/// The update expression that adds new versions to a type's shard counts.
fn stats_add(counts: &BTreeMap<u16, u64>) -> (String, HashMap<String, AttributeValue>) {
    let adds: Vec<String> = counts.keys().map(|s| format!("s{s} :s{s}")).collect();
    let values = counts
        .iter()
        .map(|(shard, count)| (format!(":s{shard}"), n(count)))
        .collect();
    (format!("ADD {}", adds.join(", ")), values)
}

fn target(op: &WriteOp) -> (String, String) {
    match op {
        WriteOp::Upsert {
            resource_type, id, ..
        }
        | WriteOp::Delete { resource_type, id } => (resource_type.clone(), id.clone()),
    }
}

/// What sets this store's writes apart (see `write_plan::Rules`): a
/// transaction touches each item once, so a write changes each resource
/// once; an item holds 400 KB.
const WRITE_RULES: Rules = Rules {
    repeats: Repeats::Refused,
    max_body_bytes: Some(MAX_BODY_BYTES),
};

/// The stored JSON of an upsert: `meta` stamped, size checked.
fn stamped_body(
    resource: &ResourceText,
    resource_type: &str,
    id: &str,
    version: u64,
    last_updated: i64,
) -> PortResult<String> {
    let limit = WRITE_RULES.max_body_bytes;
    write_plan::stamped_body(resource, resource_type, id, version, last_updated, limit)
}

/// The fields of a version item that are not its body. A version item is
/// kept lean, because DynamoDB's 1 MB page counts every attribute: the id
/// and `lastUpdated` are read from the keys (`rid`, `sk`) rather than
/// stored twice, and `del` is stored on tombstones only.
struct VersionFields<'a> {
    id: &'a str,
    version: u64,
    last_updated: i64,
    deleted: bool,
}

impl<'a> VersionFields<'a> {
    fn of(item: &'a Item) -> PortResult<Self> {
        let key_part = |name: &str, split: Option<(&'a str, &'a str)>| {
            split.map(|(_, v)| v).ok_or_else(|| {
                PortError::corrupt("a stored record is corrupt", format!("malformed {name}"))
            })
        };
        // Types never contain '#'; ids never do either (FHIR's id syntax).
        let id = key_part("rid", get_s(item, "rid")?.split_once('#'))?;
        let last_updated = key_part("sk", get_s(item, "sk")?.rsplit_once('#'))?
            .parse()
            .map_err(|e| PortError::corrupt("a stored record is corrupt", e))?;
        Ok(VersionFields {
            id,
            version: get_n(item, "ver")?,
            last_updated,
            deleted: matches!(item.get("del"), Some(AttributeValue::Bool(true))),
        })
    }
}

fn version_from_item(resource_type: &str, item: &Item) -> PortResult<Version> {
    let f = VersionFields::of(item)?;
    Ok(Version {
        resource_type: resource_type.to_string(),
        id: f.id.to_string(),
        version: f.version,
        last_updated: f.last_updated,
        deleted: f.deleted,
        body: body_codec::decode(item)?.map(Cow::into_owned),
    })
}

/// Most resources one `write` can change atomically, given the types involved.
fn max_atomic_ops(types: usize) -> usize {
    // Per resource: its head, its new version, its previous version; per
    // type a statistics update; one clock update.
    (MAX_TX_ITEMS - 1 - types) / 3
}

impl DynamoResources {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        shards: u16,
        clock: Arc<dyn Clock>,
    ) -> Self {
        DynamoResources {
            client,
            table: table.into(),
            shards: shards.max(1),
            clock,
        }
    }

    /// The item of one version (in its type's shard, keyed by lastUpdated).
    fn version_item(&self, v: &Version, author: &str, previous: Option<Head>) -> Item {
        let shard = shard_of(&v.id, self.shards);
        let mut item = version_key(&v.resource_type, shard, v.last_updated);
        item.insert("rid".into(), s(format!("{}#{}", v.resource_type, v.id)));
        item.insert("ver".into(), n(v.version));
        // See `VersionFields`: no `id` or `lastUpdated` beside the keys.
        if v.deleted {
            item.insert("del".into(), b(true));
        }
        if let Some(body) = &v.body {
            let (name, value) = body_codec::encode(body);
            item.insert(name.into(), value);
        }
        item.insert("by".into(), s(author.to_string()));
        if let Some(p) = previous {
            item.insert("plu".into(), n(p.last_updated));
            item.insert("plv".into(), b(!p.deleted));
        }
        item
    }

    async fn get_item(&self, key: Item) -> PortResult<Option<Item>> {
        dynamo::get_item(&self.client, &self.table, key).await
    }

    /// Strongly consistent BatchGetItem of any number of keys (retrying
    /// what DynamoDB leaves unprocessed).
    async fn get_many(&self, keys: Vec<Item>) -> PortResult<Vec<Item>> {
        let mut items = Vec::with_capacity(keys.len());
        for batch in keys.chunks(BATCH_GET) {
            let mut pending = KeysAndAttributes::builder()
                .set_keys(Some(batch.to_vec()))
                .consistent_read(true)
                .build()
                .map_err(backend)?;
            for attempt in 0u32.. {
                let mut out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(backend)?;
                if let Some(found) = out.responses.as_mut().and_then(|r| r.remove(&self.table)) {
                    items.extend(found);
                }
                match out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)) {
                    Some(rest) if !rest.keys().is_empty() => pending = rest,
                    _ => break,
                }
                backoff(attempt).await?;
            }
        }
        Ok(items)
    }

    async fn put_many(&self, items: Vec<Item>) -> PortResult<()> {
        batch_write(
            &self.client,
            &self.table,
            items.into_iter().map(BatchOp::Put).collect(),
        )
        .await
    }

    async fn heads(&self, targets: &[(String, String)]) -> PortResult<HashMap<String, Head>> {
        let keys = targets
            .iter()
            .map(|(t, id)| key(head_pk(t, id), SK))
            .collect();
        let mut heads = HashMap::new();
        for item in self.get_many(keys).await? {
            heads.insert(
                get_s(&item, "pk")?.to_string(),
                Head {
                    version: get_n(&item, "v")?,
                    last_updated: get_n(&item, "lu")?,
                    deleted: get_b(&item, "del")?,
                },
            );
        }
        Ok(heads)
    }

    async fn head(&self, resource_type: &str, id: &str) -> PortResult<Option<Head>> {
        Ok(self
            .heads(&[(resource_type.to_string(), id.to_string())])
            .await?
            .into_values()
            .next())
    }

    async fn version_at(
        &self,
        resource_type: &str,
        id: &str,
        last_updated: i64,
    ) -> PortResult<Version> {
        let shard = shard_of(id, self.shards);
        let item = self
            .get_item(version_key(resource_type, shard, last_updated))
            .await?
            .ok_or_else(|| {
                PortError::corrupt(
                    "a stored record is corrupt",
                    format!("{resource_type}/{id}: version item missing"),
                )
            })?;
        version_from_item(resource_type, &item)
    }

    /// The clock: the newest `lastUpdated` handed out (or snapshot taken).
    async fn clock_value(&self) -> PortResult<Option<i64>> {
        Ok(self
            .get_item(key(META, SK))
            .await?
            .and_then(|item| opt_n(&item, "last")))
    }

    /// Older versions, newest first, from the `by_id` index (eventually
    /// consistent; only versions that were superseded are read this way,
    /// and those were written before the write that superseded them).
    async fn history_before(
        &self,
        resource_type: &str,
        id: &str,
        before_version: u64,
        mut wanted: impl FnMut(&Version) -> bool,
    ) -> PortResult<Option<Version>> {
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_ID_INDEX)
                .key_condition_expression("rid = :rid AND ver < :v")
                .expression_attribute_values(":rid", s(format!("{resource_type}#{id}")))
                .expression_attribute_values(":v", n(before_version))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in out.items() {
                let v = version_from_item(resource_type, item)?;
                if wanted(&v) {
                    return Ok(Some(v));
                }
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(None),
            }
        }
    }

    /// Compartment links of the upserts, written before the versions: the
    /// links are a superset (readers re-check), so a link whose write then
    /// fails is harmless.
    async fn put_links(&self, ops: &[WriteOp]) -> PortResult<()> {
        let mut links = BTreeSet::new();
        for op in ops {
            if let WriteOp::Upsert {
                resource_type,
                id,
                resource,
            } = op
            {
                for patient in compartment_patients(resource_type, resource.value()) {
                    links.insert((format!("C#{patient}"), format!("{resource_type}#{id}")));
                }
            }
        }
        self.put_many(links.into_iter().map(|(pk, sk)| key(pk, sk)).collect())
            .await
    }

    /// One attempt at an atomic write: `Ok(None)` when it lost a race and
    /// should be retried from fresh reads.
    /// One attempt at an atomic write: read the heads and the clock, plan,
    /// and commit the plan as one transaction conditional on what was read.
    /// `None`: a concurrent write moved a head or the clock; try again.
    async fn try_write(
        &self,
        author: &str,
        ops: &[WriteOp],
        targets: &[(String, String)],
    ) -> PortResult<Option<Vec<WriteResult>>> {
        let by_pk = self.heads(targets).await?;
        let heads: Heads = targets
            .iter()
            .filter_map(|(t, id)| Some(((t.clone(), id.clone()), *by_pk.get(&head_pk(t, id))?)))
            .collect();
        let clock = self.clock_value().await?;
        let now = to_micros(self.clock.now());
        let plan = write_plan::plan(&heads, clock.unwrap_or(0), now, ops, WRITE_RULES)?;
        if !plan.writes_anything() {
            // Only deletes of nothing: the consistent reads above are the answer.
            return Ok(Some(plan.into_results()));
        }
        let mut items = Vec::new();
        for (op, step) in ops.iter().zip(&plan.steps) {
            self.step_items(op, step, author, &mut items)?;
        }
        let per_shard = plan.versions_per_shard(self.shards);
        for (resource_type, counts) in &per_shard {
            items.push(self.stats_item(resource_type, counts)?);
        }
        let types = per_shard.keys().map(|t| t.to_string()).collect();
        items.push(self.clock_item(clock, plan.clock_after, types)?);
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Some(plan.into_results())),
            Err(e) if tx_failure(&e).is_some() => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// The transaction items of one planned op, each conditional on the
    /// head it was planned on: a delete of nothing checks that nothing is
    /// still there; a write moves the head, stamps the version it
    /// supersedes, and adds its own.
    fn step_items(
        &self,
        op: &WriteOp,
        step: &Step,
        author: &str,
        items: &mut Vec<TransactWriteItem>,
    ) -> PortResult<()> {
        let (resource_type, id) = op.target();
        let head_key = key(head_pk(resource_type, id), SK);
        let (unchanged, values) = match step.previous {
            Some(h) => (
                "v = :prev",
                Some(HashMap::from([(":prev".into(), n(h.version))])),
            ),
            None => ("attribute_not_exists(pk)", None),
        };
        let Some(v) = step.written() else {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(head_key))
                .condition_expression(unchanged)
                .set_expression_attribute_values(values)
                .build()
                .map_err(backend)?;
            items.push(TransactWriteItem::builder().condition_check(check).build());
            return Ok(());
        };
        let mut head_item = head_key;
        head_item.insert("v".into(), n(v.version));
        head_item.insert("lu".into(), n(v.last_updated));
        head_item.insert("del".into(), b(v.deleted));
        let head = Put::builder()
            .table_name(&self.table)
            .set_item(Some(head_item))
            .condition_expression(unchanged)
            .set_expression_attribute_values(values)
            .build()
            .map_err(backend)?;
        items.push(TransactWriteItem::builder().put(head).build());
        if let Some(previous) = step.previous {
            let shard = shard_of(id, self.shards);
            let supersede = Update::builder()
                .table_name(&self.table)
                .set_key(Some(version_key(
                    resource_type,
                    shard,
                    previous.last_updated,
                )))
                .update_expression("SET sup = :t")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":t", n(v.last_updated))
                .build()
                .map_err(backend)?;
            items.push(TransactWriteItem::builder().update(supersede).build());
        }
        let item = self.version_item(v, author, step.previous);
        let version = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(backend)?;
        items.push(TransactWriteItem::builder().put(version).build());
        Ok(())
    }

    /// Adds a write's new versions to its type's per-shard counts.
    fn stats_item(
        &self,
        resource_type: &str,
        counts: &BTreeMap<u16, u64>,
    ) -> PortResult<TransactWriteItem> {
        let (expression, values) = stats_add(counts);
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(stats_pk(resource_type), SK)))
            .update_expression(expression)
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(backend)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Moves the store clock to `after`, on condition that it still reads
    /// `seen`: two writes never commit on the same clock reading.
    fn clock_item(
        &self,
        seen: Option<i64>,
        after: i64,
        types: Vec<String>,
    ) -> PortResult<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(META, SK)))
            .update_expression("SET #last = :lu ADD #types :types")
            .expression_attribute_names("#last", "last")
            .expression_attribute_names("#types", "types")
            .expression_attribute_values(":lu", n(after))
            .expression_attribute_values(":types", AttributeValue::Ss(types));
        let update = match seen {
            Some(c) => update
                .condition_expression("#last = :seen")
                .expression_attribute_values(":seen", n(c)),
            None => update.condition_expression("attribute_not_exists(#last)"),
        };
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(backend)?)
            .build())
    }
}

#[async_trait]
impl ResourceStore for DynamoResources {
    fn shard_count(&self) -> u16 {
        self.shards
    }

    async fn write_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let targets: Vec<(String, String)> = ops.iter().map(target).collect();
        WRITE_RULES.repeats.check(&ops)?;
        let types: HashSet<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
        let max = max_atomic_ops(types.len());
        if ops.len() > max {
            return Err(PortError::Unsupported(format!(
                "At most {max} resources can be written atomically on this store; got {}",
                ops.len()
            )));
        }
        self.put_links(&ops).await?;
        for attempt in 0u32.. {
            if let Some(results) = self.try_write(author, &ops, &targets).await? {
                return Ok(results);
            }
            backoff(attempt).await?;
        }
        unreachable!("backoff gives up")
    }

    async fn load_as(&self, author: &str, ops: Vec<WriteOp>) -> PortResult<Vec<WriteResult>> {
        self.bulk_load(author, ops).await
    }

    async fn revisions(&self, scan: RevisionScan<'_>) -> PortResult<Vec<Revision>> {
        let mut out = Vec::with_capacity(scan.limit.min(1024));
        if scan.from >= scan.before || scan.limit == 0 {
            return Ok(out);
        }
        let projection = if scan.with_bodies {
            "rid, sk, ver, del, body, bz, #by, plu, plv"
        } else {
            "rid, sk, ver, del, #by, plu, plv"
        };
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                .expression_attribute_values(":pk", s(version_pk(scan.shard)))
                .expression_attribute_values(":low", s(version_sk(scan.resource_type, scan.from)))
                .expression_attribute_values(
                    ":high",
                    s(version_sk(scan.resource_type, scan.before - 1)),
                )
                .projection_expression(projection)
                .expression_attribute_names("#by", "by")
                .scan_index_forward(false)
                .consistent_read(true)
                .limit((scan.limit - out.len()) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in page.items() {
                out.push(Revision {
                    version: version_from_item(scan.resource_type, item)?,
                    author: opt_s(item, "by").map(str::to_string),
                    previous_at: opt_n(item, "plu"),
                    previous_live: match item.get("plv") {
                        Some(AttributeValue::Bool(live)) => Some(*live),
                        _ => None,
                    },
                });
            }
            match page.last_evaluated_key {
                Some(k) if out.len() < scan.limit => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn predecessors(
        &self,
        resource_type: &str,
        of: &[Revision],
        with_bodies: bool,
    ) -> PortResult<Vec<Option<Version>>> {
        // Versions written since authorship was recorded name their
        // predecessor's key (`plu`): one BatchGetItem for the lot. Older
        // ones are looked up through the history index.
        let keys: Vec<Item> = of
            .iter()
            .filter_map(|r| {
                let at = r.previous_at?;
                let shard = shard_of(&r.version.id, self.shards);
                Some(version_key(resource_type, shard, at))
            })
            .collect();
        let mut found: HashMap<(String, u64), Version> = HashMap::new();
        for item in self.get_many(keys).await? {
            let mut v = version_from_item(resource_type, &item)?;
            if !with_bodies {
                v.body = None;
            }
            found.insert((v.id.clone(), v.version), v);
        }
        let mut out = Vec::with_capacity(of.len());
        for r in of {
            let (id, version) = (&r.version.id, r.version.version);
            if version <= 1 {
                out.push(None);
                continue;
            }
            let v = match found.remove(&(id.clone(), version - 1)) {
                Some(v) => Some(v),
                None if r.previous_at.is_none() => {
                    let mut v = self
                        .history_before(resource_type, id, version, |_| true)
                        .await?;
                    if !with_bodies {
                        if let Some(v) = v.as_mut() {
                            v.body = None;
                        }
                    }
                    v
                }
                None => None,
            };
            out.push(v);
        }
        Ok(out)
    }

    async fn read_current(&self, resource_type: &str, id: &str) -> PortResult<Option<Version>> {
        match self.head(resource_type, id).await? {
            Some(h) => Ok(Some(
                self.version_at(resource_type, id, h.last_updated).await?,
            )),
            None => Ok(None),
        }
    }

    async fn read_as_of(
        &self,
        resource_type: &str,
        id: &str,
        as_of: i64,
    ) -> PortResult<Option<Version>> {
        match self.head(resource_type, id).await? {
            None => Ok(None),
            Some(h) if h.last_updated <= as_of => Ok(Some(
                self.version_at(resource_type, id, h.last_updated).await?,
            )),
            Some(h) => {
                self.history_before(resource_type, id, h.version, |v| v.last_updated <= as_of)
                    .await
            }
        }
    }

    async fn read_many_as_of(
        &self,
        resource_type: &str,
        ids: &[String],
        as_of: i64,
    ) -> PortResult<Vec<Version>> {
        let targets: Vec<(String, String)> = ids
            .iter()
            .map(|id| (resource_type.to_string(), id.clone()))
            .collect();
        let heads = self.heads(&targets).await?;
        let mut current_keys = Vec::new();
        for id in ids {
            if let Some(h) = heads.get(&head_pk(resource_type, id)) {
                if h.last_updated <= as_of {
                    let shard = shard_of(id, self.shards);
                    current_keys.push(version_key(resource_type, shard, h.last_updated));
                }
            }
        }
        let mut found: HashMap<String, Version> = HashMap::new();
        for item in self.get_many(current_keys).await? {
            let v = version_from_item(resource_type, &item)?;
            found.insert(v.id.clone(), v);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = found.remove(id) {
                out.push(v);
            } else if let Some(h) = heads.get(&head_pk(resource_type, id)) {
                // Changed since `as_of` (rare during an export): from history.
                if let Some(v) = self
                    .history_before(resource_type, id, h.version, |v| v.last_updated <= as_of)
                    .await?
                {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    async fn read_live_before(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> PortResult<Option<Version>> {
        self.history_before(resource_type, id, version, |v| !v.deleted)
            .await
    }

    async fn snapshot(&self) -> PortResult<DateTime<Utc>> {
        for attempt in 0u32.. {
            let now = to_micros(self.clock.now());
            let meta = self.get_item(key(META, SK)).await?.unwrap_or_default();
            if let Some(t) = Self::fenced_snapshot(&meta, now) {
                // A bulk load is writing the block after t.
                return Ok(from_micros(t));
            }
            if Self::lapsed_fence(&meta, now) {
                // A loader died mid-block: no snapshot covers the block
                // before its debris is gone.
                self.repair_lapsed_fence(&meta).await?;
                continue;
            }
            let t = now.max(opt_n(&meta, "last").unwrap_or(0));
            // Advancing the clock to t makes every later write > t; a write
            // that committed first made `last` >= its lastUpdated, so t
            // covers it.
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(META, SK)))
                .update_expression("SET #last = :t")
                .condition_expression(
                    "(attribute_not_exists(#last) OR #last <= :t) \
                     AND (attribute_not_exists(fence_until) OR fence_until <= :now)",
                )
                .expression_attribute_names("#last", "last")
                .expression_attribute_values(":t", n(t))
                .expression_attribute_values(":now", n(now))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(from_micros(t)),
                Err(e) if is_condition_failure(&e) => backoff(attempt).await?,
                Err(e) => return Err(backend(e)),
            }
        }
        unreachable!("backoff gives up")
    }

    async fn resource_types(&self) -> PortResult<Vec<String>> {
        let mut types = match self.get_item(key(META, SK)).await? {
            Some(mut item) => match item.remove("types") {
                Some(AttributeValue::Ss(types)) => types,
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        types.sort();
        Ok(types)
    }

    async fn segments(
        &self,
        resource_type: &str,
        after: Option<i64>,
        _as_of: i64,
        _include_deleted: bool,
        target: u64,
    ) -> PortResult<Vec<Segment>> {
        // Shards are the unit of parallelism here: consecutive shards are
        // grouped up to about `target` versions (counts include history,
        // so they overestimate). An empty shard inside a group is marked,
        // so the part does not query it (a small type's few resources sit
        // in a few of the shards).
        let counts = self.shard_counts(resource_type).await?.unwrap_or_default();
        let mut segments = group_shards(&counts, target);
        for seg in &mut segments {
            seg.after = after;
        }
        Ok(segments)
    }

    async fn scan_shard(&self, scan: ShardScan<'_>) -> PortResult<ScanPage> {
        let low = scan.after.map_or(0, |a| a + 1);
        let high = scan.until.map_or(scan.as_of, |u| u.min(scan.as_of));
        let mut page = ScanPage::with_capacity(scan.limit, 0);
        if low > high || scan.limit == 0 {
            return Ok(page);
        }
        let mut filter = "(attribute_not_exists(sup) OR sup > :as_of)".to_string();
        if !scan.include_deleted {
            filter.push_str(" AND attribute_not_exists(del)");
        }
        let mut start = None;
        loop {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                .filter_expression(&filter)
                .expression_attribute_values(":pk", s(version_pk(scan.shard)))
                .expression_attribute_values(":low", s(version_sk(scan.resource_type, low)))
                .expression_attribute_values(":high", s(version_sk(scan.resource_type, high)))
                .expression_attribute_values(":as_of", n(scan.as_of))
                .consistent_read(true)
                // The limit counts items read before the filter; DynamoDB
                // also stops at 1 MB, and the page ends there.
                .limit(scan.limit.min(i32::MAX as usize) as i32)
                .set_exclusive_start_key(start);
            let out = query.send().await.map_err(backend)?;
            for item in out.items() {
                let f = VersionFields::of(item)?;
                page.push(
                    f.id,
                    f.version,
                    f.last_updated,
                    f.deleted,
                    body_codec::decode(item)?.as_deref(),
                );
            }
            page.more = out.last_evaluated_key.is_some();
            // A page the filter emptied says nothing: read on.
            match out.last_evaluated_key {
                Some(k) if page.is_empty() => start = Some(k),
                _ => return Ok(page),
            }
        }
    }

    async fn shard_counts(&self, resource_type: &str) -> PortResult<Option<Vec<u64>>> {
        let stats = self.get_item(key(stats_pk(resource_type), SK)).await?;
        Ok(Some(
            (0..self.shards)
                .map(|shard| {
                    stats
                        .as_ref()
                        .and_then(|s| opt_n(s, &format!("s{shard}")))
                        .unwrap_or(0)
                })
                .collect(),
        ))
    }

    async fn scan_types(&self, scan: TypesScan<'_>) -> PortResult<ScanPage> {
        let (Some(first), Some(last)) = (scan.types.first(), scan.types.last()) else {
            return Ok(ScanPage::default());
        };
        let low = match scan.after {
            Some((t, at)) => {
                let t = scan.types.get(t as usize).ok_or_else(|| {
                    PortError::permanent("a scan cursor is out of range", format!("type {t}"))
                })?;
                version_sk(t, at + 1)
            }
            None => version_sk(first, 0),
        };
        // The key range holds exactly these types (they are adjacent). A
        // version of an earlier type written after the snapshot is inside
        // it: it is skipped here, as a filter cannot read the sort key.
        let high = version_sk(last, scan.as_of);
        // A page is at most 1 MB: room for it at once, no doubling slack
        // (a mixed part holds all of its pages).
        let mut page = ScanPage::with_capacity(0, 1 << 20);
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                .filter_expression(
                    "(attribute_not_exists(sup) OR sup > :as_of) AND attribute_not_exists(del)",
                )
                .expression_attribute_values(":pk", s(version_pk(scan.shard)))
                .expression_attribute_values(":low", s(&low))
                .expression_attribute_values(":high", s(&high))
                .expression_attribute_values(":as_of", n(scan.as_of))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in out.items() {
                let sk = get_s(item, "sk")?;
                let t = sk.rsplit_once('#').map_or(sk, |(t, _)| t);
                // Ascending: the type's index in the scan.
                let Ok(index) = scan.types.binary_search_by(|x| x.as_str().cmp(t)) else {
                    continue;
                };
                let f = VersionFields::of(item)?;
                if f.last_updated > scan.as_of {
                    continue;
                }
                page.push_typed(
                    index as u16,
                    f.id,
                    f.version,
                    f.last_updated,
                    false,
                    body_codec::decode(item)?.as_deref(),
                );
            }
            page.more = out.last_evaluated_key.is_some();
            // A page the filter emptied says nothing: read on.
            match out.last_evaluated_key {
                Some(k) if page.is_empty() => start = Some(k),
                _ => return Ok(page),
            }
        }
    }

    async fn compartment_ids(
        &self,
        patient_id: &str,
        resource_type: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> PortResult<Vec<String>> {
        let prefix = format!("{resource_type}#");
        // '$' sorts right after '#': the range holds exactly this type.
        let (low, high) = (
            format!("{prefix}{}", after_id.unwrap_or("")),
            format!("{resource_type}$"),
        );
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                .expression_attribute_values(":pk", s(format!("C#{patient_id}")))
                .expression_attribute_values(":low", s(&low))
                .expression_attribute_values(":high", s(&high))
                .consistent_read(true)
                .limit((limit + 1).min(1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in out.items() {
                let id = get_s(item, "sk")?
                    .strip_prefix(&prefix)
                    .unwrap_or_default()
                    .to_string();
                if Some(id.as_str()) != after_id && !id.is_empty() {
                    ids.push(id);
                }
                if ids.len() == limit {
                    return Ok(ids);
                }
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(ids),
            }
        }
    }
}
