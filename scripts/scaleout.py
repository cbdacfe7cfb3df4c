#!/usr/bin/env python3
"""Horizontal scale, end to end: callvisor replicas behind nginx's `random` balancer (Railway's
routing: no sticky sessions), driven only through nginx by callsim.

Scenarios (each prints PASS/FAIL; the exit code is the number that failed):
  1. fill      3 replicas x LIMIT 10, 21 calls within 2 s: all connect, none busy.
  2. overflow  same replicas, 36 calls: >= 28 connect, the rest hear busy after exactly
               MAX_REDIRECTS + 1 tries, nothing fails otherwise.
  3. rolling   3 replicas x LIMIT 20, 24 live calls while the replicas are replaced one at a
               time as Railway does: every call is still connected at the end; the audio gap
               per hand-off is reported.
  4. crash     SIGKILL one of those replicas under 15 live calls: its calls end (Twilio cannot
               recover a broken socket), the others are untouched, new calls land on survivors.
  5. autoscale `callvisor autoscale` against a fake Railway API that starts and SIGTERMs
               replicas: 1 to 6 replicas and back as 45 calls ramp up and end
               (scripts/scaleout_autoscale.py).
In every scenario no replica ever holds more than LIMIT_CONCURRENCY calls (polled every 20 ms).

Scenarios 3 and 4 run with deploy headroom (24 calls on 60 slots): handed-off calls all look
for room at once, and at 24 calls on 30 slots a Monte Carlo of this deploy refuses one of them
in 13% of runs (scripts/bounce_odds.py). The assertions must hold every time.

Run through scripts/scaleout.sh (builds the binaries). Needs nginx (apt-get install -y nginx).
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CALLVISOR_BIN_DIR", os.path.join(ROOT, "target", "debug"))
MAX_REDIRECTS = 8
BUSY = "All our lines are busy. Please call again later."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    finally:
        conn.close()


class Replica:
    def __init__(self, name, workdir, limit):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LIMIT_CONCURRENCY": str(limit),
            "MAX_REDIRECTS": str(MAX_REDIRECTS),
            "BUSY_MESSAGE": BUSY,
            # The short drain deadline of a test deploy: live calls are handed off after 1 s.
            "DRAIN_TIMEOUT_SECS": "1",
            "RAILWAY_REPLICA_ID": name,
            "WORKERS": "1",
            "RUST_LOG": "info",
        }
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "callvisor")], env=env, cwd=workdir,
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if health(self.port):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"replica {name} did not start; log:\n{open(self.log_path).read()}")
            time.sleep(0.02)

    def alive(self):
        return self.proc.poll() is None


class Cluster:
    """Replicas, nginx in front of them, and a poller that keeps each replica's peak load."""

    def __init__(self, workdir, limit):
        self.workdir = workdir
        self.limit = limit
        self.replicas = {}
        self.peak = {}
        self.port = free_port()
        self.nginx = None
        self.stop_polling = threading.Event()
        self.poller = threading.Thread(target=self.poll, daemon=True)

    def nginx_conf(self):
        servers = "\n".join(
            f"    server 127.0.0.1:{r.port};" for r in self.replicas.values()
        )
        d = self.workdir
        return f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  # Railway's edge: random, no sticky sessions.
  upstream callvisor {{
    random;
{servers}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://callvisor;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"""

    def write_nginx_conf(self):
        with open(os.path.join(self.workdir, "nginx.conf"), "w") as f:
            f.write(self.nginx_conf())

    def start(self, names):
        for name in names:
            self.replicas[name] = Replica(name, self.workdir, self.limit)
        self.write_nginx_conf()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen(
            [nginx, "-e", os.path.join(self.workdir, "nginx-error.log"), "-p", self.workdir,
             "-c", os.path.join(self.workdir, "nginx.conf"), "-g", "daemon off;"],
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if health(self.port):
                    break
            except OSError:
                pass
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("nginx did not start: " + self.nginx_errors())
            time.sleep(0.02)
        self.poller.start()

    def nginx_errors(self):
        try:
            return open(os.path.join(self.workdir, "nginx-error.log")).read()
        except OSError:
            return "(no log)"

    def reload_nginx(self):
        """New upstreams for new connections; streams already proxied stay where they are."""
        self.write_nginx_conf()
        self.nginx.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def poll(self):
        while not self.stop_polling.is_set():
            for name, r in list(self.replicas.items()):
                try:
                    h = health(r.port)
                except OSError:
                    continue
                if h:
                    self.peak[name] = max(self.peak.get(name, 0), h["active_calls"])
            time.sleep(0.02)

    def reset_peaks(self):
        self.peak = {}

    def max_per_replica(self):
        return max(self.peak.values(), default=0)

    def live_calls(self):
        total = 0
        for r in list(self.replicas.values()):
            if r.alive():
                try:
                    total += (health(r.port) or {}).get("active_calls", 0)
                except OSError:
                    pass
        return total

    def calls_on(self, name):
        try:
            return (health(self.replicas[name].port) or {}).get("active_calls", 0)
        except (OSError, KeyError):
            return 0

    def wait_idle(self, timeout=30):
        deadline = time.monotonic() + timeout
        while self.live_calls() and time.monotonic() < deadline:
            time.sleep(0.05)

    def add(self, name):
        self.replicas[name] = Replica(name, self.workdir, self.limit)
        self.reload_nginx()

    def remove(self, name):
        del self.replicas[name]
        self.reload_nginx()

    def shutdown(self):
        self.stop_polling.set()
        for r in self.replicas.values():
            if r.alive():
                r.proc.kill()
        if self.nginx and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(timeout=10)


def callsim(cluster, calls, duration, ramp):
    return subprocess.Popen(
        [os.path.join(BIN, "callsim"), "--target", f"http://127.0.0.1:{cluster.port}",
         "--calls", str(calls), "--duration", duration, "--ramp", ramp, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]},
    )


def summary_of(proc):
    out, _ = proc.communicate(timeout=300)
    return json.loads(out)


class Scenario:
    def __init__(self, name):
        self.name = name
        self.checks = []
        self.notes = []
        self.row = {}

    def check(self, ok, what):
        self.checks.append((bool(ok), what))

    @property
    def passed(self):
        return all(ok for ok, _ in self.checks)

    def record(self, s, cluster, calls=None):
        gap = s["handoff_gap_ms"]
        self.row = {
            "calls": calls or s["calls"], "connected": s["connected"],
            "redirected": s["redirected"], "handed_off": s["handed_off"], "busy": s["busy"],
            "failed": s["failed"], "max_per_replica": cluster.max_per_replica(),
            "worst_gap_ms": gap["max"] if gap else None,
        }
        self.check(cluster.max_per_replica() <= cluster.limit,
                   f"no replica above {cluster.limit} calls (peak {cluster.max_per_replica()})")

    def report(self):
        print(f"{'PASS' if self.passed else 'FAIL'}  {self.name}")
        for ok, what in self.checks:
            print(f"        {'ok  ' if ok else 'FAIL'} {what}")
        for note in self.notes:
            print(f"        info {note}")
        sys.stdout.flush()


def fill(cluster):
    sc = Scenario("1 fill: 21 calls on 3 x 10 slots")
    cluster.reset_peaks()
    s = summary_of(callsim(cluster, 21, "6s", "2s"))
    sc.record(s, cluster)
    sc.check(s["connected"] == 21, f"all 21 connected ({s['connected']}, "
             f"{s['redirected']} after redirects)")
    sc.check(s["busy"] == 0 and s["failed"] == 0,
             f"none busy ({s['busy']}), none failed ({s['failed']}: {s['failed_by_reason']})")
    return sc


def overflow(cluster):
    sc = Scenario("2 overflow: 36 calls on 3 x 10 slots")
    cluster.wait_idle()
    cluster.reset_peaks()
    s = summary_of(callsim(cluster, 36, "6s", "2s"))
    sc.record(s, cluster)
    sc.check(s["connected"] >= 28, f"at least 28 connected ({s['connected']})")
    sc.check(s["failed"] == 0, f"none failed ({s['failed']}: {s['failed_by_reason']})")
    sc.check(s["busy"] == 36 - s["connected"], f"every other call busy ({s['busy']})")
    tries = MAX_REDIRECTS + 1
    sc.check(s["busy_after_tries"] == ({str(tries): s["busy"]} if s["busy"] else {}),
             f"every busy call heard it after exactly {tries} tries ({s['busy_after_tries']})")
    heard = {r["said"] for r in s["call_records"] if r["outcome"] == "busy"}
    sc.check(heard <= {BUSY}, f"busy calls heard the busy message ({heard or 'none busy'})")
    return sc


def rolling(cluster):
    sc = Scenario("3 rolling deploy: 24 live calls, 3 x 20 slots replaced one by one")
    cluster.wait_idle()
    cluster.reset_peaks()
    sim = callsim(cluster, 24, "24s", "2s")
    time.sleep(4)
    live_before = cluster.live_calls()
    old = sorted(cluster.replicas)
    for i, name in enumerate(old):
        # Railway: the new replica starts and passes its health check, goes live, and the old
        # one leaves the balancer and gets SIGTERM. Its streams stay up (nginx's old worker
        # keeps proxying them) until the drain deadline hands them over.
        cluster.add(f"deploy2-{i + 1}")
        r = cluster.replicas[name]
        cluster.remove(name)
        r.proc.send_signal(signal.SIGTERM)
        code = r.proc.wait(timeout=30)
        sc.check(code == 0, f"{name} drained and exited 0 (exit {code})")
    s = summary_of(sim)
    sc.record(s, cluster)
    sc.check(live_before == 24, f"24 calls live before the deploy ({live_before})")
    sc.check(s["connected"] == 24, f"all 24 still connected at the end ({s['connected']})")
    sc.check(s["busy"] == 0 and s["failed"] == 0,
             f"none busy ({s['busy']}), none failed ({s['failed']}: {s['failed_by_reason']})")
    sc.check(s["handoffs"] >= 1, f"calls were handed off ({s['handoffs']} hand-offs "
             f"of {s['handed_off']} calls)")
    gap = s["handoff_gap_ms"]
    if gap:
        sc.notes.append(
            f"audio gap per hand-off: p50 {gap['p50']:.0f} ms, max {gap['max']:.0f} ms (target "
            f"under 1000 ms: {'met' if gap['max'] < 1000 else 'NOT met'}); {s['frames']['lost']} "
            f"frames lost, {s['frames']['lost_at_close']} of them in flight at a hand-off")
    return sc


def crash(cluster):
    sc = Scenario("4 crash: SIGKILL one replica under 15 live calls")
    cluster.wait_idle()
    cluster.reset_peaks()
    sim = callsim(cluster, 15, "12s", "2s")
    time.sleep(4)
    victim_name = sorted(cluster.replicas)[0]
    victim = cluster.replicas[victim_name]
    on_victim = health(victim.port)["active_calls"]
    victim.proc.kill()
    victim.proc.wait()
    # New calls after the crash, while nginx still lists the dead replica.
    time.sleep(1)
    after = callsim(cluster, 6, "3s", "1s")
    s = summary_of(sim)
    s_after = summary_of(after)
    sc.record(s, cluster, calls=15 + 6)
    sc.row["connected"] += s_after["connected"]
    sc.row["failed"] += s_after["failed"]
    sc.row["redirected"] += s_after["redirected"]
    sc.check(s["failed"] == on_victim,
             f"the {on_victim} calls on {victim_name} ended, and only they "
             f"({s['failed']} failed: {s['failed_by_reason']})")
    sc.check(s["connected"] == 15 - on_victim,
             f"the other {15 - on_victim} calls were untouched ({s['connected']} connected)")
    sc.check(s_after["connected"] == 6,
             f"6 new calls placed on the survivors ({s_after['connected']} connected, "
             f"{s_after['failed']} failed)")
    return sc


def autoscale(cluster):
    import scaleout_autoscale
    return scaleout_autoscale.run(cluster, BIN, free_port, callsim, summary_of, Scenario)


def fleet(limit, scenarios, results, names=("r1", "r2", "r3")):
    """`names` replicas with `limit` slots each behind nginx; runs `scenarios` on them in order."""
    workdir = tempfile.mkdtemp(prefix="callvisor-scaleout-")
    cluster = Cluster(workdir, limit)
    try:
        cluster.start(list(names))
        print(f"{len(names)} replica(s) (LIMIT_CONCURRENCY={limit}, MAX_REDIRECTS={MAX_REDIRECTS}) "
              f"behind nginx random on 127.0.0.1:{cluster.port}; logs in {workdir}", flush=True)
        for run in scenarios:
            sc = run(cluster)
            sc.report()
            results.append((sc, workdir))
    finally:
        cluster.shutdown()


def main():
    import argparse
    p = argparse.ArgumentParser(description="callvisor's scale-out scenarios")
    p.add_argument("only", nargs="*", help="scenario numbers to run (default: all)")
    only = set(p.parse_args().only)
    results = []
    if not only or only & {"1", "2"}:
        fleet(10, (fill, overflow), results)
    if not only or only & {"3", "4"}:
        fleet(20, (rolling, crash), results)
    if not only or "5" in only:
        fleet(10, (autoscale,), results, names=("a1",))
    scenarios = [sc for sc, _ in results]
    cols = ["calls", "connected", "redirected", "handed_off", "busy", "failed",
            "max_per_replica", "worst_gap_ms"]
    print()
    print(f"| {'scenario':<16} | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for sc in scenarios:
        cells = ["-" if sc.row.get(c) is None else f"{sc.row[c]:.0f}" if isinstance(sc.row[c], float)
                 else str(sc.row[c]) for c in cols]
        print(f"| {sc.name.split(':')[0]:<16} | " + " | ".join(cells) + " |")
    failed = [(sc, d) for sc, d in results if not sc.passed]
    for sc, d in failed:
        print(f"FAILED: {sc.name}; replica and nginx logs in {d}")
    for d in {d for _, d in results} - {d for _, d in failed}:
        shutil.rmtree(d, ignore_errors=True)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
