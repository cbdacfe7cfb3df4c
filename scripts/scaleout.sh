#!/usr/bin/env bash
# Horizontal scale end to end: callvisor replicas behind nginx's random balancer, driven by
# callsim through nginx only (scripts/scaleout.py has the scenarios). Exit code: scenarios failed.
# Needs nginx (apt-get install -y nginx); .ci/run installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
exec python3 scripts/scaleout.py "$@"
