#!/usr/bin/env python3
"""A real Python Twilio bot (examples/twilio_echo_bot.py, on the `websockets` library) behind
callvisor HANDLER=bridge, driven by callsim: every call must connect and every frame come back
through the bot. Prints PASS/FAIL per check; exit code: checks failed. Run by .ci/run through
scripts/python_bot.sh, which installs `websockets`."""

import os
import subprocess
import sys
import time
import json
import socket

from harness import ROOT, Server, callsim, free_port, report


def main():
    port = free_port()
    bot = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "twilio_echo_bot.py")],
        env={**os.environ, "PORT": str(port)}, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or bot.poll() is not None:
                sys.exit("the Python bot did not start (is `websockets` installed?)")
            time.sleep(0.05)
    server = Server(0, {
        "HANDLER": "bridge",
        "BRIDGE_URL": f"ws://127.0.0.1:{port}",
        # An app needs call control configured; these calls end with `stop`, never through REST.
        "TWILIO_API_KEY_SID": "SK" + "0" * 32,
        "TWILIO_API_KEY_SECRET": "unused",
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
        "LIMIT_CONCURRENCY": "100",
        "RUST_LOG": "warn",
    })
    sim = callsim(1, server.port, ["--calls", "50", "--duration", "5s", "--ramp", "1s"])
    out, _ = sim.communicate()
    s = json.loads(out)
    h = server.wait_active(0, 15)
    server.stop()
    bot.terminate()
    print(f"50 calls through callvisor HANDLER=bridge to the Python bot: {s['connected']} connected, "
          f"{s['frames']['sent']} frames sent, {s['frames']['echoed']} echoed by the bot, "
          f"echo p99 {s['echo_rtt_ms']['p99'] if s['echo_rtt_ms'] else '-'} ms")
    return report([
        ("every call connected, none failed", s["connected"] == 50 and s["failed"] == 0,
         f"{s['connected']} connected, {s['failed']} failed {s['failed_by_reason']}"),
        # Echoes still inside the bot when a caller hangs up are heard by no one; the rest must
        # all come back.
        ("every call's audio came back through the bot",
         all(r["frames_echoed"] > 0 for r in s["call_records"])
         and s["frames"]["echoed"] >= 0.95 * s["frames"]["sent"],
         f"{s['frames']['echoed']} of {s['frames']['sent']} echoed"),
        ("every slot back", h is not None and h["calls_admitted"] == h["calls_completed"],
         "yes" if h else "no"),
    ], "python bot")


if __name__ == "__main__":
    sys.exit(main())
