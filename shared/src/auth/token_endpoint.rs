//! `POST /auth/token`: the SMART Backend Services token endpoint.
//!
//! A client proves who it is with a JWT signed by one of its registered keys
//! (`private_key_jwt`, RFC 7523): `iss` = `sub` = client id, `aud` = this
//! URL, `exp` at most five minutes ahead, a `jti` never seen before. Every
//! failure of that proof is `invalid_client` (as SMART requires); bad scopes
//! are `invalid_scope`. Errors follow RFC 6749 §5.2.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::issuer::{TokenIssuer, ACCESS_TOKEN_SECONDS};
use crate::domain::access::{is_v2_permission, Access, TypeAccess};
use crate::domain::fhir_types::is_resource_type;
use crate::ports::{ClientStore, Clock};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const SIGNING_ALGS: &[&str] = &["RS384", "ES384", "RS256", "ES256"];
/// An assertion may not claim to live longer than this.
const MAX_ASSERTION_SECONDS: i64 = 300;
/// Tolerated clock difference with clients.
const LEEWAY_SECONDS: i64 = 30;

/// A registered client: its keys, what it may ask for, and its Groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRegistration {
    pub client_id: String,
    /// The client's public keys (a JWKS document).
    #[serde(default)]
    pub jwks: Option<Value>,
    /// Where the client publishes its keys; an assertion's `jku` header
    /// must equal it.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Scopes the client may be granted (space-separated system scopes).
    pub scope: String,
    /// Groups the client is limited to; `None` means no limit.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

impl ClientRegistration {
    /// Checks a registration before it is stored: it names its keys, and a
    /// JWKS given inline is a valid key set.
    pub fn check(&self) -> Result<(), String> {
        if self.jwks.is_none() && self.jwks_url.is_none() {
            return Err("give the client's keys: --jwks-file (or --jwks-url)".into());
        }
        if let Some(jwks) = &self.jwks {
            serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(jwks.clone())
                .map_err(|e| format!("the JWKS is not a valid key set: {e}"))?;
        }
        Ok(())
    }
}

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
        let token = self
            .issuer
            .issue(&client.client_id, &granted, client.groups.clone(), now);
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
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
        let alg = header.alg;
        if !matches!(
            alg,
            Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(invalid_client(format!(
                "alg {alg:?} is not accepted; use one of {SIGNING_ALGS:?}"
            )));
        }
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
        let client = match self.clients.get_client(&client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(invalid_client("unknown client")),
            Err(e) => {
                return Err(OAuthError {
                    status: 503,
                    error: "temporarily_unavailable",
                    description: e.to_string(),
                })
            }
        };
        if let Some(jku) = &header.jku {
            if client.jwks_url.as_deref() != Some(jku.as_str()) {
                return Err(invalid_client(
                    "the assertion's jku is not the client's registered JWKS URL",
                ));
            }
        }
        let jwk = match (&client.jwks, &client.jwks_url) {
            (Some(jwks), _) => {
                let jwks: JwkSet = serde_json::from_value(jwks.clone())
                    .map_err(|_| invalid_client("the client's registered key set is not usable"))?;
                match &header.kid {
                    Some(kid) => jwks.find(kid).cloned(),
                    None if jwks.keys.len() == 1 => jwks.keys.first().cloned(),
                    None => None,
                }
                .ok_or_else(|| invalid_client("no registered key matches the assertion's kid"))?
            }
            (None, Some(url)) => self
                .jwks
                .key(url, header.kid.as_deref())
                .await
                .map_err(|e| invalid_client(format!("the client's keys: {e}")))?,
            (None, None) => return Err(invalid_client("the client has no registered keys")),
        };
        let jwk = &jwk;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid_client(format!("the registered key is not usable: {e}")))?;
        let mut v = Validation::new(alg);
        v.set_audience(&[&self.token_url]);
        v.set_issuer(&[&client_id]);
        v.sub = Some(client_id.clone());
        v.validate_exp = false; // against the service clock, below
        v.required_spec_claims = ["exp", "iss", "sub", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        jsonwebtoken::decode::<Value>(assertion, &key, &v)
            .map_err(|e| invalid_client(format!("the client assertion does not verify: {e}")))?;
        let now = self.clock.now().timestamp();
        let exp = unverified.exp.unwrap_or(0);
        if exp <= now - LEEWAY_SECONDS {
            return Err(invalid_client("the client assertion has expired"));
        }
        if exp > now + MAX_ASSERTION_SECONDS + LEEWAY_SECONDS {
            return Err(invalid_client(
                "the client assertion's exp is more than 5 minutes ahead",
            ));
        }
        // (jsonwebtoken's required claims do not cover jti: checked here.)
        let jti = unverified
            .jti
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid_client("the client assertion has no jti"))?;
        let expires = chrono::DateTime::from_timestamp(exp, 0).unwrap_or_else(chrono::Utc::now);
        Ok((client, OneTimeProof { jti, expires }))
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
                Err(OAuthError {
                    status: 503,
                    error: "temporarily_unavailable",
                    description:
                        "the authorization server cannot record the assertion; retry later".into(),
                })
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
            "scopes_supported": ["system/*.read", "system/*.rs"],
            "capabilities": ["client-confidential-asymmetric"],
        })
    }
}

/// The scopes a token request is granted. Each requested `system/` scope is
/// narrowed to its read part (`.read`, or `r`/`s` of v2), since servers
/// "should avoid granting .* and prefer .read", and to the types the
/// client's registration covers. Scopes with nothing left (`system/Patient.cu`,
/// `patient/*.read`, `launch`) are left out, as RFC 6749 §3.3 allows; a
/// request left with nothing is `invalid_scope`. The response names what
/// was granted.
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
        match read_part(scope) {
            Ok((target, perms)) => {
                let targets: Vec<String> = match (target, &allowed.types) {
                    ("*", TypeAccess::All) => vec!["*".into()],
                    ("*", TypeAccess::Only(types)) => types.iter().cloned().collect(),
                    (t, _) if allowed.can_read(t) => vec![t.to_string()],
                    _ => {
                        refused.push(format!(
                            "'{scope}': not among the scopes this client may be granted"
                        ));
                        continue;
                    }
                };
                for t in targets {
                    let g = format!("system/{t}.{perms}");
                    if !granted.contains(&g) {
                        granted.push(g);
                    }
                }
            }
            Err(why) => refused.push(format!("'{scope}': {why}")),
        }
    }
    if granted.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            format!(
                "no requested scope grants read access (only read access is granted: \
                 system/*.read or system/*.rs, or per type); {}",
                refused.join("; ")
            ),
        ));
    }
    Ok(granted.join(" "))
}

/// The read part of one scope: its target (`*` or a type) and the
/// permissions to grant (`read`, `rs` or `r`), or why it grants nothing.
fn read_part(scope: &str) -> Result<(&str, &'static str), &'static str> {
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
    let read = match perms {
        "read" | "*" => "read",
        p if is_v2_permission(p) && p.contains('r') && p.contains('s') => "rs",
        p if is_v2_permission(p) && p.contains('r') => "r",
        "write" => return Err("write access is not granted"),
        p if is_v2_permission(p) => return Err("grants no read access"),
        _ => return Err("not a SMART scope"),
    };
    Ok((target, read))
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
