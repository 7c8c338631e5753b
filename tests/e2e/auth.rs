//! SMART Backend Services: the token endpoint and bearer tokens, over HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bulk_export::auth::{ClientRegistration, TokenIssuer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p384::pkcs8::{EncodePrivateKey, LineEnding};
use reqwest::StatusCode;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client's key pair: what it signs with, and the JWK it registers.
pub(crate) struct ClientKey {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) jwk: Value,
}

pub(crate) fn es384(kid: &str) -> ClientKey {
    let secret = p384::SecretKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES384");
    ClientKey {
        alg: Algorithm::ES384,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        jwk,
    }
}

fn rs384(kid: &str) -> ClientKey {
    let key = rsa::RsaPrivateKey::new(&mut p384::elliptic_curve::rand_core::OsRng, 2048).unwrap();
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let b64 = |b: Vec<u8>| URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS384",
        "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be())});
    ClientKey {
        alg: Algorithm::RS384,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client assertion; `tweak` changes claims or header for a bad case.
pub(crate) fn assertion(
    key: &ClientKey,
    client_id: &str,
    aud: &str,
    tweak: impl FnOnce(&mut Value, &mut Header),
) -> String {
    let mut claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now() + 240,
        "jti": uuid_like()});
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    tweak(&mut claims, &mut header);
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        now(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// A token request that must fail: name, form fields, status, RFC 6749 error.
type Case = (&'static str, Vec<(&'static str, String)>, u16, &'static str);

struct AuthApp {
    app: TestApp,
    token_url: String,
}

async fn auth_app() -> AuthApp {
    let app = spawn_app(Options {
        sample_patients: 4,
        auth: true,
        ..Default::default()
    })
    .await;
    let token_url = format!("{}/auth/token", app.base().trim_end_matches("/fhir"));
    AuthApp { app, token_url }
}

impl AuthApp {
    async fn register(
        &self,
        client_id: &str,
        keys: &[&ClientKey],
        scope: &str,
        groups: Option<Vec<&str>>,
    ) {
        let reg = ClientRegistration {
            client_id: client_id.into(),
            jwks: Some(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})),
            jwks_url: Some(format!("https://{client_id}.example/jwks.json")),
            scope: scope.into(),
            groups: groups.map(|g| g.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        self.app.running.clients.put_client(&reg).await.unwrap();
    }

    async fn token_request(&self, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .app
            .client
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        (resp.status(), resp.json().await.unwrap())
    }

    /// A well-formed token request carrying `assertion`.
    async fn exchange(&self, assertion: &str, scope: &str) -> (StatusCode, Value) {
        self.token_request(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .await
    }

    async fn token(&self, key: &ClientKey, client_id: &str, scope: &str) -> String {
        let a = assertion(key, client_id, &self.token_url, |_, _| {});
        let (status, body) = self.exchange(&a, scope).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "bearer");
        assert!(body["expires_in"].as_i64().unwrap() <= 300);
        body["access_token"].as_str().unwrap().to_string()
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_follows_smart_backend_services() {
    let a = auth_app().await;
    let (ec, rs, stranger) = (es384("ec-1"), rs384("rs-1"), es384("ec-1"));
    a.register("client-a", &[&ec, &rs], "system/*.read", None)
        .await;

    // Valid assertions, ES384 and RS384, succeed.
    a.token(&ec, "client-a", "system/*.read").await;
    a.token(&rs, "client-a", "system/Patient.rs system/Observation.read")
        .await;

    let good = || assertion(&ec, "client-a", &a.token_url, |_, _| {});
    let form = |assertion: String, scope: &'static str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_assertion_type", ASSERTION_TYPE.to_string()),
            ("client_assertion", assertion),
            ("scope", scope.to_string()),
        ]
    };
    let send = |fields: Vec<(&'static str, String)>| {
        let a = &a;
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            a.token_request(&pairs).await
        }
    };
    let used = good();
    assert_eq!(
        send(form(used.clone(), "system/*.read")).await.0,
        StatusCode::OK
    );

    let mut cases: Vec<Case> = vec![];
    let mut f = form(good(), "system/*.read");
    f[0].1 = "authorization_code".into();
    cases.push(("wrong grant_type", f, 400, "unsupported_grant_type"));
    let mut f = form(good(), "system/*.read");
    f[1].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".into();
    cases.push(("wrong client_assertion_type", f, 401, "invalid_client"));
    cases.push((
        "unknown client",
        form(
            assertion(&ec, "client-x", &a.token_url, |_, _| {}),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "bad signature",
        form(
            assertion(&stranger, "client-a", &a.token_url, |_, _| {}),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "aud is not the token URL",
        form(
            assertion(&ec, "client-a", "https://elsewhere/token", |_, _| {}),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "exp too far",
        form(
            assertion(&ec, "client-a", &a.token_url, |c, _| {
                c["exp"] = json!(now() + 3600)
            }),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "expired assertion",
        form(
            assertion(&ec, "client-a", &a.token_url, |c, _| {
                c["exp"] = json!(now() - 600)
            }),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "no jti",
        form(
            assertion(&ec, "client-a", &a.token_url, |c, _| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "sub is not the client",
        form(
            assertion(&ec, "client-a", &a.token_url, |c, _| {
                c["sub"] = json!("client-b")
            }),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push((
        "replayed jti",
        form(used, "system/*.read"),
        401,
        "invalid_client",
    ));
    cases.push((
        "unregistered jku",
        form(
            assertion(&ec, "client-a", &a.token_url, |_, h| {
                h.jku = Some("https://evil.example/jwks.json".into())
            }),
            "system/*.read",
        ),
        401,
        "invalid_client",
    ));
    cases.push(("HS256 assertion", form({
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ec-1".into());
        let c = json!({"iss": "client-a", "sub": "client-a", "aud": a.token_url, "exp": now() + 60, "jti": uuid_like()});
        jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(b"guess")).unwrap()
    }, "system/*.read"), 401, "invalid_client"));
    cases.push(("alg none", form(format!("{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({"iss": "client-a", "sub": "client-a", "aud": a.token_url, "exp": now() + 60, "jti": "n1"}).to_string())), "system/*.read"), 401, "invalid_client"));
    cases.push(("empty scope", form(good(), ""), 400, "invalid_scope"));
    cases.push((
        "patient scope",
        form(good(), "patient/*.read"),
        400,
        "invalid_scope",
    ));
    cases.push((
        "write scope",
        form(good(), "system/Patient.write"),
        400,
        "invalid_scope",
    ));
    cases.push((
        "v2 mutation-only scope",
        form(good(), "system/Patient.cu"),
        400,
        "invalid_scope",
    ));
    let mut f = form(good(), "system/*.read");
    f.remove(2);
    cases.push(("no assertion", f, 401, "invalid_client"));

    for (name, fields, status, error) in cases {
        let (got, body) = send(fields).await;
        assert_eq!(
            (got.as_u16(), body["error"].as_str().unwrap_or("")),
            (status, error),
            "{name}: {body}"
        );
        assert!(
            !body["error_description"].as_str().unwrap_or("").is_empty(),
            "{name}: says why"
        );
    }

    // Wider scopes are narrowed to read access, and the response names it.
    for (asked, granted) in [
        ("system/*.*", "system/*.read"),
        ("system/*.cruds", "system/*.rs"),
        (
            "system/Patient.cu system/Observation.rs",
            "system/Observation.rs",
        ),
    ] {
        let (status, body) = send(form(good(), asked)).await;
        assert_eq!(status, StatusCode::OK, "{asked}: {body}");
        assert_eq!(body["scope"], granted, "{asked}");
    }
    // A client limited to some types gets only those.
    a.register("client-narrow", &[&ec], "system/Patient.read", None)
        .await;
    let narrow = || assertion(&ec, "client-narrow", &a.token_url, |_, _| {});
    let (status, body) = send(form(narrow(), "system/*.read")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "system/Patient.read");
    let (status, body) = send(form(narrow(), "system/Observation.read")).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str().unwrap()),
        (400, "invalid_scope")
    );

    // An assertion refused for its scope is not spent: it may be sent again.
    // Once it has got a token, it is.
    let once = good();
    let (status, body) = send(form(once.clone(), "system/Patient.cu")).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str().unwrap()),
        (400, "invalid_scope")
    );
    let (status, body) = send(form(once.clone(), "system/*.read")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(form(once, "system/*.read")).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{body}"
    );

    // Discovery.
    let conf: Value = a.app.get_json(".well-known/smart-configuration").await;
    assert_eq!(conf["token_endpoint"], a.token_url);
    assert_eq!(
        conf["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert!(conf["token_endpoint_auth_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("ES384")));
    let cs: Value = a.app.get_json("metadata").await;
    let ext = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(ext["extension"][0]["valueUri"], a.token_url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_every_export_request() {
    let a = auth_app().await;
    let app = &a.app;
    let ec = es384("k1");
    a.register("alice", &[&ec], "system/*.read", None).await;
    a.register("bob", &[&ec], "system/*.read", None).await;
    a.register(
        "carol",
        &[&ec],
        "system/*.read",
        Some(vec!["sample-cohort-1"]),
    )
    .await;
    let alice = a.token(&ec, "alice", "system/*.read").await;
    let bob = a.token(&ec, "bob", "system/*.read").await;

    // The authorized twin of the basic export: kick-off, poll, download.
    let bearer = |t: &str| format!("Bearer {t}");
    let status = app
        .start_export(
            app.kickoff_get("$export?_type=Patient")
                .header("authorization", bearer(&alice)),
        )
        .await;
    let manifest = app.wait_manifest_as(&status, Some(&bearer(&alice))).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    let resp = app
        .client
        .get(&file)
        .header("authorization", bearer(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let signed = resp.headers()["location"].to_str().unwrap().to_string();
    let body = app
        .client
        .get(&signed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 4);

    // Tokens that must not work.
    let data_dir_key =
        std::fs::read_to_string(app._dir.path().join("token-signing-key.pem")).unwrap();
    let issuer = a.app.running.issuer.clone().unwrap();
    let wrong_aud =
        TokenIssuer::from_pem(&data_dir_key, &issuer.issuer, "https://other/fhir").unwrap();
    let wrong_iss =
        TokenIssuer::from_pem(&data_dir_key, "https://other/auth/token", &issuer.audience).unwrap();
    let other_key = TokenIssuer::from_pem(
        &TokenIssuer::generate_pem(),
        &issuer.issuer,
        &issuer.audience,
    )
    .unwrap();
    let at = chrono::Utc::now();
    let none_token = format!("{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(json!({"iss": issuer.issuer, "aud": issuer.audience, "sub": "alice", "exp": now() + 60, "scope": "system/*.read"}).to_string()));
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("malformed token", Some("Bearer not.a.jwt".into())),
        ("not a bearer", Some(format!("Basic {alice}"))),
        (
            "bad signature",
            Some(bearer(&other_key.issue("alice", "system/*.read", None, at))),
        ),
        (
            "wrong aud",
            Some(bearer(&wrong_aud.issue("alice", "system/*.read", None, at))),
        ),
        (
            "wrong iss",
            Some(bearer(&wrong_iss.issue("alice", "system/*.read", None, at))),
        ),
        ("alg none", Some(bearer(&none_token))),
        (
            "expired",
            Some(bearer(&issuer.issue(
                "alice",
                "system/*.read",
                None,
                at - chrono::Duration::seconds(301),
            ))),
        ),
    ];
    for (name, auth) in bad {
        for req in [
            app.kickoff_get("$export"),
            app.client.get(&status),
            app.client.delete(&status),
            app.client.get(&file),
        ] {
            let req = match &auth {
                Some(h) => req.header("authorization", h),
                None => req,
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
            assert!(
                resp.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{name}"
            );
            expect_outcome(resp, StatusCode::UNAUTHORIZED).await;
        }
    }

    // Another client's token: the job does not exist for it.
    for req in [
        app.client.get(&status),
        app.client.get(&file),
        app.client.delete(&status),
    ] {
        expect_outcome(
            req.header("authorization", bearer(&bob))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    // A scope without the requested _type; a Group outside the client's list.
    let narrow = a.token(&ec, "alice", "system/Patient.read").await;
    let resp = app
        .kickoff_get("$export?_type=Observation")
        .header("authorization", bearer(&narrow))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    let carol = a.token(&ec, "carol", "system/*.read").await;
    let resp = app
        .kickoff_get("Group/sample-all-patients/$export")
        .header("authorization", bearer(&carol))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    let resp = app
        .client
        .get(app.url("Group/sample-all-patients"))
        .header("authorization", bearer(&carol))
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    let resp = app
        .kickoff_get("Group/sample-cohort-1/$export")
        .header("authorization", bearer(&carol))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Alice's job is still hers after all that.
    let resp = app
        .client
        .get(&status)
        .header("authorization", bearer(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Serves JWKS documents (`Cache-Control: max-age=60`) and counts fetches.
struct JwksServer {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(sets: Vec<(&'static str, Value)>) -> JwksServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let mut router = axum::Router::new();
    for (path, set) in sets {
        let (h, body) = (hits.clone(), set.to_string());
        router = router.route(
            path,
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move {
                    (
                        [
                            ("content-type", "application/json"),
                            ("cache-control", "public, max-age=60"),
                        ],
                        body,
                    )
                }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    JwksServer { url, hits }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_come_from_the_registered_jwks_url_cached() {
    use std::sync::atomic::Ordering;
    let a = auth_app().await;
    let key = es384("by-url");
    let server = jwks_server(vec![("/client-jwks.json", json!({"keys": [key.jwk]}))]).await;
    let jwks_url = format!("{}/client-jwks.json", server.url);
    let reg = ClientRegistration {
        client_id: "url-client".into(),
        jwks: None,
        jwks_url: Some(jwks_url.clone()),
        scope: "system/*.read".into(),
        groups: None,
        ..Default::default()
    };
    a.app.running.clients.put_client(&reg).await.unwrap();
    for _ in 0..3 {
        let assertion = assertion(&key, "url-client", &a.token_url, |_, h| {
            h.jku = Some(jwks_url.clone())
        });
        let (status, body) = a.exchange(&assertion, "system/*.read").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "fetched once, then cached within max-age"
    );
    // A kid the set does not hold: refetched once, then refused.
    let other = es384("not-published");
    let bad = assertion(&other, "url-client", &a.token_url, |_, _| {});
    let (status, body) = a.exchange(&bad, "system/*.read").await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str().unwrap()),
        (401, "invalid_client")
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_trusted_external_issuer_are_verified_by_its_jwks() {
    use std::sync::atomic::Ordering;
    let idp = rs384("idp-1");
    let server = jwks_server(vec![("/idp/jwks.json", json!({"keys": [idp.jwk]}))]).await;
    let (iss, jwks_url) = (
        "https://idp.example".to_string(),
        format!("{}/idp/jwks.json", server.url),
    );
    let cfg = (iss.clone(), jwks_url);
    let app = spawn_app(Options {
        sample_patients: 2,
        auth: true,
        tune: Box::new(move |c| c.external_issuer = Some(cfg)),
        ..Default::default()
    })
    .await;
    let token = |aud: &str, exp: i64, key: &ClientKey| {
        let mut h = Header::new(key.alg);
        h.kid = Some(key.kid.clone());
        let c = json!({"iss": iss, "sub": "idp-client", "aud": aud, "exp": exp, "scope": "system/Patient.read"});
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&h, &c, &key.encoding).unwrap()
        )
    };
    let base = app.base().to_string();
    let good = token(&base, now() + 120, &idp);
    let resp = app
        .kickoff_get("$export?_type=Patient")
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // The scope from the external token applies.
    let resp = app
        .kickoff_get("$export?_type=Observation")
        .header("authorization", &good)
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::FORBIDDEN).await;
    for (name, bad) in [
        ("wrong aud", token("https://other/fhir", now() + 120, &idp)),
        ("expired", token(&base, now() - 10, &idp)),
        ("unknown key", token(&base, now() + 120, &rs384("idp-1"))),
    ] {
        let resp = app
            .kickoff_get("$export")
            .header("authorization", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
    }
    assert!(
        server.hits.load(Ordering::SeqCst) <= 2,
        "keys cached within max-age"
    );
}

/// A key publisher that fails: each path one way.
async fn failing_jwks_server() -> String {
    let router = axum::Router::new()
        .route(
            "/down.json",
            axum::routing::get(|| async { (axum::http::StatusCode::BAD_GATEWAY, "upstream gone") }),
        )
        .route(
            "/garbled.json",
            axum::routing::get(|| async {
                ([("content-type", "application/json")], "{\"keys\": [tru")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// A loopback URL where nothing listens.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// An issuer whose keys cannot be fetched (unreachable, a 5xx, a body that
/// is not a key set) is an outage: 503 with Retry-After, in our words, not
/// 401 `invalid_token`, which would tell the client its token is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_publisher_outage_is_503_not_an_invalid_token() {
    let failing = failing_jwks_server().await;
    let idp = rs384("idp-1");
    for jwks_url in [
        closed_url().await,
        format!("{failing}/down.json"),
        format!("{failing}/garbled.json"),
    ] {
        let iss = "https://idp.example".to_string();
        let cfg = (iss.clone(), jwks_url.clone());
        let app = spawn_app(Options {
            auth: true,
            tune: Box::new(move |c| c.external_issuer = Some(cfg)),
            ..Default::default()
        })
        .await;
        let mut h = Header::new(idp.alg);
        h.kid = Some(idp.kid.clone());
        let claims = json!({"iss": iss, "sub": "c", "aud": app.base(), "exp": now() + 120, "scope": "system/*.read"});
        let token = jsonwebtoken::encode(&h, &claims, &idp.encoding).unwrap();
        let resp = app
            .kickoff_get("$export")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["retry-after"], "10", "{jwks_url}");
        let oo = expect_outcome(resp, StatusCode::SERVICE_UNAVAILABLE).await;
        let said = oo["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(said.contains("retry later"), "{said}");
        assert!(!said.contains("127.0.0.1"), "no backend detail: {said}");
    }

    // A client registered by a JWKS URL that is down: the token endpoint
    // answers 503 temporarily_unavailable, not invalid_client.
    let a = auth_app().await;
    let key = es384("by-url");
    let reg = ClientRegistration {
        client_id: "down-client".into(),
        jwks: None,
        jwks_url: Some(format!("{failing}/down.json")),
        scope: "system/*.read".into(),
        groups: None,
        ..Default::default()
    };
    a.app.running.clients.put_client(&reg).await.unwrap();
    let assertion = assertion(&key, "down-client", &a.token_url, |_, _| {});
    let (status, body) = a.exchange(&assertion, "system/*.read").await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str().unwrap()),
        (503, "temporarily_unavailable"),
        "{body}"
    );
    assert!(!body["error_description"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
}

/// Authorized twins of the open-mode export tests: Group and Patient
/// exports and a cancel, each with a real token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_patient_export_and_cancel_with_tokens() {
    let a = auth_app().await;
    let app = &a.app;
    let key = es384("twin");
    a.register("twin", &[&key], "system/*.read", None).await;
    let bearer = format!(
        "Bearer {}",
        a.token(&key, "twin", "system/Patient.read system/Observation.rs")
            .await
    );
    let wait = |status: String| {
        let bearer = bearer.clone();
        async move { app.wait_manifest_as(&status, Some(&bearer)).await }
    };
    let counts = |m: &Value| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = m["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["type"].as_str().unwrap().to_string(),
                    o["count"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v.dedup_by(|x, y| {
            if x.0 == y.0 {
                y.1 += x.1;
                true
            } else {
                false
            }
        });
        v
    };
    // Group export, no _type: exactly the token's types.
    let status = app
        .start_export(
            app.kickoff_get("Group/sample-cohort-1/$export")
                .header("authorization", &bearer),
        )
        .await;
    let group = counts(&wait(status).await);
    assert_eq!(
        group.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["Observation", "Patient"]
    );
    assert_eq!(group[1].1, 4);
    // Patient-level export: the same patients here, so the same counts.
    let status = app
        .start_export(
            app.kickoff_get("Patient/$export")
                .header("authorization", &bearer),
        )
        .await;
    assert_eq!(counts(&wait(status).await), group);
    // Cancel with the token; then the job is gone for it too.
    let status = app
        .start_export(
            app.kickoff_get("$export?_type=Observation")
                .header("authorization", &bearer),
        )
        .await;
    let resp = app
        .client
        .delete(&status)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = app
        .client
        .get(&status)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    expect_outcome(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_key_can_come_from_configuration() {
    let pem = TokenIssuer::generate_pem();
    let configured = pem.clone();
    let app = spawn_app(Options {
        auth: true,
        tune: Box::new(move |c| c.token_signing_key = Some(configured)),
        ..Default::default()
    })
    .await;
    assert!(
        !app._dir.path().join("token-signing-key.pem").exists(),
        "nothing written to disk"
    );
    let issuer = app.running.issuer.clone().unwrap();
    let mine = TokenIssuer::from_pem(&pem, &issuer.issuer, &issuer.audience).unwrap();
    let token = mine.issue("c", "system/*.read", None, chrono::Utc::now());
    let resp = app
        .kickoff_get("$export")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "tokens signed with the configured key verify"
    );
}
