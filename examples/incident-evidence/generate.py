#!/usr/bin/env python3
"""Incident-evidence scenario alerts as JSON lines, for `reflexctl publish` (see README.md).

usage: generate.py [--count N] [--seed S]
Alerts of severity 1..4 for a few services, firing or resolved, each with an incident id
(several alerts share an incident, as they do during a real outage).
"""
import argparse
import json
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--count", type=int, default=100)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
rng = random.Random(args.seed)
services = [("checkout", "shop"), ("search-api", "search"), ("billing", "finance")]
alerts = ["HighErrorRate", "LatencySLOBurn", "PodsUnavailable", "SlowQueries"]
for _ in range(args.count):
    service, namespace = rng.choice(services)
    print(json.dumps({
        "incident_id": f"INC-{rng.randint(2000, 2000 + args.count // 4):04d}",
        "alert": rng.choice(alerts),
        "service": service,
        "namespace": namespace,
        "severity": rng.choice([1, 2, 2, 3, 3, 4]),
        "status": "FIRING" if rng.random() < 0.8 else "RESOLVED",
    }))
