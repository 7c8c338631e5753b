//! The built-in issuer's access tokens: ES256 JWTs, at most 300 s long,
//! verified by the same service (and by anyone through its JWKS).

use super::TokenError;
use crate::private_file::write_private;
use std::path::Path;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Access tokens live this long (SMART Backend Services: at most 5 minutes).
pub const ACCESS_TOKEN_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scope: String,
    /// The client's Group allow-list, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The client may export the audit trail (its registration says so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

#[derive(Clone)]
pub struct TokenIssuer {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: Value,
    /// `iss` of issued tokens (the token endpoint's URL).
    pub issuer: String,
    /// `aud` of issued tokens (the FHIR base URL).
    pub audience: String,
    /// How long its tokens live, in seconds.
    pub lifetime_seconds: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("token signing key: {0}")]
pub struct KeyError(String);

impl TokenIssuer {
    /// A new P-256 private key, PKCS#8 PEM.
    pub fn generate_pem() -> String {
        let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        key.to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 encoding of a fresh key")
            .to_string()
    }

    /// From a PKCS#8 PEM P-256 key (on AWS: from a secret parameter).
    pub fn from_pem(pem: &str, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        use p256::pkcs8::DecodePrivateKey;
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| KeyError(e.to_string()))?;
        let jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string())
            .map_err(|e| KeyError(e.to_string()))?;
        // The key id is a digest of the public key, so it changes with the key.
        let kid = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(jwk.to_string().as_bytes());
            d.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let encoding =
            EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        let (x, y) = (
            jwk["x"].as_str().unwrap_or(""),
            jwk["y"].as_str().unwrap_or(""),
        );
        let decoding =
            DecodingKey::from_ec_components(x, y).map_err(|e| KeyError(e.to_string()))?;
        let mut public_jwk = jwk;
        public_jwk["kid"] = json!(kid);
        public_jwk["alg"] = json!("ES256");
        public_jwk["use"] = json!("sig");
        Ok(TokenIssuer {
            kid,
            encoding,
            decoding,
            public_jwk,
            issuer: issuer.into(),
            audience: audience.into(),
            lifetime_seconds: ACCESS_TOKEN_SECONDS,
        })
    }

    /// The same issuer, its tokens living `seconds` (kept within 1 to 300:
    /// SMART Backend Services allows at most 5 minutes).
    pub fn lasting(mut self, seconds: i64) -> Self {
        self.lifetime_seconds = seconds.clamp(1, ACCESS_TOKEN_SECONDS);
        self
    }

    /// Loads the key kept at `path`, creating it (owner-only) on first use.
    pub fn load_or_create(path: &Path, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::from_pem(&Self::load_or_create_pem(path)?, issuer, audience)
    }

    /// The PEM key kept at `path`, created (owner-only) on first use.
    pub fn load_or_create_pem(path: &Path) -> Result<String, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(p) => Ok(p),
            Err(_) => {
                let pem = Self::generate_pem();
                write_private(path, pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
                Ok(pem)
            }
        }
    }

    /// The same key, issuing tokens for another token URL and FHIR base.
    pub fn at(&self, issuer: &str, audience: &str) -> TokenIssuer {
        TokenIssuer {
            issuer: issuer.into(),
            audience: audience.into(),
            ..self.clone()
        }
    }

    pub fn issue(
        &self,
        client_id: &str,
        scope: &str,
        groups: Option<Vec<String>>,
        now: DateTime<Utc>,
    ) -> String {
        self.issue_with_audit(client_id, scope, groups, false, now)
    }

    /// `issue`, for a client that may (or may not) export the audit trail.
    pub fn issue_with_audit(
        &self,
        client_id: &str,
        scope: &str,
        groups: Option<Vec<String>>,
        audit: bool,
        now: DateTime<Utc>,
    ) -> String {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client_id.into(),
            aud: self.audience.clone(),
            exp: now.timestamp() + self.lifetime_seconds,
            iat: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.into(),
            groups,
            audit,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("signing with a valid key")
    }

    /// Checks signature, `alg`, `iss`, `aud` and `exp` (against `now`, so
    /// the service's clock decides). The error says why, for the 401.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.validate_exp = false; // checked below against the service clock
        v.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &v)?;
        if data.claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }

    /// The public key set clients and resource servers verify tokens with.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_verifies_its_own_tokens_only() {
        let a = TokenIssuer::from_pem(
            &TokenIssuer::generate_pem(),
            "https://x/auth/token",
            "https://x/fhir",
        )
        .unwrap();
        let b = TokenIssuer::from_pem(
            &TokenIssuer::generate_pem(),
            "https://x/auth/token",
            "https://x/fhir",
        )
        .unwrap();
        let now = Utc::now();
        let t = a.issue("c1", "system/*.read", None, now);
        let claims = a.verify(&t, now).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.scope.as_str()),
            ("c1", "system/*.read")
        );
        assert!(b.verify(&t, now).is_err(), "another key's token");
        assert!(
            a.verify(&t, now + chrono::Duration::seconds(ACCESS_TOKEN_SECONDS))
                .is_err(),
            "expired"
        );
        let other_aud = TokenIssuer::from_pem(
            &TokenIssuer::generate_pem(),
            "https://x/auth/token",
            "https://y/fhir",
        )
        .unwrap();
        let t2 = other_aud.issue("c1", "system/*.read", None, now);
        assert!(a.verify(&t2, now).is_err());
        assert_eq!(a.jwks()["keys"][0]["kty"], "EC");
    }
}
