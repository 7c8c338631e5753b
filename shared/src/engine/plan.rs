//! Planning: turn a queued job into parts and queue them.
//!
//! Planning is deterministic for a given job (it reads the store as of the
//! job's transaction time), so a redelivered plan message writes the same
//! parts again and re-sends their messages: harmless under at-least-once.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Engine;
use crate::domain::instant::to_micros;
use crate::domain::job::{Job, JobState, Part, PartSpec, WorkMessage};
use crate::domain::request::{in_patient_compartment, ExportLevel};
use crate::domain::resource::group_member_ids;
use crate::ports::{PortError, PortResult, ShardScan};

impl Engine {
    pub(crate) async fn plan(&self, job_id: &str) -> PortResult<()> {
        let Some(job) = self.ports.jobs.get_job(job_id).await? else {
            return Ok(());
        };
        match job.state {
            JobState::Queued => {}
            // Planned before, but the messages may not all have gone out.
            JobState::Running => return self.send_unfinished_parts(&job).await,
            _ => return Ok(()),
        }
        let parts = self.make_parts(&job).await?;
        self.ports.jobs.put_parts(&parts).await?;
        let mut job = job;
        loop {
            job.state = JobState::Running;
            job.started_at = Some(self.ports.clock.now());
            job.parts_total = parts.len() as u32;
            job.parts_remaining = parts.len() as u32;
            match self.ports.jobs.update_job(&job).await {
                Ok(updated) => {
                    job = updated;
                    break;
                }
                Err(PortError::Conflict) => match self.ports.jobs.get_job(job_id).await? {
                    Some(j) if j.state == JobState::Queued => job = j,
                    // Planned by a twin, which may die before it sends the
                    // parts' messages: send them too (duplicates are harmless).
                    Some(j) if j.state == JobState::Running => {
                        return self.send_unfinished_parts(&j).await
                    }
                    _ => return Ok(()), // cancelled meanwhile
                },
                Err(e) => return Err(e),
            }
        }
        tracing::info!(job = %job_id, parts = parts.len(), "export planned");
        if parts.is_empty() {
            return self.finalize(job_id).await;
        }
        self.send_unfinished_parts(&job).await
    }

    async fn send_unfinished_parts(&self, job: &Job) -> PortResult<()> {
        let parts = self.ports.jobs.list_parts(&job.id).await?;
        let messages: Vec<WorkMessage> = parts
            .iter()
            .filter(|p| !p.done)
            .map(|p| WorkMessage::Part {
                job_id: job.id.clone(),
                index: p.index,
            })
            .collect();
        for batch in messages.chunks(10) {
            self.ports.queue.send(batch).await?;
        }
        if parts.iter().all(|p| p.done) {
            self.finalize(&job.id).await?;
        }
        Ok(())
    }

    async fn make_parts(&self, job: &Job) -> PortResult<Vec<Part>> {
        let types = self.export_types(job).await?;
        let as_of = Self::as_of_micros(job);
        let since = job.request.since.map(to_micros);
        let mut specs: Vec<(PartSpec, u64)> = Vec::new();
        match &job.request.level {
            ExportLevel::System => {
                let target = self.config.part_target_resources;
                for t in &types {
                    let segments = self
                        .ports
                        .resources
                        .segments(t, since, as_of, since.is_some(), target)
                        .await?;
                    for seg in segments {
                        let spec = PartSpec::Shards {
                            resource_type: t.clone(),
                            first_shard: seg.first_shard,
                            last_shard: seg.last_shard,
                            after: seg.after,
                            until: seg.until,
                        };
                        specs.push((spec, seg.count));
                    }
                }
            }
            level => {
                let patients = self.export_patients(job, level).await?;
                if !types.is_empty() {
                    for chunk in patients.chunks(self.config.patients_per_part.max(1)) {
                        let steps = (chunk.len() * types.len()) as u64;
                        specs.push((
                            PartSpec::Patients {
                                types: types.clone(),
                                patients: chunk.to_vec(),
                            },
                            steps,
                        ));
                    }
                }
            }
        }
        Ok(specs
            .into_iter()
            .enumerate()
            .map(|(i, (spec, total))| Part {
                job_id: job.id.clone(),
                index: i as u32,
                spec,
                progress_total: total,
                checkpoint: Default::default(),
                done: false,
                version: 0,
            })
            .collect())
    }

    /// Requested types, or every stored type the export level can contain.
    async fn export_types(&self, job: &Job) -> PortResult<Vec<String>> {
        if !job.request.types.is_empty() {
            return Ok(job.request.types.clone());
        }
        let stored = self.ports.resources.resource_types().await?;
        Ok(match job.request.level {
            ExportLevel::System => stored,
            _ => stored
                .into_iter()
                .filter(|t| in_patient_compartment(t))
                .collect(),
        })
    }

    /// The export's patients as of the transaction time, sorted.
    pub(crate) async fn export_patients(
        &self,
        job: &Job,
        level: &ExportLevel,
    ) -> PortResult<Vec<String>> {
        if !job.request.patients.is_empty() {
            let set: BTreeSet<String> = job.request.patients.iter().cloned().collect();
            return Ok(set.into_iter().collect());
        }
        let as_of = Self::as_of_micros(job);
        let set: BTreeSet<String> = match level {
            ExportLevel::Group { group_id } => {
                let group = self
                    .ports
                    .resources
                    .read_as_of("Group", group_id, as_of)
                    .await?;
                match group.and_then(|g| g.body) {
                    Some(body) => group_member_ids(
                        &serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
                    )
                    .into_iter()
                    .collect(),
                    None => BTreeSet::new(),
                }
            }
            _ => self.all_patient_ids(as_of).await?,
        };
        Ok(set.into_iter().collect())
    }

    async fn all_patient_ids(&self, as_of: i64) -> PortResult<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        let store = &self.ports.resources;
        for shard in 0..store.shard_count() {
            let mut after = None;
            loop {
                let page = store
                    .scan_shard(ShardScan {
                        resource_type: "Patient",
                        shard,
                        after,
                        until: None,
                        as_of,
                        include_deleted: false,
                        limit: self.config.page_size,
                    })
                    .await?;
                after = page.items.last().map(|v| v.last_updated);
                let full = page.len() == self.config.page_size;
                ids.extend(page.items.into_iter().map(|v| v.id));
                if !full {
                    break;
                }
            }
        }
        Ok(ids)
    }
}
