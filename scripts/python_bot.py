#!/usr/bin/env python3
"""A real Python Twilio bot (examples/twilio_echo_bot.py, on the `websockets` library), called
by callsim with the same calls twice: straight (a webhook stub answers callsim's webhook with
TwiML that streams to the bot, as a bot's own web app would) and behind callvisor HANDLER=bridge.
What callvisor adds to the bot's echo is the difference between the two medians.

Two bots, each compared so:
- the echo bot answers each frame at once: the difference is callvisor's own share of the round
  trip (two more loopback hops and its handling), bound: 1 ms at the median (issue 18's target);
- the playout bot (PLAYOUT_MS=20) plays its echoes out on its own 20 ms clock, so it answers no
  frame at once and the TCP ACK of each frame comes late: the case where Nagle's algorithm on
  callvisor's socket to the bot held frames until that ACK (+38 ms at the median before
  TCP_NODELAY). Its median moves by a few ms with the phase of its clock against the caller's
  (the clock starts at `start`, which reaches a bridged bot one handshake later), so its bound
  is 5 ms: far below the 20-40 ms a held frame costs, not a sub-millisecond measure.

Checks (PASS/FAIL per check; exit code: checks failed), for each bot:
- every call connects both ways and none fails;
- every frame comes back, but those still inside the bot when the caller hangs up: they are
  echoed to no one (the bot stops at `stop`; through callvisor, the caller's stream closes on
  `stop` as on Twilio). That is at most 2 frames a call; the output says how many. The echo bot
  reached directly loses none;
- the median bound above;
- every slot is back.

Run by .ci/run through `scripts/python_bot.sh --ci`, which installs `websockets` and builds the
release binaries. With `--ci` both bots' bound is CI_BOUND_MS (10 ms) instead of 1 ms and 5 ms:
on a shared 2-core machine the medians move by a millisecond or more between runs (a local CI run
saw the echo bot at +1.15 ms, the playout bot at +2.61 ms), and a timing target must not make CI
flaky; 10 ms still fails the regression this check exists for (a frame held by Nagle's algorithm
costs 20-40 ms: +38 ms at the median before TCP_NODELAY). The 1 ms target is judged by
the benchmark run (no `--ci`); `--server BIN` runs another build of callvisor (an earlier commit's) with this tree's
callsim. callvisor runs on core 0; callsim and the bot on core 1.
"""

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

from harness import ROOT, SERVER, Server, callsim, free_port, report

# Frames a call may lose: those inside the bot when the caller hangs up (above).
IN_FLIGHT_AT_HANG_UP = 2
# How much later than direct a bot may hear its echo through callvisor, at the median (above).
ECHO_BOUND_MS = 1.0
PLAYOUT_BOUND_MS = 5.0
# With --ci: both bots' bound in CI (see above); the medians are still printed.
CI_BOUND_MS = 10.0


def webhook_stub(stream_url):
    """A webhook answering every POST with TwiML that streams to `stream_url`; its port."""
    twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
             f'<Stream url="{stream_url}"/></Connect></Response>').encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(twiml)))
            self.end_headers()
            self.wfile.write(twiml)

        def log_message(self, *_):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.server_address[1]


def place_calls(port, args):
    sim = callsim(1, port, ["--calls", str(args.calls), "--duration", f"{args.duration}s",
                            "--ramp", "1s"])
    out, err = sim.communicate()
    if not out:
        sys.exit(f"callsim printed no summary: {err[-500:]}")
    return json.loads(out)


def describe(name, s):
    rtt = s["echo_rtt_ms"] or {}
    f = s["frames"]
    print(f"{name}: {s['connected']} of {len(s['call_records'])} calls connected, "
          f"{f['sent']} frames sent, {f['echoed']} echoed ({f['lost']} lost); echo round trip "
          f"p50 {rtt.get('p50', '-')} p90 {rtt.get('p90', '-')} p99 {rtt.get('p99', '-')} ms",
          flush=True)


def start_bot(args, env):
    """The example bot on a free port, pinned to `--bot-core`; its port once it listens."""
    port = free_port()
    bot = subprocess.Popen(
        ["taskset", "-c", str(args.bot_core), sys.executable,
         os.path.join(ROOT, "examples", "twilio_echo_bot.py")],
        env={**os.environ, "PORT": str(port), **env}, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return bot, port
        except OSError:
            if time.monotonic() > deadline or bot.poll() is not None:
                sys.exit("the Python bot did not start (is `websockets` installed?)")
            time.sleep(0.05)


def compare(name, env, bound_ms, args):
    """The same calls straight to one bot, then through callvisor; the checks on them."""
    bot, port = start_bot(args, env)
    direct = place_calls(webhook_stub(f"ws://127.0.0.1:{port}/"), args)
    describe(f"{name}, {args.calls} calls straight to it", direct)
    server = Server(args.server_core, {
        "HANDLER": "bridge",
        "BRIDGE_URL": f"ws://127.0.0.1:{port}",
        # An app needs call control configured; these calls end with `stop`, never through REST.
        "TWILIO_API_KEY_SID": "SK" + "0" * 32,
        "TWILIO_API_KEY_SECRET": "unused",
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
        "LIMIT_CONCURRENCY": str(args.calls + 10),
        "RUST_LOG": "warn",
    }, binary=args.server)
    bridged = place_calls(server.port, args)
    h = server.wait_active(0, 15)
    server.stop()
    bot.terminate()
    bot.wait()
    describe(f"{name}, the same calls through callvisor HANDLER=bridge", bridged)

    added = None
    if direct["echo_rtt_ms"] and bridged["echo_rtt_ms"]:
        added = bridged["echo_rtt_ms"]["p50"] - direct["echo_rtt_ms"]["p50"]
        print(f"{name}: echo round trip added by callvisor: median {added:+.2f} ms, "
              f"p99 {bridged['echo_rtt_ms']['p99'] - direct['echo_rtt_ms']['p99']:+.2f} ms",
              flush=True)
    checks = []
    for how, s in (("straight to the bot", direct), ("through callvisor", bridged)):
        worst = max((r["frames_sent"] - r["frames_echoed"] for r in s["call_records"]), default=0)
        checks += [
            (f"{name}: every call connected {how}, none failed",
             s["connected"] == args.calls and s["failed"] == 0,
             f"{s['connected']} connected, {s['failed']} failed {s['failed_by_reason']}"),
            (f"{name}: {how}, every frame came back but those in the bot at hang-up "
             f"(at most {IN_FLIGHT_AT_HANG_UP} a call)",
             bool(s["call_records"]) and all(r["frames_echoed"] > 0 for r in s["call_records"])
             and worst <= IN_FLIGHT_AT_HANG_UP,
             f"{s['frames']['echoed']} of {s['frames']['sent']} echoed, {s['frames']['lost']} "
             f"lost at hang-up, at most {worst} in one call"),
        ]
    checks += [
        (f"{name}: the echo through callvisor within {bound_ms:g} ms of direct at the median",
         added is not None and added <= bound_ms,
         "-" if added is None else f"{bridged['echo_rtt_ms']['p50']} ms against "
         f"{direct['echo_rtt_ms']['p50']} ms direct ({added:+.2f} ms)"),
        (f"{name}: every slot back", h is not None and h["calls_admitted"] == h["calls_completed"],
         "yes" if h else "no"),
    ]
    return checks


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", default=SERVER, help="the callvisor binary (default: this tree's)")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--duration", type=int, default=5, help="seconds per call")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--bot-core", type=int, default=1, help="default: callsim's")
    p.add_argument("--ci", action="store_true",
                   help=f"judge both bots against {CI_BOUND_MS:g} ms, not the targets")
    args = p.parse_args()
    checks = compare("echo bot", {}, CI_BOUND_MS if args.ci else ECHO_BOUND_MS, args)
    checks += compare("playout bot", {"PLAYOUT_MS": "20"},
                      CI_BOUND_MS if args.ci else PLAYOUT_BOUND_MS, args)
    return report(checks, "python bot")


if __name__ == "__main__":
    sys.exit(main())
