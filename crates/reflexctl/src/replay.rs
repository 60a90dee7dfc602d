//! `reflexctl dlq replay`: deliver chosen dead letters back to their original topic and
//! partition, whoever wrote them (Reflex, Spring Kafka, Kafka Connect, Kafka Streams).
//!
//! - **What:** the records of the dead-letter topic up to its end *when the replay starts*
//!   (records dead-lettered meanwhile wait for the next replay), filtered by error class, time
//!   window (the original record's time), key, schema id and original topic.
//! - **How:** `--dry-run` counts exactly what would go and changes nothing. A real replay sends
//!   at most `--rate` records/s; with `--canary N` it first sends N, waits `--canary-wait-ms`
//!   and goes on only if at least `--canary-threshold` of them did not fail again (came back to
//!   the dead-letter topic carrying this replay's id).
//! - **Kept:** key, value and the event's headers: `ce_id` (so the actor's idempotency key is
//!   the same and an already applied action is not applied twice) and `traceparent` (the
//!   worker links its new span to the original trace). Failure headers are removed and
//!   `reflex-replay-id` and `reflex-redelivered-from` added ([`redelivery`]).
//! - **Resumable:** progress (next offset per partition) is checkpointed in Redis under
//!   `reflex:replay:<id>` after each acknowledged batch; `--replay-id <id>` resumes an
//!   interrupted replay without sending again what it had delivered (at most the one batch in
//!   flight when it died is sent twice; idempotency keys make that harmless).
//! - **Audited:** a JSON record on `--audit-topic` when the replay starts and when it ends (who,
//!   filter, counts, outcome), keyed by the replay id.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::AsyncCommands;
use reflex_core::dead_letter::{redelivery, DeadLetter};
use reflex_core::headers::reflex as rh;
use reflex_core::ErrorClass;
use serde::Serialize;

use crate::{Global, METADATA_TIMEOUT};

pub const LONG_ABOUT: &str = "Replay dead letters: deliver the records of a dead-letter topic \
that match the filters back to their original topic and partition, keeping their key, value, \
ce_id (idempotency key) and trace context. Only records present when the replay starts are \
considered. --dry-run prints the exact count and changes nothing. Progress is checkpointed in \
Redis: --replay-id resumes an interrupted replay. Every replay is audited on --audit-topic.\n\n\
Examples:\n  \
reflexctl dlq replay --topic reflex.actions.requests.dlq --error-class transient --dry-run\n  \
reflexctl dlq replay --topic reflex.actions.requests.dlq --error-class permanent --rate 50 \\\n    \
--canary 10 --canary-threshold 0.9\n  \
reflexctl dlq replay --topic orders.DLT --original-topic orders --since 2026-11-24T00:00:00Z\n  \
reflexctl dlq replay --topic reflex.actions.requests.dlq --replay-id replay-1764000000000-42";

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The dead-letter topic to replay from.
    #[arg(long)]
    pub topic: String,
    /// Only these error classes (repeatable): transient, permanent, poison, schema,
    /// rate_limited, circuit_open, unauthorized. Other tools' dead letters count as permanent.
    #[arg(long = "error-class")]
    pub error_classes: Vec<String>,
    /// Only dead letters of these original topics (repeatable).
    #[arg(long = "original-topic")]
    pub original_topics: Vec<String>,
    /// Only records with this key (repeatable; UTF-8).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Only values framed with this schema id (repeatable).
    #[arg(long = "schema-id")]
    pub schema_ids: Vec<u32>,
    /// Only records whose original time is at or after this (RFC 3339 or ms since the epoch).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records whose original time is before this (RFC 3339 or ms since the epoch).
    #[arg(long)]
    pub until: Option<String>,
    /// Count what would be replayed, by class and original topic; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Most records sent per second (0: as fast as the broker acknowledges).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Send this many records first and check them before the rest (0: no canary).
    #[arg(long, default_value_t = 0)]
    pub canary: u64,
    /// Share of canary records that must not fail again for the replay to go on.
    #[arg(long, default_value_t = 1.0)]
    pub canary_threshold: f64,
    /// How long to watch the dead-letter topic for canary records failing again.
    #[arg(long, default_value_t = 5000)]
    pub canary_wait_ms: u64,
    /// Records sent between checkpoints (each batch's acknowledgements are awaited first).
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Topic the audit records go to.
    #[arg(long, default_value = "reflex.audit")]
    pub audit_topic: String,
    /// Redis for the checkpoints.
    #[arg(
        long,
        env = "REFLEX_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: String,
    /// The replay's id: an id with a checkpoint in Redis resumes that replay (the id is printed
    /// when a replay starts); a new one names this replay. Generated when absent.
    #[arg(long)]
    pub replay_id: Option<String>,
    /// Who runs the replay, for the audit record (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    pub who: String,
    /// Stop reading a partition after this long without a record (a broker that stalls).
    #[arg(long, default_value_t = 10000)]
    pub timeout_ms: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The filter, as recorded in the audit trail.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    pub error_classes: Vec<String>,
    pub original_topics: Vec<String>,
    pub keys: Vec<String>,
    pub schema_ids: Vec<u32>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl Filter {
    fn from_args(args: &ReplayArgs) -> anyhow::Result<Filter> {
        for class in &args.error_classes {
            if ErrorClass::parse(class).is_none() {
                bail!(
                    "--error-class {class}: not an error class (use {})",
                    ErrorClass::ALL.map(ErrorClass::as_str).join(", ")
                );
            }
        }
        Ok(Filter {
            error_classes: args.error_classes.clone(),
            original_topics: args.original_topics.clone(),
            keys: args.keys.clone(),
            schema_ids: args.schema_ids.clone(),
            since_ms: args.since.as_deref().map(parse_time).transpose()?,
            until_ms: args.until.as_deref().map(parse_time).transpose()?,
        })
    }

    /// Whether a dead letter is chosen.
    pub fn matches(
        &self,
        dl: &DeadLetter,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        time_ms: Option<i64>,
    ) -> bool {
        let class_ok = self.error_classes.is_empty()
            || self
                .error_classes
                .iter()
                .any(|c| c == dl.error_class.as_str());
        let topic_ok =
            self.original_topics.is_empty() || self.original_topics.contains(&dl.original_topic);
        let key_ok = self.keys.is_empty()
            || key.is_some_and(|k| self.keys.iter().any(|want| want.as_bytes() == k));
        let schema_ok = self.schema_ids.is_empty()
            || value
                .and_then(|v| reflex_core::wire::decode_frame(v).ok())
                .is_some_and(|f| self.schema_ids.contains(&f.schema_id));
        let since_ok = self
            .since_ms
            .is_none_or(|s| time_ms.is_some_and(|t| t >= s));
        let until_ok = self.until_ms.is_none_or(|u| time_ms.is_some_and(|t| t < u));
        class_ok && topic_ok && key_ok && schema_ok && since_ok && until_ok
    }
}

fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| anyhow!("`{text}` is not a time: use RFC 3339 (2026-11-24T08:00:00Z) or ms since the epoch ({e})"))
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub replay_id: String,
    pub topic: String,
    pub dry_run: bool,
    pub resumed: bool,
    /// Records read this run (after the checkpoint, up to the end at start).
    pub scanned: u64,
    /// Records matching the filter.
    pub matched: u64,
    /// Records delivered back (acknowledged).
    pub delivered: u64,
    /// Records without dead-letter headers of any known dialect (never replayed).
    pub unrecognised: u64,
    /// Matches by `<class> <original topic>`.
    pub by_class_and_topic: BTreeMap<String, u64>,
    /// Canary records that came back to the dead-letter topic.
    pub canary_failures: Option<u64>,
    /// `completed`, `dry-run` or `aborted: ...`.
    pub status: String,
}

#[derive(Serialize)]
struct Audit<'a> {
    replay_id: &'a str,
    event: &'a str,
    who: &'a str,
    at_ms: i64,
    dead_letter_topic: &'a str,
    filter: &'a Filter,
    rate: f64,
    canary: u64,
    canary_threshold: f64,
    report: Option<&'a Report>,
}

pub async fn run(global: &Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter::from_args(&args)?;
    let named = args.replay_id.is_some();
    let replay_id = args
        .replay_id
        .clone()
        .unwrap_or_else(|| format!("replay-{}-{}", now_ms(), std::process::id()));
    let consumer: StreamConsumer = global
        .kafka_config()
        .set(
            "group.id",
            format!("reflexctl-replay-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the Kafka consumer")?;
    let ends = end_offsets(global, &consumer, &args.topic)?;

    // Checkpoints: a dry run reads them (to count what a resume would send) but never writes.
    let checkpoint_key = format!("reflex:replay:{replay_id}");
    let mut redis = if args.dry_run && !named {
        None
    } else {
        Some(
            reflex_core::redis_conn::connect(&args.redis)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot reach Redis at {} for the replay checkpoints (pass --redis or \
                         set REFLEX_REDIS_URL): {e}{}",
                        reflex_core::redis_conn::redact_url(&args.redis),
                        reflex_core::redis_conn::connect_hint(&args.redis, &e)
                    )
                })?,
        )
    };
    let mut start: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut resumed = false;
    if let (Some(conn), true) = (redis.as_mut(), named) {
        let saved: BTreeMap<String, String> = conn
            .hgetall(&checkpoint_key)
            .await
            .context("reading the replay checkpoint")?;
        if saved.get("status").map(String::as_str) == Some("completed") {
            println!("replay {replay_id} already completed; nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        // An id with a checkpoint resumes; a new id starts from the beginning.
        resumed = !saved.is_empty();
        for (field, value) in &saved {
            if let (Ok(p), Ok(o)) = (field.parse::<i32>(), value.parse::<i64>()) {
                start.insert(p, o);
            }
        }
    }
    let mut report = Report {
        replay_id: replay_id.clone(),
        topic: args.topic.clone(),
        dry_run: args.dry_run,
        resumed,
        ..Report::default()
    };

    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &start {
        if *offset < ends[partition] {
            tpl.add_partition_offset(&args.topic, *partition, Offset::Offset(*offset))
                .map_err(|e| anyhow!("cannot assign partition {partition}: {e}"))?;
        }
    }
    let producer: Option<FutureProducer> = if args.dry_run {
        None
    } else {
        Some(
            global
                .kafka_config()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("partitioner", "murmur2_random")
                .create()
                .context("cannot create the Kafka producer")?,
        )
    };
    if let Some(producer) = &producer {
        eprintln!(
            "replay {replay_id}: from {} (resume with --replay-id {replay_id})",
            args.topic
        );
        audit(producer, &args, &replay_id, &filter, "started", None).await?;
    }

    let mut pending = Vec::new();
    let mut scanned_to: BTreeMap<i32, i64> = BTreeMap::new();
    let mut remaining: BTreeMap<i32, i64> = tpl
        .elements()
        .iter()
        .map(|e| (e.partition(), ends[&e.partition()]))
        .collect();
    if !remaining.is_empty() {
        consumer
            .assign(&tpl)
            .with_context(|| format!("cannot assign the partitions of {}", args.topic))?;
    }
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let mut next_send = Instant::now();
    let mut canary_checked = args.canary == 0 || args.dry_run;
    while !remaining.is_empty() {
        let message =
            match tokio::time::timeout(Duration::from_millis(args.timeout_ms), consumer.recv())
                .await
            {
                Ok(message) => message.with_context(|| format!("consuming {}", args.topic))?,
                Err(_) => bail!(
                "no record from {} for {} ms with partitions {:?} unfinished: is the broker up?",
                args.topic,
                args.timeout_ms,
                remaining.keys().collect::<Vec<_>>()
            ),
            };
        let partition = message.partition();
        let offset = message.offset();
        let Some(end) = remaining.get(&partition).copied() else {
            continue;
        };
        if offset >= end {
            remaining.remove(&partition);
            continue;
        }
        report.scanned += 1;
        scanned_to.insert(partition, offset + 1);
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
        let headers = reflex_runtime::headers_of(&message);
        let Some(dl) = DeadLetter::from_headers(&headers) else {
            report.unrecognised += 1;
            continue;
        };
        let time_ms = dl
            .original_timestamp_ms
            .or_else(|| message.timestamp().to_millis());
        if !filter.matches(&dl, message.key(), message.payload(), time_ms) {
            continue;
        }
        report.matched += 1;
        *report
            .by_class_and_topic
            .entry(format!("{} {}", dl.error_class, dl.original_topic))
            .or_default() += 1;
        let Some(producer) = &producer else {
            continue;
        };
        if let Some(pace) = pace {
            tokio::time::sleep_until(next_send.into()).await;
            next_send = next_send.max(Instant::now() - pace) + pace;
        }
        let from = format!("{}/{partition}/{offset}", args.topic);
        let back = redelivery(&dl, &headers, &from, &[(rh::REPLAY_ID, replay_id.clone())]);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&back.topic).headers(reflex_runtime::to_kafka_headers(&back.headers));
        if let Some(p) = back.partition {
            record = record.partition(p);
        }
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow!("cannot send to {}: {e}", back.topic))?;
        pending.push((back.topic, delivery));
        let canary_due = !canary_checked && report.matched >= args.canary;
        if pending.len() >= args.batch.max(1) || canary_due {
            report.delivered += settle(&mut pending).await?;
            checkpoint(redis.as_mut(), &checkpoint_key, &scanned_to, None).await?;
        }
        if canary_due {
            canary_checked = true;
            let failures = canary_failures(global, &args, &ends, &replay_id).await?;
            report.canary_failures = Some(failures);
            let ok = (report.matched - failures) as f64 / report.matched as f64;
            if ok < args.canary_threshold {
                report.status = format!(
                    "aborted: {failures} of {} canary records failed again (success {:.0}% < --canary-threshold {:.0}%)",
                    report.matched,
                    ok * 100.0,
                    args.canary_threshold * 100.0
                );
                audit(
                    producer,
                    &args,
                    &replay_id,
                    &filter,
                    "aborted",
                    Some(&report),
                )
                .await?;
                print(&report, args.json)?;
                return Ok(crate::check_failed());
            }
        }
    }
    if let Some(producer) = &producer {
        report.delivered += settle(&mut pending).await?;
        checkpoint(
            redis.as_mut(),
            &checkpoint_key,
            &scanned_to,
            Some("completed"),
        )
        .await?;
        report.status = "completed".into();
        audit(
            producer,
            &args,
            &replay_id,
            &filter,
            "completed",
            Some(&report),
        )
        .await?;
    } else {
        report.status = "dry-run".into();
    }
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The topic's partitions and their end offsets now: the replay's snapshot.
fn end_offsets(
    global: &Global,
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read metadata from Kafka at {} (check --bootstrap)",
                global.bootstrap
            )
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} does not exist on {}", global.bootstrap);
    };
    if t.partitions().is_empty() {
        bail!(
            "topic {topic} does not exist on {} (no partitions)",
            global.bootstrap
        );
    }
    let mut ends = BTreeMap::new();
    for p in t.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the end offset of {topic}/{}", p.id()))?;
        ends.insert(p.id(), high);
    }
    Ok(ends)
}

/// Awaits every pending delivery; returns how many were acknowledged.
async fn settle(
    pending: &mut Vec<(String, rdkafka::producer::DeliveryFuture)>,
) -> anyhow::Result<u64> {
    let mut acked = 0;
    for (topic, delivery) in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => acked += 1,
            Ok(Err((e, _))) => bail!("the broker refused a record for {topic}: {e}; the checkpoint stays before it, resume with the same --replay-id"),
            Err(_) => bail!("the producer dropped a delivery for {topic}; resume with the same --replay-id"),
        }
    }
    Ok(acked)
}

async fn checkpoint(
    redis: Option<&mut reflex_core::redis_conn::RedisConn>,
    key: &str,
    scanned_to: &BTreeMap<i32, i64>,
    status: Option<&str>,
) -> anyhow::Result<()> {
    let Some(conn) = redis else {
        return Ok(());
    };
    let mut fields: Vec<(String, String)> = scanned_to
        .iter()
        .map(|(p, o)| (p.to_string(), o.to_string()))
        .collect();
    fields.push(("status".into(), status.unwrap_or("running").into()));
    let _: () = conn
        .hset_multiple(key, &fields)
        .await
        .context("writing the replay checkpoint to Redis")?;
    // Kept for a week: long enough to resume or audit, not forever.
    let _: () = conn
        .expire(key, 7 * 24 * 3600)
        .await
        .context("setting the checkpoint's expiry")?;
    Ok(())
}

/// Canary records that failed again: dead letters after the snapshot's end carrying this
/// replay's id, watched for `--canary-wait-ms`.
async fn canary_failures(
    global: &Global,
    args: &ReplayArgs,
    ends: &BTreeMap<i32, i64>,
    replay_id: &str,
) -> anyhow::Result<u64> {
    let watcher: StreamConsumer = global
        .kafka_config()
        .set(
            "group.id",
            format!("reflexctl-canary-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create the canary watcher")?;
    let mut tpl = TopicPartitionList::new();
    for (p, end) in ends {
        tpl.add_partition_offset(&args.topic, *p, Offset::Offset(*end))
            .map_err(|e| anyhow!("cannot watch partition {p}: {e}"))?;
    }
    watcher
        .assign(&tpl)
        .context("cannot assign the canary watcher")?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(args.canary_wait_ms);
    let mut failures = 0;
    while let Ok(message) = tokio::time::timeout_at(deadline, watcher.recv()).await {
        let message = message.context("watching the dead-letter topic")?;
        if reflex_runtime::headers_of(&message).get_str(rh::REPLAY_ID) == Some(replay_id) {
            failures += 1;
        }
    }
    Ok(failures)
}

async fn audit(
    producer: &FutureProducer,
    args: &ReplayArgs,
    replay_id: &str,
    filter: &Filter,
    event: &str,
    report: Option<&Report>,
) -> anyhow::Result<()> {
    let record = Audit {
        replay_id,
        event,
        who: &args.who,
        at_ms: now_ms(),
        dead_letter_topic: &args.topic,
        filter,
        rate: args.rate,
        canary: args.canary,
        canary_threshold: args.canary_threshold,
        report,
    };
    let json = serde_json::to_vec(&record)?;
    producer
        .send(
            FutureRecord::to(&args.audit_topic)
                .key(replay_id)
                .payload(&json),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| {
            anyhow!(
                "cannot write the audit record to {}: {e} (create it: reflexctl topics apply)",
                args.audit_topic
            )
        })?;
    Ok(())
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    for (group, count) in &report.by_class_and_topic {
        println!("{count:>8}  {group}");
    }
    let verb = if report.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{}: {verb} {} of {} records scanned from {} ({} delivered, {} without dead-letter headers): {}",
        report.replay_id,
        report.matched,
        report.scanned,
        report.topic,
        report.delivered,
        report.unrecognised,
        report.status
    );
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(class: ErrorClass, topic: &str) -> DeadLetter {
        DeadLetter {
            dialect: reflex_core::dead_letter::Dialect::Reflex,
            original_topic: topic.into(),
            original_partition: Some(0),
            original_offset: Some(1),
            original_timestamp_ms: Some(1000),
            error_class: class,
            message: String::new(),
            origin: "actor".into(),
            attempts: Some(1),
        }
    }

    #[test]
    fn filters_combine_and_empty_ones_match_everything() {
        let all = Filter::default();
        assert!(all.matches(&dl(ErrorClass::Poison, "a"), None, None, None));
        let f = Filter {
            error_classes: vec!["transient".into()],
            original_topics: vec!["a".into()],
            keys: vec!["k1".into()],
            schema_ids: vec![7],
            since_ms: Some(1000),
            until_ms: Some(2000),
        };
        let value = reflex_core::wire::encode_frame(7, b"x");
        let ok = |class, topic, key: &[u8], value: &[u8], t| {
            f.matches(&dl(class, topic), Some(key), Some(value), Some(t))
        };
        assert!(ok(ErrorClass::Transient, "a", b"k1", &value, 1000));
        assert!(!ok(ErrorClass::Permanent, "a", b"k1", &value, 1000));
        assert!(!ok(ErrorClass::Transient, "b", b"k1", &value, 1000));
        assert!(!ok(ErrorClass::Transient, "a", b"k2", &value, 1000));
        assert!(!ok(
            ErrorClass::Transient,
            "a",
            b"k1",
            &reflex_core::wire::encode_frame(8, b"x"),
            1000
        ));
        assert!(!ok(ErrorClass::Transient, "a", b"k1", &value, 2000));
        assert!(!ok(ErrorClass::Transient, "a", b"k1", &value, 999));
    }

    #[test]
    fn times_are_rfc3339_or_epoch_ms_and_bad_ones_say_how() {
        assert_eq!(parse_time("1000").unwrap(), 1000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday")
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
    }
}
