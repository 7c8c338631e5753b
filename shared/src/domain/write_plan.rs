//! What an atomic write to the resource store changes, decided without I/O.
//!
//! Given the head (newest stored version) of each resource the ops name,
//! the store clock and the wall clock, [`plan`] decides per op whether it
//! writes, the version number, instant and body of the version it adds,
//! and what it answers. The stores only gather those inputs and carry the
//! plan out (one DynamoDB transaction, or SQL statements in one SQLite
//! transaction), so both number versions and hand out instants alike.
//! Where they differ, [`Rules`] says so.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::error::{PortError, PortResult};
use super::instant::{format_instant, from_micros};
use super::resource::{shard_of, Version, WriteOp, WriteResult};
use super::resource_text::ResourceText;

/// The newest stored version of a resource, as read before a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: u64,
    /// µs since the epoch.
    pub last_updated: i64,
    pub deleted: bool,
}

/// Heads by `(type, id)`; a resource missing here was never written.
pub type Heads = HashMap<(String, String), Head>;

/// What sets one store's writes apart from the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub repeats: Repeats,
    /// The longest stamped body the store keeps, in bytes; `None`: any.
    pub max_body_bytes: Option<usize>,
}

/// What a write that names one resource more than once means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    /// It is refused (a DynamoDB transaction touches each item once).
    Refused,
    /// Its ops apply in order, each on top of what the one before wrote.
    InOrder,
}

impl Repeats {
    /// Refuses ops that name one resource twice, if this rule says so:
    /// cheap enough to run before anything is read.
    pub fn check(self, ops: &[WriteOp]) -> PortResult<()> {
        let mut seen = HashSet::new();
        if self == Repeats::Refused && !ops.iter().all(|op| seen.insert(op.target())) {
            return Err(PortError::Unsupported(
                "An atomic write may change each resource only once on this store".into(),
            ));
        }
        Ok(())
    }
}

/// What one op does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The resource's newest version before this op; `None`: never written.
    pub previous: Option<Head>,
    /// False for a delete that finds nothing live: it writes nothing.
    pub writes: bool,
    /// The op's answer; when it writes, its version is the one to store.
    pub result: WriteResult,
}

impl Step {
    /// The version this step adds to the store, if any.
    pub fn written(&self) -> Option<&Version> {
        self.writes.then_some(&self.result.version)
    }
}

/// The whole of an atomic write: to be stored entirely or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// One step per op, in the ops' order.
    pub steps: Vec<Step>,
    /// The store clock after the write: its newest instant (the clock as
    /// it was when nothing is written).
    pub clock_after: i64,
}

impl WritePlan {
    /// Whether any op adds a version (only deletes of nothing do not).
    pub fn writes_anything(&self) -> bool {
        self.steps.iter().any(|s| s.writes)
    }

    /// The new versions, in the ops' order.
    pub fn written(&self) -> impl Iterator<Item = &Version> {
        self.steps.iter().filter_map(Step::written)
    }

    /// New versions per type and shard: what the type counters add.
    pub fn versions_per_shard(&self, shards: u16) -> BTreeMap<&str, BTreeMap<u16, u64>> {
        let mut counts: BTreeMap<&str, BTreeMap<u16, u64>> = BTreeMap::new();
        for v in self.written() {
            let shard = shard_of(&v.id, shards);
            *counts
                .entry(v.resource_type.as_str())
                .or_default()
                .entry(shard)
                .or_default() += 1;
        }
        counts
    }

    /// Each op's answer, in the ops' order.
    pub fn into_results(self) -> Vec<WriteResult> {
        self.steps.into_iter().map(|s| s.result).collect()
    }
}

/// Decides an atomic write. `clock` is the store's newest instant (0 for a
/// new store) and `now` the wall clock, both µs since the epoch.
pub fn plan(
    heads: &Heads,
    clock: i64,
    now: i64,
    ops: &[WriteOp],
    rules: Rules,
) -> PortResult<WritePlan> {
    rules.repeats.check(ops)?;
    // Heads as the ops so far left them (ops in order see earlier ones).
    let mut written: Heads = HashMap::new();
    let mut instants = Instants { last: clock, now };
    let mut steps = Vec::with_capacity(ops.len());
    for op in ops {
        let (resource_type, id) = op.target();
        let target = (resource_type.to_string(), id.to_string());
        let previous = written.get(&target).or(heads.get(&target)).copied();
        let step = step(op, previous, &mut instants, rules.max_body_bytes)?;
        if let Some(v) = step.written() {
            written.insert(target, head_of(v));
        }
        steps.push(step);
    }
    Ok(WritePlan {
        steps,
        clock_after: instants.last,
    })
}

/// Instants for new versions: unique and increasing across the store, so
/// each is after the store clock even when the wall clock is behind it.
struct Instants {
    last: i64,
    now: i64,
}

impl Instants {
    fn next(&mut self) -> i64 {
        self.last = self.now.max(self.last + 1);
        self.last
    }
}

fn head_of(v: &Version) -> Head {
    Head {
        version: v.version,
        last_updated: v.last_updated,
        deleted: v.deleted,
    }
}

fn step(
    op: &WriteOp,
    previous: Option<Head>,
    instants: &mut Instants,
    max_body_bytes: Option<usize>,
) -> PortResult<Step> {
    let (resource_type, id) = op.target();
    let live_before = previous.is_some_and(|h| !h.deleted);
    let resource = match op {
        WriteOp::Delete { .. } if !live_before => return Ok(unchanged(op, previous)),
        WriteOp::Delete { .. } => None,
        WriteOp::Upsert { resource, .. } => Some(resource),
    };
    let version = previous.map_or(0, |h| h.version) + 1;
    let last_updated = instants.next();
    let body = resource
        .map(|r| stamped_body(r, resource_type, id, version, last_updated, max_body_bytes))
        .transpose()?;
    Ok(Step {
        previous,
        writes: true,
        result: WriteResult {
            version: Version {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
                version,
                last_updated,
                deleted: resource.is_none(),
                body,
            },
            created: !live_before,
        },
    })
}

/// Deleting what is not there changes nothing (FHIR: idempotent); the
/// answer names the newest version there is, if any.
fn unchanged(op: &WriteOp, previous: Option<Head>) -> Step {
    let (resource_type, id) = op.target();
    Step {
        previous,
        writes: false,
        result: WriteResult {
            version: Version {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
                version: previous.map_or(0, |h| h.version),
                last_updated: previous.map_or(0, |h| h.last_updated),
                deleted: true,
                body: None,
            },
            created: false,
        },
    }
}

/// The stored JSON of an upsert: `meta` stamped, its size checked against
/// the store's limit if it has one.
pub fn stamped_body(
    resource: &ResourceText,
    resource_type: &str,
    id: &str,
    version: u64,
    last_updated: i64,
    max_bytes: Option<usize>,
) -> PortResult<String> {
    let body = resource.stamped(id, version, &format_instant(from_micros(last_updated)));
    match max_bytes {
        Some(max) if body.len() > max => Err(PortError::Unsupported(format!(
            "{resource_type}/{id} is {} bytes; this store keeps resources up to {max} bytes",
            body.len()
        ))),
        _ => Ok(body),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const SQLITE: Rules = Rules {
        repeats: Repeats::InOrder,
        max_body_bytes: None,
    };
    const DYNAMO: Rules = Rules {
        repeats: Repeats::Refused,
        max_body_bytes: Some(200),
    };

    fn put(id: &str) -> WriteOp {
        WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: id.into(),
            resource: json!({"resourceType": "Patient", "active": true}).into(),
        }
    }

    fn delete(id: &str) -> WriteOp {
        WriteOp::Delete {
            resource_type: "Patient".into(),
            id: id.into(),
        }
    }

    fn heads(of: &[(&str, u64, i64, bool)]) -> Heads {
        of.iter()
            .map(|&(id, version, last_updated, deleted)| {
                let head = Head {
                    version,
                    last_updated,
                    deleted,
                };
                (("Patient".to_string(), id.to_string()), head)
            })
            .collect()
    }

    fn body(v: &Version) -> Value {
        serde_json::from_str(v.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn a_create_writes_version_1_with_a_stamped_body() {
        let plan = plan(&Heads::new(), 100, 50, &[put("a")], SQLITE).unwrap();
        let step = &plan.steps[0];
        assert_eq!((step.previous, step.writes), (None, true));
        assert!(step.result.created);
        let v = &step.result.version;
        assert_eq!((v.version, v.last_updated, v.deleted), (1, 101, false));
        let body = body(v);
        assert_eq!(body["id"], "a");
        assert_eq!(body["meta"]["versionId"], "1");
        assert_eq!(body["meta"]["lastUpdated"], "1970-01-01T00:00:00.000101Z");
        assert_eq!(plan.clock_after, 101);
    }

    #[test]
    fn an_update_adds_the_next_version_on_top_of_the_head() {
        let head = heads(&[("a", 4, 90, false)]);
        let plan = plan(&head, 100, 50, &[put("a")], SQLITE).unwrap();
        let step = &plan.steps[0];
        assert_eq!(step.previous, Some(head[&("Patient".into(), "a".into())]));
        assert!(!step.result.created);
        assert_eq!(step.result.version.version, 5);
        assert_eq!(body(&step.result.version)["meta"]["versionId"], "5");
    }

    #[test]
    fn an_upsert_of_a_deleted_resource_recreates_it() {
        let plan = plan(&heads(&[("a", 2, 90, true)]), 100, 50, &[put("a")], SQLITE).unwrap();
        let r = &plan.steps[0].result;
        assert!(r.created);
        assert_eq!((r.version.version, r.version.deleted), (3, false));
    }

    #[test]
    fn a_delete_of_a_live_resource_writes_a_tombstone() {
        let plan = plan(
            &heads(&[("a", 1, 90, false)]),
            100,
            50,
            &[delete("a")],
            SQLITE,
        )
        .unwrap();
        let step = &plan.steps[0];
        assert!(step.writes && !step.result.created);
        let v = &step.result.version;
        assert_eq!((v.version, v.last_updated, v.deleted), (2, 101, true));
        assert_eq!(v.body, None);
        assert_eq!(plan.clock_after, 101);
    }

    #[test]
    fn a_delete_of_a_missing_resource_writes_nothing() {
        let plan = plan(&Heads::new(), 100, 500, &[delete("a")], SQLITE).unwrap();
        let step = &plan.steps[0];
        assert_eq!((step.previous, step.writes), (None, false));
        let v = &step.result.version;
        assert_eq!((v.version, v.last_updated, v.deleted), (0, 0, true));
        assert!(!step.result.created);
        assert!(!plan.writes_anything());
        assert_eq!(plan.clock_after, 100, "the clock stays");
    }

    #[test]
    fn a_delete_of_a_deleted_resource_answers_its_tombstone() {
        let plan = plan(
            &heads(&[("a", 3, 90, true)]),
            100,
            500,
            &[delete("a")],
            SQLITE,
        )
        .unwrap();
        let step = &plan.steps[0];
        assert!(!step.writes && !step.result.created);
        let v = &step.result.version;
        assert_eq!((v.version, v.last_updated, v.deleted), (3, 90, true));
        assert_eq!(plan.written().count(), 0);
    }

    #[test]
    fn instants_follow_the_wall_clock_when_it_is_ahead() {
        let plan = plan(&Heads::new(), 100, 5_000, &[put("a"), put("b")], SQLITE).unwrap();
        let at: Vec<i64> = plan.written().map(|v| v.last_updated).collect();
        assert_eq!(at, [5_000, 5_001]);
        assert_eq!(plan.clock_after, 5_001);
    }

    #[test]
    fn instants_stay_after_the_store_clock_when_the_wall_clock_is_behind() {
        let ops = [put("a"), delete("gone"), put("b"), put("c")];
        let plan = plan(&Heads::new(), 1_000, 10, &ops, SQLITE).unwrap();
        let at: Vec<i64> = plan.written().map(|v| v.last_updated).collect();
        assert_eq!(at, [1_001, 1_002, 1_003], "strictly increasing, no gaps");
        assert_eq!(plan.clock_after, 1_003);
    }

    #[test]
    fn ops_on_distinct_resources_each_get_their_own_step_in_order() {
        let known = heads(&[("b", 7, 90, false), ("c", 1, 80, false)]);
        let ops = [put("a"), put("b"), delete("c"), delete("d")];
        let plan = plan(&known, 100, 0, &ops, DYNAMO).unwrap();
        let got: Vec<(&str, u64, bool, bool)> = plan
            .steps
            .iter()
            .map(|s| {
                let v = &s.result.version;
                (v.id.as_str(), v.version, v.deleted, s.result.created)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", 1, false, true),
                ("b", 8, false, false),
                ("c", 2, true, false),
                ("d", 0, true, false),
            ]
        );
        let previous: Vec<Option<u64>> = plan
            .steps
            .iter()
            .map(|s| s.previous.map(|h| h.version))
            .collect();
        assert_eq!(previous, [None, Some(7), Some(1), None]);
        assert_eq!(plan.written().count(), 3);
    }

    #[test]
    fn repeats_are_refused_when_the_store_says_so() {
        let err = plan(&Heads::new(), 0, 0, &[put("a"), delete("a")], DYNAMO).unwrap_err();
        assert!(matches!(err, PortError::Unsupported(m) if m.contains("only once")));
        assert!(Repeats::Refused.check(&[put("a"), put("b")]).is_ok());
        assert!(Repeats::InOrder.check(&[put("a"), put("a")]).is_ok());
    }

    #[test]
    fn repeats_in_order_build_on_the_version_before() {
        let ops = [put("a"), put("a"), delete("a"), delete("a"), put("a")];
        let plan = plan(&heads(&[("a", 1, 90, false)]), 100, 0, &ops, SQLITE).unwrap();
        let got: Vec<(u64, i64, bool, bool, bool)> = plan
            .steps
            .iter()
            .map(|s| {
                let v = &s.result.version;
                (
                    v.version,
                    v.last_updated,
                    v.deleted,
                    s.writes,
                    s.result.created,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (2, 101, false, true, false),
                (3, 102, false, true, false),
                (4, 103, true, true, false),
                (4, 103, true, false, false),
                (5, 104, false, true, true),
            ]
        );
        let previous_at: Vec<Option<i64>> = plan
            .steps
            .iter()
            .map(|s| s.previous.map(|h| h.last_updated))
            .collect();
        assert_eq!(
            previous_at,
            [Some(90), Some(101), Some(102), Some(103), Some(103)]
        );
    }

    #[test]
    fn bodies_over_the_store_limit_are_refused() {
        let big = WriteOp::Upsert {
            resource_type: "Patient".into(),
            id: "big".into(),
            resource: json!({"resourceType": "Patient", "note": "x".repeat(300)}).into(),
        };
        let err = plan(&Heads::new(), 0, 0, &[put("a"), big.clone()], DYNAMO).unwrap_err();
        assert!(
            matches!(&err, PortError::Unsupported(m) if m.starts_with("Patient/big is ")
                && m.ends_with("up to 200 bytes")),
            "{err:?}"
        );
        assert!(plan(&Heads::new(), 0, 0, &[big], SQLITE).is_ok());
    }

    #[test]
    fn new_versions_are_counted_per_type_and_shard() {
        let ops = [
            put("a"),
            put("b"),
            delete("missing"),
            WriteOp::Delete {
                resource_type: "Observation".into(),
                id: "o".into(),
            },
        ];
        let known: Heads = HashMap::from([(
            ("Observation".to_string(), "o".to_string()),
            Head {
                version: 1,
                last_updated: 5,
                deleted: false,
            },
        )]);
        let plan = plan(&known, 10, 0, &ops, SQLITE).unwrap();
        let shards = 4;
        let mut expected: BTreeMap<&str, BTreeMap<u16, u64>> = BTreeMap::new();
        for (t, id) in [("Patient", "a"), ("Patient", "b"), ("Observation", "o")] {
            *expected
                .entry(t)
                .or_default()
                .entry(shard_of(id, shards))
                .or_default() += 1;
        }
        assert_eq!(plan.versions_per_shard(shards), expected);
        let one_shard = plan.versions_per_shard(1);
        assert_eq!(one_shard["Patient"], BTreeMap::from([(0, 2)]));
        assert_eq!(one_shard["Observation"], BTreeMap::from([(0, 1)]));
    }

    #[test]
    fn results_come_back_in_the_ops_order() {
        let plan = plan(
            &Heads::new(),
            0,
            0,
            &[put("b"), delete("x"), put("a")],
            SQLITE,
        )
        .unwrap();
        let ids: Vec<String> = plan
            .into_results()
            .into_iter()
            .map(|r| r.version.id)
            .collect();
        assert_eq!(ids, ["b", "x", "a"]);
    }
}
