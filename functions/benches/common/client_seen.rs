//! The functions' client-seen time over the emulator (`moto_export
//! --client-seen RUNS`): kick-off to manifest through the HTTP functions'
//! handler, with the status hold as deployed (1 s, the job read every
//! 100 ms), against the engine's own export of the same store in the same
//! run, with a timeline of where the client's time went.

use std::time::{Duration, Instant};

use bulk_export::aws::AwsAdapters;
use bulk_export::engine::Services;
use bulk_export::service::ServiceSettings;
use bulk_export_functions::settings::{AuthMode, Settings};
use bulk_export_functions::{http as lambda, Container};

use crate::timeline::Timeline;

const ORIGIN: &str = "https://bench.example";

/// Runs `runs` pairs (engine, client) and prints their medians, their
/// ratio and the median client run's timeline. Workers must be running.
pub async fn measure(
    engine: &Services,
    adapters: &AwsAdapters,
    names: &bulk_export::aws::AwsNames,
    shards: u16,
    timeline: &Timeline,
    runs: usize,
) {
    let mut service = ServiceSettings {
        engine: engine.config.as_ref().clone(),
        ..Default::default()
    };
    // As the functions set it (functions/src/settings.rs).
    service.engine.status_wait_poll = Duration::from_millis(100);
    service.engine.reuse_window = Duration::ZERO;
    let settings = Settings {
        names: names.clone(),
        shards,
        auth: AuthMode::Open,
        signing_key: None,
        external_issuer: None,
        event_bus: None,
        service,
    };
    let container =
        Container::from_parts(settings, adapters.ports(), adapters.jobs.clone(), None).unwrap();
    let (mut seen, mut own) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        own.push(
            timeline
                .engine_export(engine, &format!("{ORIGIN}/fhir/$export"))
                .await,
        );
        seen.push(client_export(&container, timeline).await);
    }
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    own.sort_by(|a, b| a.total_cmp(b));
    let (seen_median, own_median) = (seen[runs / 2].0, own[runs / 2]);
    println!(
        "SUMMARY client-seen on the functions: median {seen_median:.3} s (best {:.3} s), engine \
         median {own_median:.3} s (best {:.3} s), {:.2}x, {runs} runs",
        seen[0].0,
        own[0],
        seen_median / own_median
    );
    println!("  median client run: {}", seen[runs / 2].1);
}

/// Kick-off and status requests through the HTTP functions' handler, the
/// status asked at once and then after each `Retry-After`: seconds to the
/// manifest, and the timeline.
async fn client_export(container: &Container, timeline: &Timeline) -> (f64, String) {
    let t = Instant::now();
    let kickoff = call(container, "/fhir/$export").await;
    assert_eq!(kickoff.status(), 202, "{:?}", kickoff.body());
    let location = kickoff.headers()["content-location"].to_str().unwrap();
    let status = location.strip_prefix(ORIGIN).unwrap().to_string();
    loop {
        let resp = call(container, &status).await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 202, "{:?}", resp.body());
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
    let end = Instant::now();
    let id = status.rsplit('/').next().unwrap();
    let line = timeline.line(id, t, end);
    (end.duration_since(t).as_secs_f64(), line)
}

async fn call(container: &Container, path: &str) -> http::Response<lambda_http::Body> {
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("{ORIGIN}{path}"))
        .header("host", "bench.example")
        .header("x-forwarded-proto", "https")
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .body(lambda_http::Body::Empty)
        .unwrap();
    lambda::handle(container, req).await
}
