//! Parquet view files. A view export in Parquet writes each file's rows as
//! NDJSON first, through the sink (checkpointed and resumed like any file);
//! once that file is complete it is read back in ranges and converted into
//! `<name>.parquet`, row group by row group, through a multipart upload of
//! its own, the way gzip twins are made. Only the Parquet file is listed;
//! the NDJSON is removed with the job's other leftovers. Converting again
//! after a crash writes the same file.

use serde_json::Value;

use super::gzip_twin::upload;
use crate::domain::job::UploadedChunk;
use crate::ports::{ArtifactStore, PortError, PortResult};
use crate::view::parquet::ParquetTable;
use crate::view::ColumnDef;

/// How much of the NDJSON is read at a time.
const READ_BYTES: usize = 8 << 20;
/// Rows per Parquet row group: memory holds one group.
const ROWS_PER_GROUP: usize = 10_000;

/// The Parquet file's name for the NDJSON file `name`.
pub(crate) fn parquet_name(name: &str) -> String {
    format!("{}.parquet", name.strip_suffix(".ndjson").unwrap_or(name))
}

/// Converts the finished NDJSON object `key` (one JSON object per row) into
/// the Parquet object `target`.
pub(crate) async fn write_parquet(
    artifacts: &dyn ArtifactStore,
    key: &str,
    target: &str,
    columns: &[ColumnDef],
    min_part_bytes: usize,
) -> PortResult<()> {
    let upload_id = artifacts.start_upload(target).await?;
    match convert(artifacts, key, target, &upload_id, columns, min_part_bytes).await {
        Ok(chunks) => artifacts.complete_upload(target, &upload_id, &chunks).await,
        Err(e) => {
            if let Err(abort) = artifacts.abort_upload(target, &upload_id).await {
                tracing::warn!(key = %target, error = %abort, "could not abort a Parquet upload");
            }
            Err(e)
        }
    }
}

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::permanent("an internal error stopped the export", e.to_string())
}

async fn convert(
    artifacts: &dyn ArtifactStore,
    key: &str,
    target: &str,
    upload_id: &str,
    columns: &[ColumnDef],
    min_part_bytes: usize,
) -> PortResult<Vec<UploadedChunk>> {
    let mut table = ParquetTable::new(columns, ROWS_PER_GROUP).map_err(failed)?;
    let mut chunks = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    loop {
        let data = artifacts.get_range(key, offset, READ_BYTES).await?;
        offset += data.len() as u64;
        carry.extend_from_slice(&data);
        let complete = carry.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in carry[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let object: serde_json::Map<String, Value> = serde_json::from_slice(line)
                .map_err(|e| PortError::corrupt("a view file line is not a JSON object", e))?;
            let row = columns
                .iter()
                .map(|c| object.get(&c.name).cloned().unwrap_or(Value::Null))
                .collect();
            table.push(row).map_err(failed)?;
        }
        carry.drain(..complete);
        pending.extend(table.take_bytes());
        if pending.len() >= min_part_bytes.max(1) {
            upload(
                artifacts,
                target,
                upload_id,
                &mut chunks,
                std::mem::take(&mut pending),
            )
            .await?;
        }
        if data.len() < READ_BYTES {
            break;
        }
    }
    pending.extend(table.finish().map_err(failed)?);
    upload(artifacts, target, upload_id, &mut chunks, pending).await?;
    Ok(chunks)
}
