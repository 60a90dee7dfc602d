//! The loop: consume → lanes (process, in key order) → produce → on ack, store the safe offset.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, Headers as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use reflex_core::headers::{ce, Header};
use reflex_core::{metrics as m, Headers};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

use crate::config::{KafkaSettings, RuntimeSettings};
use crate::dead_letter::{dead_letter, FailureContext};
use crate::http::{serve as serve_http, Health};
use crate::offsets::OffsetTracker;
use crate::stage::{Event, Output, Stage, StageError};
use crate::{telemetry, trace};
use tracing::Instrument;

/// Why the loop stopped abnormally. The process should exit non-zero and be restarted; what was
/// not committed is redelivered.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("invalid Kafka client settings: {0} (check the [kafka] section and its properties)")]
    Setup(KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("cannot serve /metrics on {listen}: {message} (set runtime.http_listen)")]
    Http { listen: String, message: String },
    #[error("invalid {field}: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
    #[error("no input topics configured: set kafka.input_topics (or REFLEX_KAFKA__INPUT_TOPICS)")]
    NoInputTopics,
    #[error("a record for {topic} was not acknowledged by the broker: {message}; stopping without committing past its event, which will be redelivered")]
    DeliveryFailed { topic: String, message: String },
}

/// Runs `stage` until `shutdown` resolves (then drains) or a fatal error occurs.
pub async fn run<S: Stage>(
    stage: S,
    kafka: &KafkaSettings,
    runtime: &RuntimeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    if kafka.input_topics.is_empty() {
        return Err(RuntimeError::NoInputTopics);
    }
    let compat = runtime
        .dead_letter_compat
        .iter()
        .map(|name| {
            reflex_core::dead_letter::Dialect::parse(name).ok_or_else(|| RuntimeError::Setting {
                field: "runtime.dead_letter_compat",
                message: format!("`{name}` is not a dialect: use spring, connect or streams"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let worker_id = if runtime.worker_id.is_empty() {
        format!("{}-{}", stage.name(), std::process::id())
    } else {
        runtime.worker_id.clone()
    };
    let health = Arc::new(Health::default());
    if !runtime.http_listen.is_empty() {
        let addr = serve_http(&runtime.http_listen, health.clone())
            .await
            .map_err(|e| RuntimeError::Http {
                listen: runtime.http_listen.clone(),
                message: e.to_string(),
            })?;
        info!(http_listen = %addr, "serving /metrics, /healthz and /readyz");
    }
    if runtime.lag_interval_ms > 0 {
        tokio::spawn(monitor_lag(kafka.clone(), runtime.clone()));
    }
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let consumer: StreamConsumer<RuntimeContext> = consumer_config(kafka, &worker_id)
        .create_with_context(RuntimeContext {
            tracker: tracker.clone(),
            health: health.clone(),
        })
        .map_err(RuntimeError::Setup)?;
    let producer: FutureProducer = producer_config(kafka, &worker_id)
        .create()
        .map_err(RuntimeError::Setup)?;
    let topics: Vec<&str> = kafka.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| RuntimeError::Subscribe {
            topics: kafka.input_topics.clone(),
            source,
        })?;
    info!(
        stage = stage.name(),
        worker = %worker_id,
        group = %kafka.group_id,
        topics = ?kafka.input_topics,
        "worker started"
    );

    let shared = Arc::new(Shared {
        stage,
        worker_id,
        group: kafka.group_id.clone(),
        runtime: runtime.clone(),
        consumer,
        producer,
        tracker,
        in_flight: AtomicUsize::new(0),
        progress: Notify::new(),
        fatal: Mutex::new(None),
        compat,
    });
    let lanes: Vec<mpsc::UnboundedSender<Event>> = (0..runtime.key_lanes.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(shared.clone(), rx));
            tx
        })
        .collect();

    let stage_name = shared.stage.name();
    register_metrics(stage_name);
    let max_in_flight = runtime.max_in_flight.max(1);
    let mut paused = false;
    tokio::pin!(shutdown);
    loop {
        if shared.fatal_error().is_some() {
            break;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = shared.progress.notified() => {
                if paused && shared.in_flight.load(Ordering::Acquire) <= max_in_flight / 2 {
                    if let Ok(assignment) = shared.consumer.assignment() {
                        if let Err(e) = shared.consumer.resume(&assignment) {
                            warn!(error = %e, "resume after backpressure failed");
                        }
                    }
                    paused = false;
                    metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage_name).set(0.0);
                    debug!("backpressure released: partitions resumed");
                }
            }
            received = shared.consumer.recv() => match received {
                Ok(message) => {
                    let event = to_event(&message);
                    drop(message);
                    metrics::counter!(m::EVENTS_IN, "stage" => stage_name).increment(1);
                    shared.tracker_lock().begin(&event.topic, event.partition, event.offset);
                    let now_in_flight = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                    metrics::gauge!(m::IN_FLIGHT, "stage" => stage_name).set(now_in_flight as f64);
                    if paused {
                        // A partition assigned while paused starts unpaused: pause it too.
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&event.topic, event.partition);
                        let _ = shared.consumer.pause(&tpl);
                    } else if now_in_flight >= max_in_flight {
                        if let Ok(assignment) = shared.consumer.assignment() {
                            match shared.consumer.pause(&assignment) {
                                Ok(()) => {
                                    paused = true;
                                    metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage_name).set(assignment.count() as f64);
                                    metrics::counter!(m::BACKPRESSURE_PAUSES, "stage" => stage_name).increment(1);
                                    debug!(in_flight = now_in_flight, "backpressure: partitions paused");
                                }
                                Err(e) => warn!(error = %e, "pausing partitions failed"),
                            }
                        }
                    }
                    let lane_index = lane_of(&event, lanes.len());
                    if lanes[lane_index].send(event).is_err() {
                        error!("key lane stopped unexpectedly");
                        break;
                    }
                }
                Err(e) => {
                    // Broker unreachable, topic missing, ...: librdkafka keeps retrying.
                    warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    // Drain: stop feeding lanes, let in-flight events finish within the grace period.
    shared.consumer.context().health.set_draining();
    drop(lanes);
    let deadline = Instant::now() + Duration::from_millis(runtime.drain_grace_ms);
    while shared.in_flight.load(Ordering::Acquire) > 0 && shared.fatal_error().is_none() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = tokio::time::timeout(deadline - now, shared.progress.notified()).await;
    }
    let left = shared.in_flight.load(Ordering::Acquire);
    if let Some(fatal) = shared.fatal_error() {
        error!(error = %fatal, "stopping on a fatal error");
        telemetry::shutdown();
        return Err(fatal);
    }
    if left > 0 {
        warn!(
            in_flight = left,
            "drain grace period elapsed; unfinished events will be redelivered"
        );
    }
    match shared.consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!(error = %e, "final commit failed; the last events may be redelivered"),
    }
    shared.consumer.unsubscribe();
    info!(stage = stage_name, "worker stopped");
    telemetry::shutdown();
    Ok(())
}

struct Shared<S> {
    stage: S,
    worker_id: String,
    group: String,
    runtime: RuntimeSettings,
    consumer: StreamConsumer<RuntimeContext>,
    producer: FutureProducer,
    tracker: Arc<Mutex<OffsetTracker>>,
    in_flight: AtomicUsize,
    /// Notified whenever an event finishes (backpressure release, drain).
    progress: Notify,
    fatal: Mutex<Option<(String, String)>>,
    /// Dead-letter header dialects written besides Reflex's own.
    compat: Vec<reflex_core::dead_letter::Dialect>,
}

impl<S: Stage> Shared<S> {
    fn tracker_lock(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fatal_error(&self) -> Option<RuntimeError> {
        let guard = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(|(topic, message)| RuntimeError::DeliveryFailed {
                topic: topic.clone(),
                message: message.clone(),
            })
    }

    /// Processes with retries for retryable classes; on final failure returns the dead letter.
    async fn process(&self, event: &Event) -> (Vec<Output>, bool) {
        let stage = self.stage.name();
        let mut attempt = 1;
        let mut first_failure_ms = None;
        loop {
            let started = Instant::now();
            let result = self.stage.process(event).await;
            metrics::histogram!(m::PROCESSING_SECONDS, "stage" => stage)
                .record(started.elapsed().as_secs_f64());
            let error: StageError = match result {
                Ok(outputs) => return (outputs, false),
                Err(error) => error,
            };
            first_failure_ms.get_or_insert_with(now_ms);
            if error.class.is_retryable() && attempt < self.runtime.max_attempts {
                let backoff = backoff(&self.runtime, attempt);
                warn!(
                    topic = %event.topic, partition = event.partition, offset = event.offset,
                    ce_id = event.headers.get_str(ce::ID).unwrap_or(""),
                    correlation_id = event.headers.get_str(ce::CORRELATION_ID).unwrap_or(""),
                    error_class = %error.class, error = %error.message, attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    "retrying event"
                );
                metrics::counter!(m::RETRIES, "stage" => stage).increment(1);
                tokio::time::sleep(backoff).await;
                attempt += 1;
                continue;
            }
            let ctx = FailureContext {
                stage,
                worker: &self.worker_id,
                group: &self.group,
                attempts: attempt,
                first_failure_ms: first_failure_ms.unwrap_or_else(now_ms),
                dead_letter_suffix: &self.runtime.dead_letter_suffix,
                compat: &self.compat,
            };
            trace::record_error(&tracing::Span::current(), error.class.as_str());
            let record = dead_letter(event, &error, &ctx);
            warn!(
                topic = %event.topic, partition = event.partition, offset = event.offset,
                ce_id = event.headers.get_str(ce::ID).unwrap_or(""),
                correlation_id = event.headers.get_str(ce::CORRELATION_ID).unwrap_or(""),
                error_class = %error.class, error = %error.message, attempts = attempt,
                dead_letter_topic = %record.topic,
                "event dead-lettered"
            );
            metrics::counter!(m::DEAD_LETTERS, "stage" => stage, "class" => error.class.as_str())
                .increment(1);
            return (vec![record], true);
        }
    }

    /// Enqueues every output in order; librdkafka keeps per-partition order from here on.
    async fn enqueue(&self, outputs: &[Output]) -> Result<Vec<(String, DeliveryFuture)>, String> {
        let mut deliveries = Vec::with_capacity(outputs.len());
        for output in outputs {
            let headers = to_kafka_headers(&output.headers);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&output.topic).headers(headers);
            if let Some(key) = &output.key {
                record = record.key(key.as_ref());
            }
            if let Some(payload) = &output.payload {
                record = record.payload(payload.as_ref());
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((output.topic.clone(), delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(format!("{}: {e}", output.topic)),
                }
            }
        }
        Ok(deliveries)
    }

    /// Awaits the acks of one event's records, then marks it finished and stores the safe offset.
    async fn settle(
        &self,
        event: &Event,
        deliveries: Vec<(String, DeliveryFuture)>,
        dead_lettered: bool,
    ) {
        let produced = deliveries.len();
        for (topic, delivery) in deliveries {
            let failure = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "producer dropped the delivery report".to_string(),
            };
            self.fail(topic, failure);
            return;
        }
        if !dead_lettered {
            metrics::counter!(m::EVENTS_OUT, "stage" => self.stage.name())
                .increment(produced as u64);
        }
        let safe = self
            .tracker_lock()
            .finish(&event.topic, event.partition, event.offset);
        if let Some(offset) = safe {
            // Stores offset + 1 (the next to read); fails harmlessly if the partition was revoked.
            if let Err(e) = self
                .consumer
                .store_offset(&event.topic, event.partition, offset)
            {
                debug!(topic = %event.topic, partition = event.partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
        self.done();
    }

    fn done(&self) {
        let left = self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(m::IN_FLIGHT, "stage" => self.stage.name()).set(left as f64);
        self.progress.notify_one();
    }

    fn fail(&self, topic: String, message: String) {
        error!(topic = %topic, error = %message, "record not acknowledged: stopping");
        let mut guard = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        guard.get_or_insert((topic, message));
        drop(guard);
        self.progress.notify_one();
    }
}

/// One key lane: strictly sequential processing and enqueueing, acks awaited concurrently.
async fn lane<S: Stage>(shared: Arc<Shared<S>>, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(event) = events.recv().await {
        let span = trace::process_span(&event, &shared.group);
        let (mut outputs, dead_lettered) = shared.process(&event).instrument(span.clone()).await;
        trace::inject(&span, &mut outputs);
        drop(span);
        if outputs.is_empty() {
            metrics::counter!(m::EVENTS_DROPPED, "stage" => shared.stage.name()).increment(1);
        }
        match shared.enqueue(&outputs).await {
            Ok(deliveries) => {
                let shared = shared.clone();
                tokio::spawn(async move { shared.settle(&event, deliveries, dead_lettered).await });
            }
            Err(message) => {
                shared.fail(event.topic.clone(), message);
                return;
            }
        }
    }
}

/// Registers the loop's series at zero, so `/metrics` shows them (and `rate()` works) before
/// the first event of each kind.
fn register_metrics(stage: &'static str) {
    for name in [
        m::EVENTS_IN,
        m::EVENTS_OUT,
        m::EVENTS_DROPPED,
        m::RETRIES,
        m::BACKPRESSURE_PAUSES,
    ] {
        metrics::counter!(name, "stage" => stage).increment(0);
    }
    for class in reflex_core::ErrorClass::ALL {
        metrics::counter!(m::DEAD_LETTERS, "stage" => stage, "class" => class.as_str())
            .increment(0);
    }
    metrics::gauge!(m::IN_FLIGHT, "stage" => stage).set(0.0);
    metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage).set(0.0);
}

/// Measures this worker's own group lag every `lag_interval_ms` and exports it.
async fn monitor_lag(kafka: KafkaSettings, runtime: RuntimeSettings) {
    let thresholds = reflex_lag::Thresholds {
        window: runtime.lag_window,
        stall_after: Duration::from_millis(runtime.lag_stall_after_ms),
        stop_after: Duration::from_millis(runtime.lag_stop_after_ms),
    };
    let mut evaluator = reflex_lag::Evaluator::new(thresholds);
    let mut reader = None;
    loop {
        tokio::time::sleep(Duration::from_millis(runtime.lag_interval_ms)).await;
        let (k, r) = (kafka.clone(), reader.take());
        let result = tokio::task::spawn_blocking(move || {
            let mut reader = match r {
                Some(r) => r,
                None => reflex_lag::LagReader::new(
                    &k.bootstrap_servers,
                    &k.properties,
                    Duration::from_secs(10),
                )?,
            };
            let sample = reader.read(&k.group_id, &k.input_topics, &k.properties);
            sample.map(|s| (reader, s))
        })
        .await;
        match result {
            Ok(Ok((r, sample))) => {
                let status = evaluator.observe(sample.clone());
                reflex_lag::export(&sample, status);
                reader = Some(r);
            }
            Ok(Err(e)) => debug!(error = %e, "lag sample failed"),
            Err(e) => debug!(error = %e, "lag sampler panicked"),
        }
    }
}

fn lane_of(event: &Event, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match &event.key {
        Some(key) => key.hash(&mut hasher),
        // Without a key, keep partition order.
        None => (&event.topic, event.partition).hash(&mut hasher),
    }
    (hasher.finish() % lanes as u64) as usize
}

fn backoff(runtime: &RuntimeSettings, attempt: u32) -> Duration {
    let exp = runtime
        .retry_backoff_ms
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(runtime.retry_max_backoff_ms);
    // Jitter in [0.5, 1.5) from the clock's low bits: enough to spread retries of many replicas.
    let jitter = 0.5
        + (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            % 1000) as f64
            / 1000.0;
    Duration::from_millis((exp as f64 * jitter) as u64)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn to_event(message: &BorrowedMessage<'_>) -> Event {
    let headers = message
        .headers()
        .map(|hs| {
            Headers(
                hs.iter()
                    .map(|h| Header {
                        key: h.key.to_string(),
                        value: h.value.map(<[u8]>::to_vec),
                    })
                    .collect(),
            )
        })
        .unwrap_or_default();
    Event {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(Bytes::copy_from_slice),
        payload: message.payload().map(Bytes::copy_from_slice),
        headers,
    }
}

fn to_kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(headers.len()), |acc, h| {
            acc.insert(KafkaHeader {
                key: &h.key,
                value: h.value.as_deref(),
            })
        })
}

fn consumer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("group.id", &kafka.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        // Offsets are stored by the runtime only once an event's outputs are acknowledged.
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            kafka.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", &kafka.auto_offset_reset)
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "max.poll.interval.ms",
            kafka.max_poll_interval_ms.to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            kafka.fetch_queue_kbytes.to_string(),
        );
    if !kafka.group_instance_id.is_empty() {
        config.set("group.instance.id", &kafka.group_instance_id);
    }
    for (k, v) in kafka.properties.iter().chain(&kafka.consumer_properties) {
        config.set(k, v);
    }
    config
}

fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // Idempotence keeps per-partition order and no duplicates across librdkafka's retries.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // The Java client's partitioner, so keys land where Java/Kafka Streams producers put them.
        .set("partitioner", "murmur2_random");
    for (k, v) in kafka.properties.iter().chain(&kafka.producer_properties) {
        config.set(k, v);
    }
    config
}

/// Forgets revoked partitions so late acks never store offsets for partitions we lost.
struct RuntimeContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    health: Arc<Health>,
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements() {
                    tracker.forget(e.topic(), e.partition());
                }
                info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                self.health.set_assigned();
                info!(partitions = tpl.count(), "partitions assigned");
            }
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
