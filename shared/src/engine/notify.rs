//! Completion events: when an export ends (completed, failed, cancelled),
//! the handling whose write ended it publishes one event: to the event
//! publisher (EventBridge on AWS, folder delivery locally) and to a webhook
//! (a schedule's own, else the owner's registration's, else the service-wide
//! one) as one signed POST, retried with backoff, each attempt recorded on
//! the job. A run of a deleted schedule goes to no webhook. If the handling
//! dies between its write and the POST, the event is lost (the job's status
//! still tells). Receivers should dedupe by `jobId`.
//!
//! The signature is `X-Bulk-Export-Signature: t=<unix seconds>,v1=<hex>`,
//! where `v1` is HMAC-SHA256 with the shared secret over `"<t>.<body>"`
//! (the scheme Stripe and GitHub receivers know), so a receiver checks the
//! sender and rejects replays by the age of `t`.

use super::accounting::usage_so_far;
use super::modify::{modify_job, modify_schedule};
use super::EngineConfig;
use crate::ports::{ClientStore, Clock, EventPublisher, JobStore, ScheduleStore, WorkQueue};
use std::sync::Arc;

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::domain::instant::format_instant;
use crate::domain::job::{manifest, status_url, FileKind, Job, JobState, WorkMessage};
use crate::domain::schedule::{
    check_webhook_url, is_public_ip, DeliveryAttempt, WebhookRefused, RELEASE_OWNER_PREFIX,
};
use crate::domain::usage::Usage;
use crate::ports::{JobEvent, PortError};

pub const SIGNATURE_HEADER: &str = "X-Bulk-Export-Signature";
/// Attempts per event, and the pause before the first retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Four attempts at most take under a minute: well inside a worker's budget.
const TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::domain::schedule::Webhook;

/// The event's JSON body (EventBridge's `detail`, the webhook's body).
pub fn event_body(job: &Job, base_url: &str) -> Value {
    let outcome = match job.state {
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Queued | JobState::Running => "running",
    };
    let outputs = job.files.iter().filter(|f| f.kind == FileKind::Output);
    let resources: u64 = outputs.clone().map(|f| f.count).sum();
    let mut counts = serde_json::Map::new();
    for f in outputs {
        let n = counts
            .get(&f.resource_type)
            .and_then(Value::as_u64)
            .unwrap_or(0);
        counts.insert(f.resource_type.clone(), json!(n + f.count));
    }
    let deleted: u64 = job
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Deleted)
        .map(|f| f.count)
        .sum();
    let status = status_url(base_url, &job.id);
    json!({
        "type": "bulk-export.job-finished",
        "jobId": job.id,
        "kind": if job.request.revisions.is_some() { "revisions" } else { "export" },
        "outcome": outcome,
        "transactionTime": format_instant(job.transaction_time),
        "files": job.files.len(),
        "count": resources,
        "counts": counts,
        "deleted": deleted,
        "error": job.error,
        "status": status,
        "manifest": (job.state == JobState::Completed).then_some(status.clone()),
        "scheduleId": job.run_of.as_ref().map(|r| r.schedule_id.clone()),
        "scheduleName": job.run_of.as_ref().map(|r| r.schedule_name.clone()),
        "run": job.run_of.as_ref().map(|r| r.run),
        "release": job.owner.strip_prefix(RELEASE_OWNER_PREFIX),
    })
}

/// Refuses a client-given webhook whose host resolves to a private,
/// loopback or link-local address (a name checked when the schedule was
/// made may point elsewhere since).
async fn public_target(url: &str) -> Result<(), WebhookRefused> {
    let url = check_webhook_url(url, false)?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(WebhookRefused::Unresolved)?;
    for a in addrs {
        if !is_public_ip(a.ip()) {
            return Err(WebhookRefused::ResolvesPrivate(a.ip()));
        }
    }
    Ok(())
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

/// Tells the world a job has ended: the event, the webhook (queued, then
/// posted by a worker) and the schedule's cursor.
#[derive(Clone)]
pub struct Announcer {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) clients: Arc<dyn ClientStore>,
    pub(crate) schedules: Arc<dyn ScheduleStore>,
    pub(crate) events: Arc<dyn EventPublisher>,
    pub(crate) queue: Arc<dyn WorkQueue>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Announcer {
    /// Announces an ended job: moves its schedule's cursor, publishes the
    /// event, and queues the webhook's POST (a receiver that is slow or
    /// down must not hold the request or handling that ended the job).
    /// Never fails the job.
    pub(crate) async fn announce(&self, job: &Job) {
        self.chain_cursor(job).await;
        let (detail, usage) = self.event_detail(job).await;
        let event = JobEvent {
            usage,
            job: job.clone(),
            manifest: (job.state == JobState::Completed).then(|| {
                manifest(
                    job,
                    &self.config.base_url,
                    self.config.requires_access_token,
                )
            }),
            detail,
        };
        if let Err(e) = self.events.publish(&event).await {
            tracing::warn!(job = %job.id, error = %e, "the completion event was not published");
        }
        if self.webhook_of(job).await.is_some() {
            let message = WorkMessage::Announce {
                job_id: job.id.clone(),
            };
            if let Err(e) = self.queue.send(&[message]).await {
                tracing::warn!(job = %job.id, error = %e, "the webhook's POST was not queued");
            }
        }
    }

    /// The event's body, with what the job has consumed so far.
    async fn event_detail(&self, job: &Job) -> (Value, Usage) {
        let mut detail = event_body(job, &self.config.base_url);
        let usage = usage_so_far(&*self.jobs, &job.id).await;
        detail["usage"] = json!(usage);
        (detail, usage)
    }

    /// The worker's part of `announce`: posts the event to the job's
    /// webhook, unless a delivery already succeeded (a repeated message).
    pub(crate) async fn post_webhook(&self, job_id: &str) {
        let job = match self.jobs.get_job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "webhook: the job could not be read");
                return;
            }
        };
        if job.deliveries.iter().any(|d| d.delivered) {
            return;
        }
        let Some((hook, client_given)) = self.webhook_of(&job).await else {
            return;
        };
        if client_given && !self.config.allow_private_webhooks {
            if let Err(why) = public_target(&hook.url).await {
                tracing::warn!(job = %job.id, %why, "webhook refused");
                let attempt = DeliveryAttempt {
                    at: self.clock.now(),
                    attempt: 1,
                    status: None,
                    error: Some(why.to_string()),
                    delivered: false,
                };
                self.record_delivery(&job.id, attempt).await;
                return;
            }
        }
        let body = self.event_detail(&job).await.0.to_string();
        self.post_event(&job, &hook, &body).await;
    }

    /// A schedule's run goes to its schedule's webhook (none once the
    /// schedule is deleted); other jobs, and runs of schedules without one,
    /// to the owner's registered webhook, else the service-wide one. The
    /// flag says the URL is a client's choice (a schedule's), not an
    /// administrator's.
    async fn webhook_of(&self, job: &Job) -> Option<(Webhook, bool)> {
        if let Some(run) = &job.run_of {
            match self.schedules.get_schedule(&run.schedule_id).await {
                Ok(Some(s)) if s.webhook.is_some() => return s.webhook.map(|w| (w, true)),
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "could not read the run's schedule");
                    return None;
                }
            }
        }
        let registered = match self.clients.get_client(&job.owner).await {
            Ok(Some(c)) => c.webhook,
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not read the owner's webhook");
                None
            }
        };
        registered
            .or_else(|| self.config.webhook.clone())
            .map(|w| (w, false))
    }

    async fn post_event(&self, job: &Job, hook: &Webhook, body: &str) {
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no HTTP client for webhooks");
                return;
            }
        };
        let mut pause = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let at = self.clock.now();
            let sent = client
                .post(&hook.url)
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, sign(&hook.secret, at, body))
                .body(body.to_string())
                .send()
                .await;
            let record = match sent {
                Ok(r) => DeliveryAttempt {
                    at,
                    attempt,
                    status: Some(r.status().as_u16()),
                    error: None,
                    delivered: r.status().is_success(),
                },
                Err(e) => DeliveryAttempt {
                    at,
                    attempt,
                    status: None,
                    error: Some(e.to_string()),
                    delivered: false,
                },
            };
            let delivered = record.delivered;
            if delivered {
                tracing::info!(job = %job.id, attempt, "webhook delivered");
            } else {
                tracing::warn!(job = %job.id, attempt, status = ?record.status, error = ?record.error, "webhook not delivered");
            }
            self.record_delivery(&job.id, record).await;
            if delivered {
                return;
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }

    /// Adds a delivery attempt to the job's record (best effort).
    async fn record_delivery(&self, job_id: &str, attempt: DeliveryAttempt) {
        let recorded = modify_job(&*self.jobs, job_id, |job| {
            job.deliveries.push(attempt.clone());
            Ok::<_, PortError>(true)
        })
        .await;
        if let Err(e) = recorded {
            tracing::warn!(job = %job_id, error = %e, "delivery attempt not recorded");
        }
    }

    /// Moves an incremental schedule's cursor to a completed run's
    /// `transactionTime` (never backwards: runs may finish out of order).
    /// If this is lost, the next run repeats some changes; none are missed.
    pub(crate) async fn chain_cursor(&self, job: &Job) {
        let Some(run) = &job.run_of else { return };
        if job.state != JobState::Completed {
            return;
        }
        let moved = modify_schedule(&*self.schedules, &run.schedule_id, |s| {
            if s.cursor.is_some_and(|c| c >= job.transaction_time) {
                return Ok::<_, PortError>(false);
            }
            s.cursor = Some(job.transaction_time);
            Ok(true)
        })
        .await;
        if let Err(e) = moved {
            tracing::warn!(job = %job.id, error = %e, "schedule cursor not moved");
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
