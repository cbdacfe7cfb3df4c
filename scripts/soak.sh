#!/usr/bin/env bash
# Chaos soak (scripts/soak.py has the phases and checks): callsim --chaos through one release
# server for MINUTES (default 10), then a SIGTERM drain under load.
#   scripts/soak.sh              # 10 minutes (docs/benchmark.md has a run's figures)
#   scripts/soak.sh 1            # CI's version
#   scripts/soak.sh 10 --seed N  # replay a run's mix
# Needs 2 cores, taskset, python3. Exit code: checks failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec python3 scripts/soak.py "$@"
