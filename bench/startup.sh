#!/usr/bin/env bash
# Size and start-up time of the release binary (docs/benchmarks.md):
#   1. the size of target/release/chromaprod and of the .deb (if built);
#   2. `chromaprod --version` with hyperfine (process start, no I/O);
#   3. time from spawning `chromaprod daemon` to its READY=1 on NOTIFY_SOCKET,
#      with a real Chroma server on 127.0.0.1 (config load, logging, pool,
#      Chroma readiness checks, control socket), RUNS times.
# usage: bench/startup.sh [RUNS]   (builds the release binary first; needs hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
cargo build --release --quiet
BIN=$(pwd)/target/release/chromaprod
CHROMA_BIN=${CHROMA_BIN:-.tools/venv/bin/chroma}
PY=.tools/venv/bin/python
command -v hyperfine >/dev/null || { echo "hyperfine is not installed (apt-get install hyperfine)" >&2; exit 1; }

echo "== size"
ls -l "$BIN" | awk '{ printf "target/release/chromaprod: %d bytes (%.1f MiB)\n", $5, $5 / 1048576 }'
for deb in target/debian/chromaprod_*.deb; do
  [ -f "$deb" ] && ls -l "$deb" | awk -v d="$deb" '{ printf "%s: %d bytes (%.1f MiB)\n", d, $5, $5 / 1048576 }'
done

echo "== chromaprod --version"
hyperfine --warmup 20 --runs 300 --shell=none "$BIN --version"

echo "== spawn to READY=1 ($RUNS runs)"
WORK=$(mktemp -d /tmp/chromaprod-startup.XXXXXX)
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CP=$(port)
"$CHROMA_BIN" run --path "$WORK/data" --host 127.0.0.1 --port "$CP" >"$WORK/chroma.log" 2>&1 &
CHROMA_PID=$!
trap 'kill $CHROMA_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$CP/api/v2/healthcheck" >/dev/null && break; sleep 0.1; done
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
"$PY" - "$BIN" "$WORK/c.toml" "$WORK/notify.sock" "$RUNS" <<'PY'
import os, signal, socket, statistics, subprocess, sys, time
bin, config, sock_path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sock_path)
s.settimeout(30)
times = []
for _ in range(runs):
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    t0 = time.monotonic()
    p = subprocess.Popen([bin, "daemon", "--config", config], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        msg = s.recv(4096).decode()
        if "READY=1" in msg.split("\n"):
            break
    times.append((time.monotonic() - t0) * 1000)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
times.sort()
print(f"runs {runs}: median {statistics.median(times):.1f} ms, "
      f"min {times[0]:.1f} ms, p90 {times[int(0.9 * (len(times) - 1))]:.1f} ms, max {times[-1]:.1f} ms")
PY
