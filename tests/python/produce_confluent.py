"""Produce pod events the way a Python service would: confluent-kafka's SchemaRegistryClient and
AvroSerializer (auto-registering `<topic>-value`) and a Producer with CloudEvents headers.

usage: produce_confluent.py REGISTRY_URL BOOTSTRAP TOPIC SCHEMA_FILE COUNT
Prints one JSON line per event: {"ce_id", "key", "value_hex", "schema_id"}; exits non-zero on error.
"""
import json
import sys
from datetime import datetime, timezone

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    registry_url, bootstrap, topic, schema_file, count = sys.argv[1:6]
    schema_str = open(schema_file).read()
    client = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(client, schema_str)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "partitioner": "murmur2_random"})
    errors = []
    for i in range(int(count)):
        pod = f"py-pod-{i % 3}"
        event = {"cluster": "prod-us", "namespace": "shop", "pod": pod, "reason": "CrashLoopBackOff",
                 "restart_count": 3 + i, "seq": i, "rollout_in_progress": False, "labels": {"lang": "python"}}
        value = serializer(event, SerializationContext(topic, MessageField.VALUE))
        ce_id = f"py-{i}"
        headers = [("ce_specversion", b"1.0"), ("ce_id", ce_id.encode()), ("ce_source", b"python/service"),
                   ("ce_type", b"io.k8s.pod.crashloop"), ("content-type", b"application/avro"),
                   ("ce_time", datetime.now(timezone.utc).isoformat().encode())]
        producer.produce(topic, key=pod, value=value, headers=headers,
                         on_delivery=lambda err, msg: err and errors.append(str(err)))
        schema_id = int.from_bytes(value[1:5], "big")
        print(json.dumps({"ce_id": ce_id, "key": pod, "value_hex": value.hex(), "schema_id": schema_id}))
    remaining = producer.flush(30)
    if remaining or errors:
        sys.exit(f"{remaining} undelivered, errors: {errors}")
    # The id the serializer used must resolve to the same schema through the registry.
    registered = client.get_schema(schema_id)
    if json.loads(registered.schema_str) != json.loads(Schema(schema_str, "AVRO").schema_str):
        sys.exit("registry returned a different schema for the serializer's id")


if __name__ == "__main__":
    main()
