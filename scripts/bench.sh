#!/usr/bin/env bash
# The benchmark (never a test): builds the release binaries, then runs scripts/bench.py.
#   scripts/bench.sh                      # steps 250 500 750 1000 1500 2000, 30 s calls
#   scripts/bench.sh 500 1000 4000 --duration 15
# Needs 2 cores (server on core 0, callsim on core 1), taskset, python3; wrk for the webhook's
# requests/s (apt-get install -y wrk), skipped when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec python3 scripts/bench.py "$@"
