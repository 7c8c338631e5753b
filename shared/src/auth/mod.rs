//! Authorization: SMART Backend Services. A built-in token endpoint
//! authenticates registered clients by signed assertions (`private_key_jwt`)
//! and issues short-lived access tokens; the HTTP layer verifies them and
//! turns them into a [`crate::domain::access::Caller`].

pub mod issuer;
pub mod jwks;
pub mod token_endpoint;

pub use issuer::{AccessClaims, TokenIssuer, ACCESS_TOKEN_SECONDS};
pub use jwks::JwksCache;
pub use token_endpoint::{AuthServer, ClientRegistration, OAuthError};

/// Why an access token names no caller.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token we accept: bad signature, `iss`, `aud`, claims or form.
    #[error(transparent)]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("alg {0:?} is not accepted")]
    Algorithm(jsonwebtoken::Algorithm),
    #[error("the token has expired")]
    Expired,
    /// The issuer's key set holds no key for the token.
    #[error(transparent)]
    UnknownKey(jwks::JwksError),
    /// The issuer's keys cannot be fetched: an outage, not the token's
    /// fault, so the client should retry.
    #[error(transparent)]
    IssuerUnavailable(jwks::JwksError),
}

impl TokenError {
    /// Whether the token itself is at fault (401), not an outage (503).
    pub fn is_the_tokens_fault(&self) -> bool {
        !matches!(self, TokenError::IssuerUnavailable(_))
    }
}
