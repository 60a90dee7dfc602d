//! The benchmark (`reflex-bench` with no command): the load generator and report of issue 7.
//!
//! It produces `--events` realistic Avro pod events (Confluent framing, CloudEvents headers, 1000
//! keys) to the local stack at `--rate` events/s (or as fast as it can), runs the chosen worker
//! processes, consumes the last topic of the chain and reports, per scenario:
//! throughput, p50/p95/p99 end-to-end latency (produce call → output record consumed back by
//! the bench, so it includes the workers' produce acknowledgement and one fetch), CPU seconds per
//! event (utime+stime of the worker processes from `/proc/<pid>/stat`), peak RSS (`VmHWM`) and
//! the summed `VmRSS` of the workers sampled every 250 ms over the measured window: its start,
//! max, the values at 10/50/90% of the window and the spread `(max - min) / min` after the first
//! 10% (the ramp-up while librdkafka's fetch queue and the in-flight window fill); `--json` also
//! gets the whole series. Under `scripts/stack.sh` it also reports the CPU of the broker and of
//! Redis (their process groups, from `REFLEX_TEST_BROKER_PID` / `REFLEX_TEST_REDIS_PID`) in the
//! same window: they share the two cores with the workers, so they bound what the workers can
//! reach.
//!
//! In the same run it measures a **raw passthrough baseline** with the pipeline's topology:
//! `--hops` processes of this binary started as `reflex-bench passthrough` (an rdkafka consume →
//! produce loop with no processing, the same broker and the runtime's client settings), chained
//! through their own topics and groups, as many as the pipeline has stages (router 1; full 3:
//! input → routed → requests → outcomes), so the ratios compare like with like. Every figure is
//! also printed as a ratio to the baseline. `--pipeline baseline` runs the baseline alone (one
//! hop unless `--hops N`).
//!
//! **Peers** (`--peer kafka-streams`, with `--pipeline router`): a third scenario after the router,
//! another stream processor doing the router's job on its own fresh topics on the same broker
//! (`benches/kafka-streams-peer`, see `peer.rs`); the table adds its column, `peer/base` and
//! `router/peer` ratios. `--rounds N` repeats baseline, router and peer N times interleaved and
//! ends with a summary of each round's ratios, the comparable figures on a shared machine.
//!
//! **Backlog mode** (`--backlog`, the "RSS flat while draining a backlog" target): after the
//! warm-up the workers are stopped with SIGSTOP, all `--events` are produced and acknowledged,
//! then the workers get SIGCONT and the drain is measured. The workers are warm (connections,
//! group membership, schema caches) and then find the whole backlog in their input, which a
//! producer racing running workers does not give. In this mode the window starts at the resume:
//! throughput is events / (resume → last output), latency is the time from the resume to each
//! output (its place in the drain, not a service latency), CPU and RSS cover the drain only. The
//! workers' group session is raised to `--backlog-session-timeout-s` (120) there, so the stop
//! does not make librdkafka drop the assignment and rejoin on resume (a warning says when the
//! stop lasted longer; stderr also prints the delay from the resume to the first output).
//!
//! ```text
//! cargo build --release --workspace --bins
//! scripts/stack.sh run -- target/release/reflex-bench --events 200000 --rate max --pipeline router
//! scripts/stack.sh run -- target/release/reflex-bench --events 100000 --rate max --pipeline full
//! scripts/stack.sh run -- target/release/reflex-bench --events 5000000 --pipeline router \
//!     --no-baseline --backlog
//! scripts/stack.sh run -- target/release/reflex-bench --events 200000 --rate max \
//!     --pipeline router --peer kafka-streams --rounds 3
//! ```
//!
//! Pipelines: `router` (router alone, a rule reading payload fields), `full` (router → enricher
//! with a Redis lookup → actor with a `log` action, claims and done records in Redis). Workers
//! run from the directory of this binary (so a release bench runs release workers) with
//! `telemetry.log_level = warn`; their logs stay in the printed work directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use reflex_bench::proc::Proc;
use reflex_bench::publish::{Pacer, Tracker};
use reflex_bench::sample::{cpu_seconds, group_cpu_seconds, stack_services, status_kb};
use reflex_bench::worker_config::WorkerSettings;
use reflex_core::headers::ce;
use reflex_core::registry::RegistryClient;
use reflex_testkit::{ce_headers, client_config, create_topics, unique};

use crate::report::{Report, RssSample, Scenario, ServiceFigures, WorkerFigures};

const POD_SCHEMA: &str = include_str!("../../../avro/k8s_pod_event.avsc");
/// Events sent (and waited for) before measuring: group joins, connections, schema caches.
const WARMUP_PREFIX: &str = "warm-";
const EVENT_PREFIX: &str = "ev-";

/// The benchmark's flags (`reflex-bench` with no command).
#[derive(Args)]
pub struct BenchArgs {
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
    /// Warm-up events per scenario (not measured). A JVM peer wants tens of thousands (JIT).
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Give up when no output arrived for this long (the report then shows what is missing).
    #[arg(long, default_value_t = 60)]
    stall_timeout_s: u64,
    /// Skip the passthrough baseline (ratios are then not printed).
    #[arg(long)]
    no_baseline: bool,
    /// Chained passthrough hops in the baseline. Default: the pipeline's (router 1, full 3;
    /// `--pipeline baseline` alone 1), so the ratio compares the same topology.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    hops: Option<u32>,
    /// Drain a backlog: after the warm-up the workers are stopped (SIGSTOP), all `--events` are
    /// produced, then the workers are resumed (SIGCONT) and the drain is measured.
    #[arg(long)]
    backlog: bool,
    /// Group session timeout of the workers in backlog mode, seconds; must exceed the time the
    /// workers are stopped (about the time to produce the backlog). A stopped member sends no
    /// heartbeats: past its session librdkafka itself revokes the partitions on resume and
    /// rejoins, so the drain would start with a rebalance (a warning says so).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(6..=1800))]
    backlog_session_timeout_s: u32,
    /// Also run a peer doing the router's job in the same run (after the router, on the same
    /// broker, with its own fresh topics like every scenario): `kafka-streams` builds and runs
    /// `benches/kafka-streams-peer` (needs Maven and a JDK 17). Only with `--pipeline router`.
    #[arg(long, value_enum)]
    peer: Option<crate::peer::Peer>,
    /// A setting for the peer over its tuned defaults, `key=value` (Kafka Streams: any streams,
    /// `consumer.*` or `producer.*` setting); repeat for more.
    #[arg(long = "peer-config", value_name = "KEY=VALUE")]
    peer_config: Vec<String>,
    /// The peer's JVM heap bound (`-Xmx`).
    #[arg(long, default_value = "512m")]
    peer_heap: String,
    /// Run every scenario this many times, interleaved (round 1: baseline, pipeline, peer;
    /// round 2: pipeline, peer, baseline; …), one table per round and a summary of the ratios:
    /// on a shared machine the ratios within a round are the comparable figures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Also write the report as JSON to this file (an array of reports with `--rounds` > 1).
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pipeline {
    /// Only the passthrough baseline.
    Baseline,
    /// The router alone.
    Router,
    /// Router → enricher → actor (log action).
    Full,
    /// The Kafka Streams peer (`--peer kafka-streams`), not a pipeline of its own.
    #[value(skip)]
    KafkaStreams,
}

impl Pipeline {
    fn name(self) -> &'static str {
        match self {
            Pipeline::Baseline => "baseline",
            Pipeline::Router => "router",
            Pipeline::Full => "router+enricher+actor",
            Pipeline::KafkaStreams => "kafka-streams",
        }
    }

    /// Consume → produce hops between the input and the topic the bench reads.
    fn hops(self) -> u32 {
        match self {
            Pipeline::Baseline | Pipeline::Router | Pipeline::KafkaStreams => 1,
            Pipeline::Full => 3,
        }
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
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
    let hops = args.hops.unwrap_or(args.pipeline.hops());
    if args.peer.is_some() && args.pipeline != Pipeline::Router {
        bail!("--peer runs the router's job: use it with --pipeline router");
    }
    // Built (or found current) before any scenario, so a failed build stops the run early.
    let peer_jar = match args.peer {
        Some(crate::peer::Peer::KafkaStreams) => Some(crate::peer::kafka_streams_jar()?),
        None => None,
    };
    let work = std::env::temp_dir().join(unique("reflex-bench"));
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "reflex-bench: {} events{}, rate {}, pipeline {}, baseline hops {hops}, broker {}, \
         workers from {}, logs in {}",
        args.events,
        if args.backlog { " (backlog)" } else { "" },
        args.rate,
        args.pipeline.name(),
        args.bootstrap,
        bin_dir.display(),
        work.display()
    );
    let ctx = Ctx {
        args,
        rate,
        hops,
        bin_dir,
        work,
        peer_jar,
    };
    let mut reports = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("reflex-bench: round {round}/{}", args.rounds);
        }
        // The contenders of this round, their order rotated by one each round so that none
        // always runs first or last (on a fresh broker, a warmer page cache, a busier machine).
        let mut order = Vec::new();
        if !(args.no_baseline && args.pipeline != Pipeline::Baseline) {
            order.push(Pipeline::Baseline);
        }
        if args.pipeline != Pipeline::Baseline {
            order.push(args.pipeline);
        }
        if args.peer.is_some() {
            order.push(Pipeline::KafkaStreams);
        }
        let rotate = (round as usize - 1) % order.len();
        order.rotate_left(rotate);
        let (mut baseline, mut pipeline, mut peer) = (None, None, None);
        for contender in order {
            let scenario = Some(ctx.scenario(contender).await?);
            match contender {
                Pipeline::Baseline => baseline = scenario,
                Pipeline::KafkaStreams => peer = scenario,
                _ => pipeline = scenario,
            }
        }
        let report = Report::new(
            args.events,
            args.rate.clone(),
            args.partitions,
            args.backlog,
            baseline,
            pipeline,
        )
        .with_peer(peer);
        if args.rounds > 1 {
            println!("\nround {round}/{}", args.rounds);
        }
        println!("{}", report.table());
        reports.push(report);
    }
    if args.rounds > 1 {
        println!("{}", crate::report::rounds_summary(&reports));
    }
    if let Some(path) = &args.json {
        let json = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        };
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    rate: Option<f64>,
    /// Passthrough hops of the baseline scenario.
    hops: u32,
    bin_dir: PathBuf,
    work: PathBuf,
    /// The Kafka Streams peer's jar (`--peer kafka-streams`).
    peer_jar: Option<PathBuf>,
}

/// Sends `signal` (`SIGSTOP`, `SIGCONT`) to a worker; every thread of it stops or resumes.
fn signal_all(workers: &[Proc], signal: i32) -> anyhow::Result<()> {
    for w in workers {
        w.signal(signal)?;
    }
    Ok(())
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
        let (tag, name) = match pipeline {
            Pipeline::Baseline => (
                "base",
                format!(
                    "baseline ({} hop{})",
                    self.hops,
                    if self.hops == 1 { "" } else { "s" }
                ),
            ),
            Pipeline::Router => ("router", pipeline.name().to_string()),
            Pipeline::Full => ("full", pipeline.name().to_string()),
            Pipeline::KafkaStreams => ("kstreams", pipeline.name().to_string()),
        };
        let topic = |stage: &str| unique(&format!("bench-{tag}-{stage}"));
        let input = topic("in");
        // The topics after each hop, the last one read by the bench; the baseline's chain has
        // the full pipeline's stage names for its first three hops.
        let (chain, held): (Vec<String>, Option<String>) = match pipeline {
            Pipeline::Baseline => (
                (1..=self.hops)
                    .map(|i| match i {
                        1 => topic("routed"),
                        2 => topic("requests"),
                        3 => topic("outcomes"),
                        i => topic(&format!("hop{i}")),
                    })
                    .collect(),
                None,
            ),
            Pipeline::Router | Pipeline::KafkaStreams => (vec![topic("routed")], None),
            Pipeline::Full => (
                vec![topic("routed"), topic("requests"), topic("outcomes")],
                Some(topic("held")),
            ),
        };
        let topics: Vec<String> = std::iter::once(input.clone())
            .chain(chain.iter().cloned())
            .chain(held.iter().cloned())
            .collect();
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

        let last_topic = chain
            .last()
            .context("a scenario has at least one hop")?
            .clone();
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
                // One process and group per hop, like the pipeline's stages.
                let mut workers = Vec::new();
                let mut from = &input;
                for (i, to) in chain.iter().enumerate() {
                    let name = if chain.len() == 1 {
                        "passthrough".to_string()
                    } else {
                        format!("passthrough-{}", i + 1)
                    };
                    let (session, poll) = self.group_timeouts_ms();
                    let mut c = Command::new(std::env::current_exe()?);
                    c.args(["passthrough", "--bootstrap", &a.bootstrap, "--group"])
                        .arg(unique("bench-passthrough"))
                        .args(["--input", from, "--output", to])
                        .arg(format!("--session-timeout-ms={session}"))
                        .arg(format!("--max-poll-interval-ms={poll}"));
                    workers.push(self.spawn(&name, c)?);
                    from = to;
                }
                workers
            }
            Pipeline::Router => vec![self.spawn_router(&input, &chain[0])?],
            Pipeline::KafkaStreams => vec![self.spawn_kafka_streams(&input, &chain[0])?],
            Pipeline::Full => self.spawn_full(
                &input,
                &chain[0],
                &chain[1],
                &chain[2],
                held.as_deref().unwrap_or_default(),
            )?,
        };

        let producer: FutureProducer = reflex_bench::publish::producer(&a.bootstrap)?;
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
            "[{name}] warming up: {} events through {}",
            a.warmup,
            workers
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
        // Sent 1000 at a time, not one ack at a time: a JVM peer needs tens of thousands of
        // warm-up events before its JIT has compiled the hot path.
        let mut n = 0;
        while n < a.warmup {
            let chunk: Vec<(String, usize)> = (n..a.warmup.min(n + 1000))
                .map(|n| produce_one(format!("{WARMUP_PREFIX}{n}"), n))
                .collect();
            n += chunk.len() as u64;
            futures::future::try_join_all(
                chunk
                    .iter()
                    .map(|(id, k)| send(&producer, &input, &keys[*k], &payloads[*k], id)),
            )
            .await?;
        }
        // The group joins are part of the warm-up, and can take up to the session timeout.
        let (session_ms, _) = self.group_timeouts_ms();
        let warmup_limit = Duration::from_secs(120) + Duration::from_millis(session_ms.into());
        let deadline = Instant::now() + warmup_limit;
        while seen.lock().unwrap().warm < a.warmup {
            self.check_alive(&mut workers)?;
            if Instant::now() > deadline {
                bail!(
                    "warm-up: only {}/{} events came out of {} within {} s; worker logs in {}",
                    seen.lock().unwrap().warm,
                    a.warmup,
                    last_topic,
                    warmup_limit.as_secs(),
                    self.work.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Measured window. In backlog mode it starts at the resume: the workers are stopped
        // while the backlog is produced (so they cannot keep up with the producer and turn it
        // into a stream), and the figures cover only the drain.
        let stopped_at = Instant::now();
        if a.backlog {
            signal_all(&workers, libc::SIGSTOP)?;
            eprintln!(
                "[{name}] workers stopped; producing a backlog of {} events",
                a.events
            );
        } else {
            eprintln!("[{name}] producing {} events", a.events);
        }
        let produce_started = Instant::now();
        let mut window_start = produce_started;
        let mut resume_us = None;
        let mut cpu_start: Vec<f64> = workers.iter().map(|w| cpu_seconds(w.pid())).collect();
        let services = stack_services();
        let mut services_start: Vec<f64> = services
            .iter()
            .map(|(_, pgid)| group_cpu_seconds(*pgid))
            .collect();
        let rss_samples = Arc::new(Mutex::new(Vec::<RssSample>::new()));
        let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
        let mut sampler = (!a.backlog)
            .then(|| tokio::spawn(sample_rss(pids.clone(), rss_samples.clone(), window_start)));
        let failures = produce_all(
            &producer, &input, &keys, &payloads, a.events, self.rate, &sent_us, t0,
        )
        .await;
        let produce_s = produce_started.elapsed().as_secs_f64();
        eprintln!(
            "[{name}] produced in {produce_s:.2} s ({:.0}/s), waiting for outputs",
            a.events as f64 / produce_s
        );
        if a.backlog {
            // Every measured event is in the topic (`produce_all` awaited the acks). Their clock
            // starts now: the throughput is events / (resume → last output), and latency is the
            // time into the drain at which each came out, not a service latency.
            let stopped = stopped_at.elapsed();
            if stopped >= Duration::from_millis(session_ms.into()) {
                eprintln!(
                    "[{name}] warning: the workers were stopped {:.0} s, longer than their session \
                     timeout ({} s): the drain starts with a rebalance; raise \
                     --backlog-session-timeout-s",
                    stopped.as_secs_f64(),
                    session_ms / 1000
                );
            }
            window_start = Instant::now();
            let resume = t0.elapsed().as_micros() as u64;
            for s in sent_us.iter() {
                s.store(resume, Ordering::Relaxed);
            }
            resume_us = Some(resume);
            cpu_start = workers.iter().map(|w| cpu_seconds(w.pid())).collect();
            services_start = services
                .iter()
                .map(|(_, pgid)| group_cpu_seconds(*pgid))
                .collect();
            sampler = Some(tokio::spawn(sample_rss(
                pids.clone(),
                rss_samples.clone(),
                window_start,
            )));
            signal_all(&workers, libc::SIGCONT)?;
            eprintln!("[{name}] workers resumed, draining");
        }
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
                    "[{name}] no output for {} s: stopping with {received}/{} received",
                    a.stall_timeout_s, a.events
                );
                break;
            }
            self.check_alive(&mut workers)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let window_s = window_start.elapsed().as_secs_f64();
        if let Some(resume_us) = resume_us {
            // A long gap here means the workers did more than drain (e.g. rejoined their group).
            let first_us = seen.lock().unwrap().first_us;
            if first_us != u64::MAX {
                eprintln!(
                    "[{name}] first output {:.2} s after the resume, drained in {window_s:.2} s",
                    first_us.saturating_sub(resume_us) as f64 / 1e6
                );
            }
        }
        let cpu_end: Vec<f64> = workers.iter().map(|w| cpu_seconds(w.pid())).collect();
        let services: Vec<ServiceFigures> = services
            .iter()
            .zip(&services_start)
            .map(|((name, pgid), start)| ServiceFigures {
                name: name.to_string(),
                pgid: *pgid,
                cpu_s: group_cpu_seconds(*pgid) - start,
            })
            .collect();
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        reader.abort();
        let per_worker: Vec<WorkerFigures> = workers
            .iter()
            .zip(cpu_start.iter().zip(&cpu_end))
            .map(|(w, (s, e))| WorkerFigures {
                name: w.name.clone(),
                pid: w.pid(),
                cpu_s: e - s,
                peak_rss_mb: status_kb(w.pid(), "VmHWM:") as f64 / 1024.0,
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
            &name,
            a.events,
            failures,
            &mut seen.latencies_us,
            seen.received,
            seen.duplicates,
            seen.last_us
                .saturating_sub(first_send_us.min(seen.first_us)),
            produce_s,
            per_worker,
            rss,
            window_s,
            services,
        ))
    }

    /// Session and max-poll-interval of the workers' consumer groups.
    /// In backlog mode the session covers the stop; librdkafka wants
    /// `max.poll.interval.ms >= session.timeout.ms`, and the stop also counts as a poll gap.
    fn group_timeouts_ms(&self) -> (u32, u32) {
        if self.args.backlog {
            let session = self.args.backlog_session_timeout_s * 1000;
            (session, session.max(300_000))
        } else {
            (6000, 300_000)
        }
    }

    fn spawn(&self, name: &str, command: Command) -> anyhow::Result<Proc> {
        Ok(Proc::spawn(
            name,
            command,
            &self.work.join(format!("{name}.log")),
        )?)
    }

    /// A worker command with the bench's settings over `specific` (the stage's own).
    fn worker(&self, bin: &str, input: &str, specific: WorkerSettings) -> anyhow::Result<Command> {
        let path = self.bin_dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: build the workers next to reflex-bench first \
                 (`cargo build --release --workspace --bins` for a release bench)",
                path.display()
            );
        }
        let a = self.args;
        let (session, poll) = self.group_timeouts_ms();
        let mut c = Command::new(path);
        WorkerSettings {
            bootstrap: Some(a.bootstrap.clone()),
            group_id: Some(unique(bin)),
            input_topics: Some(vec![input.to_string()]),
            session_timeout: Some(Duration::from_millis(session.into())),
            max_poll_interval: Some(Duration::from_millis(poll.into())),
            registry_url: Some(a.registry_url.clone()),
            log_level: Some("warn".into()),
            log_format: Some("text".into()),
            ..specific
        }
        .apply(&mut c);
        c.env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        Ok(c)
    }

    fn spawn_router(&self, input: &str, output: &str) -> anyhow::Result<Proc> {
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
        let c = self.worker(
            "reflex-router",
            input,
            WorkerSettings {
                router_rules_file: Some(rules),
                ..Default::default()
            },
        )?;
        self.spawn("router", c)
    }

    /// The Kafka Streams peer on the router's job: same input, rule and output as `spawn_router`.
    fn spawn_kafka_streams(&self, input: &str, output: &str) -> anyhow::Result<Proc> {
        let a = self.args;
        let jar = self
            .peer_jar
            .as_deref()
            .context("the Kafka Streams peer's jar was not built")?;
        let application_id = unique("bench-kstreams");
        let state_dir = self.work.join(&application_id);
        let mut overrides = Vec::new();
        if a.backlog {
            // As the workers' group session in backlog mode: the stop must not end the membership.
            let (session, poll) = self.group_timeouts_ms();
            overrides.push(format!("consumer.session.timeout.ms={session}"));
            overrides.push(format!("consumer.max.poll.interval.ms={poll}"));
        }
        overrides.extend(a.peer_config.iter().cloned());
        let c = crate::peer::kafka_streams_command(
            jar,
            &crate::peer::PeerTopics {
                bootstrap: &a.bootstrap,
                registry_url: &a.registry_url,
                input,
                output,
                application_id: &application_id,
                state_dir: &state_dir,
            },
            &a.peer_heap,
            &overrides,
        );
        self.spawn("kafka-streams", c)
    }

    fn spawn_full(
        &self,
        input: &str,
        routed: &str,
        requests: &str,
        outcomes: &str,
        held: &str,
    ) -> anyhow::Result<Vec<Proc>> {
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
        let c = self.worker(
            "reflex-enricher",
            routed,
            WorkerSettings {
                enricher_bindings_file: Some(bindings),
                enricher_output_topic: Some(requests.to_string()),
                enricher_redis_url: Some(self.args.redis_url.clone()),
                ..Default::default()
            },
        )?;
        let enricher = self.spawn("enricher", c)?;
        let actor_config = self.work.join("actor.toml");
        std::fs::write(
            &actor_config,
            format!(
                "[actor]\nredis_prefix = \"{prefix}\"\noutcomes_topic = \"{outcomes}\"\nheld_topic = \"{held}\"\n\n\
                 [[actor.action]]\nname = \"note\"\nkind = \"log\"\nmessage = \"crash loop on {{{{ target }}}} (event {{{{ event_id }}}})\"\n",
                prefix = unique("bench"),
            ),
        )?;
        let mut c = self.worker(
            "reflex-actor",
            requests,
            WorkerSettings {
                actor_redis_url: Some(self.args.redis_url.clone()),
                ..Default::default()
            },
        )?;
        c.arg("--config").arg(&actor_config);
        let actor = self.spawn("actor", c)?;
        Ok(vec![router, enricher, actor])
    }

    fn check_alive(&self, workers: &mut [Proc]) -> anyhow::Result<()> {
        for w in workers {
            if let Some(status) = w.exit_status() {
                bail!("{} exited ({status}); its log: {}", w.name, w.log.display());
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
    let failed = Arc::new(AtomicU64::new(0));
    let tracker = {
        let failed = failed.clone();
        Tracker::new(move |(), delivery| {
            if delivery.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let pacer = Pacer::new(rate);
    let mut n = 0u64;
    while n < events {
        let due = pacer.due(events);
        while n < due {
            let k = (n % keys.len() as u64) as usize;
            let id = format!("{EVENT_PREFIX}{n}");
            let record = FutureRecord::to(topic)
                .key(keys[k].as_str())
                .payload(payloads[k].as_slice())
                .headers(headers(&id));
            sent_us[n as usize].store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            if let Err(e) = tracker.send(producer, record, ()).await {
                eprintln!("produce to {topic}: {e}");
                failed.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        if rate.is_some() && n < events {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tracker.finish().await;
    failed.load(Ordering::Relaxed)
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

/// Samples the summed `VmRSS` of `pids` every 250 ms, timed from `start` (the window's start).
async fn sample_rss(pids: Vec<u32>, samples: Arc<Mutex<Vec<RssSample>>>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // A late tick (busy machine) is taken late, not made up for with a burst of samples.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let kb: u64 = pids.iter().map(|p| status_kb(*p, "VmRSS:")).sum();
        samples.lock().unwrap().push(RssSample {
            t_s: start.elapsed().as_secs_f64(),
            mb: kb as f64 / 1024.0,
        });
    }
}
