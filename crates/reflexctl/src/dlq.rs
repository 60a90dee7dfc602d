//! `reflexctl dlq inspect`: what is in a dead-letter topic, whoever wrote it (Reflex, Spring
//! Kafka, Kafka Connect or Kafka Streams headers): counts by error class, failing stage and
//! original topic, with the age of the oldest and newest failure, and optionally the first
//! records decoded.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use rdkafka::Message;
use reflex_core::dead_letter::{DeadLetter, Dialect};
use serde::Serialize;

use crate::tail::{open, Decoder};
use crate::Global;

pub const LONG_ABOUT: &str = "Inspect dead-letter topics. Reads the whole topic (committing \
nothing) and groups its records by error class, failing stage and original topic, with the age \
of the oldest and newest failure. Dead letters written by Spring Kafka, Kafka Connect or Kafka \
Streams are read too.\n\n\
Examples:\n  \
reflexctl dlq inspect --topic reflex.events.k8s.dlq\n  \
reflexctl dlq inspect --topic reflex.events.k8s.dlq --show 3\n  \
reflexctl dlq inspect --topic orders.DLT --json";

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by error class, stage and original topic, with ages; `--show N` prints records.
    Inspect(InspectArgs),
    /// Deliver chosen dead letters back to their original topic (filters, dry run, rate,
    /// canary, Redis checkpoint, audit record).
    #[command(long_about = crate::replay::LONG_ABOUT)]
    Replay(Box<crate::replay::ReplayArgs>),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The dead-letter topic.
    #[arg(long)]
    pub topic: String,
    /// Also print the first N records as JSON lines, values decoded.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Stop reading after this long without a new record.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
}

/// One group of dead letters.
#[derive(Debug, Default, Serialize)]
pub struct Group {
    pub error_class: String,
    pub origin: String,
    pub original_topic: String,
    pub count: u64,
    pub oldest_age_seconds: Option<f64>,
    pub newest_age_seconds: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub topic: String,
    pub records: u64,
    /// Records carrying none of the known dead-letter header sets.
    pub unrecognised: u64,
    pub by_writer: BTreeMap<String, u64>,
    pub groups: Vec<Group>,
}

pub async fn run(global: &Global, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Inspect(args) => inspect(global, args).await,
        DlqCommand::Replay(args) => crate::replay::run(global, *args).await,
    }
}

async fn inspect(global: &Global, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let consumer = open(global, &args.topic, true, None)?;
    let mut decoder = Decoder::new(global.registry());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut summary = Summary {
        topic: args.topic.clone(),
        ..Summary::default()
    };
    let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
    let mut shown = 0;
    let stdout = std::io::stdout();
    while let Ok(message) =
        tokio::time::timeout(Duration::from_millis(args.timeout_ms), consumer.recv()).await
    {
        let message = message.with_context(|| format!("consuming {} failed", args.topic))?;
        summary.records += 1;
        let headers = reflex_runtime::headers_of(&message);
        let Some(dl) = DeadLetter::from_headers(&headers) else {
            summary.unrecognised += 1;
            continue;
        };
        *summary
            .by_writer
            .entry(writer_name(dl.dialect).to_string())
            .or_default() += 1;
        let failed_at = dl
            .original_timestamp_ms
            .or_else(|| message.timestamp().to_millis());
        let age = failed_at.map(|t| ((now_ms - t).max(0)) as f64 / 1000.0);
        let key = (
            dl.error_class.as_str().to_string(),
            dl.origin.clone(),
            dl.original_topic.clone(),
        );
        let group = groups.entry(key.clone()).or_insert_with(|| Group {
            error_class: key.0,
            origin: key.1,
            original_topic: key.2,
            ..Group::default()
        });
        group.count += 1;
        if let Some(age) = age {
            group.oldest_age_seconds = Some(group.oldest_age_seconds.map_or(age, |a| a.max(age)));
            group.newest_age_seconds = Some(group.newest_age_seconds.map_or(age, |a| a.min(age)));
        }
        if shown < args.show {
            shown += 1;
            let mut line = serde_json::to_value(decoder.line(&message).await)?;
            line["dead_letter"] = serde_json::json!({
                "writer": writer_name(dl.dialect),
                "error_class": dl.error_class.as_str(),
                "message": dl.message,
                "origin": dl.origin,
                "original_topic": dl.original_topic,
                "original_partition": dl.original_partition,
                "original_offset": dl.original_offset,
            });
            writeln!(stdout.lock(), "{line}")?;
        }
    }
    summary.groups = groups.into_values().collect();
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn writer_name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Reflex => "reflex",
        Dialect::Spring => "spring",
        Dialect::Connect => "connect",
        Dialect::Streams => "streams",
    }
}

fn print_table(s: &Summary) {
    println!(
        "{:<14} {:<28} {:<32} {:>7} {:>12} {:>12}",
        "CLASS", "STAGE/ORIGIN", "ORIGINAL TOPIC", "COUNT", "OLDEST AGE", "NEWEST AGE"
    );
    let age = |a: Option<f64>| a.map(|a| format!("{a:.0}s")).unwrap_or_else(|| "-".into());
    for g in &s.groups {
        println!(
            "{:<14} {:<28} {:<32} {:>7} {:>12} {:>12}",
            g.error_class,
            g.origin,
            g.original_topic,
            g.count,
            age(g.oldest_age_seconds),
            age(g.newest_age_seconds)
        );
    }
    let writers: Vec<String> = s
        .by_writer
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    println!(
        "{}: {} records ({}), {} without dead-letter headers",
        s.topic,
        s.records,
        writers.join(", "),
        s.unrecognised
    );
}
