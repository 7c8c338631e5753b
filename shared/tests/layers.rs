//! The layers of `bulk-export` point one way, and this test keeps them so.
//!
//! Every `crate::<module>` path in `src/` (in code, imports and doc links
//! alike) is an edge from the file's top-level module to `<module>`. Each
//! module may reach only the modules listed for it below: a new edge, a
//! wrong-way one above all, fails here with the file that made it. The
//! `fhir-query` crate sits under all of them; Cargo keeps it from reaching
//! back (it does not depend on this crate, and a cycle would not build).
//!
//! ```text
//! service ─┬─> http ─┬─> engine ─┬─> ports ──> domain ──> fhir-query
//!          │         └─> auth ───┘
//!          ├─> embedded, aws (adapters) ──> ports, domain
//!          └─> loader, sample, cli
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which modules each top-level module may use. Keep it short: an edge
/// added here is a design decision, not a way to make the test pass.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("private_file", &[]),
    ("sample", &["domain"]),
    ("ports", &["domain"]),
    ("clock", &["ports", "domain"]),
    ("auth", &["domain", "ports", "clock", "private_file"]),
    ("engine", &["domain", "ports"]),
    ("embedded", &["domain", "ports", "private_file"]),
    ("aws", &["domain", "ports"]),
    ("http", &["engine", "auth", "domain", "ports"]),
    ("cli", &["domain", "ports"]),
    ("loader", &["engine", "domain", "ports", "sample"]),
    (
        "service",
        &["http", "engine", "auth", "domain", "ports", "clock"],
    ),
    ("lib", &[]),
];

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`engine/worker/revisions.rs` →
/// `engine`, `clock.rs` → `clock`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src_dir()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

fn identifier_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a file's text names through `crate::`, including
/// grouped imports (`crate::{a, b::c}`).
fn modules_named(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        named.insert(identifier_at(&group[i..]).to_string());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.insert(identifier_at(rest).to_string());
        }
    }
    named
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());

    let mut wrong = Vec::new();
    for file in &files {
        let from = module_of(file);
        let Some(may) = allowed.get(from.as_str()) else {
            wrong.push(format!(
                "{}: module `{from}` is not in ALLOWED",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for to in modules_named(&text) {
            if to != from && !may.contains(&to.as_str()) {
                wrong.push(format!("{}: `{from}` uses `crate::{to}`", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_plain_grouped_and_nested_paths() {
    let text = "use crate::domain::job::Job;\n\
                use crate::{ports::Clock, engine::{a, b}, http};\n\
                /// [`crate::auth::X`]";
    let named: Vec<String> = modules_named(text).into_iter().collect();
    assert_eq!(named, ["auth", "domain", "engine", "http", "ports"]);
}

#[test]
fn fhir_query_does_not_depend_on_the_service() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fhir-query/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    assert!(
        !text.contains("bulk-export"),
        "fhir-query must not depend on the service crate"
    );
}
