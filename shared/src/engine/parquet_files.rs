//! Parquet view files. A view export in Parquet writes each file's rows as
//! NDJSON first (a JSON array of the values per row), through the sink
//! (checkpointed and resumed like any file); once that file is complete it is read back in ranges and converted into
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
/// Rows per Parquet row group: memory holds one group, typed column by
/// column (about the size of its CSV), so a group can be large enough for
/// readers to scan well.
const ROWS_PER_GROUP: usize = 50_000;

/// The Parquet file's name for the NDJSON file `name`.
pub(crate) fn parquet_name(name: &str) -> String {
    format!("{}.parquet", name.strip_suffix(".ndjson").unwrap_or(name))
}

/// A staged row: a JSON array of the values in column order, or, as files
/// staged before arrays were, an object keyed by column name.
fn staged_row(line: &[u8], columns: &[ColumnDef]) -> PortResult<Vec<Value>> {
    fn corrupt(cause: impl std::fmt::Display) -> PortError {
        PortError::corrupt("a view file line is not a row", cause)
    }
    if line.first() == Some(&b'[') {
        let row: Vec<Value> = serde_json::from_slice(line).map_err(corrupt)?;
        if row.len() != columns.len() {
            let counts = format!("{} values for {} columns", row.len(), columns.len());
            return Err(corrupt(counts));
        }
        return Ok(row);
    }
    let mut object: serde_json::Map<String, Value> =
        serde_json::from_slice(line).map_err(corrupt)?;
    Ok(columns
        .iter()
        .map(|c| object.remove(&c.name).unwrap_or(Value::Null))
        .collect())
}

/// Converts the finished NDJSON object `key` (one staged row per line) into
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
            let row = staged_row(line, columns)?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::staged_row;
    use crate::view::ColumnDef;

    #[test]
    fn staged_rows_are_arrays_or_the_older_objects() {
        let columns: Vec<ColumnDef> = ["id", "n"]
            .iter()
            .map(|n| ColumnDef {
                name: n.to_string(),
                type_name: None,
                collection: false,
            })
            .collect();
        let row = |line: &str| staged_row(line.as_bytes(), &columns);
        assert_eq!(row(r#"["a",1]"#).unwrap(), [json!("a"), json!(1)]);
        assert_eq!(row(r#"{"n":1,"id":"a"}"#).unwrap(), [json!("a"), json!(1)]);
        assert_eq!(row(r#"{"id":"a"}"#).unwrap(), [json!("a"), json!(null)]);
        assert!(row(r#"["a"]"#).is_err());
        assert!(row(r#"["a",1"#).is_err());
        assert!(row("42").is_err());
    }
}
