//! The sweeper function: on its schedule, removes expired jobs with their
//! files and open uploads.

use bulk_export::engine::Engine;
use serde_json::{json, Value};

pub async fn sweep(engine: &Engine) -> Result<Value, String> {
    let removed = engine.sweep().await.map_err(|e| e.to_string())?;
    tracing::info!(removed, "sweep done");
    Ok(json!({ "removed": removed }))
}
