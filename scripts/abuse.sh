#!/usr/bin/env bash
# Hostile peers beside honest calls (scripts/abuse.py has the checks): 10 clients that flood media
# and never read, beside 100 honest echo calls, one release server core.
#   scripts/abuse.sh            # the full run (docs/benchmark.md has its figures)
#   scripts/abuse.sh --short    # CI's version
# Needs 2 cores, taskset, python3. Exit code: checks failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec python3 scripts/abuse.py "$@"
