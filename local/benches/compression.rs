//! What compressing export files would cost and save: the figures behind
//! the choice for compressed downloads (#16, item 8).
//!
//! `cargo bench -p bulk-export-local --bench compression`
//!
//! Takes the vendored Synthea sample (`tests/data/synthea-r4-100`, 38,473
//! resources) as the NDJSON an export writes, and gzips it at levels 1, 2,
//! 6 and 9 (on zlib-rs, the workspace's flate2 backend), in 8 MiB chunks
//! as the multipart sink would upload them (each chunk a gzip member of
//! its own). Prints, per level: bytes stored or sent
//! against the uncompressed size, and CPU seconds per GB of NDJSON, to
//! compress and to decompress.

use std::io::{Read, Write};
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

const CHUNK: usize = 8 << 20;

fn main() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/synthea-r4-100");
    let mut ndjson = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    names.sort();
    for path in names {
        MultiGzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_end(&mut ndjson)
            .unwrap();
    }
    let gb = ndjson.len() as f64 / 1e9;
    println!(
        "NDJSON: {} bytes, {} lines",
        ndjson.len(),
        ndjson.iter().filter(|&&b| b == b'\n').count()
    );
    for level in [1, 2, 6, 9] {
        let t = Instant::now();
        let mut stored = Vec::new();
        for chunk in ndjson.chunks(CHUNK) {
            let mut gz = GzEncoder::new(Vec::new(), Compression::new(level));
            gz.write_all(chunk).unwrap();
            stored.extend(gz.finish().unwrap());
        }
        let compress = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut back = Vec::with_capacity(ndjson.len());
        MultiGzDecoder::new(&stored[..])
            .read_to_end(&mut back)
            .unwrap();
        let decompress = t.elapsed().as_secs_f64();
        assert_eq!(back, ndjson, "gzip round trip");
        println!(
            "SUMMARY gzip level {level}: {} bytes = {:.1}% of NDJSON ({:.1}x smaller); \
             compress {:.1} CPU s/GB, decompress {:.1} CPU s/GB",
            stored.len(),
            100.0 * stored.len() as f64 / ndjson.len() as f64,
            ndjson.len() as f64 / stored.len() as f64,
            compress / gb,
            decompress / gb
        );
    }
}
