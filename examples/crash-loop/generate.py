#!/usr/bin/env python3
"""Crash-loop scenario events as JSON lines, for `reflexctl publish` (see README.md).

usage: generate.py [--count N] [--seed S] [--pods P]
Each line is one pod signal: mostly crash loops with restart counts 1..15, some during a
rollout, spread over P pods in three namespaces (seq grows per pod, so per-key order is
checkable downstream).
"""
import argparse
import json
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--count", type=int, default=100)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--pods", type=int, default=50)
args = parser.parse_args()
rng = random.Random(args.seed)
seq = {}
for _ in range(args.count):
    n = rng.randrange(args.pods)
    namespace = ("shop", "search", "batch")[n % 3]
    pod = f"{namespace}-{n:04d}"
    seq[pod] = seq.get(pod, 0) + 1
    print(json.dumps({
        "cluster": "prod-eu",
        "namespace": namespace,
        "pod": pod,
        "reason": "CrashLoopBackOff",
        "restart_count": rng.randint(1, 15),
        "seq": seq[pod],
        "rollout_in_progress": rng.random() < 0.1,
    }))
