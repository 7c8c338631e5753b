//! The sweeper function: on its schedule, removes expired jobs with their
//! files and open uploads.

use bulk_export::engine::Services;
use serde_json::{json, Value};

pub async fn sweep(engine: &Services) -> Result<Value, String> {
    let removed = engine.sweeper.sweep().await.map_err(|e| e.to_string())?;
    tracing::info!(removed, "sweep done");
    Ok(json!({ "removed": removed }))
}
