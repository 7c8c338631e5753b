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
        let client = self.authenticate(assertion).await?;
        let requested = field("scope").unwrap_or("").trim();
        let granted = grant_scopes(requested, &client.scope)?;
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

    /// Verifies the client assertion; returns the client it proves.
    async fn authenticate(&self, assertion: &str) -> Result<ClientRegistration, OAuthError> {
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
        match self.clients.remember_jti(&client_id, &jti, expires).await {
            Ok(true) => Ok(client),
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

/// The scopes a request may be granted: every requested scope must be a
/// read-only system scope that the client's registration covers.
fn grant_scopes(requested: &str, allowed: &str) -> Result<String, OAuthError> {
    if requested.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            "scope is required, e.g. system/*.read",
        ));
    }
    let allowed = Access::from_scopes(allowed);
    for scope in requested.split_whitespace() {
        let refuse = |why: &str| OAuthError::new("invalid_scope", format!("'{scope}': {why}"));
        let rest = scope
            .strip_prefix("system/")
            .ok_or_else(|| refuse("only system/ scopes are granted"))?;
        let (target, perms) = rest
            .split_once('.')
            .ok_or_else(|| refuse("not a SMART scope"))?;
        let read_only = match perms {
            "read" => true,
            p => is_v2_permission(p) && p.chars().all(|c| c == 'r' || c == 's') && p.contains('r'),
        };
        if !read_only || perms.contains('?') {
            return Err(refuse("only read access is granted (.read or .rs)"));
        }
        let covered = match target {
            "*" => allowed.types == TypeAccess::All,
            t if is_resource_type(t) => allowed.can_read(t),
            _ => return Err(refuse("unknown resource type")),
        };
        if !covered {
            return Err(refuse("not among the scopes this client may be granted"));
        }
    }
    Ok(requested.split_whitespace().collect::<Vec<_>>().join(" "))
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
        assert!(grant_scopes("system/*.read", "system/Patient.read").is_err());
        for bad in [
            "",
            "patient/*.read",
            "user/Patient.rs",
            "system/Patient.write",
            "system/Patient.cruds",
            "system/Patient.s",
            "system/Nope.read",
            "launch",
        ] {
            let e = grant_scopes(bad, "system/*.read").unwrap_err();
            assert_eq!(e.error, "invalid_scope", "{bad}");
        }
    }
}
