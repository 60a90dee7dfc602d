//! `reflex-bench faults`: the fault-injection suite, started by `scripts/faults` inside a fresh
//! local stack per scenario (`scripts/stack.sh`, Redis with its append-only file on).
//!
//! Each scenario is one run of the main job ([`crate::mainjob::Job`]: the same workers, load,
//! fake target and accounting) with replicas, a supervisor that restarts a worker that exits on
//! its own, and a fault task that injects the fault once the load is flowing, then measures the
//! time to recover: from the end of the fault until the router has committed everything
//! published before it ended and every group is back under one second of load. A run where
//! replicas were killed cannot use the workers' own drop counters (a killed replica's are lost,
//! a restarted one counts again), so the events the rules drop come from the rules themselves
//! (`reflexctl rules test`, in process).
//!
//! `--list` prints the scenarios to run, `--only NAME` runs one here (writing its row.json),
//! `--report DIR` prints the table of the rows in `DIR/<scenario>/row.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use rand::{Rng as _, SeedableRng as _};
use reflex_bench::kafka;
use reflex_bench::target::Mode;
use serde::{Deserialize, Serialize};

use crate::mainjob::check::fmt;
use crate::mainjob::{Job, MainJobArgs, Options};

#[derive(Args, Debug, Clone)]
pub struct FaultsArgs {
    #[arg(long, env = "REFLEX_PACK", default_value = "examples/crash-loop")]
    pack: PathBuf,
    /// Short CI run: sigkill and target-fail at a small load.
    #[arg(long)]
    smoke: bool,
    /// Run only these (repeatable).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Events/s (default 100; smoke 40).
    #[arg(long)]
    rate: Option<f64>,
    /// Load per scenario, seconds (default 40; smoke 10).
    #[arg(long)]
    duration: Option<f64>,
    /// Broker SIGSTOP length, seconds (default 15; smoke 10).
    #[arg(long)]
    freeze: Option<f64>,
    /// Redis/registry/target outage, seconds (default 15; smoke 4).
    #[arg(long)]
    outage: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 180.0)]
    settle_timeout: f64,
    /// Print the scenarios to run, one a line, and exit.
    #[arg(long)]
    list: bool,
    /// Run this one scenario here (scripts/faults gives each a fresh stack).
    #[arg(long, conflicts_with_all = ["list", "report"])]
    only: Option<String>,
    /// Print the table of the rows in DIR/<scenario>/row.json.
    #[arg(long, value_name = "DIR", conflicts_with = "list")]
    report: Option<PathBuf>,
    /// Directory with the worker binaries (default: the directory of this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The suite's knobs once the smoke defaults are applied.
#[derive(Debug, Clone)]
struct Opts {
    rate: f64,
    duration: f64,
    freeze: Duration,
    outage: Duration,
    /// Pauses between injections are halved in smoke runs.
    pace: f64,
    seed: u64,
    settle_timeout: f64,
}

type Fault = for<'a> fn(
    &'a Arc<Job>,
    &'a Opts,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>,
>;

/// Name, what it injects, replicas per stage (dynamic group members, as a Kubernetes Deployment
/// runs them) and the fault.
struct Scenario {
    name: &'static str,
    doc: &'static str,
    replicas: &'static [(&'static str, usize)],
    fault: Fault,
}

macro_rules! fault {
    ($f:ident) => {
        |job, opts| Box::pin($f(job, opts))
    };
}

const SCENARIOS: &[Scenario] = &[
    // A SIGKILLed member sends no LeaveGroup: the broker expires its session (10 s, the main
    // job's worker settings) and hands its partitions to the others; the restarted one joins
    // as new.
    Scenario {
        name: "sigkill",
        doc: "SIGKILL of random dynamic replicas (2 per stage), each restarted",
        replicas: &[("router", 2), ("enricher", 2), ("actor", 2)],
        fault: fault!(sigkill),
    },
    Scenario {
        name: "storm",
        doc: "rebalance storm: actor replicas 1 -> 4 -> 1, one at a time",
        replicas: &[],
        fault: fault!(storm),
    },
    Scenario {
        name: "scale-down",
        doc: "actor replicas 4 -> 1 at once",
        replicas: &[("actor", 4)],
        fault: fault!(scale_down),
    },
    Scenario {
        name: "broker-restart",
        doc: "broker SIGKILLed and restarted on the same data",
        replicas: &[],
        fault: fault!(broker_restart),
    },
    Scenario {
        name: "broker-freeze",
        doc: "broker SIGSTOP then SIGCONT",
        replicas: &[],
        fault: fault!(broker_freeze),
    },
    Scenario {
        name: "redis-restart",
        doc: "Redis killed and restarted (AOF on)",
        replicas: &[],
        fault: fault!(redis_restart),
    },
    Scenario {
        name: "redis-down",
        doc: "Redis unavailable for a while",
        replicas: &[],
        fault: fault!(redis_down),
    },
    Scenario {
        name: "registry-down",
        doc: "schema registry down for a while",
        replicas: &[],
        fault: fault!(registry_down),
    },
    Scenario {
        name: "target-fail",
        doc: "target API answers 503 for a while",
        replicas: &[],
        fault: fault!(target_fail),
    },
    Scenario {
        name: "target-timeout",
        doc: "target API times out for a while",
        replicas: &[],
        fault: fault!(target_timeout),
    },
];
const SMOKE: &[&str] = &["sigkill", "target-fail"];

fn log(msg: &str) {
    eprintln!("[faults] {msg}");
}

pub async fn run(args: FaultsArgs) -> anyhow::Result<ExitCode> {
    let smoke = args.smoke;
    let opts = Opts {
        rate: args.rate.unwrap_or(if smoke { 40.0 } else { 100.0 }),
        duration: args.duration.unwrap_or(if smoke { 10.0 } else { 40.0 }),
        freeze: Duration::from_secs_f64(args.freeze.unwrap_or(if smoke { 10.0 } else { 15.0 })),
        outage: Duration::from_secs_f64(args.outage.unwrap_or(if smoke { 4.0 } else { 15.0 })),
        pace: if smoke { 0.5 } else { 1.0 },
        seed: args.seed,
        settle_timeout: args.settle_timeout,
    };
    let names: Vec<String> = if args.scenarios.is_empty() {
        if smoke {
            SMOKE.iter().map(|s| s.to_string()).collect()
        } else {
            SCENARIOS.iter().map(|s| s.name.to_string()).collect()
        }
    } else {
        args.scenarios.clone()
    };
    for n in names.iter().chain(args.only.iter()) {
        if !SCENARIOS.iter().any(|s| s.name == n) {
            bail!(
                "unknown scenario {n:?}: one of {}",
                SCENARIOS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if args.list {
        println!("{}", names.join("\n"));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(only) = &args.only {
        let sc = SCENARIOS
            .iter()
            .find(|s| s.name == only)
            .expect("checked above");
        let root = PathBuf::from(
            std::env::var("REFLEX_FAULTS_LOGS")
                .context("REFLEX_FAULTS_LOGS is not set: run through scripts/faults")?,
        );
        let row = run_scenario(sc, &args, &opts, &root.join(sc.name)).await;
        stop_restarted_services();
        let row = row?;
        // scripts/faults shows the last line of this output: the scenario's row.
        print!("{}", table(std::slice::from_ref(&row)));
        return Ok(if row.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let Some(root) = &args.report else {
        bail!("pass --list, --only NAME or --report DIR (scripts/faults runs the suite)");
    };
    let rows: Vec<Row> = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(root.join(n).join("row.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_else(|| Row::unfinished(n))
        })
        .collect();
    print!("{}", report(&rows, &args.pack, &opts, smoke));
    std::fs::write(
        root.join("faults.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("logs {}", root.display());
    let ok = !rows.is_empty() && rows.iter().all(|r| r.passed);
    println!("fault suite {}", if ok { "PASSED" } else { "FAILED" });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One scenario's result, as row.json and faults.json hold it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    scenario: String,
    passed: bool,
    events_in: u64,
    effects: u64,
    duplicate_effects: Option<u64>,
    lost: Option<u64>,
    dead_lettered: u64,
    held: u64,
    retried_keys: u64,
    recover_s: Option<f64>,
    recover_limit: f64,
    note: String,
    restarts: Vec<String>,
    failed_checks: Vec<String>,
    injected: BTreeMap<String, serde_json::Value>,
    dead_classes: BTreeMap<String, u64>,
}

impl Row {
    fn unfinished(name: &str) -> Self {
        Self {
            scenario: name.to_string(),
            passed: false,
            events_in: 0,
            effects: 0,
            duplicate_effects: None,
            lost: None,
            dead_lettered: 0,
            held: 0,
            retried_keys: 0,
            recover_s: None,
            recover_limit: 0.0,
            note: "did not finish (see its log)".into(),
            restarts: Vec::new(),
            failed_checks: Vec::new(),
            injected: BTreeMap::new(),
            dead_classes: BTreeMap::new(),
        }
    }
}

async fn run_scenario(
    sc: &Scenario,
    args: &FaultsArgs,
    opts: &Opts,
    logs: &Path,
) -> anyhow::Result<Row> {
    let env = |name: &str| {
        std::env::var(name)
            .with_context(|| format!("{name} is not set: run through scripts/faults"))
    };
    let redis = env("REFLEX_TEST_REDIS_URL")?;
    let job_args = MainJobArgs {
        pack: args.pack.clone(),
        bootstrap: env("REFLEX_TEST_BOOTSTRAP")?,
        registry: env("REFLEX_TEST_REGISTRY_URL")?,
        redis: redis.clone(),
        rate: opts.rate,
        duration: opts.duration,
        logs: Some(logs.to_path_buf()),
        run_id: String::new(),
        seed: opts.seed,
        dup_ratio: 0.01,
        poison_ratio: 0.002,
        settle_timeout: opts.settle_timeout,
        target_port: 0,
        group_suffix: String::new(),
        bin_dir: args.bin_dir.clone(),
    };
    let options = Options {
        replicas: sc
            .replicas
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        supervise: true,
        repeats_allowed: true,
        state_url: Some(redis),
        interval: Some(Duration::from_millis(500)),
        drop_oracle: true,
    };
    let job = Arc::new(Job::new(job_args, options)?);
    log(&format!("== scenario {}: {}", sc.name, sc.doc));
    let recovered: Arc<Mutex<Option<f64>>> = Arc::default();
    let fault = {
        let (job, opts, recovered, f) = (job.clone(), opts.clone(), recovered.clone(), sc.fault);
        tokio::spawn(async move {
            let note = match f(&job, &opts).await {
                Ok(note) => note,
                Err(e) => {
                    let note = format!("fault injection failed: {e:#}");
                    log(&note);
                    note
                }
            };
            *job.fault_note.lock().unwrap() = note;
            *recovered.lock().unwrap() = recover(&job, &opts).await;
        })
    };
    let code = job.run(Some(fault)).await?;
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(logs.join("summary.json")).context("summary.json")?,
    )?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let lost = summary["lost"].as_u64();
    let duplicate_effects = summary["duplicate_effects"].as_u64();
    let row = Row {
        scenario: sc.name.to_string(),
        passed: code == 0 && lost == Some(0) && duplicate_effects == Some(0),
        events_in: n(&summary["published"]),
        effects: n(&summary["target"]["applied_keys"]),
        duplicate_effects,
        lost,
        dead_lettered: n(&summary["dead_letters"]),
        held: n(&summary["held"]),
        retried_keys: n(&summary["target"]["repeated_keys"]),
        recover_s: *recovered.lock().unwrap(),
        recover_limit: opts.settle_timeout,
        note: job.fault_note.lock().unwrap().clone(),
        restarts: serde_json::from_value(summary["restarts"].clone()).unwrap_or_default(),
        failed_checks: summary["checks"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["ok"] != true)
                    .filter_map(|c| c["check"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        injected: serde_json::from_value(summary["injected"].clone()).unwrap_or_default(),
        dead_classes: serde_json::from_value(summary["dead_classes"].clone()).unwrap_or_default(),
    };
    std::fs::write(logs.join("row.json"), serde_json::to_string_pretty(&row)?)?;
    Ok(row)
}

/// Seconds from now until the router has committed everything published before now and every
/// group is back under one second's worth of uncommitted records; None past the settle timeout.
async fn recover(job: &Arc<Job>, opts: &Opts) -> Option<f64> {
    let t0 = Instant::now();
    let topic = job.pack.topic.clone();
    let bootstrap = job.args.bootstrap.clone();
    let router_group = job
        .pack
        .stage("router")
        .map(|s| s.group.clone())
        .unwrap_or_default();
    let mut marks: Option<kafka::Offsets> = None;
    while t0.elapsed().as_secs_f64() < opts.settle_timeout {
        if marks.is_none() {
            let (b, t) = (bootstrap.clone(), topic.clone());
            marks = tokio::task::spawn_blocking(move || kafka::high_watermarks(&b, &[t]))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(m) = &marks {
            let (b, t, g, m) = (
                bootstrap.clone(),
                topic.clone(),
                router_group.clone(),
                m.clone(),
            );
            let caught_up = tokio::task::spawn_blocking(move || {
                let mut reader = kafka::lag_reader(&b).ok()?;
                let lag = reader.read(&g, &[t], &BTreeMap::new()).ok()?;
                Some(lag.partitions.iter().all(|p| {
                    let want = m.get(&(p.topic.clone(), p.partition)).copied().unwrap_or(0);
                    p.committed.unwrap_or(-1) >= want
                }))
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
            let lag: Option<i64> = job.lags().await.ok().map(|l| l.values().sum());
            if caught_up && lag.is_some_and(|l| l as f64 <= opts.rate.max(10.0)) {
                return Some(t0.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

// ------------------------------------------------------------------------------ the faults

/// Lets the load flow for a share of the run before the fault.
async fn warm_up(job: &Arc<Job>, opts: &Opts) -> Instant {
    let started = loop {
        if let Some(s) = job
            .generator()
            .and_then(|g| g.published.started.get().copied())
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs_f64(opts.duration * 0.25)).await;
    started
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

async fn sigkill(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    let started = warm_up(job, opts).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let end = started + Duration::from_secs_f64(opts.duration * 0.75);
    let mut kills = Vec::new();
    while Instant::now() < end || kills.is_empty() {
        let mut keys: Vec<String> = job
            .keys(None)
            .await
            .into_iter()
            .filter(|k| !k.starts_with("reprocessor"))
            .collect();
        keys.sort();
        let key = keys[rng.random_range(0..keys.len())].clone();
        let (stage, replica) = match key.split_once('#') {
            Some((s, r)) => (s.to_string(), r.parse().unwrap_or(1)),
            None => (key.clone(), 1),
        };
        job.kill(&key, libc::SIGKILL).await?;
        kills.push(key);
        tokio::time::sleep(Duration::from_secs_f64(rng.random_range(0.5..2.0))).await;
        let key = job.spawn(&stage, replica).await?;
        job.wait_ready(&[key], Duration::from_secs(90)).await?;
        tokio::time::sleep(Duration::from_secs_f64(
            rng.random_range(1.0..3.0) * opts.pace,
        ))
        .await;
    }
    Ok(format!(
        "SIGKILLed {} replicas: {}",
        kills.len(),
        kills.join(", ")
    ))
}

/// Partitions the live replicas of `stage` own, from their `reflex_assigned_partitions`.
async fn owned_partitions(job: &Arc<Job>, stage: &str) -> u64 {
    job.scrape().await;
    let fleet = job.fleet.lock().await;
    fleet
        .slots
        .iter()
        .filter(|s| s.stage == stage)
        .map(|s| s.metrics.total("reflex_assigned_partitions", &[]) as u64)
        .sum()
}

/// Until the replicas of `stage` own all `want` partitions of its input again (60 s at most).
async fn wait_settled(job: &Arc<Job>, stage: &str, want: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if owned_partitions(job, stage).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn input_partitions(job: &Arc<Job>, stage: &str) -> anyhow::Result<u64> {
    let (b, inputs) = (job.args.bootstrap.clone(), job.inputs(stage));
    let marks = tokio::task::spawn_blocking(move || kafka::high_watermarks(&b, &inputs)).await??;
    Ok(marks.len() as u64)
}

async fn storm(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let stage = "actor";
    let want = input_partitions(job, stage).await?;
    let mut added = Vec::new();
    for i in 2..=4 {
        added.push(job.spawn(stage, i).await?);
    }
    job.wait_ready(&added, Duration::from_secs(90)).await?;
    let mut settled = vec![wait_settled(job, stage, want).await];
    tokio::time::sleep(Duration::from_secs_f64(5.0 * opts.pace)).await;
    // Scaled down one replica at a time, each once the group has settled (a rolling
    // scale-down; scale-down shows all at once).
    for i in [4, 3, 2] {
        job.remove(&format!("{stage}#{i}")).await?;
        settled.push(wait_settled(job, stage, want).await);
    }
    Ok(format!(
        "{stage} scaled 1 -> 4 -> 1 (dynamic members, SIGTERM one at a time); {}/{} rebalances settled within 60 s",
        settled.iter().filter(|s| **s).count(),
        settled.len()
    ))
}

async fn scale_down(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let stage = "actor";
    let want = input_partitions(job, stage).await?;
    // Three of the four replicas SIGTERMed at the same moment: each drains and leaves while the
    // others' rebalance is still running.
    let leaving: Vec<String> = job
        .keys(Some(stage))
        .await
        .into_iter()
        .filter(|k| k != stage)
        .collect();
    for r in futures::future::join_all(leaving.iter().map(|k| job.remove(k))).await {
        r?;
    }
    let settled = wait_settled(job, stage, want).await;
    Ok(format!(
        "{stage} scaled {} -> 1 at once (SIGTERM to {}); the survivor {} all {want} partitions within 60 s",
        leaving.len() + 1,
        leaving.join(", "),
        if settled { "owned" } else { "did NOT own" }
    ))
}

async fn broker_restart(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let port = port_of(&job.args.bootstrap)?;
    // A crash: only what reached the log survives.
    stop_group(service_pid("BROKER")?, libc::SIGKILL).await;
    let pause = opts.outage / 3;
    tokio::time::sleep(pause).await;
    let run = std::env::var("REFLEX_TEST_BROKER_RUN").context("REFLEX_TEST_BROKER_RUN")?;
    start_service("broker", Command::new(run))?; // same log directory
    wait_port(port, Duration::from_secs(90)).await?;
    Ok(format!(
        "broker SIGKILLed, restarted on its log directory after {} s",
        secs(pause)
    ))
}

async fn broker_freeze(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let pid = service_pid("BROKER")?;
    killpg(pid, libc::SIGSTOP);
    tokio::time::sleep(opts.freeze).await;
    killpg(pid, libc::SIGCONT);
    Ok(format!(
        "broker SIGSTOPped for {} s, then SIGCONT",
        secs(opts.freeze)
    ))
}

async fn redis_restart(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    // A crash: the append-only file is all that survives.
    stop_group(service_pid("REDIS")?, libc::SIGKILL).await;
    redis_start(job).await?;
    Ok("Redis SIGKILLed and restarted at once (appendonly yes, fsync every second)".into())
}

async fn redis_down(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    stop_group(service_pid("REDIS")?, libc::SIGTERM).await;
    tokio::time::sleep(opts.outage).await;
    redis_start(job).await?;
    Ok(format!(
        "Redis stopped for {} s (SIGTERM), then started on its append-only file",
        secs(opts.outage)
    ))
}

async fn registry_down(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    stop_group(service_pid("REGISTRY")?, libc::SIGTERM).await;
    // A schema id nobody registered, published while the registry is down: no cache can know it.
    let mut never_seen = vec![0u8];
    never_seen.extend_from_slice(&987_654u32.to_be_bytes());
    never_seen.extend_from_slice(b"\x02\x04ab");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let generator = job.generator().ok_or_else(|| anyhow!("no generator"))?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(generator.inject(&never_seen, "never-seen schema id").await);
    }
    tokio::time::sleep(opts.outage).await;
    let port = port_of(&job.args.registry)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    let mut c = Command::new(bin_dir.join("reflex-registry"));
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--data-file"])
        .arg(stack_dir()?.join("registry.json"));
    start_service("registry", c)?;
    wait_port(port, Duration::from_secs(30)).await?;
    Ok(format!(
        "registry down {} s; {} records with never-seen schema id 987654 published meanwhile",
        secs(opts.outage),
        ids.len()
    ))
}

async fn target_fail(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let target = job.target().ok_or_else(|| anyhow!("no target"))?;
    target.set_mode(Mode::Fail, Duration::ZERO);
    tokio::time::sleep(opts.outage).await;
    target.set_mode(Mode::Ok, Duration::ZERO);
    Ok(format!("target answered 503 for {} s", secs(opts.outage)))
}

async fn target_timeout(job: &Arc<Job>, opts: &Opts) -> anyhow::Result<String> {
    warm_up(job, opts).await;
    let target = job.target().ok_or_else(|| anyhow!("no target"))?;
    // Longer than the actor's 5 s timeout.
    target.set_mode(Mode::Timeout, Duration::from_secs(7));
    tokio::time::sleep(opts.outage).await;
    target.set_mode(Mode::Ok, Duration::ZERO);
    Ok(format!(
        "target applied but answered after 7 s (actor timeout 5 s) for {} s",
        secs(opts.outage)
    ))
}

// ------------------------------------------------------------------------------ stack services

/// Services this suite restarted (scripts/stack.sh tears down only the ones it started), by
/// name: their process (a group leader) and so their current pid.
static RESTARTED: Mutex<Vec<(String, Child)>> = Mutex::new(Vec::new());

fn stack_dir() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        std::env::var("REFLEX_TEST_STACK_DIR")
            .context("REFLEX_TEST_STACK_DIR is not set: run through scripts/faults")?,
    ))
}

/// The process group of a stack service: the one this suite restarted last, else stack.sh's.
fn service_pid(name: &str) -> anyhow::Result<i32> {
    let restarted = RESTARTED.lock().unwrap();
    if let Some((_, child)) = restarted
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        return Ok(child.id() as i32);
    }
    let var = format!("REFLEX_TEST_{name}_PID");
    std::env::var(&var)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{var} is not set: run through scripts/faults"))
}

fn killpg(pgid: i32, signal: i32) -> bool {
    // SAFETY: killpg(2) on a process group of the stack this suite runs in.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Signals a service's process group and waits (10 s at most) until it is gone.
async fn stop_group(pgid: i32, signal: i32) {
    if !killpg(pgid, signal) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Reap the ones this suite started, so they do not linger as zombies.
        for (_, child) in RESTARTED.lock().unwrap().iter_mut() {
            let _ = child.try_wait();
        }
        if !killpg(pgid, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_service(name: &str, mut command: Command) -> anyhow::Result<()> {
    let log_path = stack_dir()?.join(format!("{name}-restarted.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("restart {name}"))?;
    RESTARTED.lock().unwrap().push((name.to_string(), child));
    Ok(())
}

async fn redis_start(job: &Arc<Job>) -> anyhow::Result<()> {
    let port = port_of(&job.args.redis)?;
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "yes", "--dir"])
    .arg(stack_dir()?);
    start_service("redis", c)?;
    wait_port(port, Duration::from_secs(30)).await
}

/// Stops what this suite restarted (at the end of a scenario).
fn stop_restarted_services() {
    for (_, child) in RESTARTED.lock().unwrap().iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            killpg(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            killpg(child.id() as i32, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn port_of(address: &str) -> anyhow::Result<u16> {
    address
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {address}"))
}

async fn wait_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("port {port} did not open within {} s", timeout.as_secs())
}

// ------------------------------------------------------------------------------ the report

fn table(rows: &[Row]) -> String {
    let head = [
        "scenario",
        "events in",
        "effects",
        "dup effects",
        "lost",
        "dead-lettered",
        "via DLQ",
        "held",
        "retried keys",
        "recover",
        "result",
    ];
    let mut out = format!(
        "| {} |\n|{}|\n",
        head.join(" | "),
        vec!["---"; head.len()].join("|")
    );
    let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for r in rows {
        let recover = match r.recover_s {
            Some(s) => format!("{s:.1} s"),
            None if r.recover_limit > 0.0 => format!("> {} s", r.recover_limit),
            None => "not measured".into(),
        };
        let _ = writeln!(
            out,
            "| {} |",
            [
                r.scenario.clone(),
                fmt(r.events_in),
                fmt(r.effects),
                opt(r.duplicate_effects),
                opt(r.lost),
                fmt(r.dead_lettered),
                fmt(r.dead_classes.values().sum()),
                fmt(r.held),
                fmt(r.retried_keys),
                recover,
                if r.passed { "PASS" } else { "FAIL" }.into(),
            ]
            .join(" | ")
        );
    }
    out
}

fn report(rows: &[Row], pack: &Path, opts: &Opts, smoke: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "== fault suite: pack {}, {} events/s for {} s per scenario{}",
        pack.display(),
        opts.rate,
        opts.duration,
        if smoke { " (smoke)" } else { "" }
    );
    out.push_str(&table(rows));
    let _ = writeln!(out);
    for r in rows {
        let _ = writeln!(out, "{}: {}", r.scenario, r.note);
        let mut tags: Vec<&str> = r
            .injected
            .values()
            .filter_map(|v| v["tag"].as_str())
            .collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            let ends: Vec<&serde_json::Value> =
                r.injected.values().filter(|v| v["tag"] == tag).collect();
            let _ = writeln!(
                out,
                "  {tag}: {} published, {} dead-lettered, {} with an outcome",
                ends.len(),
                ends.iter()
                    .filter(|v| v["dead"].as_u64().unwrap_or(0) > 0)
                    .count(),
                ends.iter()
                    .filter(|v| v["outcomes"].as_object().is_some_and(|o| !o.is_empty()))
                    .count()
            );
        }
        if !r.dead_classes.is_empty() {
            let classes: Vec<String> = r
                .dead_classes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  dead letters by class: {}", classes.join(", "));
        }
        for c in &r.restarts {
            let _ = writeln!(out, "  restarted by the supervisor: {c}");
        }
        for c in &r.failed_checks {
            let _ = writeln!(out, "  FAILED CHECK: {c}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_scenario_fails_the_table() {
        let mut ok = Row::unfinished("sigkill");
        ok.passed = true;
        ok.lost = Some(0);
        ok.duplicate_effects = Some(0);
        ok.recover_s = Some(3.25);
        let t = table(&[ok, Row::unfinished("storm")]);
        assert!(
            t.contains("| sigkill | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 3.2 s | PASS |"),
            "{t}"
        );
        assert!(t.contains("| storm | 0 | 0 | ? | ? |"), "{t}");
        assert!(t.contains("not measured | FAIL |"), "{t}");
    }

    #[test]
    fn ports_of_addresses_and_urls() {
        assert_eq!(port_of("127.0.0.1:9092").unwrap(), 9092);
        assert_eq!(port_of("redis://127.0.0.1:6380").unwrap(), 6380);
        assert_eq!(port_of("http://127.0.0.1:8081/").unwrap(), 8081);
        assert!(port_of("localhost").is_err());
    }
}
