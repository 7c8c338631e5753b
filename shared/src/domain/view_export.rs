//! `$viewdefinition-export`: the views a job writes as tables, and how. It
//! rides on an ordinary export job (`ExportRequest::views`), so a view
//! export plans, checkpoints, resumes, expires and can be scheduled like a
//! resource export.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The table formats of a view export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// RFC 4180, a header row first unless `header` is false.
    Csv,
    /// One JSON object per row, keyed by column name.
    Ndjson,
    /// Typed columns, Snappy-compressed (see `view::parquet`).
    Parquet,
}

impl TableFormat {
    /// `_format`: a short name or a media type.
    pub fn parse(text: &str) -> Option<TableFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(TableFormat::Csv),
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Some(TableFormat::Ndjson),
            "parquet" | "application/vnd.apache.parquet" | "application/parquet" => {
                Some(TableFormat::Parquet)
            }
            _ => None,
        }
    }

    /// The extension of the files the parts write (Parquet files are
    /// converted from NDJSON ones: `engine::parquet_files`).
    pub fn extension(self) -> &'static str {
        match self {
            TableFormat::Csv => "csv",
            TableFormat::Ndjson | TableFormat::Parquet => "ndjson",
        }
    }
}

/// One view of the export, checked at kick-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedView {
    /// Names its files and its manifest entries.
    pub name: String,
    /// The view's `resource`.
    pub resource_type: String,
    /// The ViewDefinition itself (a stored one is copied at kick-off, so
    /// later edits do not change a running export).
    pub definition: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewExport {
    pub views: Vec<NamedView>,
    pub format: TableFormat,
    /// CSV: a header row at the top of each file.
    pub header: bool,
    /// `clientTrackingId`, echoed in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tracking_id: Option<String>,
}

/// A view name is used in file names: 1 to 64 of `A-Z a-z 0-9 _ -`,
/// starting with a letter or a digit.
pub fn is_valid_view_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The URL a `$viewdefinition-export` is requested at (the manifest's
/// `request`).
pub fn view_export_url(base_url: &str) -> String {
    format!("{base_url}/ViewDefinition/$viewdefinition-export")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats() {
        for good in ["patients", "obs_2024", "a-b", "V1"] {
            assert!(is_valid_view_name(good), "{good}");
        }
        for bad in ["", "-x", "_x", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(!is_valid_view_name(bad), "{bad}");
        }
        assert_eq!(TableFormat::parse("text/csv"), Some(TableFormat::Csv));
        assert_eq!(TableFormat::parse("NDJSON"), Some(TableFormat::Ndjson));
        assert_eq!(TableFormat::parse("json"), None);
        assert_eq!(TableFormat::parse("parquet"), Some(TableFormat::Parquet));
    }
}
