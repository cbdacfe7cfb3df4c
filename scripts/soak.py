#!/usr/bin/env python3
"""Chaos soak: thousands of calls, several hundred at a time, a third of them misbehaving,
through one release server with call records on, delivered to a flaky receiver; then a SIGTERM
drain under load.

Phase 1 (MINUTES minus the drain phase): callsim --chaos places calls at a steady rate (20 a
second, 20 s each: about 300 live at once) from the other core. The mix (callsim --help,
`--chaos`): normal calls, slow readers, duplicate CallSids, TCP resets in the middle of a frame,
garbage, binary and oversized frames, streams that never send `start`. The seed is printed;
`--seed` replays the same mix (and the receiver's sequence of answers).

Call records (docs/records.md): CALL_EVENTS_URL points at a receiver in this process (loopback,
http.server) that verifies every Standard Webhooks signature with its own HMAC code and answers
about 1 in 4 requests 500, about 1 in 20 after 1.5 s (past CALL_EVENTS_TIMEOUT_MS=1000, then
503), the rest 204; in phase 1 an id fails at most 3 times in a row, in phase 2 at most once
(Receiver's constants say why). It keeps, per webhook-id, the attempts, the 2xx answers and the
body.

Checks after phase 1: every call went as the protocol promises (callsim judges each), no frame
lost by a caller that streams audio, every reset caller's call ended on the server as a dropped
connection (callsim cannot see that: after its reset it is gone; the server's end-of-call line for
that CallSid must say `client_gone`, and `callvisor_calls_ended_total{reason="client_gone"}` must
equal the reset callers), `active_calls` back to 0 and admitted = completed (no slot leaked), no
capacity refusal, RSS back within 16 MiB of where it started (records on, their retries done),
every stream the server accepted (its `call started` line; streams that never send `start` make
no record) has its `rec_<stream_sid>_started` and `rec_<stream_sid>_ended` delivered (within 60 s
of the last call's end), no record for any other stream, no webhook-id answered 2xx twice, no bad
signature, every retry of an id the same bytes, every record's type and stream_sid those of its
id, and no panic or ERROR line in the server log.

Phase 2: 200 normal calls go live, then SIGTERM. Checks: every live call is handed off (closed
1001 `handoff`: Twilio would run its <Redirect>), the server exits 0 within its drain timeout plus
a margin, every handed-off call's `call.ended` (`end_reason` `handed_off`) was delivered before
the process exited or is in an ERROR `call record undelivered` line (the output says which), the
same for the drain calls' `call.started`, the receiver's checks again over both phases, and still
no panic or ERROR line (so a record given up fails the soak too).

Prints a line per check and the receiver's totals (records, attempts, retries, 500s, timeouts),
and exits with the number of checks that failed.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Server, callsim, get, health, metric, report, rss_kib

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


# The server's line for each stream it accepted (`start` taken, no refusal): every such stream,
# and no other, makes a call.started and a call.ended record.
CALL_STARTED = re.compile(r"call started: .* call_sid=(\S+) stream_sid=(\S+)")
# A record callvisor gave up on (records/delivery.rs): logged whole at ERROR, never lost silently.
UNDELIVERED = re.compile(r"call record undelivered \((.*?)\): (call\.\w+) (rec_\S+)")

# The flaky receiver of call records (CALL_EVENTS_URL): a plain http.server on loopback, in a
# thread of this process, that checks every request as a careful backend would and answers
# badly on purpose.
RECORDS_TIMEOUT_MS = 1000  # CALL_EVENTS_TIMEOUT_MS: one attempt's bound
SLOW_SECS = 1.5  # the slow answer: past callvisor's timeout, then 503 (so never a 2xx)
ERROR_SHARE, SLOW_SHARE = 0.25, 0.05  # of the answers: 500 at once / slow; the rest 204
# Phase 1: an id fails at most this many attempts in a row, then gets its 204. Without a cap a
# run of unlucky draws stretches the backoff (1, 2, 4, 8, 16, 32 s, ...) past any bound the soak
# can wait for (800 records at 30 % failure: about one 1-minute run in two has a record failing 6
# times, its 7th attempt up to 63 s after its 1st); with it the 4th attempt comes at most 1+2+4 s
# of backoff (and 3 timeouts) after the 1st, and chains of 4 attempts still happen every run.
PHASE1_MAX_FAILURES = 3
# Phase 2 (the drain): an id fails at most once. The handed-off calls' call.ended records are
# made at the hand-off and get ~3 s (the drain's deadline, at least 3 s after the last call
# ended: raising DRAIN_TIMEOUT_SECS would not lengthen it, the hand-off comes at that deadline),
# retries at most 1 s apart, a slow answer taking a whole second of it: 2-5 attempts. With phase
# 1's odds, 200 records leave some undelivered every run (0.3^4 x 200 = 1.6 by the 500s alone; a
# trial run with 3 failures allowed here: 6 of 200 logged undelivered), ERROR lines the
# receiver's luck caused, not callvisor. One failure (a 500, or a slow answer: the 1 s timeout)
# then a retry within 1 s fits the window: the last record lands ~2 s after the hand-off.
PHASE2_MAX_FAILURES = 1
RECORD_ID = re.compile(r"^rec_(MZ[0-9A-Za-z_-]+)_(started|ended)$")
SIGNATURE_TOLERANCE_SECS = 300  # Standard Webhooks' receivers refuse older (or newer) timestamps


class Id:
    """What the receiver saw of one webhook-id."""

    def __init__(self, body):
        self.body = body  # the first attempt's bytes
        self.attempts = 0
        self.failures = 0  # attempts answered 500 or slowly
        self.ok = 0  # attempts answered 2xx
        self.other_bodies = 0  # attempts whose bytes differed from the first
        self.answers = []  # (seconds since the receiver started, status) per attempt


class Receiver:
    """The flaky backend: verifies every signature with its own HMAC (stdlib only, independent of
    callvisor's code), keeps per webhook-id the attempts, the 2xx answers and the body, and
    answers about 1 in 4 requests 500, about 1 in 20 slowly (SLOW_SECS, past the timeout callvisor
    is given, then 503) and the rest 204; which by a random.Random seeded from the soak's seed.
    A request for an id already answered 2xx gets 204 again (a real backend acknowledges a
    duplicate) and is counted: it must never come."""

    def __init__(self, secret, seed):
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.ids = {}
        self.max_failures = PHASE1_MAX_FAILURES
        self.requests = self.answered_500 = self.answered_slow = self.answered_2xx = 0
        self.bad_signatures = []  # (webhook-id, why)
        self.malformed = []  # (webhook-id, why): a record that does not say what its id says
        self.epoch = time.monotonic()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real backend: callvisor's pool reuses

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, delay = receiver.take(self.headers, body)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    if status != 204:
                        self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # callvisor gave up on a slow answer and closed the connection
                    self.close_connection = True

            def log_message(self, *args):
                pass

        class HTTPServer(ThreadingHTTPServer):
            daemon_threads = True
            # The hand-off ends 200 calls at once and callvisor opens up to 32 connections
            # together: with http.server's backlog of 5, dozens of attempts timed out before the
            # receiver read them (a limit of this receiver, not callvisor's), and 2 records of a
            # drain were given up.
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass  # a connection callvisor dropped mid-request (its timeout): nothing to judge

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/call-events"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def verify(self, headers, body):
        """Standard Webhooks, by hand: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed
        with the secret's bytes, among the space-separated signatures; a timestamp near now."""
        wid, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        sigs = headers.get("webhook-signature", "")
        if not (wid and ts and sigs):
            return "a webhook header missing"
        if not ts.isdigit() or abs(time.time() - int(ts)) > SIGNATURE_TOLERANCE_SECS:
            return f"timestamp {ts!r} not within {SIGNATURE_TOLERANCE_SECS} s"
        mac = hmac.new(self.key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        if not any(hmac.compare_digest(s, expected) for s in sigs.split(" ")):
            return "no v1 signature matches"
        if headers.get("content-type") != "application/json":
            return f"content-type {headers.get('content-type')!r}"
        return None

    def check_record(self, wid, body):
        """Why the record does not say what its id says, or None."""
        m = RECORD_ID.match(wid)
        if not m:
            return "webhook-id is not rec_<stream_sid>_started|ended"
        try:
            record = json.loads(body)
        except ValueError:
            return "body is not JSON"
        if record.get("type") != f"call.{m.group(2)}" or record.get("stream_sid") != m.group(1):
            return f"type {record.get('type')!r}, stream_sid {record.get('stream_sid')!r}"
        return None

    def take(self, headers, body):
        """Books a request; returns (status, seconds to wait before answering)."""
        wid = headers.get("webhook-id", "")
        with self.lock:
            self.requests += 1
            bad = self.verify(headers, body)
            if bad:
                self.bad_signatures.append((wid, bad))
                return 401, 0
            entry = self.ids.get(wid)
            if entry is None:
                entry = self.ids[wid] = Id(body)
                why = self.check_record(wid, body)
                if why:
                    self.malformed.append((wid, why))
            entry.attempts += 1
            entry.other_bodies += body != entry.body
            draw = self.rng.random()
            if entry.ok or entry.failures >= self.max_failures or draw >= ERROR_SHARE + SLOW_SHARE:
                # Booked before the answer leaves: callvisor cannot see a 2xx not counted here.
                status, delay = 204, 0
                entry.ok += 1
                self.answered_2xx += 1
            elif draw < SLOW_SHARE:
                status, delay = 503, SLOW_SECS
                entry.failures += 1
                self.answered_slow += 1
            else:
                status, delay = 500, 0
                entry.failures += 1
                self.answered_500 += 1
            entry.answers.append((round(time.monotonic() - self.epoch, 3), status))
            return status, delay

    def delivered(self, wid):
        with self.lock:
            entry = self.ids.get(wid)
            return bool(entry and entry.ok)

    def missing(self, ids):
        """The ids among `ids` not answered 2xx yet."""
        with self.lock:
            return [i for i in ids if not (i in self.ids and self.ids[i].ok)]

    def wait_for(self, ids, within):
        """Polls until every id of `ids` is delivered or `within` seconds pass; returns the
        missing ones and the seconds waited."""
        started = time.monotonic()
        while True:
            missing = self.missing(ids)
            waited = time.monotonic() - started
            if not missing or waited > within:
                return missing, waited
            time.sleep(0.2)

    def totals(self):
        with self.lock:
            attempts = sum(e.attempts for e in self.ids.values())
            return {
                "records": len(self.ids),
                "delivered": sum(1 for e in self.ids.values() if e.ok),
                "attempts": attempts,
                "retries": attempts - len(self.ids),
                "500": self.answered_500,
                "slow": self.answered_slow,
                "max_attempts": max((e.attempts for e in self.ids.values()), default=0),
                "bad_signatures": len(self.bad_signatures),
            }

    def judge(self):
        """The checks every moment of the soak must pass: (name, ok, detail) each."""
        with self.lock:
            twice = {i: e.answers[:6] + (["..."] if len(e.answers) > 6 else [])
                     for i, e in self.ids.items() if e.ok > 1}
            changed = {i: e.other_bodies for i, e in self.ids.items() if e.other_bodies}
            bad, malformed = list(self.bad_signatures), list(self.malformed)
            requests, ids = self.requests, len(self.ids)
        return [
            ("no record answered 2xx twice (none sent again after a 2xx)", not twice,
             f"{len(twice)} ids" + "".join(f"; {i}: answers {a}" for i, a in list(twice.items())[:3])
             if twice else f"0 of {ids} ids"),
            ("every signature verifies (own HMAC-SHA256)", not bad,
             f"{len(bad)} of {requests} requests bad" + "".join(f"; {i}: {w}" for i, w in bad[:3])),
            ("every retry of an id carried the same body", not changed,
             f"{len(changed)} ids changed" + "".join(f"; {i}: {n}" for i, n in list(changed.items())[:3])
             if changed else "same bytes on every retry"),
            ("every record says what its webhook-id says", not malformed,
             f"{len(malformed)} malformed" + "".join(f"; {i}: {w}" for i, w in malformed[:3])
             if malformed else f"{ids} well-formed"),
        ]

    def body(self, wid):
        with self.lock:
            entry = self.ids.get(wid)
            return json.loads(entry.body) if entry else None

    def delivered_at(self, wid):
        """When the id was answered 2xx (seconds since the receiver started), or None."""
        with self.lock:
            entry = self.ids.get(wid)
            return next((at for at, status in entry.answers if status == 204), None) if entry else None

    def answers(self, wid, since=0.0):
        """The id's attempts as (seconds after `since`, a time.monotonic(), status)."""
        with self.lock:
            entry = self.ids.get(wid)
            offset = since - self.epoch if since else 0.0
            return [(round(at - offset, 2), status) for at, status in entry.answers] if entry else []

    def ids_seen(self):
        with self.lock:
            return set(self.ids)

    def close(self):
        self.httpd.shutdown()


def started_streams(lines):
    """The streams the server accepted, in `lines` of its log: [(stream_sid, call_sid)], one per
    `call started` line."""
    return [(m.group(2), m.group(1)) for m in map(CALL_STARTED.search, lines) if m]


def own_sids_check(label, started):
    """Records are keyed by stream_sid (`rec_<stream_sid>_...`), as Twilio's are unique: a
    stream_sid two accepted streams share makes their records share webhook-ids, which no count
    by id can tell apart. (name, ok, detail)."""
    calls = {}
    for sid, call_sid in started:
        calls.setdefault(sid, []).append(call_sid)
    shared = {sid: c for sid, c in calls.items() if len(c) > 1}
    return (f"{label}every accepted stream has a stream_sid of its own", bool(started) and not shared,
            f"{len(started)} streams, {len(calls)} stream_sids"
            + "".join(f"; {sid} started by {len(c)} streams ({', '.join(c[:2])}, ...)"
                      for sid, c in list(shared.items())[:3]))


def record_ids(streams):
    return [f"rec_{sid}_{kind}" for sid in streams for kind in ("started", "ended")]


def undelivered_ids(lines):
    """The webhook-ids the server logged as undelivered (ERROR), with why."""
    return {m.group(3): m.group(1) for m in map(UNDELIVERED.search, lines) if m}


def call_events(port):
    """callvisor_call_events_total summed by outcome (delivered, retried, given_up)."""
    _, body = get(port, "/metrics")
    out = {}
    for labels, value in re.findall(r"^callvisor_call_events_total\{([^}]*)\} (\S+)$", body, re.M):
        m = re.search(r'outcome="(\w+)"', labels)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(float(value))
    return out


class Sampler(threading.Thread):
    """Peak RSS and peak live calls, once a second; and the peak RSS of each minute (a leak shows
    as a climb from minute to minute, the allocator's working set as a plateau)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.running = server, True
        self.peak_rss = self.peak_active = 0
        self.minutes = []

    def run(self):
        started = time.monotonic()
        while self.running:
            try:
                rss = rss_kib(self.server.pid)
                self.peak_rss = max(self.peak_rss, rss)
                minute = int((time.monotonic() - started) // 60)
                if minute >= len(self.minutes):
                    self.minutes.append(0)
                self.minutes[minute] = max(self.minutes[minute], rss)
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
    ap.add_argument("--server-log", metavar="FILE", help="write the server's log there at the end")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**63)
    print(f"soak: seed {seed} (replay with scripts/soak.sh {args.minutes:g} --seed {seed})", flush=True)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver(secret, seed)

    # Phase 1 runs for the minutes asked, less ~20 s kept for the drain phase.
    ramp = max(10.0, args.minutes * 60 - CALL_SECS - 20)
    calls = int(ramp * RATE)
    server = Server(args.server_core, {
        "LIMIT_CONCURRENCY": "2000",
        "START_TIMEOUT_SECS": "3",
        "IDLE_TIMEOUT_SECS": "10",
        "DRAIN_TIMEOUT_SECS": str(DRAIN_TIMEOUT_SECS),
        "RUST_LOG": "info",
        "CALL_EVENTS_URL": receiver.url,
        "WEBHOOK_SECRET": secret,
        "CALL_EVENTS_TIMEOUT_MS": str(RECORDS_TIMEOUT_MS),
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
    # Every stream the server accepted must have both records delivered; the retries of the last
    # calls' records are still under way (PHASE1_MAX_FAILURES bounds their chains to ~10 s).
    started1 = started_streams(list(server.log))
    streams1 = dict(started1)
    missing1, waited1 = receiver.wait_for(record_ids(streams1), 60)
    events1 = call_events(server.port)
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
    print("  RSS peak by minute: " + ", ".join(f"{kib / 1024:.1f}" for kib in sampler.minutes) + " MiB")
    for kind, t in chaos.items():
        print(f"  {kind:<12} {t['calls']:>6} calls, {t['as_expected']:>6} as expected"
              + (f", {t['frames_sent']} frames sent, {t['frames_lost']} lost" if kind in audio else ""))
    if s["failed_by_reason"]:
        for reason, n in list(s["failed_by_reason"].items())[:10]:
            print(f"  failed: {n} x {reason}")
    if s["echo_rtt_ms"]:
        print(f"  echo round trip p50 {s['echo_rtt_ms']['p50']} ms, p99 {s['echo_rtt_ms']['p99']} ms "
              f"(callsim send lag p99 {s['send_lag_ms']['p99']} ms)")
    t1 = receiver.totals()
    stray1 = receiver.ids_seen() - set(record_ids(streams1))
    print(f"  records: {len(streams1)} streams started, {t1['delivered']} of {2 * len(streams1)} records "
          f"delivered within {waited1:.1f} s of the last call's end; receiver: {t1['attempts']} attempts, "
          f"{t1['retries']} retries, {t1['500']} x 500, {t1['slow']} timeouts (slow 503), "
          f"at most {t1['max_attempts']} attempts for a record; callvisor counted {events1}", flush=True)

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
        ("RSS back within 16 MiB of the start (records on)", (rss_end - rss_start) / 1024 < 16,
         f"{(rss_end - rss_start) / 1024:+.1f} MiB"),
        own_sids_check("", started1),
        ("every stream started has its call.started and call.ended delivered",
         bool(streams1) and not missing1,
         f"{2 * len(streams1) - len(missing1)} of {2 * len(streams1)} records of {len(streams1)} streams"
         + (f"; missing within 60 s: {', '.join(missing1[:5])}" if missing1 else "")),
        ("no record for a stream that never started", not stray1,
         f"{len(stray1)}: {', '.join(sorted(stray1)[:5])}" if stray1 else "none"),
    ]
    checks += receiver.judge()

    # Phase 2: a drain under load, the receiver less flaky (PHASE2_MAX_FAILURES says why).
    receiver.max_failures = PHASE2_MAX_FAILURES
    log_mark = len(server.log)
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
        server.proc.kill()
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
    # The process is gone: what the receiver holds was delivered before it exited. Each record of
    # the drain's streams must be there, or in an ERROR line (given up, never silently lost).
    log = list(server.log)
    started2 = started_streams(log[log_mark:])
    streams2 = dict(started2)
    undelivered = undelivered_ids(log)
    ended = {"delivered": [], "logged": [], "lost": [], "not handed_off": []}
    for sid in streams2:
        wid = f"rec_{sid}_ended"
        body = receiver.body(wid) if receiver.delivered(wid) else None
        if body is not None:
            ended["delivered"].append(wid)
            if body.get("end_reason") != "handed_off" or body.get("handed_off") is not True:
                ended["not handed_off"].append(f"{wid}: {body.get('end_reason')}")
        else:
            ended["logged" if wid in undelivered else "lost"].append(wid)
    started_ids = [f"rec_{sid}_started" for sid in streams2]
    started_missing = [w for w in started_ids if not receiver.delivered(w)]
    started_lost = [w for w in started_missing if w not in undelivered]
    t2 = receiver.totals()
    # callvisor logs each failed attempt at WARN: more than the receiver failed means attempts
    # that never reached it (connection refused or timed out before it read them).
    failed_logged = sum("call record rec_" in line and " not delivered (" in line for line in log)
    last = max((receiver.delivered_at(w) for w in ended["delivered"]), default=None)
    print(f"  records: {len(streams2)} streams started, {len(ended['delivered'])} call.ended (handed_off) "
          f"delivered before the exit"
          + (f" (the last {last - (sent_at - receiver.epoch):.1f} s after SIGTERM)" if last is not None else "")
          + f", {len(ended['logged'])} logged undelivered; phase 2's receiver: "
          f"{t2['attempts'] - t1['attempts']} attempts, {t2['retries'] - t1['retries']} retries, "
          f"{t2['500'] - t1['500']} x 500, {t2['slow'] - t1['slow']} timeouts", flush=True)
    print(f"  receiver, both phases: {t2['records']} records, {t2['delivered']} delivered, {t2['attempts']} "
          f"attempts, {t2['retries']} retries, {t2['500']} x 500, {t2['slow']} timeouts (slow 503), "
          f"{t2['bad_signatures']} bad signatures; callvisor logged {failed_logged} failed attempts, the "
          f"receiver failed {t2['500'] + t2['slow']}", flush=True)
    checks += [
        own_sids_check("phase 2: ", started2),
        ("phase 2: all drain calls live before SIGTERM", live is not None, "yes" if live else "no"),
        ("phase 2: every live call handed off (1001)", handed_off == DRAIN_CALLS, f"{handed_off} of {DRAIN_CALLS}"),
        ("phase 2: exit 0 within the drain timeout + 10 s", code == 0, f"code {code} after {exit_secs:.1f} s"),
        ("phase 2: every handed-off call's call.ended (handed_off) delivered before the exit, or logged "
         "undelivered at ERROR", len(streams2) == DRAIN_CALLS and not ended["lost"] and not ended["not handed_off"],
         f"{len(streams2)} streams: {len(ended['delivered'])} delivered before the exit, "
         f"{len(ended['logged'])} logged undelivered, {len(ended['lost'])} lost"
         + "".join(f"; {k}: {', '.join(v[:3])}" for k, v in ended.items() if v and k != "delivered")
         + "".join(f"; {w} attempts (s after SIGTERM, status): {receiver.answers(w, sent_at) or 'none'}"
                   for w in (ended["logged"] + ended["lost"])[:3])),
        ("phase 2: every drain call's call.started delivered, or logged undelivered at ERROR", not started_lost,
         f"{len(started_ids) - len(started_missing)} of {len(started_ids)} delivered, "
         f"{len(started_missing) - len(started_lost)} logged undelivered, {len(started_lost)} lost"
         + (f": {', '.join(started_lost[:3])}" if started_lost else "")),
    ]
    checks += [(f"after the drain: {name}", ok, detail) for name, ok, detail in receiver.judge()]
    receiver.close()
    if args.server_log:
        with open(args.server_log, "w") as f:
            f.writelines(server.log)
    bad = server.bad_lines()
    checks.append(("no panic or ERROR line in the server log", not bad, bad[0] if bad else
                   f"none in {len(server.log)} lines"))
    print(f"soak: seed {seed}")
    return report(checks, "soak")


if __name__ == "__main__":
    sys.exit(main())
