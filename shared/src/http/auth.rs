//! Who is calling. Open mode (first tries, local) makes every caller the one
//! anonymous subject; the authorization issue plugs in verified tokens here.

use async_trait::async_trait;
use http::HeaderMap;

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
