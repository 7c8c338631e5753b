//! Authorization: SMART Backend Services. A built-in token endpoint
//! authenticates registered clients by signed assertions (`private_key_jwt`)
//! and issues short-lived access tokens; the HTTP layer verifies them and
//! turns them into a [`crate::engine::Caller`].

pub mod issuer;
pub mod jwks;
pub mod token_endpoint;

pub use issuer::{AccessClaims, TokenIssuer};
pub use jwks::JwksCache;
pub use token_endpoint::{AuthServer, ClientRegistration, OAuthError};
