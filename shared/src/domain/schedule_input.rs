//! What a client sends to create a schedule or a release, parsed at the
//! edge into typed requests: the services check them against the store and
//! the caller's access, and never see the JSON body.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::instant::{format_instant, parse_instant};
use super::request::{parse_export_params, ExportRequest};
use super::schedule::{check_name, kickoff_of, Cadence, ScheduleMode, Webhook, LATEST};
use super::view_export::{view_export_url, ViewExportInput};
use super::Error;

/// What a schedule's runs export, parsed once when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedExport {
    /// A Bulk Data kick-off. Its times are as given: each run checks them
    /// against its own now (`ExportRequest::as_of`).
    Kickoff(Box<ExportRequest>),
    /// A `$viewdefinition-export`; references to stored views resolve at
    /// each run.
    Views(Box<ViewExportInput>),
}

impl SavedExport {
    /// The request of a kick-off saved as text (`$export?_type=Patient`).
    pub fn kickoff(export: &str, base_url: &str) -> Result<Self, Error> {
        let input = kickoff_of(export, base_url, None, DateTime::<Utc>::MAX_UTC)?;
        Ok(SavedExport::Kickoff(Box::new(parse_export_params(input)?)))
    }

    /// The request of a view export's saved `Parameters` body.
    pub fn views(parameters: &Value, base_url: &str) -> Result<Self, Error> {
        let input = ViewExportInput::from_parameters(parameters, view_export_url(base_url))
            .map_err(|e| Error::invalid_param("viewExport", format!("viewExport: {e}")))?;
        Ok(SavedExport::Views(Box::new(input)))
    }

    /// Whether the saved request sets `_since` itself (an incremental
    /// schedule sets it at every run, so it may not).
    pub fn has_since(&self) -> bool {
        match self {
            SavedExport::Kickoff(request) => request.since.is_some(),
            SavedExport::Views(input) => input.since.is_some(),
        }
    }

    /// The run's request: `since` (an incremental run's) added, and the
    /// URL a run's manifest names (`request_url`, plus `_since`).
    pub fn for_run(&self, request_url: String, since: Option<DateTime<Utc>>) -> SavedExport {
        match self {
            SavedExport::Kickoff(saved) => {
                let mut request = saved.clone();
                request.request_url = with_since(request_url, since);
                request.since = since.or(request.since);
                SavedExport::Kickoff(request)
            }
            SavedExport::Views(saved) => {
                let mut input = saved.clone();
                input.request_url = request_url;
                input.since = since.or(input.since);
                SavedExport::Views(input)
            }
        }
    }
}

/// A kick-off URL with an incremental run's `_since` appended.
fn with_since(mut url: String, since: Option<DateTime<Utc>>) -> String {
    if let Some(since) = since {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!(
            "_since={}",
            format_instant(since).replace('+', "%2B")
        ));
    }
    url
}

/// A schedule as a client asks for it (the body of a create).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScheduleInput {
    name: String,
    cadence: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    export: Option<String>,
    #[serde(default)]
    view_export: Option<Value>,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    start_from_release: Option<String>,
    #[serde(default)]
    webhook: Option<Webhook>,
}

/// A schedule to create, its body parsed and checked.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub cadence: Cadence,
    pub mode: ScheduleMode,
    /// The kick-off as given, relative to the FHIR base (empty for a view
    /// export): what the schedule shows.
    pub export: String,
    /// The view export's `Parameters` as given: what the schedule shows.
    pub view_export: Option<Value>,
    /// What its runs export.
    pub request: SavedExport,
    /// `None`: from its creation.
    pub start_at: Option<DateTime<Utc>>,
    pub start_from_release: Option<String>,
    pub webhook: Option<Webhook>,
}

impl NewSchedule {
    pub fn parse(body: &[u8], base_url: &str) -> Result<Self, Error> {
        let input: ScheduleInput = serde_json::from_slice(body).map_err(|e| {
            Error::invalid(format!(
                "The schedule is not valid: {e} (fields: name, cadence, mode, export or \
                 viewExport, startAt, startFromRelease, webhook)"
            ))
        })?;
        check_name("schedule", &input.name)?;
        let cadence = Cadence::parse(&input.cadence)?;
        let mode = schedule_mode(input.mode.as_deref())?;
        let start_at = input
            .start_at
            .as_deref()
            .map(parse_instant)
            .transpose()
            .map_err(|e| Error::invalid_param("startAt", format!("startAt: {e}")))?;
        if input.start_from_release.is_some() && mode == ScheduleMode::Full {
            return Err(Error::invalid_param(
                "startFromRelease",
                "startFromRelease is for incremental schedules (mode: incremental)",
            ));
        }
        if let Some(hook) = &input.webhook {
            if hook.secret.len() < 16 {
                return Err(Error::invalid_param(
                    "webhook",
                    "webhook: give a secret of at least 16 characters",
                ));
            }
        }
        let (export, request) = match (&input.export, &input.view_export) {
            (Some(e), None) => {
                let export = e.trim_start_matches('/').to_string();
                let request = SavedExport::kickoff(&export, base_url)?;
                (export, request)
            }
            (None, Some(parameters)) => (String::new(), SavedExport::views(parameters, base_url)?),
            _ => {
                return Err(Error::invalid(
                    "Give the schedule either export (a kick-off such as $export?_type=Patient) \
                     or viewExport (a $viewdefinition-export Parameters body)",
                ))
            }
        };
        if mode == ScheduleMode::Incremental && request.has_since() {
            let within = if input.export.is_some() {
                "the export"
            } else {
                "viewExport"
            };
            return Err(Error::invalid_param(
                "_since",
                format!("An incremental schedule sets _since itself; leave it out of {within}"),
            ));
        }
        Ok(NewSchedule {
            name: input.name,
            cadence,
            mode,
            export,
            view_export: input.view_export,
            request,
            start_at,
            start_from_release: input.start_from_release,
            webhook: input.webhook,
        })
    }
}

fn schedule_mode(mode: Option<&str>) -> Result<ScheduleMode, Error> {
    match mode {
        None | Some("full") => Ok(ScheduleMode::Full),
        Some("incremental") => Ok(ScheduleMode::Incremental),
        Some(other) => Err(Error::invalid_param(
            "mode",
            format!("mode '{other}' is not known: use full or incremental"),
        )),
    }
}

/// A release as a client asks for it (the body of a create).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseInput {
    name: String,
    export: String,
}

/// A release to create, its body parsed and checked.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub name: String,
    /// The kick-off as given, relative to the FHIR base.
    pub export: String,
    pub request: ExportRequest,
}

impl NewRelease {
    pub fn parse(body: &[u8], base_url: &str, now: DateTime<Utc>) -> Result<Self, Error> {
        let input: ReleaseInput = serde_json::from_slice(body).map_err(|e| {
            Error::invalid(format!(
                "The release is not valid: {e} (fields: name, export)"
            ))
        })?;
        check_name("release", &input.name)?;
        if input.name == LATEST {
            return Err(Error::invalid(
                "'latest' is the alias of the newest release; choose another name",
            ));
        }
        let export = input.export.trim_start_matches('/').to_string();
        let request = parse_export_params(kickoff_of(&export, base_url, None, now)?)?.as_of(now)?;
        Ok(NewRelease {
            name: input.name,
            export,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://x.example/fhir";

    fn at(text: &str) -> DateTime<Utc> {
        parse_instant(text).unwrap()
    }

    fn kickoff_request(saved: &SavedExport) -> &ExportRequest {
        match saved {
            SavedExport::Kickoff(request) => request,
            SavedExport::Views(_) => panic!("not a kick-off"),
        }
    }

    #[test]
    fn a_schedule_keeps_its_request_typed_and_each_run_adds_its_since() {
        let body = br#"{"name": "n", "cadence": "rate(1 day)", "mode": "incremental",
                        "export": "/$export?_type=Patient,Observation"}"#;
        let new = NewSchedule::parse(body, BASE).unwrap();
        assert_eq!(new.export, "$export?_type=Patient,Observation");
        assert_eq!(
            kickoff_request(&new.request).types,
            ["Patient", "Observation"]
        );
        let since = at("2026-01-02T03:04:05+01:00");
        let url = format!("{BASE}/{}", new.export);
        let run = new.request.for_run(url, Some(since));
        let request = kickoff_request(&run);
        assert_eq!(request.since, Some(since));
        assert_eq!(
            request.request_url,
            format!("{BASE}/$export?_type=Patient,Observation&_since=2026-01-02T02:04:05.000000Z")
        );
        // The saved request itself is unchanged: the next run adds its own.
        assert_eq!(kickoff_request(&new.request).since, None);
    }

    #[test]
    fn times_are_checked_against_each_runs_now_not_the_creation() {
        let body = br#"{"name": "n", "cadence": "rate(1 day)",
                        "export": "$export?_until=2030-01-01T00:00:00Z"}"#;
        let new = NewSchedule::parse(body, BASE).unwrap();
        let run = |now: &str| {
            let saved = new.request.for_run(BASE.into(), None);
            kickoff_request(&saved)
                .clone()
                .as_of(at(now))
                .unwrap()
                .until
        };
        // `_until` stops at each run's now while it is in the future.
        assert_eq!(
            run("2027-05-01T00:00:00Z"),
            Some(at("2027-05-01T00:00:00Z"))
        );
        assert_eq!(
            run("2031-01-01T00:00:00Z"),
            Some(at("2030-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn an_incremental_schedule_may_not_set_since_itself() {
        for body in [
            r#"{"name": "n", "cadence": "rate(1 day)", "mode": "incremental",
                "export": "$export?_since=2020-01-01T00:00:00Z"}"#,
            r#"{"name": "n", "cadence": "rate(1 day)", "mode": "incremental",
                "viewExport": {"resourceType": "Parameters", "parameter": [
                  {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"}]}}"#,
        ] {
            let e = NewSchedule::parse(body.as_bytes(), BASE).unwrap_err();
            assert!(e.message().contains("sets _since itself"), "{e}");
        }
        // A full schedule may.
        let full = br#"{"name": "n", "cadence": "rate(1 day)",
                        "export": "$export?_since=2020-01-01T00:00:00Z"}"#;
        assert!(NewSchedule::parse(full, BASE).is_ok());
    }

    #[test]
    fn a_saved_request_round_trips_through_json() {
        let body = br#"{"name": "n", "cadence": "rate(1 day)", "viewExport": {
            "resourceType": "Parameters", "parameter": [
              {"name": "view", "part": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/v1"}}]},
              {"name": "_format", "valueCode": "parquet"}]}}"#;
        let new = NewSchedule::parse(body, BASE).unwrap();
        let json = serde_json::to_string(&new.request).unwrap();
        assert_eq!(
            serde_json::from_str::<SavedExport>(&json).unwrap(),
            new.request
        );
        let SavedExport::Views(input) = &new.request else {
            panic!("not a view export")
        };
        assert_eq!(input.format.as_deref(), Some("parquet"));
    }
}
