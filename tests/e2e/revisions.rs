//! `$export-revisions`, the audit trail: one scripted history by three
//! clients, exported with every filter, checked row by row against what the
//! test itself wrote. The scenario runs on the embedded service here and on
//! moto through the Lambda functions (`aws::revisions`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::auth::{ClientRegistration, TokenIssuer};
use bulk_export::ports::ClientStore;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::helpers::{spawn_app, Options, TestApp};

/// An HTTP answer, whichever way it came.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }
}

/// The service under test: the embedded one over HTTP, or the Lambda
/// functions on moto.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// A request to `path` under the FHIR base (`Patient/p1`), with a bearer
    /// token and extra headers. JSON bodies go as `application/json`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply;
    /// The absolute FHIR base, as the service writes it in links.
    fn base(&self) -> String;
    fn issuer(&self) -> Arc<TokenIssuer>;
    fn clients(&self) -> Arc<dyn ClientStore>;
}

/// One row as the test expects it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    revision_id: String,
    time: String,
    user: String,
    email: String,
    operation: String,
    record_type: String,
    record: String,
    change_log: Option<Value>,
}

/// A scripted write: who, what, and the content before and after.
struct Step {
    client: &'static str,
    at: String,
    operation: &'static str,
    record_type: &'static str,
    record: &'static str,
    log: Value,
}

/// A client: (id, display name, e-mail, scopes, audit, Group limit).
type Client = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    bool,
    Option<&'static str>,
);

const CLIENTS: [Client; 6] = [
    (
        "lab-a",
        Some("Lab A"),
        Some("a@lab.test"),
        "system/*.read system/*.write",
        false,
        None,
    ),
    (
        "lab-b",
        Some("Lab B, \"Haematology\""),
        Some("b@lab.test"),
        "system/Observation.cud system/Observation.rs",
        false,
        None,
    ),
    ("registrar", None, None, "system/Patient.cud", false, None),
    (
        "auditor",
        Some("Audit Office"),
        None,
        "system/*.read",
        true,
        None,
    ),
    ("nosy", None, None, "system/*.read", false, None),
    ("grouped", None, None, "system/*.read", true, Some("g1")),
];

fn token(b: &dyn Backend, client: &str) -> String {
    let (_, _, _, scope, audit, group) = CLIENTS.iter().find(|c| c.0 == client).unwrap();
    b.issuer().issue_with_audit(
        client,
        scope,
        group.map(|g| vec![g.to_string()]),
        *audit,
        Utc::now(),
    )
}

/// The content a change log compares: no resourceType, id or meta.
fn content(v: &Value) -> Map<String, Value> {
    let mut m = v.as_object().cloned().unwrap_or_default();
    for k in ["resourceType", "id", "meta"] {
        m.remove(k);
    }
    m
}

/// The test's own diff: new or changed top-level elements with their
/// values, removed ones as null.
fn diff(before: Option<&Value>, after: Option<&Value>) -> Value {
    let (b, a) = (
        before.map(content).unwrap_or_default(),
        after.map(content).unwrap_or_default(),
    );
    let mut out = Map::new();
    for (k, v) in &a {
        if b.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.insert(k.clone(), Value::Null);
    }
    Value::Object(out)
}

fn micros(instant: &str) -> i64 {
    DateTime::parse_from_rfc3339(instant)
        .unwrap()
        .with_timezone(&Utc)
        .timestamp_micros()
}

/// RFC 4180, as the test reads it: quoted fields may hold commas, quotes
/// (doubled) and line breaks; records end in CRLF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => {
                assert_ne!(c, '\n', "a bare LF ends no record in RFC 4180");
                field.push(c);
            }
        }
    }
    assert!(row.is_empty() && field.is_empty(), "an unterminated record");
    rows
}

fn rows_of(csv: &str) -> Vec<Row> {
    let mut records = parse_csv(csv).into_iter();
    assert_eq!(
        records.next().expect("a header row"),
        [
            "Revision ID",
            "Revision Time",
            "User",
            "User Email ID",
            "Operation",
            "Record Type",
            "Record",
            "Change Log"
        ]
    );
    records
        .map(|r| {
            assert_eq!(r.len(), 8, "{r:?}");
            Row {
                revision_id: r[0].clone(),
                time: r[1].clone(),
                user: r[2].clone(),
                email: r[3].clone(),
                operation: r[4].clone(),
                record_type: r[5].clone(),
                record: r[6].clone(),
                change_log: (!r[7].is_empty()).then(|| serde_json::from_str(&r[7]).unwrap()),
            }
        })
        .collect()
}

fn expected(steps: &[Step], keep: impl Fn(&Step) -> bool, with_log: bool) -> Vec<Row> {
    let mut rows: Vec<Row> = steps
        .iter()
        .filter(|s| keep(s))
        .map(|s| {
            let (_, name, email, ..) = CLIENTS.iter().find(|c| c.0 == s.client).unwrap();
            Row {
                revision_id: micros(&s.at).to_string(),
                time: s.at.clone(),
                user: name.unwrap_or(s.client).to_string(),
                email: email.unwrap_or("").to_string(),
                operation: s.operation.to_string(),
                record_type: s.record_type.to_string(),
                record: s.record.to_string(),
                change_log: with_log.then(|| s.log.clone()),
            }
        })
        .collect();
    rows.reverse();
    rows
}

/// `POST $export-revisions` answered with a file id; returns the CSV.
async fn export(b: &dyn Backend, client: &str, body: Value) -> String {
    let tok = token(b, client);
    let r = b
        .call(
            "POST",
            "$export-revisions",
            Some(&tok),
            &[],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "{body}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let answer = r.json();
    let file_id = answer["fileId"]
        .as_str()
        .unwrap_or_else(|| panic!("no fileId within the wait budget: {answer}"));
    assert_eq!(
        answer["fileUrl"],
        format!("{}/$export-revisions/file?fileId={file_id}", b.base())
    );
    fetch_file(b, &tok, &format!("$export-revisions/file?fileId={file_id}")).await
}

/// A file endpoint's 303, followed without the token.
async fn fetch_file(b: &dyn Backend, tok: &str, path: &str) -> String {
    let r = b.call("GET", path, Some(tok), &[], None).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    let link = r.header("location").to_string();
    let got = reqwest::get(&link).await.unwrap();
    assert_eq!(got.status(), 200, "{link}");
    got.text().await.unwrap()
}

/// Registers the scenario's clients.
async fn register_clients(b: &dyn Backend) {
    for (id, name, email, scope, audit, group) in CLIENTS {
        b.clients()
            .put_client(&ClientRegistration {
                client_id: id.into(),
                jwks_url: Some(format!("https://{id}.example/jwks.json")),
                scope: scope.into(),
                groups: group.map(|g| vec![g.to_string()]),
                name: name.map(String::from),
                email: email.map(String::from),
                audit,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// The whole scenario; see the module comment.
pub(crate) async fn audit_trail_scenario(b: &dyn Backend) {
    register_clients(b).await;

    // Writing needs a write scope on the type.
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}]});
    for (client, method, path) in [
        ("nosy", "PUT", "Patient/px"),
        ("registrar", "PUT", "Observation/ox"),
        ("lab-b", "DELETE", "Patient/px"),
        ("grouped", "PUT", "Patient/px"),
    ] {
        let tok = token(b, client);
        let body = (method == "PUT").then(|| {
            let t = path.split('/').next().unwrap();
            json!({"resourceType": t, "status": "final", "code": {"text": "x"}}).to_string()
        });
        let r = b.call(method, path, Some(&tok), &[], body).await;
        assert_eq!(r.status, 403, "{client} {method} {path}");
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }

    // The scripted history.
    let obs_v1 = json!({"resourceType": "Observation", "status": "preliminary",
        "code": {"text": "Haemoglobin"}, "note": [{"text": "first, \"rough\" read\nsecond line"}]});
    let obs_v2 = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "Haemoglobin"}, "issued": "2026-01-02T03:04:05Z",
        "valueQuantity": {"value": 13.2, "unit": "g/dL"}});
    let obs_v4 = json!({"resourceType": "Observation", "status": "amended", "code": {"text": "Haemoglobin"}});
    let mut steps: Vec<Step> = Vec::new();
    let put = async |client: &'static str, t: &'static str, id: &'static str, body: &Value| {
        let tok = token(b, client);
        let mut body = body.clone();
        body["id"] = json!(id);
        let r = b
            .call(
                "PUT",
                &format!("{t}/{id}"),
                Some(&tok),
                &[],
                Some(body.to_string()),
            )
            .await;
        assert!(
            matches!(r.status, 200 | 201),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let at = put("lab-a", "Patient", "p1", &patient("Smith")).await;
    steps.push(Step {
        client: "lab-a",
        at,
        operation: "Add",
        record_type: "Patient",
        record: "p1",
        log: diff(None, Some(&patient("Smith"))),
    });
    let at = put("lab-b", "Observation", "o1", &obs_v1).await;
    steps.push(Step {
        client: "lab-b",
        at,
        operation: "Add",
        record_type: "Observation",
        record: "o1",
        log: diff(None, Some(&obs_v1)),
    });
    let at = put("lab-a", "Observation", "o1", &obs_v2).await;
    steps.push(Step {
        client: "lab-a",
        at,
        operation: "Edit",
        record_type: "Observation",
        record: "o1",
        log: diff(Some(&obs_v1), Some(&obs_v2)),
    });
    let at = put("registrar", "Patient", "p2", &patient("Jones")).await;
    steps.push(Step {
        client: "registrar",
        at,
        operation: "Add",
        record_type: "Patient",
        record: "p2",
        log: diff(None, Some(&patient("Jones"))),
    });
    // A deletion, through a transaction Bundle (its response says when).
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Observation/o1"}}]});
    let r = b
        .call(
            "POST",
            "",
            Some(&token(b, "lab-b")),
            &[],
            Some(bundle.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let at = r.json()["entry"][0]["response"]["lastModified"]
        .as_str()
        .unwrap()
        .to_string();
    steps.push(Step {
        client: "lab-b",
        at,
        operation: "Delete",
        record_type: "Observation",
        record: "o1",
        log: diff(Some(&obs_v2), None),
    });
    let at = put("lab-a", "Observation", "o1", &obs_v4).await;
    steps.push(Step {
        client: "lab-a",
        at,
        operation: "Add",
        record_type: "Observation",
        record: "o1",
        log: diff(None, Some(&obs_v4)),
    });
    let at = put("registrar", "Patient", "p1", &patient("Smith-Jones")).await;
    steps.push(Step {
        client: "registrar",
        at,
        operation: "Edit",
        record_type: "Patient",
        record: "p1",
        log: diff(Some(&patient("Smith")), Some(&patient("Smith-Jones"))),
    });

    let start = steps[0].at.clone();
    let end = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let window = |extra: Value| {
        let mut body = json!({"startDate": start, "endDate": end});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    // Everything, with the change log: exactly the history, newest first.
    let csv = export(b, "auditor", window(json!({"includeModifiedProps": true}))).await;
    assert!(csv.starts_with(
        "Revision ID,Revision Time,User,User Email ID,Operation,Record Type,Record,Change Log\r\n"
    ));
    assert_eq!(rows_of(&csv), expected(&steps, |_| true, true));
    // A quoted user name and a note with a quote, a comma and a line break.
    assert!(csv.contains("\"Lab B, \"\"Haematology\"\"\""), "{csv}");

    // Every filter, alone and combined, with and without the change log.
    type Keep = Box<dyn Fn(&Step) -> bool>;
    let cases: Vec<(Value, Keep)> = vec![
        (
            json!({"userId": "lab-a"}),
            Box::new(|s: &Step| s.client == "lab-a"),
        ),
        (
            json!({"userIds": ["lab-b", "registrar"], "includeModifiedProps": true}),
            Box::new(|s: &Step| s.client != "lab-a"),
        ),
        (
            json!({"entities": ["Patient"]}),
            Box::new(|s: &Step| s.record_type == "Patient"),
        ),
        (
            json!({"userId": "lab-b", "entities": ["Observation"], "includeModifiedProps": true}),
            Box::new(|s: &Step| s.client == "lab-b" && s.record_type == "Observation"),
        ),
        (json!({"userId": "nobody"}), Box::new(|_: &Step| false)),
        (
            json!({"entities": ["Encounter"]}),
            Box::new(|_: &Step| false),
        ),
    ];
    for (extra, keep) in cases {
        let with_log = extra["includeModifiedProps"] == true;
        let csv = export(b, "auditor", window(extra.clone())).await;
        assert_eq!(rows_of(&csv), expected(&steps, keep, with_log), "{extra}");
    }
    // A time range inside the history (both ends inclusive).
    let csv = export(
        b,
        "auditor",
        json!({"startDate": steps[2].at, "endDate": steps[4].at, "includeModifiedProps": true}),
    )
    .await;
    assert_eq!(
        rows_of(&csv),
        expected(
            &steps,
            |s| micros(&s.at) >= micros(&steps[2].at) && micros(&s.at) <= micros(&steps[4].at),
            true
        )
    );
    // Epoch milliseconds, as the seed sends them.
    let ms = |s: &str| micros(s).div_euclid(1000);
    let csv = export(
        b,
        "auditor",
        json!({"startDate": ms(&steps[0].at), "endDate": ms(&end), "userIds": ["registrar"]}),
    )
    .await;
    assert_eq!(
        rows_of(&csv),
        expected(&steps, |s| s.client == "registrar", false)
    );

    // The asynchronous pattern: 202, then a manifest with one CSV output.
    let tok = token(b, "auditor");
    let body = window(json!({"includeModifiedProps": true}));
    let r = b
        .call(
            "POST",
            "$export-revisions",
            Some(&tok),
            &[("prefer", "respond-async")],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 202);
    let status = r.header("content-location").to_string();
    let status_path = status
        .strip_prefix(&format!("{}/", b.base()))
        .unwrap()
        .to_string();
    let manifest = loop {
        let r = b.call("GET", &status_path, Some(&tok), &[], None).await;
        if r.status == 200 {
            break r.json();
        }
        assert_eq!(r.status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{manifest}");
    assert_eq!(outputs[0]["type"], "Revisions");
    assert_eq!(outputs[0]["count"], steps.len());
    let url = outputs[0]["url"].as_str().unwrap();
    let via_manifest = fetch_file(
        b,
        &tok,
        url.strip_prefix(&format!("{}/", b.base())).unwrap(),
    )
    .await;
    assert_eq!(rows_of(&via_manifest), expected(&steps, |_| true, true));

    // Access: no audit permission, or a Group limit: 403. Another client's
    // file: 404.
    for client in ["nosy", "grouped", "lab-a"] {
        let r = b
            .call(
                "POST",
                "$export-revisions",
                Some(&token(b, client)),
                &[],
                Some("{}".into()),
            )
            .await;
        assert_eq!(r.status, 403, "{client}");
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let file_id = status_path.rsplit('/').next().unwrap();
    let r = b
        .call(
            "GET",
            &format!("$export-revisions/file?fileId={file_id}"),
            Some(&token(b, "nosy")),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "no audit permission: no file");
    let r = b
        .call(
            "GET",
            &format!("$export-jobs/{file_id}/files/revisions.csv"),
            Some(&token(b, "lab-a")),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404, "another owner's file");

    // Malformed bodies: each a 400 OperationOutcome.
    let tok = token(b, "auditor");
    for (body, ct) in malformed_bodies() {
        let headers: Vec<(&str, &str)> = ct.iter().map(|c| ("content-type", *c)).collect();
        let r = b
            .call(
                "POST",
                "$export-revisions",
                Some(&tok),
                &headers,
                Some(body.clone()),
            )
            .await;
        assert!(
            (400..500).contains(&r.status),
            "{body:?}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let oo = r.json();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{body:?}");
    }
}

/// 30+ bodies `$export-revisions` must refuse, with an optional
/// Content-Type instead of JSON's.
fn malformed_bodies() -> Vec<(String, Option<&'static str>)> {
    let mut out: Vec<(String, Option<&'static str>)> = [
        "{",
        "[]",
        "null",
        "42",
        "\"startDate\"",
        r#"{"startDate": "2024-01-01"}"#,
        r#"{"startDate": "yesterday"}"#,
        r#"{"startDate": "2024-01-01T00:00:00"}"#,
        r#"{"startDate": -5}"#,
        r#"{"startDate": 1.5}"#,
        r#"{"startDate": 1e300}"#,
        r#"{"startDate": true}"#,
        r#"{"startDate": {}}"#,
        r#"{"endDate": []}"#,
        r#"{"endDate": "2024-13-01T00:00:00Z"}"#,
        r#"{"endDate": 99999999999999999}"#,
        r#"{"startDate": 2000, "endDate": 1000}"#,
        r#"{"startDate": "2024-02-01T00:00:00Z", "endDate": "2024-01-01T00:00:00Z"}"#,
        r#"{"userId": ""}"#,
        r#"{"userId": null}"#,
        r#"{"userId": -1}"#,
        r#"{"userId": ["a"]}"#,
        r#"{"userId": "a", "userIds": ["b"]}"#,
        r#"{"userIds": []}"#,
        r#"{"userIds": "a"}"#,
        r#"{"userIds": [null]}"#,
        r#"{"userIds": [{"id": "a"}]}"#,
        r#"{"entities": []}"#,
        r#"{"entities": "Patient"}"#,
        r#"{"entities": ["NotAType"]}"#,
        r#"{"entities": ["patient"]}"#,
        r#"{"entities": [1]}"#,
        r#"{"includeModifiedProps": "true"}"#,
        r#"{"includeModifiedProps": 1}"#,
        r#"{"includeModifiedProps": null}"#,
        r#"{"startdate": 1}"#,
        r#"{"users": ["a"]}"#,
    ]
    .iter()
    .map(|b| (b.to_string(), None))
    .collect();
    out.push((format!(r#"{{"userId": "{}"}}"#, "x".repeat(300)), None));
    out.push((
        format!(r#"{{"userIds": [{}]}}"#, vec!["\"u\""; 1001].join(",")),
        None,
    ));
    out.push((r#"{"userId": "a"}"#.into(), Some("text/plain")));
    out.push((
        r#"{"userId": "a"}"#.into(),
        Some("application/x-www-form-urlencoded"),
    ));
    out
}

/// The embedded service with authorization on; tokens from its issuer.
pub(crate) struct Embedded(pub TestApp);

#[async_trait]
impl Backend for Embedded {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let url = match path {
            "" => self.0.base().to_string(),
            p => format!("{}/{p}", self.0.base()),
        };
        let mut req = self
            .0
            .client
            .request(method.parse().unwrap(), url)
            .header("accept", "application/fhir+json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap();
        Reply {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap(),
        }
    }

    fn base(&self) -> String {
        self.0.base().to_string()
    }

    fn issuer(&self) -> Arc<TokenIssuer> {
        self.0.running.issuer.clone().unwrap()
    }

    fn clients(&self) -> Arc<dyn ClientStore> {
        self.0.running.clients.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_of_three_clients_with_every_filter() {
    let app = spawn_app(Options {
        sample_patients: 2,
        auth: true,
        ..Default::default()
    })
    .await;
    audit_trail_scenario(&Embedded(app)).await;
}

/// A store written by an earlier release has no `previous_live` on its
/// versions: the export looks their predecessors up instead, and reads the
/// same, a re-creation after a deletion included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_written_before_the_predecessor_flag_read_the_same() {
    let app = spawn_app(Options {
        auth: true,
        ..Default::default()
    })
    .await;
    let db = app._dir.path().join("resources.db");
    let b = Embedded(app);
    register_clients(&b).await;
    let start = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let tok = token(&b, "registrar");
    let patient = Some(json!({"resourceType": "Patient", "id": "r1"}).to_string());
    for (method, body) in [
        ("PUT", patient.clone()),
        (
            "PUT",
            Some(json!({"resourceType": "Patient", "id": "r1", "active": true}).to_string()),
        ),
        ("DELETE", None),
        ("PUT", patient),
    ] {
        let r = b.call(method, "Patient/r1", Some(&tok), &[], body).await;
        assert!(r.status < 300, "{method}: {}", r.status);
    }
    let end = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = json!({"startDate": start, "endDate": end, "userId": "registrar"});
    let recorded = export(&b, "auditor", body.clone()).await;
    let operations: Vec<String> = rows_of(&recorded)
        .into_iter()
        .map(|r| r.operation)
        .collect();
    assert_eq!(operations, ["Add", "Delete", "Edit", "Add"], "newest first");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let cleared = conn
        .execute(
            "UPDATE versions SET previous_live = NULL WHERE id = 'r1'",
            [],
        )
        .unwrap();
    assert_eq!(cleared, 4);
    let looked_up = export(&b, "auditor", body).await;
    assert_eq!(looked_up, recorded);
}

/// What a webhook receiver got: (signature header, body).
pub(crate) type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver that refuses its first `failures` deliveries.
pub(crate) async fn webhook_receiver(failures: usize) -> (String, Received, Arc<AtomicUsize>) {
    let got: Received = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (g, a) = (got.clone(), attempts.clone());
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (g, a) = (g.clone(), a.clone());
            async move {
                if a.fetch_add(1, Ordering::SeqCst) < failures {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let sig = headers["x-bulk-export-signature"]
                    .to_str()
                    .unwrap()
                    .to_string();
                g.lock().unwrap().push((sig, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, got, attempts)
}

/// Checks the signature the way a receiver would: HMAC-SHA256 over
/// "<t>.<body>", and `t` recent.
pub(crate) fn verify_signature(secret: &str, header: &str, body: &str) {
    let fields: BTreeMap<&str, &str> = header
        .split(',')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let t: i64 = fields["t"].parse().unwrap();
    assert!(
        (Utc::now().timestamp() - t).abs() < 300,
        "a fresh timestamp"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(fields["v1"], hex, "the signature");
}

/// The seed's two speeds: a file ready within the wait budget is answered
/// with its id; past the budget the answer is `fileId: null` with a status
/// link, and the completion webhook announces the file, signed, even to a
/// receiver that failed the first attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_wait_budget_the_webhook_announces_the_file() {
    let (hook, got, attempts) = webhook_receiver(2).await;
    let secret = "whsec-test";
    let hook_for_app = hook.clone();
    let app = spawn_app(Options {
        sample_patients: 3,
        tune: Box::new(move |c| {
            c.engine.revisions_wait = Duration::ZERO;
            c.engine.webhook = Some(bulk_export::engine::notify::Webhook {
                url: hook_for_app,
                secret: secret.into(),
            });
        }),
        ..Default::default()
    })
    .await;
    let r = app
        .client
        .post(app.url("$export-revisions"))
        .header("content-type", "application/json")
        .body(r#"{"startDate": 0, "includeModifiedProps": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let location = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["fileId"], Value::Null, "{answer}");
    assert_eq!(answer["status"], location);
    let job_id = answer["jobId"].as_str().unwrap().to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (sig, body) = loop {
        if let Some(first) = got.lock().unwrap().first().cloned() {
            break first;
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    verify_signature(secret, &sig, &body);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "two refusals, then delivered"
    );
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["jobId"], job_id);
    assert_eq!(event["kind"], "revisions");
    assert_eq!(event["outcome"], "completed");
    assert_eq!(event["status"], location);
    // The announced file is there under the job's id, with every version
    // the sample loader wrote (all by the loader).
    let r = app
        .client
        .get(app.url(&format!("$export-revisions/file?fileId={job_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let link = r.headers()["location"].to_str().unwrap().to_string();
    let csv = reqwest::get(&link).await.unwrap().text().await.unwrap();
    let rows = rows_of(&csv);
    assert_eq!(rows.len() as u64, event["count"].as_u64().unwrap());
    assert!(!rows.is_empty());
    assert!(rows
        .iter()
        .all(|r| r.user == "bulk-export-loader" && r.operation == "Add"));
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.revision_id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first, unique");

    // Within the budget, the same request is answered with the file's id.
    let app2 = spawn_app(Options {
        sample_patients: 1,
        ..Default::default()
    })
    .await;
    let r = app2
        .client
        .post(app2.url("$export-revisions"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert!(answer["fileId"].is_string(), "{answer}");
}

/// The token endpoint grants write scopes and the audit permission a
/// registration allows, and the token carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_write_scopes_and_the_audit_permission() {
    use crate::auth::{assertion, es384, urlencode, ASSERTION_TYPE};
    let app = spawn_app(Options {
        auth: true,
        ..Default::default()
    })
    .await;
    let key = es384("w1");
    app.running
        .clients
        .put_client(&ClientRegistration {
            client_id: "writer".into(),
            jwks: Some(json!({"keys": [key.jwk.clone()]})),
            scope: "system/*.read system/Patient.write".into(),
            audit: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let token_url = format!("{}/auth/token", app.base().trim_end_matches("/fhir"));
    let exchange = async |scope: &str| {
        let form = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={}&scope={}",
            urlencode(ASSERTION_TYPE),
            urlencode(&assertion(&key, "writer", &token_url, |_, _| {})),
            urlencode(scope)
        );
        let r = app
            .client
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    for (asked, granted) in [
        ("system/Patient.write", "system/Patient.write"),
        (
            "system/Patient.cud system/Observation.rs",
            "system/Patient.cud system/Observation.rs",
        ),
        ("system/*.cruds", "system/*.rs system/Patient.cud"),
        ("system/Patient.*", "system/Patient.cruds"),
    ] {
        let (status, body) = exchange(asked).await;
        assert_eq!(status, 200, "{asked}: {body}");
        assert_eq!(body["scope"], granted, "{asked}");
    }
    let (status, body) = exchange("system/Observation.write").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );

    let (_, body) = exchange("system/Patient.write system/Patient.read").await;
    let tok = body["access_token"].as_str().unwrap();
    let r = app
        .client
        .put(app.url("Patient/w1"))
        .bearer_auth(tok)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "w1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .client
        .post(app.url("$export-revisions"))
        .bearer_auth(tok)
        .header("content-type", "application/json")
        .body(r#"{"userId": "writer"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let id = answer["fileId"].as_str().unwrap();
    let r = app
        .client
        .get(app.url(&format!("$export-revisions/file?fileId={id}")))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    let link = r.headers()["location"].to_str().unwrap().to_string();
    let rows = rows_of(&reqwest::get(&link).await.unwrap().text().await.unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].user.as_str(),
            rows[0].operation.as_str(),
            rows[0].record.as_str()
        ),
        ("writer", "Add", "w1")
    );
}
