//! `reflexctl approvals list | approve <id> | deny <id>`: the human side of actions that need
//! approval (see `reflex_actor::approval`).
//!
//! `list` reads the approvals topic and the decisions topic to their current ends and prints
//! the held requests no decision has reached yet. `approve` and `deny` write one decision
//! record (JSON [`ApprovalDecision`], keyed by the id, CloudEvents headers with a fresh `ce_id`)
//! to the decisions topic and wait for the broker's acknowledgement; the actor applies the
//! first decision per id and ignores later ones.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::Message;
use reflex_core::approvals::{
    ApprovalDecision, Decision, PendingApproval, CONTENT_TYPE, DECISION_TYPE,
};
use reflex_core::headers::{ce, Headers};

use crate::{Global, METADATA_TIMEOUT};

pub const LONG_ABOUT: &str = "Actions configured with `approval` are held by the actor until \
someone decides. `list` shows the requests waiting (read from the approvals topic, minus those \
the decisions topic already decided). `approve ID` and `deny ID` write a decision record, with \
who (--by) and why (--reason), to the decisions topic; the actor executes on approval (exactly \
once), or records DENIED, and the outcomes topic names the approver. The first decision per id \
wins. Without a decision before its deadline, the actor applies the action's on_timeout.\n\n\
Examples:\n  \
reflexctl approvals list\n  \
reflexctl approvals approve quarantine-host:evt-1 --by alice --reason \"confirmed by the SOC\"\n  \
reflexctl approvals deny quarantine-host:evt-2 --by bob --reason \"false positive, ticket 42\"";

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List the requests waiting for a decision.
    List(ListArgs),
    /// Approve a held request: the actor executes it.
    Approve(DecideArgs),
    /// Deny a held request: it is never executed.
    Deny(DecideArgs),
}

/// Where the actor's approval records are (`actor.approvals_topic`, `actor.decisions_topic`).
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// The actor's `approvals_topic`.
    #[arg(long, default_value = "reflex.approvals")]
    pub approvals_topic: String,
    /// The actor's `decisions_topic`.
    #[arg(long, default_value = "reflex.approvals.decisions")]
    pub decisions_topic: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub topics: TopicArgs,
    /// One JSON object per pending request instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The pending approval's id (the request's idempotency key, as `list` shows it).
    pub id: String,
    /// Who decides (recorded on the outcome as the approver).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub by: String,
    /// Why (recorded on the outcome).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub topics: TopicArgs,
}

pub async fn run(global: &Global, command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List(args) => list(global, args).await,
        ApprovalsCommand::Approve(args) => decide(global, args, Decision::Approve).await,
        ApprovalsCommand::Deny(args) => decide(global, args, Decision::Deny).await,
    }
}

/// The pending approvals: every id on the approvals topic with no decision record yet.
pub async fn pending(global: &Global, topics: &TopicArgs) -> anyhow::Result<Vec<PendingApproval>> {
    let mut held: BTreeMap<String, PendingApproval> = BTreeMap::new();
    for value in read_to_end(global, &topics.approvals_topic).await? {
        if let Ok(p) = serde_json::from_slice::<PendingApproval>(&value) {
            held.insert(p.id.clone(), p);
        }
    }
    for value in read_to_end(global, &topics.decisions_topic).await? {
        if let Ok(d) = serde_json::from_slice::<ApprovalDecision>(&value) {
            held.remove(&d.id);
        }
    }
    let mut out: Vec<PendingApproval> = held.into_values().collect();
    out.sort_by_key(|p| p.requested_at);
    Ok(out)
}

async fn list(global: &Global, args: ListArgs) -> anyhow::Result<ExitCode> {
    let pending = pending(global, &args.topics).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for p in &pending {
            writeln!(out, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if pending.is_empty() {
        writeln!(
            out,
            "no approvals pending on {}",
            args.topics.approvals_topic
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now().timestamp_millis();
    writeln!(
        out,
        "{:<40} {:<20} {:<20} {:>10} {:<10} PARAMS",
        "ID", "ACTION", "TARGET", "EXPIRES IN", "THEN"
    )?;
    for p in &pending {
        let left = (p.expires_at - now).max(0) / 1000;
        let params: Vec<String> = p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "{:<40} {:<20} {:<20} {:>9}s {:<10} {}",
            p.id,
            p.action,
            p.target,
            left,
            p.on_timeout.as_str(),
            params.join(",")
        )?;
    }
    writeln!(out, "{} pending", pending.len())?;
    Ok(ExitCode::SUCCESS)
}

async fn decide(global: &Global, args: DecideArgs, decision: Decision) -> anyhow::Result<ExitCode> {
    let d = ApprovalDecision {
        id: args.id.clone(),
        decision,
        by: args.by.clone(),
        reason: args.reason.clone(),
        decided_at: chrono::Utc::now().timestamp_millis(),
    };
    let producer: FutureProducer = global
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .create()
        .context("cannot create the Kafka producer")?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(&args.topics.decisions_topic), METADATA_TIMEOUT)
        .with_context(|| format!("cannot read metadata from Kafka at {}", global.bootstrap))?;
    if metadata
        .topics()
        .iter()
        .all(|t| t.name() != args.topics.decisions_topic || t.partitions().is_empty())
    {
        bail!(
            "topic {} does not exist on {}: pass --decisions-topic (the actor's actor.decisions_topic) or create it (reflexctl topics apply)",
            args.topics.decisions_topic,
            global.bootstrap
        );
    }
    let id = format!("decision-{}", uuid::Uuid::new_v4());
    let mut headers = Headers::new();
    headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
    headers.push(ce::ID, id.clone());
    headers.push(ce::SOURCE, format!("reflexctl/{}", args.by));
    headers.push(ce::TYPE, DECISION_TYPE);
    headers.push(ce::TIME, chrono::Utc::now().to_rfc3339());
    headers.push(ce::CONTENT_TYPE, CONTENT_TYPE);
    let payload = serde_json::to_vec(&d)?;
    let delivered = producer
        .send(
            FutureRecord::to(&args.topics.decisions_topic)
                .key(&args.id)
                .payload(&payload)
                .headers(reflex_runtime::to_kafka_headers(&headers)),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing the decision failed: {e}"))?;
    println!(
        "{} {} by {}: {}/{}@{} {}",
        decision.as_str(),
        args.id,
        args.by,
        args.topics.decisions_topic,
        delivered.partition,
        delivered.offset,
        id
    );
    Ok(ExitCode::SUCCESS)
}

/// Every value on `topic` up to its end offsets now.
async fn read_to_end(global: &Global, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer = crate::tail::open(global, topic, true, None)?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
                .with_context(|| format!("cannot read the end offset of {topic}/{}", p.id()))?;
            if high > low {
                ends.insert(p.id(), high);
            }
        }
    }
    let mut values = Vec::new();
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
            .await
            .with_context(|| format!("reading {topic} stalled before its end"))?
            .with_context(|| format!("consuming {topic} failed"))?;
        if let Some(v) = message.payload() {
            values.push(v.to_vec());
        }
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    Ok(values)
}
