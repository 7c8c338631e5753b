//! `$viewdefinition-run` end to end over HTTP against the local service.

use std::collections::BTreeSet;

use bulk_export::domain::resource::{compartment_patients, group_member_ids};
use bulk_export::sample::{generate, SampleConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn sample(patients: usize) -> Vec<Value> {
    generate(SampleConfig { patients, seed: 42 }).collect()
}

fn patients_view() -> Value {
    json!({"resourceType": "ViewDefinition", "id": "patients", "name": "patients",
        "resource": "Patient", "status": "active",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "gender", "path": "gender", "type": "code"},
            {"name": "birth_date", "path": "birthDate", "type": "date"}]}]})
}

fn run(app: &TestApp, path: &str, params: Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(path))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
}

/// A stored view over the store as CSV; an inline view over one
/// patient's compartment as NDJSON; over inline resources as JSON; the
/// Group's members; and the row limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_definition_run_over_the_store_and_inline() {
    let app = spawn_app(Options {
        sample_patients: 6,
        ..Default::default()
    })
    .await;
    let data = sample(6);
    let patients: Vec<&Value> = data
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    app.put(&patients_view()).await;

    // Stored, CSV with a header, every Patient.
    let resp = app
        .client
        .get(app.url("ViewDefinition/patients/$viewdefinition-run?_format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.unwrap();
    let mut lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.remove(0), "id,gender,birth_date");
    let got: BTreeSet<String> = lines.iter().map(|l| l.to_string()).collect();
    let want: BTreeSet<String> = patients
        .iter()
        .map(|p| {
            format!(
                "{},{},{}",
                p["id"].as_str().unwrap(),
                p["gender"].as_str().unwrap(),
                p["birthDate"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, want);

    // Inline view, one patient's Observations, a row per coding, NDJSON.
    let patient = patients[0]["id"].as_str().unwrap();
    let view = json!({"resource": "Observation", "select": [
        {"column": [{"name": "id", "path": "getResourceKey()"}]},
        {"forEach": "code.coding", "column": [{"name": "code", "path": "code"}]}]});
    let resp = run(
        &app,
        "ViewDefinition/$viewdefinition-run",
        json!([{"name": "viewResource", "resource": view},
               {"name": "_format", "valueCode": "ndjson"},
               {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}]),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got: BTreeSet<(String, String)> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            (
                row["id"].as_str().unwrap().to_string(),
                row["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = data
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .filter(|r| {
            compartment_patients("Observation", r)
                .iter()
                .any(|p| p == patient)
        })
        .flat_map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            r["code"]["coding"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| (id.clone(), c["code"].as_str().unwrap().to_string()))
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // Inline resources, JSON: only their rows.
    let resp = run(
        &app,
        "ViewDefinition/$viewdefinition-run",
        json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}},
               {"name": "resource", "resource": {"resourceType": "Patient", "id": "x1", "gender": "other"}},
               {"name": "resource", "resource": {"resourceType": "Patient", "id": "x2"}}]),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rows: Value = resp.json().await.unwrap();
    assert_eq!(
        rows,
        json!([{"id": "x1", "gender": "other", "birth_date": null},
               {"id": "x2", "gender": null, "birth_date": null}])
    );

    // A Group's members.
    let group: Value = app.get_json("Group/sample-cohort-1").await;
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
    let resp = app
        .client
        .get(app.url("ViewDefinition/patients/$viewdefinition-run?group=Group/sample-cohort-1"))
        .send()
        .await
        .unwrap();
    let rows: Vec<Value> = resp.json().await.unwrap();
    let got: BTreeSet<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!members.is_empty());
    assert_eq!(got, members);
}

/// `_format=parquet`: the same rows as the JSON answer, in a Parquet file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_answers_in_parquet() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let app = spawn_app(Options {
        sample_patients: 4,
        ..Default::default()
    })
    .await;
    app.put(&patients_view()).await;
    let url = |format: &str| {
        app.url(&format!(
            "ViewDefinition/patients/$viewdefinition-run?_format={format}"
        ))
    };
    let json_rows: Vec<Value> = app
        .client
        .get(url("json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = app.client.get(url("parquet")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    let reader = SerializedFileReader::new(resp.bytes().await.unwrap()).unwrap();
    let parquet_rows: Vec<Value> = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let cells = row
                .unwrap()
                .get_column_iter()
                .map(|(name, field)| {
                    let cell = match field {
                        Field::Str(s) => Value::String(s.clone()),
                        Field::Null => Value::Null,
                        other => panic!("a text column holds {other:?}"),
                    };
                    (name.clone(), cell)
                })
                .collect();
            Value::Object(cells)
        })
        .collect();
    assert_eq!(parquet_rows.len(), 4);
    assert_eq!(parquet_rows, json_rows);
}

/// `_limit` caps the rows returned; with no `_limit` within the server's
/// row limit, more rows than that limit is a 422 that points to the
/// export rather than a silently cut answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_cuts_the_rows_and_the_server_limit_refuses() {
    let app = spawn_app(Options {
        sample_patients: 6,
        tune: Box::new(|c| c.engine.view_run_row_limit = 4),
        ..Default::default()
    })
    .await;
    app.put(&patients_view()).await;
    let rows = |query: &'static str| {
        let url = app.url(&format!(
            "ViewDefinition/patients/$viewdefinition-run?{query}"
        ));
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    for (query, want) in [("_limit=1", 1), ("_limit=2", 2), ("_limit=4", 4)] {
        let resp = rows(query).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let got: Vec<Value> = resp.json().await.unwrap();
        assert_eq!(got.len(), want, "{query}");
    }
    // No _limit, or one past the server's limit: six rows are too many.
    for query in ["", "_limit=5"] {
        let oo = expect_outcome(rows(query).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(oo.to_string().contains("$viewdefinition-export"), "{oo}");
    }
}

/// The `id` column of an inline view's run over the store, for a
/// `patient` or `group` parameter.
async fn run_ids(app: &TestApp, view: &Value, source: Value) -> Vec<String> {
    let params = json!([{"name": "viewResource", "resource": view}, source]);
    let resp = run(app, "ViewDefinition/$viewdefinition-run", params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rows: Vec<Value> = resp.json().await.unwrap();
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs by patient and by Group read the compartments through the
/// store's index: the current version must still be in the compartment
/// (moved and deleted resources are not), and a resource in two members'
/// compartments gives its row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_and_group_runs_read_the_compartments() {
    let app = spawn_app(Options {
        sample_patients: 6,
        ..Default::default()
    })
    .await;
    let data = sample(6);
    let group: Value = app.get_json("Group/sample-cohort-1").await;
    let members: Vec<String> = group_member_ids(&group);
    assert!(members.len() >= 3, "{members:?}");
    let (a, b, c) = (&members[0], &members[1], &members[2]);
    let observations_of = |patient: &str| -> Vec<&Value> {
        data.iter()
            .filter(|r| r["resourceType"] == "Observation")
            .filter(|r| {
                compartment_patients("Observation", r)
                    .iter()
                    .any(|p| p == patient)
            })
            .collect()
    };
    let of_a = observations_of(a);
    assert!(of_a.len() >= 2);
    // One of A's Observations moves to C, another is deleted; a new one
    // is A's and B's (subject and performer).
    let mut moved = of_a[0].clone();
    moved["subject"] = json!({"reference": format!("Patient/{c}")});
    app.put(&moved).await;
    let deleted = of_a[1]["id"].as_str().unwrap();
    app.delete("Observation", deleted).await;
    app.put(
        &json!({"resourceType": "Observation", "id": "shared-obs", "status": "final",
        "code": {"text": "shared"}, "subject": {"reference": format!("Patient/{a}")},
        "performer": [{"reference": format!("Patient/{b}")}]}),
    )
    .await;

    let view = json!({"resource": "Observation",
        "select": [{"column": [{"name": "id", "path": "id"}]}]});
    let ids_of = |patient: &str| -> BTreeSet<String> {
        observations_of(patient)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let moved_id = moved["id"].as_str().unwrap().to_string();

    let got = run_ids(
        &app,
        &view,
        json!({"name": "patient",
        "valueReference": {"reference": format!("Patient/{a}")}}),
    )
    .await;
    let mut want = ids_of(a);
    want.remove(&moved_id);
    want.remove(deleted);
    want.insert("shared-obs".into());
    assert_eq!(got.len(), want.len(), "a row per resource: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    let got = run_ids(
        &app,
        &view,
        json!({"name": "patient",
        "valueReference": {"reference": format!("Patient/{c}")}}),
    )
    .await;
    assert!(got.contains(&moved_id));

    // The Group: every member's compartment, the shared one once, the
    // deleted one not at all.
    let got = run_ids(
        &app,
        &view,
        json!({"name": "group",
        "valueReference": {"reference": "Group/sample-cohort-1"}}),
    )
    .await;
    let mut want: BTreeSet<String> = members.iter().flat_map(|m| ids_of(m)).collect();
    want.remove(deleted);
    want.insert("shared-obs".into());
    assert_eq!(got.len(), want.len(), "a row per resource");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
}

/// A view written with the wider FHIRPath (string functions, conversions,
/// `iif` and date arithmetic) runs and gives the rows those functions
/// compute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_with_substring_to_integer_iif_and_date_arithmetic() {
    let app = spawn_app(Options::default()).await;
    let view = json!({"resource": "Patient", "select": [{"column": [
        {"name": "id", "path": "id"},
        {"name": "birth_year", "path": "birthDate.substring(0, 4).toInteger()", "type": "integer"},
        {"name": "sex", "path": "iif(gender = 'female', 'F', iif(gender = 'male', 'M', 'U'))"},
        {"name": "adult_on", "path": "birthDate + 18 years", "type": "date"},
        {"name": "mrn_number", "path": "identifier.where(system = 'urn:mrn').value.replace('MRN-', '').toInteger()", "type": "integer"},
        {"name": "follow_up", "path": "(%resource.meta.lastUpdated + 7 days).toString().substring(0, 10)"}]}]});
    let patient = |id: &str, gender: &str, born: &str, mrn: &str| {
        json!({"name": "resource", "resource": {"resourceType": "Patient", "id": id,
            "gender": gender, "birthDate": born,
            "meta": {"lastUpdated": "2026-12-30T10:00:00.000+00:00"},
            "identifier": [{"system": "urn:mrn", "value": mrn}]}})
    };
    let resp = run(
        &app,
        "ViewDefinition/$viewdefinition-run",
        json!([{"name": "viewResource", "resource": view},
               patient("a", "female", "1990-02-28", "MRN-0042"),
               patient("b", "male", "2008-12-31", "MRN-7"),
               patient("c", "unknown", "2000-02-29", "not a number")]),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rows: Value = resp.json().await.unwrap();
    assert_eq!(
        rows,
        json!([
            {"id": "a", "birth_year": 1990, "sex": "F", "adult_on": "2008-02-28",
             "mrn_number": 42, "follow_up": "2027-01-06"},
            {"id": "b", "birth_year": 2008, "sex": "M", "adult_on": "2026-12-31",
             "mrn_number": 7, "follow_up": "2027-01-06"},
            // 29 February plus 18 years is 28 February; a value that is not
            // a number converts to nothing.
            {"id": "c", "birth_year": 2000, "sex": "U", "adult_on": "2018-02-28",
             "mrn_number": null, "follow_up": "2027-01-06"}
        ])
    );
}

/// Bad requests get a 4xx OperationOutcome that says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_view_runs_get_4xx_outcomes() {
    let app = spawn_app(Options {
        sample_patients: 2,
        ..Default::default()
    })
    .await;
    app.put(&patients_view()).await;
    let view = |v: Value| json!([{"name": "viewResource", "resource": v}]);
    let column = |path: &str| json!({"resource": "Patient", "select": [{"column": [{"name": "c", "path": path}]}]});
    let cases: Vec<(Value, StatusCode)> = vec![
        (json!([]), StatusCode::BAD_REQUEST),
        (
            view(json!({"select": [{"column": [{"name": "id", "path": "id"}]}]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            view(
                json!({"resource": "Nope", "select": [{"column": [{"name": "id", "path": "id"}]}]}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            view(json!({"resource": "Patient"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            view(column(
                "conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')",
            )),
            StatusCode::BAD_REQUEST,
        ),
        (view(column("name.given")), StatusCode::BAD_REQUEST),
        (view(column("(((")), StatusCode::BAD_REQUEST),
        (view(column("%undefined")), StatusCode::BAD_REQUEST),
        (
            view(
                json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            view(json!({"resource": "Patient", "select": [{"forEach": 1}]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            view(
                json!({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}], "where": [{"path": "name.family"}]}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/missing"}}]),
            StatusCode::NOT_FOUND,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}, {"name": "_format", "valueCode": "xlsx"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}, {"name": "surprise", "valueString": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}, {"name": "_limit", "valueInteger": 0}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}, {"name": "resource", "resource": {"resourceType": "Patient", "id": "p"}}, {"name": "patient", "valueReference": {"reference": "Patient/p"}}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewResource", "resource": patients_view()}, {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patients"}}, {"name": "group", "valueReference": {"reference": "Group/none"}}]),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (params, status) in cases {
        let resp = run(&app, "ViewDefinition/$viewdefinition-run", params.clone())
            .send()
            .await
            .unwrap();
        expect_outcome(resp, status).await;
    }
    // Not a Parameters body; a GET on the type-level operation.
    let resp = app
        .client
        .post(app.url("ViewDefinition/$viewdefinition-run"))
        .header("content-type", "application/fhir+json")
        .body(patients_view().to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::BAD_REQUEST).await;
    let resp = app
        .client
        .get(app.url("ViewDefinition/$viewdefinition-run"))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::METHOD_NOT_ALLOWED).await;
}
