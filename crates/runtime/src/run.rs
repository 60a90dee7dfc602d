//! The loop: consume → lanes (process, in key order) → produce → on ack, store the safe offset.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::StreamConsumer;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, Headers as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use reflex_core::headers::{ce, reflex as rh, Header, HeaderName};
use reflex_core::{metrics as m, ErrorClass, Headers};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

use crate::client_config::{consumer_config, producer_config, ClientConfigError};
use crate::config::{KafkaSettings, RuntimeSettings};
use crate::dead_letter::{dead_letter, FailureContext};
use crate::http::{serve as serve_http, Health};
use crate::offsets::OffsetTracker;
use crate::park::{is_release, Decision, Parking};
use crate::stage::{Event, Output, Stage, StageError};
use crate::{telemetry, trace};
use tracing::Instrument;

/// How long the loop may stop taking records at `max_in_flight` before it pauses partitions
/// (well below `max.poll.interval.ms`).
const BACKPRESSURE_PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Why the loop stopped abnormally. The process should exit non-zero and be restarted; what was
/// not committed is redelivered.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("invalid Kafka client settings: {0} (check the [kafka] section and its properties)")]
    Setup(KafkaError),
    /// Not a `#[source]`: the message already carries it, and the worker prints the chain.
    #[error("invalid Kafka settings: {0}")]
    Kafka(ClientConfigError),
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
    #[error("cannot open runtime.state_url {url}: {message} (is Redis up? empty keeps parked keys in process)")]
    State { url: String, message: String },
    #[error("a record for {topic} was not acknowledged by the broker: {message}; stopping without committing past its event, which will be redelivered")]
    DeliveryFailed { topic: String, message: String },
    #[error("the Kafka consumer hit a fatal error: {message}; it cannot consume again, so the worker stops (restart it: uncommitted events are redelivered)")]
    ConsumerFatal { message: String },
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
    let compat: Vec<_> = runtime
        .dead_letter_compat
        .iter()
        .map(|d| d.dialect())
        .collect();
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
    if !runtime.lag_interval.is_zero() {
        tokio::spawn(monitor_lag(kafka.clone(), runtime.clone()));
    }
    let rebalances = Arc::new(AtomicU64::new(0));
    let parking = if runtime.park_keys {
        let redis = if runtime.state_url.is_empty() {
            info!("parked keys are kept in process (runtime.state_url is empty): fine for one replica; set it for several");
            None
        } else {
            let conn = reflex_core::redis_conn::connect(&runtime.state_url)
                .await
                .map_err(|e| RuntimeError::State {
                    url: reflex_core::redis_conn::redact_url(&runtime.state_url),
                    message: format!(
                        "{e}{}",
                        reflex_core::redis_conn::connect_hint(&runtime.state_url, &e)
                    ),
                })?;
            Some(conn)
        };
        Some(Parking::new(
            redis,
            format!("reflex:park:{}", kafka.group_id),
            stage.name(),
            rebalances.clone(),
        ))
    } else {
        None
    };
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let consumer: StreamConsumer<RuntimeContext> = consumer_config(kafka, &worker_id)
        .map_err(RuntimeError::Kafka)?
        .create_with_context(RuntimeContext {
            tracker: tracker.clone(),
            health: health.clone(),
            rebalances,
            stage: stage.name(),
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

    let metrics = LoopMetrics::new(stage.name());
    let shared = Arc::new(Shared {
        metrics,
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
        parking,
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
    // At `max_in_flight` the loop first just stops taking records (librdkafka keeps what it
    // fetched); only if that lasts `BACKPRESSURE_PAUSE_AFTER` does it pause the partitions,
    // which keeps the group session and poll interval alive but drops and refetches what was
    // prefetched (measured: pausing at every saturation cost the router 3.9x throughput).
    let mut saturated_since: Option<tokio::time::Instant> = None;
    let mut consumer_fatal = None;
    // Partitions paused until a not-before time (`Stage::not_before_ms`): the offset to read
    // again and when.
    let mut delayed: HashMap<(String, i32), (i64, tokio::time::Instant)> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        if shared.fatal_error().is_some() {
            break;
        }
        if saturated_since.is_some() && shared.in_flight.load(Ordering::Acquire) < max_in_flight {
            saturated_since = None;
        }
        let pause_at = saturated_since
            .map(|since| since + BACKPRESSURE_PAUSE_AFTER)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let next_due = delayed
            .values()
            .map(|(_, due)| *due)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next_due), if !delayed.is_empty() => {
                let now = tokio::time::Instant::now();
                let due: Vec<(String, i32)> = delayed
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(tp, _)| tp.clone())
                    .collect();
                for (topic, partition) in due {
                    delayed.remove(&(topic.clone(), partition));
                    if !paused {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topic, partition);
                        if let Err(e) = shared.consumer.resume(&tpl) {
                            warn!(topic = %topic, partition, error = %e, "resuming a delayed partition failed");
                        }
                    }
                }
                metrics::gauge!(m::DELAYED_PARTITIONS, "stage" => stage_name).set(delayed.len() as f64);
            }
            _ = tokio::time::sleep_until(pause_at), if saturated_since.is_some() && !paused => {
                saturated_since = None;
                if let Ok(assignment) = shared.consumer.assignment() {
                    match shared.consumer.pause(&assignment) {
                        Ok(()) => {
                            paused = true;
                            metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage_name).set(assignment.count() as f64);
                            metrics::counter!(m::BACKPRESSURE_PAUSES, "stage" => stage_name).increment(1);
                            debug!("backpressure: partitions paused (saturated for 5 s)");
                        }
                        Err(e) => warn!(error = %e, "pausing partitions failed"),
                    }
                }
            }
            _ = shared.progress.notified() => {
                if paused && shared.in_flight.load(Ordering::Acquire) <= max_in_flight / 2 {
                    if let Ok(assignment) = shared.consumer.assignment() {
                        // Partitions waiting for a not-before time stay paused.
                        let mut resume = TopicPartitionList::new();
                        for e in assignment.elements() {
                            if !delayed.contains_key(&(e.topic().to_string(), e.partition())) {
                                resume.add_partition(e.topic(), e.partition());
                            }
                        }
                        if let Err(e) = shared.consumer.resume(&resume) {
                            warn!(error = %e, "resume after backpressure failed");
                        }
                    }
                    paused = false;
                    metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage_name).set(0.0);
                    debug!("backpressure released: partitions resumed");
                }
            }
            received = shared.consumer.recv(), if saturated_since.is_none() || paused => match received {
                Ok(message) => {
                    let event = to_event(&message);
                    drop(message);
                    if !delayed.is_empty() {
                        let tp = (event.topic.clone(), event.partition);
                        if let Some(&(offset, _)) = delayed.get(&tp) {
                            if event.offset > offset {
                                // Fetched before the pause took effect: it is read again later.
                                continue;
                            }
                            // Read again (resumed, or re-assigned): decide afresh below.
                            delayed.remove(&tp);
                        }
                    }
                    if let Some(not_before) = shared.stage.not_before_ms(&event) {
                        let wait = not_before - now_ms();
                        if wait > 0 {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition(&event.topic, event.partition);
                            if let Err(e) = shared.consumer.pause(&tpl) {
                                warn!(error = %e, "pausing a partition until its not-before time failed");
                            }
                            if let Err(e) = shared.consumer.seek(&event.topic, event.partition, Offset::Offset(event.offset), Duration::from_secs(5)) {
                                warn!(topic = %event.topic, partition = event.partition, error = %e, "seek back to a delayed record failed");
                            }
                            let due = tokio::time::Instant::now() + Duration::from_millis(wait as u64);
                            debug!(topic = %event.topic, partition = event.partition, offset = event.offset, wait_ms = wait, "partition paused until the record is due");
                            delayed.insert((event.topic, event.partition), (event.offset, due));
                            metrics::gauge!(m::DELAYED_PARTITIONS, "stage" => stage_name).set(delayed.len() as f64);
                            continue;
                        }
                    }
                    shared.metrics.events_in.increment(1);
                    shared.tracker_lock().begin(&event.topic, event.partition, event.offset);
                    let now_in_flight = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                    shared.metrics.in_flight.set(now_in_flight as f64);
                    if paused {
                        // A partition assigned while paused starts unpaused: pause it too.
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&event.topic, event.partition);
                        let _ = shared.consumer.pause(&tpl);
                    } else if now_in_flight >= max_in_flight {
                        saturated_since = Some(tokio::time::Instant::now());
                    }
                    let lane_index = lane_of(&event, lanes.len());
                    if lanes[lane_index].send(event).is_err() {
                        error!("key lane stopped unexpectedly");
                        break;
                    }
                }
                Err(e) => {
                    if let Some((code, reason)) = shared.consumer.client().fatal_error() {
                        // librdkafka's consumer is unusable after a fatal error (e.g. a static
                        // member fenced by its own rejoin after a broker stall): consuming on
                        // would stall its partitions forever. Stop; a restart rejoins.
                        consumer_fatal = Some(format!("{code:?}: {reason}"));
                        break;
                    }
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
    let deadline = Instant::now() + runtime.drain_grace;
    while shared.in_flight.load(Ordering::Acquire) > 0 && shared.fatal_error().is_none() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = tokio::time::timeout(deadline - now, shared.progress.notified()).await;
    }
    let left = shared.in_flight.load(Ordering::Acquire);
    if let Some(message) = consumer_fatal {
        error!(error = %message, "stopping: the Kafka consumer hit a fatal error");
        telemetry::shutdown();
        return Err(RuntimeError::ConsumerFatal { message });
    }
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

/// The loop's metric handles, resolved once: `metrics::counter!(name, labels)` per event is a
/// registry lookup with label hashing.
struct LoopMetrics {
    events_in: metrics::Counter,
    events_out: metrics::Counter,
    events_dropped: metrics::Counter,
    retries: metrics::Counter,
    in_flight: metrics::Gauge,
    processing: metrics::Histogram,
}

impl LoopMetrics {
    fn new(stage: &'static str) -> Self {
        Self {
            events_in: metrics::counter!(m::EVENTS_IN, "stage" => stage),
            events_out: metrics::counter!(m::EVENTS_OUT, "stage" => stage),
            events_dropped: metrics::counter!(m::EVENTS_DROPPED, "stage" => stage),
            retries: metrics::counter!(m::RETRIES, "stage" => stage),
            in_flight: metrics::gauge!(m::IN_FLIGHT, "stage" => stage),
            processing: metrics::histogram!(m::PROCESSING_SECONDS, "stage" => stage),
        }
    }
}

struct Shared<S> {
    metrics: LoopMetrics,
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
    /// Per-key parking state (`runtime.park_keys`).
    parking: Option<Parking>,
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

    /// Processes with in-process retries for retryable classes (bounded by `max_attempts` and
    /// `retry_deadline`); on final failure returns the dead letter and the failure's class
    /// (a retryable one carries a not-before time for the reprocessor: a non-blocking retry).
    /// `first` is the first attempt's result when the event was already processed in a batch.
    async fn process(
        &self,
        event: &Event,
        mut first: Option<Result<Vec<Output>, StageError>>,
    ) -> (Vec<Output>, Option<(ErrorClass, i64)>) {
        let stage = self.stage.name();
        let mut attempt = 1;
        let mut first_failure_ms = None;
        let started_at = Instant::now();
        loop {
            let result = match first.take() {
                Some(result) => result,
                None => {
                    let started = Instant::now();
                    let result = self.stage.process(event).await;
                    self.metrics
                        .processing
                        .record(started.elapsed().as_secs_f64());
                    result
                }
            };
            let error: StageError = match result {
                Ok(outputs) => return (outputs, None),
                Err(error) => error,
            };
            first_failure_ms.get_or_insert_with(now_ms);
            let within_deadline = started_at.elapsed() < self.runtime.retry_deadline;
            if error.class.is_retryable() && attempt < self.runtime.max_attempts && within_deadline
            {
                let backoff = backoff(&self.runtime, attempt);
                warn!(
                    topic = %event.topic, partition = event.partition, offset = event.offset,
                    ce_id = event.headers.get_str(ce::ID).unwrap_or(""),
                    correlation_id = event.headers.get_str(ce::CORRELATION_ID).unwrap_or(""),
                    error_class = %error.class, error = %error.message, attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    "retrying event"
                );
                self.metrics.retries.increment(1);
                tokio::time::sleep(backoff).await;
                attempt += 1;
                continue;
            }
            let not_before_ms = now_ms() + redelivery_delay(&self.runtime, &event.headers);
            let ctx = FailureContext {
                stage,
                worker: &self.worker_id,
                group: &self.group,
                attempts: attempt,
                first_failure_ms: first_failure_ms.unwrap_or_else(now_ms),
                retry_not_before_ms: error.class.is_retryable().then_some(not_before_ms),
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
            let class = error.class;
            let mut records = error.outputs;
            records.push(record);
            return (records, Some((class, not_before_ms)));
        }
    }

    /// The dead-letter record of an event parked behind `behind` (an earlier event of its key
    /// awaiting redelivery): not processed, due for redelivery with its head.
    fn park_record(&self, event: &Event, behind: &str, not_before_ms: i64) -> Output {
        let error = StageError::transient(format!(
            "parked behind {behind}: an earlier event with this key awaits redelivery, and keys \
             keep their order"
        ));
        let ctx = FailureContext {
            stage: self.stage.name(),
            worker: &self.worker_id,
            group: &self.group,
            attempts: 0,
            first_failure_ms: now_ms(),
            retry_not_before_ms: Some(not_before_ms.max(now_ms())),
            dead_letter_suffix: &self.runtime.dead_letter_suffix,
            compat: &self.compat,
        };
        let mut record = dead_letter(event, &error, &ctx);
        record.headers.set(rh::PARKED_BEHIND, behind.to_owned());
        record
    }

    /// Enqueues every output in order; librdkafka keeps per-partition order from here on.
    async fn enqueue(&self, outputs: &[Output]) -> Result<Vec<DeliveryFuture>, String> {
        let mut deliveries = Vec::with_capacity(outputs.len());
        for output in outputs {
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
                    Ok(delivery) => {
                        deliveries.push(delivery);
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
    async fn settle(&self, event: &Event, deliveries: Vec<DeliveryFuture>, dead_lettered: bool) {
        let produced = deliveries.len();
        for delivery in deliveries {
            let (topic, failure) = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, record))) => (record.topic().to_string(), e.to_string()),
                Err(_) => (
                    format!("an output of {}", event.topic),
                    "producer dropped the delivery report".to_string(),
                ),
            };
            self.fail(topic, failure);
            return;
        }
        if !dead_lettered {
            self.metrics.events_out.increment(produced as u64);
        }
        // Stored while the tracker is locked: settles of one partition run concurrently, and a
        // store done after the lock was released could land after a later, higher one and move
        // the committed offset back (seen: 4 records left uncommitted at the end of a stream).
        let mut tracker = self.tracker_lock();
        if let Some(offset) = tracker.finish(&event.topic, event.partition, event.offset) {
            // Stores offset + 1 (the next to read); fails harmlessly if the partition was revoked.
            if let Err(e) = self
                .consumer
                .store_offset(&event.topic, event.partition, offset)
            {
                debug!(topic = %event.topic, partition = event.partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
        drop(tracker);
        self.done();
    }

    fn done(&self) {
        let left = self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.in_flight.set(left as f64);
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

/// An event whose records are enqueued, waiting for their acks.
type Enqueued = (Event, Vec<DeliveryFuture>, bool);

/// Awaits the acks of one lane's enqueued events concurrently (in whatever order they come) and
/// settles each; replaces a task spawn per event (measured as part of the per-event overhead).
/// Ends once the lane is gone and every event it handed over is settled.
async fn settler<S: Stage>(
    shared: Arc<Shared<S>>,
    mut enqueued: mpsc::UnboundedReceiver<Enqueued>,
) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            received = enqueued.recv(), if open => match received {
                Some((event, deliveries, dead_lettered)) => {
                    let shared = &shared;
                    pending.push(async move { shared.settle(&event, deliveries, dead_lettered).await });
                }
                None => open = false,
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
            else => break,
        }
    }
}

/// Most events a lane holds back while it builds batches (it stops taking from its queue
/// beyond this; they wait in the channel instead).
const LANE_LOOKAHEAD: usize = 1024;

/// One key lane: per-key sequential processing and enqueueing, acks awaited concurrently.
///
/// Each round takes what is already queued (never waiting for more) and processes a batch of
/// at most `runtime.batch_max` events with distinct keys ([`next_batch`]) together, so the
/// stage can share round trips. An event whose key is already in the batch waits for the next
/// round: events of one key are still processed, and their outputs enqueued, one after another.
async fn lane<S: Stage>(shared: Arc<Shared<S>>, mut events: mpsc::UnboundedReceiver<Event>) {
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    tokio::spawn(settler(shared.clone(), settle_rx));
    let batch_max = shared.runtime.batch_max.max(1);
    let mut queued: VecDeque<Event> = VecDeque::new();
    loop {
        if queued.is_empty() {
            match events.recv().await {
                Some(event) => queued.push_back(event),
                None => return,
            }
        }
        while queued.len() < LANE_LOOKAHEAD {
            match events.try_recv() {
                Ok(event) => queued.push_back(event),
                Err(_) => break,
            }
        }
        let batch = next_batch(&mut queued, batch_max);
        if !process_batch(&shared, batch, &settle_tx).await {
            return;
        }
    }
}

/// How far into a lane's queue [`next_batch`] looks for events of keys not yet in the batch.
const BATCH_SCAN: usize = 256;

/// Takes the first event of each key from the front of `queued` (up to `max`, looking at most
/// [`BATCH_SCAN`] deep), in queue order; a later event of a key already met stays queued, in
/// order. Keyless events are ordered by their partition instead.
fn next_batch(queued: &mut VecDeque<Event>, max: usize) -> Vec<Event> {
    if max <= 1 || queued.len() == 1 {
        return queued.pop_front().into_iter().collect();
    }
    let mut batch = Vec::new();
    // Hashes of the keys met (a collision only keeps an event for the next round); a short
    // list, scanned.
    let mut keys_met: Vec<u64> = Vec::new();
    let mut skipped = Vec::new();
    for _ in 0..queued.len().min(BATCH_SCAN) {
        if batch.len() >= max {
            break;
        }
        let Some(event) = queued.pop_front() else {
            break;
        };
        let hash = order_hash(&event);
        if !keys_met.contains(&hash) {
            keys_met.push(hash);
            batch.push(event);
        } else {
            skipped.push(event);
        }
    }
    for event in skipped.into_iter().rev() {
        queued.push_front(event);
    }
    batch
}

/// What orders events: their key, or their partition when they have none.
fn order_hash(event: &Event) -> u64 {
    // A fixed seed: lanes only need to be stable within the process.
    let state = foldhash::fast::FixedState::with_seed(0);
    match &event.key {
        Some(key) => state.hash_one(key),
        None => state.hash_one((&event.topic, event.partition)),
    }
}

/// Processes one batch (distinct keys): parking decisions, the stage's first attempt for all
/// of them at once, then per event in order retries, parking updates and enqueueing. Returns
/// false when the lane must stop.
async fn process_batch<S: Stage>(
    shared: &Arc<Shared<S>>,
    batch: Vec<Event>,
    settle_tx: &mpsc::UnboundedSender<Enqueued>,
) -> bool {
    let mut decisions = Vec::with_capacity(batch.len());
    for event in &batch {
        decisions.push(match &shared.parking {
            Some(parking) => parking.decide(event).await,
            None if is_release(event) => Decision::Control,
            None => Decision::Process,
        });
    }
    let spans: Vec<tracing::Span> = batch
        .iter()
        .map(|event| trace::process_span(event, &shared.group))
        .collect();
    let to_process: Vec<usize> = (0..batch.len())
        .filter(|&i| matches!(decisions[i], Decision::Process | Decision::ProcessHead))
        .collect();
    // First attempts of a batch of more than one go through `process_batch`; a lone event
    // (and every retry) goes through `process` inside its own span.
    let mut first: Vec<Option<Result<Vec<Output>, StageError>>> =
        (0..batch.len()).map(|_| None).collect();
    if to_process.len() > 1 {
        let events: Vec<&Event> = to_process.iter().map(|&i| &batch[i]).collect();
        let started = Instant::now();
        let results = shared.stage.process_batch(&events).await;
        // Each event's share of the batch's time.
        let share = started.elapsed().as_secs_f64() / events.len() as f64;
        for (&i, result) in to_process.iter().zip(results) {
            shared.metrics.processing.record(share);
            first[i] = Some(result);
        }
    }
    for (((event, decision), span), first) in batch.into_iter().zip(decisions).zip(spans).zip(first)
    {
        let (mut outputs, failure) = match &decision {
            Decision::Control => (Vec::new(), None),
            Decision::Park {
                behind,
                not_before_ms,
            } => {
                debug!(parent: &span, behind = %behind, "event parked behind an earlier event of its key");
                (
                    vec![shared.park_record(&event, behind, *not_before_ms)],
                    None,
                )
            }
            Decision::Process | Decision::ProcessHead => {
                shared.process(&event, first).instrument(span.clone()).await
            }
        };
        if let Some(parking) = &shared.parking {
            match (&decision, failure) {
                (Decision::Process | Decision::ProcessHead, Some((class, not_before_ms)))
                    if class.is_retryable() =>
                {
                    parking.await_redelivery(&event, not_before_ms).await
                }
                (Decision::ProcessHead, _) => parking.settle_head(&event).await,
                _ => {}
            }
        }
        let dead_lettered = failure.is_some() || matches!(decision, Decision::Park { .. });
        trace::inject(&span, &mut outputs);
        drop(span);
        if outputs.is_empty() && decision != Decision::Control {
            shared.metrics.events_dropped.increment(1);
        }
        match shared.enqueue(&outputs).await {
            Ok(deliveries) => {
                if settle_tx.send((event, deliveries, dead_lettered)).is_err() {
                    error!("settle task stopped unexpectedly");
                    return false;
                }
            }
            Err(message) => {
                shared.fail(event.topic.clone(), message);
                return false;
            }
        }
    }
    true
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
    metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => stage).set(0.0);
    metrics::gauge!(m::DELAYED_PARTITIONS, "stage" => stage).set(0.0);
}

/// Delay before the reprocessor may deliver a failed event again: `redelivery_backoff`
/// doubled per earlier redelivery, capped, with jitter.
fn redelivery_delay(runtime: &RuntimeSettings, headers: &Headers) -> i64 {
    let earlier: u32 = headers
        .get_str(rh::REDELIVERY_ATTEMPT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let exp = (runtime.redelivery_backoff.as_millis() as u64)
        .saturating_mul(1u64 << earlier.min(20))
        .min(runtime.redelivery_max_backoff.as_millis() as u64);
    (exp as f64 * jitter()) as i64
}

/// Measures this worker's own group lag every `lag_interval` and exports it.
async fn monitor_lag(kafka: KafkaSettings, runtime: RuntimeSettings) {
    let thresholds = reflex_lag::Thresholds {
        window: runtime.lag_window,
        stall_after: runtime.lag_stall_after,
        stop_after: runtime.lag_stop_after,
    };
    let mut evaluator = reflex_lag::Evaluator::new(thresholds);
    let mut reader = None;
    loop {
        tokio::time::sleep(runtime.lag_interval).await;
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
    // The same key (or, without one, the same partition) always takes the same lane.
    (order_hash(event) % lanes as u64) as usize
}

fn backoff(runtime: &RuntimeSettings, attempt: u32) -> Duration {
    let exp = (runtime.retry_backoff.as_millis() as u64)
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(runtime.retry_max_backoff.as_millis() as u64);
    Duration::from_millis((exp as f64 * jitter()) as u64)
}

/// Jitter in [0.5, 1.5) from the clock's low bits: enough to spread retries of many replicas.
fn jitter() -> f64 {
    0.5 + (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 1000) as f64
        / 1000.0
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Copies the record out of librdkafka's buffer (the stage may keep it across awaits) into one
/// allocation: key, payload and every header name and value are slices of it. The former
/// per-field `String`/`Vec` copies were ~25 allocations per event (profile: a third of the
/// router's samples in malloc/free/memmove).
fn to_event(message: &BorrowedMessage<'_>) -> Event {
    let key = message.key();
    let payload = message.payload();
    let size = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + headers_size(message);
    let mut buf = BytesMut::with_capacity(size);
    let key = key.map(|k| {
        buf.extend_from_slice(k);
        buf.split().freeze()
    });
    let payload = payload.map(|p| {
        buf.extend_from_slice(p);
        buf.split().freeze()
    });
    Event {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key,
        payload,
        headers: copy_headers(message, &mut buf),
    }
}

fn headers_size<M: Message>(message: &M) -> usize {
    message.headers().map_or(0, |hs| {
        hs.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    })
}

/// Appends the record's header names and values to `buf` and returns them as slices of it.
fn copy_headers<M: Message>(message: &M, buf: &mut BytesMut) -> Headers {
    let Some(hs) = message.headers() else {
        return Headers::default();
    };
    let mut headers = Headers::with_capacity(hs.count());
    for h in hs.iter() {
        buf.extend_from_slice(h.key.as_bytes());
        let key = HeaderName::from_utf8(buf.split().freeze()).expect("copied from a str, so UTF-8");
        let value = h.value.map(|v| {
            buf.extend_from_slice(v);
            buf.split().freeze()
        });
        headers.0.push(Header { key, value });
    }
    headers
}

/// A Kafka record's headers as Reflex's ordered list (duplicates and nulls kept).
pub fn headers_of<M: Message>(message: &M) -> Headers {
    let mut buf = BytesMut::with_capacity(headers_size(message));
    copy_headers(message, &mut buf)
}

/// Reflex's header list as rdkafka headers for producing.
pub fn to_kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(headers.len()), |acc, h| {
            acc.insert(KafkaHeader {
                key: &h.key,
                value: h.value.as_deref(),
            })
        })
}

/// Forgets revoked partitions so late acks never store offsets for partitions we lost.
struct RuntimeContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    health: Arc<Health>,
    /// Counts rebalances, so parking state is reloaded for partitions we (re)gained.
    rebalances: Arc<AtomicU64>,
    /// Label of the assigned-partitions gauge.
    stage: &'static str,
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements() {
                    tracker.forget(e.topic(), e.partition());
                }
                // Cooperative-sticky: each callback carries only the change.
                metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => self.stage)
                    .decrement(tpl.count() as f64);
                info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                self.health.set_assigned();
                metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => self.stage)
                    .increment(tpl.count() as f64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(key: Option<&'static str>, partition: i32, offset: i64) -> Event {
        Event {
            topic: "t".into(),
            partition,
            offset,
            timestamp_ms: None,
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            payload: None,
            headers: Headers::default(),
        }
    }

    fn offsets(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn a_batch_takes_the_first_event_of_each_key_and_keeps_the_rest_in_order() {
        let mut queued: VecDeque<Event> = [
            event(Some("a"), 0, 1),
            event(Some("b"), 0, 2),
            event(Some("a"), 0, 3),
            event(Some("c"), 0, 4),
            event(Some("b"), 0, 5),
            event(Some("a"), 0, 6),
        ]
        .into();
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [1, 2, 4]);
        assert_eq!(
            offsets(&queued.iter().cloned().collect::<Vec<_>>()),
            [3, 5, 6]
        );
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [3, 5]);
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [6]);
        assert!(queued.is_empty());
    }

    #[test]
    fn a_batch_respects_its_limit_and_keyless_events_keep_partition_order() {
        let mut queued: VecDeque<Event> = [
            event(None, 0, 1),
            event(None, 1, 2),
            event(None, 0, 3),
            event(Some("a"), 0, 4),
        ]
        .into();
        assert_eq!(offsets(&next_batch(&mut queued, 2)), [1, 2]);
        assert_eq!(offsets(&next_batch(&mut queued, 2)), [3, 4]);
        let mut queued: VecDeque<Event> = [event(Some("a"), 0, 1), event(Some("b"), 0, 2)].into();
        assert_eq!(
            offsets(&next_batch(&mut queued, 1)),
            [1],
            "batch_max = 1 is one at a time"
        );
    }
}
