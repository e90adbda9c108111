#!/usr/bin/env bash
# `make demo`: a throwaway Chroma with a small data set, the daemon with a demo
# config, and the CLI driving it. Everything lives in a temp dir removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/target/debug/chromaprod"
CHROMA_BIN=${CHROMA_BIN:-$ROOT/.tools/venv/bin/chroma}
PY="$ROOT/.tools/venv/bin/python"
WORK=$(mktemp -d /tmp/chromaprod-demo.XXXXXX)
CHROMA_PID=""; DAEMON_PID=""

cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  [ -n "$CHROMA_PID" ] && kill "$CHROMA_PID" 2>/dev/null && wait "$CHROMA_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS CMD...
  local t=$1; shift
  for _ in $(seq 1 $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $*" >&2; return 1
}

CHROMA_PORT=$(free_port); METRICS_PORT=$(free_port)
CHROMA_URL="http://127.0.0.1:$CHROMA_PORT"

step "Starting a throwaway Chroma server on $CHROMA_URL"
"$CHROMA_BIN" run --path "$WORK/chroma-data" --host 127.0.0.1 --port "$CHROMA_PORT" >"$WORK/chroma.log" 2>&1 &
CHROMA_PID=$!
wait_for 30 curl -sf "$CHROMA_URL/api/v2/healthcheck"
"$PY" demo/seed.py "$CHROMA_URL" 200

step "Writing the demo config (the example config with demo paths)"
CONFIG="$WORK/chromaprod.toml"
sed -e "s#^endpoints = .*#endpoints = [\"$CHROMA_URL\"]#" \
    -e "s#^socket_path = .*#socket_path = \"$WORK/control.sock\"#" \
    -e "s#^state_dir = .*#state_dir = \"$WORK/state\"#" \
    -e "s#^storage_path = .*#storage_path = \"$WORK/backups\"#" \
    -e "s#^\# listen = .*#listen = \"127.0.0.1:$METRICS_PORT\"#" \
    -e "s#^format = \"auto\"#format = \"text\"#" \
    -e "s#^watch_poll_interval = .*#watch_poll_interval = \"1s\"#" \
    -e "s#^\# key_file = .*#key_file = \"$WORK/backup-key\"#" \
    -e "s#^path = \"/etc/chromaprod/migrations\"#path = \"$WORK/migrations\"#" \
    etc/chromaprod.toml >"$CONFIG"
cp -r migrations "$WORK/migrations"
"$BIN" key generate "$WORK/backup-key"
"$BIN" validate --config "$CONFIG"
export CHROMAPROD_CONFIG="$CONFIG"

step "Starting the daemon (log: $WORK/daemon.log)"
"$BIN" daemon >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
wait_for 30 "$BIN" status

step "chromaprod status"
"$BIN" status

step "chromaprod query: the 5 notes nearest to doc-7"
"$BIN" query --collection articles --id doc-7 -k 5

step "Editing the config live: pool.max_connections 10 -> 20, log.level info -> debug"
sed -i -e 's/^max_connections = 10/max_connections = 20/' -e 's/^level = "info"/level = "debug"/' "$CONFIG"
wait_for 15 sh -c "\"$BIN\" status --json | grep -q '\"max\":20'"
"$BIN" status

step "Metrics (http://127.0.0.1:$METRICS_PORT/metrics)"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^chromaprod_(build_info|endpoint_up|circuit_open|config_reloads_total|chroma_requests_total)' || true

step "An invalid edit is rejected; the daemon keeps the running config"
sed -i -e 's/^max_connections = 20/max_connections = "lots"/' "$CONFIG"
"$BIN" reload || true
sed -i -e 's/^max_connections = "lots"/max_connections = 20/' "$CONFIG"
"$BIN" reload

step "A full encrypted backup (chromaprod backup --full --wait)"
"$BIN" backup --full --wait

step "Update 2 records, then an incremental backup"
"$PY" - "$CHROMA_URL" <<'PY'
import sys
from urllib.parse import urlparse
import chromadb
u = urlparse(sys.argv[1])
col = chromadb.HttpClient(host=u.hostname, port=u.port).get_collection("articles", embedding_function=None)
got = col.get(ids=["doc-7", "doc-8"], include=["embeddings"])
col.upsert(ids=got["ids"], embeddings=got["embeddings"], documents=["edited note seven", "edited note eight"])
print("updated doc-7 and doc-8")
PY
"$BIN" backup --incremental --wait

step "chromaprod backups list / show / verify --full"
"$BIN" backups list
# Scripts read --json (the same data as the tables, as the daemon returns it).
LATEST=$("$BIN" --json backups list | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["backup_id"])')
"$BIN" backups show "$LATEST"
"$BIN" backups verify "$LATEST" --full

step "chromaprod jobs / prune --dry-run"
"$BIN" jobs
"$BIN" prune --dry-run

step "Restore the incremental snapshot into a new collection, then query it"
"$BIN" restore "$LATEST" --collection articles --as articles_restored
"$BIN" query --collection articles_restored --id doc-7 -k 3

step "Migrations: rename a metadata key, then rebuild articles with cosine distance"
"$BIN" migrate status
"$BIN" migrate up
"$BIN" migrate status
"$BIN" query --collection articles --id doc-7 -k 3

step "Undo the rebuild (the l2 collection comes back), then apply it again"
"$BIN" migrate down --to 1
"$BIN" --json query --collection articles --id doc-7 -k 1 >/dev/null
"$BIN" migrate up
"$BIN" migrate validate

step "The audit log's hash chain"
"$BIN" audit verify

step "chromaprod doctor: config, key, Chroma, repository, locks, write access, clock, socket"
"$BIN" doctor --service-user "$(id -un)"

step "Stopping the daemon (SIGTERM)"
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID"; DAEMON_PID=""
echo "daemon exited cleanly"
echo
echo "Demo finished."
