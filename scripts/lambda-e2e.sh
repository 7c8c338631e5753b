#!/usr/bin/env bash
# The Lambda functions end to end: the real function binaries under
# `cargo lambda watch`, against moto, one whole export (kick-off, worker
# driven from the SQS queue, status, 303 to a presigned URL, download), with
# the downloaded line counts checked against the store.
#
#   scripts/lambda-e2e.sh                 # starts its own moto
#   BULK_EXPORT_MOTO_URL=http://127.0.0.1:5000 scripts/lambda-e2e.sh
#
# Needs python3; installs moto[server] and cargo-lambda into .venv if they
# are not there. Everything it starts listens on 127.0.0.1 and is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
PATIENTS=${PATIENTS:-25}

if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/cargo-lambda" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'moto[server]' cargo-lambda
fi
export PATH="$VENV/bin:$PATH"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() { # url, seconds
  for _ in $(seq 1 $(( $2 * 5 ))); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "nothing answers at $1" >&2
  return 1
}

WORK=$(mktemp -d)
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${BULK_EXPORT_MOTO_URL:-}" ]; then
  MOTO_PORT=$(free_port)
  setsid python scripts/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
  STARTED+=($!)
  BULK_EXPORT_MOTO_URL=http://127.0.0.1:$MOTO_PORT
  wait_for "$BULK_EXPORT_MOTO_URL/moto-api/" 60
fi
export AWS_ENDPOINT_URL=$BULK_EXPORT_MOTO_URL
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1

echo "== building the functions"
cargo build --locked -p bulk-export-functions --bins
ADMIN=target/debug/bulk-export-aws

echo "== provisioning tables, bucket and queue on moto ($AWS_ENDPOINT_URL)"
eval "$("$ADMIN" provision --prefix "e2e-$(date +%s)-$$")"
echo "== loading $PATIENTS sample patients"
"$ADMIN" load-sample --patients "$PATIENTS"
EXPECTED=$("$ADMIN" count)
echo "in the store: $EXPECTED"

PORT=$(free_port)
export BULK_EXPORT_AUTH=open
export BULK_EXPORT_PUBLIC_URL=http://127.0.0.1:$PORT
export BULK_EXPORT_MAX_RESOURCES_PER_FILE=300
echo "== cargo lambda watch on 127.0.0.1:$PORT"
setsid cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$PORT" >"$WORK/watch.log" 2>&1 &
STARTED+=($!)
if ! wait_for "http://127.0.0.1:$PORT/fhir/metadata" 300; then
  tail -50 "$WORK/watch.log"
  exit 1
fi

echo "== one export through the functions"
if ! python3 scripts/lambda_e2e.py --base "http://127.0.0.1:$PORT" \
    --queue-url "$BULK_EXPORT_QUEUE_URL" --expected "$EXPECTED"; then
  echo "-- cargo lambda watch log (last 80 lines)"
  tail -80 "$WORK/watch.log"
  exit 1
fi
