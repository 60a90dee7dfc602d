#!/usr/bin/env python3
"""Interop check: confluent-kafka's Schema Registry client and Avro serde against a registry.

    python registry_interop.py http://127.0.0.1:8081

Needs `confluent-kafka[avro,schemaregistry]` (pinned 2.13.0 in scripts/stack.sh). Written for
Reflex's local `reflex-registry`, but only checks Confluent behaviour, so it should pass against
Confluent too. Subjects get a random suffix, so it can run against a registry in use. Prints one
line per check and exits non-zero if any check fails.
"""

import json
import struct
import sys
import traceback
import uuid

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

RUN = uuid.uuid4().hex[:8]
V1 = json.dumps(
    {
        "type": "record",
        "name": "Interop",
        "namespace": "reflex.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "count", "type": "int"},
        ],
    }
)
# Adds a field with a default: BACKWARD (the default level) and FULL compatible.
V2 = json.dumps(
    {
        "type": "record",
        "name": "Interop",
        "namespace": "reflex.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "count", "type": "int"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
# Adds a field without a default: not BACKWARD compatible.
V_BAD = json.dumps(
    {
        "type": "record",
        "name": "Interop",
        "namespace": "reflex.test",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "count", "type": "int"},
            {"name": "required", "type": "long"},
        ],
    }
)

passed = []
failed = []


def check(name):
    """Runs the decorated function now and records the outcome."""

    def run(fn):
        try:
            detail = fn()
            passed.append(name)
            print(f"ok    {name}" + (f": {detail}" if detail else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failed.append(name)
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        return fn

    return run


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_error(fn, status, code):
    try:
        fn()
    except SchemaRegistryError as e:
        expect(
            e.http_status_code == status and e.error_code == code,
            f"expected HTTP {status} / error_code {code}, got {e.http_status_code} / {e.error_code}: {e.error_message}",
        )
        return f"HTTP {e.http_status_code}, error_code {e.error_code}, {e.error_message!r}"
    raise AssertionError(f"expected HTTP {status} / error_code {code}, the call succeeded")


def same_schema(a, b):
    return json.loads(a) == json.loads(b)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    url = sys.argv[1].rstrip("/")
    print(f"registry interop checks against {url} (run {RUN})", flush=True)

    def client():
        # A fresh client each time, so answers come from the registry, not the client's cache.
        return SchemaRegistryClient({"url": url})

    subject = f"interop-{RUN}-value"
    other_subject = f"interop-{RUN}-other-value"
    ids = {}

    @check("register_schema returns an id")
    def _():
        ids["v1"] = client().register_schema(subject, Schema(V1, "AVRO"))
        expect(isinstance(ids["v1"], int) and ids["v1"] > 0, f"id {ids['v1']!r}")
        return f"id {ids['v1']}"

    @check("get_schema(id) returns the registered Avro schema")
    def _():
        schema = client().get_schema(ids["v1"])
        expect(schema.schema_type == "AVRO", f"schema_type {schema.schema_type!r}")
        expect(same_schema(schema.schema_str, V1), f"schema {schema.schema_str}")

    @check("registering the same schema again returns the same id")
    def _():
        again = client().register_schema(subject, Schema(V1, "AVRO"))
        expect(again == ids["v1"], f"{again} != {ids['v1']}")
        versions = client().get_versions(subject)
        expect(versions == [1], f"versions {versions}")

    @check("the same schema under another subject gets the same id")
    def _():
        other = client().register_schema(other_subject, Schema(V1, "AVRO"))
        expect(other == ids["v1"], f"{other} != {ids['v1']}")

    @check("get_latest_version(subject)")
    def _():
        latest = client().get_latest_version(subject)
        expect(latest.subject == subject, f"subject {latest.subject!r}")
        expect(latest.version == 1, f"version {latest.version!r}")
        expect(latest.schema_id == ids["v1"], f"id {latest.schema_id!r}")
        expect(same_schema(latest.schema.schema_str, V1), "schema differs")

    @check("lookup_schema(subject, schema)")
    def _():
        found = client().lookup_schema(subject, Schema(V1, "AVRO"))
        expect(found.schema_id == ids["v1"] and found.version == 1, f"{found}")

    @check("an incompatible schema is refused with 409")
    def _():
        return expect_error(lambda: client().register_schema(subject, Schema(V_BAD, "AVRO")), 409, 409)

    @check("test_compatibility: compatible and incompatible")
    def _():
        c = client()
        expect(c.test_compatibility(subject, Schema(V2, "AVRO")) is True, "V2 should be compatible")
        expect(c.test_compatibility(subject, Schema(V_BAD, "AVRO")) is False, "V_BAD should not be")

    @check("a compatible evolution gets a new id and version 2")
    def _():
        ids["v2"] = client().register_schema(subject, Schema(V2, "AVRO"))
        expect(ids["v2"] != ids["v1"], "same id for a different schema")
        latest = client().get_latest_version(subject)
        expect(latest.version == 2 and latest.schema_id == ids["v2"], f"{latest}")
        version1 = client().get_version(subject, 1)
        expect(version1.schema_id == ids["v1"], f"{version1}")

    @check("set_compatibility / get_compatibility per subject and global")
    def _():
        c = client()
        c.set_compatibility(subject_name=other_subject, level="FULL")
        level = c.get_compatibility(subject_name=other_subject)
        expect(level == "FULL", f"subject level {level!r}")
        expect_error(lambda: c.register_schema(other_subject, Schema(V_BAD, "AVRO")), 409, 409)
        global_level = c.get_compatibility()
        expect(isinstance(global_level, str) and global_level, f"global level {global_level!r}")
        return f"global {global_level}"

    @check("get_subjects lists both subjects")
    def _():
        subjects = client().get_subjects()
        expect(subject in subjects and other_subject in subjects, f"{subjects}")

    @check("get_schema_versions(id)")
    def _():
        pairs = {(v.subject, v.version) for v in client().get_schema_versions(ids["v1"])}
        expect({(subject, 1), (other_subject, 1)} <= pairs, f"{pairs}")

    @check("unknown schema id is 404 / 40403")
    def _():
        return expect_error(lambda: client().get_schema(2_000_000_000), 404, 40403)

    @check("unknown subject is 404 / 40401")
    def _():
        return expect_error(lambda: client().get_latest_version(f"missing-{RUN}"), 404, 40401)

    @check("invalid Avro is 422 / 42201")
    def _():
        return expect_error(
            lambda: client().register_schema(subject, Schema('{"type":"record","name":"x","fields":[{"name":"a","type":"nope"}]}', "AVRO")),
            422,
            42201,
        )

    topic = f"interop-serde-{RUN}"
    frames = {}

    @check("AvroSerializer auto-registers under {topic}-value and frames the id")
    def _():
        c = client()
        serializer = AvroSerializer(c, V1)  # auto.register.schemas defaults to true
        ctx = SerializationContext(topic, MessageField.VALUE)
        data = serializer({"id": "a-1", "count": 7}, ctx)
        expect(isinstance(data, bytes) and len(data) > 5, f"{data!r}")
        magic, schema_id = struct.unpack(">bI", data[:5])
        expect(magic == 0, f"magic byte {magic}")
        latest = client().get_latest_version(f"{topic}-value")
        expect(latest.schema_id == schema_id, f"framed id {schema_id}, registered {latest.schema_id}")
        expect(schema_id == ids["v1"], f"framed id {schema_id}, expected the existing id {ids['v1']}")
        frames["v1"] = data
        return f"{len(data)} bytes, schema id {schema_id}"

    @check("AvroDeserializer reads it back through the registry")
    def _():
        deserializer = AvroDeserializer(client())
        ctx = SerializationContext(topic, MessageField.VALUE)
        value = deserializer(frames["v1"], ctx)
        expect(value == {"id": "a-1", "count": 7}, f"{value!r}")

    @check("AvroSerializer with an evolved schema registers version 2")
    def _():
        serializer = AvroSerializer(client(), V2)
        ctx = SerializationContext(topic, MessageField.VALUE)
        data = serializer({"id": "a-2", "count": 8, "note": "hi"}, ctx)
        _, schema_id = struct.unpack(">bI", data[:5])
        expect(schema_id == ids["v2"], f"framed id {schema_id}, expected {ids['v2']}")
        versions = client().get_versions(f"{topic}-value")
        expect(versions == [1, 2], f"versions {versions}")
        value = AvroDeserializer(client())(data, ctx)
        expect(value == {"id": "a-2", "count": 8, "note": "hi"}, f"{value!r}")

    print(f"registry_interop: {len(passed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
