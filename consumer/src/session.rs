//! The client's HTTP: one connection pool, and a bearer token on the
//! requests that need one (refreshed and sent again once if the server
//! refuses it with 401).

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, RequestBuilder, Response, StatusCode};

use crate::auth::TokenSource;
use crate::fetch::FetchError;

/// An HTTP client, with the server's tokens if it needs them.
#[derive(Clone)]
pub struct Session {
    pub http: Client,
    pub tokens: Option<Arc<TokenSource>>,
}

impl Session {
    /// No credentials (presigned links, open servers).
    pub fn open(http: Client) -> Self {
        Session { http, tokens: None }
    }

    /// The HTTP client every command uses: gzip asked for and undone
    /// while streaming, and a connect timeout (a dead host is an error,
    /// not a hang).
    pub fn http_client() -> Client {
        Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .user_agent(concat!("bulk-export-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds")
    }

    /// Sends the request `build` makes, with a token when `authorized` and
    /// the session has one. A 401 gets one more try with a fresh token.
    pub async fn send(
        &self,
        url: &str,
        authorized: bool,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, FetchError> {
        let network = |e: reqwest::Error| FetchError::Network {
            url: url.to_string(),
            cause: e.to_string(),
        };
        let tokens = self.tokens.as_ref().filter(|_| authorized);
        let Some(tokens) = tokens else {
            return build(&self.http).send().await.map_err(network);
        };
        let mut renew = false;
        loop {
            let token = tokens
                .token(&self.http, renew)
                .await
                .map_err(|e| FetchError::Auth(e.to_string()))?;
            let resp = build(&self.http)
                .bearer_auth(token)
                .send()
                .await
                .map_err(network)?;
            if resp.status() != StatusCode::UNAUTHORIZED || renew {
                return Ok(resp);
            }
            renew = true;
        }
    }

    /// Tokens fetched so far (none without credentials).
    pub fn tokens_fetched(&self) -> u64 {
        self.tokens.as_ref().map_or(0, |t| t.fetched())
    }
}
