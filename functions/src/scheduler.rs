//! The scheduler function. Two kinds of invocation:
//!
//! - its own EventBridge `rate(1 minute)` rule (no schedule named): every
//!   schedule due now runs, found by key in the `by_due` index;
//! - a team's own EventBridge rule or EventBridge Scheduler schedule whose
//!   payload names a schedule (`{"scheduleId": ...}`, at the top level or in
//!   `detail`): that schedule runs once per event `time`, so a redelivered
//!   event does not run it twice.

use bulk_export::domain::instant::parse_instant;
use serde_json::{json, Value};

use crate::Container;

/// The schedule an invocation names, if any.
fn named_schedule(event: &Value) -> Option<&str> {
    event
        .get("scheduleId")
        .or_else(|| event.get("detail").and_then(|d| d.get("scheduleId")))
        .and_then(Value::as_str)
}

pub async fn handle(container: &Container, event: Value) -> Result<Value, String> {
    let engine = container.background_services();
    match named_schedule(&event) {
        Some(id) => {
            let at = match event.get("time").and_then(Value::as_str) {
                Some(t) => parse_instant(t).map_err(|e| format!("the event's time: {e}"))?,
                None => engine.ports.clock.now(),
            };
            let fired = engine
                .schedules
                .fire_named_schedule(id, at)
                .await
                .map_err(|e| format!("schedule {id}: {e}"))?;
            tracing::info!(schedule = id, fired, "named schedule invocation");
            Ok(json!({ "fired": u32::from(fired) }))
        }
        None => {
            let fired = engine
                .schedules
                .fire_due_schedules()
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(fired, "scheduler tick");
            Ok(json!({ "fired": fired }))
        }
    }
}
