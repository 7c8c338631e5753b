//! A view's rows as JSON, NDJSON, CSV (RFC 4180, UTF-8) or Parquet.

use std::io::Write;

use serde::ser::{Serialize, SerializeMap};
use serde_json::Value;

use crate::csv::write_field;

use super::{ColumnDef, Row};

/// The output formats of `$viewdefinition-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv { header: bool },
    Parquet,
}

impl Format {
    /// `_format`: a short name or a media type.
    pub fn parse(text: &str, header: bool) -> Option<Format> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" | "application/json" | "application/fhir+json" => Some(Format::Json),
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Some(Format::Ndjson),
            "csv" | "text/csv" => Some(Format::Csv { header }),
            "parquet" | "application/vnd.apache.parquet" | "application/parquet" => {
                Some(Format::Parquet)
            }
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv { .. } => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// How a row is written as a line of a table file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// An RFC 4180 record.
    Csv,
    /// A JSON object keyed by column name (NDJSON).
    Object,
    /// A JSON array of the values in column order: how Parquet rows are
    /// staged, read back with no key to hash or look up.
    Array,
}

/// One row as a line of a table file (no line break), appended to `out`,
/// which an exporter reuses from row to row: no allocation per row or cell.
pub fn write_row(columns: &[ColumnDef], row: &Row, line: Line, out: &mut Vec<u8>) {
    // A Vec<u8> takes any write.
    match line {
        Line::Object => {
            let _ = serde_json::to_writer(&mut *out, &RowObject(columns, row));
            return;
        }
        Line::Array => {
            let _ = serde_json::to_writer(&mut *out, row);
            return;
        }
        Line::Csv => {}
    }
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match v {
            Value::Null => {}
            Value::String(s) => write_field(s, out),
            // Neither needs quoting.
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            other => write_field(&other.to_string(), out),
        }
    }
}

/// A row as a JSON object, its columns in order, serialised without
/// copying its values.
struct RowObject<'r>(&'r [ColumnDef], &'r Row);

impl Serialize for RowObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.1.len()))?;
        for (c, v) in self.0.iter().zip(self.1) {
            map.serialize_entry(&c.name, v)?;
        }
        map.end()
    }
}

/// The CSV header record of a view's columns.
pub fn header_line(columns: &[ColumnDef]) -> Vec<u8> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    crate::csv::csv_line(&names)
}

pub fn render(
    columns: &[ColumnDef],
    rows: &[Row],
    format: Format,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut out = Vec::new();
    match format {
        Format::Parquet => {
            // One file in memory: a run's rows are few (the run's limit).
            let mut table = super::parquet::ParquetTable::new(columns, PARQUET_GROUP_ROWS)?;
            for r in rows {
                table.push(r.clone())?;
            }
            return table.finish();
        }
        Format::Json => {
            let all: Vec<RowObject> = rows.iter().map(|r| RowObject(columns, r)).collect();
            let _ = serde_json::to_writer(&mut out, &all);
        }
        Format::Ndjson => {
            for r in rows {
                write_row(columns, r, Line::Object, &mut out);
                out.push(b'\n');
            }
        }
        Format::Csv { header } => {
            if header {
                out.extend_from_slice(&header_line(columns));
                out.extend_from_slice(b"\r\n");
            }
            for r in rows {
                write_row(columns, r, Line::Csv, &mut out);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    Ok(out)
}

/// Rows per Parquet row group of a run's answer.
const PARQUET_GROUP_ROWS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_what_it_must() {
        let columns = ["a", "b", "c"]
            .iter()
            .map(|n| ColumnDef {
                name: n.to_string(),
                type_name: None,
                collection: false,
            })
            .collect::<Vec<_>>();
        let rows = vec![
            vec![json!("x, \"y\"\nz"), json!(1.5), Value::Null],
            vec![json!(["p", "q"]), json!(true), json!("ü")],
        ];
        let text =
            String::from_utf8(render(&columns, &rows, Format::Csv { header: true }).unwrap())
                .unwrap();
        assert_eq!(
            text,
            "a,b,c\r\n\"x, \"\"y\"\"\nz\",1.5,\r\n\"[\"\"p\"\",\"\"q\"\"]\",true,ü\r\n"
        );
        let nd = String::from_utf8(render(&columns, &rows[..1], Format::Ndjson).unwrap()).unwrap();
        assert_eq!(nd, "{\"a\":\"x, \\\"y\\\"\\nz\",\"b\":1.5,\"c\":null}\n");
        assert_eq!(
            Format::parse("text/csv", false),
            Some(Format::Csv { header: false })
        );
        assert_eq!(Format::parse("parquet", true), Some(Format::Parquet));
        assert_eq!(Format::parse("xlsx", true), None);
    }
}
