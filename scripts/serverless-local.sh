#!/usr/bin/env bash
# The serverless edition on LocalStack, in one command: the Lambda function
# binaries under `cargo lambda watch` (routed as template.yaml routes them,
# see [workspace.metadata.lambda.watch.router] in Cargo.toml), on the
# tables, bucket, queues, bus and signing-key parameter of template.yaml,
# with sample patients loaded, the worker fed from SQS and the scheduler
# ticking every minute. Stays in the foreground; Ctrl-C stops all it started.
#
#   scripts/serverless-local.sh [--port N] [--patients N] [--auth] [--prefix P]
#
#   --port N      where the FHIR base listens (127.0.0.1; default: a free port)
#   --patients N  sample patients loaded into an empty store (default 100)
#   --auth        AuthMode=smart (default: open, like bulk-export-local)
#   --prefix P    names of the tables, bucket, queues... (default bulk-export)
#
# Reuses: a LocalStack that is already running (left running on exit), and
# what a previous run on it provisioned under the same prefix (the sample is
# loaded only into an empty store, as bulk-export-local does). A LocalStack
# this script starts is stopped on exit, and its data go with it (in memory).
# There is one LocalStack per user (scripts/emulators/localstack.sh), and a
# `start` with another S3_UPLOAD_PART_MIN_SIZE restarts it, as the tests'
# (BULK_EXPORT_AWS_EMULATOR=localstack) do: this script then stops, saying so.
# The engine's settings (BULK_EXPORT_RETENTION_DAYS, ..._MAX_RESOURCES_PER_FILE
# and the like) are template.yaml's defaults unless set in the environment.
# Needs python3, and what scripts/emulators/localstack.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
PORT='' PATIENTS=100 AUTH=open PREFIX=bulk-export
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --patients) PATIENTS=$2; shift 2 ;;
    --auth) AUTH=smart; shift ;;
    --prefix) PREFIX=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "[serverless-local] $*" >&2; }
# A port we could bind, so that nothing else answers in the functions' place.
FREE=$(python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); print(s.getsockname()[1])' "${PORT:-0}" 2>/dev/null) ||
  { say "port $PORT is in use"; exit 1; }
PORT=$FREE

# .venv as scripts/lambda-e2e.sh makes it (moto brings boto3).
if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/cargo-lambda" ]; then
  say "installing moto[server] and cargo-lambda into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'moto[server]' cargo-lambda
fi
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bulk-export-sl.XXXXXX")
STARTED=() LS_OURS=0 SLEEPER=''
# shellcheck disable=SC2329 # run by the trap below
cleanup() {
  trap - EXIT INT TERM
  for pid in "${STARTED[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  [ -z "$SLEEPER" ] || kill "$SLEEPER" 2>/dev/null || true
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # Ours, unless someone restarted it since (then it is on another port).
  if [ "$LS_OURS" = 1 ] && [ "$(scripts/emulators/localstack.sh url 2>/dev/null)" = "$LS_URL" ]; then
    scripts/emulators/localstack.sh stop || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'say stopping; exit 130' INT
trap 'say stopping; exit 143' TERM

say "building the functions"
cargo build --locked -p bulk-export-functions --bins
TARGET=$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
ADMIN=$TARGET/debug/bulk-export-aws

# Someone else's LocalStack (tests, another run) is used as it is: `start`
# would restart one that runs with another S3 part minimum.
if LS_URL=$(scripts/emulators/localstack.sh url 2>/dev/null) &&
  scripts/emulators/localstack.sh status 2>/dev/null; then
  say "using the LocalStack already running at $LS_URL (left running on exit)"
else
  LS_OURS=1
  LS_URL=$(scripts/emulators/localstack.sh start)
fi
export AWS_ENDPOINT_URL=$LS_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

say "provisioning $PREFIX-* on LocalStack"
NAMES=$("$ADMIN" provision --prefix "$PREFIX") # (a failure inside eval "$(...)" would pass)
eval "$NAMES"
NAMES=$("$PY" scripts/serverless_local.py provision "$PREFIX" "$BULK_EXPORT_QUEUE_URL")
eval "$NAMES"
COUNTS=$("$ADMIN" count)
if [ "$PATIENTS" -gt 0 ] && [ "$COUNTS" = '{}' ]; then
  say "loading $PATIENTS sample patients"
  "$ADMIN" load-sample --patients "$PATIENTS"
fi

BASE=http://127.0.0.1:$PORT
# The function environment of template.yaml (Globals), at its defaults.
# The public URL is set because no API Gateway adds x-forwarded-proto here.
export BULK_EXPORT_BASE_PATH=/fhir BULK_EXPORT_PUBLIC_URL=$BASE BULK_EXPORT_AUTH=$AUTH
export BULK_EXPORT_RETENTION_DAYS=${BULK_EXPORT_RETENTION_DAYS:-7}
export BULK_EXPORT_MAX_RESOURCES_PER_FILE=${BULK_EXPORT_MAX_RESOURCES_PER_FILE:-100000}
export BULK_EXPORT_PART_SIZE_MIB=${BULK_EXPORT_PART_SIZE_MIB:-8}
export BULK_EXPORT_PRESIGN_SECONDS=${BULK_EXPORT_PRESIGN_SECONDS:-300}
export BULK_EXPORT_MAX_ACTIVE_EXPORTS_PER_CLIENT=${BULK_EXPORT_MAX_ACTIVE_EXPORTS_PER_CLIENT:-10}
export BULK_EXPORT_STATUS_WAIT_MS=${BULK_EXPORT_STATUS_WAIT_MS:-1000}
export BULK_EXPORT_JOB_REUSE_SECONDS=${BULK_EXPORT_JOB_REUSE_SECONDS:-600}
export BULK_EXPORT_GZIP_FILES=${BULK_EXPORT_GZIP_FILES:-true}
export BULK_EXPORT_REVISIONS_WAIT_SECONDS=${BULK_EXPORT_REVISIONS_WAIT_SECONDS:-25}
export BULK_EXPORT_LINK_MAX_SECONDS=${BULK_EXPORT_LINK_MAX_SECONDS:-3600}
export BULK_EXPORT_METRICS_STACK=$PREFIX BULK_EXPORT_WORKER_MEMORY_MB=1024
export BULK_EXPORT_SHARDS=16 RUST_LOG=${RUST_LOG:-info}
# For the admin CLI in another terminal (register-client, count, load-ndjson).
export -p | grep -E '^declare -x (AWS_|BULK_EXPORT_)' >"$WORK/env"

say "starting the functions (cargo lambda watch on $BASE)"
setsid cargo lambda watch --ignore-changes -A 127.0.0.1 -P "$PORT" >"$WORK/watch.log" 2>&1 &
STARTED+=($!)
for _ in $(seq 1 300); do # its port opens at once; the functions start on first use
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "${STARTED[0]}" 2>/dev/null || break
  sleep 0.2
done
if ! "$PY" scripts/serverless_local.py warm "$BASE"; then
  tail -40 "$WORK/watch.log" >&2
  exit 1
fi
setsid "$PY" scripts/serverless_local.py feed "$BASE" "$BULK_EXPORT_QUEUE_URL" &
STARTED+=($!)

LS_NOTE="left running on exit"
[ "$LS_OURS" = 0 ] || LS_NOTE="stopped on exit"
cat >&2 <<EOF
  LocalStack         $LS_URL ($LS_NOTE)
  tables             $BULK_EXPORT_JOBS_TABLE, $BULK_EXPORT_RESOURCES_TABLE
  bucket, queue      $BULK_EXPORT_BUCKET, $BULK_EXPORT_QUEUE_URL
  completion events  $BULK_EXPORT_EVENTS_QUEUE_URL (from bus $BULK_EXPORT_EVENT_BUS)
  auth               $AUTH
  function logs      $WORK/watch.log
  admin CLI          source $WORK/env; $ADMIN --help
EOF
echo "bulk-export (serverless, LocalStack) is ready: FHIR base $BASE/fhir"

# Until Ctrl-C, or until the functions, the feeder or LocalStack stop.
MISSES=0
while kill -0 "${STARTED[0]}" 2>/dev/null && kill -0 "${STARTED[1]}" 2>/dev/null; do
  if curl -s -m 5 -o /dev/null "$LS_URL/_localstack/health"; then
    MISSES=0
  elif [ $((MISSES += 1)) -ge 2 ]; then
    say "LocalStack at $LS_URL stopped answering (stopped, or restarted by another start)"
    exit 1
  fi
  sleep 5 & # waited for in the background, so that a signal is handled at once
  SLEEPER=$!
  wait "$SLEEPER"
done
say "cargo lambda watch or the feeder stopped; the last function log lines:"
tail -20 "$WORK/watch.log" >&2
exit 1
