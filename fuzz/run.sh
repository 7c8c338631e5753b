#!/usr/bin/env bash
# Fuzzes every parser that takes a client's bytes, on the stable toolchain:
# libFuzzer (libfuzzer-sys) with its coverage instrumentation passed as
# ordinary rustc flags, so no nightly is needed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
#   FUZZ_BUILD_ONLY=1 fuzz/run.sh                       (build, then stop)
#
# Prints executions, corpus size and peak RSS per target. Fails if a target
# crashed, hung (10 s per input) or ran out of memory (2 GB); the input is
# kept under target/fuzz/artifacts/ and belongs in fuzz/regressions/TARGET/
# once fixed, where `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(fhirpath type_filter kickoff view_definition resource_write api_bodies auth)
fi
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/fuzz
mkdir -p "$OUT/artifacts"

# The instrumented build: flags for the target only (--target keeps them
# off build scripts), in a target folder of its own.
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "fuzz-$t"); done
env -u RUSTC_WORKSPACE_WRAPPER \
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --locked --profile fuzz -p bulk-export-fuzz --features libfuzzer \
    --target "$HOST" --target-dir "$OUT/build" "${bins[@]}"

if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
  exit 0
fi

# Seeds from the test suites, written by the plain (uninstrumented) build.
cargo build --locked -q -p bulk-export-fuzz --bin fuzz-seeds
for t in "${TARGETS[@]}"; do
  target/debug/fuzz-seeds "$t" "$OUT/corpus/$t" >/dev/null
done

failed=0
printf '%-16s %12s %10s %8s %s\n' target executions corpus rss_mb result
for t in "${TARGETS[@]}"; do
  log="$OUT/$t.log"
  if "$OUT/build/$HOST/fuzz/fuzz-$t" "$OUT/corpus/$t" \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -max_len=16384 -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t-" \
      >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log)"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  corpus=$(find "$OUT/corpus/$t" -type f | wc -l)
  printf '%-16s %12s %10s %8s %s\n' "$t" "${execs:-?}" "$corpus" "${rss:-?}" "$result"
done
if [ "$failed" -ne 0 ]; then
  ls -l "$OUT/artifacts" >&2
  for t in "${TARGETS[@]}"; do
    grep -q -E 'ERROR: libFuzzer|panicked|deadly signal' "$OUT/$t.log" && tail -40 "$OUT/$t.log" >&2
  done
  exit 1
fi
