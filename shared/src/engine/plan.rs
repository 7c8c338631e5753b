//! Planning: turn a queued job into parts and queue them (a single part
//! runs at once, in the planning handling).
//!
//! Planning is deterministic for a given job (it reads the store as of the
//! job's transaction time), so a redelivered plan message writes the same
//! parts again and re-sends their messages: harmless under at-least-once.

use std::collections::BTreeSet;

use serde_json::Value;
use tokio::time::Instant;

use super::modify::{modify_job, Modified};
use super::{WorkOutcome, Worker};
use crate::domain::instant::to_micros;
use crate::domain::job::{Job, JobState, Part, PartSpec, PlanInputs, WorkMessage};
use crate::domain::request::{in_patient_compartment, AssociatedProvenance, ExportLevel};
use crate::domain::resource::group_member_ids;
use crate::ports::{group_shards, PortError, PortResult, ShardScan};

/// A handling that needs nothing more of its message.
fn done(_: ()) -> WorkOutcome {
    WorkOutcome::Done
}

impl Worker {
    /// Plans a queued job. A plan of one part runs that part here, in the
    /// handling that planned it: a small export then waits for no second
    /// queue hop (on Lambda, no second invocation). Should this handling
    /// die meanwhile, the plan message comes back, finds the job running
    /// and sends the part's message.
    pub(crate) async fn plan(&self, job_id: &str, deadline: Instant) -> PortResult<WorkOutcome> {
        let Some(job) = self.jobs.get_job(job_id).await? else {
            return Ok(WorkOutcome::Done);
        };
        match job.state {
            JobState::Queued => {}
            // Planned before, but the messages may not all have gone out.
            JobState::Running => return self.send_unfinished_parts(&job).await.map(done),
            _ => return Ok(WorkOutcome::Done),
        }
        let job = match job.plan_inputs {
            Some(_) => job,
            None => match self.fix_plan_inputs(job).await? {
                Some(job) => job,
                None => return Ok(WorkOutcome::Done),
            },
        };
        let parts = self.make_parts(&job).await?;
        self.jobs.put_parts(&parts).await?;
        let now = self.clock.now();
        let count = parts.len() as u32;
        let planned = modify_job(&*self.jobs, job_id, |job| {
            if job.state != JobState::Queued {
                return Ok::<_, PortError>(false);
            }
            job.state = JobState::Running;
            job.started_at = Some(now);
            job.parts_total = count;
            job.parts_remaining = count;
            Ok(true)
        })
        .await?;
        let job = match planned {
            Modified::Saved(job) => job,
            // Planned by a twin, which may die before it sends the parts'
            // messages: send them too (duplicates are harmless).
            Modified::Unchanged(twins) if twins.state == JobState::Running => {
                return self.send_unfinished_parts(&twins).await.map(done)
            }
            _ => return Ok(WorkOutcome::Done), // cancelled meanwhile
        };
        tracing::info!(job = %job_id, parts = parts.len(), "export planned");
        match parts.as_slice() {
            [] => self.finalize(job_id).await.map(done),
            [part] => self.run_part(job_id, part.index, deadline).await,
            _ => self.send_unfinished_parts(&job).await.map(done),
        }
    }

    async fn send_unfinished_parts(&self, job: &Job) -> PortResult<()> {
        let parts = self.jobs.list_parts(&job.id).await?;
        let messages: Vec<WorkMessage> = parts
            .iter()
            .filter(|p| !p.done)
            .map(|p| WorkMessage::Part {
                job_id: job.id.clone(),
                index: p.index,
            })
            .collect();
        for batch in messages.chunks(10) {
            self.queue.send(batch).await?;
        }
        if parts.iter().all(|p| p.done) {
            self.finalize(&job.id).await?;
        }
        Ok(())
    }

    /// Reads the plan's live inputs and fixes them on the queued job; a twin
    /// that fixed them first wins, and its inputs are used. `None`: the job
    /// is no longer queued (planned by a twin, whose parts' messages are
    /// sent again, or cancelled).
    async fn fix_plan_inputs(&self, job: Job) -> PortResult<Option<Job>> {
        let inputs = self.plan_inputs(&job).await?;
        let fixed = modify_job(&*self.jobs, &job.id, |job| {
            if job.state != JobState::Queued || job.plan_inputs.is_some() {
                return Ok::<_, PortError>(false);
            }
            job.plan_inputs = Some(inputs.clone());
            Ok(true)
        })
        .await?;
        match fixed {
            Modified::Saved(job) => Ok(Some(job)),
            // Still queued, so a twin fixed the inputs first: use its.
            Modified::Unchanged(job) if job.state == JobState::Queued => Ok(Some(job)),
            Modified::Unchanged(job) if job.state == JobState::Running => {
                self.send_unfinished_parts(&job).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn plan_inputs(&self, job: &Job) -> PortResult<PlanInputs> {
        let types = self.export_types(job).await?;
        if job.request.revisions.is_some() {
            // One part: the audit trail is one CSV in one global order.
            let spec = PartSpec::Revisions {
                types: types.clone(),
            };
            return Ok(PlanInputs {
                types,
                fixed_parts: vec![(spec, 0)],
            });
        }
        let as_of = super::as_of_micros(job);
        let since = job.request.since.map(to_micros);
        let mut fixed_parts: Vec<(PartSpec, u64)> = Vec::new();
        if job.request.level == ExportLevel::System {
            let target = self.config.part_target_resources;
            let mut per_type = types.clone();
            if since.is_none() {
                let part_max = target.min(self.config.mixed_part_max_resources);
                let (mixed, alone) = self.mixed_parts(&types, part_max).await?;
                fixed_parts.extend(mixed);
                per_type = alone;
            }
            for t in &per_type {
                let segments = self
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
                        empty_shards: seg.empty_shards,
                    };
                    fixed_parts.push((spec, seg.count));
                }
            }
        }
        if let Some(spec) = self.provenance_part(job, &types, as_of).await? {
            fixed_parts.push(spec);
        }
        Ok(PlanInputs { types, fixed_parts })
    }

    /// A small full export on a store whose types share partitions: each
    /// run of adjacent types (no other stored type between them) is read
    /// together, a key range per shard, in parts of at most about `target`
    /// versions cut between shards. Returns those parts and the types left to
    /// per-type parts (all of them when mixing does not apply).
    async fn mixed_parts(
        &self,
        types: &[String],
        target: u64,
    ) -> PortResult<(Vec<(PartSpec, u64)>, Vec<String>)> {
        let store = &self.resources;
        let mut counts = Vec::with_capacity(types.len());
        for t in types {
            let Some(shards) = store.shard_counts(t).await? else {
                return Ok((Vec::new(), types.to_vec()));
            };
            counts.push((t.clone(), shards));
        }
        let total: u64 = counts.iter().flat_map(|(_, c)| c).sum();
        if total > self.config.mixed_export_max_resources {
            return Ok((Vec::new(), types.to_vec()));
        }
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts.dedup_by(|a, b| a.0 == b.0);
        let mut stored = store.resource_types().await?;
        stored.sort();
        // Runs of requested types adjacent among the stored ones.
        let mut runs: Vec<Vec<(String, Vec<u64>)>> = Vec::new();
        let mut previous: Option<usize> = None;
        for (t, c) in counts {
            let Ok(at) = stored.binary_search(&t) else {
                continue; // never stored: nothing to read
            };
            match runs.last_mut() {
                Some(run) if previous.is_some_and(|p| p + 1 == at) => run.push((t, c)),
                _ => runs.push(vec![(t, c)]),
            }
            previous = Some(at);
        }
        let mut parts = Vec::new();
        let mut alone = Vec::new();
        for run in runs {
            if run.len() == 1 {
                alone.extend(run.into_iter().map(|(t, _)| t));
                continue;
            }
            let shards = run.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
            let per_shard: Vec<u64> = (0..shards)
                .map(|s| {
                    run.iter()
                        .map(|(_, c)| c.get(s).copied().unwrap_or(0))
                        .sum()
                })
                .collect();
            let types: Vec<String> = run.into_iter().map(|(t, _)| t).collect();
            for seg in group_shards(&per_shard, target) {
                let spec = PartSpec::Mixed {
                    types: types.clone(),
                    first_shard: seg.first_shard,
                    last_shard: seg.last_shard,
                    empty_shards: seg.empty_shards,
                };
                parts.push((spec, seg.count));
            }
        }
        Ok((parts, alone))
    }

    /// The parts, from the job's fixed plan inputs and as-of reads: the
    /// same for every planner of the job.
    async fn make_parts(&self, job: &Job) -> PortResult<Vec<Part>> {
        let inputs = job.plan_inputs.clone().unwrap_or_default();
        let mut specs: Vec<(PartSpec, u64)> = Vec::new();
        if job.request.level.is_patient_based() && !inputs.types.is_empty() {
            let patients = self.export_patients(job, &job.request.level).await?;
            let mut types = inputs.types.clone();
            if job.request.organize_by_patient {
                // A patient's block starts with the Patient itself.
                types.sort_by_key(|t| t != "Patient");
            }
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
        specs.extend(inputs.fixed_parts);
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

    /// The part that adds `includeAssociatedData`'s Provenance, unless a
    /// system export already holds every Provenance.
    async fn provenance_part(
        &self,
        job: &Job,
        types: &[String],
        as_of: i64,
    ) -> PortResult<Option<(PartSpec, u64)>> {
        let Some(mode) = job.request.associated_provenance else {
            return Ok(None);
        };
        let exported_whole = job.request.level == ExportLevel::System
            && job.request.since.is_none()
            && types.iter().any(|t| t == "Provenance");
        if exported_whole {
            return Ok(None);
        }
        let total: u64 = self
            .resources
            .segments("Provenance", None, as_of, false, u64::MAX)
            .await?
            .iter()
            .map(|s| s.count)
            .sum();
        let spec = PartSpec::Provenance {
            latest_only: mode == AssociatedProvenance::Latest,
        };
        Ok(Some((spec, total)))
    }

    /// Requested types, or every stored type the export level can contain.
    pub(crate) async fn export_types(&self, job: &Job) -> PortResult<Vec<String>> {
        if !job.request.types.is_empty() {
            return Ok(job.request.types.clone());
        }
        let stored = self.resources.resource_types().await?;
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
        if let Some(named) = job.request.named_patients() {
            let set: BTreeSet<String> = named.iter().cloned().collect();
            return Ok(set.into_iter().collect());
        }
        let as_of = super::as_of_micros(job);
        let set: BTreeSet<String> = match level {
            ExportLevel::Group { group_id } => {
                let group = self.resources.read_as_of("Group", group_id, as_of).await?;
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
        let store = &self.resources;
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
                let more = page.more;
                ids.extend(page.ids().map(str::to_string));
                if !more {
                    break;
                }
            }
        }
        Ok(ids)
    }
}
