#!/usr/bin/env python3
"""The main job's driver, started by scripts/demo once the stack is up and a pack's topics and
schemas are in place (run it through scripts/demo, not by hand).

It runs a scenario pack (default examples/crash-loop) end to end:
  1. starts the fake target API (scripts/fake-target.py) and the workers as separate processes,
     each in its own session so a terminal Ctrl-C reaches only this driver: router, enricher,
     actor with the pack's configs, and reflex-reprocessor on the pack's dead-letter topics
     when that binary exists;
  2. publishes the pack's events (its generate.py) at --rate for --duration, with ~1% published
     twice (same ce_id: the actor must suppress them) and ~0.2% poison values (not Avro: they
     must be dead-lettered);
  3. shows a live view every second from each worker's /metrics;
  4. when the time is up (or on Ctrl-C) stops publishing, waits until every group has committed
     everything (a second Ctrl-C stops waiting), SIGTERMs the workers (they drain and exit 0),
     then reads the outcome, parked and dead-letter topics and the target's request log, prints
     the summary and CHECKS it (exit 1 when a check fails):
       - nothing lost: every record published is a final action outcome, a parked request, a
         dead letter, or dropped by a rule (the router's own count);
       - zero duplicate effects: the target saw each Idempotency-Key once;
       - remediations capped: per action, effects <= blast_radius_max per window touched;
       - every worker drained and exited 0.
"""
import argparse
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("REFLEX_BIN", ROOT / "target" / "debug"))
FINAL_RESULTS = ("SUCCEEDED", "FAILED", "DUPLICATE_SUPPRESSED", "DRY_RUN", "REJECTED")


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text):
    """A worker config duration ("250ms", "10s", "1m30s", "0") in milliseconds."""
    text = str(text).strip()
    if text == "0":
        return 0
    if not re.fullmatch(r"(\d+\s*(ms|s|m|h|d)\s*)+", text):
        raise ValueError(f"{text!r} is not a duration with a unit")
    return sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)\s*(ms|s|m|h|d)", text))


def log(msg):
    print(f"[main-job] {msg}", file=sys.stderr, flush=True)


def toml_file(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


# ------------------------------------------------------------------------------ the pack


class Pack:
    """A scenario pack: pack.toml ([events] topic/type/source/key_field), topics/*.toml,
    router.toml, enricher.toml, actor.toml, generate.py, optional reprocessor.toml."""

    def __init__(self, path):
        self.dir = Path(path)
        meta = toml_file(self.dir / "pack.toml")["events"]
        self.topic = meta["topic"]
        self.type = meta.get("type", "")
        self.source = meta.get("source", "/reflex/main-job")
        self.key_field = meta.get("key_field")
        self.topics = []
        for f in sorted((self.dir / "topics").glob("*.toml")):
            self.topics += toml_file(f).get("topic", [])
        self.workers = {}
        for name in ("router", "enricher", "actor", "reprocessor"):
            f = self.dir / f"{name}.toml"
            self.workers[name] = toml_file(f) if f.exists() else None
        actor = self.workers["actor"]["actor"]
        self.outcomes = actor.get("outcomes_topic", "reflex.actions.outcomes")
        self.parked = actor.get("parked_topic", "reflex.actions.parked")
        self.actions = {a["name"]: a for a in actor.get("action", [])}
        self.value_subject = next(
            (t.get("value_subject") for t in self.topics if t["name"] == self.topic),
            f"{self.topic}-value",
        )

    def dlq_topics(self):
        return [f"{t['name']}.dlq" for t in self.topics if t.get("dead_letter")]

    def group(self, worker):
        cfg = self.workers.get(worker) or {}
        return cfg.get("kafka", {}).get("group_id", f"reflex-{worker}")

    def inputs(self, worker):
        cfg = self.workers.get(worker) or {}
        return cfg.get("kafka", {}).get("input_topics", [])


# ------------------------------------------------------------------------------ registry


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Registry:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.by_id = {}

    def latest(self, subject):
        v = http_json(f"{self.url}/subjects/{subject}/versions/latest")
        return v["id"], fastavro.parse_schema(json.loads(v["schema"]))

    def schema(self, schema_id):
        if schema_id not in self.by_id:
            v = http_json(f"{self.url}/schemas/ids/{schema_id}")
            self.by_id[schema_id] = fastavro.parse_schema(json.loads(v["schema"]))
        return self.by_id[schema_id]

    def decode(self, value):
        if not value or len(value) < 5 or value[0] != 0:
            return None
        schema_id = struct.unpack(">I", value[1:5])[0]
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), self.schema(schema_id))


# ------------------------------------------------------------------------------ workers


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Worker:
    def __init__(self, name, argv, env, log_path):
        self.name, self.log_path = name, log_path
        self.log_file = open(log_path, "ab")
        # A restarted replica appends to its predecessor's log: read only its own lines.
        self.log_start = self.log_file.tell()
        # Own session: a terminal Ctrl-C reaches the driver only; workers get SIGTERM from it.
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=self.log_file, start_new_session=True,
        )
        self.http = None
        self.metrics = {}
        self.prev = {}
        self.exit_code = None

    def address(self):
        if self.http is None:
            try:
                with open(self.log_path, encoding="utf-8", errors="replace") as f:
                    f.seek(self.log_start)
                    for line in f:
                        if '"http_listen"' in line:
                            self.http = json.loads(line)["http_listen"]
                            break
            except (OSError, ValueError):
                pass
        return self.http

    def get(self, path):
        addr = self.address()
        if not addr:
            return None
        try:
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
                return r.read().decode()
        except Exception:  # noqa: BLE001 - a worker that is starting or stopping answers nothing
            return None

    def scrape(self):
        text = self.get("/metrics")
        if text is not None:
            self.prev, self.metrics = self.metrics, parse_metrics(text)
        return self.metrics

    def alive(self):
        return self.proc.poll() is None


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text → {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


def total(metrics, name, **want):
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all((k, str(w)) in labels for k, w in want.items()))


def by_label(metrics, name, label):
    out = defaultdict(float)
    for (n, labels), v in metrics.items():
        if n == name:
            d = dict(labels)
            if label in d:
                out[d[label]] += v
    return out


# ------------------------------------------------------------------------------ generator


class Generator(threading.Thread):
    def __init__(self, args, pack, registry, run_id):
        super().__init__(daemon=True)
        self.args, self.pack, self.run_id = args, pack, run_id
        self.schema_id, self.schema = registry.latest(pack.value_subject)
        self.producer = Producer({
            "bootstrap.servers": args.bootstrap, "enable.idempotence": True, "linger.ms": 5,
            "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
        })
        self.stop = threading.Event()
        self.sent = 0
        self.acked = Counter()  # ce_id -> records acknowledged
        self.poison = set()
        self.duplicated = set()
        self.errors = 0
        self.first_error = None
        self.started = self.ended = None
        self.rng = random.Random(args.seed)
        self.injected = {}  # ce_id -> what a fault scenario published besides the load

    def inject(self, value, tag):
        """Publish one extra record (e.g. a never-seen schema id) with its own ce_id; the check
        accounts for it like any other: it must end somewhere."""
        ce_id = f"mj-{self.run_id}-x{len(self.injected)}"
        self.injected[ce_id] = tag
        self.produce(ce_id, b"injected", value)
        return ce_id

    def on_delivery(self, ce_id, err):
        if err is not None:
            self.errors += 1
            self.first_error = self.first_error or str(err)
        else:
            self.acked[ce_id] += 1

    def produce(self, ce_id, key, value):
        now = time.time()
        headers = [
            ("ce_specversion", b"1.0"), ("ce_id", ce_id.encode()),
            ("ce_source", self.pack.source.encode()), ("ce_type", self.pack.type.encode()),
            ("ce_time", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
             + f".{int(now * 1000) % 1000:03d}Z".encode()),
            ("content-type", b"application/avro"),
        ]
        while True:
            try:
                self.producer.produce(self.pack.topic, value=value, key=key, headers=headers,
                                      on_delivery=lambda err, _msg, i=ce_id: self.on_delivery(i, err))
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1

    def run(self):
        count = int(self.args.rate * self.args.duration)
        gen = subprocess.Popen(
            [sys.executable, str(self.pack.dir / "generate.py"), "--count", str(count),
             "--seed", str(self.args.seed)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
            start_new_session=True,  # a terminal Ctrl-C is for the driver, which stops reading
        )
        self.started = time.monotonic()
        n = 0
        try:
            for line in gen.stdout:
                if self.stop.is_set():
                    break
                event = json.loads(line)
                ce_id = f"mj-{self.run_id}-{n}"
                key = str(event.get(self.pack.key_field, "")).encode() if self.pack.key_field else None
                roll = self.rng.random()
                if roll < self.args.poison_ratio:
                    self.poison.add(ce_id)
                    value = b"not avro: a producer bug the router must dead-letter"
                else:
                    buf = io.BytesIO()
                    buf.write(b"\0" + struct.pack(">I", self.schema_id))
                    fastavro.schemaless_writer(buf, self.schema, event)
                    value = buf.getvalue()
                self.produce(ce_id, key, value)
                if roll > 1 - self.args.dup_ratio:
                    self.duplicated.add(ce_id)
                    self.produce(ce_id, key, value)  # redelivery: same ce_id, same record
                n += 1
                # Pace: event n is due at started + n/rate.
                ahead = self.started + n / self.args.rate - time.monotonic()
                if ahead > 0:
                    self.producer.poll(0)
                    time.sleep(ahead)
                elif n % 256 == 0:
                    self.producer.poll(0)
        finally:
            gen.kill()
            gen.wait()
            self.producer.flush(60)
            self.ended = time.monotonic()


# ------------------------------------------------------------------------------ kafka reads


def consumer(bootstrap):
    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reflex-main-job-reader-{os.getpid()}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })


def partitions(c, topic):
    md = c.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        return []
    return sorted(md.partitions)


def high_watermarks(c, topics):
    out = {}
    for t in topics:
        for p in partitions(c, t):
            out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
    return out


def group_lag(bootstrap, group, topics):
    """Records the group has not committed yet, over its input topics."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in partitions(c, t)]
        if not tps:
            return 0
        lag = 0
        for tp in c.committed(tps, timeout=10):
            low, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        c.close()


def read_range(bootstrap, start, end):
    """Every record from `start` offsets up to `end` offsets ({(topic, partition): offset})."""
    todo = {tp: (start.get(tp, 0), off) for tp, off in end.items() if off > start.get(tp, 0)}
    if not todo:
        return
    c = consumer(bootstrap)
    c.assign([TopicPartition(t, p, s) for (t, p), (s, _) in todo.items()])
    remaining = set(todo)
    idle = time.monotonic()
    while remaining and time.monotonic() - idle < 30:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            idle = time.monotonic()
            tp = (m.topic(), m.partition())
            if tp not in remaining:
                continue
            if m.offset() >= todo[tp][1] - 1:
                remaining.discard(tp)
            if m.offset() < todo[tp][1]:
                yield m
    c.close()
    if remaining:
        raise RuntimeError(f"could not read {sorted(remaining)} to their end")


def header(m, name):
    for k, v in m.headers() or []:
        if k == name:
            return v.decode(errors="replace") if v is not None else None
    return None


# ------------------------------------------------------------------------------ the view


def fmt(n):
    return f"{int(n):,}"


def view(job, final=False):
    gen = job.gen
    elapsed = (time.monotonic() - gen.started) if gen.started else 0
    lines = [
        f"Reflex main job · pack {job.pack.dir.relative_to(ROOT) if job.pack.dir.is_relative_to(ROOT) else job.pack.dir}"
        f" · run {job.run_id} · {min(elapsed, job.args.duration):.0f}/{job.args.duration:.0f} s"
        f" · target {job.args.rate:g} events/s · state {job.state}",
        f"published {fmt(gen.sent)} (acked {fmt(sum(gen.acked.values()))}, errors {gen.errors})"
        f"  ·  {'stopping: waiting for the pipeline to drain (Ctrl-C again: stop waiting)' if job.stopping else 'Ctrl-C: stop, drain and check'}",
        "",
        f"{'stage':<12}{'in/s':>8}{'out/s':>8}{'in':>10}{'out':>10}{'dropped':>9}{'dead':>7}{'lag':>8}{'in-flight':>10}  status",
    ]
    for w in job.workers.values():
        m = w.metrics
        dt = job.interval

        def rate(name):
            return max(0.0, (total(m, name) - total(w.prev, name)) / dt) if w.prev else 0.0

        status = ",".join(s for s, v in by_label(m, "reflex_consumergroup_status", "status").items() if v > 0) or "-"
        state = "up" if w.alive() else f"exited {w.proc.returncode}"
        lines.append(
            f"{w.name:<12}{rate('reflex_events_in_total'):>8.0f}{rate('reflex_events_out_total'):>8.0f}"
            f"{fmt(total(m, 'reflex_events_in_total')):>10}{fmt(total(m, 'reflex_events_out_total')):>10}"
            f"{fmt(total(m, 'reflex_events_dropped_total')):>9}{fmt(total(m, 'reflex_dead_letters_total')):>7}"
            f"{fmt(total(m, 'kafka_consumergroup_group_sum_lag')):>8}{fmt(total(m, 'reflex_in_flight_events')):>10}"
            f"  {status} ({state})")
    actor = job.workers["actor"].metrics
    lines.append("")
    results = defaultdict(dict)
    for (n, labels), v in actor.items():
        if n == "reflex_actions_total":
            d = dict(labels)
            results[d.get("action", "?")][d.get("result", "?")] = v
    for action, r in sorted(results.items()):
        lines.append(
            f"action {action:<14} done {fmt(r.get('succeeded', 0)):>7}  suppressed (dedup) "
            f"{fmt(r.get('duplicate_suppressed', 0)):>5}  failed {fmt(r.get('failed', 0)):>5}  "
            f"parked {fmt(r.get('parked', 0)):>7}  rate-limited {fmt(total(actor, 'reflex_rate_limited_total', action=action)):>6}")
    breakers = by_label(actor, "reflex_breaker_state", "target")
    names = {0: "closed", 1: "OPEN", 2: "half-open"}
    lines.append(
        "breakers " + (", ".join(f"{t}: {names.get(int(v), v)}" for t, v in sorted(breakers.items())) or "all closed (no target failed yet)")
        + f"  ·  kill switch {'ON' if total(actor, 'reflex_kill_switch_on') > 0 else 'off'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the job


class Job:
    def __init__(self, args):
        self.args = args
        self.pack = Pack(args.pack)
        self.run_id = args.run_id or time.strftime("%H%M%S") + f"{random.randrange(1000):03d}"
        self.registry = Registry(args.registry)
        self.state = f"Redis {args.redis}" if args.redis else "IN-PROCESS (no Redis: one actor replica, not shared or durable)"
        self.logs = Path(args.logs)
        self.workers = {}
        self.stopping = False
        self.interrupts = 0
        self.interval = 1.0
        self.target_port = args.target_port
        # For the fault suite (scripts/fault_suite.py): replicas per stage, a fault thread, and an oracle of the events the rules drop (counters of killed
        # replicas are lost, so the workers' own drop counts cannot be used then).
        self.replicas = {}
        self.state_url = ""
        self.fault = None
        self.fault_thread = None
        self.drop_oracle = None
        self.repeats_allowed = False
        self.retired = []
        self.supervise = False
        self.restarts = []  # workers that exited on their own and were restarted (supervise)
        self.lock = threading.RLock()
        self.specs = {}
        self.env = {}

    # -- start-up

    def worker_env(self):
        env = dict(os.environ)
        env.update({
            "REFLEX_KAFKA__BOOTSTRAP_SERVERS": self.args.bootstrap,
            "REFLEX_REGISTRY__URL": self.args.registry,
            "REFLEX_TELEMETRY__LOG_FORMAT": "json",
            "REFLEX_RUNTIME__LAG_INTERVAL": "1s",
            "REFLEX_KAFKA__SESSION_TIMEOUT": "10s",
            "REFLEX_KAFKA__COMMIT_INTERVAL": "500ms",
            "REFLEX_RUNTIME__DRAIN_GRACE": "8s",
        })
        return env

    def start_target(self):
        # The packs' actor configs call 127.0.0.1:18080; when it is taken (another run, a
        # test), the target listens elsewhere and a copy of the actor config points there.
        if self.target_port == 0 or not port_free(self.target_port):
            self.target_port = free_port()
        path = self.logs / "target.log"
        self.target = Worker("fake-target", [sys.executable, str(ROOT / "scripts" / "fake-target.py"),
                                             str(self.target_port)], dict(os.environ), path)
        deadline = time.monotonic() + 10
        while not self.target_stats():
            if time.monotonic() > deadline:
                raise SystemExit(f"the fake target did not start; its log: {path}")
            time.sleep(0.1)

    def target_stats(self):
        try:
            return http_json(f"http://127.0.0.1:{self.target_port}/stats", timeout=2)
        except Exception:  # noqa: BLE001
            return None

    def actor_config(self):
        src = self.pack.dir / "actor.toml"
        if self.target_port == 18080:
            return src
        dst = self.logs / "actor.toml"
        dst.write_text(src.read_text().replace("127.0.0.1:18080", f"127.0.0.1:{self.target_port}"))
        return dst

    def start_workers(self):
        env = self.worker_env()
        suffix = self.args.group_suffix
        specs = {
            "router": [str(BIN / "reflex-router"), "--config", str(self.pack.dir / "router.toml")],
            "enricher": [str(BIN / "reflex-enricher"), "--config", str(self.pack.dir / "enricher.toml")],
            "actor": [str(BIN / "reflex-actor"), "--config", str(self.actor_config())],
        }
        reprocessor = BIN / "reflex-reprocessor"
        if reprocessor.exists():
            argv = [str(reprocessor)]
            if self.pack.workers["reprocessor"] is not None:
                argv += ["--config", str(self.pack.dir / "reprocessor.toml")]
            specs["reprocessor"] = argv
        else:
            log("reflex-reprocessor is not built: dead letters stay on the .dlq topics")
        self.specs = specs
        for name, argv in list(specs.items()):
            wenv = dict(env)
            if suffix:
                wenv["REFLEX_KAFKA__GROUP_ID"] = self.group(name)
            if name == "actor":
                wenv["REFLEX_ACTOR__STATE_BACKEND"] = "auto"
                wenv["REFLEX_ACTOR__REDIS_URL"] = self.args.redis or ""
                wenv["REFLEX_ACTOR__REDIS_PREFIX"] = f"{self.pack.workers['actor']['actor'].get('redis_prefix', 'reflex')}-{self.run_id}"
            if name == "reprocessor":
                wenv["REFLEX_KAFKA__INPUT_TOPICS"] = json.dumps(self.pack.dlq_topics())
                if self.pack.workers["reprocessor"] is None:
                    wenv["REFLEX_KAFKA__GROUP_ID"] = self.group(name)
            if self.state_url:
                wenv["REFLEX_RUNTIME__STATE_URL"] = self.state_url
            self.env[name] = wenv
            for i in range(1, self.replicas.get(name, 1) + 1):
                self.spawn(name, i)
        self.wait_ready(list(self.workers.values()))
        actor_log = Path(self.workers["actor"].log_path).read_text(errors="replace")
        if '"state_backend":"memory"' in actor_log:
            self.state = "IN-PROCESS (no Redis: one actor replica, not shared or durable)"
            log("the actor keeps its state IN PROCESS: " + ("no Redis was given" if not self.args.redis
                else f"Redis at {self.args.redis} did not answer"))
        log("workers ready: " + ", ".join(f"{w.name} pid {w.proc.pid} on {w.address()}" for w in self.workers.values()))

    @staticmethod
    def stage(key):
        """"actor#2" (replica 2 of the actor) -> "actor"."""
        return key.split("#", 1)[0]

    def spawn(self, name, replica):
        """Start replica `replica` (1-based) of stage `name`; replica 1 is keyed by the stage name."""
        key = name if replica == 1 else f"{name}#{replica}"
        w = Worker(key, self.specs[name], dict(self.env[name]), self.logs / f"{key.replace('#', '-')}.log")
        with self.lock:
            old = self.workers.get(key)
            if old is not None:
                self.retired.append(old)
            self.workers[key] = w
        return w

    def wait_ready(self, workers, timeout=90):
        deadline = time.monotonic() + timeout
        for w in workers:
            while w.get("/readyz") is None:
                if not w.alive() or time.monotonic() > deadline:
                    tail = Path(w.log_path).read_text(errors="replace")[-3000:]
                    self.stop_workers()
                    raise SystemExit(f"{w.name} did not become ready; end of {w.log_path}:\n{tail}")
                time.sleep(0.2)

    def kill(self, key, sig=signal.SIGKILL):
        """Signal one worker and wait for it to exit; its exit code is kept for the check
        (a SIGKILLed one is not expected to exit 0)."""
        w = self.workers[key]
        w.expected_exit = True
        w.proc.send_signal(sig)
        try:
            w.exit_code = w.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.exit_code = w.proc.wait()
        w.killed = sig == signal.SIGKILL
        return w

    def remove(self, key):
        """Scale down: SIGTERM the replica (it drains) and forget it."""
        w = self.kill(key, signal.SIGTERM)
        with self.lock:
            self.retired.append(self.workers.pop(key))
        return w

    def group(self, worker):
        worker = self.stage(worker)
        if worker == "reprocessor" and self.pack.workers["reprocessor"] is None:
            base = f"{self.pack.group('router').rsplit('-', 1)[0]}-reprocessor"
        else:
            base = self.pack.group(worker)
        return base + self.args.group_suffix

    def inputs(self, worker):
        worker = self.stage(worker)
        if worker == "reprocessor":
            return self.pack.dlq_topics()
        return self.pack.inputs(worker)

    # -- the run

    def on_sigint(self, *_):
        self.interrupts += 1
        self.stopping = True
        self.gen.stop.set()

    def read_topics(self, c):
        names = [self.pack.outcomes, self.pack.parked] + self.pack.dlq_topics()
        existing = set(c.list_topics(timeout=10).topics)
        names += sorted(t for t in existing if t.endswith(".parked") and t.removesuffix(".parked") in
                        {x["name"] for x in self.pack.topics})
        return [t for t in dict.fromkeys(names) if t in existing]

    def run(self):
        self.logs.mkdir(parents=True, exist_ok=True)
        reader = consumer(self.args.bootstrap)
        self.start_marks = high_watermarks(reader, self.read_topics(reader))
        self.start_target()
        self.start_workers()
        self.gen = Generator(self.args, self.pack, self.registry, self.run_id)
        signal.signal(signal.SIGINT, self.on_sigint)
        signal.signal(signal.SIGTERM, self.on_sigint)
        self.window_start_ms = time.time() * 1000
        self.gen.start()
        if self.fault:
            self.fault_thread = threading.Thread(target=self.fault, args=(self,), daemon=True)
            self.fault_thread.start()
        tty = sys.stdout.isatty()
        last_line = 0.0
        settled = 0
        settle_deadline = None
        while True:
            time.sleep(self.interval)
            for w in list(self.workers.values()):
                w.scrape()
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + view(self) + "\n")
                sys.stdout.flush()
            elif time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                r = self.workers["router"].metrics
                a = self.workers["actor"].metrics
                print(f"[main-job] published {self.gen.sent} · router in {fmt(total(r, 'reflex_events_in_total'))}"
                      f" · actor in {fmt(total(a, 'reflex_events_in_total'))} · actions {fmt(total(a, 'reflex_actions_total'))}"
                      f" · lag {fmt(sum(total(w.metrics, 'kafka_consumergroup_group_sum_lag') for w in self.workers.values()))}", flush=True)
            with self.lock:
                dead = [w for w in self.workers.values() if not w.alive() and not getattr(w, "expected_exit", False)]
            if dead and self.supervise:
                # As a supervisor (Kubernetes, systemd) would: restart it; the check reports it.
                for w in dead:
                    w.exit_code = w.proc.returncode
                    w.expected_exit = True
                    self.restarts.append(f"{w.name} exited {w.exit_code}")
                    log(f"{w.name} exited with {w.exit_code}: restarting it; see {w.log_path}")
                    key = w.name
                    self.spawn(self.stage(key), int(key.split("#")[1]) if "#" in key else 1)
                dead = []
            if dead:
                log(f"{dead[0].name} exited with {dead[0].proc.returncode}; see {dead[0].log_path}")
                break
            if self.gen.is_alive() or (self.fault_thread and self.fault_thread.is_alive()):
                continue
            self.stopping = True
            if settle_deadline is None:
                settle_deadline = time.monotonic() + self.args.settle_timeout
            if self.interrupts >= 2:
                log("second Ctrl-C: not waiting for the pipeline to drain")
                break
            lags = self.lags()
            settled = settled + 1 if not any(lags.values()) else 0
            if settled >= 2:
                break
            if time.monotonic() > settle_deadline:
                log(f"the pipeline did not drain within {self.args.settle_timeout} s: uncommitted {lags}")
                break
        self.final_metrics = {n: dict(w.scrape()) for n, w in self.workers.items()}
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + view(self, final=True) + "\n")
        self.stop_workers()
        return self.check()

    def lags(self):
        """Uncommitted records per stage (replicas share their group)."""
        stages = dict.fromkeys(self.stage(k) for k in self.workers)
        return {n: group_lag(self.args.bootstrap, self.group(n), self.inputs(n)) for n in stages}

    def stop_workers(self):
        for w in self.workers.values():
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers.values():
            try:
                w.exit_code = w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.exit_code = w.proc.wait()
        if getattr(self, "target", None):
            self.target.proc.terminate()
            self.target.proc.wait()

    # -- the check

    def check(self):
        gen = self.gen
        published = Counter(gen.acked)
        n_in = sum(published.values())
        reader = consumer(self.args.bootstrap)
        topics = self.read_topics(reader)
        end = high_watermarks(reader, topics)
        reader.close()
        finals = defaultdict(Counter)  # event id -> result -> count
        dead = Counter()
        dead_classes = Counter()
        parked_records = Counter()
        effects_by_action = Counter()
        outcomes_by_result = Counter()
        succeeded_keys = Counter()  # idempotency key -> SUCCEEDED final outcomes
        http_succeeded = set()  # keys of SUCCEEDED http outcomes, to name any the target never applied
        prefix = f"mj-{self.run_id}-"

        def event_id(m):
            for name in ("ce_causationid", "ce_id"):
                v = header(m, name)
                if v and v.startswith(prefix):
                    return v
            return None

        dlqs = set(self.pack.dlq_topics())
        for m in read_range(self.args.bootstrap, self.start_marks, end):
            if m.topic() == self.pack.outcomes:
                o = self.registry.decode(m.value())
                if not o or not o["event_id"].startswith(prefix) or header(m, "reflex-final") != "true":
                    continue
                finals[o["event_id"]][o["result"]] += 1
                outcomes_by_result[(o["action"], o["result"])] += 1
                if o["result"] == "SUCCEEDED":
                    effects_by_action[o["action"]] += 1
                    succeeded_keys[o.get("idempotency_key") or o["event_id"] + "/" + o["action"]] += 1
                    if self.pack.actions.get(o["action"], {}).get("kind") == "http":
                        http_succeeded.add(o.get("idempotency_key") or o["event_id"] + "/" + o["action"])
            elif m.topic() in dlqs:
                eid = event_id(m)
                if eid:
                    dead[eid] += 1
                    dead_classes[header(m, "reflex-error-class") or "?"] += 1
            else:
                eid = event_id(m)
                if eid:
                    parked_records[m.topic()] += 1

        # Each published record's end: a final outcome (PARKED ones are the parked requests),
        # a dead letter, or nothing because a rule dropped it.
        ended = Counter()
        unended = 0
        lost_ids = []
        extra = 0
        for eid, k in published.items():
            r = finals.get(eid, Counter())
            n_out = sum(v for res, v in r.items() if res != "PARKED")
            n_park = r.get("PARKED", 0)
            n_dead = dead.get(eid, 0)
            got = n_out + n_park + n_dead
            if got == 0:
                unended += k
                if self.drop_oracle is not None and (eid not in self.drop_oracle or eid in gen.poison):
                    lost_ids.append(eid)
                continue
            take = min(k, got)
            extra += got - take
            for name, v in (("outcomes", n_out), ("parked", n_park), ("dead letters", n_dead)):
                use = min(v, take)
                ended[name] += use
                take -= use
        router = self.final_metrics["router"]
        enricher = self.final_metrics["enricher"]
        dropped = total(router, "reflex_events_dropped_total") + total(enricher, "reflex_events_dropped_total")
        if self.drop_oracle is not None:
            # Replicas were killed and restarted: their drop counters are lost or counted twice.
            # The rules' own verdict per event (reflexctl rules test) says which may end unrecorded.
            dropped = unended - sum(published[e] for e in lost_ids)
        lost = unended - dropped if unended >= dropped else 0
        lags = self.lags()
        pending = sum(lags.values())

        stats = self.target_stats_from_log()
        caps = []
        elapsed_ms = time.time() * 1000 - self.window_start_ms
        for name, a in self.pack.actions.items():
            cap = a.get("blast_radius_max", 0)
            if cap:
                window = duration_ms(a.get("blast_radius_window", "10m"))
                windows = int((self.window_start_ms + elapsed_ms) // window - self.window_start_ms // window) + 1
                caps.append((name, effects_by_action[name], cap, window, windows,
                             outcomes_by_result[(name, "PARKED")]))

        checks = []

        def check(ok, text):
            checks.append((bool(ok), text))

        accounted = ended["outcomes"] + ended["parked"] + ended["dead letters"]
        check(n_in > 0, f"events were published ({fmt(n_in)})")
        check(gen.errors == 0, f"every publish was acknowledged ({gen.errors} errors{': ' + gen.first_error if gen.first_error else ''})")
        check(accounted + unended == n_in and unended == dropped and pending == 0,
              f"nothing lost: events in {fmt(n_in)} = outcomes {fmt(ended['outcomes'])} + parked {fmt(ended['parked'])}"
              f" + dead letters {fmt(ended['dead letters'])} + dropped by rules {fmt(unended)}"
              f" (workers counted {fmt(dropped)} dropped; uncommitted {fmt(pending)}"
              + (" by stage: " + ", ".join(f"{k} {v}" for k, v in lags.items() if v) if pending else "") + ")")
        poison_dead = sum(1 for eid in gen.poison if dead.get(eid))
        check(poison_dead == len(gen.poison), f"every poison record dead-lettered ({poison_dead}/{len(gen.poison)})")
        dup_outcomes = sum(v - 1 for v in succeeded_keys.values() if v > 1)
        duplicate_effects = stats["duplicate_effects"] + dup_outcomes
        if self.repeats_allowed:
            # Under faults a request may be retried with its key (a timeout, a replica killed
            # mid-call): the target absorbs it. A duplicate EFFECT is a key applied twice, or
            # two SUCCEEDED outcomes for one key.
            check(duplicate_effects == 0,
                  f"zero duplicate effects: {stats['duplicate_effects']} keys applied twice at the target,"
                  f" {dup_outcomes} keys with two SUCCEEDED outcomes ({stats['repeated_keys']} keys retried, absorbed by Idempotency-Key)")
        else:
            check(stats["repeated_keys"] == 0 and stats["duplicate_effects"] == 0,
                  f"zero duplicate effects: the target saw {fmt(stats['keys'])} Idempotency-Keys in {fmt(stats['requests'])} requests,"
                  f" {stats['repeated_keys']} of them more than once")
        succeeded_http = sum(v for a, v in effects_by_action.items() if self.pack.actions.get(a, {}).get("kind") == "http")
        if self.repeats_allowed:
            # A timed-out call may have applied its effect while its outcome says FAILED: shown, not a failure.
            missing = sorted(http_succeeded - stats["applied_set"])
            check(succeeded_http <= stats["applied_keys"] and not missing,
                  f"every succeeded HTTP outcome has its effect at the target ({fmt(succeeded_http)} outcomes,"
                  f" {fmt(stats['applied_keys'])} keys applied"
                  + (f"; never applied: {', '.join(missing[:5])}" if missing else "") + ")")
        else:
            check(succeeded_http == stats["keys"],
                  f"one effect per succeeded HTTP outcome ({fmt(succeeded_http)} outcomes, {fmt(stats['keys'])} keys at the target)")
        suppressed = sum(v for (a, r), v in outcomes_by_result.items() if r == "DUPLICATE_SUPPRESSED")
        for name, done, cap, window, windows, parked in caps:
            check(done <= cap * windows,
                  f"remediations capped: {name} executed {done} times, cap {cap} per {window // 1000} s window"
                  f" ({windows} window{'s' if windows > 1 else ''} touched); {fmt(parked)} parked for a human")
        for n, w in self.workers.items():
            check(w.exit_code == 0, f"{n} drained and exited {w.exit_code}")
        for w in self.retired:
            if not getattr(w, "killed", False) and not getattr(w, "expected_exit", False):
                check(w.exit_code == 0, f"{w.name} (stopped during the run) drained and exited {w.exit_code}")

        secs = (gen.ended or time.monotonic()) - (gen.started or time.monotonic())
        print()
        print(f"== main job summary (run {self.run_id}, pack {self.pack.dir.name}, state {self.state})")
        print(f"published   {fmt(gen.sent)} records in {secs:.1f} s ({gen.sent / max(secs, 1e-9):.0f}/s);"
              f" {len(gen.duplicated)} published twice (same ce_id), {len(gen.poison)} poison")
        print("outcomes    " + ", ".join(f"{a} {r.lower()} {fmt(v)}" for (a, r), v in sorted(outcomes_by_result.items())))
        print(f"suppressed  {fmt(suppressed)} duplicates by idempotency key")
        print("dead letters " + (", ".join(f"{c} {fmt(v)}" for c, v in sorted(dead_classes.items())) or "none")
              + ("; parked records " + ", ".join(f"{t} {fmt(v)}" for t, v in sorted(parked_records.items())) if parked_records else ""))
        print(f"target      {fmt(stats['requests'])} requests, {fmt(stats['keys'])} keys, {stats['repeated_keys']} repeated")
        if extra:
            print(f"note        {fmt(extra)} extra terminal records (an event fanned out to several actions, or replayed)")
        print(f"logs        {self.logs}")
        for ok, text in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
        passed = all(ok for ok, _ in checks)
        print("main job " + ("PASSED" if passed else "FAILED"))
        summary = {
            "run_id": self.run_id, "published": n_in, "passed": passed,
            "checks": [{"ok": ok, "check": t} for ok, t in checks],
            "ended": dict(ended), "dropped": unended, "pending": pending,
            "outcomes": {f"{a}/{r}": v for (a, r), v in outcomes_by_result.items()},
            "target": {k: v for k, v in stats.items() if k != "applied_set"}, "poison": len(gen.poison), "duplicated": len(gen.duplicated),
            "lost": lost, "lost_ids": lost_ids[:20], "restarts": self.restarts, "duplicate_effects": duplicate_effects,
            "parked": ended["parked"], "dead_letters": ended["dead letters"],
            "dead_classes": dict(dead_classes),
            "injected": {eid: {"tag": tag, "dead": dead.get(eid, 0), "outcomes": dict(finals.get(eid, {}))}
                         for eid, tag in gen.injected.items()},
        }
        self.summary = summary
        (self.logs / "summary.json").write_text(json.dumps(summary, indent=2))
        return 0 if passed else 1

    def target_stats_from_log(self):
        """Requests and effects per Idempotency-Key, from the target's request log."""
        per_key = Counter()
        effects = Counter()
        failed = 0
        requests = 0
        for line in open(self.logs / "target.log", encoding="utf-8", errors="replace"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "method" not in r:  # the target's own notes (a reply to a caller that hung up)
                continue
            requests += 1
            key = r.get("idempotency_key")
            per_key[key] += 1
            if r.get("effect") == "applied":
                effects[key] += 1
            elif str(r.get("effect", "")).startswith("none"):
                failed += 1
        return {
            "requests": requests, "keys": len(per_key), "applied_keys": len(effects), "failed": failed,
            "applied_set": set(effects),
            "repeated_keys": sum(1 for v in per_key.values() if v > 1),
            "duplicate_effects": sum(v - 1 for v in effects.values() if v > 1),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--redis", default="", help="Redis URL for the actor's state; empty: in-process")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--logs", required=True)
    p.add_argument("--run-id", default="")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dup-ratio", type=float, default=0.01)
    p.add_argument("--poison-ratio", type=float, default=0.002)
    p.add_argument("--settle-timeout", type=float, default=180)
    p.add_argument("--target-port", type=int, default=18080,
                   help="fake target port (0: a free one); the pack's actor URLs are rewritten to it")
    p.add_argument("--group-suffix", default="", help="appended to every worker's group id")
    args = p.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be positive")
    job = Job(args)
    try:
        sys.exit(job.run())
    finally:
        if job.workers:
            for w in job.workers.values():
                if w.alive():
                    w.proc.kill()


if __name__ == "__main__":
    main()
