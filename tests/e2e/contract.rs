//! Port contracts: every adapter of a port must pass the same suite. The
//! embedded adapters run it here; the AWS adapters run the same functions
//! against the emulator.

use std::sync::Arc;
use std::time::Duration;

use bulk_export::clock::SystemClock;
use bulk_export::domain::client::ClientRegistration;
use bulk_export::domain::job::{Job, JobState, Part, PartSpec, UploadedChunk, WorkMessage};
use bulk_export::domain::request::{ElementSelection, ExportLevel, ExportRequest};
use bulk_export::domain::schedule::{Cadence, Release, Schedule, ScheduleMode, Webhook};
use bulk_export::domain::schedule_input::SavedExport;
use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteResourceStore};
use bulk_export::ports::{
    ArtifactStore, ClientStore, JobStore, PortError, ResourceStore, RevisionScan, ScheduleStore,
    ShardScan, WorkQueue, WriteOp, SYSTEM_AUTHOR,
};
use chrono::{DateTime, Utc};
use serde_json::json;

pub fn job(id: &str) -> Job {
    Job {
        id: id.into(),
        owner: "alice".into(),
        request: ExportRequest {
            level: ExportLevel::System,
            request_url: "http://x/fhir/$export".into(),
            types: vec![],
            since: None,
            until: None,
            elements: ElementSelection::default(),
            patients: vec![],
            excluded_patients: vec![],
            associated_provenance: None,
            allow_partial_manifests: false,
            organize_by_patient: false,
            type_filters: vec![],
            lenient_issues: vec![],
            revisions: None,
            views: None,
        },
        state: JobState::Running,
        transaction_time: Utc::now(),
        created_at: Utc::now(),
        started_at: None,
        completed_at: None,
        expires_at: None,
        parts_total: 2,
        parts_remaining: 2,
        files: vec![],
        error: None,
        plan_inputs: None,
        run_of: None,
        deliveries: Vec::new(),
        version: 0,
    }
}

pub fn part(job_id: &str, index: u32) -> Part {
    Part {
        job_id: job_id.into(),
        index,
        spec: PartSpec::Shards {
            resource_type: "Patient".into(),
            first_shard: 0,
            last_shard: 0,
            after: None,
            until: None,
            empty_shards: 0,
        },
        progress_total: 10,
        checkpoint: Default::default(),
        done: false,
        version: 0,
    }
}

pub async fn job_store_contract(store: Arc<dyn JobStore>) {
    let id = format!("job-{}", uuid_like());
    store.create_job(&job(&id)).await.unwrap();
    assert_eq!(
        store.create_job(&job(&id)).await,
        Err(PortError::AlreadyExists)
    );
    let stored = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);

    // Optimistic concurrency: a stale version loses.
    let mut a = stored.clone();
    a.state = JobState::Completed;
    let a = store.update_job(&a).await.unwrap();
    assert_eq!(a.version, 2);
    let mut stale = stored.clone();
    stale.state = JobState::Cancelled;
    assert_eq!(store.update_job(&stale).await, Err(PortError::Conflict));
    assert_eq!(
        store.get_job(&id).await.unwrap().unwrap().state,
        JobState::Completed
    );

    // Reuse keys: a completed job keeps its key; a failed one leaves the
    // index, and another owner's identical request has another key.
    let key = a.reuse_key().expect("a completed job has a reuse key");
    let found = store.jobs_with_reuse_key(&key).await.unwrap();
    assert!(found.iter().any(|j| j.id == id), "found by its key");
    let mut theirs = job(&id);
    theirs.owner = "bob".into();
    assert_ne!(theirs.reuse_key(), Some(key.clone()));
    let mut failed = a.clone();
    failed.state = JobState::Failed;
    let failed = store.update_job(&failed).await.unwrap();
    assert!(store
        .jobs_with_reuse_key(&key)
        .await
        .unwrap()
        .iter()
        .all(|j| j.id != id));
    let mut completed = failed;
    completed.state = JobState::Completed;
    store.update_job(&completed).await.unwrap();

    // Parts: a second put keeps what is there.
    store
        .put_parts(&[part(&id, 0), part(&id, 1)])
        .await
        .unwrap();
    let p0 = store.get_part(&id, 0).await.unwrap().unwrap();
    let mut moved = p0.clone();
    moved.checkpoint.progress_done = 5;
    let moved = store.save_part(&moved).await.unwrap();
    store
        .put_parts(&[part(&id, 0), part(&id, 1)])
        .await
        .unwrap();
    assert_eq!(
        store
            .get_part(&id, 0)
            .await
            .unwrap()
            .unwrap()
            .checkpoint
            .progress_done,
        5
    );
    assert_eq!(
        store
            .list_parts(&id)
            .await
            .unwrap()
            .iter()
            .map(|p| p.index)
            .collect::<Vec<_>>(),
        [0, 1]
    );

    // Two workers racing on the same checkpoint: exactly one wins.
    for round in 0..5 {
        let current = store.get_part(&id, 0).await.unwrap().unwrap();
        let (mut x, mut y) = (current.clone(), current.clone());
        x.checkpoint.progress_done = 100 + round;
        y.checkpoint.progress_done = 200 + round;
        let (rx, ry) = tokio::join!(store.save_part(&x), store.save_part(&y));
        let wins = [rx.is_ok(), ry.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "round {round}: exactly one checkpoint wins");
        let loser = if rx.is_ok() { ry } else { rx };
        assert_eq!(loser, Err(PortError::Conflict));
    }
    let _ = moved;

    // Completing parts counts down atomically, once per part.
    let p1 = store.get_part(&id, 1).await.unwrap().unwrap();
    let mut job_now = store.get_job(&id).await.unwrap().unwrap();
    job_now.parts_remaining = 2;
    store.update_job(&job_now).await.unwrap();
    assert_eq!(store.complete_part(&p1).await.unwrap(), 1);
    assert_eq!(
        store.complete_part(&p1).await,
        Err(PortError::Conflict),
        "a stale part cannot complete twice"
    );
    let p0 = store.get_part(&id, 0).await.unwrap().unwrap();
    assert_eq!(store.complete_part(&p0).await.unwrap(), 0);
    assert!(store.get_part(&id, 0).await.unwrap().unwrap().done);

    // Parts completing at the same moment all count down: none is lost, so
    // the last one finds the count at 0. (Plain moto can lose one under
    // load, rarely at this size; scripts/moto_server.py makes its DynamoDB
    // writes atomic, as DynamoDB's are.)
    let mut racing = job(&format!("{id}-racing"));
    let n = 24u32;
    racing.parts_total = n;
    racing.parts_remaining = n;
    store.create_job(&racing).await.unwrap();
    let parts: Vec<Part> = (0..n).map(|i| part(&racing.id, i)).collect();
    store.put_parts(&parts).await.unwrap();
    let mut stored = Vec::new();
    for i in 0..n {
        stored.push(store.get_part(&racing.id, i).await.unwrap().unwrap());
    }
    let handles: Vec<_> = stored
        .into_iter()
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move { store.complete_part(&p).await })
        })
        .collect();
    let mut seen = Vec::new();
    for h in handles {
        seen.push(h.await.unwrap().unwrap());
    }
    assert_eq!(
        store
            .get_job(&racing.id)
            .await
            .unwrap()
            .unwrap()
            .parts_remaining,
        0,
        "every completion counted"
    );
    assert!(seen.contains(&0), "some completion saw the count reach 0");

    // Expiry queries and deletion.
    let mut j = store.get_job(&id).await.unwrap().unwrap();
    j.expires_at = Some(Utc::now() + chrono::Duration::hours(1));
    store.update_job(&j).await.unwrap();
    assert!(!store
        .expired_jobs(Utc::now(), 100)
        .await
        .unwrap()
        .contains(&id));
    assert!(store
        .expired_jobs(Utc::now() + chrono::Duration::hours(2), 100)
        .await
        .unwrap()
        .contains(&id));
    store.delete_job(&id).await.unwrap();
    assert!(store.get_job(&id).await.unwrap().is_none());
    assert!(store.list_parts(&id).await.unwrap().is_empty());
}

pub async fn resource_store_contract(store: Arc<dyn ResourceStore>) {
    let t = "Observation";
    let put = |id: &str, v: i64| {
        WriteOp::Upsert {
        resource_type: t.into(),
        id: id.into(),
        resource: json!({"resourceType": t, "id": id, "valueInteger": v, "subject": {"reference": "Patient/p1"}}).into(),
    }
    };
    let before = store.snapshot().await.unwrap();
    let w = store
        .write((0..30).map(|i| put(&format!("o{i:02}"), i)).collect())
        .await
        .unwrap();
    assert!(w.iter().all(|r| r.created && r.version.version == 1));
    assert!(
        w.windows(2)
            .all(|p| p[0].version.last_updated < p[1].version.last_updated),
        "lastUpdated strictly increases"
    );
    assert!(w[0].version.last_updated > before.timestamp_micros());
    let body: serde_json::Value =
        serde_json::from_str(w[0].version.body.as_ref().unwrap()).unwrap();
    assert_eq!(body["meta"]["versionId"], "1");

    let snap = store.snapshot().await.unwrap().timestamp_micros();
    let after = store
        .write(vec![
            put("o00", 100),
            WriteOp::Delete {
                resource_type: t.into(),
                id: "o01".into(),
            },
        ])
        .await
        .unwrap();
    assert!(
        after.iter().all(|r| r.version.last_updated > snap),
        "writes after a snapshot are after it"
    );
    assert!(!after[0].created && after[0].version.version == 2);
    assert!(after[1].version.deleted && after[1].version.version == 2);
    let noop = store
        .write(vec![WriteOp::Delete {
            resource_type: t.into(),
            id: "never".into(),
        }])
        .await
        .unwrap();
    assert!(!noop[0].created);
    assert!(store.read_current(t, "never").await.unwrap().is_none());

    // Reads as of the snapshot see the old world.
    assert_eq!(
        store
            .read_as_of(t, "o00", snap)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        store.read_current(t, "o00").await.unwrap().unwrap().version,
        2
    );
    assert!(store.read_current(t, "o01").await.unwrap().unwrap().deleted);
    assert_eq!(
        store
            .read_live_before(t, "o01", 2)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    let many = store
        .read_many_as_of(t, &["o00".into(), "o01".into(), "none".into()], snap)
        .await
        .unwrap();
    assert_eq!(many.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 1]);

    // Paged scans over every shard see each resource exactly once, as of the snapshot.
    let mut seen = Vec::new();
    for shard in 0..store.shard_count() {
        let mut cursor = None;
        loop {
            let page = store
                .scan_shard(ShardScan {
                    resource_type: t,
                    shard,
                    after: cursor,
                    until: None,
                    as_of: snap,
                    include_deleted: false,
                    limit: 4,
                })
                .await
                .unwrap();
            cursor = page.items.last().map(|v| v.last_updated);
            for item in &page.items {
                let body: serde_json::Value =
                    serde_json::from_str(page.body(item).unwrap()).unwrap();
                assert_eq!(body["id"], page.id(item), "each body belongs to its item");
            }
            let full = page.more;
            seen.extend(
                page.items
                    .iter()
                    .map(|v| (page.id(v).to_string(), v.version)),
            );
            if !full {
                break;
            }
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|(_, v)| *v == 1));
    // Segments cover the scan exactly once, in pieces of about `target`.
    // Their counts are for progress: a store may overestimate them (one
    // that counts every version per shard), never underestimate.
    let segments = store.segments(t, None, snap, false, 7).await.unwrap();
    assert!(segments.iter().all(|s| s.count > 0), "{segments:?}");
    assert!(
        segments
            .iter()
            .all(|s| s.count <= 7 || s.first_shard == s.last_shard),
        "pieces of about the target: {segments:?}"
    );
    let covered = cover(&*store, t, &segments, snap, false).await;
    assert_eq!(covered.len(), 30);
    assert!(segments.iter().map(|s| s.count).sum::<u64>() >= 30);
    let whole = store.segments(t, None, snap, false, 1000).await.unwrap();
    assert_eq!(cover(&*store, t, &whole, snap, false).await.len(), 30);
    let now = store.snapshot().await.unwrap().timestamp_micros();
    let live = store.segments(t, None, now, false, 1000).await.unwrap();
    let live = cover(&*store, t, &live, now, false).await;
    assert_eq!(live.len(), 29, "the deleted one is gone now");
    assert!(live.iter().all(|(id, _)| id != "o01"));
    let changes = store
        .segments(t, Some(snap), now, true, 1000)
        .await
        .unwrap();
    assert_eq!(
        cover(&*store, t, &changes, now, true).await,
        [("o00".to_string(), 2), ("o01".to_string(), 2)],
        "since the snapshot: one update, one deletion"
    );
    assert!(store
        .segments("Nothing", None, now, false, 10)
        .await
        .unwrap()
        .is_empty());

    // A sparse type: two resources, in the first and the last shard. The
    // shards between them are empty: a segment may span them, but marks
    // them, so nobody queries them; both resources are still covered.
    let sparse = "Organization";
    let shards = store.shard_count();
    let id_in = |shard: u16, not: &str| {
        (0..)
            .map(|i| format!("org{i}"))
            .find(|id| bulk_export::domain::resource::shard_of(id, shards) == shard && id != not)
            .unwrap()
    };
    let first = id_in(0, "");
    let ids = [first.clone(), id_in(shards - 1, &first)];
    let ops = ids
        .iter()
        .map(|id| WriteOp::Upsert {
            resource_type: sparse.into(),
            id: id.clone(),
            resource: json!({"resourceType": sparse, "id": id}).into(),
        })
        .collect();
    store.write(ops).await.unwrap();
    let at = store.snapshot().await.unwrap().timestamp_micros();
    let segments = store.segments(sparse, None, at, false, 1000).await.unwrap();
    assert_eq!(cover(&*store, sparse, &segments, at, false).await.len(), 2);
    let read: usize = segments
        .iter()
        .map(|s| {
            (s.first_shard..=s.last_shard)
                .filter(|n| s.reads(*n))
                .count()
        })
        .sum();
    assert_eq!(
        read,
        ids.len().min(shards as usize),
        "only shards with data: {segments:?}"
    );

    // On a larger type (where a store may plan from sparse marks), the
    // segments still cover every version exactly once.
    let many = "Condition";
    let ops: Vec<WriteOp> = (0..3000)
        .map(|i| WriteOp::Upsert {
            resource_type: many.into(),
            id: format!("c{i:05}"),
            resource: json!({"resourceType": many, "id": format!("c{i:05}")}).into(),
        })
        .collect();
    // More than one atomic write may hold on some stores: `load`.
    store.load(ops).await.unwrap();
    let at = store.snapshot().await.unwrap().timestamp_micros();
    let segments = store.segments(many, None, at, false, 1000).await.unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    let mut ids = Vec::new();
    for seg in &segments {
        for shard in seg.first_shard..=seg.last_shard {
            let mut cursor = seg.after;
            loop {
                let page = store
                    .scan_shard(ShardScan {
                        resource_type: many,
                        shard,
                        after: cursor,
                        until: seg.until,
                        as_of: at,
                        include_deleted: false,
                        limit: 500,
                    })
                    .await
                    .unwrap();
                cursor = page.items.last().map(|v| v.last_updated);
                let full = page.more;
                assert!(seg.reads(shard) || page.is_empty(), "{seg:?}");
                ids.extend(page.ids().map(str::to_string));
                if !full {
                    break;
                }
            }
        }
    }
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((total, ids.len()), (3000, 3000), "every version once");

    // The compartment index finds the patient's resources by id order.
    let ids = store
        .compartment_ids("p1", t, Some("o27"), 10)
        .await
        .unwrap();
    assert_eq!(ids, ["o28", "o29"]);
    assert!(store
        .resource_types()
        .await
        .unwrap()
        .contains(&t.to_string()));

    revisions_contract(store.as_ref(), t).await;
}

/// Authors, the audit trail's pages and predecessors, after the writes of
/// `resource_store_contract` (30 creates, an update and a deletion by the
/// system author).
async fn revisions_contract(store: &dyn ResourceStore, t: &str) {
    let put = |id: &str, v: i64| WriteOp::Upsert {
        resource_type: t.into(),
        id: id.into(),
        resource: json!({"resourceType": t, "id": id, "valueInteger": v}).into(),
    };
    let mine = store
        .write_as("alice", vec![put("o00", 300)])
        .await
        .unwrap();
    // A bulk load: a new resource (the fresh path) and an update.
    let loaded = store
        .load_as("bob", vec![put("o90", 1), put("o02", 22)])
        .await
        .unwrap();
    let from_alice = mine[0].version.last_updated;
    // Every shard's revisions, newest first, in pages of 7.
    let read_all = |from: i64| async move {
        let mut all = Vec::new();
        for shard in 0..store.shard_count() {
            let mut before = i64::MAX;
            loop {
                let page = store
                    .revisions(RevisionScan {
                        resource_type: t,
                        shard,
                        from,
                        before,
                        with_bodies: false,
                        limit: 7,
                    })
                    .await
                    .unwrap();
                assert!(page.len() <= 7);
                assert!(
                    page.windows(2)
                        .all(|w| w[0].version.last_updated > w[1].version.last_updated),
                    "newest first"
                );
                assert!(page
                    .iter()
                    .all(|r| r.version.body.is_none() && r.version.last_updated >= from));
                let Some(last) = page.last() else { break };
                before = last.version.last_updated;
                let full = page.len() == 7;
                all.extend(page);
                if !full {
                    break;
                }
            }
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.version.last_updated));
        all
    };
    let all = read_all(0).await;
    let summary: Vec<(String, u64, bool, String)> = all
        .iter()
        .map(|r| {
            (
                r.version.id.clone(),
                r.version.version,
                r.version.deleted,
                r.author.clone().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, u64, bool, String)> = (0..30)
        .map(|i| (format!("o{i:02}"), 1, false, SYSTEM_AUTHOR.to_string()))
        .collect();
    expected.push(("o00".into(), 2, false, SYSTEM_AUTHOR.into()));
    expected.push(("o01".into(), 2, true, SYSTEM_AUTHOR.into()));
    expected.push(("o00".into(), 3, false, "alice".into()));
    expected.extend(loaded.iter().map(|r| {
        (
            r.version.id.clone(),
            r.version.version,
            false,
            "bob".to_string(),
        )
    }));
    let mut got = summary.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every version once, with its author");
    assert_eq!(
        summary[..3].iter().filter(|s| s.3 == "bob").count(),
        2,
        "the newest are bob's"
    );
    // A lower bound: only what alice and bob wrote.
    assert_eq!(read_all(from_alice).await.len(), 3);

    // Predecessors: the version before each, bodies on request.
    let pick = |id: &str, version: u64| {
        all.iter()
            .find(|r| r.version.id == id && r.version.version == version)
            .unwrap()
            .clone()
    };
    let of = vec![
        pick("o00", 3),
        pick("o01", 2),
        pick("o02", 2),
        pick("o90", 1),
    ];
    let with = store.predecessors(t, &of, true).await.unwrap();
    let shape: Vec<Option<(String, u64, bool)>> = with
        .iter()
        .map(|p| p.as_ref().map(|v| (v.id.clone(), v.version, v.deleted)))
        .collect();
    assert_eq!(
        shape,
        vec![
            Some(("o00".into(), 2, false)),
            Some(("o01".into(), 1, false)),
            Some(("o02".into(), 1, false)),
            None
        ]
    );
    let body: serde_json::Value =
        serde_json::from_str(with[0].as_ref().unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(body["valueInteger"], 100);
    let without = store.predecessors(t, &of, false).await.unwrap();
    assert!(without.iter().flatten().all(|v| v.body.is_none()));
    assert_eq!(without.iter().flatten().count(), 3);

    // Whether each one's predecessor was live, recorded at write time (the
    // plain audit export reads no predecessor for those).
    let live: Vec<Option<bool>> = of.iter().map(|r| r.previous_live).collect();
    assert_eq!(live, [Some(true), Some(true), Some(true), None]);
    assert_eq!(pick("o05", 1).previous_live, None);
    // A re-creation follows a deletion.
    let again = store.write(vec![put("o01", 9)]).await.unwrap();
    assert_eq!(again[0].version.version, 3);
    let newest = read_all(again[0].version.last_updated).await;
    let recreated: Vec<(&str, u64, Option<bool>)> = newest
        .iter()
        .map(|r| (r.version.id.as_str(), r.version.version, r.previous_live))
        .collect();
    assert_eq!(recreated, [("o01", 3, Some(false))]);
}

/// (id, version) of everything the segments' scans read, sorted.
pub async fn cover(
    store: &dyn ResourceStore,
    t: &str,
    segments: &[bulk_export::ports::Segment],
    as_of: i64,
    include_deleted: bool,
) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    for seg in segments {
        for shard in seg.first_shard..=seg.last_shard {
            // Every page: one cut short at DynamoDB's 1 MB is not the end.
            let mut after = seg.after;
            loop {
                let page = store
                    .scan_shard(ShardScan {
                        resource_type: t,
                        shard,
                        after,
                        until: seg.until,
                        as_of,
                        include_deleted,
                        limit: 1000,
                    })
                    .await
                    .unwrap();
                // A shard the segment marks empty (readers skip it) must be.
                if !seg.reads(shard) {
                    assert!(page.is_empty(), "shard {shard} marked empty: {seg:?}");
                }
                seen.extend(
                    page.items
                        .iter()
                        .map(|v| (page.id(v).to_string(), v.version)),
                );
                after = page.items.last().map(|v| v.last_updated).or(after);
                if !page.more {
                    break;
                }
            }
        }
    }
    seen.sort();
    seen
}

pub async fn artifact_store_contract(store: Arc<dyn ArtifactStore>) {
    let prefix = format!("jobs/{}/", uuid_like());
    let key = format!("{prefix}Patient-0000-000.ndjson");
    let up = store.start_upload(&key).await.unwrap();
    assert_eq!(
        store.list_uploads(&prefix).await.unwrap(),
        std::slice::from_ref(&key)
    );
    // Every chunk but the last is at least S3's 5 MiB minimum (an emulator
    // such as LocalStack enforces it, as S3 does).
    let first = "a\n".repeat(5 << 19);
    let e1 = store
        .upload_chunk(&key, &up, 1, first.clone().into())
        .await
        .unwrap();
    store
        .upload_chunk(&key, &up, 2, "stale\n".into())
        .await
        .unwrap();
    // Uploading a chunk number again replaces it (a resumed part).
    let e2 = store
        .upload_chunk(&key, &up, 2, "b\n".into())
        .await
        .unwrap();
    let chunks = [
        UploadedChunk {
            number: 1,
            etag: e1,
        },
        UploadedChunk {
            number: 2,
            etag: e2,
        },
    ];
    store.complete_upload(&key, &up, &chunks).await.unwrap();
    let whole = store.get(&key).await.unwrap();
    assert!(
        whole == format!("{first}b\n").as_bytes(),
        "the chunks in order"
    );
    assert_eq!(
        store.list(&prefix).await.unwrap(),
        std::slice::from_ref(&key)
    );
    assert!(store.list_uploads(&prefix).await.unwrap().is_empty());

    let other = format!("{prefix}Observation-0000-000.ndjson");
    let up2 = store.start_upload(&other).await.unwrap();
    store
        .upload_chunk(&other, &up2, 1, "x\n".into())
        .await
        .unwrap();
    store.abort_upload(&other, &up2).await.unwrap();
    assert!(store.list_uploads(&prefix).await.unwrap().is_empty());
    assert_eq!(store.get(&other).await, Err(PortError::NotFound));

    multipart_semantics_of_racing_handlings(store.as_ref(), &prefix).await;

    let url = store
        .presign_get(&key, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(url.starts_with("http"), "{url}");

    store
        .put(&format!("{prefix}errors.ndjson"), "e\n".into())
        .await
        .unwrap();
    let open = store
        .start_upload(&format!("{prefix}open.ndjson"))
        .await
        .unwrap();
    store
        .upload_chunk(&format!("{prefix}open.ndjson"), &open, 1, "o\n".into())
        .await
        .unwrap();
    store.delete_prefix(&prefix).await.unwrap();
    assert!(
        store.list(&prefix).await.unwrap().is_empty(),
        "objects gone"
    );
    assert!(
        store.list_uploads(&prefix).await.unwrap().is_empty(),
        "open uploads gone"
    );
}

/// What the engine's exactly-once rules rely on (see `engine/sink.rs`):
/// numbers with gaps and out of order, completion from exactly the listed
/// chunks, completion repeated, stale tags refused, and garbage collection.
async fn multipart_semantics_of_racing_handlings(store: &dyn ArtifactStore, prefix: &str) {
    let key = format!("{prefix}Encounter-0001-000.ndjson");
    let up = store.start_upload(&key).await.unwrap();
    let put = |n: u32, text: &str| store.upload_chunk(&key, &up, n, text.to_string().into());
    // The winner uses 1 and 5; a stale rival writes 2 and 3 in between and
    // after, which nobody lists. (Chunk 1 is not the last: S3's 5 MiB.)
    let w1 = "w1\n".repeat((5 << 20) / 3 + 1);
    let e1 = put(1, &w1).await.unwrap();
    let _ = put(3, "loser3\n").await.unwrap();
    let e5 = put(5, "w5\n").await.unwrap();
    let _ = put(2, "loser2\n").await.unwrap();
    let chunk = |number, etag: &String| UploadedChunk {
        number,
        etag: etag.clone(),
    };
    // A tag the upload does not hold (a replaced chunk) is refused.
    let e5_again = put(5, "other\n").await.unwrap();
    assert_ne!(e5, e5_again, "a tag names the bytes");
    assert!(store
        .complete_upload(&key, &up, &[chunk(1, &e1), chunk(5, &e5)])
        .await
        .is_err());
    store
        .complete_upload(&key, &up, &[chunk(1, &e1), chunk(5, &e5_again)])
        .await
        .unwrap();
    let expected = format!("{w1}other\n");
    assert!(store.get(&key).await.unwrap() == expected.as_bytes());
    // Completing again (a resumed handling) succeeds and changes nothing.
    store
        .complete_upload(&key, &up, &[chunk(1, &e1), chunk(5, &e5_again)])
        .await
        .unwrap();
    assert!(store.get(&key).await.unwrap() == expected.as_bytes());
    assert!(store
        .list_uploads(prefix)
        .await
        .unwrap()
        .iter()
        .all(|k| k != &key));
    // An upload that was aborted, with no object, cannot be completed (S3
    // and the embedded store say NotFound; moto answers a 500).
    let gone = format!("{prefix}Encounter-0001-001.ndjson");
    let up_gone = store.start_upload(&gone).await.unwrap();
    let e = store
        .upload_chunk(&gone, &up_gone, 1, "g\n".into())
        .await
        .unwrap();
    store.abort_upload(&gone, &up_gone).await.unwrap();
    store.abort_upload(&gone, &up_gone).await.unwrap();
    assert!(store
        .complete_upload(&gone, &up_gone, &[chunk(1, &e)])
        .await
        .is_err());
    assert_eq!(store.get(&gone).await, Err(PortError::NotFound));
    // Garbage collection: open uploads and unlisted objects go, kept ones stay.
    let spill = format!("{prefix}_spill/0001-x-0");
    store.put(&spill, "s\n".into()).await.unwrap();
    let stray = store.start_upload(&gone).await.unwrap();
    store
        .upload_chunk(&gone, &stray, 7, "x\n".into())
        .await
        .unwrap();
    let before = store.list(prefix).await.unwrap();
    let keep: Vec<String> = before.iter().filter(|k| **k != spill).cloned().collect();
    store.retain_only(prefix, &keep).await.unwrap();
    assert_eq!(store.list(prefix).await.unwrap(), keep);
    assert!(store.list_uploads(prefix).await.unwrap().is_empty());
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert_eq!(store.get(&key).await, Err(PortError::NotFound));
}

pub async fn work_queue_contract(queue: Arc<dyn WorkQueue>) {
    let m1 = WorkMessage::Plan {
        job_id: "j1".into(),
    };
    let m2 = WorkMessage::Part {
        job_id: "j1".into(),
        index: 3,
    };
    queue.send(&[m1.clone(), m2.clone()]).await.unwrap();
    // SQS counts visibility in whole seconds, and may deliver out of order.
    let mut got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    got.sort_by_key(|d| matches!(d.message, WorkMessage::Part { .. }));
    assert_eq!(
        got.iter().map(|d| d.message.clone()).collect::<Vec<_>>(),
        [m1.clone(), m2.clone()]
    );
    assert!(got.iter().all(|d| d.receive_count == 1));
    // Hidden while in flight.
    assert!(queue
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    queue.delete(&got[0].receipt).await.unwrap();
    // Not deleted: it comes back after the visibility timeout.
    // (A short poll may come back empty while a message is there, on SQS
    // as on LocalStack, which makes a message visible again on its own
    // timer: the check polls for a while.)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut again = Vec::new();
    for _ in 0..100 {
        again = queue.receive(10, Duration::from_secs(30)).await.unwrap();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, m2);
    assert_eq!(again[0].receive_count, 2);
    // A stale receipt does not delete the redelivered message's new lease.
    queue.delete(&got[1].receipt).await.unwrap();
    queue.delete(&again[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(queue
        .receive(10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

/// A registration with every field set, so a store that drops one fails.
fn registration(client_id: &str) -> ClientRegistration {
    ClientRegistration {
        client_id: client_id.into(),
        jwks: Some(
            json!({ "keys": [{ "kty": "EC", "crv": "P-384", "x": "a", "y": "b", "kid": "k1" }] }),
        ),
        jwks_url: Some("https://keys.example.org/jwks.json".into()),
        scope: "system/*.read system/Observation.write".into(),
        groups: Some(vec!["cohort-1".into(), "cohort-2".into()]),
        name: Some("Lab A".into()),
        email: Some("lab-a@example.org".into()),
        audit: true,
        webhook: Some(Webhook {
            url: "https://hooks.example.org/bulk".into(),
            secret: "0123456789abcdef-secret".into(),
        }),
    }
}

pub async fn client_store_contract(store: Arc<dyn ClientStore>) {
    let id = format!("client-{}", uuid_like());
    assert_eq!(store.get_client(&id).await.unwrap(), None);

    // Stored whole, and replaced whole: fields cleared stay cleared.
    let full = registration(&id);
    store.put_client(&full).await.unwrap();
    assert_eq!(store.get_client(&id).await.unwrap(), Some(full.clone()));
    let narrowed = ClientRegistration {
        client_id: id.clone(),
        jwks: full.jwks.clone(),
        scope: "system/Patient.read".into(),
        ..Default::default()
    };
    store.put_client(&narrowed).await.unwrap();
    assert_eq!(store.get_client(&id).await.unwrap(), Some(narrowed));
    let other = format!("{id}-other");
    store.put_client(&registration(&other)).await.unwrap();
    assert_eq!(
        store.get_client(&id).await.unwrap().unwrap().scope,
        "system/Patient.read",
        "another client's registration leaves this one alone"
    );

    // An assertion id is taken once per client: the replay is refused,
    // another client may use the same id.
    let expires = Utc::now() + chrono::Duration::minutes(5);
    assert!(store.remember_jti(&id, "jti-1", expires).await.unwrap());
    assert!(
        !store.remember_jti(&id, "jti-1", expires).await.unwrap(),
        "a replay"
    );
    assert!(store.remember_jti(&id, "jti-2", expires).await.unwrap());
    assert!(store.remember_jti(&other, "jti-1", expires).await.unwrap());

    // Eight callers present one assertion at once: exactly one is let in.
    let tries = (0..8).map(|_| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.remember_jti(&id, "jti-raced", expires).await.unwrap() })
    });
    let mut admitted = 0;
    for t in tries {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(
        admitted, 1,
        "one of eight concurrent uses of a jti is admitted"
    );
}

fn schedule(
    id: &str,
    owner: &str,
    created_at: DateTime<Utc>,
    next_due: Option<DateTime<Utc>>,
) -> Schedule {
    Schedule {
        id: id.into(),
        owner: owner.into(),
        name: format!("nightly-{id}"),
        cadence: Cadence::parse("rate(1 day)").unwrap(),
        mode: ScheduleMode::Incremental,
        export: "$export?_type=Patient,Observation".into(),
        view_export: None,
        // The typed request round-trips whole (its types, its URL).
        request: Some(
            SavedExport::kickoff("$export?_type=Patient,Observation", "https://x/fhir").unwrap(),
        ),
        created_at,
        start_at: created_at,
        paused: next_due.is_none(),
        next_due,
        runs: 3,
        cursor: Some(created_at),
        from_release: Some("r1".into()),
        webhook: Some(Webhook {
            url: "https://hooks.example.org/bulk".into(),
            secret: "0123456789abcdef-secret".into(),
        }),
        last_event_at: None,
        version: 0,
    }
}

pub async fn schedule_store_contract(store: Arc<dyn ScheduleStore>) {
    let tag = uuid_like();
    let owner = format!("owner-{tag}");
    // Due times long past, so that they are the earliest due of any store.
    let t0 = DateTime::parse_from_rfc3339("1971-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let hour = chrono::Duration::hours(1);

    // Created once; the stored version starts at 1.
    let a = schedule(&format!("a-{tag}"), &owner, t0, Some(t0 + hour * 2));
    store.create_schedule(&a).await.unwrap();
    assert_eq!(
        store.create_schedule(&a).await,
        Err(PortError::AlreadyExists)
    );
    let stored = store.get_schedule(&a.id).await.unwrap().expect("stored");
    assert_eq!(stored.version, 1);
    assert_eq!(
        Schedule {
            version: 0,
            ..stored.clone()
        },
        a,
        "stored whole"
    );
    assert_eq!(
        store.get_schedule(&format!("none-{tag}")).await.unwrap(),
        None
    );

    // Updates are conditional on the version read.
    let mut next = stored.clone();
    next.runs += 1;
    next.next_due = Some(t0 + hour * 3);
    let updated = store.update_schedule(&next).await.unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(
        store.get_schedule(&a.id).await.unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        store.update_schedule(&next).await,
        Err(PortError::Conflict),
        "a write from a stale read loses"
    );

    // The owner's schedules, oldest first; another owner's are not among them.
    let b = schedule(&format!("b-{tag}"), &owner, t0 + hour, Some(t0 + hour));
    let paused = schedule(&format!("c-{tag}"), &owner, t0 + hour * 2, None);
    let foreign = schedule(&format!("d-{tag}"), &format!("{owner}-2"), t0, Some(t0));
    for s in [&paused, &b, &foreign] {
        store.create_schedule(s).await.unwrap();
    }
    let ids = |v: Vec<Schedule>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.schedules_of(&owner).await.unwrap()),
        [a.id.clone(), b.id.clone(), paused.id.clone()]
    );

    // Due: earliest first, up to the limit, none due later or paused.
    let due = ids(store.due_schedules(t0 + hour * 2, 10).await.unwrap());
    let mine: Vec<&String> = due.iter().filter(|id| id.ends_with(&tag)).collect();
    assert_eq!(
        mine,
        [&foreign.id, &b.id],
        "due at t0+2h: d (t0), b (t0+1h); a is due at t0+3h"
    );
    let first = ids(store.due_schedules(t0 + hour * 10, 1).await.unwrap());
    assert_eq!(
        first,
        std::slice::from_ref(&foreign.id),
        "the limit keeps the earliest"
    );
    let all_due = ids(store.due_schedules(t0 + hour * 10, 10).await.unwrap());
    assert!(all_due.contains(&a.id) && !all_due.contains(&paused.id));

    // Pausing takes a schedule out of the due index.
    let mut stop = store.get_schedule(&b.id).await.unwrap().unwrap();
    stop.next_due = None;
    stop.paused = true;
    store.update_schedule(&stop).await.unwrap();
    assert!(!ids(store.due_schedules(t0 + hour * 10, 10).await.unwrap()).contains(&b.id));

    // Deleted: gone from reads and the index; deleting again is fine; an
    // update of a deleted schedule is NotFound.
    store.delete_schedule(&a.id).await.unwrap();
    store.delete_schedule(&a.id).await.unwrap();
    assert_eq!(store.get_schedule(&a.id).await.unwrap(), None);
    assert!(!ids(store.due_schedules(t0 + hour * 10, 10).await.unwrap()).contains(&a.id));
    assert_eq!(
        store.update_schedule(&updated).await,
        Err(PortError::NotFound)
    );
    assert_eq!(
        ids(store.schedules_of(&owner).await.unwrap()),
        [b.id.clone(), paused.id.clone()]
    );

    // Releases: created once, conditional updates, listed oldest first.
    let release = |name: &str, at: DateTime<Utc>| Release {
        name: name.into(),
        export: "$export?_type=CodeSystem,ValueSet".into(),
        request: job("unused").request,
        transaction_time: at,
        created_at: at,
        created_by: owner.clone(),
        generation: 0,
        version: 0,
    };
    let (r1, r2) = (format!("r1-{tag}"), format!("r2-{tag}"));
    store
        .create_release(&release(&r2, t0 + hour))
        .await
        .unwrap();
    store.create_release(&release(&r1, t0)).await.unwrap();
    assert_eq!(
        store.create_release(&release(&r1, t0)).await,
        Err(PortError::AlreadyExists)
    );
    let got = store.get_release(&r1).await.unwrap().expect("stored");
    assert_eq!(got.version, 1);
    assert_eq!(
        Release {
            version: 0,
            ..got.clone()
        },
        release(&r1, t0)
    );
    assert_eq!(
        store.get_release(&format!("none-{tag}")).await.unwrap(),
        None
    );
    let rebuilt = store
        .update_release(&Release {
            generation: 1,
            ..got.clone()
        })
        .await
        .unwrap();
    assert_eq!((rebuilt.generation, rebuilt.version), (1, 2));
    assert_eq!(store.get_release(&r1).await.unwrap(), Some(rebuilt));
    assert_eq!(
        store
            .update_release(&Release {
                generation: 2,
                ..got
            })
            .await,
        Err(PortError::Conflict)
    );
    let names: Vec<String> = store
        .releases()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .filter(|n| n.ends_with(&tag))
        .collect();
    assert_eq!(names, [r1, r2], "oldest transactionTime first");
}

fn uuid_like() -> String {
    format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

mod embedded {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_store() {
        let dir = tempfile::tempdir().unwrap();
        job_store_contract(Arc::new(
            SqliteJobs::open(&dir.path().join("jobs.db")).unwrap(),
        ))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteResourceStore::open(&dir.path().join("r.db"), Arc::new(SystemClock)).unwrap();
        resource_store_contract(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn artifact_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            FsArtifacts::open(dir.path(), "http://127.0.0.1:9", Arc::new(SystemClock)).unwrap();
        artifact_store_contract(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_queue() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = SqliteJobs::open(&dir.path().join("jobs.db")).unwrap();
        work_queue_contract(Arc::new(jobs.queue())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_store() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = SqliteJobs::open(&dir.path().join("jobs.db")).unwrap();
        client_store_contract(Arc::new(jobs)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schedule_store() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = SqliteJobs::open(&dir.path().join("jobs.db")).unwrap();
        schedule_store_contract(Arc::new(jobs)).await;
    }
}
