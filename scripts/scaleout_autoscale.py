"""Scenario 5 of scripts/scaleout.py: `callvisor autoscale` keeps the replica count matched to
live calls, with this script playing Railway.

A fake of Railway's GraphQL API (checked like the real one: the `Project-Access-Token`, the
query and the mutation the controller sends, their variables, the environment, the service, the
region, numReplicas 1..50) starts a callvisor replica behind nginx `random` when the count goes
up and, when it goes down, takes the busiest replica out of nginx and SIGTERMs it (its calls are
handed over, as on Railway). 1 replica at start (LIMIT_CONCURRENCY=10, MIN 1, MAX 6, a 2 s
interval, a 10 s cooldown); callsim ramps 45 calls over a minute (about 45 live at the peak),
each 60 s long, then they end. It must show: the count rises ahead of the load (capacity above
the live calls at every sample), no call fails, at most a few percent hear busy, the calls live
during scale-ins are handed over and survive, and the count returns to MIN. The Rust tests
validate the same documents against Railway's real schema (tests/api/fake_railway.rs).
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "proj-scaleout-token"
SERVICE = "svc-calls-0001"
ENVIRONMENT = "env-prod-0001"
REGION = "us-east4-eqdc4a"
QUERY = re.compile(
    r"^query \w+\(\$serviceId: String!, \$environmentId: String!\) \{\s*"
    r"serviceInstance\(serviceId: \$serviceId, environmentId: \$environmentId\) \{")
MUTATION = re.compile(
    r"^mutation \w+\(\$environmentId: String!, \$patch: EnvironmentConfig!?, "
    r"\$commitMessage: String\) \{\s*environmentPatchCommit\(environmentId: \$environmentId, "
    r"patch: \$patch, commitMessage: \$commitMessage\)\s*\}$")


class FakeRailway:
    """Railway's API for one service, driving `cluster` (scripts/scaleout.py's Cluster)."""

    def __init__(self, cluster, first):
        self.cluster = cluster
        self.count = 1
        self.next_id = 2
        self.lock = threading.Lock()
        self.rejected = []
        self.changes = []  # (time, from, to, replica removed or added)
        self.stopping = []  # replicas SIGTERMed, with their exit codes once known
        self.t0 = time.monotonic()
        self.first = first
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if self.path != "/graphql/v2":
                    return self.answer(404, {"errors": [{"message": "Not Found"}]})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, answer = fake.handle(self.headers, body)
                self.answer(status, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/graphql/v2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reject(self, why):
        self.rejected.append(why)
        return 200, {"errors": [{"message": why}]}

    def handle(self, headers, body):
        if headers.get("Project-Access-Token") != TOKEN:
            return self.reject("Not Authorized")
        query, v = body.get("query", ""), body.get("variables") or {}
        if QUERY.match(query):
            if v != {"serviceId": SERVICE, "environmentId": ENVIRONMENT}:
                return self.reject(f"ServiceInstance not found: {v}")
            with self.lock:
                n = self.count
            return 200, {"data": {"serviceInstance": {
                "region": REGION, "numReplicas": n,
                "latestDeployment": {"id": "dep-1", "meta": {"serviceManifest": {"deploy": {
                    "multiRegionConfig": {REGION: {"numReplicas": n}}}}}}}}}
        if MUTATION.match(query):
            if v.get("environmentId") != ENVIRONMENT or not isinstance(v.get("commitMessage"), str):
                return self.reject(f"bad variables: {v}")
            services = (v.get("patch") or {}).get("services") or {}
            if list(services) != [SERVICE]:
                return self.reject(f"patch must name exactly the service: {list(services)}")
            config = services[SERVICE].get("deploy", {}).get("multiRegionConfig")
            if not isinstance(config, dict) or list(config) != [REGION]:
                return self.reject(f"multiRegionConfig must hold the region: {config}")
            n = (config[REGION] or {}).get("numReplicas")
            if not isinstance(n, int) or not 1 <= n <= 50:
                return self.reject(f"numReplicas must be 1..50: {n}")
            threading.Thread(target=self.scale_to, args=(n,), daemon=True).start()
            return 200, {"data": {"environmentPatchCommit": f"commit-{len(self.changes) + 1}"}}
        return self.reject(f"unknown document: {query[:80]!r}")

    def scale_to(self, n):
        """What Railway does on a count change: start replicas, or SIGTERM some (drained)."""
        with self.lock:
            while self.count < n:
                name = f"a{self.next_id}"
                self.next_id += 1
                self.cluster.add(name)
                self.changes.append((time.monotonic() - self.t0, self.count, self.count + 1, f"+{name}"))
                self.count += 1
            while self.count > n:
                # Any replica may go; the busiest proves the hand-off best.
                name = max(self.cluster.replicas, key=self.load_of)
                calls = self.load_of(name)
                r = self.cluster.replicas[name]
                self.cluster.remove(name)
                r.proc.send_signal(signal.SIGTERM)
                self.stopping.append((name, calls, r))
                self.changes.append((time.monotonic() - self.t0, self.count, self.count - 1,
                                     f"-{name} ({calls} live)"))
                self.count -= 1

    def load_of(self, name):
        return self.cluster.calls_on(name)

    def shutdown(self):
        self.server.shutdown()


def run(cluster, bin_dir, free_port, callsim, summary_of, Scenario):
    sc = Scenario("5 autoscale: 45 calls ramped over a minute, 1 to 6 replicas and back")
    railway = FakeRailway(cluster, "a1")
    port = free_port()
    log_path = os.path.join(cluster.workdir, "autoscale.log")
    controller = subprocess.Popen(
        [os.path.join(bin_dir, "callvisor"), "autoscale"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOST": "127.0.0.1", "PORT": str(port),
            "AUTOSCALE_TARGET_URL": f"http://127.0.0.1:{cluster.port}",
            "RAILWAY_PROJECT_TOKEN": TOKEN, "AUTOSCALE_SERVICE_ID": SERVICE,
            "RAILWAY_ENVIRONMENT_ID": ENVIRONMENT, "RAILWAY_API_URL": railway.url,
            "MIN_REPLICAS": "1", "MAX_REPLICAS": "6", "AUTOSCALE_INTERVAL_SECS": "2",
            "AUTOSCALE_COOLDOWN_SECS": "10", "RUST_LOG": "info",
        },
        stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
    )
    timeline = []
    try:
        time.sleep(3)
        t0 = time.monotonic()
        sim = callsim(cluster, 45, "60s", "60s")
        worst = 0.0
        ended_at = None
        while True:
            time.sleep(1)
            t = time.monotonic() - t0
            live = cluster.live_calls()
            serving = len(cluster.replicas)
            worst = max(worst, live / (serving * cluster.limit))
            timeline.append((t, live, serving, railway.count))
            if sim.poll() is not None and ended_at is None:
                ended_at = t
            if ended_at is not None and railway.count == 1 and live == 0:
                break
            if t > 240:
                break
        back_at = time.monotonic() - t0
        s = summary_of(sim)
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(timeout=10)
        except subprocess.TimeoutExpired:
            controller.kill()
        railway.shutdown()
    for name, _, r in railway.stopping:
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
    sc.record(s, cluster)
    peak_live = max(l for _, l, _, _ in timeline)
    peak_count = max(c for _, _, _, c in timeline)
    sc.check(worst < 1.0, f"the count rose ahead of the load: at most {worst:.0%} of the serving "
             f"replicas' slots in use at any 1 s sample (peak {peak_live} live, {peak_count} replicas)")
    sc.check(s["failed"] == 0, f"no call failed ({s['failed']}: {s['failed_by_reason']})")
    sc.check(s["busy"] <= 2, f"at most a few percent heard busy ({s['busy']} of 45)")
    scale_ins = [(name, calls) for name, calls, _ in railway.stopping]
    with_calls = sum(calls for _, calls in scale_ins)
    sc.check(s["connected"] + s["busy"] == 45 and (with_calls == 0 or s["handoffs"] >= 1),
             f"the calls live at the scale-ins were handed over and survived ({with_calls} calls "
             f"on the {len(scale_ins)} replicas taken out, {s['handoffs']} hand-offs, "
             f"{s['connected']} of 45 connected to the end)")
    codes = [r.proc.returncode for _, _, r in railway.stopping]
    sc.check(all(c == 0 for c in codes), f"every replica taken out drained and exited 0 ({codes})")
    sc.check(railway.count == 1, f"the count returned to MIN=1 ({railway.count}), "
             f"{back_at - ended_at:.0f} s after the last call ended" if ended_at else "calls never ended")
    sc.check(not railway.rejected, f"every API request was valid ({railway.rejected[:2]})")
    decisions = [l for l in open(log_path) if "autoscale: " in l and " -> " in l]
    sc.check(len(decisions) >= 10, f"one log line per decision ({len(decisions)})")
    print("        timeline (s, live calls, replicas serving, Railway's count):")
    for t, live, serving, count in timeline[::5]:
        print(f"          {t:5.0f}  {live:3d} calls  {serving} serving  count {count}")
    print("        changes:")
    for t, a, b, what in railway.changes:
        print(f"          {t:5.0f}  {a} -> {b}  {what}")
    for line in decisions:
        if "Hold" not in line:
            print("        decision: " + line.split("autoscale: ", 1)[1].strip()[:200])
    sc.row["calls"] = 45
    return sc
