//! Fuzz targets for every parser that takes a client's bytes, in a form
//! that runs on the stable toolchain: libFuzzer (`libfuzzer-sys`) with the
//! coverage instrumentation passed as ordinary `rustc` flags
//! (`fuzz/run.sh`), no nightly `-Z` flag.
//!
//! Each target is a plain function here ([`targets`]), so the same code
//! runs under libFuzzer (`fuzz_targets/`, feature `libfuzzer`) and in
//! `cargo test`, which replays every seed ([`seeds`]) and every input a
//! fuzzer once crashed on (`fuzz/regressions/<target>/`).

pub mod embedded;
pub mod seeds;
pub mod targets;

/// A target: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("fhirpath", targets::fhirpath),
    ("type_filter", targets::type_filter),
    ("kickoff", targets::kickoff),
    ("view_definition", targets::view_definition),
    ("resource_write", targets::resource_write),
    ("api_bodies", targets::api_bodies),
    ("auth", targets::auth),
];
