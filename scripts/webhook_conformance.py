#!/usr/bin/env python3
"""Verifies callvisor's Standard Webhooks signatures with the OFFICIAL Python library.

    python3 scripts/webhook_conformance.py FILE.jsonl [FILE ...]
    python3 scripts/webhook_conformance.py --self-test

Each line of FILE is one request callvisor's Rust code signed (src/webhooks.rs, the unit test
`samples_for_the_official_library` writes them when CALLVISOR_WEBHOOK_SAMPLES=FILE):

    {"secret": "whsec_...", "body": "...", "headers": {"webhook-id": ..., "webhook-timestamp": ...,
     "webhook-signature": "v1,..."}}

For every sample, `standardwebhooks.Webhook(secret)` (version pinned in
scripts/requirements-webhooks.txt; this script installs nothing) must
  - `verify(body, headers)`: the receiver's check, against this machine's clock, so the samples
    must be verified within 5 minutes of being written;
  - give the same `webhook-signature` from its own `sign(id, timestamp, body)` (clock-free);
  - for a JSON body, return that JSON from the default `verify(body, headers)`, as a receiver
    written from the library's README would call it.
`verify` is called with json_parse=False first because the library's default also parses the
body as JSON, which an empty or non-JSON body (both among the samples) is not.

`--self-test` proves the checks bite: the library reproduces the spec's published signature, a
sample it signed itself passes, and each tampering (body, id, timestamp, secret, signature, a
stale timestamp) fails; an empty or missing file exits 2.

Exit status: 0 every sample verifies; 1 some sample does not (or a line is not a sample); 2 a
file is missing or holds no sample (an empty file means the Rust test wrote nothing, which must
fail CI), or the library is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

PINNED = Path(__file__).with_name("requirements-webhooks.txt")
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_SHOWN = 300  # characters of a failing sample shown
MAX_REPORTED = 10  # failing samples reported per file

# The published vector of the official libraries' tests (Python `test_sign_function`,
# JavaScript "sign function works").
VECTOR = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": '{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}


class Unavailable(Exception):
    """The official library is not installed."""


def library():
    try:
        import standardwebhooks
    except ImportError as e:
        raise Unavailable(
            f"cannot import standardwebhooks ({e}); install the pinned version: "
            f"python3 -m pip install -r {PINNED}"
        ) from e
    return standardwebhooks


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("standardwebhooks")
    except Exception:  # pragma: no cover - metadata missing
        return "?"


def check(sample: object) -> list[str]:
    """What is wrong with one sample according to the official library (empty: nothing)."""
    sw = library()
    if not isinstance(sample, dict):
        return [f"not a JSON object: {type(sample).__name__}"]
    secret, body, headers = sample.get("secret"), sample.get("body"), sample.get("headers")
    if not isinstance(secret, str) or not isinstance(body, str) or not isinstance(headers, dict):
        return ['expected {"secret": str, "body": str, "headers": {...}}']
    missing = [h for h in HEADERS if not isinstance(headers.get(h), str)]
    if missing:
        return [f"missing header(s): {', '.join(missing)}"]
    extra = sorted(set(headers) - set(HEADERS))
    if extra:
        return [f"unexpected header(s): {', '.join(extra)}"]

    problems = []
    try:
        wh = sw.Webhook(secret)
    except Exception as e:
        return [f"Webhook(secret) refused the secret: {type(e).__name__}: {e}"]

    data = body.encode("utf-8")
    try:
        wh.verify(data, headers, json_parse=False)
    except Exception as e:
        hint = ""
        if "too old" in str(e):
            hint = " (the samples must be verified within 5 minutes of being written)"
        problems.append(f"verify: {type(e).__name__}: {e}{hint}")

    try:
        ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=timezone.utc)
        ours = headers["webhook-signature"]
        theirs = wh.sign(msg_id=headers["webhook-id"], timestamp=ts, data=body)
        if theirs != ours:
            problems.append(f"sign: the library signs {theirs!r}, callvisor sent {ours!r}")
    except Exception as e:
        problems.append(f"sign: {type(e).__name__}: {e}")

    if not problems:
        try:
            parsed = json.loads(body)
        except ValueError:
            pass
        else:
            try:
                if wh.verify(body, headers) != parsed:
                    problems.append("verify(body, headers) returned other JSON than the body")
            except Exception as e:
                problems.append(f"verify (JSON): {type(e).__name__}: {e}")
    return problems


def shorten(sample: object) -> str:
    text = json.dumps(sample, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def check_file(path: Path) -> int:
    """0 all samples verify, 1 some do not, 2 missing or no sample."""
    if not path.is_file():
        print(f"{path}: no such file (the Rust test writes it given CALLVISOR_WEBHOOK_SAMPLES)")
        return 2
    total, failed = 0, 0
    # JSON lines end at b"\n" only: a body may hold U+2028, which str.splitlines() splits on.
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        total += 1
        try:
            sample = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError is one
            sample, problems = raw.decode("utf-8", errors="replace"), [f"not a JSON line: {e}"]
        else:
            problems = check(sample)
        if problems:
            failed += 1
            if failed <= MAX_REPORTED:
                print(f"{path}:{number}: FAIL {'; '.join(problems)}")
                print(f"    {shorten(sample)}")
    if total == 0:
        print(f"{path}: no sample (the Rust test wrote nothing)")
        return 2
    if failed:
        more = f" ({failed - MAX_REPORTED} more not shown)" if failed > MAX_REPORTED else ""
        print(f"{path}: {failed} of {total} samples FAIL{more}")
        return 1
    print(f"{path}: {total} samples verified by standardwebhooks {library_version()}")
    return 0


def self_test() -> int:
    sw = library()
    failures = []

    def expect(what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    wh = sw.Webhook(VECTOR["secret"])
    at = datetime.fromtimestamp(VECTOR["timestamp"], tz=timezone.utc)
    expect(
        "the library reproduces the published vector",
        wh.sign(msg_id=VECTOR["id"], timestamp=at, data=VECTOR["body"]) == VECTOR["signature"],
    )

    def signed(body: str, secret: str = VECTOR["secret"], msg_id: str = "msg_self_test", ts=None):
        ts = int(datetime.now(tz=timezone.utc).timestamp()) if ts is None else ts
        sig = sw.Webhook(secret).sign(
            msg_id=msg_id, timestamp=datetime.fromtimestamp(ts, tz=timezone.utc), data=body
        )
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}
        return {"secret": secret, "body": body, "headers": headers}

    good_body = '{"tool":"lookup_order","arguments":{"note":"Grüße ☎️"}}'
    good = signed(good_body)
    expect("a sample the library signed passes", check(good) == [])
    expect("an empty body passes", check(signed("")) == [])
    expect("a non-JSON body passes", check(signed("a.b\n{not json")) == [])

    def tampered(what: str, change) -> None:
        sample = json.loads(json.dumps(good))
        change(sample)
        problems = check(sample)
        expect(f"rejects {what}: {problems[0] if problems else 'ACCEPTED'}", bool(problems))

    tampered("a tampered body", lambda s: s.update(body=s["body"].replace("Grüße", "Grüsse")))
    tampered("a body with a space added", lambda s: s.update(body=s["body"] + " "))
    tampered("an empty body", lambda s: s.update(body=""))
    tampered("another id", lambda s: s["headers"].update({"webhook-id": "msg_self_tesT"}))
    tampered(
        "a timestamp moved by 1 s",
        lambda s: s["headers"].update(
            {"webhook-timestamp": str(int(s["headers"]["webhook-timestamp"]) + 1)}
        ),
    )
    tampered("another secret", lambda s: s.update(secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"))
    def off_by_one_symbol(s: dict) -> None:
        sig = s["headers"]["webhook-signature"]  # v1,<43 symbols>=: the last one carries 2 bits
        s["headers"]["webhook-signature"] = sig[:-2] + ("E" if sig[-2] == "A" else "A") + "="

    tampered("a signature off by one symbol", off_by_one_symbol)
    tampered(
        "the right MAC tagged v2",
        lambda s: s["headers"].update(
            {"webhook-signature": s["headers"]["webhook-signature"].replace("v1,", "v2,")}
        ),
    )
    tampered("a missing signature header", lambda s: s["headers"].pop("webhook-signature"))
    stale = signed(good_body, ts=int(datetime.now(tz=timezone.utc).timestamp()) - 400)
    problems = check(stale)
    expect(f"rejects a timestamp 400 s old: {problems[:1]}", any("too old" in p for p in problems))

    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, content: str | None) -> int:
            path = Path(tmp, name)
            if content is not None:
                path.write_text(content, encoding="utf-8")
            with contextlib.redirect_stdout(io.StringIO()):  # its FAIL lines are expected here
                return check_file(path)

        lines = lambda *samples: "".join(json.dumps(s) + "\n" for s in samples)  # noqa: E731
        bad = json.loads(json.dumps(good))
        bad["body"] += "!"
        expect("a file of good samples exits 0", run("good.jsonl", lines(good, signed(""))) == 0)
        expect("a file with one tampered sample exits 1", run("bad.jsonl", lines(good, bad)) == 1)
        expect("a line that is not JSON exits 1", run("junk.jsonl", lines(good) + "{\n") == 1)
        expect("an empty file exits 2", run("empty.jsonl", "") == 2)
        expect("a file of blank lines exits 2", run("blank.jsonl", "\n\n") == 2)
        expect("a missing file exits 2", run("missing.jsonl", None) == 2)

    if failures:
        print(f"self-test FAILED: {len(failures)} check(s)")
        return 1
    print(f"self-test passed (standardwebhooks {library_version()})")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    try:
        if argv == ["--self-test"]:
            return self_test()
        worst = 0
        for name in argv:
            worst = max(worst, check_file(Path(name)))
        return worst
    except Unavailable as e:
        print(e)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
