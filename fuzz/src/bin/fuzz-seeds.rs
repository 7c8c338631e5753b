//! Writes a target's seeds into a folder, for libFuzzer's corpus:
//! `fuzz-seeds TARGET DIR` (`fuzz/run.sh` calls it).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, dir] = args.as_slice() else {
        eprintln!("usage: fuzz-seeds TARGET DIR");
        std::process::exit(2);
    };
    std::fs::create_dir_all(dir).expect("the corpus folder");
    let seeds = bulk_export_fuzz::seeds::seeds(target);
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:04}"), seed).expect("a seed file");
    }
    println!("{target}: {} seeds", seeds.len());
}
