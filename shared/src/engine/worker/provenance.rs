//! `includeAssociatedData`: the part that adds the Provenance of exported
//! resources. It reads every Provenance as of the transaction time and keeps
//! those that target a resource the export writes (with `latest_only`, for
//! which it is the latest), and that the export does not hold already.

use std::collections::HashMap;

use serde_json::Value;

use super::PartReader;
use crate::domain::job::{Checkpoint, Position};
use crate::domain::request::ExportLevel;
use crate::domain::resource::{compartment_patients, provenance_targets};
use crate::engine::sink::Sink;
use crate::ports::{PortError, PortResult, ScanPage, ShardScan};

impl PartReader<'_> {
    /// One page of Provenance, keeping those that belong to the export.
    pub(super) async fn provenance_page(
        &mut self,
        latest_only: bool,
        cp: &mut Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let last = self.engine.resources.shard_count().saturating_sub(1);
        let (shard, after) = match &cp.position {
            Position::Start => (0, None),
            Position::Shard { shard, after } => (*shard, *after),
            _ => (last + 1, None),
        };
        if shard > last {
            cp.position = Position::Finished;
            return Ok(());
        }
        let limit = self.engine.config.page_size;
        let page = self.provenance_scan(shard, after, limit).await?;
        super::advance_shard_cursor(cp, shard, &page);
        for item in &page.items {
            let Some(body) = page.body(item) else {
                continue;
            };
            let value: Value = serde_json::from_str(body)
                .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?;
            if self
                .provenance_belongs(page.id(item), item.last_updated, &value, latest_only)
                .await?
            {
                self.emit(sink, "Provenance", page.id(item), Some(body))
                    .await?;
            }
        }
        Ok(())
    }

    async fn provenance_scan(
        &self,
        shard: u16,
        after: Option<i64>,
        limit: usize,
    ) -> PortResult<ScanPage> {
        self.engine
            .resources
            .scan_shard(ShardScan {
                resource_type: "Provenance",
                shard,
                after,
                until: None,
                as_of: self.as_of,
                include_deleted: false,
                limit,
            })
            .await
    }

    /// Whether a Provenance rides along: not exported already, and it
    /// targets an exported resource (for which, with `latest_only`, it is
    /// the latest).
    async fn provenance_belongs(
        &mut self,
        id: &str,
        last_updated: i64,
        value: &Value,
        latest_only: bool,
    ) -> PortResult<bool> {
        if self.exported_in_own_right(last_updated, value).await? {
            return Ok(false);
        }
        for target in provenance_targets(value) {
            if !self.target_exported(&target).await? {
                continue;
            }
            if !latest_only {
                return Ok(true);
            }
            let latest = self.latest_provenance().await?;
            if latest.get(&target).is_some_and(|l| l == id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A Provenance the export's own parts write (Provenance is among its
    /// types, and this one is in the level's scope).
    async fn exported_in_own_right(
        &mut self,
        last_updated: i64,
        value: &Value,
    ) -> PortResult<bool> {
        if !self.types().await?.iter().any(|t| t == "Provenance")
            || self.since.is_some_and(|s| last_updated <= s)
        {
            return Ok(false);
        }
        if self.job.request.level == ExportLevel::System {
            return Ok(true);
        }
        for p in compartment_patients("Provenance", value) {
            if self.in_export(&p).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn types(&mut self) -> PortResult<&[String]> {
        if self.export_types.is_none() {
            let fixed = self.job.plan_inputs.as_ref().map(|p| p.types.clone());
            self.export_types = Some(match fixed {
                Some(types) => types,
                None => self.engine.export_types(self.job).await?,
            });
        }
        Ok(self.export_types.as_deref().unwrap_or_default())
    }

    /// Whether the export writes this resource: one of its types, current at
    /// the transaction time, changed since `_since`, and of an export
    /// patient's compartment for Patient and Group exports.
    async fn target_exported(&mut self, target: &(String, String)) -> PortResult<bool> {
        if let Some(&known) = self.target_exported.get(target) {
            return Ok(known);
        }
        let (ty, id) = target;
        let mut exported = self.types().await?.iter().any(|t| t == ty);
        let version = if exported {
            let store = &self.engine.resources;
            store.read_as_of(ty, id, self.as_of).await?
        } else {
            None
        };
        exported = match version {
            Some(v) if !v.deleted && self.since.is_none_or(|s| v.last_updated > s) => {
                match (&self.job.request.level, ty.as_str()) {
                    (ExportLevel::System, _) => true,
                    (_, "Patient") => self.in_export(id).await?,
                    _ => {
                        let body: Value = serde_json::from_str(v.body.as_deref().unwrap_or("{}"))
                            .map_err(|e| {
                            PortError::corrupt("a stored resource is not JSON", e)
                        })?;
                        let mut any = false;
                        for p in compartment_patients(ty, &body) {
                            if self.in_export(&p).await? {
                                any = true;
                                break;
                            }
                        }
                        any
                    }
                }
            }
            _ => false,
        };
        self.target_exported.insert(target.clone(), exported);
        Ok(exported)
    }

    /// Per target, the id of the Provenance with the latest `recorded`
    /// (then `lastUpdated`, then id): one pass over every Provenance,
    /// made once per handling of the part. It holds one entry per
    /// targeted resource.
    async fn latest_provenance(&mut self) -> PortResult<&HashMap<(String, String), String>> {
        if self.latest_provenance.is_none() {
            let mut best: HashMap<(String, String), (String, i64, String)> = HashMap::new();
            let limit = self.engine.config.page_size;
            for shard in 0..self.engine.resources.shard_count() {
                let mut after = None;
                loop {
                    let page = self.provenance_scan(shard, after, limit).await?;
                    after = page.items.last().map(|v| v.last_updated);
                    for item in &page.items {
                        let Some(body) = page.body(item) else {
                            continue;
                        };
                        let Ok(value) = serde_json::from_str::<Value>(body) else {
                            continue;
                        };
                        let recorded = value["recorded"]
                            .as_str()
                            .and_then(|r| crate::domain::instant::parse_instant(r).ok())
                            .map(|r| r.to_rfc3339())
                            .unwrap_or_default();
                        let key = (recorded, item.last_updated, page.id(item).to_string());
                        for target in provenance_targets(&value) {
                            let entry = best.entry(target).or_insert_with(|| key.clone());
                            if key > *entry {
                                *entry = key.clone();
                            }
                        }
                    }
                    if !page.more {
                        break;
                    }
                }
            }
            self.latest_provenance =
                Some(best.into_iter().map(|(t, (_, _, id))| (t, id)).collect());
        }
        Ok(self.latest_provenance.as_ref().expect("just loaded"))
    }
}
