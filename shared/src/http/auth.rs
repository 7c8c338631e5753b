//! Who is calling. Open mode (first tries, local) makes every caller the one
//! anonymous subject; the authorization issue plugs in verified tokens here.

use async_trait::async_trait;
use http::HeaderMap;

use crate::domain::access::Access;
use crate::domain::ApiError;
use crate::engine::Caller;

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

/// Bearer access tokens from the built-in issuer: verified (signature,
/// `alg`, `iss`, `aud`, `exp`), then turned into the caller they name.
pub struct TokenAuthenticator {
    pub issuer: std::sync::Arc<crate::auth::TokenIssuer>,
    pub clock: std::sync::Arc<dyn crate::ports::Clock>,
}

/// A 401 with the `WWW-Authenticate` challenge of RFC 6750.
fn unauthorized(error: Option<&str>, description: &str) -> ApiError {
    let challenge = match error {
        Some(e) => format!(
            "Bearer realm=\"bulk-export\", error=\"{e}\", error_description=\"{description}\""
        ),
        None => "Bearer realm=\"bulk-export\"".to_string(),
    };
    ApiError::new(401, "login", description.to_string()).with_header("WWW-Authenticate", challenge)
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
        let claims = self.issuer.verify(token, self.clock.now()).map_err(|why| {
            unauthorized(
                Some("invalid_token"),
                &format!("The access token is not valid: {why}"),
            )
        })?;
        let groups = claims.groups.map(|g| g.into_iter().collect());
        Ok(Caller {
            subject: claims.sub,
            access: Access::from_scopes(&claims.scope).with_groups(groups),
        })
    }
}
