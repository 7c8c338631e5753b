//! The official FHIRPath R4 test suite (vendored in
//! `tests/data/fhirpath-r4`), run through our FHIRPath.
//!
//! Each case's expression is evaluated on its input resource (the JSON of
//! the example it names) or on nothing; the result must equal the expected
//! outputs, in order, each compared by its type. A case marked `invalid`
//! passes when parsing or evaluation fails. The cases known to fail are
//! listed in `fhirpath-known-failures.txt` beside this file, each with its
//! reason: the test fails when a case not listed fails, and when a listed
//! one passes (take it off the list).
//!
//! `cargo test -p fhir-query --test fhirpath_suite -- --nocapture` prints
//! the pass count; `FHIRPATH_SUITE_LIST=1` prints every failing case with
//! what it gave, in the list's format.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bigdecimal::BigDecimal;
use fhir_query::fhirpath::{Item, Path};
use serde_json::Value;

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/fhirpath-r4")
}

/// One `<test>` of the suite.
struct Case {
    name: String,
    group: String,
    input: Option<String>,
    expression: String,
    invalid: bool,
    predicate: bool,
    outputs: Vec<(String, String)>,
}

fn read_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(suite_dir().join("tests-fhir-r4.xml")).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let mut cases = Vec::new();
    for group in doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("group"))
    {
        for test in group.children().filter(|n| n.has_tag_name("test")) {
            let expression = test
                .children()
                .find(|n| n.has_tag_name("expression"))
                .unwrap();
            // Two cases share a name (testEquivalent23): the second is
            // listed as "testEquivalent23 (2)".
            let mut name = test.attribute("name").unwrap_or("unnamed").to_string();
            if cases.iter().any(|c: &Case| c.name == name) {
                name.push_str(" (2)");
            }
            cases.push(Case {
                name,
                group: group.attribute("name").unwrap_or("").to_string(),
                input: test.attribute("inputfile").map(str::to_string),
                expression: expression.text().unwrap_or("").to_string(),
                invalid: expression.attribute("invalid").is_some(),
                predicate: test.attribute("predicate") == Some("true"),
                outputs: test
                    .children()
                    .filter(|n| n.has_tag_name("output"))
                    .map(|o| {
                        let kind = o.attribute("type").unwrap_or("").to_string();
                        (kind, o.text().unwrap_or("").to_string())
                    })
                    .collect(),
            });
        }
    }
    cases
}

/// The input resources, by the name the suite gives them (`.xml` or
/// `.json`); each is kept in JSON.
fn inputs() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(suite_dir().join("input")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        out.insert(format!("{stem}.xml"), value.clone());
        out.insert(format!("{stem}.json"), value);
    }
    out
}

fn decimal(text: &str) -> Option<BigDecimal> {
    text.trim().parse().ok()
}

/// Whether an item equals an expected output of the given type.
fn matches(item: &Item, kind: &str, want: &str) -> bool {
    let value = item.value.as_ref();
    match kind {
        "boolean" => value.as_bool() == Some(want == "true"),
        "integer" | "decimal" => match value {
            Value::Number(n) => decimal(&n.to_string()) == decimal(want),
            _ => false,
        },
        "date" | "dateTime" | "time" => value.as_str().is_some_and(|got| {
            let strip = |s: &str| {
                s.trim_start_matches('@')
                    .trim_start_matches('T')
                    .to_string()
            };
            strip(got) == strip(want)
        }),
        "Quantity" => {
            // `4 'wk'`, or `4 days`: the value, then the unit.
            let (number, unit) = want.split_once(' ').unwrap_or((want, ""));
            let unit = unit.trim_matches('\'');
            let got_unit = value
                .get("code")
                .or_else(|| value.get("unit"))
                .and_then(Value::as_str);
            value
                .get("value")
                .is_some_and(|v| decimal(&v.to_string()) == decimal(number))
                && got_unit == Some(unit)
        }
        // No type given: a temporal value by its `@`, a number or a
        // Quantity by its exact text (boundaries are about the digits).
        "" if want.starts_with('@') => matches(item, "dateTime", want),
        "" => match value {
            Value::Number(n) => n.to_string() == want,
            Value::Object(q) => {
                let unit = q
                    .get("code")
                    .or_else(|| q.get("unit"))
                    .and_then(Value::as_str);
                q.get("value")
                    .zip(unit)
                    .is_some_and(|(v, u)| format!("{v} '{u}'") == want)
            }
            _ => value.as_str() == Some(want),
        },
        _ => value.as_str() == Some(want),
    }
}

/// Runs one case; `Err` says what it gave instead.
fn run_case(case: &Case, inputs: &BTreeMap<String, Value>) -> Result<(), String> {
    let path = match Path::parse(&case.expression) {
        Ok(p) => p,
        Err(_) if case.invalid => return Ok(()),
        Err(e) => return Err(format!("parse error: {e}")),
    };
    let empty = Value::Object(Default::default());
    let resource = match &case.input {
        Some(name) => inputs.get(name).ok_or_else(|| format!("no input {name}"))?,
        None => &empty,
    };
    let result = match path.evaluate(resource) {
        Ok(r) => r,
        Err(_) if case.invalid => return Ok(()),
        Err(e) => return Err(format!("error: {e}")),
    };
    if case.invalid {
        return Err(format!("no error; gave {}", show(&result)));
    }
    let result = if case.predicate {
        vec![Item::typed(Value::Bool(!result.is_empty()), "Boolean")]
    } else {
        result
    };
    let same = result.len() == case.outputs.len()
        && result
            .iter()
            .zip(&case.outputs)
            .all(|(item, (kind, want))| matches(item, kind, want));
    if same {
        Ok(())
    } else {
        Err(format!("gave {}", show(&result)))
    }
}

fn show(items: &[Item]) -> String {
    let shown: Vec<String> = items.iter().map(|i| i.value.to_string()).collect();
    let text = format!("[{}]", shown.join(", "));
    if text.len() > 120 {
        format!("{}...", &text[..text.floor_char_boundary(117)])
    } else {
        text
    }
}

/// The known failures: `name<TAB>reason` per line; `#` starts a comment.
fn known_failures() -> BTreeMap<String, String> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fhirpath-known-failures.txt");
    std::fs::read_to_string(here)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, why) = l.split_once('\t').unwrap_or((l, ""));
            (name.trim().to_string(), why.trim().to_string())
        })
        .collect()
}

#[test]
fn the_official_fhirpath_suite() {
    let cases = read_cases();
    let inputs = inputs();
    let known = known_failures();
    let list = std::env::var_os("FHIRPATH_SUITE_LIST").is_some();
    let (mut passed, mut unexpected, mut fixed) = (0, Vec::new(), Vec::new());
    for case in &cases {
        let outcome = run_case(case, &inputs);
        if let Err(why) = &outcome {
            if list {
                println!("{}\t{}: {why}", case.name, case.group);
            }
        }
        match (outcome, known.contains_key(&case.name)) {
            (Ok(()), false) => passed += 1,
            (Ok(()), true) => fixed.push(case.name.clone()),
            (Err(_), true) => {}
            (Err(why), false) => unexpected.push(format!(
                "{} ({}): {} => {why}",
                case.name, case.group, case.expression
            )),
        }
    }
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let stale: Vec<&String> = known
        .keys()
        .filter(|k| !names.contains(k.as_str()))
        .collect();
    println!(
        "FHIRPath R4 suite: {passed} of {} cases pass; {} known failures",
        cases.len(),
        known.len()
    );
    assert!(stale.is_empty(), "listed but not in the suite: {stale:?}");
    assert!(
        fixed.is_empty(),
        "these cases now pass: take them off fhirpath-known-failures.txt: {fixed:?}"
    );
    assert!(
        unexpected.is_empty(),
        "{} cases fail that are not listed:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
