#!/usr/bin/env python3
"""Writes the fuzz seeds under tests/corpus/<target>/ from the repository's real inputs.

  wire_decode      Confluent frames (magic 0, schema id, Avro binary datum) of the example
                   packs' events (examples/*/events.jsonl, first two lines) and of hand-written
                   action request/outcome events; schema id i+1 is SCHEMAS[i] in fuzz/src/lib.rs.
  rule_parse       the example packs' rule files, as they are, and each rule's condition.
  template_render  every template string (containing `{{` or `{%`) in the example packs'
                   actor.toml and bindings.toml, and hostile values (injection-*.txt: path
                   traversal, query and fragment, JSON, CR/LF, Redis key segments, `raw`).

Run from anywhere: fuzz/make_seeds.py. The Avro encoder covers what these schemas use
(records, primitives, enums, maps, arrays, unions with null; defaults for missing fields).
"""
import json
import pathlib
import struct
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "corpus"

# Same order as SCHEMAS in fuzz/src/lib.rs (the recursive schema, last, has no file).
SCHEMA_FILES = [
    "avro/k8s_pod_event.avsc",
    "avro/action_request.avsc",
    "avro/action_outcome.avsc",
    "examples/crash-loop/avro/pod_event.avsc",
    "examples/host-quarantine/avro/host_detection.avsc",
    "examples/idle-suspend/avro/environment_idle.avsc",
    "examples/incident-evidence/avro/alert.avsc",
]
PACKS = {"crash-loop": 3, "host-quarantine": 4, "idle-suspend": 5, "incident-evidence": 6}


def varint(n):
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(schema, value, named):
    if isinstance(schema, list):  # union: null or the first other branch
        if value is None:
            return varint(schema.index("null"))
        i = next(i for i, s in enumerate(schema) if s != "null")
        return varint(i) + encode(schema[i], value, named)
    if isinstance(schema, str):
        if schema in named:
            return encode(named[schema], value, named)
        kind = schema
    else:
        kind = schema["type"]
        if isinstance(kind, (dict, list)) or kind in named:
            return encode(kind, value, named)
    if kind == "null":
        return b""
    if kind == "boolean":
        return b"\x01" if value else b"\x00"
    if kind in ("int", "long"):
        return varint(int(value))
    if kind == "double":
        return struct.pack("<d", float(value))
    if kind == "float":
        return struct.pack("<f", float(value))
    if kind in ("string", "bytes"):
        data = value.encode() if isinstance(value, str) else bytes(value)
        return varint(len(data)) + data
    if kind == "enum":
        named[schema["name"]] = schema
        return varint(schema["symbols"].index(value))
    if kind == "array":
        body = b"".join(encode(schema["items"], v, named) for v in value)
        return (varint(len(value)) + body if value else b"") + b"\x00"
    if kind == "map":
        body = b"".join(
            encode("string", k, named) + encode(schema["values"], v, named)
            for k, v in value.items()
        )
        return (varint(len(value)) + body if value else b"") + b"\x00"
    if kind == "record":
        named[schema["name"]] = schema
        out = b""
        for field in schema["fields"]:
            v = value.get(field["name"], field.get("default"))
            if v is None and field["name"] not in value and "default" not in field:
                raise ValueError(f"missing field {field['name']}")
            out += encode(field["type"], v, named)
        return out
    raise ValueError(f"unsupported type {kind}")


def frame(index, event):
    schema = json.loads((ROOT / SCHEMA_FILES[index]).read_text())
    return b"\x00" + struct.pack(">I", index + 1) + encode(schema, event, {})


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


request = {
    "idempotency_key": "k1", "action": "restart-pod", "kind": "HTTP",
    "target": "prod-eu/shop/checkout-7d9f", "params": {"namespace": "shop", "pod": "checkout-7d9f"},
    "body": '{"reason": "CrashLoopBackOff"}', "event_id": "e1", "event_type": "io.k8s.pod.crashloop",
    "rule": "crashloop-restart", "correlation_id": "e1", "context": {"owner.team": "shop"},
    "dry_run": False, "requested_at": 1764000000000,
}
outcome = {
    "idempotency_key": "k1", "action": "restart-pod", "target": "prod-eu/shop/checkout-7d9f",
    "event_id": "e1", "correlation_id": "e1", "rule": "crashloop-restart", "result": "SUCCEEDED",
    "attempt": 1, "dry_run": False, "status_code": 200, "error_class": None, "error": None,
    "worker": "actor-1", "started_at": 1764000000000, "duration_ms": 12,
}
first_pod_event = json.loads((ROOT / "examples/crash-loop/events.jsonl").read_text().splitlines()[0])
# rule_parse includes this one: keep its name.
write("wire_decode", "crash_loop_event.bin", frame(3, first_pod_event))
write("wire_decode", "k8s_pod_event.bin", frame(0, first_pod_event))
write("wire_decode", "action_request.bin", frame(1, request))
write("wire_decode", "action_outcome.bin", frame(2, outcome))
# Recursive schema (id 8): next -> next -> null, tags ["a"], m {"k": null}.
write("wire_decode", "nested.bin", b"\x00\x00\x00\x00\x08" + b"\x02\x02\x00\x00\x00\x00\x00" + b"\x02\x02a\x00" + b"\x02\x02k\x00")
for pack, index in PACKS.items():
    lines = (ROOT / "examples" / pack / "events.jsonl").read_text().splitlines()
    for n, line in enumerate(lines[:2]):
        write("wire_decode", f"{pack}-{n + 1}.bin", frame(index, json.loads(line)))
    rules = (ROOT / "examples" / pack / "rules.toml").read_text()
    write("rule_parse", f"{pack}.toml", rules)
    # Lone conditions: the target also wraps its input in a minimal rule file.
    for n, rule in enumerate(tomllib.loads(rules).get("rule", [])):
        write("rule_parse", f"{pack}-when-{n + 1}.cel", rule["when"])
    for config in ("actor.toml", "bindings.toml"):
        seen = set()

        def walk(v):
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
            elif isinstance(v, str) and ("{{" in v or "{%" in v) and v not in seen:
                seen.add(v)
                write("template_render", f"{pack}-{config[:-5]}-{len(seen)}.txt", v)

        walk(tomllib.loads((ROOT / "examples" / pack / config).read_text()))

# Hostile values: the target renders each input as a template and as a value `v` in fixed URL,
# JSON, header and Redis-key templates.
INJECTIONS = {
    "path-traversal": "../../kube-system/pods/coredns",
    "dot-segment": "..",
    "encoded-dots": "%2e%2e",
    "query": "p?force=true&grace=0",
    "fragment": "p#admin",
    "backslash": "..\\..\\admin",
    "json-break-out": '"}, "restart_count": 0, "x": {"a":"',
    "json-control": "line\nbreak\u0001\\",
    "crlf-header": "ok\r\nX-Admin: yes",
    "redis-key": "shop:admin {slot}*?[x]",
    "marker": "\ue0000\ue001",
    "url-raw": "http://h/api/{{ v | raw }}",
    "json-outside-quotes": '{"a": {{ v }}, "b": "{{ v }}"}',
    "macro": "{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(v) }}",
}
for name, value in INJECTIONS.items():
    write("template_render", f"injection-{name}.txt", value)
