//! The rdkafka implementations of [`Consumer`] and [`Producer`], and the consumer context that
//! reports rebalances to the loop's [`Membership`].

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::consumer::{MessageStream, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::warn;

use crate::broker::{
    ConsumeError, Consumer, ConsumerCallError, ProduceError, Producer, TopicPartition,
};
use crate::client_config::{consumer_config, producer_config};
use crate::config::KafkaSettings;
use crate::record::{to_event, to_kafka_headers};
use crate::run::RuntimeError;
use crate::settle::Membership;
use crate::stage::{Event, Output};

/// A group member on librdkafka's `StreamConsumer`, storing offsets itself
/// (`enable.auto.offset.store=false`) and committing them periodically.
pub(crate) struct KafkaConsumer {
    /// One message stream for the consumer's life. `StreamConsumer::recv` builds a stream per
    /// call (a waker slot registered and removed under a lock, per event); this one is polled
    /// again and again. It borrows `consumer`, which lives on the heap behind the `Arc` and is
    /// declared (so dropped) after it.
    stream: Mutex<MessageStream<'static, RuntimeContext>>,
    consumer: Arc<StreamConsumer<RuntimeContext>>,
}

impl KafkaConsumer {
    /// Creates the consumer and subscribes to `kafka.input_topics`; rebalances go to
    /// `membership`.
    pub fn subscribe(
        kafka: &KafkaSettings,
        worker_id: &str,
        membership: Arc<Membership>,
    ) -> Result<Self, RuntimeError> {
        let consumer: StreamConsumer<RuntimeContext> = consumer_config(kafka, worker_id)
            .map_err(RuntimeError::Kafka)?
            .create_with_context(RuntimeContext { membership })
            .map_err(RuntimeError::Setup)?;
        let topics: Vec<&str> = kafka.input_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| RuntimeError::Subscribe {
                topics: kafka.input_topics.clone(),
                source,
            })?;
        let consumer = Arc::new(consumer);
        // SAFETY: the stream borrows the consumer's waker slab and base consumer, both inside
        // the `Arc`'s allocation, which never moves and outlives the stream: `stream` is
        // dropped before `consumer` (field order), and neither is handed out.
        let stream = unsafe {
            std::mem::transmute::<
                MessageStream<'_, RuntimeContext>,
                MessageStream<'static, RuntimeContext>,
            >(consumer.stream())
        };
        Ok(Self {
            stream: Mutex::new(stream),
            consumer,
        })
    }

    fn stream(&self) -> std::sync::MutexGuard<'_, MessageStream<'static, RuntimeContext>> {
        // Only the loop polls it; a poisoned lock only means a panic elsewhere mid-poll.
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn consumed(
        &self,
        received: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
    ) -> Result<Event, ConsumeError> {
        match received {
            Ok(message) => Ok(to_event(&message)),
            Err(e) => match self.consumer.client().fatal_error() {
                Some((code, reason)) => Err(ConsumeError::Fatal(format!("{code:?}: {reason}"))),
                None => Err(ConsumeError::Transient(e.to_string())),
            },
        }
    }
}

fn call_error(e: KafkaError) -> ConsumerCallError {
    ConsumerCallError(e.to_string())
}

fn topic_partition_list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

impl Consumer for KafkaConsumer {
    async fn recv(&self) -> Result<Event, ConsumeError> {
        poll_fn(|cx| {
            self.stream()
                .poll_next_unpin(cx)
                .map(|next| self.consumed(next.expect("Kafka streams never end")))
        })
        .await
    }

    fn try_recv(&self) -> Option<Result<Event, ConsumeError>> {
        // A no-op waker may replace the loop's in the stream's slot; harmless, since the loop
        // polls `recv` (which installs its own) before it waits.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.stream().poll_next_unpin(&mut cx) {
            Poll::Ready(next) => Some(self.consumed(next.expect("Kafka streams never end"))),
            Poll::Pending => None,
        }
    }

    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError> {
        self.consumer
            .pause(&topic_partition_list(partitions))
            .map_err(call_error)
    }

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError> {
        self.consumer
            .resume(&topic_partition_list(partitions))
            .map_err(call_error)
    }

    fn seek(&self, partition: &TopicPartition, offset: i64) -> Result<(), ConsumerCallError> {
        self.consumer
            .seek(
                &partition.topic,
                partition.partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
            .map_err(call_error)
    }

    fn store_offset(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ConsumerCallError> {
        // librdkafka stores offset + 1, the next to read; fails if the partition was revoked.
        self.consumer
            .store_offset(topic, partition, offset)
            .map_err(call_error)
    }

    fn store_offsets(&self, offsets: &[(&str, i32, i64)]) -> Result<(), ConsumerCallError> {
        // One call for many partitions, and no topic handle created and destroyed per call
        // (`store_offset` takes one, under librdkafka's client-wide lock).
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for &(topic, partition, offset) in offsets {
            // This API takes the next offset to read.
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
                .map_err(call_error)?;
        }
        self.consumer.store_offsets(&tpl).map_err(call_error)
    }

    fn commit(&self) -> Result<(), ConsumerCallError> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(call_error(e)),
        }
    }

    fn leave(&self) {
        self.consumer.unsubscribe();
    }

    fn assignment(&self) -> Result<Vec<TopicPartition>, ConsumerCallError> {
        let tpl = self.consumer.assignment().map_err(call_error)?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect())
    }
}

/// Reports rebalances to the loop's [`Membership`] before they take effect.
struct RuntimeContext {
    membership: Arc<Membership>,
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // Cooperative-sticky: each callback carries only the change.
            Rebalance::Revoke(tpl) => self
                .membership
                .revoked(tpl.elements().iter().map(|e| (e.topic(), e.partition()))),
            Rebalance::Assign(tpl) => self.membership.assigned(tpl.count()),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "offset commit failed; will retry on the next interval"),
        }
    }
}

/// An idempotent librdkafka producer.
pub(crate) struct KafkaProducer {
    producer: FutureProducer,
}

impl KafkaProducer {
    pub fn new(kafka: &KafkaSettings, worker_id: &str) -> Result<Self, RuntimeError> {
        let producer = producer_config(kafka, worker_id)
            .create()
            .map_err(RuntimeError::Setup)?;
        Ok(Self { producer })
    }
}

impl Producer for KafkaProducer {
    type Delivery = KafkaDelivery;

    async fn send(&self, output: &Output) -> Result<KafkaDelivery, ProduceError> {
        let headers = to_kafka_headers(&output.headers);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&output.topic).headers(headers);
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        if let Some(key) = &output.key {
            record = record.key(key.as_ref());
        }
        if let Some(payload) = &output.payload {
            record = record.payload(payload.as_ref());
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(KafkaDelivery(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(ProduceError::Rejected {
                        topic: output.topic.clone(),
                        message: rejection(&e, &output.topic),
                    })
                }
            }
        }
    }
}

/// Why the broker refused a record; a missing ACL names the right to grant, since the worker
/// stops on it and an operator reads this first.
fn rejection(error: &KafkaError, topic: &str) -> String {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => format!(
            "{error}: this worker's principal may not Write to topic {topic}: grant it that ACL \
             (ops/security/kafka-acls.toml lists every worker's rights; `reflexctl acls apply` \
             applies them)"
        ),
        _ => error.to_string(),
    }
}

/// librdkafka's delivery report as the loop's ack.
pub(crate) struct KafkaDelivery(DeliveryFuture);

impl Future for KafkaDelivery {
    type Output = Result<(), ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|report| match report {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, record))) => Err(ProduceError::Rejected {
                topic: record.topic().to_string(),
                message: rejection(&e, record.topic()),
            }),
            Err(_) => Err(ProduceError::Dropped),
        })
    }
}
