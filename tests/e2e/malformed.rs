//! Table-driven: malformed requests get a 4xx OperationOutcome, never a 5xx.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<String>,
    status: u16,
}

const KICKOFF: &[(&str, &str)] = &[
    ("accept", "application/fhir+json"),
    ("prefer", "respond-async"),
];
const JSON_POST: &[(&str, &str)] = &[
    ("accept", "application/fhir+json"),
    ("prefer", "respond-async"),
    ("content-type", "application/fhir+json"),
];

/// `application/json` is how the conformance suite says "no usable Accept".
const JSON_ACCEPT: &[(&str, &str)] = &[("accept", "application/json"), ("prefer", "respond-async")];
const JSON_ACCEPT_POST: &[(&str, &str)] = &[
    ("accept", "application/json"),
    ("prefer", "respond-async"),
    ("content-type", "application/fhir+json"),
];

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: Option<String>,
    status: u16,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        headers: headers.to_vec(),
        body,
        status,
    }
}

fn get(name: &'static str, path: &str, status: u16) -> Case {
    case(name, Method::GET, path, KICKOFF, None, status)
}

fn params(p: serde_json::Value) -> Option<String> {
    Some(json!({"resourceType": "Parameters", "parameter": p}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_operation_outcomes() {
    let app = spawn_app(Options {
        sample_patients: 3,
        ..Default::default()
    })
    .await;
    let group = app
        .client
        .post(app.url("Group"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Group", "type": "person", "actual": true}).to_string())
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let gid = group["id"].as_str().unwrap().to_string();
    let group_export = format!("Group/{gid}/$export");
    let a_patient = json!([{"name": "patient", "valueReference": {"reference": "Patient/nobody"}}]);
    let put = |name, path: &str, ct: &'static str, body: &str, status| {
        case(
            name,
            Method::PUT,
            path,
            &[("content-type", ct)],
            Some(body.to_string()),
            status,
        )
    };

    let cases = vec![
        case("wrong Accept", Method::GET, "$export", &[("accept", "text/html"), ("prefer", "respond-async")], None, 400),
        case("Accept application/json, system", Method::GET, "$export", JSON_ACCEPT, None, 400),
        case("Accept application/json, Patient", Method::GET, "Patient/$export", JSON_ACCEPT, None, 400),
        case("Accept application/json, Group", Method::GET, &group_export, JSON_ACCEPT, None, 400),
        case("Accept application/json, POST system", Method::POST, "$export", JSON_ACCEPT_POST, params(json!([])), 400),
        case("Accept application/json, POST Patient", Method::POST, "Patient/$export", JSON_ACCEPT_POST, params(json!([])), 400),
        case("Accept application/json, POST Group", Method::POST, &group_export, JSON_ACCEPT_POST, params(json!([])), 400),
        case("Accept fhir+json;q=0", Method::GET, "$export", &[("accept", "application/fhir+json;q=0"), ("prefer", "respond-async")], None, 400),
        case("no Prefer", Method::GET, "$export", &[("accept", "application/fhir+json")], None, 400),
        case("Prefer without respond-async", Method::GET, "$export", &[("accept", "application/fhir+json"), ("prefer", "return=minimal")], None, 400),
        get("_outputFormat csv", "$export?_outputFormat=text/csv", 400),
        get("_outputFormat twice", "$export?_outputFormat=ndjson&_outputFormat=ndjson", 400),
        get("_since not an instant", "$export?_since=yesterday", 400),
        get("_since a date", "$export?_since=2024-01-01", 400),
        get("_since without zone", "$export?_since=2024-01-01T00:00:00", 400),
        get("_since in the future", "$export?_since=2999-01-01T00:00:00Z", 400),
        get("_since twice", "$export?_since=2020-01-01T00:00:00Z&_since=2020-01-01T00:00:00Z", 400),
        get("_until before _since", "$export?_since=2021-01-01T00:00:00Z&_until=2020-01-01T00:00:00Z", 400),
        get("_type unknown", "$export?_type=Foo", 400),
        get("_type lowercase", "$export?_type=patient", 400),
        get("_type empty", "$export?_type=", 400),
        get("_type empty entry", "$export?_type=Patient,,Observation", 400),
        get("_elements nested", "$export?_elements=code.coding", 400),
        get("_elements unknown type", "$export?_elements=Foo.id", 400),
        get("_typeFilter without a query", "$export?_typeFilter=Observation", 400),
        get("_typeFilter unknown type", "$export?_typeFilter=Nope%3Fstatus%3Dfinal", 400),
        get("_typeFilter unknown parameter", "$export?_typeFilter=Observation%3Ffoo%3D1", 400),
        get("_typeFilter bad date", "$export?_typeFilter=Observation%3Fdate%3Dge2020-13", 400),
        get("_typeFilter with _sort", "$export?_typeFilter=Observation%3F_sort%3Ddate", 400),
        get("_typeFilter unsupported modifier", "$export?_typeFilter=Observation%3Fcode%3Abelow%3D1", 400),
        get("_typeFilter bad :missing", "$export?_typeFilter=Observation%3Fcode%3Amissing%3Dmaybe", 400),
        get("_typeFilter outside _type", "$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", 400),
        get("organizeOutputBy at system level", "$export?organizeOutputBy=Patient", 400),
        get("organizeOutputBy another type", "Patient/$export?organizeOutputBy=Encounter", 400),
        get("organizeOutputBy not a type", "Patient/$export?organizeOutputBy=patient", 400),
        get("allowPartialManifests not a boolean", "$export?allowPartialManifests=yes", 400),
        get("includeAssociatedData unknown value", "$export?includeAssociatedData=Nope", 400),
        get("includeAssociatedData custom value", "$export?includeAssociatedData=_mine", 400),
        get("unknown parameter", "$export?foo=bar", 400),
        get("patient on GET", "Patient/$export?patient=Patient/1", 400),
        get("bad percent-encoding", "$export?_type=%ff", 400),
        get("Patient export of a non-compartment type", "Patient/$export?_type=Organization", 400),
        get("unknown Group", "Group/no-such-group/$export", 404),
        get("invalid Group id", "Group/bad$id!/$export", 400),
        case("POST patient at system level", Method::POST, "$export", JSON_POST, params(a_patient.clone()), 400),
        case("POST patient as string", Method::POST, "Patient/$export", JSON_POST, params(json!([{"name": "patient", "valueString": "Patient/1"}])), 400),
        case("POST patient not a Patient", Method::POST, "Patient/$export", JSON_POST, params(json!([{"name": "patient", "valueReference": {"reference": "Observation/1"}}])), 400),
        case("POST body not JSON", Method::POST, "$export", JSON_POST, Some("{".into()), 400),
        case("POST body not Parameters", Method::POST, "$export", JSON_POST, Some(json!({"resourceType": "Patient"}).to_string()), 400),
        case("POST parameter without a name", Method::POST, "$export", JSON_POST, params(json!([{"valueString": "x"}])), 400),
        case("POST parameter without a value", Method::POST, "$export", JSON_POST, params(json!([{"name": "_type"}])), 400),
        case("POST wrong content type", Method::POST, "$export", &[("accept", "application/fhir+json"), ("prefer", "respond-async"), ("content-type", "text/plain")], params(json!([])), 415),
        case("POST with a query string", Method::POST, "$export?_type=Patient", JSON_POST, params(json!([])), 400),
        case("PUT on $export", Method::PUT, "$export", KICKOFF, None, 405),
        get("unknown job", "$export-jobs/no-such-job", 404),
        case("cancel unknown job", Method::DELETE, "$export-jobs/no-such-job", &[], None, 404),
        get("file of unknown job", "$export-jobs/no-such-job/files/Patient-0000-000.ndjson", 404),
        case("POST to a status URL", Method::POST, "$export-jobs/x", &[], None, 405),
        get("unknown resource type", "Foo/1", 404),
        get("invalid resource id", "Patient/bad%20id", 400),
        get("unknown resource", "Patient/nobody", 404),
        get("nothing here", "a/b/c/d/e", 404),
        put("malformed JSON", "Patient/p1", "application/fhir+json", "{\"resourceType\":", 400),
        put("wrong resourceType", "Patient/p1", "application/fhir+json", r#"{"resourceType":"Observation","id":"p1"}"#, 400),
        put("id mismatch", "Patient/p1", "application/fhir+json", r#"{"resourceType":"Patient","id":"p2"}"#, 400),
        put("no id in update", "Patient/p1", "application/fhir+json", r#"{"resourceType":"Patient"}"#, 400),
        put("id not a string", "Patient/p1", "application/fhir+json", r#"{"resourceType":"Patient","id":1}"#, 400),
        put("body is an array", "Patient/p1", "application/fhir+json", "[]", 400),
        put("PUT text/plain", "Patient/p1", "text/plain", r#"{"resourceType":"Patient","id":"p1"}"#, 415),
        case("POST create wrong type", Method::POST, "Patient", &[("content-type", "application/fhir+json")], Some(r#"{"resourceType":"Group"}"#.into()), 400),
        case("Bundle of type collection", Method::POST, "", &[("content-type", "application/fhir+json")], Some(r#"{"resourceType":"Bundle","type":"collection"}"#.into()), 400),
        case("POST base not a Bundle", Method::POST, "", &[("content-type", "application/fhir+json")], Some(r#"{"resourceType":"Patient"}"#.into()), 400),
        case("transaction with a bad entry", Method::POST, "", &[("content-type", "application/fhir+json")],
            Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "PUT", "url": "Patient/ok"}, "resource": {"resourceType": "Patient", "id": "ok"}},
                {"request": {"method": "PUT", "url": "Patient/x"}, "resource": {"resourceType": "Patient", "id": "y"}}
            ]}).to_string()), 400),
        case("transaction entry without request", Method::POST, "", &[("content-type", "application/fhir+json")],
            Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}).to_string()), 400),
        case("DELETE on the base", Method::DELETE, "", &[], None, 405),
        case("PATCH a resource", Method::PATCH, "Patient/p1", &[], None, 405),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());

    for c in cases {
        let url = if c.path.is_empty() {
            app.base().to_string()
        } else {
            app.url(&c.path)
        };
        let mut req = app.client.request(c.method.clone(), &url);
        for (k, v) in &c.headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = c.body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        assert_eq!(
            status, c.status,
            "{}: {} {} -> {status} {text}",
            c.name, c.method, c.path
        );
        assert_eq!(ct.as_deref(), Some("application/fhir+json"), "{}", c.name);
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome", "{}", c.name);
        assert!(
            !body["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{}: says what is wrong",
            c.name
        );
    }
    // The lost-write check: nothing above changed the store.
    assert_eq!(
        app.client
            .get(app.url("Patient/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
