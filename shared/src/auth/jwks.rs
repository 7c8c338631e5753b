//! Public keys fetched from JWKS URLs (a client's registered key set, or an
//! external token issuer's), cached as long as the publisher's
//! `Cache-Control: max-age` allows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};

/// Without a `max-age`, keys are kept this long.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Never longer than this, whatever the publisher says: keys get rotated.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why no key came from a JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The set could not be had: the publisher is unreachable, answered an
    /// error, or sent something that is not a key set. An outage, not the
    /// token's fault: the caller should retry.
    #[error("the key set at {url} cannot be fetched: {detail}")]
    Unavailable { url: String, detail: String },
    /// The set holds no key for the token: the token's fault.
    #[error("no key in {url} matches the token's kid")]
    NoMatch { url: String },
}

pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<String, (JwkSet, Instant)>>,
}

impl Default for JwksCache {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        JwksCache {
            http,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl JwksCache {
    /// The key with `kid` (or the only key when `kid` is absent) from the set
    /// at `url`. A miss refetches once: the publisher may have rotated keys.
    pub async fn key(&self, url: &str, kid: Option<&str>) -> Result<Jwk, JwksError> {
        let pick = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(set) = self.cached(url) {
            if let Some(key) = pick(&set) {
                return Ok(key);
            }
        }
        let set = self.fetch(url).await?;
        pick(&set).ok_or_else(|| JwksError::NoMatch { url: url.into() })
    }

    fn cached(&self, url: &str) -> Option<JwkSet> {
        let entries = self.entries.lock().expect("jwks cache lock");
        entries
            .get(url)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(set, _)| set.clone())
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, JwksError> {
        let unavailable = |detail: String| JwksError::Unavailable {
            url: url.into(),
            detail,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let ttl = cache_ttl(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("not a JWKS: {e}")))?;
        if let Some(ttl) = ttl {
            let mut entries = self.entries.lock().expect("jwks cache lock");
            entries.insert(url.to_string(), (set.clone(), Instant::now() + ttl));
        }
        Ok(set)
    }
}

/// How long a response may be reused: `None` for `no-store`/`no-cache`.
fn cache_ttl(cache_control: Option<&str>) -> Option<Duration> {
    let Some(cc) = cache_control else {
        return Some(DEFAULT_TTL);
    };
    let mut ttl = DEFAULT_TTL;
    for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return None;
        }
        if let Some(secs) = directive
            .strip_prefix("max-age=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            ttl = Duration::from_secs(secs);
        }
    }
    Some(ttl.min(MAX_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_cache_control() {
        assert_eq!(cache_ttl(None), Some(DEFAULT_TTL));
        assert_eq!(
            cache_ttl(Some("public, max-age=60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_ttl(Some("max-age=999999999")), Some(MAX_TTL));
        assert_eq!(cache_ttl(Some("no-store")), None);
        assert_eq!(cache_ttl(Some("max-age=0")), Some(Duration::ZERO));
    }
}
