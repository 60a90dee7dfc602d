//! `reflex-bench main-job`: a scenario pack end to end, what `scripts/demo` runs once the stack
//! is up and the pack's topics and schemas are in place.
//!
//! 1. starts the fake target API (in process, [`reflex_bench::target`]) and the workers as
//!    separate processes, each in its own process group so a terminal Ctrl-C reaches only this
//!    command: router, enricher, actor with the pack's configs, and reflex-reprocessor on the
//!    pack's dead-letter topics;
//! 2. publishes the pack's recorded events ([`events`]) at `--rate` for `--duration`, about 1%
//!    published twice (same ce_id: the actor must suppress them) and 0.2% poison values;
//! 3. every second reads each worker's `/metrics` and prints `reflexctl top`'s frame of the
//!    fleet with the job's own lines below ([`view`]);
//! 4. when the time is up (or on Ctrl-C) stops publishing, waits until every group has committed
//!    everything (a second Ctrl-C stops waiting), SIGTERMs the workers (they drain and exit 0),
//!    reads the outcome, held and dead-letter topics and the target's record of requests,
//!    prints the summary and CHECKS it ([`check`]): nothing lost, zero duplicate effects,
//!    remediations capped, every worker drained. Exit 0 when every check passed, 1 when one
//!    failed, 2 on an error.
//!
//! The fault suite (`faults`) runs the same [`Job`] with replicas, a supervisor and a fault.

pub mod check;
pub mod events;
pub mod guards;
pub mod policy;
pub mod view;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use rdkafka::message::{Headers as _, OwnedMessage};
use rdkafka::Message as _;
use reflex_bench::kafka;
use reflex_bench::pack::{Pack, STAGES};
use reflex_bench::proc::{describe, Proc};
use reflex_bench::sample::{cpu_seconds, status_kb};
use reflex_bench::target::Target;
use reflex_bench::worker_config::WorkerSettings;
use reflex_core::actions::{ActionOutcome, AvroCodec};
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::registry::RegistryClient;
use reflexctl::prom::Samples;
use reflexctl::top;

use check::{fmt, Evidence, Exit, Seen, Verdict};
use events::{Generator, Planned};

#[derive(Args, Debug, Clone)]
pub struct MainJobArgs {
    /// Scenario pack directory (pack.toml, topics/, router/enricher/actor.toml, recorded
    /// events).
    #[arg(long, env = "REFLEX_PACK", default_value = "examples/crash-loop")]
    pub pack: PathBuf,
    #[arg(long, env = "REFLEX_TEST_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    #[arg(
        long,
        env = "REFLEX_TEST_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry: String,
    /// Redis URL for the actor's state; empty or `none`: in process (one replica, not shared).
    #[arg(long, env = "REFLEX_TEST_REDIS_URL", default_value = "")]
    pub redis: String,
    /// Events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Where worker logs, target.log and summary.json go (default: a new temporary directory).
    #[arg(long, env = "REFLEX_MAIN_JOB_LOGS")]
    pub logs: Option<PathBuf>,
    /// Run id in ce_ids and the actor's Redis prefix (default: the time and a random number).
    #[arg(long, default_value = "")]
    pub run_id: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of events published twice with the same ce_id.
    #[arg(long, default_value_t = 0.01)]
    pub dup_ratio: f64,
    /// Share of events replaced by a value that is not Avro.
    #[arg(long, default_value_t = 0.002)]
    pub poison_ratio: f64,
    /// Seconds to wait for the pipeline to drain after publishing.
    #[arg(long, default_value_t = 180.0)]
    pub settle_timeout: f64,
    /// Fake target port (0: a free one; a taken port also gets a free one); the pack's actor
    /// URLs (127.0.0.1:18080) are rewritten to it.
    #[arg(long, default_value_t = 18080)]
    pub target_port: u16,
    /// Appended to every worker's group id.
    #[arg(long, default_value = "")]
    pub group_suffix: String,
    /// Directory with the worker binaries (default: the directory of this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

impl MainJobArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.rate <= 0.0 || self.duration <= 0.0 {
            bail!("--rate and --duration must be positive");
        }
        if !(0.0..=1.0).contains(&self.dup_ratio) || !(0.0..=1.0).contains(&self.poison_ratio) {
            bail!("--dup-ratio and --poison-ratio are shares between 0 and 1");
        }
        Ok(())
    }
}

pub async fn run(args: MainJobArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let job = Arc::new(Job::new(args, Options::default())?);
    let code = job.run(None).await?;
    Ok(ExitCode::from(code))
}

/// What the fault suite changes.
#[derive(Default)]
pub struct Options {
    /// Replicas per stage (default 1).
    pub replicas: BTreeMap<String, usize>,
    /// Restart a worker that exits on its own, as Kubernetes would (the check reports it).
    pub supervise: bool,
    /// Requests retried with their key are absorbed by the target, not duplicate effects.
    pub repeats_allowed: bool,
    /// Parked keys in Redis, shared by the replicas.
    pub state_url: Option<String>,
    /// Live view and supervision period (1 s).
    pub interval: Option<Duration>,
    /// Use the rules' own verdict for drops instead of the workers' counters.
    pub drop_oracle: bool,
}

/// One worker process of the fleet, keyed `stage` (replica 1) or `stage#n`.
pub struct Slot {
    pub key: String,
    pub stage: String,
    pub replica: usize,
    pub proc: Proc,
    /// Its latest `/metrics`, for the checks and the fault suite.
    pub metrics: Samples,
    /// Stopped on purpose (a fault, a scale-down): its exit is not a failure by itself.
    pub expected_exit: bool,
    pub killed: bool,
    /// CPU seconds and peak RSS (MiB), taken before it is stopped.
    pub figures: Option<(f64, f64)>,
}

#[derive(Default)]
pub struct Fleet {
    pub slots: Vec<Slot>,
    pub retired: Vec<Slot>,
    pub restarts: Vec<String>,
}

impl Fleet {
    fn index(&self, key: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.key == key)
    }
}

pub struct Job {
    pub args: MainJobArgs,
    pub pack: Pack,
    pub run_id: String,
    pub logs: PathBuf,
    pub options: Options,
    pub fleet: tokio::sync::Mutex<Fleet>,
    pub target: Mutex<Option<Arc<Target>>>,
    pub generator: Mutex<Option<Arc<Generator>>>,
    pub plan: Mutex<Vec<Planned>>,
    pub fault_note: Mutex<String>,
    state: Mutex<String>,
    bin_dir: PathBuf,
    http: reqwest::Client,
    stopping: AtomicBool,
    interrupts: AtomicUsize,
    /// Ready to publish: the fault task waits for it.
    pub started: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn log(msg: &str) {
    eprintln!("[main-job] {msg}");
}

impl Job {
    pub fn new(mut args: MainJobArgs, options: Options) -> anyhow::Result<Self> {
        if args.redis == "none" {
            args.redis.clear();
        }
        let pack = Pack::load(&args.pack)?;
        let run_id = if args.run_id.is_empty() {
            format!(
                "{}{:03}",
                chrono::Utc::now().format("%H%M%S"),
                rand::random_range(0..1000)
            )
        } else {
            args.run_id.clone()
        };
        let logs = match &args.logs {
            Some(l) => l.clone(),
            None => std::env::temp_dir().join(reflex_testkit::unique("reflex-main-job")),
        };
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this binary has no directory")?
                .to_path_buf(),
        };
        let state = if args.redis.is_empty() {
            IN_PROCESS.to_string()
        } else {
            format!("Redis {}", args.redis)
        };
        Ok(Self {
            args,
            pack,
            run_id,
            logs,
            options,
            fleet: Default::default(),
            target: Mutex::new(None),
            generator: Mutex::new(None),
            plan: Mutex::new(Vec::new()),
            fault_note: Mutex::new(String::new()),
            state: Mutex::new(state),
            bin_dir,
            http: reqwest::Client::new(),
            stopping: AtomicBool::new(false),
            interrupts: AtomicUsize::new(0),
            started: tokio::sync::Notify::new(),
        })
    }

    pub fn interval(&self) -> Duration {
        self.options.interval.unwrap_or(Duration::from_secs(1))
    }

    pub fn generator(&self) -> Option<Arc<Generator>> {
        self.generator.lock().unwrap().clone()
    }

    pub fn target(&self) -> Option<Arc<Target>> {
        self.target.lock().unwrap().clone()
    }

    fn group(&self, stage: &str) -> String {
        let base = self
            .pack
            .stage(stage)
            .map(|s| s.group.clone())
            .unwrap_or_default();
        base + &self.args.group_suffix
    }

    pub fn inputs(&self, stage: &str) -> Vec<String> {
        self.pack
            .stage(stage)
            .map(|s| s.inputs.clone())
            .unwrap_or_default()
    }

    /// Topics whose records end events: outcomes, held requests, dead letters, and the
    /// reprocessor's exhausted topics (`<topic>.exhausted`) of declared topics that exist.
    fn end_topics(&self) -> anyhow::Result<Vec<String>> {
        let existing = kafka::topic_names(&self.args.bootstrap)?;
        let mut names = vec![
            self.pack.outcomes_topic.clone(),
            self.pack.held_topic.clone(),
        ];
        names.extend(self.pack.dead_letter_topics());
        for t in &self.pack.topics {
            names.push(format!(
                "{}{}",
                t.name,
                reflex_core::topics::EXHAUSTED_SUFFIX
            ));
        }
        let mut seen = HashSet::new();
        names.retain(|n| existing.contains(n) && seen.insert(n.clone()));
        Ok(names)
    }

    // -- workers

    /// The command of `stage`, with the settings the main job gives every worker. Every
    /// config key the main job sets is in [`WorkerSettings`].
    fn command(&self, stage: &str) -> anyhow::Result<Command> {
        let binary = self.bin_dir.join(format!("reflex-{stage}"));
        if !binary.exists() {
            bail!(
                "{} is missing: build the workers first (`cargo build --workspace --bins`)",
                binary.display()
            );
        }
        let info = self
            .pack
            .stage(stage)
            .ok_or_else(|| anyhow!("the pack has no {stage} stage"))?;
        let mut settings = WorkerSettings {
            bootstrap: Some(self.args.bootstrap.clone()),
            registry_url: Some(self.args.registry.clone()),
            log_format: Some("json".into()),
            // Lag in the view every second; a SIGKILLed member's partitions move on after 10 s;
            // commits every 0.5 s so the drain check settles quickly; the drain grace is below
            // the 60 s this job waits for an exit.
            lag_interval: Some(Duration::from_secs(1)),
            session_timeout: Some(Duration::from_secs(10)),
            commit_interval: Some(Duration::from_millis(500)),
            drain_grace: Some(Duration::from_secs(8)),
            state_url: self.options.state_url.clone(),
            ..Default::default()
        };
        if !self.args.group_suffix.is_empty() || info.config.is_none() {
            settings.group_id = Some(self.group(stage));
        }
        let mut config = info.config.clone();
        match stage {
            "actor" => {
                config = Some(self.actor_config()?);
                settings.actor_state_backend = Some("auto".into());
                settings.actor_redis_url = Some(self.args.redis.clone());
                settings.actor_redis_prefix =
                    Some(format!("{}-{}", self.actor_redis_prefix(), self.run_id));
            }
            "reprocessor" => settings.input_topics = Some(info.inputs.clone()),
            "router" if !self.pack.windowed_rules.is_empty() => {
                // Stateful rules keep their windows in the run's Redis (as the actor its
                // claims), under this run's prefix: another run's throttles must not
                // suppress its firings.
                if settings.state_url.is_none() && !self.args.redis.is_empty() {
                    settings.state_url = Some(self.args.redis.clone());
                }
                settings.router_state_prefix = Some(format!("reflex-main-job-{}", self.run_id));
            }
            _ => {}
        }
        let mut c = Command::new(binary);
        if let Some(config) = config {
            c.arg("--config").arg(config);
        }
        settings.apply(&mut c);
        Ok(c)
    }

    fn actor_redis_prefix(&self) -> String {
        let path = self.pack.dir.join("actor.toml");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
            .and_then(|v| {
                v.get("actor")?
                    .get("redis_prefix")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "reflex".into())
    }

    /// The pack's actor.toml, or a copy calling the fake target where it really listens.
    fn actor_config(&self) -> anyhow::Result<PathBuf> {
        let src = self.pack.dir.join("actor.toml");
        let port = self.target().map(|t| t.addr.port()).unwrap_or(18080);
        if port == 18080 {
            return Ok(src);
        }
        let dst = self.logs.join("actor.toml");
        let text = std::fs::read_to_string(&src)?;
        std::fs::write(
            &dst,
            text.replace("127.0.0.1:18080", &format!("127.0.0.1:{port}")),
        )?;
        Ok(dst)
    }

    /// Starts replica `replica` (1-based) of `stage`; replaces (retires) a slot of that key.
    pub async fn spawn(&self, stage: &str, replica: usize) -> anyhow::Result<String> {
        let key = if replica == 1 {
            stage.to_string()
        } else {
            format!("{stage}#{replica}")
        };
        let log_path = self.logs.join(format!("{}.log", key.replace('#', "-")));
        let proc = Proc::spawn(&key, self.command(stage)?, &log_path)?;
        let slot = Slot {
            key: key.clone(),
            stage: stage.to_string(),
            replica,
            proc,
            metrics: Samples::default(),
            expected_exit: false,
            killed: false,
            figures: None,
        };
        let mut fleet = self.fleet.lock().await;
        match fleet.index(&key) {
            Some(i) => {
                let old = std::mem::replace(&mut fleet.slots[i], slot);
                fleet.retired.push(old);
            }
            None => fleet.slots.push(slot),
        }
        Ok(key)
    }

    /// Waits until each of `keys` answers /readyz.
    pub async fn wait_ready(&self, keys: &[String], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for key in keys {
            loop {
                let (addr, alive, tail, log) = {
                    let mut fleet = self.fleet.lock().await;
                    let i = fleet.index(key).ok_or_else(|| anyhow!("no worker {key}"))?;
                    let p = &mut fleet.slots[i].proc;
                    (p.http_addr(), p.alive(), p.log_tail(3000), p.log.clone())
                };
                if let Some(addr) = addr {
                    let ready = self
                        .http
                        .get(format!("http://{addr}/readyz"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ready {
                        break;
                    }
                }
                if !alive || Instant::now() > deadline {
                    bail!(
                        "{key} did not become ready; end of {}:\n{tail}",
                        log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    async fn start_workers(&self) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        for stage in STAGES {
            if stage == "reprocessor" && !self.bin_dir.join("reflex-reprocessor").exists() {
                log("reflex-reprocessor is not built: dead letters stay on the .dlq topics");
                continue;
            }
            let replicas = self.options.replicas.get(stage).copied().unwrap_or(1);
            for replica in 1..=replicas {
                keys.push(self.spawn(stage, replica).await?);
            }
        }
        self.wait_ready(&keys, Duration::from_secs(90)).await?;
        let mut fleet = self.fleet.lock().await;
        if let Some(i) = fleet.index("actor") {
            if fleet.slots[i]
                .proc
                .own_log()
                .contains("\"state_backend\":\"memory\"")
            {
                *self.state.lock().unwrap() = IN_PROCESS.to_string();
                log(&format!(
                    "the actor keeps its state IN PROCESS: {}",
                    if self.args.redis.is_empty() {
                        "no Redis was given".to_string()
                    } else {
                        format!("Redis at {} did not answer", self.args.redis)
                    }
                ));
            }
        }
        let list: Vec<String> = fleet
            .slots
            .iter_mut()
            .map(|s| {
                format!(
                    "{} pid {} on {}",
                    s.key,
                    s.proc.pid(),
                    s.proc.http_addr().unwrap_or_default()
                )
            })
            .collect();
        log(&format!("workers ready: {}", list.join(", ")));
        Ok(())
    }

    /// Signals one worker and waits for its exit (kept for the check: a SIGKILLed one is not
    /// expected to exit 0).
    pub async fn kill(&self, key: &str, signal: i32) -> anyhow::Result<String> {
        {
            let mut fleet = self.fleet.lock().await;
            let i = fleet.index(key).ok_or_else(|| anyhow!("no worker {key}"))?;
            let s = &mut fleet.slots[i];
            s.expected_exit = true;
            s.killed = signal == libc::SIGKILL;
            s.proc.signal(signal)?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let mut fleet = self.fleet.lock().await;
                let i = fleet.index(key).ok_or_else(|| anyhow!("no worker {key}"))?;
                let p = &mut fleet.slots[i].proc;
                if let Some(status) = p.exit_status() {
                    return Ok(describe(Some(status)));
                }
                if Instant::now() > deadline {
                    let status = p.stop(libc::SIGKILL, Duration::from_secs(5)).await;
                    return Ok(describe(Some(status)));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Scale down: SIGTERM the replica (it drains) and retire it.
    pub async fn remove(&self, key: &str) -> anyhow::Result<()> {
        self.kill(key, libc::SIGTERM).await?;
        let mut fleet = self.fleet.lock().await;
        if let Some(i) = fleet.index(key) {
            let slot = fleet.slots.remove(i);
            fleet.retired.push(slot);
        }
        Ok(())
    }

    /// Keys of the live slots of `stage` (all stages: None).
    pub async fn keys(&self, stage: Option<&str>) -> Vec<String> {
        let fleet = self.fleet.lock().await;
        fleet
            .slots
            .iter()
            .filter(|s| stage.is_none_or(|st| s.stage == st))
            .map(|s| s.key.clone())
            .collect()
    }

    /// Reads every live worker's /metrics with `reflexctl top`'s reader: the readings feed the
    /// live view, and each slot keeps its latest samples (a worker that is starting or stopping
    /// keeps the ones before).
    pub async fn scrape(&self) -> Vec<top::Reading> {
        let (keys, sources): (Vec<String>, Vec<top::Source>) = {
            let mut fleet = self.fleet.lock().await;
            fleet
                .slots
                .iter_mut()
                .filter_map(|s| Some((s.key.clone(), top::Source::metrics(&s.proc.http_addr()?))))
                .unzip()
        };
        let readings = top::read_all(&self.http, &sources, Duration::from_secs(2)).await;
        let mut fleet = self.fleet.lock().await;
        // A `/metrics` source gives one reading, in the sources' order.
        for (key, reading) in keys.iter().zip(&readings) {
            if let (Ok(samples), Some(i)) = (&reading.result, fleet.index(key)) {
                fleet.slots[i].metrics = samples.clone();
            }
        }
        readings
    }

    /// Uncommitted records per stage (replicas share their group).
    pub async fn lags(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let mut stages: Vec<String> = self
            .fleet
            .lock()
            .await
            .slots
            .iter()
            .map(|s| s.stage.clone())
            .collect();
        stages.dedup();
        let wanted: Vec<(String, String, Vec<String>)> = stages
            .into_iter()
            .map(|s| (s.clone(), self.group(&s), self.inputs(&s)))
            .collect();
        let bootstrap = self.args.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = kafka::lag_reader(&bootstrap)?;
            let mut out = BTreeMap::new();
            for (stage, group, inputs) in wanted {
                out.insert(stage, kafka::uncommitted(&mut reader, &group, &inputs)?);
            }
            Ok::<_, anyhow::Error>(out)
        })
        .await?
    }

    // -- the run

    /// Locks waited and approvals pending, from the actors' latest `/metrics`.
    async fn guards(&self) -> guards::Guards {
        let fleet = self.fleet.lock().await;
        guards::Guards::of(
            fleet
                .slots
                .iter()
                .filter(|s| s.stage == "actor")
                .map(|s| &s.metrics),
        )
    }

    /// The view's lines only the job knows: publishing and the target's requests.
    /// Per stateful rule of the pack: (firings, suppressed events), summed over the routers'
    /// latest `/metrics`.
    async fn windows(&self) -> BTreeMap<String, (u64, u64)> {
        let fleet = self.fleet.lock().await;
        self.pack
            .windowed_rules
            .iter()
            .map(|rule| {
                let sum = |name: &str| -> u64 {
                    fleet
                        .slots
                        .iter()
                        .filter(|s| s.stage == "router")
                        .map(|s| s.metrics.total(name, &[("rule", rule)]) as u64)
                        .sum()
                };
                (
                    rule.clone(),
                    (
                        sum(reflex_core::metrics::RULE_FIRINGS),
                        sum(reflex_core::metrics::RULE_SUPPRESSED),
                    ),
                )
            })
            .collect()
    }

    fn progress(&self) -> view::Progress {
        let target = self.target().map(|t| t.stats()).unwrap_or_default();
        let mut progress = view::Progress {
            duration_s: self.args.duration,
            rate: self.args.rate,
            requests: target.requests,
            keys: target.keys,
            repeated_keys: target.repeated_keys,
            ..Default::default()
        };
        if let Some(g) = self.generator() {
            let p = &g.published;
            if let Some(started) = p.started.get() {
                progress.publishing_s = match p.ended.get() {
                    Some(ended) => (*ended - *started).as_secs_f64(),
                    None => started.elapsed().as_secs_f64(),
                };
            }
            if self.stopping.load(Ordering::Relaxed) {
                progress.draining_s =
                    Some(p.ended.get().map_or(0.0, |e| e.elapsed().as_secs_f64()));
            }
            progress.sent = p.sent.load(Ordering::Relaxed);
            progress.acked = p.acked_total();
            progress.errors = p.errors.load(Ordering::Relaxed);
        }
        progress
    }

    /// Runs the job; `fault` (the fault suite's) runs alongside the load. Returns the exit
    /// code (0 passed, 1 a check failed) and leaves summary.json in the logs directory.
    pub async fn run(
        self: &Arc<Self>,
        fault: Option<tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<u8> {
        let result = self.run_inner(fault).await;
        // Whatever happened, no worker outlives the job.
        let mut fleet = self.fleet.lock().await;
        let fleet = &mut *fleet;
        for s in fleet.slots.iter_mut().chain(fleet.retired.iter_mut()) {
            if s.proc.alive() {
                s.proc.stop(libc::SIGKILL, Duration::from_secs(5)).await;
            }
        }
        result
    }

    async fn run_inner(
        self: &Arc<Self>,
        mut fault: Option<tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<u8> {
        let a = &self.args;
        let bootstrap = a.bootstrap.clone();
        let job = self.clone();
        let (end_topics, start_marks) = tokio::task::spawn_blocking(move || {
            let topics = job.end_topics()?;
            let marks = kafka::high_watermarks(&bootstrap, &topics)?;
            Ok::<_, anyhow::Error>((topics, marks))
        })
        .await??;

        let target = Target::start(a.target_port, Some(&self.logs.join("target.log"))).await?;
        *self.target.lock().unwrap() = Some(Arc::new(target));
        self.start_workers().await?;

        let registry = RegistryClient::new(&a.registry, Duration::from_secs(10), Duration::ZERO);
        let generator =
            Arc::new(Generator::new(&self.pack, &a.bootstrap, &registry, &self.run_id).await?);
        let count = (a.rate * a.duration).round() as u64;
        let plan = events::plan(
            a.seed,
            count,
            generator.recorded(),
            a.poison_ratio,
            a.dup_ratio,
        );
        *self.plan.lock().unwrap() = plan.clone();
        *self.generator.lock().unwrap() = Some(generator.clone());
        self.watch_signals(generator.clone())?;
        let window_start_ms = now_ms();
        let publishing = {
            let g = generator.clone();
            let rate = a.rate;
            tokio::spawn(async move { g.run(&plan, rate).await })
        };
        self.started.notify_waiters();

        let mut tracker = top::Tracker::default();
        let mut last_frame: Option<Instant> = None;
        let mut settled = 0;
        let mut settle_deadline: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.interval()).await;
            let seen = tracker.observe(self.scrape().await);
            // The fault suite supervises every 500 ms; a frame a second is enough to read.
            if last_frame.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_frame = Some(Instant::now());
                let mut progress = self.progress().with(self.guards().await);
                progress.windows = self.windows().await;
                print!("{}", view::frame(&seen, &progress));
            }
            if let Some(dead) = self.exited_unexpectedly().await {
                if !self.options.supervise {
                    log(&dead);
                    break;
                }
            }
            if !publishing.is_finished() || fault.as_ref().is_some_and(|f| !f.is_finished()) {
                continue;
            }
            if let Some(f) = fault.take() {
                let _ = f.await;
            }
            self.stopping.store(true, Ordering::Relaxed);
            let deadline = *settle_deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_secs_f64(a.settle_timeout));
            if self.interrupts.load(Ordering::Relaxed) >= 2 {
                log("second Ctrl-C: not waiting for the pipeline to drain");
                break;
            }
            match self.lags().await {
                Ok(lags) if lags.values().all(|v| *v == 0) => settled += 1,
                Ok(_) => settled = 0,
                Err(e) => {
                    log(&format!("lag: {e:#}"));
                    settled = 0;
                }
            }
            if settled >= 2 {
                break;
            }
            if Instant::now() > deadline {
                let lags = self.lags().await.unwrap_or_default();
                log(&format!(
                    "the pipeline did not drain within {} s: uncommitted {lags:?}",
                    a.settle_timeout
                ));
                break;
            }
        }
        publishing.abort();
        generator.settle().await;
        let seen = tracker.observe(self.scrape().await);
        let guards = self.guards().await;
        let windows = self.windows().await;
        let mut progress = self.progress().with(guards);
        progress.windows = windows.clone();
        print!("{}", view::frame(&seen, &progress));
        let dropped_by_workers = {
            let fleet = self.fleet.lock().await;
            fleet
                .slots
                .iter()
                .filter(|s| s.stage == "router" || s.stage == "enricher")
                .map(|s| s.metrics.total("reflex_events_dropped_total", &[]) as u64)
                .sum()
        };
        let window_end_ms = now_ms();
        let exits = self.stop_workers().await;
        let lags = self.lags().await.unwrap_or_default();
        let target_stats = self.target().map(|t| t.stats()).unwrap_or_default();
        self.target.lock().unwrap().take();

        let bootstrap = a.bootstrap.clone();
        let messages: Vec<OwnedMessage> = tokio::task::spawn_blocking(move || {
            let end = kafka::high_watermarks(&bootstrap, &end_topics)?;
            Ok::<_, anyhow::Error>(kafka::read_range(
                &bootstrap,
                &start_marks,
                &end,
                Duration::from_secs(30),
            )?)
        })
        .await??;
        let records = self.classify(&messages, &registry).await;

        let drop_oracle = if self.options.drop_oracle {
            Some(self.drop_oracle().await?)
        } else {
            None
        };
        let p = &generator.published;
        let evidence = Evidence {
            published: p
                .acked
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            publish_errors: p.errors.load(Ordering::Relaxed),
            first_error: p.first_error.lock().unwrap().clone(),
            poison: p.poison.lock().unwrap().clone(),
            duplicated: p.duplicated.lock().unwrap().len(),
            injected: p.injected.lock().unwrap().clone(),
            records,
            dropped_by_workers,
            drop_oracle,
            lags,
            target: target_stats,
            repeats_allowed: self.options.repeats_allowed,
            actions: self.pack.actions.clone(),
            window_start_ms,
            window_end_ms,
            exits,
            throttles: self.pack.throttles.clone(),
            windows,
        };
        let verdict = check::check(&evidence);
        self.report(&verdict, &generator, &guards).await?;
        Ok(if verdict.passed { 0 } else { 1 })
    }

    /// SIGINT/SIGTERM: the first stops publishing (then drain and check), the second stops
    /// waiting for the drain.
    fn watch_signals(self: &Arc<Self>, generator: Arc<Generator>) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let job = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                job.interrupts.fetch_add(1, Ordering::Relaxed);
                job.stopping.store(true, Ordering::Relaxed);
                generator.published.stop.store(true, Ordering::Relaxed);
            }
        });
        Ok(())
    }

    /// A worker that exited without being stopped: restarted when supervising (as Kubernetes
    /// would; the summary lists it), else the reason to stop the run.
    async fn exited_unexpectedly(&self) -> Option<String> {
        let dead: Vec<(String, String, usize, String, PathBuf)> = {
            let mut fleet = self.fleet.lock().await;
            fleet
                .slots
                .iter_mut()
                .filter(|s| !s.expected_exit)
                .filter_map(|s| {
                    let status = s.proc.exit_status()?;
                    s.expected_exit = true;
                    Some((
                        s.key.clone(),
                        s.stage.clone(),
                        s.replica,
                        describe(Some(status)),
                        s.proc.log.clone(),
                    ))
                })
                .collect()
        };
        let (key, _, _, code, log_path) = dead.first()?.clone();
        if !self.options.supervise {
            return Some(format!(
                "{key} exited with {code}; see {}",
                log_path.display()
            ));
        }
        for (key, stage, replica, code, log_path) in dead {
            self.fleet
                .lock()
                .await
                .restarts
                .push(format!("{key} exited {code}"));
            log(&format!(
                "{key} exited with {code}: restarting it; see {}",
                log_path.display()
            ));
            if let Err(e) = self.spawn(&stage, replica).await {
                log(&format!("restarting {key}: {e:#}"));
            }
        }
        None
    }

    /// SIGTERMs every worker at once (they drain), then waits for each; returns how each
    /// worker that had to drain ended. CPU and peak RSS are taken just before.
    async fn stop_workers(&self) -> Vec<Exit> {
        let mut fleet = self.fleet.lock().await;
        for s in fleet.slots.iter_mut() {
            let pid = s.proc.pid();
            s.figures = Some((cpu_seconds(pid), status_kb(pid, "VmHWM:") as f64 / 1024.0));
            if s.proc.alive() {
                let _ = s.proc.signal(libc::SIGTERM);
            }
        }
        let mut exits = Vec::new();
        for s in fleet.slots.iter_mut() {
            let status = s.proc.wait(Duration::from_secs(60)).await;
            exits.push(Exit {
                name: s.key.clone(),
                code: describe(Some(status)),
                must_drain: true,
            });
        }
        for s in fleet.retired.iter_mut() {
            let status = s.proc.wait(Duration::from_secs(1)).await;
            // Stopped during the run: SIGTERMed ones (scale-down) must have drained.
            exits.push(Exit {
                name: format!("{} (stopped during the run)", s.key),
                code: describe(Some(status)),
                must_drain: !s.killed && !s.expected_exit,
            });
        }
        exits
    }

    /// The records of this run among `messages`.
    async fn classify(&self, messages: &[OwnedMessage], registry: &RegistryClient) -> Vec<Seen> {
        let prefix = format!("mj-{}-", self.run_id);
        let dlqs: HashSet<String> = self.pack.dead_letter_topics().into_iter().collect();
        let header = |m: &OwnedMessage, name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .filter(|h| h.key == name)
                .last()
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let event_id = |m: &OwnedMessage| {
            [ce::CAUSATION_ID, ce::ID]
                .into_iter()
                .filter_map(|h| header(m, h))
                .find(|v| v.starts_with(&prefix))
        };
        let mut out = Vec::new();
        for m in messages {
            if m.topic() == self.pack.outcomes_topic {
                let Some(o) = self
                    .decode_outcome(m.payload().unwrap_or_default(), registry)
                    .await
                else {
                    continue;
                };
                if !o.event_id.starts_with(&prefix) {
                    continue;
                }
                let result = serde_json::to_value(o.result)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                out.push(Seen::Outcome {
                    event_id: o.event_id,
                    action: o.action,
                    result,
                    idempotency_key: o.idempotency_key,
                    // A request held for a human decision ends the job's accounting there
                    // (like HELD): nobody decides during the run.
                    last: header(m, reflex_actor::FINAL_HEADER).as_deref() == Some("true")
                        || o.result == reflex_core::actions::ActionResult::PendingApproval,
                    rule: o.rule,
                    target: o.target,
                });
            } else if let Some(eid) = event_id(m) {
                if dlqs.contains(m.topic()) {
                    out.push(Seen::DeadLetter {
                        event_id: eid,
                        class: header(m, rh::ERROR_CLASS).unwrap_or_else(|| "?".into()),
                    });
                } else {
                    out.push(Seen::Held {
                        topic: m.topic().to_string(),
                    });
                }
            }
        }
        out
    }

    async fn decode_outcome(
        &self,
        value: &[u8],
        registry: &RegistryClient,
    ) -> Option<ActionOutcome> {
        let frame = reflex_core::wire::decode_frame(value).ok()?;
        let schema = registry.schema_by_id(frame.schema_id).await.ok()?;
        AvroCodec::<ActionOutcome>::decode_with(&schema.fast, value).ok()
    }

    /// ce_ids of this run's events that the pack's rules drop (or that reach no action), from
    /// `reflexctl rules test` run in process over the recorded events the plan drew.
    async fn drop_oracle(&self) -> anyhow::Result<HashSet<String>> {
        let args = reflexctl::rules_test::RulesTestArgs {
            events: Some(self.pack.events_file.clone()),
            id: "e".into(),
            ..reflexctl::rules_test::RulesTestArgs::for_pack(self.pack.dir.clone())
        };
        let report = reflexctl::rules_test::shadow(&args).await?;
        std::fs::write(self.logs.join("rules-test.txt"), &report)?;
        let ends_unrecorded = unrecorded_events(&report);
        let plan = self.plan.lock().unwrap();
        Ok(plan
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.poison && ends_unrecorded.contains(&p.recorded))
            .map(|(n, _)| format!("mj-{}-{n}", self.run_id))
            .collect())
    }

    /// Prints the summary and writes summary.json.
    async fn report(
        &self,
        v: &Verdict,
        generator: &Generator,
        guards: &guards::Guards,
    ) -> anyhow::Result<()> {
        let p = &generator.published;
        let secs = match (p.started.get(), p.ended.get()) {
            (Some(s), Some(e)) => (*e - *s).as_secs_f64(),
            (Some(s), None) => s.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        let sent = p.sent.load(Ordering::Relaxed);
        let fleet = self.fleet.lock().await;
        let mut out = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "== main job summary (run {}, pack {}, state {})",
            self.run_id,
            self.pack.name,
            self.state.lock().unwrap()
        );
        let _ = writeln!(
            out,
            "published   {} records in {secs:.1} s ({:.0}/s); {} published twice (same ce_id), {} poison",
            fmt(sent),
            sent as f64 / secs.max(1e-9),
            v.duplicated,
            v.poison
        );
        let outcomes: Vec<String> = v
            .outcomes
            .iter()
            .map(|(k, n)| {
                let (a, r) = k.split_once('/').unwrap_or((k, ""));
                format!("{a} {} {}", r.to_lowercase(), fmt(*n))
            })
            .collect();
        let _ = writeln!(out, "outcomes    {}", outcomes.join(", "));
        let _ = writeln!(
            out,
            "suppressed  {} duplicates by idempotency key",
            fmt(v.suppressed)
        );
        if let Some(line) = policy::summary_line(&v.outcomes) {
            let _ = writeln!(out, "{line}");
        }
        for (rule, (fired, suppressed)) in &v.windows {
            let bound = v
                .per_target
                .get(rule)
                .map(|(most, targets)| {
                    format!(
                        "; at most {most} per target over {} target{}",
                        fmt(*targets as u64),
                        if *targets == 1 { "" } else { "s" }
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "window      {rule}: fired {}, suppressed {}{bound}",
                fmt(*fired),
                fmt(*suppressed)
            );
        }
        let classes: Vec<String> = v
            .dead_classes
            .iter()
            .map(|(c, n)| format!("{c} {}", fmt(*n)))
            .collect();
        let held: Vec<String> = v
            .held_records
            .iter()
            .map(|(t, n)| format!("{t} {}", fmt(*n)))
            .collect();
        let _ = writeln!(
            out,
            "dead letters {}{}",
            if classes.is_empty() {
                "none".into()
            } else {
                classes.join(", ")
            },
            if held.is_empty() {
                String::new()
            } else {
                format!("; held records {}", held.join(", "))
            }
        );
        let t = &v.target;
        let _ = writeln!(
            out,
            "target      {} requests, {} keys, {} repeated",
            fmt(t.requests),
            fmt(t.keys),
            t.repeated_keys
        );
        let figures: Vec<String> = fleet
            .slots
            .iter()
            .filter_map(|s| {
                let (cpu, rss) = s.figures?;
                Some(format!("{} {cpu:.1} s CPU, {rss:.0} MiB peak RSS", s.key))
            })
            .collect();
        let _ = writeln!(out, "{}", guards::summary_line(guards));
        let _ = writeln!(out, "workers     {}", figures.join("; "));
        if v.extra > 0 {
            let _ = writeln!(
                out,
                "note        {} extra terminal records (an event fanned out to several actions, or replayed)",
                fmt(v.extra)
            );
        }
        for r in &fleet.restarts {
            let _ = writeln!(out, "restarted   {r}");
        }
        let _ = writeln!(out, "logs        {}", self.logs.display());
        for c in &v.checks {
            let _ = writeln!(out, "{}  {}", if c.ok { "PASS" } else { "FAIL" }, c.check);
        }
        let _ = writeln!(
            out,
            "main job {}",
            if v.passed { "PASSED" } else { "FAILED" }
        );
        print!("{out}");

        let mut summary = serde_json::to_value(v)?;
        let workers: serde_json::Map<String, serde_json::Value> = fleet
            .slots
            .iter()
            .filter_map(|s| {
                let (cpu, rss) = s.figures?;
                Some((
                    s.key.clone(),
                    serde_json::json!({"cpu_s": cpu, "peak_rss_mb": rss}),
                ))
            })
            .collect();
        let extra = serde_json::json!({
            "run_id": self.run_id,
            "pack": self.pack.name,
            "sent": sent,
            "publish_seconds": secs,
            "restarts": fleet.restarts,
            "workers": workers,
            "guards": guards,
        });
        if let (Some(s), Some(x)) = (summary.as_object_mut(), extra.as_object()) {
            s.extend(x.clone());
        }
        std::fs::write(
            self.logs.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        Ok(())
    }
}

const IN_PROCESS: &str = "IN-PROCESS (no Redis: one actor replica, not shared or durable)";

/// Indexes (0-based) of the events in a `reflexctl rules test` report that may end with no
/// record: dropped by the router, no request bound and nothing dead-lettered, or taken by a
/// stateful rule's window (whether one fires or is suppressed depends on what else arrives
/// and when, which differs between the report's sequence and a run's).
pub fn unrecorded_events(report: &str) -> HashSet<usize> {
    let mut out = HashSet::new();
    let mut current: Option<(usize, bool)> = None;
    let close = |c: Option<(usize, bool)>, out: &mut HashSet<usize>| {
        if let Some((n, recorded)) = c {
            if !recorded {
                out.insert(n);
            }
        }
    };
    for line in report.lines() {
        if line.starts_with("clock ") {
            // Timers firing on the virtual clock: not the previous event's doing.
            close(current.take(), &mut out);
        } else if line.trim_start().starts_with("window: ") {
            if let Some((n, _)) = current {
                out.insert(n);
            }
        } else if let Some(rest) = line.strip_prefix("event ") {
            close(current.take(), &mut out);
            // "event 3 key=... ce_id=e-3": reflexctl counts from 1.
            if let Some(n) = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<usize>().ok())
            {
                current = Some((n - 1, false));
            }
        } else if line.starts_with("summary:") {
            close(current.take(), &mut out);
        } else if let Some((_, recorded)) = current.as_mut() {
            let t = line.trim_start();
            let request = t.starts_with("enricher: ") && t.contains(" -> ");
            if request || t.contains("dead letter") {
                *recorded = true;
            }
        }
    }
    close(current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn the_rules_oracle_reads_the_crash_loop_pack() {
        std::env::set_current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap();
        let args = reflexctl::rules_test::RulesTestArgs {
            id: "e".into(),
            ..reflexctl::rules_test::RulesTestArgs::for_pack("examples/crash-loop")
        };
        let report = reflexctl::rules_test::shadow(&args).await.unwrap();
        let unrecorded = unrecorded_events(&report);
        // Ten recorded events: 2 and 3 dropped by the rules (unmatched, rollout); the other
        // eight go through the per-pod throttles, so whether each fires depends on the run.
        assert_eq!(unrecorded, (0..10).collect::<HashSet<usize>>(), "{report}");
        let without_windows: String = report
            .lines()
            .filter(|l| !l.trim_start().starts_with("window: "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            unrecorded_events(&without_windows),
            HashSet::from([1, 2, 7, 8, 9]),
            "without the window lines, only events with no request or dead letter: {without_windows}"
        );
    }

    #[test]
    fn reads_drops_requests_and_dead_letters() {
        let report = "shadow run of p\n\
            event 1 key=a ce_id=e-1\n  router: dropped by rule quiet\n\
            event 2 key=b ce_id=e-2\n  router: rule r -> t\n    enricher: restart -> req (idempotency key k)\n      actor: DELETE ...\n\
            event 3 key=c ce_id=e-3\n  router: dead letter (permanent): bad\n\
            event 4 key=d ce_id=e-4\n  router: rule r -> t\n    enricher: no binding selects it\n\
            summary: 4 events\n";
        assert_eq!(unrecorded_events(report), HashSet::from([0, 3]));
    }
}
