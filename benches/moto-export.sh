#!/usr/bin/env bash
# The export benchmark on the AWS adapters against moto (see
# functions/benches/moto_export.rs): starts moto on a free 127.0.0.1 port
# (installing it into .venv if needed), runs the bench, stops moto.
#
#   benches/moto-export.sh [RESOURCES] [extra bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
RESOURCES=${1:-100000}
shift || true
VENV=${VENV:-$PWD/.venv}
if [ ! -x "$VENV/bin/moto_server" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'moto[server]'
fi
if [ -z "${BULK_EXPORT_MOTO_URL:-}" ]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  MOTO_LOG=${MOTO_LOG:-${TMPDIR:-/tmp}/moto-export-bench.log}
  echo "moto on 127.0.0.1:$PORT, log in $MOTO_LOG"
  # scripts/moto_server.py: moto with its DynamoDB writes made atomic.
  setsid "$VENV/bin/python" scripts/moto_server.py -H 127.0.0.1 -p "$PORT" >"$MOTO_LOG" 2>&1 &
  MOTO=$!
  trap 'kill -- "-$MOTO" 2>/dev/null || kill "$MOTO" 2>/dev/null || true' EXIT
  export BULK_EXPORT_MOTO_URL=http://127.0.0.1:$PORT
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "$BULK_EXPORT_MOTO_URL/moto-api/" && break
    sleep 0.2
  done
fi
cargo bench --locked -p bulk-export-functions --bench moto_export ${BENCH_PROFILE:+--profile "$BENCH_PROFILE"} -- --resources "$RESOURCES" "$@"
