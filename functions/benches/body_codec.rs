//! What compressing version bodies at rest saves and costs
//! (`shared/src/aws/body_codec.rs`): per resource, the bytes DynamoDB
//! stores and charges reads on, the read units a strongly consistent Query
//! takes (one per 4 KB of item), and the CPU of compressing (on write) and
//! decompressing (on the export's path).
//!
//! `cargo bench -p bulk-export-functions --bench body_codec -- --resources 1000000`
//!
//! Runs over the generated sample (`--resources`, as the local and moto
//! benches) and over the vendored Synthea sample. No emulator needed; the
//! item layout is the store's (`aws/resources.rs`): keys, `rid`, `ver`,
//! `by` and the body; DynamoDB counts attribute names and values.

use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_export::aws::body_codec;
use bulk_export::sample::{generate, SampleConfig};
use serde_json::Value;

mod common;
use common::arg;

fn main() {
    let n = arg("--resources", 100_000);
    let generated: Vec<String> = generate(SampleConfig::for_resources(n, 7))
        .take(n)
        .map(|v| v.to_string())
        .collect();
    measure(&format!("generated {n}"), &generated);
    measure("Synthea", &common::synthea_lines());
}

/// One version item's bytes as DynamoDB counts them, the body aside.
fn overhead(json: &str) -> usize {
    let v: Value = serde_json::from_str(json).unwrap();
    let t = v["resourceType"].as_str().unwrap_or("").len();
    let id = v["id"].as_str().unwrap_or("").len();
    // pk "V#000", sk "<type>#<17 digits>", rid "<type>#<id>", ver 1,
    // by "bulk-load" (an author of that length).
    (2 + 5) + (2 + t + 18) + (3 + t + 1 + id) + (3 + 2) + (2 + 9)
}

fn stored(attr: &(&str, AttributeValue)) -> usize {
    attr.0.len()
        + match &attr.1 {
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::S(s) => s.len(),
            _ => 0,
        }
}

fn measure(name: &str, bodies: &[String]) {
    let n = bodies.len() as f64;
    let plain: usize = bodies.iter().map(String::len).sum();
    let overhead: usize = bodies.iter().map(|b| overhead(b)).sum();

    let t = Instant::now();
    let encoded: Vec<_> = bodies.iter().map(|b| body_codec::encode(b)).collect();
    let encode_us = t.elapsed().as_secs_f64() * 1e6 / n;
    let at_rest: usize = encoded.iter().map(stored).sum();

    let items: Vec<_> = encoded
        .into_iter()
        .map(|(k, v)| std::collections::HashMap::from([(k.to_string(), v)]))
        .collect();
    let t = Instant::now();
    let mut back = 0;
    for item in &items {
        back += body_codec::decode(item).unwrap().unwrap().len();
    }
    let decode_us = t.elapsed().as_secs_f64() * 1e6 / n;
    assert_eq!(back, plain, "every byte back");

    let units = |body: usize| (body + overhead) as f64 / 4096.0 / n;
    println!(
        "SUMMARY {name}: {:.0} resources; body {:.0} B plain, {:.0} B at rest ({:.2}x); \
         item {:.0} B -> {:.0} B; read units per resource {:.4} -> {:.4} (strongly consistent); \
         CPU per resource: compress {encode_us:.2} us, decompress {decode_us:.2} us",
        n,
        plain as f64 / n,
        at_rest as f64 / n,
        plain as f64 / at_rest as f64,
        (plain + overhead) as f64 / n,
        (at_rest + overhead) as f64 / n,
        units(plain),
        units(at_rest),
    );
}
