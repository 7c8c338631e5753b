//! SMART Backend Services on the client's side: a private key (PEM or
//! JWK), a signed `private_key_jwt` assertion with a fresh `jti` for each
//! token request, and an access token cached until shortly before it
//! expires.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// A client's signing key: ES384 (P-384) or RS384, the two algorithms
/// SMART Backend Services requires servers to accept.
pub struct ClientKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    /// The key id, from the JWK or given.
    pub kid: Option<String>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({:?}, kid {:?})", self.algorithm, self.kid)
    }
}

impl ClientKey {
    /// Reads a private key file: PKCS#8 or PKCS#1 PEM, or a JWK (or a JWKS
    /// whose first private key is used).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = if text.trim_start().starts_with('{') {
            Self::from_jwk(&text)
        } else {
            Self::from_pem(&text)
        };
        key.map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use p384::pkcs8::DecodePrivateKey;
        if p384::SecretKey::from_pkcs8_pem(pem).is_ok() {
            return Self::new(
                Algorithm::ES384,
                EncodingKey::from_ec_pem(pem.as_bytes()),
                None,
            );
        }
        if pem.contains("RSA PRIVATE KEY") || rsa::RsaPrivateKey::from_pkcs8_pem(pem).is_ok() {
            return Self::new(
                Algorithm::RS384,
                EncodingKey::from_rsa_pem(pem.as_bytes()),
                None,
            );
        }
        Err("not a P-384 (ES384) or RSA (RS384) private key in PEM".into())
    }

    pub fn from_jwk(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let jwk = match value.get("keys").and_then(Value::as_array) {
            Some(keys) => keys
                .iter()
                .find(|k| k.get("d").is_some())
                .ok_or("the JWKS holds no private key")?
                .clone(),
            None => value,
        };
        if jwk.get("d").is_none() {
            return Err("the JWK is a public key (it has no \"d\")".into());
        }
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
        match jwk.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                use p384::pkcs8::{EncodePrivateKey, LineEnding};
                // Only the key's own members: the parser refuses others.
                let mut bare = serde_json::Map::new();
                for member in ["kty", "crv", "x", "y", "d"] {
                    if let Some(v) = jwk.get(member) {
                        bare.insert(member.into(), v.clone());
                    }
                }
                let secret = p384::SecretKey::from_jwk_str(&Value::Object(bare).to_string())
                    .map_err(|e| format!("not a P-384 JWK: {e}"))?;
                let pem = secret
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| e.to_string())?;
                Self::new(
                    Algorithm::ES384,
                    EncodingKey::from_ec_pem(pem.as_bytes()),
                    kid,
                )
            }
            Some("RSA") => {
                use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
                let part = |name: &str| -> Result<rsa::BigUint, String> {
                    let text = jwk
                        .get(name)
                        .and_then(Value::as_str)
                        .ok_or(format!("the RSA JWK has no \"{name}\""))?;
                    let bytes = URL_SAFE_NO_PAD
                        .decode(text)
                        .map_err(|e| format!("\"{name}\" is not base64url: {e}"))?;
                    Ok(rsa::BigUint::from_bytes_be(&bytes))
                };
                let key = rsa::RsaPrivateKey::from_components(
                    part("n")?,
                    part("e")?,
                    part("d")?,
                    vec![part("p")?, part("q")?],
                )
                .map_err(|e| format!("not a usable RSA key: {e}"))?;
                let pem = key
                    .to_pkcs1_pem(LineEnding::LF)
                    .map_err(|e| e.to_string())?;
                Self::new(
                    Algorithm::RS384,
                    EncodingKey::from_rsa_pem(pem.as_bytes()),
                    kid,
                )
            }
            other => Err(format!(
                "unsupported JWK key type {other:?} (EC P-384 or RSA)"
            )),
        }
    }

    fn new(
        algorithm: Algorithm,
        encoding: Result<EncodingKey, jsonwebtoken::errors::Error>,
        kid: Option<String>,
    ) -> Result<Self, String> {
        Ok(ClientKey {
            algorithm,
            encoding: encoding.map_err(|e| e.to_string())?,
            kid,
        })
    }

    /// A `private_key_jwt` assertion for `token_url`, valid 5 minutes, with
    /// a `jti` never used before.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": token_url,
            "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// Who the client is to a SMART server.
#[derive(Debug)]
pub struct Credentials {
    pub client_id: String,
    pub key: ClientKey,
    /// The scopes asked for, e.g. `system/*.read`.
    pub scope: String,
    /// The token endpoint; found through the server's
    /// `.well-known/smart-configuration` when not given.
    pub token_url: Option<String>,
}

/// Access tokens for one server, fetched on first need and again shortly
/// before each expires (or when the server refuses one).
pub struct TokenSource {
    credentials: Credentials,
    token_url: String,
    cached: Mutex<Option<Cached>>,
    fetched: AtomicU64,
}

struct Cached {
    token: String,
    /// When to fetch a new one: before the server's expiry, by a fifth of
    /// the token's life (at most a minute), so a request never carries one
    /// about to lapse.
    renew_at: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("getting an access token from {url}: {why}")]
pub struct TokenError {
    pub url: String,
    pub why: String,
}

impl TokenSource {
    /// For the server at `base` (its FHIR base URL): the token endpoint is
    /// the one given, or the one its SMART configuration names.
    pub async fn discover(
        http: &reqwest::Client,
        base: &str,
        credentials: Credentials,
    ) -> Result<Self, TokenError> {
        let token_url = match &credentials.token_url {
            Some(url) => url.clone(),
            None => smart_token_endpoint(http, base).await?,
        };
        Ok(TokenSource {
            credentials,
            token_url,
            cached: Mutex::new(None),
            fetched: AtomicU64::new(0),
        })
    }

    /// A token that is good for a while yet; `renew` discards the cached
    /// one first (the server refused it).
    pub async fn token(&self, http: &reqwest::Client, renew: bool) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if !renew && Instant::now() < c.renew_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.request(http).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Tokens fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    async fn request(&self, http: &reqwest::Client) -> Result<Cached, TokenError> {
        let fail = |why: String| TokenError {
            url: self.token_url.clone(),
            why,
        };
        let c = &self.credentials;
        let assertion = c
            .key
            .assertion(&c.client_id, &self.token_url)
            .map_err(fail)?;
        let asked = Instant::now();
        let resp = http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", c.scope.as_str()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let said = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(fail(format!("{status}: {said}")));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("the answer has no access_token".into()))?;
        // Without expires_in, assume the SMART maximum of 5 minutes.
        let life = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300);
        let life = Duration::from_secs(life);
        let margin = (life / 5).min(Duration::from_secs(60));
        self.fetched.fetch_add(1, Ordering::Relaxed);
        Ok(Cached {
            token: token.to_string(),
            renew_at: asked + life - margin,
        })
    }
}

/// The token endpoint of the server at `base`, from its SMART configuration.
async fn smart_token_endpoint(http: &reqwest::Client, base: &str) -> Result<String, TokenError> {
    let url = format!(
        "{}/.well-known/smart-configuration",
        base.trim_end_matches('/')
    );
    let fail = |why: String| TokenError {
        url: url.clone(),
        why,
    };
    let resp = http
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "{} (give the token endpoint with --token-url)",
            resp.status()
        )));
    }
    let config: Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
    config
        .get("token_endpoint")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| fail("its SMART configuration names no token_endpoint".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_of(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn p384_keys_sign_es384_from_pem_and_jwk_with_fresh_jtis() {
        use p384::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p384::SecretKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut jwk: Value = serde_json::from_str(&secret.to_jwk_string()).unwrap();
        jwk["kid"] = json!("k1");
        let jwks = json!({"keys": [jwk]}).to_string();
        for key in [
            ClientKey::from_pem(&pem).unwrap(),
            ClientKey::from_jwk(&jwks).unwrap(),
        ] {
            let a = key.assertion("c1", "https://x/token").unwrap();
            let b = key.assertion("c1", "https://x/token").unwrap();
            let header = jsonwebtoken::decode_header(&a).unwrap();
            assert_eq!(header.alg, Algorithm::ES384);
            let (ca, cb) = (claims_of(&a), claims_of(&b));
            assert_eq!(ca["iss"], "c1");
            assert_eq!(ca["aud"], "https://x/token");
            assert_ne!(ca["jti"], cb["jti"], "each assertion has its own jti");
            // It verifies with the public key.
            let public = secret.public_key().to_jwk_string();
            let public: jsonwebtoken::jwk::Jwk = serde_json::from_str(&public).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&public).unwrap();
            let mut v = jsonwebtoken::Validation::new(Algorithm::ES384);
            v.set_audience(&["https://x/token"]);
            jsonwebtoken::decode::<Value>(&a, &decoding, &v).unwrap();
        }
        assert_eq!(
            ClientKey::from_jwk(&jwks).unwrap().kid.as_deref(),
            Some("k1")
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        assert!(ClientKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        )
        .is_err());
        let public = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}).to_string();
        assert!(ClientKey::from_jwk(&public)
            .unwrap_err()
            .contains("public key"));
        let okp = json!({"kty": "OKP", "d": "AA"}).to_string();
        assert!(ClientKey::from_jwk(&okp)
            .unwrap_err()
            .contains("unsupported"));
    }
}
