//! What the loop needs from Kafka, as two small traits: [`Consumer`] and [`Producer`]. The loop
//! is generic over them (static dispatch: nothing is boxed per event); [`crate::kafka`] holds
//! the rdkafka implementations, and the loop's tests use in-memory ones.

use std::future::Future;

use thiserror::Error;

use crate::stage::{Event, Output};

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// A consumer failure; the variant says whether consuming can go on.
#[derive(Debug, Clone, Error)]
pub enum ConsumeError {
    /// Broker unreachable, topic missing, ...: the client keeps retrying by itself.
    #[error("{0}")]
    Transient(String),
    /// The client can never consume again (e.g. a static member fenced by its own rejoin).
    #[error("{0}")]
    Fatal(String),
}

/// A request to the consumer (pause, resume, seek, store, commit) that failed.
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct ConsumerCallError(pub String);

/// The consumer side of the loop: a group member reading its assigned partitions.
///
/// Contract with the loop: the implementation tells the loop's
/// [`Assignments`](crate::settle::Assignments) about every assignment change synchronously,
/// before the change takes effect, so revoked partitions are forgotten before a late ack could
/// store an offset for them.
pub trait Consumer: Send + Sync + 'static {
    /// The next record of an assigned, unpaused partition.
    fn recv(&self) -> impl Future<Output = Result<Event, ConsumeError>> + Send;

    /// The next record if one is ready now, without waiting: the loop takes what is ready in
    /// one pass after `recv` returned. `None` when nothing is ready (the default: one at a time).
    fn try_recv(&self) -> Option<Result<Event, ConsumeError>> {
        None
    }

    /// Stops fetching from `partitions` (the group session stays alive).
    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError>;

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError>;

    /// Makes `offset` the next record read from the partition.
    fn seek(&self, partition: &TopicPartition, offset: i64) -> Result<(), ConsumerCallError>;

    /// Marks everything up to and including `offset` as done: the next commit resumes after it.
    fn store_offset(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ConsumerCallError>;

    /// [`Consumer::store_offset`] for several partitions at once (one call per settled batch).
    fn store_offsets(&self, offsets: &[(&str, i32, i64)]) -> Result<(), ConsumerCallError> {
        let mut result = Ok(());
        for &(topic, partition, offset) in offsets {
            if let Err(e) = self.store_offset(topic, partition, offset) {
                result = Err(e);
            }
        }
        result
    }

    /// Commits the stored offsets now, before leaving (periodic commits are the client's own).
    fn commit(&self) -> Result<(), ConsumerCallError>;

    /// Leaves the group.
    fn leave(&self);

    fn assignment(&self) -> Result<Vec<TopicPartition>, ConsumerCallError>;
}

/// Why a record was not produced.
#[derive(Debug, Clone, Error)]
pub enum ProduceError {
    /// The broker refused or never acknowledged the record.
    #[error("{topic}: {message}")]
    Rejected { topic: String, message: String },
    /// The producer went away before reporting the delivery.
    #[error("producer dropped the delivery report")]
    Dropped,
}

/// The producer side of the loop.
pub trait Producer: Send + Sync + 'static {
    /// Resolves when the broker acknowledged the record, or with why it did not.
    type Delivery: Future<Output = Result<(), ProduceError>> + Send + 'static;

    /// Enqueues `output` (waiting while the client's queue is full); records enqueued one after
    /// another to one partition keep their order.
    fn send(
        &self,
        output: &Output,
    ) -> impl Future<Output = Result<Self::Delivery, ProduceError>> + Send;
}
