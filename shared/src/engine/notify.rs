//! Completion events: when an export ends (completed, failed), its owner's
//! webhook (from the client's registration, or the service-wide one) gets
//! one signed POST, retried with backoff. The handling whose write ended the
//! job sends it, so a job is announced once; if that handling dies between
//! the write and the POST, the event is lost (the job's status still tells).
//! Receivers should still dedupe by `jobId`.
//!
//! The signature is `X-Bulk-Export-Signature: t=<unix seconds>,v1=<hex>`,
//! where `v1` is HMAC-SHA256 with the shared secret over `"<t>.<body>"`
//! (the scheme Stripe and GitHub receivers know), so a receiver checks the
//! sender and rejects replays by the age of `t`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use super::Engine;
use crate::domain::instant::format_instant;
use crate::domain::job::{status_url, Job, JobState};

pub const SIGNATURE_HEADER: &str = "X-Bulk-Export-Signature";
/// Attempts per event, and the pause before the first retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go and the secret they are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

/// The event's JSON body.
pub fn event_body(job: &Job, base_url: &str) -> Value {
    let outcome = match job.state {
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Queued | JobState::Running => "running",
    };
    let resources: u64 = job.files.iter().map(|f| f.count).sum();
    json!({
        "type": "bulk-export.job-finished",
        "jobId": job.id,
        "kind": if job.request.revisions.is_some() { "revisions" } else { "export" },
        "outcome": outcome,
        "transactionTime": format_instant(job.transaction_time),
        "files": job.files.len(),
        "count": resources,
        "error": job.error,
        "status": status_url(base_url, &job.id),
    })
}

/// The signature header's value for `body` sent at `at`.
pub fn sign(secret: &str, at: DateTime<Utc>, body: &str) -> String {
    let t = at.timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

impl Engine {
    /// Announces a finished job to its owner's webhook, if there is one.
    /// Never fails the job: a receiver that stays down is logged.
    pub(crate) async fn announce(&self, job: &Job) {
        let registered = match self.ports.clients.get_client(&job.owner).await {
            Ok(Some(c)) => c.webhook,
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not read the owner's webhook");
                None
            }
        };
        let Some(hook) = registered.or_else(|| self.config.webhook.clone()) else {
            return;
        };
        let body = event_body(job, &self.config.base_url).to_string();
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no HTTP client for webhooks");
                return;
            }
        };
        let mut pause = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let signature = sign(&hook.secret, self.ports.clock.now(), &body);
            let sent = client
                .post(&hook.url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(job = %job.id, attempt, "webhook delivered");
                    return;
                }
                Ok(r) => {
                    tracing::warn!(job = %job.id, attempt, status = r.status().as_u16(), "webhook refused")
                }
                Err(e) => tracing::warn!(job = %job.id, attempt, error = %e, "webhook failed"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_time_and_body() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        // Independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign("s3cret", at, r#"{"a":1}"#),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
        assert_ne!(sign("other", at, "{}"), sign("s3cret", at, "{}"));
    }
}
