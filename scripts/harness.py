"""Shared by the scripts that run the release server (abuse, soak, bench, agent_bench): one server
pinned to a core, and what they read of it (/, /metrics, RSS, CPU and steal time, its log)."""

import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target", "release", "callvisor")
CALLSIM = os.path.join(ROOT, "target", "release", "callsim")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def steal_seconds(core):
    """Time the hypervisor took from `core` (the `steal` column of /proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                return int(line.split()[8]) / TICK
    return 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def health(port):
    return json.loads(get(port, "/")[1])


def metric(port, name, labels=""):
    """One sample of /metrics; `labels` as written there, e.g. 'reason="stop"'."""
    _, body = get(port, "/metrics")
    m = re.search(rf"^{re.escape(name)}(\{{{re.escape(labels)}\}})? (\S+)$", body, re.M)
    return float(m.group(2)) if m else 0.0


class Server:
    """The release server on a free loopback port, pinned to `core`, its stderr kept."""

    def __init__(self, core, env, binary=SERVER):
        self.port = free_port()
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WORKERS": "1",
        }
        full.update(env)
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), os.path.abspath(binary)], env=full, cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid
        self.log = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 10
        while True:
            try:
                health(self.port)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("server did not start: " + "".join(self.log[-5:]))
                time.sleep(0.01)

    def wait_active(self, n, within, at_least=False):
        """Polls / until active_calls is n (or >= n); returns the last answer, or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            h = health(self.port)
            if h["active_calls"] == n or (at_least and h["active_calls"] >= n):
                return h
            time.sleep(0.05)
        return None

    def bad_lines(self):
        """Log lines no run should print: panics and ERROR lines."""
        return [l.strip() for l in self.log if "panicked" in l or " ERROR " in l]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def callsim(core, port, args):
    """Starts callsim pinned to `core` against the server; `--json` summary on its stdout."""
    return subprocess.Popen(
        ["taskset", "-c", str(core), CALLSIM, "--target", f"http://127.0.0.1:{port}", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def report(checks, name):
    """Prints a PASS/FAIL line per check and the closing count; returns the failures."""
    failed = 0
    for check, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'} {check}: {detail}", flush=True)
        failed += not ok
    print(f"{name}: {len(checks) - failed} passed, {failed} failed", flush=True)
    return failed
