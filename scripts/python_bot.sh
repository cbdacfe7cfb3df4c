#!/usr/bin/env bash
# A real Python Twilio bot, called straight and behind HANDLER=bridge: what callvisor adds to its
# echo (scripts/python_bot.py has the checks).
# Installs the bot's one dependency, `websockets`, from PyPI when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install -q websockets
cargo build --release --locked --bins
exec python3 scripts/python_bot.py "$@"
