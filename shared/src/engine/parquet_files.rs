//! Parquet view files. A view export in Parquet writes each file's rows as
//! NDJSON first (a JSON array of the values per row), through the sink
//! (checkpointed and resumed like any file); once that file is complete it is read back in ranges and converted into
//! `<name>.parquet`, row group by row group, through a multipart upload of
//! its own, the way gzip twins are made. Only the Parquet file is listed;
//! the NDJSON is removed with the job's other leftovers. Converting again
//! after a crash writes the same file.

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::digest::hex;
use super::gzip_twin::upload;
use crate::domain::job::UploadedChunk;
use crate::ports::{ArtifactStore, PortError, PortResult};
use fhir_query::view::parquet::{ParquetTable, StagedRowError};
use fhir_query::view::ColumnDef;

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

/// Adds the staged row `line` (a slice of `chunk`) to `table`: a JSON array
/// of the values in column order, or, as files staged before arrays were,
/// an object keyed by column name.
fn push_line(
    table: &mut ParquetTable,
    chunk: &Bytes,
    line: &[u8],
    columns: &[ColumnDef],
) -> PortResult<()> {
    fn corrupt(cause: impl std::fmt::Display) -> PortError {
        PortError::corrupt("a view file line is not a row", cause)
    }
    if line.first() == Some(&b'[') {
        return table
            .push_staged(&chunk.slice_ref(line))
            .map_err(|e| match e {
                StagedRowError::NotARow(e) => corrupt(e),
                StagedRowError::Parquet(e) => failed(e),
            });
    }
    let mut object: serde_json::Map<String, Value> =
        serde_json::from_slice(line).map_err(corrupt)?;
    let row = columns
        .iter()
        .map(|c| object.remove(&c.name).unwrap_or(Value::Null))
        .collect();
    table.push(row).map_err(failed)
}

/// Converts the finished NDJSON object `key` (one staged row per line) into
/// the Parquet object `target`; returns the Parquet file's SHA-256 (hex).
pub(crate) async fn write_parquet(
    artifacts: &dyn ArtifactStore,
    key: &str,
    target: &str,
    columns: &[ColumnDef],
    min_part_bytes: usize,
) -> PortResult<String> {
    let upload_id = artifacts.start_upload(target).await?;
    match convert(artifacts, key, target, &upload_id, columns, min_part_bytes).await {
        Ok((chunks, digest)) => {
            artifacts
                .complete_upload(target, &upload_id, &chunks)
                .await?;
            Ok(digest)
        }
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
) -> PortResult<(Vec<UploadedChunk>, String)> {
    let mut table = ParquetTable::new(columns, ROWS_PER_GROUP).map_err(failed)?;
    let mut chunks = Vec::new();
    let mut hash = Sha256::new();
    let mut pending: Vec<u8> = Vec::new();
    // The last read's unfinished line.
    let mut carry: Vec<u8> = Vec::new();
    let mut offset = 0u64;
    loop {
        let data = artifacts.get_range(key, offset, READ_BYTES).await?;
        offset += data.len() as u64;
        let last = data.len() < READ_BYTES;
        let chunk = if carry.is_empty() {
            data
        } else {
            carry.extend_from_slice(&data);
            Bytes::from(std::mem::take(&mut carry))
        };
        let complete = chunk.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in chunk[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            push_line(&mut table, &chunk, line, columns)?;
        }
        carry.extend_from_slice(&chunk[complete..]);
        pending.extend(table.take_bytes());
        if pending.len() >= min_part_bytes.max(1) {
            upload(
                artifacts,
                target,
                upload_id,
                &mut chunks,
                &mut hash,
                std::mem::take(&mut pending),
            )
            .await?;
        }
        if last {
            break;
        }
    }
    pending.extend(table.finish().map_err(failed)?);
    upload(
        artifacts,
        target,
        upload_id,
        &mut chunks,
        &mut hash,
        pending,
    )
    .await?;
    Ok((chunks, hex(hash)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::{json, Value};

    use super::push_line;
    use crate::ports::PortResult;
    use fhir_query::view::parquet::ParquetTable;
    use fhir_query::view::ColumnDef;

    fn columns() -> Vec<ColumnDef> {
        ["id", "n"]
            .iter()
            .map(|n| ColumnDef {
                name: n.to_string(),
                type_name: None,
                collection: false,
            })
            .collect()
    }

    fn from_lines(lines: &[&str]) -> PortResult<Vec<u8>> {
        let mut table = ParquetTable::new(&columns(), 2).unwrap();
        for line in lines {
            let chunk = Bytes::copy_from_slice(line.as_bytes());
            push_line(&mut table, &chunk, &chunk, &columns())?;
        }
        Ok(table.finish().unwrap())
    }

    fn from_rows(rows: Vec<Vec<Value>>) -> Vec<u8> {
        let mut table = ParquetTable::new(&columns(), 2).unwrap();
        for row in rows {
            table.push(row).unwrap();
        }
        table.finish().unwrap()
    }

    #[test]
    fn staged_rows_are_arrays_or_the_older_objects() {
        let file = from_lines(&[r#"["a",1]"#, r#"{"n":1,"id":"a"}"#, r#"{"id":"b"}"#]);
        let expected = from_rows(vec![
            vec![json!("a"), json!(1)],
            vec![json!("a"), json!(1)],
            vec![json!("b"), json!(null)],
        ]);
        assert_eq!(file.unwrap(), expected);
        for bad in [r#"["a"]"#, r#"["a",1,2]"#, r#"["a",1"#, "42", r#"{"id":"#] {
            assert!(from_lines(&[bad]).is_err(), "{bad}");
        }
    }
}
