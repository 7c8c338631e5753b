//! The FHIRPath evaluator and the ViewDefinition engine on the Synthea
//! sample: the figures behind choosing our own FHIRPath subset (#13).
//!
//! `cargo bench -p bulk-export-local --bench fhirpath`
//!
//! 1. Parses `Observation.code.coding.where(system='http://loinc.org').code`
//!    once and evaluates it on every Observation (parsed to JSON first,
//!    outside the timing): resources/s.
//! 2. Runs three views (patients, observations with a forEach over codings,
//!    conditions) over all 38,473 resources: resources/s and rows/s.

use std::time::Instant;

use bulk_export::fhirpath::Path;
use bulk_export::view::View;
use serde_json::Value;

mod common;
use common::{synthea_files, synthea_views};

fn main() {
    let resources: Vec<Value> = synthea_files()
        .iter()
        .flat_map(|(_, text)| {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let observations: Vec<&Value> = resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .collect();

    let path =
        Path::parse("Observation.code.coding.where(system='http://loinc.org').code").unwrap();
    let mut best = f64::MAX;
    let mut codes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        codes = 0;
        for o in &observations {
            codes += path.evaluate(o).unwrap().len();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "FHIRPath: {} Observations, {codes} codes, best of 5 {best:.3} s = {:.0} resources/s",
        observations.len(),
        observations.len() as f64 / best
    );

    let views = synthea_views();
    let views: Vec<View> = views.iter().map(|v| View::parse(v).unwrap()).collect();
    let mut best = f64::MAX;
    let mut rows = 0;
    for _ in 0..5 {
        let t = Instant::now();
        rows = 0;
        for r in &resources {
            for v in &views {
                rows += v.rows(r).unwrap().len();
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "Views: 3 views over {} resources, {rows} rows, best of 5 {best:.3} s = {:.0} resources/s, {:.0} rows/s",
        resources.len(),
        resources.len() as f64 / best,
        rows as f64 / best
    );
}
