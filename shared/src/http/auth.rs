//! Who is calling. Open mode (first tries, local) makes every caller the one
//! anonymous subject; the authorization issue plugs in verified tokens here.

use async_trait::async_trait;
use http::HeaderMap;

use crate::auth::jwks::JwksError;
use crate::auth::TokenError;
use crate::domain::access::Access;
use crate::engine::Caller;
use crate::http::ApiError;

#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The verified caller, or a 401 OperationOutcome.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError>;
}

/// No tokens: every request is the anonymous subject.
pub struct OpenAccess;

#[async_trait]
impl Authenticator for OpenAccess {
    async fn authenticate(&self, _headers: &HeaderMap) -> Result<Caller, ApiError> {
        Ok(Caller::anonymous())
    }
}

/// Bearer access tokens from the built-in issuer, or from an external one
/// whose keys are at a JWKS URL: verified (signature, `alg`, `iss`, `aud`,
/// `exp`), then turned into the caller they name.
pub struct TokenAuthenticator {
    pub issuer: std::sync::Arc<crate::auth::TokenIssuer>,
    pub clock: std::sync::Arc<dyn crate::ports::Clock>,
    pub external: Option<ExternalIssuer>,
}

/// An identity provider trusted besides the built-in one.
pub struct ExternalIssuer {
    /// Its `iss` value.
    pub issuer: String,
    pub jwks_url: String,
    pub jwks: std::sync::Arc<crate::auth::JwksCache>,
}

/// Seconds a client is told to wait when the issuer's keys are out of reach.
const ISSUER_RETRY_SECS: u64 = 10;

#[derive(serde::Deserialize)]
struct ExternalClaims {
    sub: String,
    exp: i64,
    #[serde(default)]
    scope: String,
}

impl ExternalIssuer {
    async fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Caller, TokenError> {
        use jsonwebtoken::Algorithm;
        let header = jsonwebtoken::decode_header(token)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::ES256 | Algorithm::ES384
        ) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let jwk = match self.jwks.key(&self.jwks_url, header.kid.as_deref()).await {
            Ok(jwk) => jwk,
            Err(e @ JwksError::NoMatch { .. }) => return Err(TokenError::UnknownKey(e)),
            Err(e) => return Err(TokenError::IssuerUnavailable(e)),
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.validate_exp = false; // against the service clock, below
        v.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let claims = jsonwebtoken::decode::<ExternalClaims>(token, &key, &v)?.claims;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(Caller {
            subject: claims.sub,
            access: Access::from_scopes(&claims.scope),
        })
    }
}

/// A 401 with the `WWW-Authenticate` challenge of RFC 6750.
fn unauthorized(error: Option<&str>, description: &str) -> ApiError {
    let challenge = match error {
        Some(e) => format!(
            "Bearer realm=\"bulk-export\", error=\"{e}\", error_description=\"{description}\""
        ),
        None => "Bearer realm=\"bulk-export\"".to_string(),
    };
    ApiError::unauthorized(description.to_string(), challenge)
}

#[async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthorized(
                None,
                "An access token is required (Authorization: Bearer ...)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    Some("invalid_request"),
                    "The Authorization header must be 'Bearer <token>'",
                )
            })?;
        let invalid = |why: TokenError| {
            unauthorized(
                Some("invalid_token"),
                &format!("The access token is not valid: {why}"),
            )
        };
        if let Some(external) = &self.external {
            // Route by the (unverified) issuer; the chosen path verifies it.
            let iss = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
                .ok()
                .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_string));
            if iss.as_deref() == Some(external.issuer.as_str()) {
                let now = self.clock.now().timestamp();
                return match external.verify(token, &self.issuer.audience, now).await {
                    Ok(caller) => Ok(caller),
                    Err(why) if why.is_the_tokens_fault() => Err(invalid(why)),
                    Err(e) => {
                        // The cause goes to the log; the client gets our words.
                        tracing::error!(error = %e, "the external issuer's keys are out of reach");
                        Err(ApiError::unavailable(
                            "The access token's issuer cannot be reached to check its \
                             signature; retry later",
                            ISSUER_RETRY_SECS,
                        ))
                    }
                };
            }
        }
        let claims = self
            .issuer
            .verify(token, self.clock.now())
            .map_err(invalid)?;
        let groups = claims.groups.map(|g| g.into_iter().collect());
        Ok(Caller {
            subject: claims.sub,
            access: Access::from_scopes(&claims.scope)
                .with_groups(groups)
                .with_audit(claims.audit),
        })
    }
}
