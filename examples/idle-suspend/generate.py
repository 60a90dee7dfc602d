#!/usr/bin/env python3
"""Idle-suspend scenario signals as JSON lines, for `reflexctl publish` (see README.md).

usage: generate.py [--count N] [--seed S]
Idle signals for dev, staging and production environments, some with running jobs; a few
production ones carry an approval (as the approval tool re-sends them); a few previews run on the
production cluster (policies.cedar denies suspending them).
"""
import argparse
import json
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--count", type=int, default=100)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
rng = random.Random(args.seed)
for _ in range(args.count):
    tier = rng.choice(["DEV", "DEV", "STAGING", "PRODUCTION"])
    prod = tier == "PRODUCTION"
    print(json.dumps({
        "environment": f"{tier.lower()}-{rng.randint(1, 40):03d}",
        "tier": tier,
        # A few previews run on the production cluster: the policy denies their suspend.
        "cluster": "prod-eu" if prod or rng.random() < 0.05 else "dev-eu",
        "idle_minutes": rng.randint(0, 300),
        "cpu_percent": round(rng.uniform(0, 10), 1),
        "active_jobs": rng.choice([0, 0, 0, 1]),
        "hourly_cost_usd": round(rng.uniform(1, 50), 2),
        "approved_by": "alice@platform" if prod and rng.random() < 0.3 else "",
    }))
