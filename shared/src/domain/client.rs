//! A registered client of the token endpoint: its keys, the scopes it may
//! be granted, its Groups, and where its finished exports are announced.
//! Stored by the `ClientStore` port, read by `auth`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schedule::Webhook;

/// Why a registration cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("give the client's keys: --jwks-file (or --jwks-url)")]
    NoKeys,
    #[error("the JWKS is not a valid key set: {0}")]
    BadKeySet(#[source] serde_json::Error),
}

/// A registered client: its keys, what it may ask for, and its Groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
    /// Who the client is, for people: the audit export's "User" and
    /// "User Email ID" columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// May export the audit trail (`$export-revisions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Where the client's finished exports are announced (see
    /// `engine::notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

impl ClientRegistration {
    /// Checks a registration before it is stored: it names its keys, and a
    /// JWKS given inline is a valid key set.
    pub fn check(&self) -> Result<(), RegistrationError> {
        if self.jwks.is_none() && self.jwks_url.is_none() {
            return Err(RegistrationError::NoKeys);
        }
        if let Some(jwks) = &self.jwks {
            serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(jwks.clone())
                .map_err(RegistrationError::BadKeySet)?;
        }
        Ok(())
    }
}
