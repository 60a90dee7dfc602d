//! `reflex-bench`: the load generator and report of issue 7.
//!
//! It produces `--events` realistic Avro pod events (Confluent framing, CloudEvents headers, 1000
//! keys) to the local stack at `--rate` events/s (or as fast as it can), runs the chosen worker
//! processes, consumes the last topic of the chain and reports, per scenario:
//! throughput, p50/p95/p99 end-to-end latency (produce call → output record consumed back by
//! the bench, so it includes the workers' produce acknowledgement and one fetch), CPU seconds per
//! event (utime+stime of the worker processes from `/proc/<pid>/stat`), peak RSS (`VmHWM`) and
//! RSS at the start and end of the measured window. In the same run it measures a **raw
//! passthrough baseline**: this binary started as `reflex-bench passthrough`, an rdkafka consume →
//! produce loop with no processing, the same broker and the runtime's client settings. Every
//! figure is also printed as a ratio to the baseline.
//!
//! ```text
//! cargo build --release --workspace --bins
//! scripts/stack.sh run -- target/release/reflex-bench --events 200000 --rate max --pipeline router
//! ```
//!
//! Pipelines: `router` (router alone, a rule reading payload fields), `full` (router → enricher
//! with a Redis lookup → actor with a `log` action, claims and done records in Redis). Workers
//! run from the directory of this binary (so a release bench runs release workers) with
//! `telemetry.log_level = warn`; their logs stay in the printed work directory.

mod passthrough;
mod report;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use reflex_core::headers::ce;
use reflex_core::registry::RegistryClient;
use reflex_testkit::{ce_headers, client_config, create_topics, unique};

use crate::report::{Report, Scenario, WorkerFigures};

const POD_SCHEMA: &str = include_str!("../../../avro/k8s_pod_event.avsc");
/// Events sent (and waited for) before measuring: group joins, connections, schema caches.
const WARMUP_PREFIX: &str = "warm-";
const EVENT_PREFIX: &str = "ev-";

#[derive(Parser)]
#[command(
    name = "reflex-bench",
    version,
    about = "Load generator and report for Reflex workers"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Events to measure per scenario.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Target produce rate in events/s, or `max` (as fast as the producer can).
    #[arg(long, default_value = "max")]
    rate: String,
    /// Which workers to run after the baseline.
    #[arg(long, value_enum, default_value_t = Pipeline::Router)]
    pipeline: Pipeline,
    /// Partitions of every topic the bench creates.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Distinct keys (pods) the events spread over.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Warm-up events per scenario (not measured).
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Give up when no output arrived for this long (the report then shows what is missing).
    #[arg(long, default_value_t = 60)]
    stall_timeout_s: u64,
    /// Skip the passthrough baseline (ratios are then not printed).
    #[arg(long)]
    no_baseline: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory with the worker binaries (default: the directory of this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, env = "REFLEX_TEST_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(
        long,
        env = "REFLEX_TEST_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
    #[arg(
        long,
        env = "REFLEX_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// The baseline worker: consume → produce with no processing (started by the bench itself).
    #[command(hide = true)]
    Passthrough {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pipeline {
    /// Only the passthrough baseline.
    Baseline,
    /// The router alone.
    Router,
    /// Router → enricher → actor (log action).
    Full,
}

impl Pipeline {
    fn name(self) -> &'static str {
        match self {
            Pipeline::Baseline => "baseline",
            Pipeline::Router => "router",
            Pipeline::Full => "router+enricher+actor",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match &args.command {
        Some(Cmd::Passthrough {
            bootstrap,
            group,
            input,
            output,
        }) => runtime.block_on(passthrough::run(bootstrap, group, input, output)),
        None => runtime.block_on(bench(&args)),
    }
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let rate = match args.rate.as_str() {
        "max" => None,
        r => Some(
            r.parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0)
                .with_context(|| {
                    format!("--rate {r}: use a positive number of events/s or `max`")
                })?,
        ),
    };
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .to_path_buf(),
    };
    let work = std::env::temp_dir().join(unique("reflex-bench"));
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "reflex-bench: {} events, rate {}, pipeline {}, broker {}, workers from {}, logs in {}",
        args.events,
        args.rate,
        args.pipeline.name(),
        args.bootstrap,
        bin_dir.display(),
        work.display()
    );
    let ctx = Ctx {
        args,
        rate,
        bin_dir,
        work,
    };
    let baseline = if args.no_baseline && args.pipeline != Pipeline::Baseline {
        None
    } else {
        Some(ctx.scenario(Pipeline::Baseline).await?)
    };
    let pipeline = if args.pipeline == Pipeline::Baseline {
        None
    } else {
        Some(ctx.scenario(args.pipeline).await?)
    };
    let report = Report::new(
        args.events,
        args.rate.clone(),
        args.partitions,
        baseline,
        pipeline,
    );
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

struct Ctx<'a> {
    args: &'a Args,
    rate: Option<f64>,
    bin_dir: PathBuf,
    work: PathBuf,
}

/// A worker process, killed when dropped.
struct Worker {
    name: String,
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the output consumer saw.
struct Seen {
    warm: u64,
    received: u64,
    duplicates: u64,
    first_us: u64,
    last_us: u64,
    got: Vec<bool>,
    latencies_us: Vec<u64>,
}

impl<'a> Ctx<'a> {
    async fn scenario(&self, pipeline: Pipeline) -> anyhow::Result<Scenario> {
        let a = self.args;
        let tag = match pipeline {
            Pipeline::Baseline => "base",
            Pipeline::Router => "router",
            Pipeline::Full => "full",
        };
        let input = unique(&format!("bench-{tag}-in"));
        let routed = unique(&format!("bench-{tag}-routed"));
        let requests = unique(&format!("bench-{tag}-requests"));
        let outcomes = unique(&format!("bench-{tag}-outcomes"));
        let parked = unique(&format!("bench-{tag}-parked"));
        let mut topics = vec![input.clone(), routed.clone()];
        if pipeline == Pipeline::Full {
            topics.extend([requests.clone(), outcomes.clone(), parked.clone()]);
        }
        let dlqs: Vec<String> = topics.iter().map(|t| format!("{t}.dlq")).collect();
        let all: Vec<(&str, i32)> = topics
            .iter()
            .map(|t| (t.as_str(), a.partitions))
            .chain(dlqs.iter().map(|t| (t.as_str(), 1)))
            .collect();
        create_topics(&a.bootstrap, &all).await;

        let registry = RegistryClient::new(
            &a.registry_url,
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
        let schema_id = registry
            .register(&format!("{input}-value"), POD_SCHEMA)
            .await
            .with_context(|| format!("register the pod schema at {}", a.registry_url))?;

        let last_topic = match pipeline {
            Pipeline::Full => outcomes.clone(),
            _ => routed.clone(),
        };
        // Subscribe before any worker produces, so the first outputs are not missed.
        let seen = Arc::new(Mutex::new(Seen {
            warm: 0,
            received: 0,
            duplicates: 0,
            first_us: u64::MAX,
            last_us: 0,
            got: vec![false; a.events as usize],
            latencies_us: Vec::with_capacity(a.events as usize),
        }));
        let sent_us: Arc<Vec<AtomicU64>> =
            Arc::new((0..a.events).map(|_| AtomicU64::new(0)).collect());
        let t0 = Instant::now();
        let reader = tokio::spawn(read_outputs(
            a.bootstrap.clone(),
            last_topic.clone(),
            seen.clone(),
            sent_us.clone(),
            t0,
        ));

        let mut workers = match pipeline {
            Pipeline::Baseline => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["passthrough", "--bootstrap", &a.bootstrap, "--group"])
                    .arg(unique("bench-passthrough"))
                    .args(["--input", &input, "--output", &routed]);
                vec![self.spawn("passthrough", c)?]
            }
            Pipeline::Router => vec![self.spawn_router(&input, &routed)?],
            Pipeline::Full => self.spawn_full(&input, &routed, &requests, &outcomes, &parked)?,
        };

        let producer: FutureProducer = reflex_testkit::producer(&a.bootstrap);
        let payloads: Vec<Vec<u8>> = (0..a.keys.max(1))
            .map(|k| pod_event(schema_id, &format!("pod-{k}"), k as i64))
            .collect::<anyhow::Result<_>>()?;
        let keys: Vec<String> = (0..a.keys.max(1)).map(|k| format!("pod-{k}")).collect();

        // Warm-up: wait until every warm-up event came out of the chain.
        let produce_one = |id: String, n: u64| {
            let k = (n % keys.len() as u64) as usize;
            (id, k)
        };
        eprintln!(
            "[{}] warming up: {} events through {}",
            pipeline.name(),
            a.warmup,
            workers
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
        for n in 0..a.warmup {
            let (id, k) = produce_one(format!("{WARMUP_PREFIX}{n}"), n);
            send(&producer, &input, &keys[k], &payloads[k], &id).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.lock().unwrap().warm < a.warmup {
            self.check_alive(&mut workers)?;
            if Instant::now() > deadline {
                bail!(
                    "warm-up: only {}/{} events came out of {} within 120 s; worker logs in {}",
                    seen.lock().unwrap().warm,
                    a.warmup,
                    last_topic,
                    self.work.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Measured window.
        let cpu_start: Vec<f64> = workers.iter().map(|w| cpu_seconds(w.child.id())).collect();
        let rss_samples = Arc::new(Mutex::new(Vec::<u64>::new()));
        let pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
        let sampler = tokio::spawn(sample_rss(pids.clone(), rss_samples.clone()));
        eprintln!("[{}] producing {} events", pipeline.name(), a.events);
        let produce_started = t0.elapsed();
        let failures = produce_all(
            &producer, &input, &keys, &payloads, a.events, self.rate, &sent_us, t0,
        )
        .await;
        let produce_s = (t0.elapsed() - produce_started).as_secs_f64();
        eprintln!(
            "[{}] produced in {produce_s:.2} s ({:.0}/s), waiting for outputs",
            pipeline.name(),
            a.events as f64 / produce_s
        );
        let stall = Duration::from_secs(a.stall_timeout_s);
        let mut last_progress = (0, Instant::now());
        loop {
            let received = seen.lock().unwrap().received;
            if received >= a.events {
                break;
            }
            if received != last_progress.0 {
                last_progress = (received, Instant::now());
            } else if last_progress.1.elapsed() > stall {
                eprintln!(
                    "[{}] no output for {} s: stopping with {received}/{} received",
                    pipeline.name(),
                    a.stall_timeout_s,
                    a.events
                );
                break;
            }
            self.check_alive(&mut workers)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu_end: Vec<f64> = workers.iter().map(|w| cpu_seconds(w.child.id())).collect();
        sampler.abort();
        reader.abort();
        let per_worker: Vec<WorkerFigures> = workers
            .iter()
            .zip(cpu_start.iter().zip(&cpu_end))
            .map(|(w, (s, e))| WorkerFigures {
                name: w.name.clone(),
                pid: w.child.id(),
                cpu_s: e - s,
                peak_rss_mb: status_kb(w.child.id(), "VmHWM:") as f64 / 1024.0,
            })
            .collect();
        drop(workers);
        let mut seen = std::mem::replace(
            &mut *seen.lock().unwrap(),
            Seen {
                warm: 0,
                received: 0,
                duplicates: 0,
                first_us: 0,
                last_us: 0,
                got: Vec::new(),
                latencies_us: Vec::new(),
            },
        );
        let rss = rss_samples.lock().unwrap().clone();
        let first_send_us = sent_us
            .first()
            .map(|s| s.load(Ordering::Relaxed))
            .unwrap_or(0);
        Ok(Scenario::new(
            pipeline.name(),
            a.events,
            failures,
            &mut seen.latencies_us,
            seen.received,
            seen.duplicates,
            seen.last_us
                .saturating_sub(first_send_us.min(seen.first_us)),
            produce_s,
            per_worker,
            &rss,
        ))
    }

    fn spawn(&self, name: &str, mut command: Command) -> anyhow::Result<Worker> {
        let log = self.work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Worker {
            name: name.to_string(),
            child,
        })
    }

    fn worker(&self, bin: &str, input: &str) -> anyhow::Result<Command> {
        let path = self.bin_dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: build the workers next to reflex-bench first \
                 (`cargo build --release --workspace --bins` for a release bench)",
                path.display()
            );
        }
        let a = self.args;
        let mut c = Command::new(path);
        c.env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &a.bootstrap)
            .env("REFLEX_KAFKA__GROUP_ID", unique(bin))
            .env("REFLEX_KAFKA__INPUT_TOPICS", format!("[\"{input}\"]"))
            .env("REFLEX_KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("REFLEX_REGISTRY__URL", &a.registry_url)
            .env("REFLEX_TELEMETRY__LOG_LEVEL", "warn")
            .env("REFLEX_TELEMETRY__LOG_FORMAT", "text")
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        Ok(c)
    }

    fn spawn_router(&self, input: &str, output: &str) -> anyhow::Result<Worker> {
        // The example rule: reads two payload fields, so every event is decoded.
        let rules = self.work.join("rules.toml");
        std::fs::write(
            &rules,
            format!(
                "unmatched = \"drop\"\n[[rule]]\nname = \"crashloop-remediation\"\n\
                 when = 'ce.type == \"io.k8s.pod.crashloop\" && payload.restart_count >= 3 && !payload.rollout_in_progress'\n\
                 to = [\"{output}\"]\n"
            ),
        )?;
        let mut c = self.worker("reflex-router", input)?;
        c.env("REFLEX_ROUTER__RULES_FILE", &rules);
        self.spawn("router", c)
    }

    fn spawn_full(
        &self,
        input: &str,
        routed: &str,
        requests: &str,
        outcomes: &str,
        parked: &str,
    ) -> anyhow::Result<Vec<Worker>> {
        let router = self.spawn_router(input, routed)?;
        let bindings = self.work.join("bindings.toml");
        std::fs::write(
            &bindings,
            r#"[[lookup]]
name = "owner"
kind = "redis"
key = "owners:{{ payload.namespace }}"
on_missing = "default"
default = { team = "unknown" }

[[binding]]
action = "note"
kind = "log"
when_rules = ["crashloop-remediation"]
target = "pods/{{ payload.namespace }}/{{ payload.pod }}"
params = { team = "{{ context.owner.team }}" }
"#,
        )?;
        let mut c = self.worker("reflex-enricher", routed)?;
        c.env("REFLEX_ENRICHER__BINDINGS_FILE", &bindings)
            .env("REFLEX_ENRICHER__OUTPUT_TOPIC", requests)
            .env("REFLEX_ENRICHER__REDIS_URL", &self.args.redis_url);
        let enricher = self.spawn("enricher", c)?;
        let actor_config = self.work.join("actor.toml");
        std::fs::write(
            &actor_config,
            format!(
                "[actor]\nredis_prefix = \"{prefix}\"\noutcomes_topic = \"{outcomes}\"\nparked_topic = \"{parked}\"\n\n\
                 [[actor.action]]\nname = \"note\"\nkind = \"log\"\nmessage = \"crash loop on {{{{ target }}}} (event {{{{ event_id }}}})\"\n",
                prefix = unique("bench"),
            ),
        )?;
        let mut c = self.worker("reflex-actor", requests)?;
        c.arg("--config")
            .arg(&actor_config)
            .env("REFLEX_ACTOR__REDIS_URL", &self.args.redis_url);
        let actor = self.spawn("actor", c)?;
        Ok(vec![router, enricher, actor])
    }

    fn check_alive(&self, workers: &mut [Worker]) -> anyhow::Result<()> {
        for w in workers {
            if let Ok(Some(status)) = w.child.try_wait() {
                bail!(
                    "{} exited ({status}); its log: {}",
                    w.name,
                    self.work.join(format!("{}.log", w.name)).display()
                );
            }
        }
        Ok(())
    }
}

/// The example pod event (like `tests/common::pod_event`), Confluent-framed.
fn pod_event(schema_id: u32, pod: &str, seq: i64) -> anyhow::Result<Vec<u8>> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA)?;
    let json = serde_json::json!({
        "cluster": "prod-eu-west-1", "namespace": "shop", "pod": pod, "reason": "CrashLoopBackOff",
        "restart_count": 6, "seq": seq, "rollout_in_progress": false,
        "labels": {"app": pod, "team": "payments", "tier": "1"}
    });
    Ok(reflex_core::wire::encode_frame(
        schema_id,
        &reflex_core::avro::json_to_datum(&schema, &json)?,
    ))
}

/// CloudEvents headers with `ce_time` now, the correlation id = the event id.
fn headers(id: &str) -> rdkafka::message::OwnedHeaders {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    ce_headers(id, "io.k8s.pod.crashloop", "k8s/prod-eu-west-1").insert(Header {
        key: ce::TIME,
        value: Some(time.as_str()),
    })
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    id: &str,
) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers(id));
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
    Ok(())
}

/// Produces `events` events at `rate` (None: as fast as librdkafka takes them); records each
/// event's send time (µs since `t0`). Returns how many deliveries failed.
#[allow(clippy::too_many_arguments)]
async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    keys: &[String],
    payloads: &[Vec<u8>],
    events: u64,
    rate: Option<f64>,
    sent_us: &Arc<Vec<AtomicU64>>,
    t0: Instant,
) -> u64 {
    // Delivery reports are awaited by a separate task, so sending never waits for acks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<rdkafka::producer::DeliveryFuture>(100_000);
    let acks = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(f) = rx.recv().await {
            if !matches!(f.await, Ok(Ok(_))) {
                failed += 1;
            }
        }
        failed
    });
    let start = Instant::now();
    let mut n = 0u64;
    while n < events {
        let due = match rate {
            None => events,
            Some(r) => ((start.elapsed().as_secs_f64() * r) as u64 + 1).min(events),
        };
        while n < due {
            let k = (n % keys.len() as u64) as usize;
            let id = format!("{EVENT_PREFIX}{n}");
            let mut record = FutureRecord::to(topic)
                .key(keys[k].as_str())
                .payload(payloads[k].as_slice())
                .headers(headers(&id));
            sent_us[n as usize].store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        let _ = tx.send(f).await;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        eprintln!("produce to {topic}: {e}");
                        break;
                    }
                }
            }
            n += 1;
        }
        if rate.is_some() && n < events {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(tx);
    acks.await.unwrap_or(events)
}

/// Consumes the chain's last topic from the beginning and records, per measured event, the
/// latency from its send time to now.
async fn read_outputs(
    bootstrap: String,
    topic: String,
    seen: Arc<Mutex<Seen>>,
    sent_us: Arc<Vec<AtomicU64>>,
    t0: Instant,
) {
    let consumer: StreamConsumer = match client_config(&bootstrap)
        .set("group.id", unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("output reader: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&topic]) {
        eprintln!("output reader: subscribe {topic}: {e}");
        return;
    }
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("output reader: {e}");
                continue;
            }
        };
        let now = t0.elapsed().as_micros() as u64;
        let Some(id) = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == ce::CORRELATION_ID)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        }) else {
            continue;
        };
        let mut s = seen.lock().unwrap();
        if id.starts_with(WARMUP_PREFIX) {
            s.warm += 1;
        } else if let Some(n) = id
            .strip_prefix(EVENT_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < s.got.len())
        {
            if s.got[n] {
                s.duplicates += 1;
                continue;
            }
            s.got[n] = true;
            s.received += 1;
            s.first_us = s.first_us.min(now);
            s.last_us = s.last_us.max(now);
            let sent = sent_us[n].load(Ordering::Relaxed);
            s.latencies_us.push(now.saturating_sub(sent));
        }
    }
}

/// Samples the summed `VmRSS` of `pids` every 250 ms.
async fn sample_rss(pids: Vec<u32>, samples: Arc<Mutex<Vec<u64>>>) {
    loop {
        let kb: u64 = pids.iter().map(|p| status_kb(*p, "VmRSS:")).sum();
        samples.lock().unwrap().push(kb);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// utime + stime of `pid` (all its threads) in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks() as f64
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `kB` field of `/proc/<pid>/status` (0 when unreadable).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
