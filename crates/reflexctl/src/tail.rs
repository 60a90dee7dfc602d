//! `reflexctl tail`: print a topic's records as JSON lines, values decoded via the registry.
//!
//! Without `--group` the consumer assigns itself every partition and commits nothing, so tailing
//! never disturbs a worker's group. A record that does not decode is printed with an `error`
//! instead of stopping the tail.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use apache_avro::Schema;
use base64::Engine as _;
use clap::Args;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use reflex_core::avro::{datum_to_json, parse_schema};
use reflex_core::registry::RegistryClient;
use reflex_core::wire::decode_frame;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use crate::{Global, METADATA_TIMEOUT};

pub const LONG_ABOUT: &str = "Consume a topic and print one JSON object per record: topic, \
partition, offset, timestamp (ms since the epoch, or null), key, headers, schema_id and value \
(the Avro datum decoded to JSON with the schema the registry has for the record's schema id). \
Keys and header values that are not UTF-8 are printed as {\"base64\": \"...\"}; a header that \
occurs more than once becomes an array of its values. A record that does not decode (not in \
Confluent wire format, unknown schema id, corrupt datum) is printed with \"value\": null, \
\"error\": \"<why>\" and \"raw_length\" instead of stopping the tail.\n\n\
Without --group nothing is committed: every partition is read from the end (or from the \
beginning with --from-beginning). With --group the consumer joins that group, starts at its \
committed offsets (--from-beginning only applies where it has none) and commits what it \
printed. Stops after --max records, after --timeout-ms without a record, or on Ctrl-C.\n\n\
Examples:\n  \
reflexctl tail --topic reflex.events.k8s --from-beginning --max 10 --timeout-ms 5000\n  \
reflexctl tail --topic reflex.events.k8s.dlq --from-beginning | jq .headers";

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Start at the oldest record (default: only new records).
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this many milliseconds without a record (default: follow until Ctrl-C).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Consume as this consumer group and commit the printed offsets (default: no group, no
    /// commits).
    #[arg(long)]
    pub group: Option<String>,
}

/// One printed record.
#[derive(Debug, Serialize)]
pub struct Line {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Json,
    pub headers: Map<String, Json>,
    pub schema_id: Option<u32>,
    pub value: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_length: Option<usize>,
}

pub async fn run(global: &Global, args: TailArgs) -> anyhow::Result<ExitCode> {
    if args.max == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let consumer = open(
        global,
        &args.topic,
        args.from_beginning,
        args.group.as_deref(),
    )?;

    let registry = global.registry();
    let mut decoder = Decoder::new(registry);
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, consumer.recv()).await.ok(),
                None => Some(consumer.recv().await),
            }
        };
        let message = tokio::select! {
            m = next => m,
            _ = &mut ctrl_c => break,
        };
        let Some(message) = message else {
            break; // idle for --timeout-ms
        };
        let message = message.with_context(|| format!("consuming {} failed", args.topic))?;
        let line = decoder.line(&message).await;
        let text = serde_json::to_string(&line).context("cannot print a record as JSON")?;
        let mut out = stdout.lock();
        if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break; // e.g. `| head`
            }
            return Err(e).context("cannot write to stdout");
        }
        if args.group.is_some() {
            consumer
                .store_offset_from_message(&message)
                .context("cannot store the consumed offset")?;
        }
        printed += 1;
        if args.max.is_some_and(|max| printed >= max) {
            break;
        }
    }
    if args.group.is_some() && printed > 0 {
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("cannot commit the printed offsets for --group")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A consumer on every partition of `topic` (from the beginning or the end), committing nothing;
/// or, with `group`, subscribed as that group (offsets stored by the caller).
pub fn open(
    global: &Global,
    topic_name: &str,
    from_beginning: bool,
    group: Option<&str>,
) -> anyhow::Result<StreamConsumer> {
    let mut config = global.kafka_config();
    config.set("enable.partition.eof", "false").set(
        "auto.offset.reset",
        if from_beginning { "earliest" } else { "latest" },
    );
    match group {
        Some(group) => config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false"),
        // librdkafka wants a group id even for assign(); this one never joins or commits.
        None => config
            .set(
                "group.id",
                format!("reflexctl-tail-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false"),
    };
    let consumer: StreamConsumer = config
        .create()
        .context("cannot create the Kafka consumer")?;

    let metadata = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read metadata from Kafka at {} (check --bootstrap / \
                 REFLEX_KAFKA__BOOTSTRAP_SERVERS and that the broker runs)",
                global.bootstrap
            )
        })?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == topic_name) else {
        bail!(
            "topic {} does not exist on {}: check the name (declared topics are in topics/*.toml)",
            topic_name,
            global.bootstrap
        );
    };
    if group.is_some() {
        consumer
            .subscribe(&[topic_name])
            .with_context(|| format!("cannot subscribe to {}", topic_name))?;
    } else {
        let start = if from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        let mut tpl = TopicPartitionList::new();
        for p in topic.partitions() {
            tpl.add_partition_offset(topic_name, p.id(), start)
                .map_err(|e| anyhow!("cannot assign partition {}: {e}", p.id()))?;
        }
        consumer
            .assign(&tpl)
            .with_context(|| format!("cannot assign the partitions of {}", topic_name))?;
    }

    Ok(consumer)
}

/// Decodes values, caching the parsed schema (or the failure) per schema id.
pub struct Decoder {
    registry: RegistryClient,
    schemas: HashMap<u32, Result<Schema, String>>,
}

impl Decoder {
    pub fn new(registry: RegistryClient) -> Self {
        Self {
            registry,
            schemas: HashMap::new(),
        }
    }

    /// The printed form of one record.
    pub async fn line(&mut self, message: &BorrowedMessage<'_>) -> Line {
        let mut headers = Map::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                let value = h.value.map_or(Json::Null, bytes_to_json);
                match headers.get_mut(h.key) {
                    Some(Json::Array(values)) => values.push(value),
                    Some(first) => *first = Json::Array(vec![first.take(), value]),
                    None => {
                        headers.insert(h.key.to_string(), value);
                    }
                }
            }
        }
        let (schema_id, value, error, raw_length) = match message.payload() {
            None => (None, Json::Null, None, None),
            Some(payload) => match self.decode(payload).await {
                Ok((id, value)) => (Some(id), value, None, None),
                Err((id, why)) => (id, Json::Null, Some(why), Some(payload.len())),
            },
        };
        Line {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map_or(Json::Null, bytes_to_json),
            headers,
            schema_id,
            value,
            error,
            raw_length,
        }
    }

    /// The value as JSON, or the schema id (if the framing was readable) and why not.
    pub async fn decode(&mut self, payload: &[u8]) -> Result<(u32, Json), (Option<u32>, String)> {
        let frame = decode_frame(payload).map_err(|e| (None, e.to_string()))?;
        let id = frame.schema_id;
        if !self.schemas.contains_key(&id) {
            let schema = match self.registry.schema_by_id(id).await {
                Ok(found) => parse_schema(&found.text).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            self.schemas.insert(id, schema);
        }
        match &self.schemas[&id] {
            Ok(schema) => datum_to_json(schema, frame.datum)
                .map(|v| (id, v))
                .map_err(|e| (Some(id), e.to_string())),
            Err(why) => Err((Some(id), why.clone())),
        }
    }
}

/// UTF-8 bytes as a JSON string, anything else as `{"base64": "..."}`.
pub fn bytes_to_json(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_bytes_are_base64() {
        assert_eq!(bytes_to_json(b"api-7"), json!("api-7"));
        assert_eq!(bytes_to_json(&[0xff, 0x00]), json!({"base64": "/wA="}));
    }

    #[tokio::test]
    async fn undecodable_values_explain_why() {
        let registry = RegistryClient::new(
            "http://127.0.0.1:9",
            Duration::from_millis(200),
            Duration::ZERO,
        );
        let mut decoder = Decoder::new(registry);
        let (id, why) = decoder.decode(b"{\"json\":1}").await.unwrap_err();
        assert_eq!(id, None);
        assert!(why.contains("magic byte"), "{why}");
        let (id, why) = decoder.decode(&[0, 0, 0, 0, 7, 1]).await.unwrap_err();
        assert_eq!(id, Some(7));
        assert!(why.contains("unreachable"), "{why}");
    }
}
