#!/usr/bin/env python3
"""Chaos soak: thousands of calls, several hundred at a time, a third of them misbehaving,
through one release server; then a SIGTERM drain under load.

Phase 1 (MINUTES minus the drain phase): callsim --chaos places calls at a steady rate (20 a
second, 20 s each: about 300 live at once) from the other core. The mix (callsim --help,
`--chaos`): normal calls, slow readers, duplicate CallSids, TCP resets in the middle of a frame,
garbage, binary and oversized frames, streams that never send `start`. The seed is printed;
`--seed` replays the same mix.

Checks after phase 1: every call went as the protocol promises (callsim judges each), no frame
lost by a caller that streams audio, every reset caller's call ended on the server as a dropped
connection (callsim cannot see that: after its reset it is gone; the server's end-of-call line for
that CallSid must say `client_gone`, and `callvisor_calls_ended_total{reason="client_gone"}` must
equal the reset callers), `active_calls` back to 0 and admitted = completed (no slot leaked), no
capacity refusal, RSS back within 16 MiB of where it started, and no panic or ERROR line in the
server log.

Phase 2: 200 normal calls go live, then SIGTERM. Checks: every live call is handed off (closed
1001 `handoff`: Twilio would run its <Redirect>), the server exits 0 within its drain timeout plus
a margin, and still no panic or ERROR line.

Prints a line per check and exits with the number that failed.
"""

import argparse
import json
import random
import re
import signal
import sys
import threading
import time

from harness import Server, callsim, health, metric, report, rss_kib

RATE = 20  # calls placed per second
CALL_SECS = 20
DRAIN_CALLS = 200
DRAIN_TIMEOUT_SECS = 3
# The session's end-of-call line (text log format): its reason and the call it names.
CALL_ENDED = re.compile(r"call ended: reason=(\S+) .* call_sid=(\S+) stream_sid=")


def reset_calls_ended(records, log, client_gone):
    """Judges the reset callers, whom callsim cannot follow past their reset: the server must
    have ended each one's call as a dropped connection (`client_gone`: its end-of-call line
    names the CallSid), and ended no other call that way. Returns (ok, detail)."""
    ends = {}
    for line in log:
        m = CALL_ENDED.search(line)
        if m:
            ends.setdefault(m.group(2), []).append(m.group(1))
    resets = [r["call_sid"] for r in records if r.get("chaos") == "reset"]
    wrong = {sid: ends.get(sid, []) for sid in resets if ends.get(sid) != ["client_gone"]}
    ok = bool(resets) and not wrong and client_gone == len(resets)
    detail = (f"{len(resets) - len(wrong)} of {len(resets)} reset calls ended client_gone; "
              f"client_gone counted {client_gone:.0f}")
    if wrong:
        detail += "; " + ", ".join(f"{sid}: {e or 'no end line'}" for sid, e in list(wrong.items())[:3])
    return ok, detail


class Sampler(threading.Thread):
    """Peak RSS and peak live calls, once a second."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.running = server, True
        self.peak_rss = self.peak_active = 0

    def run(self):
        while self.running:
            try:
                self.peak_rss = max(self.peak_rss, rss_kib(self.server.pid))
                self.peak_active = max(self.peak_active, health(self.server.port)["active_calls"])
            except (OSError, ValueError):
                return
            time.sleep(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", nargs="?", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--client-core", default="1")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**63)
    print(f"soak: seed {seed} (replay with scripts/soak.sh {args.minutes:g} --seed {seed})", flush=True)

    # Phase 1 runs for the minutes asked, less ~20 s kept for the drain phase.
    ramp = max(10.0, args.minutes * 60 - CALL_SECS - 20)
    calls = int(ramp * RATE)
    server = Server(args.server_core, {
        "LIMIT_CONCURRENCY": "2000",
        "START_TIMEOUT_SECS": "3",
        "IDLE_TIMEOUT_SECS": "10",
        "DRAIN_TIMEOUT_SECS": str(DRAIN_TIMEOUT_SECS),
        "RUST_LOG": "info",
    })
    rss_start = rss_kib(server.pid)
    sampler = Sampler(server)
    sampler.start()
    started = time.monotonic()
    print(f"phase 1: {calls} chaos calls over {ramp:.0f} s, {CALL_SECS} s each", flush=True)
    sim = callsim(args.client_core, server.port, [
        "--chaos", "--seed", str(seed), "--calls", str(calls),
        "--duration", f"{CALL_SECS}s", "--ramp", f"{ramp}s", "--timeout", "30s",
    ])
    out, err = sim.communicate()
    try:
        s = json.loads(out)
    except ValueError:
        sys.exit(f"callsim printed no summary: {err[-2000:]}")
    phase1_secs = time.monotonic() - started
    settled = server.wait_active(0, 30)
    time.sleep(5)  # let the allocator settle before reading RSS
    rss_end = rss_kib(server.pid)
    sampler.running = False
    h = health(server.port)
    refused = metric(server.port, "callvisor_calls_rejected_total", 'reason="capacity"')
    client_gone = metric(server.port, "callvisor_calls_ended_total", 'reason="client_gone"')
    resets_ok, resets_detail = reset_calls_ended(s["call_records"], list(server.log), client_gone)

    chaos = s.get("chaos", {})
    audio = {k: t for k, t in chaos.items() if k in ("normal", "slow_reader", "duplicate")}
    unexpected = {k: t["calls"] - t["as_expected"] for k, t in chaos.items() if t["calls"] != t["as_expected"]}
    print(f"phase 1 took {phase1_secs:.0f} s: {len(s['call_records'])} calls, peak {sampler.peak_active} live; "
          f"server admitted {h['calls_admitted']}, completed {h['calls_completed']}; "
          f"RSS {rss_start / 1024:.1f} MiB at start, peak {sampler.peak_rss / 1024:.1f}, "
          f"{rss_end / 1024:.1f} at the end", flush=True)
    for kind, t in chaos.items():
        print(f"  {kind:<12} {t['calls']:>6} calls, {t['as_expected']:>6} as expected"
              + (f", {t['frames_sent']} frames sent, {t['frames_lost']} lost" if kind in audio else ""))
    if s["failed_by_reason"]:
        for reason, n in list(s["failed_by_reason"].items())[:10]:
            print(f"  failed: {n} x {reason}")
    if s["echo_rtt_ms"]:
        print(f"  echo round trip p50 {s['echo_rtt_ms']['p50']} ms, p99 {s['echo_rtt_ms']['p99']} ms "
              f"(callsim send lag p99 {s['send_lag_ms']['p99']} ms)")

    checks = [
        ("every call of phase 1 ended as the protocol promises", s["failed"] == 0 and not unexpected,
         f"{s['failed']} failed" + (f", unexpected: {unexpected}" if unexpected else "")),
        ("every kind of the mix ran", len(chaos) == 8, f"{len(chaos)} kinds"),
        ("no frame lost by a caller that streams audio",
         sum(t["frames_lost"] for t in audio.values()) == 0,
         ", ".join(f"{k} {t['frames_lost']} of {t['frames_sent']}" for k, t in audio.items())),
        ("every reset caller's call ended on the server (client_gone)", resets_ok, resets_detail),
        ("active_calls back to 0, admitted = completed", settled is not None
         and h["active_calls"] == 0 and h["calls_admitted"] == h["calls_completed"],
         f"active {h['active_calls']}, admitted {h['calls_admitted']}, completed {h['calls_completed']}"),
        ("no call refused for capacity (no leaked slot)", refused == 0, f"{refused:.0f} refused"),
        ("RSS back within 16 MiB of the start", (rss_end - rss_start) / 1024 < 16,
         f"{(rss_end - rss_start) / 1024:+.1f} MiB"),
    ]

    # Phase 2: a drain under load.
    sim = callsim(args.client_core, server.port, [
        "--calls", str(DRAIN_CALLS), "--duration", "120s", "--ramp", "2s", "--timeout", "5s",
    ])
    live = server.wait_active(DRAIN_CALLS, 30)
    sent_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=DRAIN_TIMEOUT_SECS + 10)
    except Exception:
        code = None
    exit_secs = time.monotonic() - sent_at
    try:
        out, _ = sim.communicate(timeout=60)
        d = json.loads(out)
    except Exception:
        sim.kill()
        d = {"stream_ends": {}}
    handed_off = d["stream_ends"].get("1001 handoff", 0)
    print(f"phase 2: {DRAIN_CALLS} calls live, SIGTERM; exit code {code} after {exit_secs:.1f} s; "
          f"{handed_off} streams closed 1001 handoff", flush=True)
    checks += [
        ("phase 2: all drain calls live before SIGTERM", live is not None, "yes" if live else "no"),
        ("phase 2: every live call handed off (1001)", handed_off == DRAIN_CALLS, f"{handed_off} of {DRAIN_CALLS}"),
        ("phase 2: exit 0 within the drain timeout + 10 s", code == 0, f"code {code} after {exit_secs:.1f} s"),
    ]
    bad = server.bad_lines()
    checks.append(("no panic or ERROR line in the server log", not bad, bad[0] if bad else
                   f"none in {len(server.log)} lines"))
    print(f"soak: seed {seed}")
    return report(checks, "soak")


if __name__ == "__main__":
    sys.exit(main())
