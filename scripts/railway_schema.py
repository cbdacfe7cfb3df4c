#!/usr/bin/env python3
"""Writes Railway's GraphQL schema as SDL (schema/railway.graphql) from its public introspection
result (the JSON Railway's CLI generates its client from, railwayapp/cli).

  python3 scripts/railway_schema.py railway-schema.json > schema/railway.graphql

The autoscaler's tests validate every query and mutation it sends against that file (with
apollo-compiler), and the fake Railway API of the tests rejects what it rejects.
"""

import json
import sys


def type_ref(t):
    if t["kind"] == "NON_NULL":
        return type_ref(t["ofType"]) + "!"
    if t["kind"] == "LIST":
        return "[" + type_ref(t["ofType"]) + "]"
    return t["name"]


def description(d, indent=""):
    if not d:
        return ""
    return indent + json.dumps(d) + "\n"


def args(field):
    if not field.get("args"):
        return ""
    parts = []
    for a in field["args"]:
        s = f"{a['name']}: {type_ref(a['type'])}"
        if a.get("defaultValue") is not None:
            s += f" = {a['defaultValue']}"
        parts.append(s)
    return "(" + ", ".join(parts) + ")"


def deprecated(f):
    if f.get("isDeprecated"):
        return f" @deprecated(reason: {json.dumps(f.get('deprecationReason') or 'No longer supported')})"
    return ""


def main():
    data = json.load(open(sys.argv[1]))
    schema = data.get("data", data)["__schema"]
    out = []
    roots = {k: (schema.get(k) or {}).get("name") for k in ("queryType", "mutationType", "subscriptionType")}
    out.append("schema {")
    for key, op in (("queryType", "query"), ("mutationType", "mutation"), ("subscriptionType", "subscription")):
        if roots[key]:
            out.append(f"  {op}: {roots[key]}")
    out.append("}\n")
    builtin = {"String", "Int", "Float", "Boolean", "ID"}
    for t in sorted(schema["types"], key=lambda t: t["name"]):
        name, kind = t["name"], t["kind"]
        if name.startswith("__") or name in builtin:
            continue
        d = description(t.get("description"))
        if kind == "SCALAR":
            out.append(f"{d}scalar {name}\n")
        elif kind in ("OBJECT", "INTERFACE"):
            word = "type" if kind == "OBJECT" else "interface"
            impl = ""
            if t.get("interfaces"):
                impl = " implements " + " & ".join(i["name"] for i in t["interfaces"])
            fields = "".join(
                f"{description(f.get('description'), '  ')}  {f['name']}{args(f)}: {type_ref(f['type'])}{deprecated(f)}\n"
                for f in t["fields"]
            )
            out.append(f"{d}{word} {name}{impl} {{\n{fields}}}\n")
        elif kind == "UNION":
            out.append(f"{d}union {name} = " + " | ".join(p["name"] for p in t["possibleTypes"]) + "\n")
        elif kind == "ENUM":
            values = "".join(f"  {v['name']}{deprecated(v)}\n" for v in t["enumValues"])
            out.append(f"{d}enum {name} {{\n{values}}}\n")
        elif kind == "INPUT_OBJECT":
            fields = "".join(
                f"  {f['name']}: {type_ref(f['type'])}"
                + (f" = {f['defaultValue']}" if f.get("defaultValue") is not None else "")
                + "\n"
                for f in t["inputFields"]
            )
            out.append(f"{d}input {name} {{\n{fields}}}\n")
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
