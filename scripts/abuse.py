#!/usr/bin/env python3
"""Hostile peers beside honest calls: does one replica keep its honest calls?

The release server runs pinned to one core (WORKERS=1). callsim places the honest echo calls from
the other core; once they are all live, the flooders connect. Each flooder is what an attacker
writes in ten lines: open /media-stream (auth is off by default), send `connected` and `start`,
then send one-second media frames (8,000 bytes of audio, ~10.7 KB of JSON) as fast as the socket
takes them, and never read a byte. Every echo the server makes for it has nowhere to go.

Measured: the server's RSS every 20 ms (peak growth over the baseline taken with the honest calls
live), the time from the first flood frame until the server has closed every flooder (its
`callvisor_calls_ended_total{reason="not_reading"}` count), when each flooder's connection was
cut under it, RSS 10 s after the last flooder was closed, and callsim's verdict on the honest
calls (lost frames, echo round trip p99, its own send lag p99).

Prints a line per check with PASS or FAIL and exits with the number of failed checks. Run it
through scripts/abuse.sh. `--short` is the CI version (fewer honest calls, shorter calls, the same
flood); its latency check is reported but not judged, because CI's machine is shared.
"""

import argparse
import base64
import json
import os
import socket
import sys
import threading
import time

from harness import SERVER, Server, callsim, health, metric, report, rss_kib


def ws_frame(text):
    """A client text frame, masked as RFC 6455 requires; a zero mask key leaves the bytes as they
    are, so no per-byte work in Python."""
    data = text.encode()
    n = len(data)
    head = bytearray([0x81])
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    return bytes(head) + b"\0\0\0\0" + data


class Flooder(threading.Thread):
    """Opens a stream, starts a call, floods media and never reads."""

    def __init__(self, port, n, stop_at):
        super().__init__(daemon=True)
        self.port, self.n, self.stop_at = port, n, stop_at
        self.frames = 0
        self.started = None
        self.cut_after = None  # seconds from the first flood frame to a failed send
        self.error = None

    def run(self):
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.sendall(
                (
                    "GET /media-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:  # the handshake is the only thing ever read
                chunk = sock.recv(1)
                if not chunk:
                    raise OSError("closed during the handshake")
                head += chunk
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise OSError(head.split(b"\r\n")[0].decode())
            sid, call = f"MZflood{self.n}", f"CAflood{self.n}"
            sock.sendall(ws_frame(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})))
            sock.sendall(ws_frame(json.dumps({
                "event": "start", "sequenceNumber": "1", "streamSid": sid,
                "start": {"accountSid": "ACflood", "streamSid": sid, "callSid": call,
                          "tracks": ["inbound"], "customParameters": {},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            })))
            payload = base64.b64encode(bytes([0x7F]) * 8000).decode()
            self.started = time.monotonic()
            while time.monotonic() < self.stop_at:
                frame = ws_frame(json.dumps({
                    "event": "media", "sequenceNumber": str(self.frames + 2), "streamSid": sid,
                    "media": {"track": "inbound", "chunk": str(self.frames + 1),
                              "timestamp": str(self.frames * 1000), "payload": payload},
                }))
                sock.sendall(frame)
                self.frames += 1
        except socket.timeout:
            self.error = "a send blocked for 30 s"
        except OSError:
            if self.started is not None:
                self.cut_after = time.monotonic() - self.started
            else:
                self.error = "could not start"


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flooders", type=int, default=10)
    ap.add_argument("--honest", type=int, default=100)
    ap.add_argument("--duration", type=int, default=50, help="length of each honest call, s")
    ap.add_argument("--flood-secs", type=int, default=30, help="how long each flooder tries")
    ap.add_argument("--server", default=SERVER, help="the server binary (e.g. an older build)")
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--client-core", default="1")
    ap.add_argument("--short", action="store_true", help="CI: 30 honest calls of 40 s")
    ap.add_argument("--env", action="append", default=[], help="extra server variable, K=V")
    args = ap.parse_args()
    if args.short:
        args.honest, args.duration, args.flood_secs = 30, 40, 25

    env = {
        "LIMIT_CONCURRENCY": str(args.honest + args.flooders + 10),
        "IDLE_TIMEOUT_SECS": "30",
        "RUST_LOG": "warn",
    }
    env.update(kv.split("=", 1) for kv in args.env)
    server = Server(args.server_core, env, args.server)
    port = server.port
    sim = callsim(
        args.client_core, port,
        ["--calls", str(args.honest), "--duration", f"{args.duration}s", "--ramp", "2s"],
    )
    deadline = time.monotonic() + 20
    while health(port)["active_calls"] < args.honest:
        if time.monotonic() > deadline:
            sys.exit(f"only {health(port)['active_calls']} honest calls went live")
        time.sleep(0.05)
    time.sleep(2)
    base = rss_kib(server.pid)
    sampler = RssSampler(server.pid)
    sampler.start()

    flood_start = time.monotonic()
    flooders = [Flooder(port, i, flood_start + args.flood_secs) for i in range(args.flooders)]
    pin = getattr(os, "sched_setaffinity", None)
    if pin:
        pin(0, {int(args.client_core)})
    for f in flooders:
        f.start()
    all_closed = None
    while time.monotonic() < flood_start + args.flood_secs + 5:
        if metric(port, "callvisor_calls_ended_total", 'reason="not_reading"') >= args.flooders:
            all_closed = time.monotonic() - flood_start
            break
        time.sleep(0.02)
    for f in flooders:
        f.join(timeout=args.flood_secs + 35)
    # RSS 10 s after the last flooder was closed (or gave up).
    settle_from = flood_start + (all_closed if all_closed is not None else args.flood_secs)
    time.sleep(max(0.0, settle_from + 10 - time.monotonic()))
    after = rss_kib(server.pid)
    sampler.running = False
    active_mid = health(port)["active_calls"]

    out, _ = sim.communicate(timeout=args.duration + 60)
    s = json.loads(out)
    final = health(port)
    server.stop()

    peak_growth = (sampler.peak - base) / 1024
    settle_delta = (after - base) / 1024
    rtt_p99 = s["echo_rtt_ms"]["p99"] if s["echo_rtt_ms"] else float("nan")
    lag_p99 = s["send_lag_ms"]["p99"] if s["send_lag_ms"] else float("nan")
    cuts = [f.cut_after for f in flooders if f.cut_after is not None]
    print(f"server: {args.server} (core {args.server_core}); callsim and flooders on core {args.client_core}")
    print(f"honest calls: {args.honest} x {args.duration} s; flooders: {args.flooders}, "
          f"{sum(f.frames for f in flooders)} frames of 8,000-byte audio sent in all")
    print(f"RSS: baseline {base / 1024:.1f} MiB (honest calls live), peak {sampler.peak / 1024:.1f} MiB, "
          f"10 s after the flood {after / 1024:.1f} MiB")
    print(f"honest calls: connected {s['connected']}, failed {s['failed']}, frames sent "
          f"{s['frames']['sent']}, lost {s['frames']['lost']}, echo p99 {rtt_p99:.2f} ms, "
          f"callsim send lag p99 {lag_p99:.2f} ms")

    checks = [
        ("peak RSS growth < 64 MiB", peak_growth < 64, f"{peak_growth:.1f} MiB"),
        ("every flooder closed within 5 s", all_closed is not None and all_closed < 5,
         "never" if all_closed is None else f"{all_closed:.2f} s"),
        ("every flooder's connection cut by the server", len(cuts) == len(flooders),
         f"{len(cuts)} of {len(flooders)}"
         + (f", after {min(cuts):.1f}-{max(cuts):.1f} s" if cuts else "")
         + "".join(f"; {f.error}" for f in flooders if f.error)),
        ("honest calls all live through the flood", active_mid == args.honest,
         f"{active_mid} live"),
        ("honest calls connected, none failed", s["connected"] == args.honest and s["failed"] == 0,
         f"{s['connected']} connected, {s['failed']} failed"),
        ("honest calls lost no frame", s["frames"]["lost"] == 0, f"{s['frames']['lost']} lost"),
        ("RSS 10 s later within 16 MiB of the start", abs(settle_delta) < 16, f"{settle_delta:+.1f} MiB"),
        ("every slot back", final["active_calls"] == 0
         and final["calls_admitted"] == final["calls_completed"],
         f"active {final['active_calls']}, admitted {final['calls_admitted']}, "
         f"completed {final['calls_completed']}"),
    ]
    latency = ("honest echo p99 < 20 ms", rtt_p99 < 20, f"{rtt_p99:.2f} ms")
    if args.short:
        print(f"INFO {latency[0]}: {latency[2]} (not judged in --short: shared CI machine)")
    else:
        checks.append(latency)
    bad = server.bad_lines()
    checks.append(("no panic or ERROR in the server log", not bad, bad[0] if bad else "none"))
    return report(checks, "abuse")


if __name__ == "__main__":
    sys.exit(main())
