//! Export schedules and releases.
//!
//! A schedule is a saved kick-off (`$export?_type=...`, relative to the FHIR
//! base) plus a cadence in EventBridge syntax, owned by the client that made
//! it. Each run is an ordinary export job with a deterministic id
//! ([`run_job_id`]), so two schedulers that fire the same due time create
//! the same job, and one of them wins the schedule's conditional update.
//!
//! A release is a named export frozen at its `transactionTime`: the store
//! keeps every version, so its files can be rebuilt exactly at any time.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::instant::format_instant;
use super::request::{query_params, ExportLevel, ExportRequest, KickoffInput, RawParam};
use super::resource::is_valid_id;
use super::schedule_input::SavedExport;
use super::Error;

/// When a schedule runs: EventBridge's `rate(N unit)` or
/// `cron(min hour day-of-month month day-of-week year)`, in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cadence(String);

enum CadenceRule {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl TryFrom<String> for Cadence {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Error> {
        rule_of(&text)?;
        Ok(Cadence(text.trim().to_string()))
    }
}

impl From<Cadence> for String {
    fn from(c: Cadence) -> String {
        c.0
    }
}

impl Cadence {
    pub fn parse(text: &str) -> Result<Self, Error> {
        Self::try_from(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first due time strictly after `after`. A rate counts from
    /// `anchor` (the schedule's start), so its runs do not drift; a cron
    /// expression is absolute. `None` when a cron expression has no
    /// further match (a past year).
    pub fn next_after(&self, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match rule_of(&self.0).ok()? {
            CadenceRule::Every(period) => {
                if after < anchor {
                    return Some(anchor);
                }
                let periods = (after - anchor).num_seconds() / period.num_seconds() + 1;
                Some(anchor + period * periods as i32)
            }
            CadenceRule::Cron(schedule) => schedule.after(&after).next(),
        }
    }
}

fn rule_of(text: &str) -> Result<CadenceRule, Error> {
    let invalid = |why: String| Error::invalid_param("cadence", why);
    let text = text.trim();
    let inner = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|t| t.strip_suffix(')'))
            .map(str::trim)
    };
    if let Some(rate) = inner("rate(") {
        let (value, unit) = rate
            .split_once(' ')
            .ok_or_else(|| invalid(format!("'{text}': a rate is rate(<value> <unit>)")))?;
        let value: i64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| *v > 0 && *v <= 1_000_000)
            .ok_or_else(|| {
                invalid(format!(
                    "'{text}': the rate's value must be a positive integer"
                ))
            })?;
        let unit = match unit.trim() {
            "minute" | "minutes" => Duration::minutes(1),
            "hour" | "hours" => Duration::hours(1),
            "day" | "days" => Duration::days(1),
            other => {
                return Err(invalid(format!(
                    "'{text}': unknown unit '{other}' (minute(s), hour(s) or day(s))"
                )))
            }
        };
        return Ok(CadenceRule::Every(unit * value as i32));
    }
    if let Some(cron) = inner("cron(") {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(invalid(format!(
                "'{text}': a cron expression has six fields (minutes hours day-of-month \
                 month day-of-week year)"
            )));
        }
        if fields[2] != "?" && fields[4] != "?" {
            return Err(invalid(format!(
                "'{text}': as in EventBridge, day-of-month or day-of-week must be '?'"
            )));
        }
        // EventBridge's fields are Quartz's without the seconds.
        let quartz = format!("0 {cron}");
        let schedule = cron::Schedule::from_str(&quartz)
            .map_err(|e| invalid(format!("'{text}' is not a valid cron expression: {e}")))?;
        return Ok(CadenceRule::Cron(Box::new(schedule)));
    }
    Err(invalid(format!(
        "'{text}' is not a schedule expression: use rate(<value> <unit>) or cron(<six fields>)"
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleMode {
    /// Every run exports everything.
    #[default]
    Full,
    /// Every run exports what changed since the previous successful run
    /// (`_since` = its `transactionTime`), deletions included.
    Incremental,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub owner: String,
    /// Names the schedule for people and its delivery folder.
    pub name: String,
    pub cadence: Cadence,
    pub mode: ScheduleMode,
    /// The kick-off, relative to the FHIR base: `$export?_type=Patient`
    /// (empty for a view export).
    #[serde(default)]
    pub export: String,
    /// Or a `$viewdefinition-export` Parameters body: the run writes the
    /// views' rows (CSV, NDJSON or Parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_export: Option<Value>,
    /// What its runs export, parsed when it was created (`None` on
    /// schedules stored before requests were kept typed: see
    /// [`Schedule::saved_export`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<SavedExport>,
    pub created_at: DateTime<Utc>,
    /// Rates count from here.
    pub start_at: DateTime<Utc>,
    #[serde(default)]
    pub paused: bool,
    /// The next due time; `None` while paused (or a cron with no future).
    #[serde(default)]
    pub next_due: Option<DateTime<Utc>>,
    /// Runs made so far; the next is `runs + 1`.
    #[serde(default)]
    pub runs: u64,
    /// Incremental: the `transactionTime` the next run exports changes
    /// after (the newest successful run's, or the release's).
    #[serde(default)]
    pub cursor: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// The `time` of the newest direct invocation that ran it (see
    /// `Schedules::fire_named_schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub version: u64,
}

/// The job of a schedule's run `n`: the same for every scheduler that
/// fires it.
pub fn run_job_id(schedule_id: &str, run: u64) -> String {
    format!("{schedule_id}-run-{run}")
}

/// What a run's job remembers of its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOf {
    pub schedule_id: String,
    pub schedule_name: String,
    pub run: u64,
    /// The due time it was fired for (`None`: run on demand).
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
}

/// Where completion events go and the secret they are signed with (see
/// `engine::notify` for the signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

/// One attempt to deliver a job's completion event to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    pub delivered: bool,
}

/// Whether an address is one a client-given webhook may reach: not the
/// host itself, the private network or link-local addresses (the cloud's
/// metadata and runtime endpoints live there).
pub fn is_public_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // 100.64/10
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_ip(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80) // link local
            }
        },
    }
}

/// Why a client-given webhook URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefused {
    #[error("'{url}' is not a URL: {reason}")]
    NotAUrl {
        url: String,
        reason: url::ParseError,
    },
    #[error("'{0}' is not an http(s) URL")]
    NotHttp(String),
    #[error("'{0}' points into the service's own network; use a public address")]
    PrivateHost(String),
    /// At delivery: the host's name did not resolve.
    #[error("the webhook's host did not resolve: {0}")]
    Unresolved(#[source] std::io::Error),
    /// At delivery: the host's name resolves to a private address.
    #[error("refused: the webhook's host resolves to {0}, inside the service's network")]
    ResolvesPrivate(std::net::IpAddr),
}

/// Checks a client-given webhook URL: `https` (or `http`), and, unless
/// private targets are allowed, no private or loopback host by name or
/// address. The addresses a name resolves to are checked again at each
/// delivery.
pub fn check_webhook_url(text: &str, allow_private: bool) -> Result<url::Url, WebhookRefused> {
    let url = url::Url::parse(text).map_err(|reason| WebhookRefused::NotAUrl {
        url: text.into(),
        reason,
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(WebhookRefused::NotHttp(text.into()));
    }
    if allow_private {
        return Ok(url);
    }
    let private = match url.host() {
        None => true,
        Some(url::Host::Ipv4(ip)) => !is_public_ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => !is_public_ip(ip.into()),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal")
        }
    };
    if private {
        return Err(WebhookRefused::PrivateHost(text.into()));
    }
    Ok(url)
}

/// A name for people and folders: 1-64 of `A-Z a-z 0-9 - . _`, not
/// starting with a dot.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "The {what} name '{name}' must be 1-64 characters of A-Z a-z 0-9 - . _, \
             not starting with '.'"
        )))
    }
}

/// The saved kick-off as the engine's parser takes it. `since` is added as
/// `_since` (incremental runs); the saved kick-off may not carry its own.
pub fn kickoff_of(
    export: &str,
    base_url: &str,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<KickoffInput, Error> {
    let export = export.trim_start_matches('/');
    let (path, query) = export.split_once('?').unwrap_or((export, ""));
    let segs: Vec<&str> = path.split('/').collect();
    let level = match segs.as_slice() {
        ["$export"] => ExportLevel::System,
        ["Patient", "$export"] => ExportLevel::Patient,
        ["Group", id, "$export"] if is_valid_id(id) => ExportLevel::Group {
            group_id: id.to_string(),
        },
        _ => {
            return Err(Error::invalid(format!(
                "export '{export}' is not a kick-off: use $export, Patient/$export or \
                 Group/<id>/$export, with its query string"
            )))
        }
    };
    let mut params = query_params(query)?;
    if params.iter().any(|p| p.name == "_since") && since.is_some() {
        return Err(Error::invalid(
            "An incremental schedule sets _since itself; leave it out of the export",
        ));
    }
    let mut request_url = format!("{base_url}/{export}");
    if let Some(since) = since {
        let since = format_instant(since);
        request_url.push(if query.is_empty() { '?' } else { '&' });
        request_url.push_str(&format!("_since={}", since.replace('+', "%2B")));
        params.push(RawParam::text("_since", &since));
    }
    Ok(KickoffInput {
        level,
        request_url,
        params,
        lenient: false,
        via_post: false,
        now,
    })
}

impl Schedule {
    /// What its runs export: as parsed at its creation, or, for a schedule
    /// stored before that was kept, parsed from what it shows.
    pub fn saved_export(&self, base_url: &str) -> Result<SavedExport, Error> {
        match (&self.request, &self.view_export) {
            (Some(saved), _) => Ok(saved.clone()),
            (None, Some(parameters)) => SavedExport::views(parameters, base_url),
            (None, None) => SavedExport::kickoff(&self.export, base_url),
        }
    }

    /// The URL of the request it saved (a run's manifest `request`, before
    /// an incremental run's `_since`).
    pub fn request_url(&self, base_url: &str) -> String {
        match self.view_export {
            Some(_) => super::view_export::view_export_url(base_url),
            None => format!("{base_url}/{}", self.export),
        }
    }

    /// The schedule as its owner sees it (the webhook's secret left out).
    pub fn view(&self, base_url: &str) -> Value {
        let url = schedule_url(base_url, &self.id);
        json!({
            "id": self.id,
            "name": self.name,
            "cadence": self.cadence.as_str(),
            "mode": self.mode,
            "export": (self.view_export.is_none()).then_some(&self.export),
            "viewExport": self.view_export,
            "status": if self.paused { "paused" } else { "active" },
            "createdAt": format_instant(self.created_at),
            "startAt": format_instant(self.start_at),
            "nextRunAt": self.next_due.map(format_instant),
            "runs": self.runs,
            "cursor": self.cursor.map(format_instant),
            "startFromRelease": self.from_release,
            "webhook": self.webhook.as_ref().map(|w| json!({ "url": w.url })),
            "links": {
                "self": url,
                "runs": format!("{url}/runs"),
                "latestRun": format!("{url}/runs/latest"),
            },
        })
    }
}

pub fn schedule_url(base_url: &str, id: &str) -> String {
    format!("{base_url}/$export-schedules/{id}")
}

/// Owner of a release's jobs: no client id can take this form (client ids
/// are registered by the admin CLI, which refuses `#`).
pub const RELEASE_OWNER_PREFIX: &str = "#release/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub name: String,
    /// The kick-off, relative to the FHIR base.
    pub export: String,
    /// The request as authorized when the release was made (its types
    /// resolved), so every rebuild exports exactly the same.
    pub request: ExportRequest,
    pub transaction_time: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// Bumped each time the files are rebuilt after expiry; the job of
    /// generation `g` is [`release_job_id`].
    #[serde(default)]
    pub generation: u32,
    #[serde(default)]
    pub version: u64,
}

pub fn release_job_id(name: &str, generation: u32) -> String {
    format!("release-{name}-g{generation}")
}

/// The release alias that names the newest release.
pub const LATEST: &str = "latest";

pub fn release_url(base_url: &str, name: &str) -> String {
    format!("{base_url}/$export-releases/{name}")
}

impl Release {
    pub fn job_id(&self) -> String {
        release_job_id(&self.name, self.generation)
    }

    pub fn view(&self, base_url: &str) -> Value {
        let url = release_url(base_url, &self.name);
        json!({
            "name": self.name,
            "transactionTime": format_instant(self.transaction_time),
            "request": self.request.request_url,
            "createdAt": format_instant(self.created_at),
            "manifest": format!("{url}/manifest"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rates_count_from_the_anchor_and_skip_missed_ticks() {
        let c = Cadence::parse("rate(1 day)").unwrap();
        let start = at("2026-01-01T03:00:00Z");
        assert_eq!(c.next_after(start, at("2025-12-01T00:00:00Z")), Some(start));
        assert_eq!(c.next_after(start, start), Some(at("2026-01-02T03:00:00Z")));
        // A week later: the next tick after now, not the seven missed ones.
        assert_eq!(
            c.next_after(start, at("2026-01-08T10:00:00Z")),
            Some(at("2026-01-09T03:00:00Z"))
        );
        let m = Cadence::parse("rate(15 minutes)").unwrap();
        assert_eq!(
            m.next_after(start, at("2026-01-01T03:14:59Z")),
            Some(at("2026-01-01T03:15:00Z"))
        );
    }

    #[test]
    fn cron_fields_are_eventbridges() {
        // 02:30 UTC every day.
        let c = Cadence::parse("cron(30 2 * * ? *)").unwrap();
        let next = c.next_after(at("2026-01-01T00:00:00Z"), at("2026-03-10T05:00:00Z"));
        assert_eq!(next, Some(at("2026-03-11T02:30:00Z")));
        // Day-of-week 2 is Monday in EventBridge (1 = Sunday), as are names.
        for text in ["cron(0 12 ? * 2 *)", "cron(0 12 ? * MON *)"] {
            let next = Cadence::parse(text)
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), at("2026-03-10T05:00:00Z"))
                .unwrap();
            assert_eq!(next.weekday(), Weekday::Mon, "{text}");
            assert_eq!((next.hour(), next.minute()), (12, 0));
        }
        // A past year has no next run.
        let past = Cadence::parse("cron(0 0 1 1 ? 2020)").unwrap();
        assert_eq!(past.next_after(Utc::now(), Utc::now()), None);
    }

    #[test]
    fn bad_cadences_say_what_is_wrong() {
        for (text, words) in [
            ("every day", "not a schedule expression"),
            ("rate(0 days)", "positive integer"),
            ("rate(1 week)", "unknown unit"),
            ("cron(0 12 * * *)", "six fields"),
            ("cron(0 12 * * MON *)", "must be '?'"),
            ("cron(0 25 * * ? *)", "not a valid cron expression"),
        ] {
            let e = Cadence::parse(text).unwrap_err().to_string();
            assert!(e.contains(words), "{text}: {e}");
        }
    }

    #[test]
    fn webhooks_may_not_point_into_the_services_network() {
        for bad in [
            "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
            "http://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/hook",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "https://localhost/hook",
            "https://metadata.google.internal/x",
            "ftp://example.org/hook",
            "not a url",
        ] {
            assert!(check_webhook_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_webhook_url("https://hooks.example.org/bulk", false).is_ok());
        assert!(check_webhook_url("https://93.184.216.34/bulk", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8081/hook", true).is_ok());
    }

    #[test]
    fn a_saved_kickoff_becomes_a_kickoff_with_since() {
        let now = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let since = Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let k = kickoff_of(
            "Group/g1/$export?_type=Patient",
            "https://x/fhir",
            since,
            now,
        )
        .unwrap();
        assert_eq!(
            k.level,
            ExportLevel::Group {
                group_id: "g1".into()
            }
        );
        assert_eq!(
            k.request_url,
            "https://x/fhir/Group/g1/$export?_type=Patient&_since=2026-01-01T00:00:00.000000Z"
        );
        assert_eq!(k.params.len(), 2);
        assert!(kickoff_of("$export?_since=2026-01-01", "b", since, now).is_err());
        assert!(kickoff_of("Observation", "b", None, now).is_err());
        assert!(kickoff_of("$export", "b", None, now).is_ok());
    }
}
