#!/usr/bin/env python3
"""Checks client events the voice agent sent against the OFFICIAL OpenAI Python SDK's types.

    python3 scripts/sdk_conformance.py realtime FILE.jsonl [FILE ...]
    python3 scripts/sdk_conformance.py live FILE.jsonl [FILE ...]
    python3 scripts/sdk_conformance.py --self-test

Each line of FILE is one client event exactly as sent over the WebSocket (a JSON object), as
the tests' fake Realtime API captures them. `realtime` checks against
`openai.types.realtime.RealtimeClientEvent`, `live` against `openai.types.live.ClientEvent`
(GPT-Live). The SDK version is pinned in scripts/requirements-sdk.txt.

Why more than `TypeAdapter(...).validate_json()`: the SDK's models are `extra="allow"`, so a
misspelt or invented field (`session.audio.input.bogus`) is accepted silently, and the SDK's
`PropertyInfo(discriminator=...)` is not a pydantic discriminator. So this script
  - builds a pydantic discriminated union on `type` from the SDK's own variants (an unknown
    `type` is reported as such, not as eleven unrelated union errors),
  - validates in strict mode (`"audio_end_ms": "1500"` is a wrong type, not coerced to 1500),
  - walks the parsed model (models, lists, dicts, tuples) and reports every `model_extra` key
    with its wire path.

Exit status: 0 every event conforms; 1 some event does not; 2 a file is missing or holds no
event (an empty capture means the tests captured nothing, which must fail CI), or the SDK (or
its `live` module) is not installed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PINNED = Path(__file__).with_name("requirements-sdk.txt")
MAX_STRING = 60  # longer strings (base64 audio, instructions) are shortened when shown
MAX_SHOWN = 800  # characters of an offending event shown
MAX_ERRORS = 8  # pydantic errors shown per event


class Unavailable(Exception):
    """The SDK, or the mode's module in it, is not installed."""


@dataclass
class Failure:
    line: int
    path: str
    message: str
    event: object


def sdk_union(mode: str):
    """The SDK's client-event union for `mode`, as a typing Union of its variants."""
    try:
        if mode == "realtime":
            from openai.types.realtime import RealtimeClientEvent as union
        elif mode == "live":
            from openai.types.live import ClientEvent as union
        else:
            raise ValueError(mode)
    except ImportError as e:
        module = "openai.types.realtime" if mode == "realtime" else "openai.types.live"
        raise Unavailable(
            f"cannot import {module} ({e}); install the pinned SDK: "
            f"python3 -m pip install -r {PINNED}"
        ) from e
    # Annotated[Union[...], PropertyInfo(discriminator="type")] -> Union[...]
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return union


class Checker:
    def __init__(self, mode: str):
        import pydantic

        self.mode = mode
        variants = typing.get_args(sdk_union(mode))
        self.types: dict[str, type] = {}
        for variant in variants:
            field = variant.model_fields["type"]
            for tag in typing.get_args(field.annotation):
                self.types[tag] = variant
        union = typing.Union[tuple(variants)]  # noqa: UP007 (a runtime Union of classes)
        self.adapter = pydantic.TypeAdapter(
            typing.Annotated[union, pydantic.Field(discriminator="type")]
        )

    def check_line(self, line_no: int, text: str) -> tuple[str, list[Failure]]:
        """Checks one line; returns (event type for the tally, failures)."""
        import pydantic

        try:
            event = json.loads(text)
        except json.JSONDecodeError as e:
            return "(not JSON)", [Failure(line_no, "", f"not JSON: {e}", text.rstrip("\n"))]
        if not isinstance(event, dict):
            return "(not an object)", [Failure(line_no, "", "not a JSON object", event)]
        kind = event.get("type")
        if not isinstance(kind, str) or kind not in self.types:
            return (
                str(kind),
                [Failure(line_no, "type", f"unknown event type {kind!r} (not in the SDK's "
                         f"{self.mode} client events)", event)],
            )
        try:
            parsed = self.adapter.validate_json(text, strict=True)
        except pydantic.ValidationError as e:
            failures = []
            for path, msg in union_errors(kind, e.errors()):
                failures.append(Failure(line_no, path, msg, event))
            if len(failures) > MAX_ERRORS:
                more = len(failures) - MAX_ERRORS
                failures = failures[:MAX_ERRORS]
                failures.append(Failure(line_no, "", f"... and {more} more errors", event))
            return kind, failures
        return kind, [
            Failure(line_no, path, "unknown field (not in the SDK's model)", event)
            for path in extras(parsed)
        ]

    def check_file(self, path: Path) -> tuple[Counter, list[Failure]]:
        checked: Counter = Counter()
        failures: list[Failure] = []
        with path.open(encoding="utf-8") as f:
            for line_no, text in enumerate(f, 1):
                if not text.strip():
                    continue
                kind, found = self.check_line(line_no, text)
                checked[kind] += 1
                failures += found
        return checked, failures


PYDANTIC_BRANCH_NAMES = {"str", "int", "float", "bool", "list", "dict"}


def is_branch(part: str) -> bool:
    """Whether a pydantic error location part names a union branch, not a wire field."""
    return part[:1].isupper() or "[" in part or part in PYDANTIC_BRANCH_NAMES


def union_errors(kind: str, errors: list[dict]) -> list[tuple[str, str]]:
    """pydantic's errors as (wire path, message), without the noise of union branches.

    A nested SDK union (`session`: realtime or transcription; `item`: message, function_call,
    function_call_output, ...; `turn_detection`: server_vad or semantic_vad) is not
    discriminated for pydantic, so every branch reports its own errors. A branch whose own
    `type` literal does not match is not the one meant: its errors are dropped when a sibling
    branch's `type` does match (with an unknown nested `type` no branch matches, and the
    mismatches are the message). Branch names are dropped from the path, duplicates merged.
    """
    locs = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == kind:  # the top-level discriminator's tag
            loc = loc[1:]
        locs.append(loc)
    wrong = {
        tuple(loc[:-1])
        for loc, err in zip(locs, errors)
        if err["type"] == "literal_error" and loc and loc[-1] == "type"
        and len(loc) >= 2 and is_branch(loc[-2])
    }
    branches = {
        tuple(loc[: i + 1]) for loc in locs for i, part in enumerate(loc) if is_branch(part)
    }
    excluded = {
        b for b in wrong
        if any(o[:-1] == b[:-1] and o != b and o not in wrong for o in branches)
    }
    rows = []
    for loc, err in zip(locs, errors):
        in_wrong = any(tuple(loc[:i]) in excluded for i in range(1, len(loc) + 1))
        wire = [p if not p.isdigit() else f"[{p}]" for p in loc if not is_branch(p)]
        path = ".".join(wire).replace(".[", "[")
        msg = f"{err['msg']} [{err['type']}]"
        shown = err.get("input")
        if not isinstance(shown, (dict, list)):
            msg += f", got {shorten(shown)!r}"
        rows.append((path, msg, in_wrong))
    keep = [r for r in rows if not r[2]] or rows
    seen, out = set(), []
    for path, msg, _ in keep:
        if (path, msg) not in seen:
            seen.add((path, msg))
            out.append((path, msg))
    return out


def extras(value, path: str = "") -> list[str]:
    """Wire paths of every field a parsed SDK model kept as an extra (unknown to the model)."""
    import pydantic

    def join(key) -> str:
        return f"{path}.{key}" if path else str(key)

    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            found.append(join(key))
        for name, field in type(value).model_fields.items():
            found += extras(getattr(value, name), join(field.alias or name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += extras(item, join(key))
    return found


def shorten(value):
    """The value with long strings (base64 audio, instructions) cut, for printing."""
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"{value[:MAX_STRING // 2]}…({len(value)} chars)"
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v) for v in value]
    return value


def show(event) -> str:
    text = json.dumps(shorten(event), ensure_ascii=False) if not isinstance(event, str) else shorten(event)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def sdk_version() -> str:
    import openai
    import pydantic

    version = openai.__version__
    try:
        pins = [
            l.split("==", 1)[1].strip()
            for l in PINNED.read_text().splitlines()
            if l.strip().startswith("openai==")
        ]
        if pins and pins[0] != version:
            print(
                f"warning: openai {version} is installed, {PINNED.name} pins {pins[0]}",
                file=sys.stderr,
            )
    except OSError:
        pass
    return f"openai {version}, pydantic {pydantic.VERSION}"


def run(mode: str, files: list[str]) -> int:
    for name in files:
        p = Path(name)
        if not p.is_file():
            print(f"error: {name}: no such file (did the tests write the capture?)", file=sys.stderr)
            return 2
        if not any(l.strip() for l in p.open(encoding="utf-8", errors="replace")):
            print(
                f"error: {name}: empty, no client event was captured (the tests must capture "
                "what the agent sent; an empty capture proves nothing)",
                file=sys.stderr,
            )
            return 2
    try:
        checker = Checker(mode)
        version = sdk_version()
    except Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checking {mode} client events against {version}")
    total_failures = 0
    for name in files:
        checked, failures = checker.check_file(Path(name))
        print(f"{name}: {sum(checked.values())} events")
        for kind, n in sorted(checked.items()):
            print(f"  {n:6d}  {kind}")
        for i, f in enumerate(failures):
            print(f"FAIL {name}:{f.line}: {f.path or '(event)'}: {f.message}")
            if i + 1 == len(failures) or failures[i + 1].line != f.line:
                print(f"     event: {show(f.event)}")
        total_failures += len(failures)
    if total_failures:
        print(f"{total_failures} failure(s): the agent sends something the official SDK's types do not know")
        return 1
    print("all events conform")
    return 0


# ---------------------------------------------------------------------------------------------
# --self-test: the checker catches what it must.

VALID_SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
        },
        "instructions": "You answer the phone for Acme.",
        "tools": [
            {
                "type": "function",
                "name": "end_call",
                "description": "End the phone call, after saying goodbye.",
                "parameters": {"type": "object", "properties": {}},
            }
        ],
    },
}


def with_nested(event: dict, path: list[str], key: str, value) -> dict:
    event = json.loads(json.dumps(event))
    node = event
    for p in path:
        node = node[p]
    node[key] = value
    return event


def self_test() -> int:
    try:
        checker = Checker("realtime")
        print(f"self-test against {sdk_version()}")
    except Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # (name, event, expected failure path or None for "passes", what the message must say)
    cases = [
        ("valid GA session.update (pcmu both ways, server_vad, a function tool)",
         VALID_SESSION_UPDATE, None, None),
        ("unknown event type", {"type": "session.bogus"}, "type", "unknown event type"),
        ("unknown top-level field",
         with_nested(VALID_SESSION_UPDATE, [], "bogus", 1), "bogus", "unknown field"),
        ("unknown nested field session.audio.input.bogus",
         with_nested(VALID_SESSION_UPDATE, ["session", "audio", "input"], "bogus", True),
         "session.audio.input.bogus", "unknown field"),
        ("wrong type: audio_end_ms as a string",
         {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
          "audio_end_ms": "1500"},
         "audio_end_ms", "valid integer"),
    ]
    ok = True
    for name, event, want_path, want_msg in cases:
        _, failures = checker.check_line(1, json.dumps(event))
        if want_path is None:
            good = not failures
        else:
            good = any(f.path == want_path and want_msg in f.message for f in failures)
        ok &= good
        got = "passes" if not failures else "; ".join(f"{f.path}: {f.message}" for f in failures)
        print(f"{'ok  ' if good else 'FAIL'} {name}: {got}")

    # GPT-Live (`live`), when this SDK has it: the same walk over openai.types.live.
    try:
        live = Checker("live")
    except Unavailable as e:
        print(f"skip live: {e}")
        live = None
    if live is not None:
        start = {
            "type": "session.start",
            "session": {
                "model": "gpt-live-1",
                "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}},
                "delegation": {"type": "responses", "responses": {"model": "gpt-5", "tools": [
                    {"type": "function", "name": "end_call", "parameters": {"type": "object", "properties": {}}}]}},
            },
        }
        for name, event, want_path, want_msg in [
            ("live: valid session.start (pcmu 8000, Responses delegation)", start, None, None),
            ("live: a Realtime event is unknown", {"type": "input_audio_buffer.append", "audio": "AA=="},
             "type", "unknown event type"),
            ("live: unknown nested field session.audio.format.bogus",
             with_nested(start, ["session", "audio", "format"], "bogus", 1),
             "session.audio.format.bogus", "unknown field"),
        ]:
            _, failures = live.check_line(1, json.dumps(event))
            good = not failures if want_path is None else any(
                f.path == want_path and want_msg in f.message for f in failures)
            ok &= good
            got = "passes" if not failures else "; ".join(f"{f.path}: {f.message}" for f in failures)
            print(f"{'ok  ' if good else 'FAIL'} {name}: {got}")

    # The file-level rules: a missing or empty capture is exit 2, a bad line exit 1.
    with tempfile.TemporaryDirectory() as d:
        empty = Path(d, "empty.jsonl")
        empty.write_text("\n")
        good_file = Path(d, "good.jsonl")
        good_file.write_text(json.dumps(VALID_SESSION_UPDATE) + "\n" + '{"type":"response.create"}\n')
        bad_file = Path(d, "bad.jsonl")
        bad_file.write_text('{"type":"response.create"}\n{"type":"response.create","bogus":1}\n')
        for name, files, want in [
            ("missing file -> exit 2", [str(Path(d, "missing.jsonl"))], 2),
            ("empty file -> exit 2", [str(empty)], 2),
            ("conforming file -> exit 0", [str(good_file)], 0),
            ("a non-conforming line -> exit 1", [str(bad_file)], 1),
        ]:
            with open(os.devnull, "w") as null:
                saved = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = null
                try:
                    got = run("realtime", files)
                finally:
                    sys.stdout, sys.stderr = saved
            good = got == want
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} {name}: exit {got}")

    print("self-test passed" if ok else "self-test FAILED: the checker misses what it must catch")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv == ["--self-test"]:
        return self_test()
    if len(argv) < 2 or argv[0] not in ("realtime", "live"):
        print("usage:\n" + __doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
