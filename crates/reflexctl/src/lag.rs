//! `reflexctl lag`: consumer-group lag in offsets and seconds with a Burrow-style status, as a
//! table, JSON, a `--watch` loop, or a Prometheus exporter (`--serve`) for groups Reflex does
//! not run. The numbers come from `reflex-lag`, the same code every worker exports for its own
//! group.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reflex_lag::{Evaluator, GroupLag, LagReader, Status, Thresholds};

use crate::Global;

pub const LONG_ABOUT: &str = "Show a consumer group's lag per partition, in offsets and in \
seconds (age of the oldest unconsumed record), with a Burrow-style status (OK, WARN, STALL, \
STOP, ERR) evaluated over a window of samples.\n\n\
Examples:\n  \
reflexctl lag --group reflex-router\n  \
reflexctl lag --group reflex-router --topic reflex.events.k8s --json\n  \
reflexctl lag --group reflex-router --watch 5\n  \
reflexctl lag --group billing --group search --serve 0.0.0.0:9464   # exporter mode";

#[derive(Debug, Args)]
pub struct LagArgs {
    /// Consumer group(s) to report.
    #[arg(long = "group", required = true)]
    pub groups: Vec<String>,
    /// Only these topics (default: every topic the group has committed offsets on).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Print JSON (one object per group and sample) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Sample every SECS seconds until interrupted, evaluating the status over the window.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<u64>,
    /// Exporter mode: serve kafka-lag-exporter style metrics on ADDR (`/metrics`) and sample
    /// every `--interval` seconds.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<String>,
    /// Sampling interval of `--serve`, in seconds.
    #[arg(long, default_value_t = 15)]
    pub interval: u64,
    /// Samples in the status window.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Lag > 0 and no commit moved for this many seconds: STALL.
    #[arg(long, default_value_t = 60)]
    pub stall_after: u64,
    /// Lag > 0 and no commit moved for this many seconds: STOP.
    #[arg(long, default_value_t = 300)]
    pub stop_after: u64,
}

pub async fn run(global: &Global, args: LagArgs) -> anyhow::Result<ExitCode> {
    let thresholds = Thresholds {
        window: args.window,
        stall_after: Duration::from_secs(args.stall_after),
        stop_after: Duration::from_secs(args.stop_after),
    };
    let bootstrap = global.bootstrap.clone();
    // The same client properties (and secrets) as every other command.
    let properties: BTreeMap<String, String> = global.kafka_properties.0.clone();
    let mut reader = tokio::task::spawn_blocking({
        let (bootstrap, properties) = (bootstrap.clone(), properties.clone());
        move || LagReader::new(&bootstrap, &properties, Duration::from_secs(10))
    })
    .await??;
    let mut evaluators: Vec<Evaluator> = args
        .groups
        .iter()
        .map(|_| Evaluator::new(thresholds))
        .collect();

    if let Some(listen) = &args.serve {
        let health = Arc::new(reflex_runtime::http::Health::default());
        health.set_assigned();
        let addr = reflex_runtime::http::serve(listen, health)
            .await
            .with_context(|| format!("cannot serve metrics on {listen}"))?;
        println!("serving /metrics on http://{addr}");
        std::io::stdout().flush().ok();
    }
    let every = args.serve.as_ref().map(|_| args.interval).or(args.watch);
    loop {
        for (group, evaluator) in args.groups.iter().zip(&mut evaluators) {
            let (back, sample) = sample(
                reader,
                group.clone(),
                args.topics.clone(),
                properties.clone(),
            )
            .await?;
            reader = back;
            let status = evaluator.observe(sample.clone());
            if args.serve.is_some() {
                reflex_lag::export(&sample, status);
            } else if args.json {
                let mut value = serde_json::to_value(&sample)?;
                value["status"] = serde_json::Value::String(status.as_str().into());
                println!("{value}");
            } else {
                print_table(&sample, status);
            }
        }
        let Some(secs) = every else {
            return Ok(ExitCode::SUCCESS);
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn sample(
    mut reader: LagReader,
    group: String,
    topics: Vec<String>,
    properties: BTreeMap<String, String>,
) -> anyhow::Result<(LagReader, GroupLag)> {
    tokio::task::spawn_blocking(move || {
        let sample = reader.read(&group, &topics, &properties);
        sample.map(|s| (reader, s)).map_err(anyhow::Error::from)
    })
    .await?
}

fn print_table(sample: &GroupLag, status: Status) {
    println!(
        "{:<24} {:<32} {:>9} {:>12} {:>12} {:>10} {:>12}",
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECONDS"
    );
    for p in &sample.partitions {
        println!(
            "{:<24} {:<32} {:>9} {:>12} {:>12} {:>10} {:>12.1}",
            sample.group,
            p.topic,
            p.partition,
            p.committed
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            p.high_watermark,
            p.lag,
            p.lag_seconds
        );
    }
    println!(
        "group {} total lag {} max lag seconds {:.1} status {}",
        sample.group,
        sample.total_lag,
        sample.max_lag_seconds,
        status.as_str()
    );
}
