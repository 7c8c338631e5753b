//! The official SQL on FHIR v2 test suite (vendored in
//! `tests/data/sql-on-fhir-v2`), run through the ViewDefinition engine.
//!
//! Each case's view runs over its file's resources; the rows must equal the
//! expected ones in any order (numbers compared as numbers), the columns
//! `expectColumns` in order, and `expectError` cases must be refused.
//! Cases known to fail are listed with their reason: the test fails if
//! another case fails, or if a listed one starts to pass (update the list).

use std::path::PathBuf;

use fhir_query::view::View;
use serde_json::{Map, Value};

/// (file, case title, why it fails).
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sql-on-fhir-v2")
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Runs one case; `Err` says how it failed.
fn run_case(resources: &[Value], case: &Value) -> Result<(), String> {
    let expect_error = case
        .get("expectError")
        .is_some_and(|e| e != &Value::Bool(false));
    let view = match View::parse(&case["view"]) {
        Ok(v) => v,
        Err(_) if expect_error => return Ok(()),
        Err(e) => return Err(format!("view refused: {e}")),
    };
    let mut rows: Vec<Value> = Vec::new();
    for r in resources {
        // Exports parse only what the view reads: it must give the same rows.
        let read = view
            .read_resource(&r.to_string())
            .map_err(|e| format!("read_resource: {e}"))?;
        let full = view.rows(r);
        if full.as_ref().ok() != view.rows(&read).as_ref().ok() {
            return Err(format!(
                "the resource as read for the view ({}) gives other rows",
                read
            ));
        }
        match full {
            Ok(got) => rows.extend(got.into_iter().map(|row| {
                let obj: Map<String, Value> = view
                    .columns()
                    .iter()
                    .map(|c| c.name.clone())
                    .zip(row)
                    .collect();
                Value::Object(obj)
            })),
            Err(_) if expect_error => return Ok(()),
            Err(e) => return Err(format!("run failed: {e}")),
        }
    }
    if expect_error {
        return Err("expected an error, got rows".into());
    }
    if let Some(columns) = case.get("expectColumns").and_then(Value::as_array) {
        let got: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
        let want: Vec<&str> = columns.iter().filter_map(Value::as_str).collect();
        if got != want {
            return Err(format!("columns {got:?}, expected {want:?}"));
        }
    }
    let expected = case["expect"].as_array().cloned().unwrap_or_default();
    let mut unmatched = rows.clone();
    for e in &expected {
        match unmatched.iter().position(|r| same(r, e)) {
            Some(i) => {
                unmatched.swap_remove(i);
            }
            None => return Err(format!("missing row {e}; got {}", Value::Array(rows))),
        }
    }
    if !unmatched.is_empty() {
        return Err(format!("extra rows {}", Value::Array(unmatched)));
    }
    Ok(())
}

#[test]
fn the_official_sql_on_fhir_suite() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir())
        .expect("the vendored suite")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut total) = (0, 0);
    let mut unexpected = Vec::new();
    for path in &files {
        let file_name = path.file_name().unwrap().to_string_lossy().to_string();
        let suite: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let resources = suite["resources"].as_array().cloned().unwrap_or_default();
        for case in suite["tests"].as_array().unwrap() {
            total += 1;
            let title = case["title"].as_str().unwrap_or("");
            let known = KNOWN_FAILURES
                .iter()
                .find(|(f, t, _)| *f == file_name && *t == title);
            match (run_case(&resources, case), known) {
                (Ok(()), None) => passed += 1,
                (Ok(()), Some(_)) => unexpected.push(format!(
                    "{file_name} / {title}: passes now; take it off KNOWN_FAILURES"
                )),
                (Err(_), Some(_)) => {}
                (Err(e), None) => unexpected.push(format!("{file_name} / {title}: {e}")),
            }
        }
    }
    println!(
        "SQL on FHIR v2 suite: {passed} of {total} cases pass ({} known failures)",
        KNOWN_FAILURES.len()
    );
    assert!(total >= 134, "the whole suite ran ({total} cases)");
    assert!(
        unexpected.is_empty(),
        "{} unexpected results:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
