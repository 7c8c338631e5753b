//! `POST /auth/token`: the SMART Backend Services token endpoint.
//!
//! A client proves who it is with a JWT signed by one of its registered keys
//! (`private_key_jwt`, RFC 7523): `iss` = `sub` = client id, `aud` = this
//! URL, `exp` at most five minutes ahead, a `jti` never seen before. Every
//! failure of that proof is `invalid_client` (as SMART requires); bad scopes
//! are `invalid_scope`. Errors follow RFC 6749 §5.2.

use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use super::issuer::TokenIssuer;
use super::jwks::JwksError;
use crate::domain::access::{Access, Perms, TypeAccess};
pub use crate::domain::client::ClientRegistration;
use crate::domain::fhir_types::is_resource_type;
use crate::ports::{ClientStore, Clock};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const SIGNING_ALGS: &[&str] = &["RS384", "ES384", "RS256", "ES256"];
/// An assertion may not claim to live longer than this.
const MAX_ASSERTION_SECONDS: i64 = 300;
/// Tolerated clock difference with clients.
const LEEWAY_SECONDS: i64 = 30;

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" { 401 } else { 400 };
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }
    pub fn body(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

fn invalid_client(why: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_client", why)
}

/// A 503 `temporarily_unavailable`: an outage of ours or of a key
/// publisher, which a retry may get past.
fn unavailable(what: &str) -> OAuthError {
    OAuthError {
        status: 503,
        error: "temporarily_unavailable",
        description: format!("{what}; retry later"),
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// What makes an assertion single-use: its `jti`, remembered until `exp`.
struct OneTimeProof {
    jti: String,
    expires: chrono::DateTime<chrono::Utc>,
}

/// The signing algorithm, if it is one of `SIGNING_ALGS`.
fn accepted_alg(alg: Algorithm) -> Result<Algorithm, OAuthError> {
    if matches!(
        alg,
        Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256
    ) {
        Ok(alg)
    } else {
        Err(invalid_client(format!(
            "alg {alg:?} is not accepted; use one of {SIGNING_ALGS:?}"
        )))
    }
}

/// The key `kid` names in a client's registered key set (without a `kid`,
/// the set's only key).
fn registered_key(jwks: &Value, kid: Option<&str>) -> Result<Jwk, OAuthError> {
    let jwks: JwkSet = serde_json::from_value(jwks.clone())
        .map_err(|_| invalid_client("the client's registered key set is not usable"))?;
    match kid {
        Some(kid) => jwks.find(kid).cloned(),
        None if jwks.keys.len() == 1 => jwks.keys.first().cloned(),
        None => None,
    }
    .ok_or_else(|| invalid_client("no registered key matches the assertion's kid"))
}

pub struct AuthServer {
    pub issuer: Arc<TokenIssuer>,
    pub clients: Arc<dyn ClientStore>,
    pub clock: Arc<dyn Clock>,
    /// This endpoint's absolute URL: the `aud` assertions must carry.
    pub token_url: String,
    /// Keys of clients registered by JWKS URL.
    pub jwks: Arc<super::JwksCache>,
}

impl AuthServer {
    /// Handles a form-encoded token request; returns the token response.
    pub async fn token(&self, form: &[u8]) -> Result<Value, OAuthError> {
        let mut fields = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(form) {
            if fields.insert(k.to_string(), v.to_string()).is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("'{k}' is repeated"),
                ));
            }
        }
        let field = |k: &str| fields.get(k).map(String::as_str);
        match field("grant_type") {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::new(
                    "unsupported_grant_type",
                    format!("grant_type '{other}' is not supported; use client_credentials"),
                ))
            }
            None => return Err(OAuthError::new("invalid_request", "grant_type is missing")),
        }
        if field("client_assertion_type") != Some(ASSERTION_TYPE) {
            return Err(invalid_client(format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        let assertion = field("client_assertion")
            .ok_or_else(|| invalid_client("client_assertion is missing"))?;
        let (client, proof) = self.authenticate(assertion).await?;
        let requested = field("scope").unwrap_or("").trim();
        let granted = grant_scopes(requested, &client.scope)?;
        // Only now is the assertion spent: one refused for its scope may be
        // sent again with other scopes, one that got a token may not.
        self.spend(&client.client_id, proof).await?;
        let now = self.clock.now();
        let token = self.issuer.issue_with_audit(
            &client.client_id,
            &granted,
            client.groups.clone(),
            client.audit,
            now,
        );
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.issuer.lifetime_seconds,
            "scope": granted,
        }))
    }

    /// Verifies the client assertion; returns the client it proves and the
    /// assertion's one-time `jti`, not yet spent.
    async fn authenticate(
        &self,
        assertion: &str,
    ) -> Result<(ClientRegistration, OneTimeProof), OAuthError> {
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| invalid_client(format!("the client assertion is not a valid JWT: {e}")))?;
        let alg = accepted_alg(header.alg)?;
        // Who claims to be signing: read before the signature can be checked,
        // only to choose the keys to check it with.
        let unverified: AssertionClaims =
            jsonwebtoken::dangerous::insecure_decode_claims(assertion).map_err(|e| {
                invalid_client(format!(
                    "the client assertion's claims are not readable: {e}"
                ))
            })?;
        let client_id = unverified
            .iss
            .clone()
            .ok_or_else(|| invalid_client("the assertion has no iss"))?;
        let client = self.registered_client(&client_id).await?;
        if let Some(jku) = &header.jku {
            if client.jwks_url.as_deref() != Some(jku.as_str()) {
                return Err(invalid_client(
                    "the assertion's jku is not the client's registered JWKS URL",
                ));
            }
        }
        let jwk = self
            .client_key(&client, &client_id, header.kid.as_deref())
            .await?;
        self.verify_signature(assertion, &jwk, alg, &client_id)?;
        let proof = self.one_time_proof(unverified)?;
        Ok((client, proof))
    }

    /// The registration of the client an assertion names.
    async fn registered_client(&self, client_id: &str) -> Result<ClientRegistration, OAuthError> {
        match self.clients.get_client(client_id).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(invalid_client("unknown client")),
            Err(e) => {
                // The cause goes to the log; the client gets our words only.
                tracing::error!(error = %e, "token endpoint: the client store failed");
                Err(unavailable(
                    "the authorization server cannot read its clients",
                ))
            }
        }
    }

    /// The client's key the assertion says it is signed with (`kid`; without
    /// one, the client's only key): from its registered key set, or fetched
    /// from its JWKS URL.
    async fn client_key(
        &self,
        client: &ClientRegistration,
        client_id: &str,
        kid: Option<&str>,
    ) -> Result<Jwk, OAuthError> {
        match (&client.jwks, &client.jwks_url) {
            (Some(jwks), _) => registered_key(jwks, kid),
            (None, Some(url)) => match self.jwks.key(url, kid).await {
                Ok(key) => Ok(key),
                Err(e @ JwksError::NoMatch { .. }) => {
                    Err(invalid_client(format!("the client's keys: {e}")))
                }
                Err(e) => {
                    tracing::error!(error = %e, client = %client_id, "token endpoint: the client's JWKS is out of reach");
                    Err(unavailable(
                        "the client's registered key set cannot be fetched",
                    ))
                }
            },
            (None, None) => Err(invalid_client("the client has no registered keys")),
        }
    }

    /// Checks the assertion's signature with `jwk`, and its `aud`, `iss` and
    /// `sub`; its `exp` is checked by `one_time_proof`.
    fn verify_signature(
        &self,
        assertion: &str,
        jwk: &Jwk,
        alg: Algorithm,
        client_id: &str,
    ) -> Result<(), OAuthError> {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid_client(format!("the registered key is not usable: {e}")))?;
        let mut v = Validation::new(alg);
        v.set_audience(&[&self.token_url]);
        v.set_issuer(&[client_id]);
        v.sub = Some(client_id.to_string());
        v.validate_exp = false; // against the service clock, in one_time_proof
        v.required_spec_claims = ["exp", "iss", "sub", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        jsonwebtoken::decode::<Value>(assertion, &key, &v)
            .map_err(|e| invalid_client(format!("the client assertion does not verify: {e}")))?;
        Ok(())
    }

    /// The assertion's `jti` and when it may be forgotten, once its `exp`
    /// is found neither past nor too far ahead on the service clock.
    fn one_time_proof(&self, claims: AssertionClaims) -> Result<OneTimeProof, OAuthError> {
        let now = self.clock.now().timestamp();
        let exp = claims.exp.unwrap_or(0);
        if exp <= now - LEEWAY_SECONDS {
            return Err(invalid_client("the client assertion has expired"));
        }
        if exp > now + MAX_ASSERTION_SECONDS + LEEWAY_SECONDS {
            return Err(invalid_client(
                "the client assertion's exp is more than 5 minutes ahead",
            ));
        }
        // (jsonwebtoken's required claims do not cover jti: checked here.)
        let jti = claims
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid_client("the client assertion has no jti"))?;
        let expires = chrono::DateTime::from_timestamp(exp, 0).unwrap_or_else(chrono::Utc::now);
        Ok(OneTimeProof { jti, expires })
    }

    /// Records the assertion's `jti`; an assertion already used for a
    /// token is refused.
    async fn spend(&self, client_id: &str, proof: OneTimeProof) -> Result<(), OAuthError> {
        match self
            .clients
            .remember_jti(client_id, &proof.jti, proof.expires)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(invalid_client("this assertion's jti was already used")),
            Err(e) => {
                // The cause goes to the log; the client gets our words only.
                tracing::error!(error = %e, "token endpoint: the replay guard failed");
                Err(unavailable(
                    "the authorization server cannot record the assertion",
                ))
            }
        }
    }

    /// `[base]/.well-known/smart-configuration`
    pub fn smart_configuration(&self) -> Value {
        json!({
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/*.read", "system/*.rs", "system/*.write", "system/*.cud"],
            "capabilities": ["client-confidential-asymmetric"],
        })
    }
}

/// The scopes a token request is granted. Each requested `system/` scope is
/// narrowed to what the client's registration allows on its types (so
/// `system/*.cruds` for a read-only client becomes `system/*.rs`). Scopes
/// with nothing left (`system/Patient.cu` for a reader, `patient/*.read`,
/// `launch`) are left out, as RFC 6749 §3.3 allows; a request left with
/// nothing is `invalid_scope`. The response names what was granted, in v1
/// form (`read`, `write`) when the request was and the grant is whole.
fn grant_scopes(requested: &str, allowed: &str) -> Result<String, OAuthError> {
    if requested.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            "scope is required, e.g. system/*.read",
        ));
    }
    let allowed = Access::from_scopes(allowed);
    let mut granted: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for scope in requested.split_whitespace() {
        let (target, asked) = match parse_requested(scope) {
            Ok(parsed) => parsed,
            Err(why) => {
                refused.push(format!("'{scope}': {why}"));
                continue;
            }
        };
        let v1 = scope.ends_with(".read") || scope.ends_with(".write") || scope.ends_with(".*");
        // `*` grants what the registration allows on every type, plus per
        // type what it allows only there.
        let mut targets = vec![target.to_string()];
        let mut everywhere = Perms::default();
        if target == "*" {
            everywhere = asked.and(allowed.perms_on("*"));
            targets.extend(registered_types(&allowed));
        }
        let mut any = false;
        for t in targets {
            let mut g = asked.and(allowed.perms_on(&t));
            if t != "*" {
                g = g.without(everywhere);
            }
            if g.is_empty() {
                continue;
            }
            any = true;
            let names: Vec<String> = match (v1, g.is_read(), g.is_write()) {
                (true, true, _) => vec![format!("system/{t}.read")],
                (true, _, true) => vec![format!("system/{t}.write")],
                _ => vec![format!("system/{t}.{}", g.letters())],
            };
            for name in names {
                if !granted.contains(&name) {
                    granted.push(name);
                }
            }
        }
        if !any {
            refused.push(format!(
                "'{scope}': not among the scopes this client may be granted"
            ));
        }
    }
    if granted.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            format!(
                "no requested scope is among those this client may be granted \
                 (system/*.read or system/*.rs, per type, and write scopes where \
                 the registration allows them); {}",
                refused.join("; ")
            ),
        ));
    }
    Ok(granted.join(" "))
}

/// The types a registration names in any of its scopes.
fn registered_types(allowed: &Access) -> Vec<String> {
    let mut types = std::collections::BTreeSet::new();
    for t in [
        &allowed.types,
        &allowed.creates,
        &allowed.updates,
        &allowed.deletes,
    ] {
        if let TypeAccess::Only(set) = t {
            types.extend(set.iter().cloned());
        }
    }
    types.into_iter().collect()
}

/// A requested scope's target and permissions, or why it grants nothing.
fn parse_requested(scope: &str) -> Result<(&str, Perms), &'static str> {
    let rest = scope
        .strip_prefix("system/")
        .ok_or("only system/ scopes are granted")?;
    let (target, perms) = rest.split_once('.').ok_or("not a SMART scope")?;
    if perms.contains('?') {
        return Err("scopes with search parameters are not granted");
    }
    if target != "*" && !is_resource_type(target) {
        return Err("unknown resource type");
    }
    Perms::parse(perms)
        .ok_or("not a SMART scope")
        .map(|p| (target, p))
}

#[cfg(test)]
mod tests {
    use super::grant_scopes;

    #[test]
    fn grants_read_system_scopes_within_the_registration() {
        assert_eq!(
            grant_scopes(
                "system/Patient.read  system/Observation.rs",
                "system/*.read"
            )
            .unwrap(),
            "system/Patient.read system/Observation.rs"
        );
        // Wider than allowed or than read: narrowed, and named.
        for (asked, allowed, granted) in [
            ("system/*.*", "system/*.read", "system/*.read"),
            ("system/*.cruds", "system/*.read", "system/*.rs"),
            ("system/Patient.cruds", "system/*.read", "system/Patient.rs"),
            ("system/Patient.cru", "system/*.read", "system/Patient.r"),
            (
                "system/*.read",
                "system/Patient.read",
                "system/Patient.read",
            ),
            (
                "system/Patient.cu system/Observation.read launch",
                "system/*.read",
                "system/Observation.read",
            ),
        ] {
            assert_eq!(grant_scopes(asked, allowed).unwrap(), granted, "{asked}");
        }
        for bad in [
            "",
            "patient/*.read",
            "user/Patient.rs",
            "system/Patient.write",
            "system/Patient.cu",
            "system/*.cud",
            "system/Patient.s",
            "system/Nope.read",
            "system/Observation.rs?category=laboratory",
            "launch",
        ] {
            let e = grant_scopes(bad, "system/*.read").unwrap_err();
            assert_eq!(e.error, "invalid_scope", "{bad}");
        }
        assert!(grant_scopes("system/Observation.read", "system/Patient.read").is_err());
    }
}

#[cfg(test)]
mod store_errors {
    use async_trait::async_trait;
    use base64::Engine as _;

    use super::*;
    use crate::clock::SystemClock;
    use crate::ports::{PortError, PortResult};

    /// A client store whose backend is down, with words a client must not see.
    struct Down;

    #[async_trait]
    impl ClientStore for Down {
        async fn put_client(&self, _: &ClientRegistration) -> PortResult<()> {
            unreachable!()
        }
        async fn get_client(&self, _: &str) -> PortResult<Option<ClientRegistration>> {
            Err(PortError::transient(
                "table bulk-export-jobs-prod",
                "connection refused by 10.0.3.7",
            ))
        }
        async fn remember_jti(
            &self,
            _: &str,
            _: &str,
            _: chrono::DateTime<chrono::Utc>,
        ) -> PortResult<bool> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn a_store_outage_is_503_in_our_words() {
        let issuer = TokenIssuer::from_pem(&TokenIssuer::generate_pem(), "iss", "aud").unwrap();
        let server = AuthServer {
            issuer: Arc::new(issuer),
            clients: Arc::new(Down),
            clock: Arc::new(SystemClock),
            token_url: "http://127.0.0.1/auth/token".into(),
            jwks: Arc::default(),
        };
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        // Well-formed enough to reach the client lookup (the signature is
        // checked after it).
        let assertion = format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "ES384", "typ": "JWT"})),
            b64(json!({"iss": "c1", "sub": "c1", "exp": 1, "jti": "j"}))
        );
        let form = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}&scope=system/*.read",
            form_urlencoded::byte_serialize(ASSERTION_TYPE.as_bytes()).collect::<String>()
        );
        let e = server.token(form.as_bytes()).await.unwrap_err();
        assert_eq!((e.status, e.error), (503, "temporarily_unavailable"));
        assert!(!e.description.contains("10.0.3.7") && !e.description.contains("prod"));
        assert!(e.description.contains("retry later"), "{}", e.description);
    }
}
