//! A view's rows as a Parquet file, written row group by row group so that
//! memory holds one group however many rows there are.
//!
//! Column types follow the view's `type`: `boolean` → BOOLEAN; `integer`,
//! `positiveInt`, `unsignedInt`, `integer64` → INT64; `decimal` → DOUBLE;
//! everything else (strings, codes, ids, and `date`/`dateTime`/`instant`/
//! `time`, which FHIR allows to be partial, like `2024-05`) → UTF-8 STRING.
//! A collection column is a STRING holding its JSON, as in CSV. Every column
//! is OPTIONAL; a value that does not fit its column's type is null.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use parquet::basic::{Compression, ConvertedType, Repetition, Type as Physical};
use parquet::column::writer::ColumnWriterImpl;
use parquet::data_type::{ByteArray, DataType};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
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
    /// The current group's values, column by column, typed as they arrive:
    /// a group costs its values' bytes, not a row of JSON values each.
    columns: Vec<ColumnValues>,
    rows: usize,
    rows_per_group: usize,
}

/// One column's values in the current group, and its definition levels
/// (1 present, 0 null).
struct ColumnValues {
    values: Values,
    levels: Vec<i16>,
}

enum Values {
    Text(Vec<ByteArray>),
    Int(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
}

impl ColumnValues {
    fn new(kind: Kind) -> Self {
        let values = match kind {
            Kind::Text => Values::Text(Vec::new()),
            Kind::Int => Values::Int(Vec::new()),
            Kind::Double => Values::Double(Vec::new()),
            Kind::Bool => Values::Bool(Vec::new()),
        };
        ColumnValues {
            values,
            levels: Vec::new(),
        }
    }

    /// Adds a row's value: null when absent or not of the column's type.
    fn push(&mut self, v: Value) {
        let present = match &mut self.values {
            Values::Text(out) => text(v).map(|s| out.push(ByteArray::from(s.into_bytes()))),
            Values::Int(out) => v.as_i64().map(|n| out.push(n)),
            Values::Double(out) => v.as_f64().map(|n| out.push(n)),
            Values::Bool(out) => v.as_bool().map(|b| out.push(b)),
        };
        self.levels.push(i16::from(present.is_some()));
    }

    /// Adds a row's value from its staged JSON text `raw`, a slice of
    /// `line`, with the same result as parsing it and calling `push`.
    fn push_raw(&mut self, raw: &str, line: &Bytes) -> Result<(), serde_json::Error> {
        let present = raw != "null"
            && match &mut self.values {
                Values::Text(out) => {
                    out.push(raw_text(raw, line)?);
                    true
                }
                // A JSON integer is an i64 (or too large to be one) exactly
                // when Rust parses it as one; any JSON number parses as f64.
                Values::Int(out) => raw.parse().map(|n| out.push(n)).is_ok(),
                Values::Double(out) => raw.parse().map(|n| out.push(n)).is_ok(),
                Values::Bool(out) => match raw {
                    "true" | "false" => {
                        out.push(raw == "true");
                        true
                    }
                    _ => false,
                },
            };
        self.levels.push(i16::from(present));
        Ok(())
    }
}

/// A staged value's text for a STRING column. A string without escapes is
/// a slice of the staged line (no copy: the group holds the line's bytes);
/// other strings are unescaped; any other value is its JSON text, which is
/// how staging wrote it.
fn raw_text(raw: &str, line: &Bytes) -> Result<ByteArray, serde_json::Error> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'"') {
        return Ok(ByteArray::from(line.slice_ref(bytes)));
    }
    if !bytes.contains(&b'\\') {
        return Ok(ByteArray::from(line.slice_ref(&bytes[1..bytes.len() - 1])));
    }
    let text: String = serde_json::from_str(raw)?;
    Ok(ByteArray::from(text.into_bytes()))
}

/// Why a staged row could not be added.
#[derive(Debug, thiserror::Error)]
pub enum StagedRowError {
    #[error("a staged line is not a row of the view's columns: {0}")]
    NotARow(#[from] serde_json::Error),
    #[error(transparent)]
    Parquet(#[from] ParquetError),
}

/// Reads a staged row (a JSON array of one value per column) straight into
/// the columns' buffers: no JSON value is built.
struct StagedRow<'a> {
    columns: &'a mut [ColumnValues],
    line: &'a Bytes,
}

impl<'de> DeserializeSeed<'de> for StagedRow<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StagedRow<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {} values", self.columns.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let count = self.columns.len();
        let wrong_length = |n| A::Error::custom(format!("{n} values for {count} columns"));
        for (i, column) in self.columns.iter_mut().enumerate() {
            let raw: &RawValue = seq.next_element()?.ok_or_else(|| wrong_length(i))?;
            column
                .push_raw(raw.get(), self.line)
                .map_err(A::Error::custom)?;
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(wrong_length(count + 1));
        }
        Ok(())
    }
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
            columns: columns.iter().map(|c| ColumnValues::new(kind(c))).collect(),
            rows: 0,
            rows_per_group: rows_per_group.max(1),
        })
    }

    pub fn push(&mut self, row: Row) -> Result<(), ParquetError> {
        let mut row = row.into_iter();
        for column in &mut self.columns {
            column.push(row.next().unwrap_or(Value::Null));
        }
        self.added_row()
    }

    fn added_row(&mut self) -> Result<(), ParquetError> {
        self.rows += 1;
        if self.rows >= self.rows_per_group {
            self.write_group()?;
        }
        Ok(())
    }

    /// Adds a staged row: `line` holds a JSON array of the row's values in
    /// column order. A line that is not one leaves the table unusable: the
    /// conversion stops.
    pub fn push_staged(&mut self, line: &Bytes) -> Result<(), StagedRowError> {
        let mut de = serde_json::Deserializer::from_slice(line);
        StagedRow {
            columns: &mut self.columns,
            line,
        }
        .deserialize(&mut de)?;
        de.end()?;
        self.added_row()?;
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
        if self.rows == 0 {
            return Ok(());
        }
        self.rows = 0;
        let mut group = self.writer.next_row_group()?;
        let mut columns = self.columns.iter_mut();
        while let Some(mut writer) = group.next_column()? {
            let Some(column) = columns.next() else {
                return Err(ParquetError::General("more columns than the view's".into()));
            };
            let levels = column.levels.as_slice();
            use parquet::column::writer::ColumnWriter as W;
            match (writer.untyped(), &mut column.values) {
                (W::ByteArrayColumnWriter(w), Values::Text(v)) => write_values(w, v, levels)?,
                (W::Int64ColumnWriter(w), Values::Int(v)) => write_values(w, v, levels)?,
                (W::DoubleColumnWriter(w), Values::Double(v)) => write_values(w, v, levels)?,
                (W::BoolColumnWriter(w), Values::Bool(v)) => write_values(w, v, levels)?,
                _ => {
                    return Err(ParquetError::General(
                        "a column's writer does not fit its type".into(),
                    ))
                }
            }
            column.levels.clear();
            writer.close()?;
        }
        group.close()?;
        Ok(())
    }
}

/// Writes a column's values of the group and empties them for the next.
fn write_values<T: DataType>(
    writer: &mut ColumnWriterImpl<'_, T>,
    values: &mut Vec<T::T>,
    levels: &[i16],
) -> Result<(), ParquetError> {
    writer.write_batch(values, Some(levels), None)?;
    values.clear();
    Ok(())
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn column(name: &str, type_name: Option<&str>, collection: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: type_name.map(str::to_string),
            collection,
        }
    }

    /// Reading a staged row's text must give the file that the parsed row
    /// gives, for every kind of column and every kind of value, fitting
    /// its column's type or not.
    #[test]
    fn a_staged_row_gives_the_file_its_parsed_values_give() {
        let columns = [
            column("text", None, false),
            column("int", Some("integer"), false),
            column("double", Some("decimal"), false),
            column("bool", Some("boolean"), false),
            column("list", Some("string"), true),
        ];
        let rows = [
            json!(["plain", 1, 1.5, true, ["x", "y"]]),
            json!(["quote \" backslash \\ newline \n", -5, -2e-3, false, []]),
            json!(["é \u{1F600} tab\t", 1.0, 1, 1, null]),
            json!([
                null,
                99999999999999999999u128.to_string(),
                "1.5",
                "true",
                "s"
            ]),
            json!([42, "5", true, null, {"a": 1}]),
            json!([[1, "two"], true, null, "false", [null]]),
            json!([1.25, 1e3, 12345678901234567890u64, null, [1.5]]),
            json!(["", null, 0, false, [""]]),
        ];
        let mut parsed = ParquetTable::new(&columns, 3).unwrap();
        let mut staged = ParquetTable::new(&columns, 3).unwrap();
        for row in rows {
            let line = Bytes::from(serde_json::to_vec(&row).unwrap());
            staged.push_staged(&line).unwrap();
            parsed.push(serde_json::from_value(row).unwrap()).unwrap();
        }
        assert_eq!(staged.finish().unwrap(), parsed.finish().unwrap());
    }

    #[test]
    fn a_staged_line_that_is_not_a_row_is_refused() {
        let columns = [column("a", None, false), column("b", None, false)];
        for line in [r#"["x"]"#, r#"["x",1,2]"#, r#"{"a":1}"#, r#"["x",1"#, "7"] {
            let mut table = ParquetTable::new(&columns, 10).unwrap();
            let e = table.push_staged(&Bytes::from(line)).unwrap_err();
            assert!(matches!(e, StagedRowError::NotARow(_)), "{line}: {e}");
        }
    }
}
