#!/usr/bin/env bash
# The voice agent's benchmark (never a test): builds the release binaries, then runs
# scripts/agent_bench.py: after an echo baseline, 200 concurrent HANDLER=openai calls on each
# engine (Realtime, then GPT-Live) against callsim's stand-in models, at the same load.
#   scripts/agent_bench.sh                 # 200 calls of 30 s, both engines
#   scripts/agent_bench.sh --engine live --live-delta-ms 20
#   scripts/agent_bench.sh --calls 500 --record /tmp/heard
#   scripts/agent_bench.sh --short         # CI: 20 calls of 8 s, both engines, no timing judged
# Needs 2 cores (server on core 0, callsim on core 1), taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec python3 scripts/agent_bench.py "$@"
