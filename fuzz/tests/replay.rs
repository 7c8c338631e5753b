//! Every target on its seeds and on the inputs a fuzzer once crashed it
//! with: a plain test run catches a regression without a fuzzer.

use bulk_export_fuzz::seeds::{regressions, seeds};
use bulk_export_fuzz::TARGETS;

#[test]
fn every_target_takes_its_seeds_and_regressions() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(seeds.len() >= 2, "{name} has seeds");
        for seed in &seeds {
            target(seed);
        }
        for (file, input) in regressions(name) {
            eprintln!("{name}: regression {file}");
            target(&input);
        }
    }
}
