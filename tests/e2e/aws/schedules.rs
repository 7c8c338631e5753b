//! The schedule scenarios (`crate::schedules`) through the Lambda functions
//! on moto: the HTTP handler every HTTP function runs, the scheduler
//! function's entry point on a moved clock, and the worker function pumped
//! from the real SQS queue. Completion events go to a real EventBridge bus
//! (moto's), routed by a rule to an SQS queue the test reads.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bulk_export::auth::TokenIssuer;
use bulk_export::aws::json_api::{JsonClient, EVENTBRIDGE};
use bulk_export::aws::{AwsAdapters, SdkConfig, SqsQueue};
use bulk_export::clock::OffsetClock;
use bulk_export::engine::Services;
use bulk_export::ports::{ClientStore, Clock};
use bulk_export::service::ServiceSettings;
use bulk_export_functions::settings::{AuthMode, Settings};
use bulk_export_functions::{http as lambda, scheduler, Container};
use serde_json::{json, Value};

use super::functions::invoke_worker;
use super::moto::fresh_stack;
use super::revisions::{lambda_request, reply_of, ORIGIN};
use crate::revisions::{Backend, Reply};
use crate::schedules::{
    cadence_scenario, links_scenario, release_rebuild_scenario, subscriber_scenario, Stack,
};

pub(super) struct OnMoto {
    pub(super) container: Container,
    pub(super) engine: Services,
    pub(super) queue: Arc<SqsQueue>,
    adapters: AwsAdapters,
    clock: Arc<OffsetClock>,
}

impl OnMoto {
    async fn new(sdk: &SdkConfig, names: &bulk_export::aws::AwsNames, bus: Option<&str>) -> Self {
        Self::at(sdk, names, bus, ORIGIN).await
    }

    /// The functions, with `origin` in the links they give.
    pub(super) async fn at(
        sdk: &SdkConfig,
        names: &bulk_export::aws::AwsNames,
        bus: Option<&str>,
        origin: &str,
    ) -> Self {
        let clock = Arc::new(OffsetClock::default());
        let mut adapters = AwsAdapters::new(sdk, names, 4, clock.clone() as Arc<dyn Clock>);
        if let Some(bus) = bus {
            adapters = adapters.with_event_bus(sdk, bus);
        }
        let mut service = ServiceSettings {
            public_origin: Some(origin.into()),
            ..Default::default()
        };
        service.engine.retry_base = Duration::ZERO;
        service.engine.status_wait = Duration::ZERO;
        service.engine.reuse_window = Duration::ZERO;
        service.engine.allow_private_webhooks = true;
        let settings = Settings {
            names: names.clone(),
            shards: 4,
            auth: AuthMode::Open,
            signing_key: None,
            external_issuer: None,
            event_bus: bus.map(str::to_string),
            service,
        };
        let container =
            Container::from_parts(settings, adapters.ports(), adapters.jobs.clone(), None).unwrap();
        let engine = container.services(origin);
        OnMoto {
            queue: adapters.queue.clone(),
            container,
            engine,
            adapters,
            clock,
        }
    }
}

#[async_trait]
impl Backend for OnMoto {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let req = lambda_request(method, path, token, headers, body);
        reply_of(lambda::handle(&self.container, req).await)
    }

    fn base(&self) -> String {
        format!("{ORIGIN}/fhir")
    }

    fn issuer(&self) -> Arc<TokenIssuer> {
        unreachable!("the schedule scenarios on moto run in open mode")
    }

    fn clients(&self) -> Arc<dyn ClientStore> {
        self.adapters.jobs.clone()
    }
}

#[async_trait]
impl Stack for OnMoto {
    fn clock(&self) -> Arc<OffsetClock> {
        self.clock.clone()
    }

    /// The scheduler function's engine (each call a "container" of its own
    /// would build the same one).
    fn engine(&self) -> Services {
        self.container.background_services()
    }

    async fn settle(&self) {
        while invoke_worker(&self.engine, &self.queue, Duration::from_secs(20), false).await > 0 {}
    }
}

pub(super) async fn on_moto() -> OnMoto {
    let (sdk, names) = fresh_stack().await;
    OnMoto::new(&sdk, &names, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_schedule_on_moto_runs_once_a_day_catches_up_once_and_stops_when_deleted() {
    cadence_scenario(&on_moto().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_replica_on_moto_equals_the_store() {
    subscriber_scenario(&on_moto().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_rebuilt_on_moto_after_expiry_equals_the_original() {
    release_rebuild_scenario(&on_moto().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_s3_links_open_a_run_without_a_token() {
    links_scenario(&on_moto().await).await;
}

/// The completion event on EventBridge with its documented fields, and the
/// scheduler function's direct invocation (a team's own EventBridge rule
/// naming a schedule): one run per event time, however often it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_events_reach_eventbridge_and_a_named_invocation_runs_once() {
    let (sdk, names) = fresh_stack().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let bus = format!("bus-{id}");
    let events = JsonClient::new(&sdk, &EVENTBRIDGE);
    events
        .call("CreateEventBus", &json!({ "Name": bus }))
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("events-{id}"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    // (The account differs between emulators: moto's 123456789012,
    // LocalStack's 000000000000.)
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .unwrap();
    let rule = json!({
        "Name": "finished",
        "EventBusName": bus,
        "EventPattern": r#"{"source": ["bulk-export"]}"#,
    });
    events.call("PutRule", &rule).await.unwrap();
    let targets = json!({
        "Rule": "finished",
        "EventBusName": bus,
        "Targets": [{ "Id": "q", "Arn": queue_arn }],
    });
    events.call("PutTargets", &targets).await.unwrap();
    let st = OnMoto::new(&sdk, &names, Some(&bus)).await;
    let r = st
        .call(
            "PUT",
            "Patient/e1",
            None,
            &[],
            Some(json!({"resourceType": "Patient", "id": "e1"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201);
    let body =
        json!({"name": "evented", "cadence": "rate(7 days)", "export": "$export?_type=Patient"});
    let r = st
        .call(
            "POST",
            "$export-schedules",
            None,
            &[],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 201);
    let schedule_id = r.json()["id"].as_str().unwrap().to_string();
    // Not due by its own cadence until next week; a team's rule fires it,
    // and EventBridge delivers that event twice.
    let at = st.clock.now();
    let event = json!({
        "source": "aws.scheduler", "detail-type": "Scheduled Event",
        "time": bulk_export::domain::instant::format_instant(at),
        "detail": {"scheduleId": schedule_id}
    });
    let container = &st.container;
    assert_eq!(
        scheduler::handle(container, event.clone()).await.unwrap()["fired"],
        1
    );
    assert_eq!(
        scheduler::handle(container, event).await.unwrap()["fired"],
        0
    );
    // The rate rule's tick (no payload) fires the due schedules: the first
    // run is due at creation, and the named run was that one's.
    let tick = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    assert_eq!(
        scheduler::handle(container, tick).await.unwrap()["fired"],
        1
    );

    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "events seen: {seen:?}"
        );
        st.settle().await;
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            seen.push(serde_json::from_str(m.body().unwrap()).unwrap());
        }
    }
    seen.sort_by_key(|e| e["detail"]["run"].as_u64());
    for (n, e) in seen.iter().enumerate() {
        assert_eq!(e["source"], "bulk-export");
        assert_eq!(e["detail-type"], "Bulk Export Job Finished");
        let d = &e["detail"];
        let job = format!("{schedule_id}-run-{}", n + 1);
        assert_eq!(d["jobId"], job);
        assert_eq!(d["scheduleId"], schedule_id);
        assert_eq!(d["scheduleName"], "evented");
        assert_eq!(d["run"], n as u64 + 1);
        assert_eq!(d["outcome"], "completed");
        assert_eq!(d["counts"]["Patient"], 1);
        assert_eq!(d["count"], 1);
        assert_eq!(d["manifest"], format!("{ORIGIN}/fhir/$export-jobs/{job}"));
        assert!(d["transactionTime"].as_str().unwrap().ends_with('Z'));
    }
}
