//! Where an export's time goes, from the engine's own tracing events: every
//! event that names a job (accepted, planned, each part started and
//! finished, completed) is kept with the instant it was emitted, so a bench
//! can lay them out against the client's clock. Shared by the embedded and
//! the functions' client-seen benches (the latter includes this file).

use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bulk_export::domain::request::{parse_export_request, ExportLevel, KickoffInput};
use bulk_export::engine::{Caller, Services};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One engine event of a job.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: Instant,
    pub job: String,
    /// The event's message, with its part index when it has one.
    pub what: String,
}

/// Records job events; cheap to clone (all clones share the record).
#[derive(Clone, Default)]
pub struct Timeline {
    marks: Arc<Mutex<Vec<Mark>>>,
}

impl Timeline {
    /// The engine's own export of everything: kicked off on the engine
    /// (no HTTP, no status requests), seconds to its completion event.
    pub async fn engine_export(&self, engine: &Services, request_url: &str) -> f64 {
        let input = KickoffInput {
            level: ExportLevel::System,
            request_url: request_url.to_string(),
            params: vec![],
            lenient: false,
            via_post: false,
            now: chrono::Utc::now(),
        };
        let t = Instant::now();
        let job_id = engine
            .exports
            .kickoff(&Caller::anonymous(), parse_export_request(input).unwrap())
            .await
            .unwrap();
        self.completed(&job_id)
            .await
            .duration_since(t)
            .as_secs_f64()
    }

    /// Installs the recorder as the process's subscriber, at debug level for
    /// the engine (part events are debug) and warnings for the rest.
    pub fn install() -> Self {
        let timeline = Timeline::default();
        let filter = tracing_subscriber::EnvFilter::new("warn,bulk_export=debug");
        let subscriber = tracing_subscriber::registry().with(timeline.clone().with_filter(filter));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per bench");
        timeline
    }

    /// The job's marks, in the order they happened.
    pub fn of(&self, job: &str) -> Vec<Mark> {
        let marks = self.marks.lock().unwrap();
        marks.iter().filter(|m| m.job == job).cloned().collect()
    }

    /// The instant the job's completion was recorded, once it is.
    #[allow(dead_code)]
    pub async fn completed(&self, job: &str) -> Instant {
        loop {
            if let Some(m) = self.of(job).iter().find(|m| m.what == "export completed") {
                return m.at;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// The instant of the job's first mark.
    #[allow(dead_code)]
    pub fn first_of(&self, job: &str) -> Instant {
        self.of(job).first().map_or_else(Instant::now, |m| m.at)
    }

    /// One line: each mark's milliseconds since `start`, with runs of part
    /// events folded into their first and last ("3 parts 12-180 ms").
    pub fn line(&self, job: &str, start: Instant, end: Instant) -> String {
        let ms = |at: Instant| at.saturating_duration_since(start).as_secs_f64() * 1e3;
        let marks = self.of(job);
        let (parts, others): (Vec<&Mark>, Vec<&Mark>) =
            marks.iter().partition(|m| m.what.starts_with("part "));
        let mut out = String::new();
        for m in others.iter().filter(|m| !m.what.contains("completed")) {
            let _ = write!(out, "{} {:.0} ms, ", m.what, ms(m.at));
        }
        let started: Vec<&&Mark> = parts
            .iter()
            .filter(|m| m.what.contains("started"))
            .collect();
        let finished: Vec<&&Mark> = parts
            .iter()
            .filter(|m| m.what.contains("finished"))
            .collect();
        if let (Some(first), Some(last)) = (started.first(), finished.last()) {
            let _ = write!(
                out,
                "{} parts {:.0}-{:.0} ms, ",
                finished.len(),
                ms(first.at),
                ms(last.at)
            );
        }
        if let Some(done) = others.iter().find(|m| m.what.contains("completed")) {
            let _ = write!(out, "completed {:.0} ms, ", ms(done.at));
        }
        let _ = write!(out, "manifest at the client {:.0} ms", ms(end));
        out
    }
}

impl<S: tracing::Subscriber> Layer<S> for Timeline {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(job) = fields.job else { return };
        let what = match fields.part {
            Some(p) => format!("{} {p}", fields.message),
            None => fields.message,
        };
        let mark = Mark {
            at: Instant::now(),
            job,
            what,
        };
        self.marks.lock().unwrap().push(mark);
    }
}

#[derive(Default)]
struct Fields {
    job: Option<String>,
    part: Option<String>,
    message: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "job" => self.job = Some(text),
            "part" => self.part = Some(text),
            "message" => self.message = text,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}
