//! The raw passthrough baseline: rdkafka consume → produce, nothing in between.
//!
//! Same client kinds (`StreamConsumer`, `FutureProducer`), same settings and the same in-flight
//! bound as the runtime: the settings below copy `consumer_config` / `producer_config` in
//! `crates/runtime/src/run.rs` with the runtime's defaults (they are private there; keep the two
//! in step). Offsets are stored once the output is acknowledged, as the runtime does.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::sync::Semaphore;

/// The runtime's `runtime.max_in_flight` default.
const MAX_IN_FLIGHT: usize = 2000;

/// `session_timeout_ms` / `max_poll_interval_ms`: 6000 / 300000 as the bench runs the workers,
/// longer in backlog mode (the process is stopped while the backlog is produced).
pub async fn run(
    bootstrap: &str,
    group: &str,
    input: &str,
    output: &str,
    session_timeout_ms: u32,
    max_poll_interval_ms: u32,
) -> anyhow::Result<()> {
    let mut consumer = ClientConfig::new();
    consumer
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "reflex-bench-passthrough")
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("max.poll.interval.ms", max_poll_interval_ms.to_string())
        .set("queued.max.messages.kbytes", "16384");
    let consumer: Arc<StreamConsumer> = Arc::new(consumer.create()?);
    consumer.subscribe(&[input])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "reflex-bench-passthrough")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()?;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let message = consumer.recv().await?;
        let permit = in_flight.clone().acquire_owned().await?;
        let mut record = FutureRecord::to(output);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(headers) = message.headers() {
            record = record.headers(headers.detach());
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => anyhow::bail!("produce to {output}: {e}"),
            }
        };
        let (topic, partition, offset) = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        let consumer = consumer.clone();
        tokio::spawn(async move {
            if let Ok(Ok(_)) = delivery.await {
                let _ = consumer.store_offset(&topic, partition, offset);
            }
            drop(permit);
        });
    }
}
