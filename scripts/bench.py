#!/usr/bin/env python3
"""callvisor's benchmark: the release server pinned to one core, callsim pinned to another.

For each step (a number of concurrent echo calls) it starts a fresh server, places the calls
with callsim and prints: echo round trip p50 and p99, lost frames, callsim's send lag, server CPU
microseconds per inbound media frame, and server RSS per live call. The 1,000-call step (or the
largest below it) also times `/` and the webhook while the calls are live. Then it measures the
webhook's throughput with wrk (when installed) and the time from process start to the first 200.

Run it through scripts/bench.sh, which builds the release binaries first. A benchmark, never a
test: the numbers depend on the machine, and it prints them rather than asserting them.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from harness import CALLSIM, SERVER, cpu_seconds, free_port, rss_kib, steal_seconds

def get(port, path, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(port, name):
    _, body = get(port, "/metrics")
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def percentile(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Server:
    """The release server, pinned to `core`, on a free port."""

    def __init__(self, core, limit, extra_env=None):
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "LIMIT_CONCURRENCY": str(limit),
            "WORKERS": "1",
            "RUST_LOG": "warn",
        }
        env.update(extra_env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), SERVER],
            env=env,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.first_200_ms = self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/")[0] == 200:
                    return (time.monotonic() - self.started) * 1000
            except OSError:
                pass
            time.sleep(0.001)
        raise SystemExit("server did not answer / within 10 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def time_http(port, n):
    """Sequential requests to / and to the webhook; returns their p99 in ms."""
    form = "CallSid=CAbench&AccountSid=ACbench&From=%2B1&To=%2B2&CallStatus=ringing"
    out = {}
    for name, method, path, body in (
        ("health", "GET", "/", None),
        ("webhook", "POST", "/incoming-call", form),
    ):
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            status, _ = get(
                port,
                path,
                method,
                body,
                {"Content-Type": "application/x-www-form-urlencoded"} if body else {},
            )
            samples.append((time.perf_counter() - t) * 1000)
            assert status == 200, f"{path} answered {status}"
            time.sleep(0.002)
        out[name] = percentile(samples, 0.99)
    return out


def run_step(calls, args, time_endpoints, bridge=False):
    """One step; `bridge`: the measured server runs HANDLER=bridge in front of a second callvisor
    (HANDLER=echo) as the bot, both pinned to the server core; CPU and RSS are the bridge's."""
    bot = None
    extra = {}
    if bridge:
        bot_core = args.server_core if args.bot_core is None else args.bot_core
        bot = Server(bot_core, calls + 10)
        extra = {
            "HANDLER": "bridge",
            "BRIDGE_URL": f"ws://127.0.0.1:{bot.port}/media-stream",
            # Call control must be configured for an app; the bench never hangs up through it.
            "TWILIO_API_KEY_SID": "SK" + "0" * 32,
            "TWILIO_API_KEY_SECRET": "unused",
            "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
        }
    server = Server(args.server_core, calls + 10, extra)
    pid = server.proc.pid
    rss_idle = rss_kib(pid)
    sim = subprocess.Popen(
        [
            "taskset", "-c", str(args.callsim_core), CALLSIM,
            "--target", f"http://127.0.0.1:{server.port}",
            "--calls", str(calls),
            "--duration", f"{args.duration}s",
            "--ramp", f"{args.ramp}s",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # The steady window: every call placed (the ramp is over), none hung up yet.
    launched = time.monotonic()
    time.sleep(args.ramp + 1.5)
    cpu0, t0, steal0 = cpu_seconds(pid), time.monotonic(), steal_seconds(args.server_core)
    frames0 = metric(server.port, "callvisor_media_frames_in_total")
    endpoints = time_http(server.port, 300) if time_endpoints else {}
    time.sleep(max(0.0, launched + args.duration - 0.5 - time.monotonic()))
    live = json.loads(get(server.port, "/")[1])["active_calls"]
    cpu1, t1, steal1 = cpu_seconds(pid), time.monotonic(), steal_seconds(args.server_core)
    frames1 = metric(server.port, "callvisor_media_frames_in_total")
    rss_live = rss_kib(pid)
    out, _ = sim.communicate()
    server.stop()
    if bot:
        bot.stop()
    s = json.loads(out)
    frames = frames1 - frames0
    return {
        "mode": "bridge" if bridge else "echo",
        "calls": calls,
        "live": live,
        "connected": s["connected"],
        "failed": s["failed"],
        "rtt_p50": s["echo_rtt_ms"]["p50"] if s["echo_rtt_ms"] else None,
        "rtt_p99": s["echo_rtt_ms"]["p99"] if s["echo_rtt_ms"] else None,
        "lost": s["frames"]["lost"],
        "sent": s["frames"]["sent"],
        "lag_p99": s["send_lag_ms"]["p99"] if s["send_lag_ms"] else None,
        "cpu_us_per_frame": (cpu1 - cpu0) * 1e6 / frames if frames else None,
        "server_cpu_pct": (cpu1 - cpu0) * 100 / (t1 - t0),
        "steal_pct": (steal1 - steal0) * 100 / (t1 - t0),
        "rss_kib_per_call": (rss_live - rss_idle) / live if live else None,
        "endpoints": endpoints,
    }


def webhook_throughput(args):
    """wrk against the webhook, 10 s, 32 connections, one wrk thread on the other core."""
    if not shutil.which("wrk"):
        return None
    server = Server(args.server_core, 100)
    lua = os.path.join(tempfile.gettempdir(), "callvisor-webhook.lua")
    with open(lua, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            'wrk.body = "CallSid=CAwrk&AccountSid=ACwrk&From=%2B1&To=%2B2&CallStatus=ringing"\n'
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
        )
    out = subprocess.run(
        [
            "taskset", "-c", str(args.callsim_core), "wrk", "-t1", "-c32", "-d10s",
            "--latency", "-s", lua, f"http://127.0.0.1:{server.port}/incoming-call",
        ],
        capture_output=True, text=True,
    ).stdout
    server.stop()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    return {
        "rps": float(rps.group(1)) if rps else None,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
    }


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    global SERVER
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("steps", nargs="*", type=int, default=[250, 500, 750, 1000, 1500, 2000])
    p.add_argument("--duration", type=float, default=30, help="seconds per call")
    p.add_argument("--ramp", type=float, default=5, help="seconds to place a step's calls")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--callsim-core", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--server", help="the server binary (default: this tree's release build)")
    p.add_argument("--handler", choices=["echo", "bridge"], default="echo",
                   help="bridge: each step twice, echo direct, then HANDLER=bridge in front of an "
                        "echo bot (a second callvisor, on the server core unless --bot-core)")
    p.add_argument("--bot-core", type=int, default=None,
                   help="with --handler bridge: the core of the echo bot (default: the server's)")
    args = p.parse_args()
    if args.server:
        SERVER = os.path.abspath(args.server)
    if args.duration < args.ramp + 4:
        p.error("--duration must exceed --ramp by 4 s: the measuring window needs every call live")
    # This script's own requests come from the load generator's core, never the server's.
    os.sched_setaffinity(0, {args.callsim_core})

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = m.group(1) if m else cpu
    print(f"machine: {cpu}, {os.cpu_count()} cores; server on core {args.server_core}, "
          f"callsim on core {args.callsim_core}; {args.duration:g} s calls, {args.ramp:g} s ramp")

    timed_step = max([s for s in args.steps if s <= 1000] or [min(args.steps)])
    results = []
    header = (f"{'mode':>6} {'calls':>6} {'live':>6} {'failed':>6} {'echo p50':>9} {'echo p99':>9} "
              f"{'lost':>6} "
              f"{'sim lag p99':>11} {'CPU us/frame':>12} {'server CPU':>10} {'steal':>5} {'RSS/call':>9}")
    print(header)
    modes = [False, True] if args.handler == "bridge" else [False]
    for calls, bridge in ((c, b) for c in args.steps for b in modes):
        r = run_step(calls, args, calls == timed_step and not bridge, bridge)
        results.append(r)
        print(f"{r['mode']:>6} {r['calls']:>6} {r['live']:>6} {r['failed']:>6} "
              f"{fmt(r['rtt_p50'], '>7.2f')}ms {fmt(r['rtt_p99'], '>7.2f')}ms "
              f"{r['lost']:>6} {fmt(r['lag_p99'], '>9.2f')}ms {fmt(r['cpu_us_per_frame'], '>12.1f')} "
              f"{fmt(r['server_cpu_pct'], '>9.0f')}% {r['steal_pct']:>4.0f}% "
              f"{fmt(r['rss_kib_per_call'], '>6.1f')}KiB",
              flush=True)
        if r["endpoints"]:
            e = r["endpoints"]
            print(f"       with {r['live']} calls live: / p99 {e['health']:.2f} ms, "
                  f"webhook p99 {e['webhook']:.2f} ms", flush=True)

    wh = webhook_throughput(args)
    if wh:
        print(f"webhook alone (wrk, 32 connections): {fmt(wh['rps'], '.0f')} requests/s, "
              f"p99 {fmt(wh['p99_ms'], '.2f')} ms")
    else:
        print("webhook throughput: skipped (install wrk: apt-get install -y wrk)")
    starts = [Server(args.server_core, 100) for _ in range(5)]
    for s in starts:
        s.stop()
    first = sorted(s.first_200_ms for s in starts)
    print(f"process start to first 200 on /: median {first[2]:.1f} ms, max {first[-1]:.1f} ms (5 starts)")
    if args.json:
        print(json.dumps({"steps": results, "webhook": wh, "first_200_ms": first}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
