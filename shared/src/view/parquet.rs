//! A view's rows as a Parquet file, written row group by row group so that
//! memory holds one group however many rows there are.
//!
//! Column types follow the view's `type`: `boolean` → BOOLEAN; `integer`,
//! `positiveInt`, `unsignedInt`, `integer64` → INT64; `decimal` → DOUBLE;
//! everything else (strings, codes, ids, and `date`/`dateTime`/`instant`/
//! `time`, which FHIR allows to be partial, like `2024-05`) → UTF-8 STRING.
//! A collection column is a STRING holding its JSON, as in CSV. Every column
//! is OPTIONAL; a value that does not fit its column's type is null.

use std::io::Write;
use std::sync::{Arc, Mutex};

use parquet::basic::{Compression, ConvertedType, Repetition, Type as Physical};
use parquet::data_type::ByteArray;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::Value;

use super::{ColumnDef, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Double,
    Bool,
}

fn kind(c: &ColumnDef) -> Kind {
    if c.collection {
        return Kind::Text;
    }
    match c.type_name.as_deref() {
        Some("boolean") => Kind::Bool,
        Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => Kind::Int,
        Some("decimal") => Kind::Double,
        _ => Kind::Text,
    }
}

/// The bytes written so far, shared with the writer that fills them.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("output lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ParquetTable {
    writer: SerializedFileWriter<Output>,
    output: Output,
    kinds: Vec<Kind>,
    pending: Vec<Row>,
    rows_per_group: usize,
}

impl ParquetTable {
    pub fn new(columns: &[ColumnDef], rows_per_group: usize) -> Result<Self, ParquetError> {
        let fields = columns
            .iter()
            .map(|c| {
                let (physical, converted) = match kind(c) {
                    Kind::Text => (Physical::BYTE_ARRAY, ConvertedType::UTF8),
                    Kind::Int => (Physical::INT64, ConvertedType::NONE),
                    Kind::Double => (Physical::DOUBLE, ConvertedType::NONE),
                    Kind::Bool => (Physical::BOOLEAN, ConvertedType::NONE),
                };
                Type::primitive_type_builder(&c.name, physical)
                    .with_repetition(Repetition::OPTIONAL)
                    .with_converted_type(converted)
                    .build()
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Type::group_type_builder("view")
            .with_fields(fields)
            .build()?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let output = Output::default();
        let writer = SerializedFileWriter::new(output.clone(), Arc::new(schema), Arc::new(props))?;
        Ok(ParquetTable {
            writer,
            output,
            kinds: columns.iter().map(kind).collect(),
            pending: Vec::with_capacity(rows_per_group),
            rows_per_group: rows_per_group.max(1),
        })
    }

    pub fn push(&mut self, row: Row) -> Result<(), ParquetError> {
        self.pending.push(row);
        if self.pending.len() >= self.rows_per_group {
            self.write_group()?;
        }
        Ok(())
    }

    /// The file's bytes written since the last call.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.output.0.lock().expect("output lock"))
    }

    /// Writes the last group and the footer; returns the remaining bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, ParquetError> {
        self.write_group()?;
        let output = self.output.clone();
        self.writer.close()?;
        let bytes = std::mem::take(&mut *output.0.lock().expect("output lock"));
        Ok(bytes)
    }

    fn write_group(&mut self) -> Result<(), ParquetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut rows = std::mem::take(&mut self.pending);
        let row_count = rows.len();
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            let kind = self.kinds[index];
            // Each value is taken out of its row, written once: text moves
            // into the column as is, not copied.
            let cells = rows
                .iter_mut()
                .map(|r| r.get_mut(index).map(std::mem::take).unwrap_or(Value::Null));
            let mut levels = Vec::with_capacity(row_count);
            use parquet::column::writer::ColumnWriter as W;
            match (column.untyped(), kind) {
                (W::ByteArrayColumnWriter(w), _) => {
                    let values: Vec<ByteArray> = cells
                        .filter_map(|v| present(&mut levels, text(v)))
                        .map(|s| ByteArray::from(s.into_bytes()))
                        .collect();
                    w.write_batch(&values, Some(&levels), None)?;
                }
                (W::Int64ColumnWriter(w), _) => {
                    let values: Vec<i64> = cells
                        .filter_map(|v| present(&mut levels, v.as_i64()))
                        .collect();
                    w.write_batch(&values, Some(&levels), None)?;
                }
                (W::DoubleColumnWriter(w), _) => {
                    let values: Vec<f64> = cells
                        .filter_map(|v| present(&mut levels, v.as_f64()))
                        .collect();
                    w.write_batch(&values, Some(&levels), None)?;
                }
                (W::BoolColumnWriter(w), _) => {
                    let values: Vec<bool> = cells
                        .filter_map(|v| present(&mut levels, v.as_bool()))
                        .collect();
                    w.write_batch(&values, Some(&levels), None)?;
                }
                (_, k) => {
                    return Err(ParquetError::General(format!(
                        "no writer for a {k:?} column"
                    )))
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        Ok(())
    }
}

/// Records a definition level (1 present, 0 null) and passes the value on.
fn present<T>(levels: &mut Vec<i16>, value: Option<T>) -> Option<T> {
    levels.push(i16::from(value.is_some()));
    value
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}
