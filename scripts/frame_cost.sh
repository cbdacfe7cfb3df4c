#!/usr/bin/env bash
# User-space CPU instructions the server spends per echoed media frame, counted by valgrind's
# callgrind: repeatable for the same binary and inputs, whatever else the machine is doing (unlike
# the benchmark's microseconds). Two runs of 10 calls, 2 s and 6 s; the difference divided by the
# difference in frames leaves out start-up, webhooks and handshakes. Kernel time is not counted.
# Needs valgrind (apt-get install -y valgrind). Takes about a minute.
# CALLVISOR_BIN=path measures another server build (e.g. an older commit's) with the same callsim.
# CALLS=n (default 10) and LONG=s (default 6): how many calls, and the long run's seconds; with
# CALLS=1 each frame gets its own event-loop wake-up, which steadies the figure (see benchmark.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CALLVISOR_BIN:-}" ]; then
  cargo build --locked --profile profiling --bin callvisor
fi
server=${CALLVISOR_BIN:-target/profiling/callvisor}
cargo build --locked --release --bin callsim
out=$(mktemp -d)
run() { # seconds -> "frames instructions"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  PORT=$port HOST=127.0.0.1 RUST_LOG=error WORKERS=1 valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$1" "$server" >"$out/log.$1" 2>&1 &
  local pid=$!
  python3 - "$port" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
PY
  target/release/callsim --target "http://127.0.0.1:$port" --calls "${CALLS:-10}" --duration "$1s" --ramp 0s \
    --json >"$out/sim.$1"
  kill -INT "$pid"; sleep 1; kill -INT "$pid" 2>/dev/null || true; wait "$pid" || true
  local frames ir
  frames=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['frames']['echoed'])" "$out/sim.$1")
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/cg.$1")
  echo "$frames $ir"
}
read -r f1 i1 < <(run 2)
read -r f2 i2 < <(run "${LONG:-6}")
echo "instructions per echoed frame: $(( (i2 - i1) / (f2 - f1) )) (runs: $f1 frames / $i1, $f2 frames / $i2; callgrind files in $out)"
