#!/usr/bin/env bash
# Idle footprint of the daemon: RSS and CPU over a quiet period, with a real
# Chroma server behind it and default health-check intervals.
# usage: bench/idle.sh [SECONDS]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
cargo build --release --quiet
BIN=target/release/chromaprod
CHROMA_BIN=${CHROMA_BIN:-.tools/venv/bin/chroma}
WORK=$(mktemp -d /tmp/chromaprod-idle.XXXXXX)
PY=.tools/venv/bin/python
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CP=$(port)
"$CHROMA_BIN" run --path "$WORK/data" --host 127.0.0.1 --port "$CP" >"$WORK/chroma.log" 2>&1 &
CHROMA_PID=$!
trap 'kill $DAEMON_PID $CHROMA_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$CP/api/v2/healthcheck" >/dev/null && break; sleep 0.1; done
cat >"$WORK/c.toml" <<TOML
[chroma]
endpoints = ["http://127.0.0.1:$CP"]
[control]
socket_path = "$WORK/control.sock"
[daemon]
state_dir = "$WORK/state"
[log]
format = "text"
TOML
"$BIN" daemon --config "$WORK/c.toml" >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 1 100); do "$BIN" --socket "$WORK/control.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat"; }
HZ=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$SECS"
t1=$(ticks); s1=$(date +%s.%N)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$DAEMON_PID/status")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
cpu=$(awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v hz="$HZ" 'BEGIN { printf "%.3f", 100 * (t1 - t0) / hz / (s1 - s0) }')
echo "| idle period | RSS | peak RSS | CPU |"
echo "| --- | --- | --- | --- |"
awk -v s="$SECS" -v r="$rss_kb" -v h="$hwm_kb" -v c="$cpu" 'BEGIN { printf "| %ss | %.1f MB | %.1f MB | %s %% |\n", s, r / 1024, h / 1024, c }'
