//! Routes from one source: the router's table (`bulk_export::http::routes`)
//! against what API Gateway is told in `template.yaml`, and what
//! `cargo lambda watch` is told in `Cargo.toml`.
//!
//! API Gateway answers a path no route matches with its own
//! `{"message":"Not Found"}`; the template's `$default` route sends those
//! to a function, whose router answers as the local server does. These
//! tests keep the three lists equal: every route the router serves reaches,
//! on AWS, the function that has the permissions to serve it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bulk_export::http::routes::{
    resolve, Endpoint, Route, DEFAULT_ROUTE_FUNCTION, ROUTES, TEMPLATE_BASE_PATH,
};
use http::Method;
use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (method, path, function) of every HttpApi event in the template, and
/// the functions holding a `$default` route.
fn template_routes() -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let docs = YamlLoader::load_from_str(&repo_file("template.yaml")).expect("template.yaml");
    let resources = docs[0]["Resources"].as_hash().expect("Resources");
    let (mut routes, mut defaults) = (BTreeSet::new(), Vec::new());
    for (name, resource) in resources {
        let name = name.as_str().unwrap().to_string();
        let Some(events) = resource["Properties"]["Events"].as_hash() else {
            continue;
        };
        for event in events.values() {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let props = &event["Properties"];
            let text = |y: &Yaml| y.as_str().map(str::to_string);
            // SAM: an event with neither path nor method is the API's
            // `$default` route.
            match (text(&props["Method"]), text(&props["Path"])) {
                (None, None) => defaults.push(name.clone()),
                (Some(m), Some(p)) => {
                    routes.insert((m.to_ascii_uppercase(), p, name.clone()));
                }
                _ => panic!("{name}: an HttpApi route needs both Method and Path, or neither"),
            }
        }
    }
    (routes, defaults)
}

#[test]
fn the_template_routes_exactly_the_routers_table_each_to_its_function() {
    let (template, defaults) = template_routes();
    let table: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.into(), r.path.into(), r.function.into()))
        .collect();
    let missing: Vec<_> = table.difference(&template).collect();
    let unknown: Vec<_> = template.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "served by the router, not routed (or routed elsewhere) in template.yaml: {missing:#?}"
    );
    assert!(
        unknown.is_empty(),
        "routed in template.yaml, not in the router's table: {unknown:#?}"
    );
    assert_eq!(
        defaults,
        [DEFAULT_ROUTE_FUNCTION],
        "one $default route, on the function the table names"
    );
}

/// A concrete path for a route's pattern (relative to the FHIR base).
fn instance(pattern: &str) -> Vec<String> {
    let rest = pattern
        .strip_prefix(TEMPLATE_BASE_PATH)
        .expect("a FHIR route");
    rest.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "{type}" => "Observation".to_string(),
            "{proxy+}" => "nightly".to_string(),
            "{id}" | "{name}" => "x1".to_string(),
            literal => literal.to_string(),
        })
        .collect()
}

/// How API Gateway picks a route: the method (or ANY) must match, and of
/// the paths that match, the one with the most literal segments wins
/// (`/fhir/$export-jobs/{id}` before `/fhir/{type}/{id}`).
fn gateway_route(method: &str, segs: &[&str]) -> Option<&'static Route> {
    ROUTES
        .iter()
        .filter(|r| r.path.starts_with(TEMPLATE_BASE_PATH))
        .filter(|r| r.method == "ANY" || r.method == method)
        .filter_map(|r| {
            let pattern: Vec<&str> = r.path[TEMPLATE_BASE_PATH.len()..]
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            let greedy = pattern.last() == Some(&"{proxy+}");
            let fits = if greedy {
                segs.len() >= pattern.len()
            } else {
                segs.len() == pattern.len()
            };
            let literals_match = pattern
                .iter()
                .zip(segs)
                .all(|(p, s)| p.starts_with('{') || p == s);
            (fits && literals_match).then(|| {
                let literals = pattern.iter().filter(|p| !p.starts_with('{')).count();
                (literals, !greedy, r)
            })
        })
        .max_by_key(|(literals, exact, _)| (*literals, *exact))
        .map(|(_, _, r)| r)
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

#[test]
fn what_the_router_serves_api_gateway_sends_to_the_function_that_serves_it() {
    // Every route's own path, and some shapes no route names.
    let mut paths: Vec<Vec<String>> = ROUTES
        .iter()
        .filter(|r| {
            r.path.starts_with(TEMPLATE_BASE_PATH) && r.endpoint != Endpoint::SmartConfiguration
        })
        .map(|r| instance(r.path))
        .collect();
    for extra in [
        "",
        "Patient",
        "Patient/p1/_history",
        "$export-jobs/x1/files",
        "$export-schedules/nightly/runs/latest/links",
        "$export-releases/2026.1/manifest",
        "ViewDefinition/v1/$viewdefinition-export",
        "Group/g1/$export/extra",
    ] {
        paths.push(
            extra
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        );
    }
    for path in &paths {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        for method in METHODS {
            let served = resolve(&segs, &Method::from_bytes(method.as_bytes()).unwrap());
            let routed = gateway_route(method, &segs);
            match (served, routed) {
                (Ok(endpoint), Some(route)) => assert_eq!(
                    endpoint,
                    route.endpoint,
                    "{method} /{}: API Gateway picks {} ({}), the router serves {endpoint:?}",
                    path.join("/"),
                    route.path,
                    route.function
                ),
                (Ok(endpoint), None) => panic!(
                    "{method} /{}: the router serves {endpoint:?}, API Gateway routes it nowhere",
                    path.join("/")
                ),
                // Not served: API Gateway may still route it (the method
                // then gets the router's 405), or send it to $default.
                (Err(e), _) => assert!(
                    matches!(e.status, 404 | 405),
                    "{method} /{}: {}",
                    path.join("/"),
                    e.status
                ),
            }
        }
    }
    // Each route of the table is served by the endpoint it names.
    for r in ROUTES
        .iter()
        .filter(|r| r.path.starts_with(TEMPLATE_BASE_PATH))
    {
        if r.endpoint == Endpoint::SmartConfiguration {
            continue; // answered before the router, when authorization is on
        }
        let path = instance(r.path);
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        let methods: Vec<&str> = if r.method == "ANY" {
            METHODS.to_vec()
        } else {
            vec![r.method]
        };
        for m in methods {
            let served = resolve(&segs, &Method::from_bytes(m.as_bytes()).unwrap());
            assert_eq!(served.ok(), Some(r.endpoint), "{m} {}", r.path);
        }
    }
}

/// `[workspace.metadata.lambda.watch.router]`: path -> binary.
fn watch_router() -> Vec<(String, String)> {
    let manifest = repo_file("Cargo.toml");
    let section = manifest
        .split("[workspace.metadata.lambda.watch.router]")
        .nth(1)
        .expect("Cargo.toml has the cargo lambda watch router");
    section
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| l.starts_with('"'))
        .map(|l| {
            let (path, binary) = l.split_once('=').expect("\"path\" = \"binary\"");
            (
                path.trim().trim_matches('"').to_string(),
                binary.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

/// The binary of each function, from the template's build properties.
fn binary_of(function: &str) -> String {
    let docs = YamlLoader::load_from_str(&repo_file("template.yaml")).unwrap();
    docs[0]["Resources"][function]["Metadata"]["BuildProperties"]["Binary"]
        .as_str()
        .unwrap_or_else(|| panic!("{function} has no binary"))
        .to_string()
}

#[test]
fn cargo_lambda_watch_routes_as_the_template_does() {
    let watch = watch_router();
    for (path, binary) in &watch {
        let route = ROUTES
            .iter()
            .find(|r| r.path == path.as_str())
            .or_else(|| {
                let segs: Vec<&str> = path[TEMPLATE_BASE_PATH.len()..]
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect();
                let segs: Vec<&str> = segs
                    .iter()
                    .map(|s| if s.starts_with('{') { "x1" } else { s })
                    .collect();
                METHODS.iter().find_map(|m| gateway_route(m, &segs))
            })
            .unwrap_or_else(|| panic!("cargo lambda watch routes {path}, API Gateway does not"));
        assert_eq!(
            *binary,
            binary_of(route.function),
            "{path}: cargo lambda watch and API Gateway pick different functions"
        );
    }
    for r in ROUTES {
        let covered = if let Some(prefix) = r.path.strip_suffix("/{proxy+}") {
            watch
                .iter()
                .any(|(p, _)| p.starts_with(&format!("{prefix}/")))
        } else {
            watch.iter().any(|(p, _)| p == r.path)
        };
        assert!(
            covered,
            "cargo lambda watch does not route {} {}",
            r.method, r.path
        );
    }
}

/// What reaches `$default` on AWS gets the router's answer, here and there:
/// a FHIR OperationOutcome, or a 308 to the one canonical path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_routes_get_fhir_answers() {
    let app = crate::helpers::spawn_app(crate::helpers::Options::default()).await;
    let origin = app
        .url("")
        .trim_end_matches('/')
        .trim_end_matches("/fhir")
        .to_string();
    let send = |method: &str, path: &str| {
        app.client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{origin}{path}"),
            )
            .header("Content-Type", "application/fhir+json")
            .body(r#"{"resourceType":"Bundle","type":"batch","entry":[]}"#)
            .send()
    };

    // Empty segments: a permanent redirect that keeps method, body and query.
    for (path, to) in [
        ("/fhir/", "/fhir"),
        ("/fhir//Patient/p1", "/fhir/Patient/p1"),
        ("/fhir/$export-jobs/j1/?x=1", "/fhir/$export-jobs/j1?x=1"),
    ] {
        let r = send("POST", path).await.unwrap();
        assert_eq!(r.status(), 308, "POST {path}");
        assert_eq!(r.headers()["location"], to, "POST {path}");
    }
    let followed = reqwest::Client::new()
        .post(format!("{origin}/fhir/"))
        .header("Content-Type", "application/fhir+json")
        .body(r#"{"resourceType":"Bundle","type":"batch","entry":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 200, "the redirect leads to the batch");

    // Dot segments: HTTP clients resolve them before sending (a URL
    // parser must), so only a hand-written request carries them.
    for path in [
        "/fhir/Group/../$export",
        "/fhir/./metadata",
        "/fhir/Group/%2E%2E/$export",
    ] {
        let host = origin.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut reply)
            .await
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 404"), "GET {path}: {reply}");
        assert!(reply.contains("OperationOutcome"), "GET {path}: {reply}");
    }

    // Paths no route has, methods a path does not take.
    for (method, path, status) in [
        ("GET", "/elsewhere", 404),
        ("PATCH", "/fhir/Patient/p1", 405),
        ("GET", "/fhir/$export-revisions", 405),
        ("DELETE", "/fhir/ViewDefinition/$viewdefinition-export", 405),
    ] {
        let r = send(method, path).await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let outcome: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            outcome["resourceType"], "OperationOutcome",
            "{method} {path}"
        );
    }
}
