//! Races: many writers at once on the same item, and then an exact count.
//!
//! Exactly-once export rests on conditional writes and transactions: a
//! checkpoint that two workers save from the same version, a part that two
//! deliveries complete, a schedule run that several schedulers claim, a
//! release rebuild that several status polls start, counters that every
//! handling adds to. A store that lost an update (plain moto does, under
//! concurrent writers) would let two writers both win, or one count vanish;
//! each scenario here counts the winners and checks the stored result
//! exactly. They run on SQLite below, and in `aws::races` on the AWS emulator
//! and on Amazon's DynamoDB Local.

use std::sync::Arc;

use bulk_export::clock::OffsetClock;
use bulk_export::domain::schedule::{release_job_id, run_job_id};
use bulk_export::domain::schedule_input::{NewRelease, NewSchedule};
use bulk_export::domain::usage::Usage;
use bulk_export::engine::{Caller, Services};
use bulk_export::ports::{JobStore, PortError, ResourceStore, WriteOp};
use futures::future::join_all;
use serde_json::json;

use crate::contract::{job, part};

/// Writers racing in each scenario.
pub const WRITERS: u64 = 6;

/// Runs one scenario, failing it (rather than hanging the suite) if a
/// store lets a writer retry forever.
pub async fn within<T>(what: &str, scenario: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(120), scenario)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 120 s"))
}

fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Transient errors (DynamoDB's contention, given up after its retries)
/// are retried by the caller, as a redelivered message would; every other
/// error fails the test.
fn retry_transient<T>(r: &Result<T, PortError>) -> bool {
    matches!(r, Err(PortError::Transient { .. }))
}

/// Writers each save the same part's checkpoint `EACH` times, each from a
/// fresh read, retrying lost races: every save that succeeded must be in
/// the count, and no two may have succeeded from the same version.
pub async fn checkpoint_race(store: Arc<dyn JobStore>) {
    const EACH: u64 = 15;
    let id = fresh_id("checkpoint");
    store.create_job(&job(&id)).await.unwrap();
    store.put_parts(&[part(&id, 0)]).await.unwrap();
    let start = store.get_part(&id, 0).await.unwrap().unwrap();
    let writers = (0..WRITERS).map(|_| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            let (mut saved, mut lost) = (Vec::new(), 0u64);
            while (saved.len() as u64) < EACH {
                let mut p = store.get_part(&id, 0).await.unwrap().unwrap();
                p.checkpoint.progress_done += 1;
                match store.save_part(&p).await {
                    Ok(stored) => saved.push(stored.version),
                    Err(PortError::Conflict) => lost += 1,
                    r if retry_transient(&r) => {}
                    Err(e) => panic!("saving a checkpoint: {e}"),
                }
            }
            (saved, lost)
        })
    });
    let mut versions = Vec::new();
    let mut lost = 0;
    for w in join_all(writers).await {
        let (saved, l) = w.unwrap();
        versions.extend(saved);
        lost += l;
    }
    let end = store.get_part(&id, 0).await.unwrap().unwrap();
    assert_eq!(
        end.checkpoint.progress_done,
        start.checkpoint.progress_done + WRITERS * EACH,
        "every saved checkpoint counted ({lost} lost races)"
    );
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len() as u64,
        WRITERS * EACH,
        "no two saves won from the same version"
    );
    assert_eq!(end.version, start.version + WRITERS * EACH);
    eprintln!(
        "checkpoint race: {} saves by {WRITERS} writers, {lost} lost races, none lost",
        WRITERS * EACH
    );
}

/// Every part of a job completed at once, each by two deliveries of the
/// same work: one completion per part counts, the twin is refused, and
/// the job's count reaches exactly 0, seen by exactly one completion.
pub async fn completion_race(store: Arc<dyn JobStore>) {
    const PARTS: u32 = 20;
    let mut j = job(&fresh_id("completion"));
    j.parts_total = PARTS;
    j.parts_remaining = PARTS;
    store.create_job(&j).await.unwrap();
    let parts: Vec<_> = (0..PARTS).map(|i| part(&j.id, i)).collect();
    store.put_parts(&parts).await.unwrap();
    let mut completions = Vec::new();
    for i in 0..PARTS {
        let p = store.get_part(&j.id, i).await.unwrap().unwrap();
        for _twin in 0..2 {
            let (store, p) = (store.clone(), p.clone());
            completions.push(tokio::spawn(async move {
                loop {
                    let r = store.complete_part(&p).await;
                    if !retry_transient(&r) {
                        return r;
                    }
                }
            }));
        }
    }
    let (mut counted, mut refused, mut saw_zero) = (0, 0, 0);
    for c in join_all(completions).await {
        match c.unwrap() {
            Ok(remaining) => {
                counted += 1;
                saw_zero += u32::from(remaining == 0);
            }
            Err(PortError::Conflict) => refused += 1,
            Err(e) => panic!("completing a part: {e}"),
        }
    }
    assert_eq!(counted, PARTS, "one completion per part counted");
    assert_eq!(refused, PARTS, "each part's twin refused");
    let stored = store.get_job(&j.id).await.unwrap().unwrap();
    assert_eq!(stored.parts_remaining, 0, "every completion counted down");
    assert!(saw_zero >= 1, "some completion saw the count reach 0");
    let parts = store.list_parts(&j.id).await.unwrap();
    assert!(parts.iter().all(|p| p.done) && parts.len() == PARTS as usize);
    eprintln!("completion race: {PARTS} parts x 2 deliveries, {counted} counted, {refused} refused, count 0");
}

/// Handlings adding to the same job's counters at once: the sums are exact.
pub async fn usage_race(store: Arc<dyn JobStore>) {
    const EACH: u64 = 20;
    let id = fresh_id("usage");
    store.create_job(&job(&id)).await.unwrap();
    let adders = (0..WRITERS).map(|w| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            for _ in 0..EACH {
                let mut u = Usage::default();
                u.add_request("dynamodb", "Query");
                u.add("bytes.written", 1000.0 + w as f64);
                loop {
                    let r = store.add_usage(&id, &u).await;
                    if !retry_transient(&r) {
                        r.unwrap();
                        break;
                    }
                }
            }
        })
    });
    for a in join_all(adders).await {
        a.unwrap();
    }
    let got = store.usage(&id).await.unwrap();
    let queries: f64 = got
        .requests("dynamodb")
        .filter(|(op, _)| *op == "Query")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(queries, (WRITERS * EACH) as f64, "every request counted");
    let bytes: f64 = (0..WRITERS).map(|w| (1000 + w) as f64 * EACH as f64).sum();
    assert_eq!(got.get("bytes.written"), bytes, "every byte counted");
    eprintln!(
        "usage race: {} additions by {WRITERS} writers, sums exact",
        WRITERS * EACH
    );
}

/// Writers updating one resource at once, and creating others of its type:
/// each update gets its own version (no two the same, none skipped), and
/// the type's per-shard counts (of versions, history included) hold every
/// version written.
pub async fn resource_write_race(store: Arc<dyn ResourceStore>) {
    const EACH: u64 = 5;
    const T: &str = "Basic";
    let t = T;
    let hot = fresh_id("hot");
    fn upsert(id: &str, n: u64) -> WriteOp {
        WriteOp::Upsert {
            resource_type: T.into(),
            id: id.into(),
            resource: json!({"resourceType": T, "id": id, "code": {"text": n.to_string()}}).into(),
        }
    }
    let counted_before: u64 = store
        .shard_counts(t)
        .await
        .unwrap()
        .map_or(0, |c| c.iter().sum());
    store.write(vec![upsert(&hot, 0)]).await.unwrap();
    let writers = (0..WRITERS).map(|w| {
        let (store, hot) = (store.clone(), hot.clone());
        tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..EACH {
                let fresh = format!("{hot}-{w}-{i}");
                loop {
                    match store.write(vec![upsert(&hot, w * 100 + i)]).await {
                        Ok(r) => {
                            versions.push(r[0].version.version);
                            break;
                        }
                        Err(PortError::Conflict) => {}
                        r if retry_transient(&r) => {}
                        Err(e) => panic!("updating {hot}: {e}"),
                    }
                }
                loop {
                    let r = store.write(vec![upsert(&fresh, 0)]).await;
                    if !(retry_transient(&r) || matches!(r, Err(PortError::Conflict))) {
                        assert!(r.unwrap()[0].created);
                        break;
                    }
                }
            }
            versions
        })
    });
    let mut versions: Vec<u64> = Vec::new();
    for w in join_all(writers).await {
        versions.extend(w.unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (2..=WRITERS * EACH + 1).collect();
    assert_eq!(
        versions, expected,
        "each update made its own version, none lost"
    );
    let current = store.read_current(t, &hot).await.unwrap().unwrap();
    assert_eq!(current.version, WRITERS * EACH + 1);
    if let Some(counts) = store.shard_counts(t).await.unwrap() {
        let counted: u64 = counts.iter().sum();
        assert_eq!(
            counted - counted_before,
            1 + 2 * WRITERS * EACH,
            "the type's counts hold every version written"
        );
    }
    eprintln!(
        "resource race: {} updates of one resource and {} creations by {WRITERS} writers, versions 2..={} once each",
        WRITERS * EACH,
        WRITERS * EACH,
        WRITERS * EACH + 1
    );
}

/// Schedulers firing at once (as overlapping ticks of the scheduler
/// function do): each due run is started exactly once, whoever wins.
pub async fn schedule_claim_race(engines: &[Services], clock: &OffsetClock) {
    const TICKS: u64 = 3;
    let first = &engines[0];
    let caller = Caller::anonymous();
    let name = fresh_id("race");
    let body = json!({"name": name, "cadence": "rate(1 hour)", "export": "$export?_type=Patient"});
    let s = first
        .schedules
        .create_schedule(
            &caller,
            NewSchedule::parse(body.to_string().as_bytes(), &first.config.base_url).unwrap(),
        )
        .await
        .unwrap();
    for tick in 1..=TICKS {
        clock.advance(chrono::Duration::minutes(61));
        let fired: u32 = join_all(engines.iter().map(|e| e.schedules.fire_due_schedules()))
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum();
        assert_eq!(fired, 1, "tick {tick}: one scheduler started the run");
        let stored = first.ports.schedules.get_schedule(&s.id).await.unwrap();
        assert_eq!(stored.unwrap().runs, tick, "tick {tick}: one run claimed");
        let run = first.ports.jobs.get_job(&run_job_id(&s.id, tick)).await;
        assert!(run.unwrap().is_some(), "tick {tick}: the run's job stored");
    }
    let next = run_job_id(&s.id, TICKS + 1);
    let next = first.ports.jobs.get_job(&next).await.unwrap();
    assert!(next.is_none(), "no run beyond the ticks");
    eprintln!(
        "schedule race: {} schedulers, {TICKS} ticks, one run each",
        engines.len()
    );
}

/// A release whose build failed, asked for by several clients at once:
/// exactly one of them starts the next generation, and every one of them
/// is answered with it; beside it, racing conditional updates of the
/// release record have exactly one winner.
pub async fn release_build_race(engines: &[Services]) {
    let first = &engines[0];
    let caller = Caller::anonymous();
    let name = fresh_id("rel");
    let body = json!({"name": name, "export": "$export?_type=Patient"});
    let release = first
        .releases
        .create_release(
            &caller,
            NewRelease::parse(
                body.to_string().as_bytes(),
                &first.config.base_url,
                first.ports.clock.now(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let jobs = &first.ports.jobs;
    let mut failed = jobs.get_job(&release.job_id()).await.unwrap().unwrap();
    failed.state = bulk_export::domain::job::JobState::Failed;
    jobs.update_job(&failed).await.unwrap();

    let replies = join_all(
        engines
            .iter()
            .map(|e| e.releases.release_status(&caller, &name)),
    )
    .await;
    for r in replies {
        assert!(r.is_ok(), "every caller is answered: {:?}", r.err());
    }
    let stored = first.ports.schedules.get_release(&name).await.unwrap();
    assert_eq!(stored.unwrap().generation, 1, "one rebuild started");
    assert!(jobs
        .get_job(&release_job_id(&name, 1))
        .await
        .unwrap()
        .is_some());
    assert!(jobs
        .get_job(&release_job_id(&name, 2))
        .await
        .unwrap()
        .is_none());

    // The record itself: racing updates from one version, one winner.
    for round in 0..5 {
        let current = first.ports.schedules.get_release(&name).await.unwrap();
        let current = current.unwrap();
        let updates = engines.iter().map(|e| {
            let mut next = current.clone();
            next.generation += 1;
            let schedules = e.ports.schedules.clone();
            async move { schedules.update_release(&next).await }
        });
        let results = join_all(updates).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: one update wins");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(PortError::Conflict))));
    }
    let end = first.ports.schedules.get_release(&name).await.unwrap();
    assert_eq!(end.unwrap().generation, 6);
    eprintln!(
        "release race: {} callers, one rebuild; 5 rounds of racing updates, one winner each",
        engines.len()
    );
}

mod embedded {
    use std::sync::Arc;

    use bulk_export::clock::{OffsetClock, SystemClock};
    use bulk_export::embedded::{FsArtifacts, SqliteJobs, SqliteResourceStore};
    use bulk_export::engine::{EngineConfig, Ports, Services};
    use bulk_export::ports::{Clock, NoEvents};

    use super::*;

    /// Engines as separate processes would be: one store, many callers.
    fn engines(dir: &std::path::Path, clock: Arc<OffsetClock>) -> Vec<Services> {
        let clock: Arc<dyn Clock> = clock;
        let jobs = Arc::new(SqliteJobs::open(&dir.join("jobs.db")).unwrap());
        let ports = Ports {
            resources: Arc::new(
                SqliteResourceStore::open(&dir.join("r.db"), clock.clone()).unwrap(),
            ),
            artifacts: Arc::new(
                FsArtifacts::open(dir, "http://127.0.0.1:9", clock.clone()).unwrap(),
            ),
            queue: Arc::new(jobs.queue()),
            clock,
            clients: jobs.clone(),
            schedules: jobs.clone(),
            events: Arc::new(NoEvents),
            jobs,
        };
        let engine = Services::new(ports, EngineConfig::new("http://127.0.0.1:9/fhir"));
        (0..super::WRITERS).map(|_| engine.clone()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn job_store_races() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Arc::new(SqliteJobs::open(&dir.path().join("jobs.db")).unwrap());
        within("checkpoint race", checkpoint_race(jobs.clone())).await;
        within("completion race", completion_race(jobs.clone())).await;
        within("usage race", usage_race(jobs)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn resource_store_races() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteResourceStore::open(&dir.path().join("r.db"), Arc::new(SystemClock));
        within(
            "resource race",
            resource_write_race(Arc::new(store.unwrap())),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scheduler_and_release_races() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(OffsetClock::default());
        let engines = engines(dir.path(), clock.clone());
        within("schedule race", schedule_claim_race(&engines, &clock)).await;
        within("release race", release_build_race(&engines)).await;
    }
}
