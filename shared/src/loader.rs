//! Loading data into the resource store: generated sample data and NDJSON.

use std::io::BufRead;

use crate::domain::resource::{check_resource_value, is_valid_id};
use crate::domain::resource_text::ResourceText;
use crate::domain::Error;
use crate::engine::Services;
use crate::ports::WriteOp;
use crate::sample::{generate, SampleConfig};
use serde_json::Value;

const BATCH: usize = 1000;

/// Loads `patients` synthetic patients if the store has no data yet.
/// Returns the number of resources written.
/// The seed of the sample `--sample-patients` loads (tests regenerate it).
pub const SAMPLE_SEED: u64 = 42;

pub async fn load_sample_if_empty(engine: &Services, patients: usize) -> Result<usize, Error> {
    if !engine.ports.resources.resource_types().await?.is_empty() {
        return Ok(0);
    }
    load_values(
        engine,
        generate(SampleConfig {
            patients,
            seed: SAMPLE_SEED,
        }),
    )
    .await
}

/// Writes resources (each must have `resourceType` and `id`) in batches.
pub async fn load_values(
    engine: &Services,
    values: impl Iterator<Item = Value>,
) -> Result<usize, Error> {
    load_texts(engine, values.map(ResourceText::from)).await
}

/// The same, for resources as their JSON text (kept as written).
async fn load_texts(
    engine: &Services,
    resources: impl Iterator<Item = ResourceText>,
) -> Result<usize, Error> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut total = 0;
    for r in resources {
        batch.push(to_op(r)?);
        if batch.len() == BATCH {
            total += batch.len();
            engine.resources.load(std::mem::take(&mut batch)).await?;
        }
    }
    total += batch.len();
    if !batch.is_empty() {
        engine.resources.load(batch).await?;
    }
    Ok(total)
}

/// Loads NDJSON (one resource per line) from a reader. Each resource is
/// stored as its line holds it.
pub async fn load_ndjson(engine: &Services, reader: impl BufRead) -> Result<usize, Error> {
    let mut resources = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::invalid(format!("line {}: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let r = ResourceText::parse(line.as_bytes())
            .map_err(|e| Error::invalid(format!("line {}: {e}", n + 1)))?;
        resources.push(r);
    }
    load_texts(engine, resources.into_iter()).await
}

fn to_op(r: ResourceText) -> Result<WriteOp, Error> {
    let v = r.value();
    let resource_type = v
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !is_valid_id(&id) {
        return Err(Error::invalid(format!(
            "{resource_type} without a valid id"
        )));
    }
    check_resource_value(v, &resource_type, Some(&id))?;
    Ok(WriteOp::Upsert {
        resource_type,
        id,
        resource: r,
    })
}
