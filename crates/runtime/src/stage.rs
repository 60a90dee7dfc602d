//! What a worker implements: a [`Stage`] turns one [`Event`] into zero or more [`Output`]s.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use reflex_core::registry::{RegisteredSchema, RegistryClient};
use reflex_core::wire::{decode_frame, Framed};
use reflex_core::{ErrorClass, Headers};
use thiserror::Error;

/// One consumed record, owned so the stage may keep it across awaits.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Record timestamp (ms since the epoch), when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Headers,
}

impl Event {
    /// Checks the CloudEvents envelope: a record without the required `ce_*` headers is a
    /// permanent error naming the missing headers and the fix.
    pub fn require_cloudevent(&self) -> Result<(), StageError> {
        let missing = self.headers.missing_required_ce();
        if missing.is_empty() {
            return Ok(());
        }
        Err(StageError::permanent(format!(
            "missing CloudEvents header(s) {}: producers must send {} (CloudEvents Kafka binding, \
             binary mode; `reflexctl publish` does)",
            missing.join(", "),
            reflex_core::headers::ce::REQUIRED.join(", ")
        )))
    }

    /// The event's Confluent-framed value and the schema its id names (from `registry`'s
    /// cache): the first step of every stage that reads payloads. A tombstone or a broken frame
    /// is poison; an unknown or unreachable schema id has the registry error's class.
    pub async fn framed_value(
        &self,
        registry: &RegistryClient,
    ) -> Result<(Framed<'_>, Arc<RegisteredSchema>), StageError> {
        let value = self.payload.as_deref().ok_or_else(|| {
            StageError::poison(
                "record has no value (tombstone): expected an Avro event in Confluent wire format",
            )
        })?;
        let framed = decode_frame(value).map_err(|e| StageError::poison(e.to_string()))?;
        let schema = registry
            .schema_by_id(framed.schema_id)
            .await
            .map_err(|e| StageError::new(e.class(), e.to_string()))?;
        Ok((framed, schema))
    }
}

/// One record to produce. Payload bytes are usually forwarded unchanged (cheap `Bytes` clones).
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    /// A fixed partition (redeliveries go back to the original one); `None` partitions by key.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Headers,
}

/// A failed event; the class decides whether the runtime retries it or dead-letters it.
#[derive(Debug, Clone, Error)]
#[error("{class} error: {message}")]
pub struct StageError {
    pub class: ErrorClass,
    pub message: String,
    /// Records produced together with the dead letter when this is the event's final failure
    /// (e.g. the actor's audit outcomes of its failed attempts); dropped if it is retried.
    pub outputs: Vec<Output>,
}

impl StageError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            outputs: Vec::new(),
        }
    }

    /// Adds records to produce along with the dead letter.
    pub fn with_outputs(mut self, outputs: Vec<Output>) -> Self {
        self.outputs = outputs;
        self
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }
    pub fn poison(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Poison, message)
    }
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Schema, message)
    }
}

/// A worker's logic. Implementations are tested without a broker; [`crate::run`] drives them.
pub trait Stage: Send + Sync + 'static {
    /// Short name used in logs, metrics labels and dead-letter headers (`router`, `actor`, ...).
    fn name(&self) -> &'static str;

    /// Processes one event. Returning no outputs means the event is done (e.g. dropped by a rule).
    fn process(
        &self,
        event: &Event,
    ) -> impl Future<Output = Result<Vec<Output>, StageError>> + Send;

    /// Processes events of distinct keys taken from one lane together, returning one result per
    /// event in order. A stage overrides this to share round trips among them (the enricher's
    /// lookups in one Redis pipeline, the actor's claims and done records in two); the default
    /// processes them one by one. Failed events are retried one at a time with
    /// [`Stage::process`], so both must mean the same.
    fn process_batch(
        &self,
        events: &[&Event],
    ) -> impl Future<Output = Vec<Result<Vec<Output>, StageError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(events.len());
            for event in events {
                results.push(self.process(event).await);
            }
            results
        }
    }

    /// The earliest time (ms since the epoch) `event` may be processed, if later than now: the
    /// runtime then pauses the event's partition until that time and reads it again, instead of
    /// sleeping with it in flight (used by the dead-letter reprocessor's redelivery schedule).
    fn not_before_ms(&self, _event: &Event) -> Option<i64> {
        None
    }
}
