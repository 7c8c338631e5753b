//! One poll of an export's status URL (or a manifest page's URL), read as
//! the Bulk Data specification says: `202` while it runs, with
//! `Retry-After` and `X-Progress` (and with `allowPartialManifests`, a page
//! of the files ready so far), `200` with the manifest once it is done.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use crate::fetch::{status_error, FetchError};
use crate::session::Session;

/// How long to wait when a `202` does not say.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// The longest wait honoured: a server asking for more is asked again then.
pub const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// What a poll found.
#[derive(Debug)]
pub enum Poll {
    Running {
        /// `X-Progress`.
        said: Option<String>,
        /// `X-Progress-Percent`.
        percent: Option<u8>,
        retry_after: Duration,
        /// A manifest page of the files ready so far.
        page: Option<Value>,
    },
    Done(Value),
    /// `404` or `410`: no such export (any more).
    Gone,
}

pub async fn poll(session: &Session, url: &str) -> Result<Poll, FetchError> {
    let network = |e: reqwest::Error| FetchError::Network {
        url: url.to_string(),
        cause: e.to_string(),
    };
    let resp = session
        .send(url, true, |http| {
            http.get(url).header("accept", "application/json")
        })
        .await?;
    match resp.status() {
        StatusCode::OK => Ok(Poll::Done(resp.json().await.map_err(network)?)),
        StatusCode::ACCEPTED => {
            let h = resp.headers();
            let said = header(h, "x-progress").map(str::to_string);
            let percent = header(h, "x-progress-percent").and_then(|p| p.trim().parse().ok());
            let retry_after = retry_after(h).unwrap_or(DEFAULT_RETRY);
            let body = resp.bytes().await.map_err(network)?;
            let page = serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|v| v.get("output").is_some() || v.get("link").is_some());
            Ok(Poll::Running {
                said,
                percent,
                retry_after,
                page,
            })
        }
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(Poll::Gone),
        status => Err(status_error(url, status, resp).await),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `Retry-After` in seconds or as an HTTP date, within
/// [`LONGEST_RETRY`].
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let value = header(h, "retry-after")?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(LONGEST_RETRY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(v).unwrap());
            retry_after(&h)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(with("100000"), Some(LONGEST_RETRY));
        let soon = (Utc::now() + chrono::Duration::seconds(30))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let wait = with(&soon).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
