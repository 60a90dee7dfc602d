#!/usr/bin/env python3
"""The fault-injection suite's driver, started by scripts/faults inside a fresh local stack
(scripts/stack.sh with Redis persistence on). Run it through scripts/faults.

Each scenario is one run of the main job (scripts/main_job.py: the same workers, load
generator, fake target and loss/duplicate accounting) with a fault thread that injects the
fault once the load is flowing, then measures the time to recover: from the end of the fault
until every group's uncommitted records are back under one second of load. The accounting of
a run where replicas were killed cannot use the workers' own drop counters (a killed replica's
are lost, a restarted one counts again), so the events the rules drop are taken from the rules
themselves: `reflexctl rules test` over the same generated events.
"""
import argparse
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("REFLEX_BIN", ROOT / "target" / "debug"))


def log(msg):
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def fmt(n):
    return f"{int(n):,}"


RESTARTED = []  # stack services this suite restarted: stopped at exit (stack.sh knows only the first)


def stack_pid(name):
    v = os.environ.get(f"REFLEX_TEST_{name}_PID")
    if not v:
        raise SystemExit(f"REFLEX_TEST_{name}_PID is not set: run through scripts/faults")
    return int(v)


def port_of(url):
    return int(url.rstrip("/").rsplit(":", 1)[1])


def wait_port(port, timeout=30):
    from main_job import port_free  # imported late: --list and --report run without confluent-kafka
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_free(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout} s")


def stop_group(pid, sig=signal.SIGTERM):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)  # reap the ones we started
        except ChildProcessError:
            pass
        time.sleep(0.1)


def start_service(name, argv):
    log_path = Path(os.environ["REFLEX_TEST_STACK_DIR"]) / f"{name}-restarted.log"
    p = subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    RESTARTED.append(p)
    os.environ[f"REFLEX_TEST_{name.upper()}_PID"] = str(p.pid)
    return p


def redis_argv():
    port = port_of(os.environ["REFLEX_TEST_REDIS_URL"])
    return port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "yes", "--dir", os.environ["REFLEX_TEST_STACK_DIR"]]


def redis_stop(sig):
    stop_group(stack_pid("REDIS"), sig)


def redis_start():
    port, argv = redis_argv()
    start_service("redis", argv)
    wait_port(port)


def registry_stop():
    stop_group(stack_pid("REGISTRY"))


def registry_start():
    url = os.environ["REFLEX_TEST_REGISTRY_URL"]
    port = port_of(url)
    start_service("registry", [str(BIN / "reflex-registry"), "--listen", f"127.0.0.1:{port}",
                               "--data-file", str(Path(os.environ["REFLEX_TEST_STACK_DIR"]) / "registry.json")])
    wait_port(port)


def target_mode(job, mode, delay_ms=None):
    q = f"mode={mode}" + (f"&delay_ms={delay_ms}" if delay_ms else "")
    req = urllib.request.Request(f"http://127.0.0.1:{job.target_port}/control?{q}", method="POST")
    urllib.request.urlopen(req, timeout=5).read()


# ------------------------------------------------------------------------------ scenarios


class Scenario:
    """name, what it injects, replicas per stage, the fault (run in its own thread) and extra
    worker environment. Replicas are dynamic group members (no group.instance.id), as a
    Kubernetes Deployment runs them."""

    def __init__(self, name, doc, fault, replicas=None, env=None):
        self.name, self.doc, self.fault, self.replicas = name, doc, fault, replicas or {}
        self.env = env or {}


def warm_up(job, share=0.25):
    """Let the load flow for a share of the run before the fault."""
    while job.gen.started is None:
        time.sleep(0.1)
    time.sleep(job.args.duration * share)


def fault_sigkill(job, opts):
    warm_up(job)
    rng = random.Random(job.args.seed)
    end = job.gen.started + job.args.duration * 0.75
    kills = []
    while time.monotonic() < end or not kills:
        key = rng.choice(sorted(k for k in job.workers if job.stage(k) != "reprocessor"))
        stage, replica = job.stage(key), int(key.split("#")[1]) if "#" in key else 1
        job.kill(key, signal.SIGKILL)
        kills.append(key)
        time.sleep(rng.uniform(0.5, 2))
        job.wait_ready([job.spawn(stage, replica)])
        time.sleep(rng.uniform(1, 3) * opts.pace)
    job.fault_note = f"SIGKILLed {len(kills)} replicas: {', '.join(kills)}"


def owned_partitions(job, stage):
    """Partitions the live replicas of `stage` own, from their reflex_assigned_partitions."""
    from main_job import parse_metrics, total
    owned = 0
    for key, w in list(job.workers.items()):
        if job.stage(key) == stage and w.alive():
            text = w.get("/metrics")
            owned += total(parse_metrics(text), "reflex_assigned_partitions") if text else 0
    return int(owned)


def wait_settled(job, stage, want, timeout=60):
    """Until the replicas of `stage` own all `want` partitions of its input again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if owned_partitions(job, stage) == want:
            return True
        time.sleep(0.2)
    return False


def input_partitions(job, stage):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": job.args.bootstrap, "group.id": "reflex-faults-marks"})
    try:
        md = c.list_topics(timeout=10).topics
        return sum(len(md[t].partitions) for t in job.inputs(stage) if t in md)
    finally:
        c.close()


def fault_storm(job, opts):
    warm_up(job)
    stage = "actor"
    want = input_partitions(job, stage)
    added = [job.spawn(stage, i) for i in (2, 3, 4)]
    job.wait_ready(added)
    settled = [wait_settled(job, stage, want)]
    time.sleep(5 * opts.pace)
    # Scaled down one replica at a time, each once the group has settled (a rolling scale-down;
    # scale-down shows all at once).
    for i in (4, 3, 2):
        job.remove(f"{stage}#{i}")
        settled.append(wait_settled(job, stage, want))
    job.fault_note = (f"{stage} scaled 1 -> 4 -> 1 (dynamic members, SIGTERM one at a time); "
                      f"{sum(settled)}/{len(settled)} rebalances settled within 60 s")


def fault_scale_down(job, opts):
    warm_up(job)
    stage = "actor"
    want = input_partitions(job, stage)
    # Three of the four replicas SIGTERMed at the same moment: each drains and leaves while the
    # others' rebalance is still running.
    leaving = [k for k in sorted(job.workers) if job.stage(k) == stage and k != stage]
    threads = [threading.Thread(target=job.remove, args=(k,)) for k in leaving]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    settled = wait_settled(job, stage, want)
    job.fault_note = (f"{stage} scaled {len(leaving) + 1} -> 1 at once (SIGTERM to {', '.join(leaving)}); "
                      f"the survivor {'owned' if settled else 'did NOT own'} all {want} partitions within 60 s")


def fault_broker_restart(job, opts):
    warm_up(job)
    port = port_of("//" + os.environ["REFLEX_TEST_BOOTSTRAP"])
    stop_group(stack_pid("BROKER"), signal.SIGKILL)  # a crash: only what reached the log survives
    time.sleep(opts.outage / 3)
    start_service("broker", [os.environ["REFLEX_TEST_BROKER_RUN"]])  # same log directory
    wait_port(port, timeout=90)
    job.fault_note = f"broker SIGKILLed, restarted on its log directory after {opts.outage / 3:g} s"


def fault_broker_freeze(job, opts):
    warm_up(job)
    pid = stack_pid("BROKER")
    secs = opts.freeze
    os.killpg(pid, signal.SIGSTOP)
    try:
        time.sleep(secs)
    finally:
        os.killpg(pid, signal.SIGCONT)
    job.fault_note = f"broker SIGSTOPped for {secs:g} s, then SIGCONT"


def fault_redis_restart(job, opts):
    warm_up(job)
    redis_stop(signal.SIGKILL)  # a crash: the append-only file is all that survives
    redis_start()
    job.fault_note = "Redis SIGKILLed and restarted at once (appendonly yes, fsync every second)"


def fault_redis_down(job, opts):
    warm_up(job)
    redis_stop(signal.SIGTERM)
    time.sleep(opts.outage)
    redis_start()
    job.fault_note = f"Redis stopped for {opts.outage:g} s (SIGTERM), then started on its append-only file"


def fault_registry_down(job, opts):
    warm_up(job)
    registry_stop()
    # A schema id nobody registered, published while the registry is down: no cache can know it.
    never_seen = b"\0" + struct.pack(">I", 987654) + b"\x02\x04ab"
    time.sleep(1)
    ids = [job.gen.inject(never_seen, "never-seen schema id") for _ in range(3)]
    time.sleep(opts.outage)
    registry_start()
    job.fault_note = f"registry down {opts.outage:g} s; {len(ids)} records with never-seen schema id 987654 published meanwhile"


def fault_target_fail(job, opts):
    warm_up(job)
    target_mode(job, "fail")
    time.sleep(opts.outage)
    target_mode(job, "ok")
    job.fault_note = f"target answered 503 for {opts.outage:g} s"


def fault_target_timeout(job, opts):
    warm_up(job)
    target_mode(job, "timeout", 7000)  # longer than the actor's 5 s timeout
    time.sleep(opts.outage)
    target_mode(job, "ok")
    job.fault_note = f"target applied but answered after 7 s (actor timeout 5 s) for {opts.outage:g} s"


SCENARIOS = [
    # A SIGKILLed member sends no LeaveGroup: the broker expires its session (10 s, main_job's
    # worker settings) and hands its partitions to the others; the restarted one joins as new.
    Scenario("sigkill", "SIGKILL of random dynamic replicas (2 per stage), each restarted",
             fault_sigkill, {"router": 2, "enricher": 2, "actor": 2}),
    Scenario("storm", "rebalance storm: actor replicas 1 -> 4 -> 1, one at a time", fault_storm),
    Scenario("scale-down", "actor replicas 4 -> 1 at once", fault_scale_down, {"actor": 4}),
    Scenario("broker-restart", "broker SIGKILLed and restarted on the same data", fault_broker_restart),
    Scenario("broker-freeze", "broker SIGSTOP then SIGCONT", fault_broker_freeze),
    Scenario("redis-restart", "Redis killed and restarted (AOF on)", fault_redis_restart),
    Scenario("redis-down", "Redis unavailable for a while", fault_redis_down),
    Scenario("registry-down", "schema registry down for a while", fault_registry_down),
    Scenario("target-fail", "target API answers 503 for a while", fault_target_fail),
    Scenario("target-timeout", "target API times out for a while", fault_target_timeout),
]
SMOKE = ["sigkill", "target-fail"]


# ------------------------------------------------------------------------------ the oracle


def rule_drops(job):
    """ce_ids of the generated events the pack's rules drop (reflexctl rules test, in process)."""
    count = int(job.args.rate * job.args.duration)
    events = job.logs / "events.jsonl"
    with open(events, "w") as f:
        subprocess.run([sys.executable, str(job.pack.dir / "generate.py"), "--count", str(count),
                        "--seed", str(job.args.seed)], stdout=f, check=True, cwd=ROOT)
    out = subprocess.run([str(BIN / "reflexctl"), "rules", "test", str(job.pack.dir), "--events", str(events),
                          "--id", "e"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    drops, current = set(), None
    for line in out.splitlines():
        m = re.match(r"event (\d+) ", line)
        if m:
            current = int(m.group(1)) - 1  # reflexctl counts from 1, the generator from 0
        elif current is not None and re.match(r"\s+(router|enricher):.*dropped", line):
            drops.add(f"mj-{job.run_id}-{current}")
    return drops


# ------------------------------------------------------------------------------ the run


def input_marks(job):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": job.args.bootstrap, "group.id": "reflex-faults-marks"})
    try:
        md = c.list_topics(job.pack.topic, timeout=10).topics[job.pack.topic]
        return {p: c.get_watermark_offsets(TopicPartition(job.pack.topic, p), timeout=10)[1]
                for p in md.partitions}
    finally:
        c.close()


def router_caught_up(job, marks):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": job.args.bootstrap, "group.id": job.group("router"),
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(job.pack.topic, p) for p in marks], timeout=10)
        return all(tp.offset >= marks[tp.partition] for tp in got)
    finally:
        c.close()


def run_scenario(sc, opts, logs_root):
    # Imported here: --list and --report run on a bare python3 (no confluent-kafka, fastavro).
    sys.path.insert(0, str(ROOT / "scripts"))
    from main_job import Job
    args = SimpleNamespace(
        pack=opts.pack, bootstrap=os.environ["REFLEX_TEST_BOOTSTRAP"],
        registry=os.environ["REFLEX_TEST_REGISTRY_URL"], redis=os.environ["REFLEX_TEST_REDIS_URL"],
        rate=opts.rate, duration=opts.duration, logs=str(logs_root / sc.name), run_id="",
        seed=opts.seed, dup_ratio=0.01, poison_ratio=0.002, settle_timeout=opts.settle_timeout,
        target_port=0, group_suffix="",
    )
    os.environ.update(sc.env)  # this process runs one scenario (--only): read by every worker
    job = Job(args)
    job.logs.mkdir(parents=True, exist_ok=True)
    job.replicas = sc.replicas
    job.state_url = args.redis  # parked keys in Redis, shared by the replicas
    job.repeats_allowed = True
    job.supervise = True  # a worker that stops on a fatal error is restarted, as in production
    job.interval = 0.5
    job.fault_note = ""
    job.drop_oracle = rule_drops(job)
    recovered = {}

    def fault(j):
        try:
            sc.fault(j, opts)
        except BaseException as e:  # noqa: BLE001 - reported in the table, the run still drains and checks
            j.fault_note = f"fault injection failed: {e!r}"
            log(j.fault_note)
        t0 = time.monotonic()
        # Recovered: the router has committed everything published before the fault ended, and
        # every group is back under one second's worth of uncommitted records.
        marks = None
        while time.monotonic() - t0 < opts.settle_timeout:
            try:
                if marks is None:
                    marks = input_marks(j)
                lag = sum(j.lags().values())
                caught_up = router_caught_up(j, marks)
            except Exception:  # noqa: BLE001 - the broker may still be waking up
                lag, caught_up = None, False
            if caught_up and lag is not None and lag <= max(opts.rate, 10):
                recovered["secs"] = time.monotonic() - t0
                return
            time.sleep(0.5)

    job.fault = fault
    log(f"== scenario {sc.name}: {sc.doc}")
    try:
        code = job.run()
    finally:
        for w in list(job.workers.values()):
            if w.alive():
                w.proc.kill()
    s = getattr(job, "summary", {}) or {}
    target = s.get("target", {})
    row = {
        "scenario": sc.name, "passed": code == 0 and s.get("lost", 1) == 0 and s.get("duplicate_effects", 1) == 0,
        "events_in": s.get("published", 0), "effects": target.get("applied_keys", 0),
        "duplicate_effects": s.get("duplicate_effects"), "lost": s.get("lost"),
        "dead_lettered": s.get("dead_letters", 0), "held": s.get("held", 0),
        "retried_keys": target.get("repeated_keys", 0),
        "recover_s": recovered.get("secs"), "recover_limit": opts.settle_timeout, "note": job.fault_note,
        "restarts": s.get("restarts", []),
        "failed_checks": [c["check"] for c in s.get("checks", []) if not c["ok"]],
        "injected": s.get("injected", {}), "dead_classes": s.get("dead_classes", {}),
    }
    (job.logs / "row.json").write_text(json.dumps(row, indent=2))
    return row


def table(rows):
    head = ["scenario", "events in", "effects", "dup effects", "lost", "dead-lettered", "via DLQ",
            "held", "retried keys", "recover", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        rec = (f"{r['recover_s']:.1f} s" if r["recover_s"] is not None
               else f"> {r.get('recover_limit', 0):g} s" if r.get("recover_limit") else "not measured")
        lines.append("| " + " | ".join([
            r["scenario"], fmt(r["events_in"]), fmt(r["effects"]), str(r["duplicate_effects"]), str(r["lost"]),
            fmt(r["dead_lettered"]), fmt(sum(r["dead_classes"].values())), fmt(r["held"]), fmt(r["retried_keys"]), rec,
            "PASS" if r["passed"] else "FAIL"]) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", default="examples/crash-loop")
    p.add_argument("--smoke", action="store_true", help="short CI run: sigkill and target-fail at a small load")
    p.add_argument("--scenario", action="append", default=[], help="run only these (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="events/s (default 100; smoke 40)")
    p.add_argument("--duration", type=float, default=None, help="load per scenario, s (default 40; smoke 10)")
    p.add_argument("--freeze", type=float, default=None, help="broker SIGSTOP length, s (default 15; smoke 10)")
    p.add_argument("--outage", type=float, default=None, help="Redis/registry/target outage, s (default 15; smoke 4)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle-timeout", type=float, default=180)
    p.add_argument("--list", action="store_true", help="print the scenarios to run, one a line, and exit")
    p.add_argument("--only", help="run this one scenario here (scripts/faults gives each a fresh stack)")
    p.add_argument("--report", metavar="DIR", help="print the table of the rows in DIR/<scenario>/row.json")
    opts = p.parse_args()
    smoke = opts.smoke
    opts.rate = opts.rate or (40 if smoke else 100)
    opts.duration = opts.duration or (10 if smoke else 40)
    opts.freeze = opts.freeze or (10 if smoke else 15)
    opts.outage = opts.outage or (4 if smoke else 15)
    opts.pace = 0.5 if smoke else 1.0
    names = opts.scenario or (SMOKE if smoke else [s.name for s in SCENARIOS])
    known = {s.name: s for s in SCENARIOS}
    for n in names:
        if n not in known:
            p.error(f"unknown scenario {n!r}: one of {', '.join(known)}")
    if opts.list:
        print("\n".join(names))
        return
    if opts.only:
        logs_root = Path(os.environ["REFLEX_FAULTS_LOGS"])
        try:
            row = run_scenario(known[opts.only], opts, logs_root)
        finally:
            for proc in RESTARTED:
                if proc.poll() is None:
                    stop_group(proc.pid)
        print(table([row]), flush=True)
        sys.exit(0 if row["passed"] else 1)
    logs_root = Path(opts.report)
    rows = []
    for n in names:
        f = logs_root / n / "row.json"
        rows.append(json.loads(f.read_text()) if f.exists() else {
            "scenario": n, "passed": False, "events_in": 0, "effects": 0, "duplicate_effects": "?",
            "lost": "?", "dead_lettered": 0, "held": 0, "retried_keys": 0, "recover_s": None,
            "note": "did not finish (see its log)", "failed_checks": [], "injected": {}, "dead_classes": {}})
    print()
    print(f"== fault suite: pack {opts.pack}, {opts.rate:g} events/s for {opts.duration:g} s per scenario"
          f"{' (smoke)' if smoke else ''}")
    print(table(rows))
    print()
    for r in rows:
        print(f"{r['scenario']}: {r['note']}")
        for tag in sorted({v['tag'] for v in r["injected"].values()}):
            ends = [v for v in r["injected"].values() if v["tag"] == tag]
            print(f"  {tag}: {len(ends)} published, {sum(1 for v in ends if v['dead'])} dead-lettered,"
                  f" {sum(1 for v in ends if v['outcomes'])} with an outcome")
        if r["dead_classes"]:
            print("  dead letters by class: " + ", ".join(f"{k} {v}" for k, v in sorted(r["dead_classes"].items())))
        for c in r.get("restarts", []):
            print(f"  restarted by the supervisor: {c}")
        for c in r["failed_checks"]:
            print(f"  FAILED CHECK: {c}")
    (logs_root / "faults.json").write_text(json.dumps(rows, indent=2))
    print(f"logs {logs_root}")
    ok = rows and all(r["passed"] for r in rows)
    print("fault suite " + ("PASSED" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
