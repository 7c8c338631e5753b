//! Several types of a shard in one key range (`scan_types`, what a mixed
//! part reads) on DynamoDB: pages of at most 1 MB go on where the last one
//! stopped, in type order, with only the versions current at the snapshot.
//! One-type scans page the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_export::aws::AwsAdapters;
use bulk_export::clock::SystemClock;
use bulk_export::ports::{ResourceStore, ShardScan, TypesScan, WriteOp};
use serde_json::json;

use super::moto::fresh_stack;

fn upsert(resource_type: &str, id: &str, div: &str) -> WriteOp {
    WriteOp::Upsert {
        resource_type: resource_type.into(),
        id: id.into(),
        resource: json!({
            "resourceType": resource_type,
            "id": id,
            "text": {"status": "generated", "div": div},
        })
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_scan_pages_through_a_shard_as_of_its_snapshot() {
    let (sdk, names) = fresh_stack().await;
    // One shard: every version sits in one partition, several pages of it.
    let store = AwsAdapters::new(&sdk, &names, 1, Arc::new(SystemClock)).resources;
    let types: Vec<String> = ["Condition", "Encounter", "Patient"]
        .map(String::from)
        .to_vec();
    // Bodies are stored compressed: the padding must not compress.
    let padding = incompressible(150_000);
    let mut ops = Vec::new();
    for i in 0..12 {
        for t in &types {
            ops.push(upsert(t, &format!("{t}-{i}"), &padding));
        }
    }
    store.load(ops).await.unwrap();
    // A second version of one and a deletion of another, then the
    // snapshot, then a write after it.
    store
        .write(vec![upsert("Condition", "Condition-0", "second")])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::Delete {
            resource_type: "Encounter".into(),
            id: "Encounter-1".into(),
        }])
        .await
        .unwrap();
    let as_of = store.snapshot().await.unwrap().timestamp_micros();
    store
        .write(vec![upsert("Encounter", "Encounter-99", "late")])
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let scan = TypesScan {
            types: &types,
            shard: 0,
            after,
            as_of,
        };
        let page = store.scan_types(scan).await.unwrap();
        pages += 1;
        for item in &page.items {
            assert!(page.body(item).unwrap().contains(page.id(item)));
            let t = &types[item.type_index as usize];
            seen.push((t.clone(), page.id(item).to_string(), item.version));
        }
        after = page.items.last().map(|v| (v.type_index, v.last_updated));
        if !page.more {
            break;
        }
        assert!(pages < 100, "the scan does not end");
    }
    // 36 bodies of 150 KB (about 125 KB compressed): 4.5 MB, in pages of
    // at most 1 MB. (How an item's
    // size counts differs: DynamoDB Local makes 5 pages, moto at least 6.)
    assert!(pages >= 4, "{pages} pages");
    let in_type_order = seen.windows(2).all(|w| w[0].0 <= w[1].0);
    assert!(in_type_order, "{seen:?}");
    let ids: Vec<(String, String)> = seen
        .iter()
        .map(|(t, i, _)| (t.clone(), i.clone()))
        .collect();
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no version twice");
    let mut expected = BTreeSet::new();
    for i in 0..12 {
        for t in &types {
            expected.insert((t.clone(), format!("{t}-{i}")));
        }
    }
    expected.remove(&("Encounter".to_string(), "Encounter-1".to_string()));
    assert_eq!(unique, expected);
    // The current version of the updated one, and it comes last of its type
    // (versions are in `lastUpdated` order within a type).
    let conditions: Vec<_> = seen.iter().filter(|s| s.0 == "Condition").collect();
    assert_eq!(conditions.last().unwrap().1, "Condition-0");
    assert_eq!(conditions.last().unwrap().2, 2);

    // A one-type scan pages the same way: a page short of the limit (1 MB
    // reached) is not the end.
    let mut ids = BTreeSet::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = store
            .scan_shard(ShardScan {
                resource_type: "Patient",
                shard: 0,
                after,
                until: None,
                as_of,
                include_deleted: false,
                limit: 1000,
            })
            .await
            .unwrap();
        pages += 1;
        ids.extend(page.ids().map(str::to_string));
        after = page.items.last().map(|v| v.last_updated);
        if !page.more {
            break;
        }
    }
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(ids.len(), 12);

    // A range of the last two types only starts at the first of them.
    let tail = &types[1..];
    let page = store
        .scan_types(TypesScan {
            types: tail,
            shard: 0,
            after: None,
            as_of,
        })
        .await
        .unwrap();
    assert_eq!(page.items[0].type_index, 0);
    assert!(page.id(&page.items[0]).starts_with("Encounter-"));
}

/// DynamoDB's 1 MB page counts every attribute of an item, so a version
/// item stores nothing its keys already say: the id is in `rid`, the
/// `lastUpdated` in `sk`, and only a tombstone says it is deleted. A
/// version with a predecessor names its `lastUpdated` (`plu`) and whether
/// it was live (`plv`, for the audit trail's Add or Edit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_item_stores_nothing_its_keys_already_say() {
    let (sdk, names) = fresh_stack().await;
    let store = AwsAdapters::new(&sdk, &names, 1, Arc::new(SystemClock)).resources;
    store
        .load(vec![upsert("Patient", "p1", "first")])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::Delete {
            resource_type: "Patient".into(),
            id: "p1".into(),
        }])
        .await
        .unwrap();
    let as_of = store.snapshot().await.unwrap().timestamp_micros();

    let items = aws_sdk_dynamodb::Client::new(&sdk)
        .query()
        .table_name(&names.resources_table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S("V#000".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    fn attributes(item: &HashMap<String, AttributeValue>) -> BTreeSet<&str> {
        item.keys().map(String::as_str).collect()
    }
    assert_eq!(items.len(), 2, "{items:?}");
    let (live, tombstone) = (&items[0], &items[1]);
    assert_eq!(
        attributes(live),
        BTreeSet::from(["pk", "sk", "rid", "ver", "bz", "by", "sup"])
    );
    assert_eq!(
        attributes(tombstone),
        BTreeSet::from(["pk", "sk", "rid", "ver", "del", "by", "plu", "plv"])
    );
    assert_eq!(
        tombstone["plv"],
        AttributeValue::Bool(true),
        "it followed a live version"
    );

    // Read back, the fields come from the keys.
    let page = store
        .scan_shard(ShardScan {
            resource_type: "Patient",
            shard: 0,
            after: None,
            until: None,
            as_of,
            include_deleted: true,
            limit: 10,
        })
        .await
        .unwrap();
    let read: Vec<_> = page
        .items
        .iter()
        .map(|v| (page.id(v), v.version, v.deleted))
        .collect();
    assert_eq!(read, [("p1", 2, true)]);
    let sk = |item: &HashMap<String, AttributeValue>| match &item["sk"] {
        AttributeValue::S(sk) => sk.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sk(tombstone),
        format!("Patient#{:017}", page.items[0].last_updated)
    );
    // The live version, from the history index, as of before the deletion.
    let first_at: i64 = sk(live)["Patient#".len()..].parse().unwrap();
    let first = store.read_as_of("Patient", "p1", first_at).await.unwrap();
    let first = first.expect("the first version");
    assert_eq!(
        (first.id.as_str(), first.version, first.deleted),
        ("p1", 1, false)
    );
    assert_eq!(first.last_updated, first_at);
}

/// Printable text that zstd cannot shrink much (a xorshift stream over 90
/// characters, no quote or backslash).
fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = b'#' + (x % 90) as u8;
            if c == b'\\' {
                '!'
            } else {
                c as char
            }
        })
        .collect()
}
