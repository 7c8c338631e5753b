//! What the functions' benches share: their command-line arguments and the
//! vendored Synthea sample.

use std::io::Read;

/// The text after `name` on the command line.
pub fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The number after `name` (`1_000_000` allowed), or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    arg_text(name)
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The resources of the vendored Synthea sample (`tests/data/synthea-r4-100`,
/// 38,473), one JSON text each, file by file in name order.
#[allow(dead_code)]
pub fn synthea_lines() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/synthea-r4-100");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    out
}
