//! A view's rows as JSON, NDJSON or CSV (RFC 4180, UTF-8).

use serde_json::{Map, Value};

use super::{ColumnDef, Row};

/// The output formats of `$viewdefinition-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv { header: bool },
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
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv { .. } => "text/csv; charset=utf-8",
        }
    }
}

/// One row as a line of a table file (no line break): an RFC 4180 record
/// for CSV, a JSON object for NDJSON.
pub fn row_line(columns: &[ColumnDef], row: &Row, csv: bool) -> Vec<u8> {
    if csv {
        let cells: Vec<String> = row.iter().map(cell).collect();
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        crate::domain::csv::csv_line(&cells)
    } else {
        object(columns, row).to_string().into_bytes()
    }
}

/// The CSV header record of a view's columns.
pub fn header_line(columns: &[ColumnDef]) -> Vec<u8> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    crate::domain::csv::csv_line(&names)
}

fn object(columns: &[ColumnDef], row: &Row) -> Value {
    let map: Map<String, Value> = columns
        .iter()
        .zip(row)
        .map(|(c, v)| (c.name.clone(), v.clone()))
        .collect();
    Value::Object(map)
}

/// A CSV cell: text as is, numbers and booleans as written, null empty, and
/// a collection (or an object) as its JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

pub fn render(columns: &[ColumnDef], rows: &[Row], format: Format) -> Vec<u8> {
    match format {
        Format::Json => {
            let all: Vec<Value> = rows.iter().map(|r| object(columns, r)).collect();
            serde_json::to_vec(&all).unwrap_or_default()
        }
        Format::Ndjson => {
            let mut out = Vec::new();
            for r in rows {
                out.extend_from_slice(object(columns, r).to_string().as_bytes());
                out.push(b'\n');
            }
            out
        }
        Format::Csv { header } => {
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(Vec::new());
            if header {
                let _ = w.write_record(columns.iter().map(|c| c.name.as_str()));
            }
            for r in rows {
                let _ = w.write_record(r.iter().map(cell));
            }
            w.into_inner().unwrap_or_default()
        }
    }
}

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
            String::from_utf8(render(&columns, &rows, Format::Csv { header: true })).unwrap();
        assert_eq!(
            text,
            "a,b,c\r\n\"x, \"\"y\"\"\nz\",1.5,\r\n\"[\"\"p\"\",\"\"q\"\"]\",true,ü\r\n"
        );
        let nd = String::from_utf8(render(&columns, &rows[..1], Format::Ndjson)).unwrap();
        assert_eq!(nd, "{\"a\":\"x, \\\"y\\\"\\nz\",\"b\":1.5,\"c\":null}\n");
        assert_eq!(
            Format::parse("text/csv", false),
            Some(Format::Csv { header: false })
        );
        assert_eq!(Format::parse("parquet", true), None);
    }
}
