#!/usr/bin/env python3
"""Host-quarantine scenario detections as JSON lines, for `reflexctl publish` (see README.md).

usage: generate.py [--count N] [--seed S] [--storm]
Detections on workstations, servers and domain controllers with detector confidence 0..1;
--storm makes them all high-confidence (a detector gone wrong: the blast-radius cap's case).
"""
import argparse
import json
import random
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--count", type=int, default=100)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--storm", action="store_true")
args = parser.parse_args()
rng = random.Random(args.seed)
now = int(time.time() * 1000)
for i in range(args.count):
    asset = rng.choice(["WORKSTATION"] * 6 + ["SERVER"] * 3 + ["DOMAIN_CONTROLLER"])
    prefix = {"WORKSTATION": "ws", "SERVER": "srv", "DOMAIN_CONTROLLER": "dc"}[asset]
    print(json.dumps({
        "host": f"{prefix}-{rng.randint(1, 500):04d}",
        "site": rng.choice(["fra1", "iad2"]),
        "detection": rng.choice(["ransomware-behaviour", "c2-beacon", "credential-dumping"]),
        "confidence": 0.99 if args.storm else round(rng.random(), 2),
        "asset_class": asset,
        "detected_at": now + i,
    }))
