//! Bulk Data exports end to end over HTTP against the local service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulk_export::domain::resource::compartment_patients;
use bulk_export::sample::{generate, SampleConfig};
use bulk_export_local::loader::load_values;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::faults::{ChunkHook, Crashes, Gate, HoldAfter, Intercepted};
use crate::helpers::*;

const SYNTHEA_GROUP: &str = "d9f31445-f448-48c0-af57-295c005e07df";

/// An artifact store whose chunk uploads wait at `gate`.
fn gated(gate: &Arc<Gate>) -> Option<bulk_export_local::ArtifactWrapper> {
    let g = gate.clone();
    Some(Box::new(move |inner| {
        Arc::new(Intercepted { inner, hook: g })
    }))
}

fn by_type(resources: impl IntoIterator<Item = Value>) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in resources {
        out.entry(r["resourceType"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    out
}

/// Exported resources equal the loaded ones (ignoring `meta`), type by type.
fn assert_same_content(
    exported: &BTreeMap<String, Vec<Value>>,
    expected: &BTreeMap<String, Vec<Value>>,
) {
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (t, want) in expected {
        let got = &exported[t];
        assert_eq!(got.len(), want.len(), "{t} count");
        let index = |rs: &Vec<Value>| -> BTreeMap<String, Value> {
            rs.iter()
                .map(|r| (r["id"].as_str().unwrap().to_string(), without_meta(r)))
                .collect()
        };
        let (got_i, want_i) = (index(got), index(want));
        assert_eq!(got_i.len(), got.len(), "{t}: no resource exported twice");
        assert!(
            got_i == want_i,
            "{t}: exported content differs from the store"
        );
    }
}

async fn synthea_app() -> (TestApp, Vec<Value>) {
    let app = spawn_app(Options::default()).await;
    let data = synthea();
    load_values(&app.running.services, data.clone().into_iter())
        .await
        .unwrap();
    (app, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_export_of_the_synthea_sample_equals_the_store() {
    let (app, data) = synthea_app().await;
    assert_eq!(data.len(), 38_473);
    let status = app
        .start_export(app.kickoff_get("$export?_outputFormat=application%2Ffhir%2Bndjson"))
        .await;
    let manifest = app.wait_manifest(&status).await;
    assert_eq!(
        manifest["request"],
        app.url("$export?_outputFormat=application%2Ffhir%2Bndjson")
    );
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["deleted"], json!([]));
    assert_eq!(manifest["error"], json!([]));
    for entry in manifest["output"].as_array().unwrap() {
        assert!(entry["url"].as_str().unwrap().starts_with(app.base()));
    }
    let exported = app.outputs(&manifest, "output").await;
    assert_same_content(&exported, &by_type(data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_patient_exports_hold_the_patients_compartments() {
    let (app, data) = synthea_app().await;
    let group = data.iter().find(|r| r["resourceType"] == "Group").unwrap();
    let members: BTreeSet<String> = group["member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["entity"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_string()
        })
        .collect();
    assert_eq!(members.len(), 100);
    let in_compartment = |r: &Value, of: &BTreeSet<String>| {
        let t = r["resourceType"].as_str().unwrap();
        if t == "Patient" {
            return of.contains(r["id"].as_str().unwrap());
        }
        compartment_patients(t, r).iter().any(|p| of.contains(p))
    };
    let expected = by_type(data.iter().filter(|r| in_compartment(r, &members)).cloned());
    assert!(expected.contains_key("Observation") && !expected.contains_key("Organization"));

    let status = app
        .start_export(app.kickoff_get(&format!("Group/{SYNTHEA_GROUP}/$export")))
        .await;
    let manifest = app.wait_manifest(&status).await;
    assert_same_content(&app.outputs(&manifest, "output").await, &expected);

    let status = app.start_export(app.kickoff_get("Patient/$export")).await;
    let manifest = app.wait_manifest(&status).await;
    assert_same_content(&app.outputs(&manifest, "output").await, &expected);

    // POST with `patient`: only those patients' compartments.
    let two: BTreeSet<String> = members.iter().take(2).cloned().collect();
    let params: Vec<Value> = two
        .iter()
        .map(
            |p| json!({"name": "patient", "valueReference": {"reference": format!("Patient/{p}")}}),
        )
        .chain([json!({"name": "_type", "valueString": "Patient,Condition,Encounter"})])
        .collect();
    let status = app
        .start_export(app.kickoff_post(&format!("Group/{SYNTHEA_GROUP}/$export"), json!(params)))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let expected: BTreeMap<String, Vec<Value>> = by_type(
        data.iter()
            .filter(|r| {
                ["Patient", "Condition", "Encounter"].contains(&r["resourceType"].as_str().unwrap())
            })
            .filter(|r| in_compartment(r, &two))
            .cloned(),
    );
    assert_same_content(&app.outputs(&manifest, "output").await, &expected);
}

fn sample(patients: usize) -> Vec<Value> {
    generate(SampleConfig { patients, seed: 42 }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_and_elements_select_what_is_exported() {
    let app = spawn_app(Options {
        sample_patients: 10,
        ..Default::default()
    })
    .await;
    let data = sample(10);
    let status = app
        .start_export(app.kickoff_get(
            "$export?_type=Patient,Observation&_elements=gender,Observation.valueQuantity",
        ))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let out = app.outputs(&manifest, "output").await;
    assert_eq!(out.keys().collect::<Vec<_>>(), ["Observation", "Patient"]);
    let expected = by_type(data);
    assert_eq!(out["Patient"].len(), expected["Patient"].len());
    assert_eq!(out["Observation"].len(), expected["Observation"].len());
    for p in &out["Patient"] {
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(
            keys.is_subset(&BTreeSet::from(["resourceType", "id", "meta", "gender"])),
            "{keys:?}"
        );
        let tags = p["meta"]["tag"].as_array().unwrap();
        assert!(tags.iter().any(|t| t["code"] == "SUBSETTED"));
    }
    for o in &out["Observation"] {
        assert!(o.get("subject").is_none(), "subject was not requested");
        assert!(
            o.get("status").is_some() && o.get("code").is_some(),
            "mandatory elements are kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_exports_changes_and_lists_deletions() {
    let app = spawn_app(Options {
        sample_patients: 8,
        ..Default::default()
    })
    .await;
    let data = by_type(sample(8));
    let first = app
        .wait_manifest(&app.start_export(app.kickoff_get("$export")).await)
        .await;
    let since = first["transactionTime"].as_str().unwrap().to_string();

    let mut changed = data["Observation"][0].clone();
    changed["status"] = json!("amended");
    app.put(&changed).await;
    let deleted = [
        data["Condition"][0]["id"].as_str().unwrap(),
        data["Encounter"][1]["id"].as_str().unwrap(),
    ];
    app.delete("Condition", deleted[0]).await;
    app.delete("Encounter", deleted[1]).await;
    let created = json!({"resourceType": "Patient", "id": "new-patient", "gender": "other"});
    app.put(&created).await;

    let since_q = since.replace(':', "%3A");
    let status = app
        .start_export(app.kickoff_get(&format!("$export?_since={since_q}")))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let out = app.outputs(&manifest, "output").await;
    assert_eq!(out.keys().collect::<Vec<_>>(), ["Observation", "Patient"]);
    assert_eq!(ids(&out["Observation"]), [changed["id"].as_str().unwrap()]);
    assert_eq!(out["Observation"][0]["status"], "amended");
    assert_eq!(ids(&out["Patient"]), ["new-patient"]);

    let gone = app.outputs(&manifest, "deleted").await;
    let bundles = &gone["Bundle"];
    let mut urls: Vec<String> = bundles
        .iter()
        .flat_map(|b| {
            assert_eq!(b["type"], "transaction");
            b["entry"].as_array().unwrap().clone()
        })
        .map(|e| {
            assert_eq!(e["request"]["method"], "DELETE");
            e["request"]["url"].as_str().unwrap().to_string()
        })
        .collect();
    urls.sort();
    assert_eq!(
        urls,
        [
            format!("Condition/{}", deleted[0]),
            format!("Encounter/{}", deleted[1])
        ]
    );

    // A Patient-level _since export sees the same changes in the compartment.
    let status = app
        .start_export(app.kickoff_get(&format!("Patient/$export?_since={since_q}")))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let out = app.outputs(&manifest, "output").await;
    assert_eq!(ids(&out["Observation"]), [changed["id"].as_str().unwrap()]);
    assert_eq!(app.outputs(&manifest, "deleted").await["Bundle"].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_parameters_and_lenient_handling() {
    let app = spawn_app(Options {
        sample_patients: 5,
        ..Default::default()
    })
    .await;
    let params = json!([
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "ndjson"},
        {"name": "_typeFilter", "valueString": "Patient?foo=1"}
    ]);
    // Without lenient handling a _typeFilter on an unknown search parameter
    // is refused...
    let resp = app
        .kickoff_post("$export", params.clone())
        .send()
        .await
        .unwrap();
    let oo = expect_outcome(resp, StatusCode::BAD_REQUEST).await;
    let refusal = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        refusal.contains("_typeFilter") && refusal.contains("'foo'"),
        "{refusal}"
    );
    // A refusal does not claim the filter was applied.
    assert!(!refusal.contains("applied"), "{refusal}");
    // ...with it, the export runs without that clause (so unfiltered here)
    // and the manifest's error file says why.
    let req = app
        .kickoff_post("$export", params)
        .header("prefer", "respond-async, handling=lenient");
    let manifest = app.wait_manifest(&app.start_export(req).await).await;
    assert_eq!(app.outputs(&manifest, "output").await["Patient"].len(), 5);
    let errors = app.outputs(&manifest, "error").await;
    let oo = &errors["OperationOutcome"][0];
    let note = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        note.contains("_typeFilter") && note.contains("applied without it"),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_split_at_the_configured_size() {
    let app = spawn_app(Options {
        sample_patients: 6,
        tune: Box::new(|c| {
            c.engine.max_resources_per_file = 7;
            c.engine.page_size = 3;
            c.engine.min_chunk_bytes = 2000;
        }),
        ..Default::default()
    })
    .await;
    let expected = by_type(sample(6));
    let manifest = app
        .wait_manifest(&app.start_export(app.kickoff_get("$export")).await)
        .await;
    for entry in manifest["output"].as_array().unwrap() {
        assert!(entry["count"].as_u64().unwrap() <= 7);
    }
    let obs_files = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Observation")
        .count();
    assert!(obs_files >= expected["Observation"].len() / 7);
    assert_same_content(&app.outputs(&manifest, "output").await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_status_then_cancel_leaves_nothing() {
    let gate = Gate::new();
    let app = spawn_app(Options {
        sample_patients: 10,
        wrap_artifacts: gated(&gate),
        tune: Box::new(|c| {
            c.engine.page_size = 10;
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Observation"))
        .await;
    let job = job_id_of(&status);
    gate.reached().await;
    let resp = app.client.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-progress"], "started");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));

    let resp = app.client.delete(&status).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    gate.open();
    expect_outcome(
        app.client.get(&status).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_outcome(
        app.client.delete(&status).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Workers notice at their next page; wait for the queue to drain.
    for _ in 0..200 {
        if app.running.queue.len().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.running.queue.len().await.unwrap(),
        0,
        "the cancelled job's work drained"
    );
    assert_eq!(
        app.leftovers(&job).await,
        Vec::<String>::new(),
        "no files, no open uploads"
    );
    let file = app.url(&format!(
        "$export-jobs/{job}/files/Observation-0000-000.ndjson"
    ));
    expect_outcome(
        app.client.get(&file).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_expire_when_the_clock_passes_retention() {
    let app = spawn_app(Options {
        sample_patients: 3,
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    let job = job_id_of(&status);
    let manifest = app.wait_manifest(&status).await;
    let url = manifest["output"][0]["url"].as_str().unwrap().to_string();
    let resp = app.client.get(&url).send().await.unwrap();
    let signed = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(signed.contains("expires=") && signed.contains("signature="));
    // A tampered link is refused.
    let tampered = signed.replace("signature=", "signature=00");
    expect_outcome(
        app.client.get(&tampered).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    // Presigned links live minutes: 10 minutes on, this one is dead.
    app.clock.advance(chrono::Duration::minutes(10));
    expect_outcome(
        app.client.get(&signed).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    // Still inside retention, status still answers.
    assert_eq!(
        app.client.get(&status).send().await.unwrap().status(),
        StatusCode::OK
    );

    app.clock.advance(chrono::Duration::days(7));
    expect_outcome(
        app.client.get(&status).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_outcome(
        app.client.get(&url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(
        !app.leftovers(&job).await.is_empty(),
        "files wait for the sweeper"
    );
    assert_eq!(app.running.services.sweeper.sweep().await.unwrap(), 1);
    assert_eq!(app.leftovers(&job).await, Vec::<String>::new());
    assert!(app
        .running
        .services
        .ports
        .jobs
        .get_job(&job)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_sees_a_job() {
    let app = spawn_app(Options {
        sample_patients: 3,
        header_subject: true,
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(
            app.kickoff_get("$export?_type=Patient")
                .header("x-test-subject", "alice"),
        )
        .await;
    let manifest = app.wait_manifest(&status).await; // alice is the default subject
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let as_bob = |r: reqwest::RequestBuilder| r.header("x-test-subject", "bob");
    let bob_status = as_bob(app.client.get(&status)).send().await.unwrap();
    let unknown = app
        .client
        .get(app.url("$export-jobs/00000000-0000-0000-0000-000000000000"))
        .send()
        .await
        .unwrap();
    let (a, b) = (
        expect_outcome(bob_status, StatusCode::NOT_FOUND).await,
        expect_outcome(unknown, StatusCode::NOT_FOUND).await,
    );
    // Same shape as an unknown job: nothing reveals that the job exists.
    assert_eq!(a["issue"][0]["code"], b["issue"][0]["code"]);
    expect_outcome(
        as_bob(app.client.get(url)).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_outcome(
        as_bob(app.client.delete(&status)).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Alice's job survived Bob's attempts.
    assert_eq!(
        app.client.get(&status).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(app.download(url).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_killed_mid_way_resumes_without_duplicates_or_loss() {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let app = spawn_app(Options {
        sample_patients: 12,
        wrap_artifacts: Some(Box::new(move |inner| {
            let hook = Crashes {
                calls: AtomicUsize::new(0),
                fail_before: vec![3, 11],
                fail_after: vec![6, 15],
                failures: f,
            };
            Arc::new(Intercepted { inner, hook })
        })),
        tune: Box::new(|c| {
            c.engine.page_size = 7;
            c.engine.min_chunk_bytes = 1;
            c.visibility_timeout = Duration::from_millis(500);
        }),
        ..Default::default()
    })
    .await;
    let expected = by_type(sample(12));
    let status = app
        .start_export(app.kickoff_get("$export?_type=Observation,Encounter"))
        .await;
    let manifest = app.wait_manifest(&status).await;
    assert_eq!(
        failures.load(Ordering::SeqCst),
        4,
        "every injected crash happened"
    );
    let out = app.outputs(&manifest, "output").await;
    let want: BTreeMap<String, Vec<Value>> = expected
        .into_iter()
        .filter(|(t, _)| t == "Observation" || t == "Encounter")
        .collect();
    assert_same_content(&out, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_out_of_time_continue_in_new_messages() {
    let app = spawn_app(Options {
        sample_patients: 6,
        tune: Box::new(|c| {
            c.engine.page_size = 5;
            c.engine.min_chunk_bytes = 1;
            c.invocation_budget = Duration::from_millis(1);
        }),
        ..Default::default()
    })
    .await;
    let expected = by_type(sample(6));
    let manifest = app
        .wait_manifest(&app.start_export(app.kickoff_get("$export")).await)
        .await;
    assert_same_content(&app.outputs(&manifest, "output").await, &expected);
}

/// A part that pauses at its deadline continues its open file (its buffer
/// rides in the checkpoint or a spill), so the files are the same however
/// often the parts paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_of_an_export_do_not_depend_on_pauses() {
    let mut manifests = Vec::new();
    for budget in [Duration::from_secs(300), Duration::ZERO] {
        let app = spawn_app(Options {
            sample_patients: 8,
            tune: Box::new(move |c| {
                c.engine.page_size = 5;
                c.engine.max_resources_per_file = 13;
                // Buffers too large to carry and too small to upload: a
                // pause must spill them, not end the file.
                c.engine.carry_limit_bytes = 256;
                c.engine.min_chunk_bytes = 64 << 10;
                c.invocation_budget = budget;
            }),
            ..Default::default()
        })
        .await;
        let status = app.start_export(app.kickoff_get("$export")).await;
        let manifest = app.wait_manifest(&status).await;
        assert_same_content(&app.outputs(&manifest, "output").await, &by_type(sample(8)));
        let files: Vec<(String, u64)> = manifest["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let url = f["url"].as_str().unwrap();
                let name = url.rsplit('/').next().unwrap().to_string();
                (name, f["count"].as_u64().unwrap())
            })
            .collect();
        // Spills and unlisted uploads are gone once the export completed;
        // each file of the manifest has its gzip twin.
        let mut left = app.leftovers(&job_id_of(&status)).await;
        for (name, _) in &files {
            for key in [format!("/{name}"), format!("/{name}.gz")] {
                assert!(left.iter().any(|k| k.ends_with(&key)), "{key} is kept");
            }
        }
        left.retain(|k| {
            !files.iter().any(|(name, _)| {
                k.ends_with(&format!("/{name}")) || k.ends_with(&format!("/{name}.gz"))
            })
        });
        assert_eq!(
            left,
            Vec::<String>::new(),
            "only the manifest's files and their twins remain"
        );
        manifests.push(files);
    }
    assert!(manifests[0].len() > 10, "{:?}", manifests[0]);
    assert_eq!(
        manifests[0], manifests[1],
        "paused parts wrote the same files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_an_export_do_not_leak_into_it() {
    let gate = Gate::new();
    let app = spawn_app(Options {
        sample_patients: 20,
        wrap_artifacts: gated(&gate),
        tune: Box::new(|c| {
            c.engine.page_size = 1;
            c.engine.min_chunk_bytes = 1;
            c.workers = 1;
        }),
        ..Default::default()
    })
    .await;
    let patients = by_type(sample(20)).remove("Patient").unwrap();
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    gate.reached().await; // the first page (one patient) is read; the rest not yet
                          // Exports read in lastUpdated order: the last-written patients come last.
    let (updated, deleted) = (&patients[patients.len() - 1], &patients[patients.len() - 2]);
    let mut changed = updated.clone();
    changed["gender"] = json!("unknown");
    app.put(&changed).await;
    app.delete("Patient", deleted["id"].as_str().unwrap()).await;
    app.put(&json!({"resourceType": "Patient", "id": "born-during-export"}))
        .await;
    gate.open();

    let manifest = app.wait_manifest(&status).await;
    let out = app.outputs(&manifest, "output").await;
    let mut want = BTreeMap::new();
    want.insert("Patient".to_string(), patients.clone());
    assert_same_content(&out, &want);
    let exported_update = out["Patient"]
        .iter()
        .find(|p| p["id"] == updated["id"])
        .unwrap();
    assert_eq!(exported_update["meta"]["versionId"], "1");
    assert_eq!(exported_update["gender"], updated["gender"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_answers_500_with_an_outcome() {
    let app = spawn_app(Options {
        sample_patients: 2,
        wrap_artifacts: Some(Box::new(|inner| {
            let hook = Crashes {
                calls: AtomicUsize::new(0),
                fail_before: (1..=1000).collect(),
                fail_after: vec![],
                failures: Arc::new(AtomicUsize::new(0)),
            };
            Arc::new(Intercepted { inner, hook })
        })),
        tune: Box::new(|c| {
            c.engine.min_chunk_bytes = 1;
            c.visibility_timeout = Duration::from_millis(300);
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    let job = job_id_of(&status);
    let oo = expect_outcome(
        app.wait_until_done(&status).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    let says = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        says.contains("injected crash") && says.contains("after 5 attempts"),
        "the outcome says why: {says}"
    );
    assert!(!says.contains("chunk call"), "no backend text: {says}");
    // A failed job keeps nothing half-written around once it is swept.
    app.clock.advance(chrono::Duration::days(8));
    app.running.services.sweeper.sweep().await.unwrap();
    assert_eq!(app.leftovers(&job).await, Vec::<String>::new());
}

/// Fails every chunk upload the way S3 answers a role without access.
struct Denied {
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl ChunkHook for Denied {
    async fn before(&self) -> bulk_export::ports::PortResult<usize> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(bulk_export::ports::PortError::permanent(
            "the service was denied access to its storage",
            "AccessDenied: s3:PutObject on arn:aws:s3:::secret-bucket (injected)",
        ))
    }
    async fn after(&self, _n: usize) -> bulk_export::ports::PortResult<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_the_job_at_its_first_handling() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = spawn_app(Options {
        sample_patients: 2,
        wrap_artifacts: Some(Box::new(move |inner| {
            Arc::new(Intercepted {
                inner,
                hook: Denied { calls: c },
            })
        })),
        tune: Box::new(|c| c.engine.min_chunk_bytes = 1),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    let oo = expect_outcome(
        app.wait_until_done(&status).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    let says = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(says.contains("denied access"), "{says}");
    assert!(
        !says.contains("arn:aws") && !says.contains("attempts"),
        "{says}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry of a permanent error"
    );
}

/// A client at its limit of exports in progress gets 429 with Retry-After
/// and an OperationOutcome; other clients are not affected, and the client
/// may start again once one of its exports ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_of_exports_in_progress_gets_429() {
    let gate = Gate::new();
    let app = spawn_app(Options {
        sample_patients: 3,
        header_subject: true,
        wrap_artifacts: gated(&gate),
        tune: Box::new(|c| {
            c.engine.max_active_exports_per_client = 2;
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let as_ = |who: &str, r: reqwest::RequestBuilder| r.header("x-test-subject", who.to_string());
    let kickoff = |who: &str| {
        as_(who, app.client.get(app.url("$export?_type=Patient")))
            .header("accept", "application/fhir+json")
            .header("prefer", "respond-async")
            .send()
    };
    let first = kickoff("alice").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(
        kickoff("alice").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let third = kickoff("alice").await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    let oo = expect_outcome(third, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("limit is 2"),
        "{oo}"
    );
    // Another client has its own limit.
    assert_eq!(kickoff("bob").await.unwrap().status(), StatusCode::ACCEPTED);
    // Once one of Alice's exports ends (here: cancelled), she may start again.
    let status = first.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let cancel = as_("alice", app.client.delete(&status))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    assert_eq!(
        kickoff("alice").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    gate.open();
}

/// Twenty exports at once from five clients: every one completes, each
/// exactly (its files hold every resource of its types once), and each
/// client sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_exports_from_five_clients_all_complete_exactly() {
    let app = spawn_app(Options {
        sample_patients: 6,
        header_subject: true,
        tune: Box::new(|c| {
            c.engine.page_size = 20;
            c.engine.max_resources_per_file = 25;
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let expected = by_type(sample(6));
    let types = ["Patient", "Observation", "Encounter", "Condition"];
    let app = &app;
    let exports = (0..20).map(|n| async move {
        let who = format!("client-{}", n % 5);
        let t = types[n % types.len()];
        let resp = app
            .kickoff_get(&format!("$export?_type={t}"))
            .header("x-test-subject", &who)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "export {n}");
        let status = resp.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let manifest: Value = loop {
            let r = app
                .client
                .get(&status)
                .header("x-test-subject", &who)
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::OK {
                break r.json().await.unwrap();
            }
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            assert!(
                std::time::Instant::now() < deadline,
                "export {n} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Another client cannot see it.
        let other = app
            .client
            .get(&status)
            .header("x-test-subject", "intruder")
            .send()
            .await;
        assert_eq!(other.unwrap().status(), StatusCode::NOT_FOUND);
        let mut ids = Vec::new();
        for file in manifest["output"].as_array().unwrap() {
            let r = app
                .client
                .get(file["url"].as_str().unwrap())
                .header("x-test-subject", &who)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            let signed = r.headers()["location"].to_str().unwrap().to_string();
            let text = app
                .client
                .get(&signed)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(text.lines().count() as u64, file["count"].as_u64().unwrap());
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["resourceType"], t);
                ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
        (t, ids)
    });
    for (t, mut ids) in futures::future::join_all(exports).await {
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(n, ids.len(), "{t}: no resource twice");
        let mut want: Vec<String> = expected[t]
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        want.sort();
        assert_eq!(ids, want, "{t}: every resource once");
    }
}

/// `patient` names that are not in the export (no such patient, or not a
/// member of the Group) are accepted: the others are exported, and each
/// left-out one is an OperationOutcome in the manifest's `error`, worded
/// the same whichever the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_non_member_patients_are_reported_not_refused() {
    let app = spawn_app(Options {
        sample_patients: 4,
        ..Default::default()
    })
    .await;
    let patients = ids(&by_type(sample(4))["Patient"]);
    let group = app
        .put(
            &json!({"resourceType": "Group", "id": "two", "type": "person", "actual": true,
            "member": [{"entity": {"reference": format!("Patient/{}", patients[0])}},
                       {"entity": {"reference": format!("Patient/{}", patients[1])}}]}),
        )
        .await;
    assert_eq!(group["id"], "two");
    let named = |ids: &[&str]| -> Value {
        json!(ids
            .iter()
            .map(|p| json!({"name": "patient", "valueReference": {"reference": format!("Patient/{p}")}}))
            .chain([json!({"name": "_type", "valueString": "Patient"})])
            .collect::<Vec<_>>())
    };
    let diagnostics = |errors: &BTreeMap<String, Vec<Value>>| -> Vec<String> {
        errors
            .get("OperationOutcome")
            .into_iter()
            .flatten()
            .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap().to_string())
            .collect()
    };

    // Patient level: one real patient and one that does not exist.
    let body = named(&[&patients[0], "nobody"]);
    let manifest = app
        .wait_manifest(
            &app.start_export(app.kickoff_post("Patient/$export", body))
                .await,
        )
        .await;
    let out = app.outputs(&manifest, "output").await;
    assert_eq!(ids(&out["Patient"]), [patients[0].clone()]);
    let said = diagnostics(&app.outputs(&manifest, "error").await);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("Patient/nobody"), "{}", said[0]);

    // Group level: a member, a patient that exists but is not a member, and
    // one that does not exist: the last two get the same words.
    let body = named(&[&patients[1], &patients[2], "ghost"]);
    let manifest = app
        .wait_manifest(
            &app.start_export(app.kickoff_post("Group/two/$export", body))
                .await,
        )
        .await;
    let out = app.outputs(&manifest, "output").await;
    assert_eq!(ids(&out["Patient"]), [patients[1].clone()]);
    let said = diagnostics(&app.outputs(&manifest, "error").await);
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(
        said[0].replace(&patients[2], "X"),
        said[1].replace("ghost", "X"),
        "an existing non-member and a missing patient are told apart"
    );

    // Nobody left: an export with no output, not one of every patient.
    let body = named(&["ghost"]);
    let manifest = app
        .wait_manifest(
            &app.start_export(app.kickoff_post("Group/two/$export", body))
                .await,
        )
        .await;
    assert_eq!(manifest["output"], json!([]));
    assert_eq!(diagnostics(&app.outputs(&manifest, "error").await).len(), 1);
}

/// A status request for an export in progress is held open and answered
/// with the manifest as soon as the export completes; one that is still
/// running when the hold ends gets its 202, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_request_is_held_until_the_export_completes() {
    let gate = Gate::new();
    let app = spawn_app(Options {
        sample_patients: 5,
        wrap_artifacts: gated(&gate),
        tune: Box::new(|c| {
            // A hold far longer than the export, so a busy machine cannot
            // make the first poll miss it.
            c.engine.status_wait = Duration::from_secs(60);
            // Never re-read on a timer: only the store's job update can
            // wake the held request (a timer this long would answer 202 at
            // once).
            c.engine.status_wait_poll = Duration::from_secs(3600);
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    gate.reached().await;
    // The export is stopped at the gate; the poll is held while it is.
    let poll = tokio::spawn({
        let (client, status) = (app.client.clone(), status.clone());
        async move { client.get(&status).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "answered while the export was stopped");
    gate.open();
    let resp = poll.await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the first poll gets the manifest"
    );
    let manifest: Value = resp.json().await.unwrap();
    assert_eq!(app.outputs(&manifest, "output").await["Patient"].len(), 5);

    // A hold that ends first: 202 with Retry-After, after the hold.
    let gate = Gate::new();
    let app = spawn_app(Options {
        sample_patients: 5,
        wrap_artifacts: gated(&gate),
        tune: Box::new(|c| {
            c.engine.status_wait = Duration::from_millis(400);
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    gate.reached().await;
    let t = std::time::Instant::now();
    let resp = app.client.get(&status).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
    gate.open();
    app.wait_manifest(&status).await;
}

/// `includeAssociatedData`: the Provenance of exported resources rides
/// along (all of it, or per resource the latest), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_associated_data_adds_the_provenance_of_exported_resources() {
    let app = spawn_app(Options {
        sample_patients: 3,
        ..Default::default()
    })
    .await;
    let data = by_type(sample(3));
    let obs = &data["Observation"][0];
    let obs_id = obs["id"].as_str().unwrap();
    let obs_patient = obs["subject"]["reference"].as_str().unwrap().to_string();
    let org_id = data["Organization"][0]["id"].as_str().unwrap();
    // Without any Provenance the export still succeeds.
    let manifest = app
        .wait_manifest(
            &app.start_export(app.kickoff_get(
                "$export?_type=Patient&includeAssociatedData=RelevantProvenanceResources",
            ))
            .await,
        )
        .await;
    assert!(!app
        .outputs(&manifest, "output")
        .await
        .contains_key("Provenance"));

    let provenance = |id: &str, target: &str, recorded: &str| {
        json!({"resourceType": "Provenance", "id": id, "recorded": recorded,
            "target": [{"reference": target}],
            "agent": [{"who": {"reference": format!("Organization/{org_id}")}}]})
    };
    for p in [
        provenance(
            "obs-old",
            &format!("Observation/{obs_id}"),
            "2020-01-01T00:00:00Z",
        ),
        provenance(
            "obs-new",
            &format!("Observation/{obs_id}"),
            "2021-01-01T00:00:00+02:00",
        ),
        provenance("patient", &obs_patient, "2020-06-01T00:00:00Z"),
        provenance(
            "org",
            &format!("Organization/{org_id}"),
            "2022-01-01T00:00:00Z",
        ),
        provenance(
            "gone",
            "Observation/no-such-observation",
            "2023-01-01T00:00:00Z",
        ),
    ] {
        app.put(&p).await;
    }
    let provenance_of = |path: String| {
        let app = &app;
        async move {
            let manifest = app
                .wait_manifest(&app.start_export(app.kickoff_get(&path)).await)
                .await;
            app.outputs(&manifest, "output")
                .await
                .get("Provenance")
                .map(|p| ids(p))
                .unwrap_or_default()
        }
    };
    let types = "_type=Patient,Observation";
    assert_eq!(
        provenance_of(format!(
            "$export?{types}&includeAssociatedData=RelevantProvenanceResources"
        ))
        .await,
        ["obs-new", "obs-old", "patient"]
    );
    assert_eq!(
        provenance_of(format!(
            "$export?{types}&includeAssociatedData=LatestProvenanceResources"
        ))
        .await,
        ["obs-new", "patient"]
    );
    // Patient level, Observations only: the Patient's Provenance is not
    // about an exported resource.
    assert_eq!(
        provenance_of(
            "Patient/$export?_type=Observation&includeAssociatedData=RelevantProvenanceResources"
                .into()
        )
        .await,
        ["obs-new", "obs-old"]
    );
    // Provenance among the types as well: each one once.
    assert_eq!(
        provenance_of(
            "Patient/$export?_type=Observation,Provenance&includeAssociatedData=RelevantProvenanceResources".into()
        )
        .await,
        ["obs-new", "obs-old", "patient"]
    );

    // A custom value: refused, or under lenient handling a note.
    let req = app
        .kickoff_get("$export?includeAssociatedData=_mine,LatestProvenanceResources")
        .header("prefer", "respond-async, handling=lenient");
    let manifest = app.wait_manifest(&app.start_export(req).await).await;
    let errors = app.outputs(&manifest, "error").await;
    assert!(errors["OperationOutcome"][0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("_mine"));
}

/// Job reuse: an identical kick-off by the same client gets its export in
/// progress or completed within the window; `Cache-Control: no-cache`,
/// other parameters, another client or an older export get a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_kickoff_reuses_the_clients_recent_export() {
    let app = spawn_app(Options {
        sample_patients: 3,
        header_subject: true,
        tune: Box::new(|c| c.engine.reuse_window = Duration::from_secs(600)),
        ..Default::default()
    })
    .await;
    let kickoff = |path: &str, who: &str, no_cache: bool| {
        let mut req = app.kickoff_get(path).header("x-test-subject", who);
        if no_cache {
            req = req.header("cache-control", "no-cache");
        }
        app.start_export(req)
    };
    let first = kickoff("$export?_type=Patient", "alice", false).await;
    assert_eq!(
        kickoff("$export?_type=Patient", "alice", false).await,
        first
    );
    // A parameter that does not change the export does not make another.
    assert_eq!(
        kickoff("$export?_type=Patient&_outputFormat=ndjson", "alice", false).await,
        first
    );
    let bobs = kickoff("$export?_type=Patient", "bob", false).await;
    assert_ne!(bobs, first, "never another client's export");
    let fresh = kickoff("$export?_type=Patient", "alice", true).await;
    assert_ne!(fresh, first, "no-cache starts a new export");
    let other = kickoff("$export?_type=Patient,Observation", "alice", false).await;
    assert!(other != first && other != fresh);

    // Completed: still reused within the window (the newest one), not after.
    // (No X-Test-Subject header is alice.)
    app.wait_manifest(&first).await;
    let manifest = app.wait_manifest(&fresh).await;
    assert_eq!(
        kickoff("$export?_type=Patient", "alice", false).await,
        fresh
    );
    assert_eq!(app.wait_manifest(&fresh).await, manifest);
    app.clock.advance(chrono::Duration::seconds(601));
    let later = kickoff("$export?_type=Patient", "alice", false).await;
    assert!(later != first && later != fresh, "older than the window");
}

/// `allowPartialManifests`: files written while the export is held mid-way
/// are listed on a 202; `next` links then lead through pages of at most
/// two files to the 200 that has none, every file on exactly one page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_manifests_list_files_before_the_export_completes() {
    let gate = Gate::new();
    let hold = gate.clone();
    let app = spawn_app(Options {
        sample_patients: 8,
        wrap_artifacts: Some(Box::new(move |inner| {
            Arc::new(Intercepted {
                inner,
                hook: HoldAfter::new(6, hold),
            })
        })),
        tune: Box::new(|c| {
            c.engine.page_size = 5;
            c.engine.max_resources_per_file = 5;
            c.engine.min_chunk_bytes = 1;
            c.engine.manifest_page_files = 2;
            // The hook holds every chunk upload, a gzip twin's too, and a
            // file is listed only once its twin is written.
            c.engine.gzip_files = false;
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(
            app.kickoff_get(
                "$export?_type=Patient,Observation,Encounter&allowPartialManifests=true",
            ),
        )
        .await;
    // Without the parameter a page is refused.
    let plain = app
        .start_export(app.kickoff_get("$export?_type=Patient"))
        .await;
    gate.reached().await;
    expect_outcome(
        app.client
            .get(format!("{plain}?page=1"))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;

    let mut listed: Vec<Value> = Vec::new();
    let mut page_url = status.clone();
    // Held mid-way: a 202 whose body lists the files already complete.
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let early = loop {
        assert!(std::time::Instant::now() < give_up, "no partial manifest");
        let resp = app.client.get(&page_url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert_eq!(resp.headers()["x-progress"], "started");
        let body = resp.bytes().await.unwrap();
        if !body.is_empty() {
            break serde_json::from_slice::<Value>(&body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let early_files = early["output"].as_array().unwrap().clone();
    assert!(!early_files.is_empty() && early_files.len() <= 2, "{early}");
    // They can be downloaded while the export still runs.
    for f in &early_files {
        assert!(!app.download(f["url"].as_str().unwrap()).await.is_empty());
    }
    listed.extend(early_files);
    page_url = early["link"][0]["url"].as_str().unwrap().to_string();
    gate.open();
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "the export did not finish"
        );
        let resp = app.client.get(&page_url).send().await.unwrap();
        let code = resp.status();
        let body = resp.bytes().await.unwrap();
        if body.is_empty() {
            assert_eq!(code, StatusCode::ACCEPTED);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let page: Value = serde_json::from_slice(&body).unwrap();
        let files = page["output"].as_array().unwrap();
        assert!(files.len() <= 2, "{page}");
        listed.extend(files.iter().cloned());
        match page["link"][0]["url"].as_str() {
            Some(next) => page_url = next.to_string(),
            None => {
                assert_eq!(code, StatusCode::OK, "only the last page has no next link");
                break;
            }
        }
    }
    let mut urls: Vec<&str> = listed.iter().map(|f| f["url"].as_str().unwrap()).collect();
    let n = urls.len();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), n, "no file on two pages");
    let expected: BTreeMap<String, Vec<Value>> = by_type(sample(8))
        .into_iter()
        .filter(|(t, _)| ["Patient", "Observation", "Encounter"].contains(&t.as_str()))
        .collect();
    let all = json!({ "output": listed });
    assert_same_content(&app.outputs(&all, "output").await, &expected);
    // The plain export's manifest is whole, without pages.
    let manifest = app.wait_manifest(&plain).await;
    assert!(manifest.get("link").is_none());
}

/// Reads an export organized by patient: checks its manifest and files, and
/// that every block is one patient's (its header, the Patient first, then
/// resources of that patient's compartment), each patient once; returns
/// the resources without the headers.
async fn read_patient_blocks(app: &TestApp, manifest: &Value) -> Vec<Value> {
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut resources = Vec::new();
    for entry in manifest["output"].as_array().unwrap() {
        assert!(entry.get("type").is_none(), "{entry}");
        let lines = app.download(entry["url"].as_str().unwrap()).await;
        assert_eq!(entry["count"], lines.len());
        assert_eq!(
            lines[0]["resourceType"], "Parameters",
            "a file starts a block"
        );
        let mut current: Option<String> = None;
        let mut first_in_block = false;
        for line in lines {
            if line["resourceType"] == "Parameters" {
                assert!(current.is_none() || !first_in_block, "no empty block");
                assert_eq!(line["parameter"][0]["name"], "header");
                let reference = line["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .unwrap();
                let patient = reference.strip_prefix("Patient/").unwrap().to_string();
                assert!(
                    seen.insert(patient.clone()),
                    "one block per patient: {patient}"
                );
                current = Some(patient);
                first_in_block = true;
                continue;
            }
            let patient = current.as_deref().expect("a header opens the block");
            let t = line["resourceType"].as_str().unwrap();
            if t == "Patient" {
                assert!(first_in_block, "the Patient comes first in its block");
                assert_eq!(line["id"], patient);
            } else {
                assert!(
                    compartment_patients(t, &line).iter().any(|p| p == patient),
                    "{t}/{} is not in Patient/{patient}'s compartment",
                    line["id"]
                );
            }
            first_in_block = false;
            resources.push(line);
        }
        assert!(!first_in_block, "no empty block at the end of a file");
    }
    resources
}

/// `organizeOutputBy=Patient`, Patient and Group level: each patient's
/// resources come together after a header, blocks are never split across
/// files, and the content is exactly the export's, even with handlings
/// crashing before and after chunk uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_organized_by_patient_comes_in_blocks() {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let app = spawn_app(Options {
        sample_patients: 10,
        wrap_artifacts: Some(Box::new(move |inner| {
            let hook = Crashes {
                calls: AtomicUsize::new(0),
                fail_before: vec![3, 11],
                fail_after: vec![6, 15],
                failures: f,
            };
            Arc::new(Intercepted { inner, hook })
        })),
        tune: Box::new(|c| {
            c.engine.page_size = 3;
            c.engine.max_resources_per_file = 7;
            c.engine.min_chunk_bytes = 1;
            c.engine.patients_per_part = 4;
            c.visibility_timeout = Duration::from_millis(500);
        }),
        ..Default::default()
    })
    .await;
    let data = sample(10);
    let patients: Vec<String> = data
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let six: BTreeSet<String> = patients.iter().take(6).cloned().collect();
    let members: Vec<Value> = six
        .iter()
        .map(|p| json!({"entity": {"reference": format!("Patient/{p}")}}))
        .collect();
    let group = json!({"resourceType": "Group", "id": "six", "type": "person",
        "actual": true, "member": members});
    app.put(&group).await;
    let mut data = data;
    data.push(group);
    let in_compartment = |r: &Value, of: &BTreeSet<String>| {
        let t = r["resourceType"].as_str().unwrap();
        if t == "Patient" {
            return of.contains(r["id"].as_str().unwrap());
        }
        compartment_patients(t, r).iter().any(|p| of.contains(p))
    };
    let all: BTreeSet<String> = patients.iter().cloned().collect();
    let types = ["Patient", "Observation", "Encounter"];
    for (path, of, only) in [
        ("Patient/$export?organizeOutputBy=Patient", &all, None),
        (
            "Group/six/$export?organizeOutputBy=Patient&_type=Observation,Encounter,Patient",
            &six,
            Some(types),
        ),
    ] {
        let status = app.start_export(app.kickoff_get(path)).await;
        let manifest = app.wait_manifest(&status).await;
        assert!(
            manifest["output"].as_array().unwrap().len() > 1,
            "{path}: files roll over"
        );
        let got = by_type(read_patient_blocks(&app, &manifest).await);
        let want = by_type(
            data.iter()
                .filter(|r| in_compartment(r, of))
                .filter(|r| only.is_none_or(|t| t.contains(&r["resourceType"].as_str().unwrap())))
                .cloned(),
        );
        assert_same_content(&got, &want);
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        4,
        "every injected crash happened"
    );
    // With a _typeFilter, only patients with a resource that passes it
    // have a block.
    let encounters: Vec<&Value> = data
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .collect();
    let picked = [encounters[0], encounters[encounters.len() - 1]];
    let status = app
        .start_export(app.kickoff_get(&format!(
            "Patient/$export?organizeOutputBy=Patient&_type=Encounter&_typeFilter=Encounter%3F_id%3D{}%2C{}",
            picked[0]["id"].as_str().unwrap(),
            picked[1]["id"].as_str().unwrap()
        )))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let got = by_type(read_patient_blocks(&app, &manifest).await);
    assert_same_content(&got, &by_type(picked.into_iter().cloned()));
    // A system export cannot be organized by patient.
    expect_outcome(
        app.kickoff_get("$export?organizeOutputBy=Patient")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

/// Compressed downloads: a client that accepts gzip is sent to the file's
/// gzip twin (`Content-Encoding: gzip`, the same NDJSON once inflated);
/// one that does not, or refuses it with `q=0`, gets the NDJSON itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_sent_gzipped_to_clients_that_accept_gzip() {
    use std::io::Read;
    let app = spawn_app(Options {
        sample_patients: 4,
        tune: Box::new(|c| {
            c.engine.max_resources_per_file = 9;
            c.engine.min_chunk_bytes = 1;
        }),
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient,Observation"))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let fetch = |url: String, encoding: &'static str| {
        let client = app.client.clone();
        async move {
            let resp = client
                .get(&url)
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            assert_eq!(resp.headers()["vary"], "accept-encoding");
            let link = resp.headers()["location"].to_str().unwrap().to_string();
            let resp = client
                .get(&link)
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
            let gzipped = resp.headers().get("content-encoding").is_some();
            (gzipped, resp.bytes().await.unwrap())
        }
    };
    for entry in manifest["output"].as_array().unwrap() {
        let url = entry["url"].as_str().unwrap().to_string();
        let plain = app.download_text(&url).await;
        let (gzipped, body) = fetch(url.clone(), "br, gzip").await;
        assert!(gzipped);
        assert!(body.len() < plain.len(), "{} < {}", body.len(), plain.len());
        let mut inflated = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut inflated)
            .unwrap();
        assert_eq!(inflated, plain);
        assert_eq!(
            entry["extension"]["sha256"].as_str(),
            Some(sha256_hex(inflated.as_bytes()).as_str()),
            "the manifest's digest is of the NDJSON, however it is sent"
        );
        for refused in ["gzip;q=0", "identity"] {
            let (gzipped, body) = fetch(url.clone(), refused).await;
            assert!(!gzipped, "{refused}");
            assert_eq!(body, plain.as_bytes());
        }
    }
}

fn codes(concept: &Value) -> Vec<(String, String)> {
    concept["coding"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    (text("system"), text("code"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `_typeFilter` on the Synthea sample, system and Patient level: each
/// filtered type holds exactly what the filter selects (computed here
/// without the service's search code), filters of one type are
/// alternatives (comma-separated or repeated), unfiltered types are whole;
/// an unsupported parameter follows the lenient/strict rules and a
/// malformed filter is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_select_resources_by_search_parameters() {
    let (app, data) = synthea_app().await;
    let of_type = |t: &'static str| data.iter().filter(move |r| r["resourceType"] == t);
    let loinc = |code: &'static str| {
        move |r: &&Value| codes(&r["code"]).contains(&("http://loinc.org".into(), code.into()))
    };
    let heavy = |r: &&Value| {
        r["valueQuantity"]["value"]
            .as_f64()
            .is_some_and(|v| v > 100.0)
    };
    let enc = |q: &str| {
        percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC).to_string()
    };

    // Codes, genders and dates; Encounter unfiltered.
    let filter = enc(
        "Observation?code=http://loinc.org|8302-2,Patient?gender=female&birthdate=lt1970-01-01",
    );
    let status = app
        .start_export(app.kickoff_get(&format!(
            "$export?_type=Observation,Patient,Encounter,Condition&_typeFilter={filter}&_typeFilter={}",
            enc("Condition?clinical-status=resolved")
        )))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let want = by_type(
        of_type("Observation")
            .filter(loinc("8302-2"))
            .chain(of_type("Patient").filter(|p| {
                p["gender"] == "female" && p["birthDate"].as_str().unwrap() < "1970-01-01"
            }))
            .chain(of_type("Encounter"))
            .chain(of_type("Condition").filter(|c| {
                codes(&c["clinicalStatus"])
                    .iter()
                    .any(|(_, code)| code == "resolved")
            }))
            .cloned(),
    );
    assert!(want["Observation"].len() > 900 && want["Patient"].len() == 18);
    assert_same_content(&app.outputs(&manifest, "output").await, &want);

    // Alternatives of one type, a quantity, and :not and :missing.
    let status = app
        .start_export(app.kickoff_get(&format!(
            "$export?_type=Observation,Condition&_typeFilter={}&_typeFilter={}&_typeFilter={}",
            enc("Observation?code=http://loinc.org|8867-4"),
            enc("Observation?value-quantity=gt100&category=laboratory"),
            enc("Condition?clinical-status:not=resolved&onset-date:missing=false")
        )))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let laboratory = |r: &&Value| {
        r["category"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| codes(c).iter().any(|(_, code)| code == "laboratory"))
        })
    };
    let want = by_type(
        of_type("Observation")
            .filter(|r| loinc("8867-4")(r) || (heavy(r) && laboratory(r)))
            .chain(of_type("Condition").filter(|c| {
                !codes(&c["clinicalStatus"])
                    .iter()
                    .any(|(_, code)| code == "resolved")
                    && c["onsetDateTime"].is_string()
            }))
            .cloned(),
    );
    assert!(want["Condition"].len() > 200, "{}", want["Condition"].len());
    assert_same_content(&app.outputs(&manifest, "output").await, &want);

    // Patient level: the filter applies to each patient's compartment.
    let status = app
        .start_export(app.kickoff_get(&format!(
            "Patient/$export?_type=Observation&_typeFilter={}",
            enc("Observation?category=vital-signs&date=ge2015")
        )))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let vital = |r: &&Value| {
        r["category"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| codes(c).iter().any(|(_, code)| code == "vital-signs"))
        })
    };
    let want = by_type(
        of_type("Observation")
            .filter(vital)
            .filter(|r| {
                r["effectiveDateTime"].as_str().is_some_and(|d| {
                    let t = chrono::DateTime::parse_from_rfc3339(d).unwrap();
                    t >= "2015-01-01T00:00:00Z"
                        .parse::<chrono::DateTime<chrono::Utc>>()
                        .unwrap()
                })
            })
            .cloned(),
    );
    assert!(!want["Observation"].is_empty());
    assert_same_content(&app.outputs(&manifest, "output").await, &want);

    // Unsupported: strict refuses; lenient exports without the clause and says so.
    let unsupported = format!(
        "$export?_type=Patient&_typeFilter={}",
        enc("Patient?gender=male&foo=1")
    );
    expect_outcome(
        app.kickoff_get(&unsupported).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let status = app
        .start_export(
            app.kickoff_get(&unsupported)
                .header("prefer", "respond-async, handling=lenient"),
        )
        .await;
    let manifest = app.wait_manifest(&status).await;
    let want = by_type(
        of_type("Patient")
            .filter(|p| p["gender"] == "male")
            .cloned(),
    );
    assert_same_content(&app.outputs(&manifest, "output").await, &want);
    let errors = app
        .download(manifest["error"][0]["url"].as_str().unwrap())
        .await;
    assert!(errors[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("foo"));
    // A filter on a type the export does not hold is refused too.
    let elsewhere = format!(
        "$export?_type=Patient&_typeFilter={}",
        enc("Condition?clinical-status=active")
    );
    expect_outcome(
        app.kickoff_get(&elsewhere).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Malformed: 400 whatever the handling.
    let malformed = app
        .kickoff_get(&format!(
            "$export?_typeFilter={}",
            enc("Observation?date=ge2020-13")
        ))
        .header("prefer", "respond-async, handling=lenient");
    expect_outcome(malformed.send().await.unwrap(), StatusCode::BAD_REQUEST).await;
}

/// A stored file whose bytes no longer have the SHA-256 its manifest gives
/// is never served silently: its link answers 500 with an
/// OperationOutcome, the gzip twin likewise, and the other files still
/// download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_at_rest_is_refused_not_served() {
    let app = spawn_app(Options {
        sample_patients: 3,
        ..Default::default()
    })
    .await;
    let status = app
        .start_export(app.kickoff_get("$export?_type=Patient,Observation"))
        .await;
    let manifest = app.wait_manifest(&status).await;
    let job = job_id_of(&status);
    let outputs = manifest["output"].as_array().unwrap();
    let name_of = |entry: &Value| {
        let url = entry["url"].as_str().unwrap();
        url.rsplit('/').next().unwrap().to_string()
    };
    let (changed, kept) = (&outputs[0], &outputs[1]);
    let key = format!("jobs/{job}/{}", name_of(changed));
    let artifacts = &app.running.services.ports.artifacts;
    let mut bytes = artifacts.get(&key).await.unwrap().to_vec();
    bytes[10] ^= 1; // one bit, at rest
    artifacts.put(&key, bytes.into()).await.unwrap();
    let twin = format!("{key}.gz");
    artifacts
        .put(&twin, b"not the twin".to_vec().into())
        .await
        .unwrap();
    for encoding in ["identity", "gzip"] {
        let resp = app
            .client
            .get(changed["url"].as_str().unwrap())
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let link = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(link.contains("sha256="), "{link}");
        let resp = app.client.get(&link).send().await.unwrap();
        let oo = expect_outcome(resp, StatusCode::INTERNAL_SERVER_ERROR).await;
        let why = oo["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(why.contains("SHA-256"), "{encoding}: {why}");
    }
    // A link whose digest is edited no longer carries a valid signature.
    let resp = app
        .client
        .get(kept["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let link = resp.headers()["location"].to_str().unwrap().to_string();
    let forged = link.replace("sha256=", "sha256=0");
    assert_eq!(
        app.client.get(&forged).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // The untouched file downloads, and matches its digest.
    let text = app.download_text(kept["url"].as_str().unwrap()).await;
    assert_eq!(
        kept["extension"]["sha256"].as_str(),
        Some(sha256_hex(text.as_bytes()).as_str())
    );
}
