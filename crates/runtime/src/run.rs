//! The loop: consume → lanes (process, in key order) → produce → on ack, store the safe offset.
//!
//! [`run`] sets a worker up on Kafka; [`run_loop`] is the loop itself, generic over the
//! [`Consumer`] and [`Producer`] it reads from and writes to.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use reflex_core::metrics as m;
use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::broker::{ConsumeError, Consumer, Producer, TopicPartition};
use crate::client_config::ClientConfigError;
use crate::config::{KafkaSettings, RuntimeSettings};
use crate::http::{serve as serve_http, Health};
use crate::kafka::{KafkaConsumer, KafkaProducer};
use crate::lanes::{lane, lane_of, order_hash, Hashed};
use crate::loop_metrics::{self, LoopMetrics};
use crate::park::Parking;
use crate::pause::{Backpressure, DelayedPartitions, Read, BACKPRESSURE_PAUSE_AFTER};
use crate::retry::{now_ms, DeadLetters, RetryPolicy};
use crate::settle::{settler, Membership};
use crate::stage::{Event, Stage};
use crate::telemetry;

/// Why the loop stopped abnormally. The process should exit non-zero and be restarted; what was
/// not committed is redelivered.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("invalid Kafka client settings: {0} (check the [kafka] section and its properties)")]
    Setup(rdkafka::error::KafkaError),
    /// Not a `#[source]`: the message already carries it, and the worker prints the chain.
    #[error("invalid Kafka settings: {0}")]
    Kafka(ClientConfigError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
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
    #[error("a key lane failed: {message}; stopping without committing past its unfinished events, which will be redelivered")]
    LaneFailed { message: String },
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
        tokio::spawn(crate::lag::monitor(kafka.clone(), runtime.clone()));
    }
    let membership = Arc::new(Membership::new(stage.name(), health));
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
            membership.rebalances(),
        ))
    } else {
        None
    };
    let consumer = KafkaConsumer::subscribe(kafka, &worker_id, membership.clone())?;
    let producer = KafkaProducer::new(kafka, &worker_id)?;
    info!(
        stage = stage.name(),
        worker = %worker_id,
        group = %kafka.group_id,
        topics = ?kafka.input_topics,
        "worker started"
    );
    let parts = Parts {
        stage,
        consumer,
        producer,
        membership,
        retry: RetryPolicy::from_runtime(runtime),
        dead_letters: DeadLetters {
            worker_id,
            group: kafka.group_id.clone(),
            suffix: runtime.dead_letter_suffix.clone(),
            compat,
        },
        parking,
    };
    let result = run_loop(parts, Limits::from_runtime(runtime), shutdown).await;
    telemetry::shutdown();
    result
}

/// What the loop runs: the stage, its consumer and producer, and how failures are handled.
pub(crate) struct Parts<S, C, P> {
    pub stage: S,
    pub consumer: C,
    pub producer: P,
    /// The membership `consumer` reports its assignment changes to.
    pub membership: Arc<Membership>,
    pub retry: RetryPolicy,
    pub dead_letters: DeadLetters,
    pub parking: Option<Parking>,
}

/// The loop's bounds.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_in_flight: usize,
    pub key_lanes: usize,
    pub batch_max: usize,
    pub drain_grace: Duration,
    /// How long saturation lasts before partitions are paused.
    pub backpressure_pause_after: Duration,
}

impl Limits {
    fn from_runtime(runtime: &RuntimeSettings) -> Self {
        Self {
            max_in_flight: runtime.max_in_flight.max(1),
            key_lanes: runtime.key_lanes.max(1),
            batch_max: runtime.batch_max.max(1),
            drain_grace: runtime.drain_grace,
            backpressure_pause_after: BACKPRESSURE_PAUSE_AFTER,
        }
    }
}

/// What the loop, its lanes and their settlers share.
pub(crate) struct Shared<S, C, P> {
    pub stage: S,
    pub consumer: C,
    pub producer: P,
    pub membership: Arc<Membership>,
    pub metrics: LoopMetrics,
    pub retry: RetryPolicy,
    pub dead_letters: DeadLetters,
    /// Per-key parking state (`runtime.park_keys`).
    pub parking: Option<Parking>,
    pub batch_max: usize,
    in_flight: AtomicUsize,
    /// Notified whenever an event finishes or the worker fails (backpressure release, drain).
    progress: Notify,
    /// Set with `failure`; read per event without taking the lock.
    failed: AtomicBool,
    failure: Mutex<Option<RuntimeError>>,
}

impl<S, C, P> Shared<S, C, P> {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// One more event in flight (the gauge is set once per pass by the loop).
    fn began(&self) -> usize {
        self.in_flight.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// `count` events finished (their offsets are stored, or safe once earlier ones finish).
    pub(crate) fn done(&self, count: usize) {
        if count == 0 {
            return;
        }
        let left = self.in_flight.fetch_sub(count, Ordering::AcqRel) - count;
        self.metrics.in_flight.set(left as f64);
        self.progress.notify_one();
    }

    /// Stops the worker with `error` (the first one wins); the unfinished event stays unfinished.
    pub(crate) fn fail(&self, error: RuntimeError) {
        error!(error = %error, "stopping");
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(error);
        self.failed.store(true, Ordering::Release);
        drop(failure);
        self.progress.notify_one();
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn take_failure(&self) -> Option<RuntimeError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Runs a lane or settler task; if it panics, the worker stops with the panic as its error
/// (the task's unfinished events stay unfinished, so no offset is stored past them).
fn spawn_guarded<S, C, P>(
    shared: &Arc<Shared<S, C, P>>,
    task: impl Future<Output = ()> + Send + 'static,
) where
    Shared<S, C, P>: Send + Sync + 'static,
{
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            shared.fail(RuntimeError::LaneFailed { message });
        }
    });
}

/// Runs the loop until `shutdown` resolves (then drains and commits) or a failure stops it
/// (then nothing past an unfinished event is stored, and it returns the failure).
pub(crate) async fn run_loop<S: Stage, C: Consumer, P: Producer>(
    parts: Parts<S, C, P>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let stage_name = parts.stage.name();
    loop_metrics::register(stage_name);
    let shared = Arc::new(Shared {
        metrics: LoopMetrics::new(stage_name),
        stage: parts.stage,
        consumer: parts.consumer,
        producer: parts.producer,
        membership: parts.membership,
        retry: parts.retry,
        dead_letters: parts.dead_letters,
        parking: parts.parking,
        batch_max: limits.batch_max,
        in_flight: AtomicUsize::new(0),
        progress: Notify::new(),
        failed: AtomicBool::new(false),
        failure: Mutex::new(None),
    });
    let lanes: Vec<mpsc::UnboundedSender<Vec<Hashed>>> = (0..limits.key_lanes.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (settle_tx, settle_rx) = mpsc::unbounded_channel();
            spawn_guarded(&shared, lane(shared.clone(), rx, settle_tx));
            spawn_guarded(&shared, settler(shared.clone(), settle_rx));
            tx
        })
        .collect();
    // Events taken in the current pass, per lane.
    let mut batches: Vec<Vec<Hashed>> = (0..lanes.len()).map(|_| Vec::new()).collect();

    let paused_gauge = metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage_name);
    let delayed_gauge = metrics::gauge!(m::DELAYED_PARTITIONS, "stage" => stage_name);
    let mut backpressure = Backpressure::new(limits.max_in_flight, limits.backpressure_pause_after);
    let mut delayed = DelayedPartitions::default();
    let mut consumer_fatal = None;
    tokio::pin!(shutdown);
    loop {
        if shared.has_failed() {
            break;
        }
        backpressure.observe(shared.in_flight());
        let pause_at = backpressure.pause_at();
        let next_due = delayed.next_due();
        // The timers are built only when their branch is enabled: `select!` evaluates every
        // branch's expression each round, and a `Sleep` reads the clock and the runtime handle.
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = sleep_until(next_due), if next_due.is_some() => {
                let due = delayed.take_due(Instant::now());
                if !backpressure.paused() {
                    if let Err(e) = shared.consumer.resume(&due) {
                        warn!(partitions = ?due, error = %e, "resuming a delayed partition failed");
                    }
                }
                delayed_gauge.set(delayed.len() as f64);
            }
            _ = sleep_until(pause_at), if pause_at.is_some() => {
                let paused = match shared.consumer.assignment() {
                    Ok(assignment) => match shared.consumer.pause(&assignment) {
                        Ok(()) => {
                            paused_gauge.set(assignment.len() as f64);
                            metrics::counter!(m::BACKPRESSURE_PAUSES, "stage" => stage_name).increment(1);
                            debug!("backpressure: partitions paused (saturated too long)");
                            true
                        }
                        Err(e) => {
                            warn!(error = %e, "pausing partitions failed");
                            false
                        }
                    },
                    Err(_) => false,
                };
                backpressure.pause_done(paused);
            }
            _ = shared.progress.notified() => {
                if backpressure.should_resume(shared.in_flight()) {
                    if let Ok(assignment) = shared.consumer.assignment() {
                        // Partitions waiting for a not-before time stay paused.
                        let resume: Vec<TopicPartition> =
                            assignment.into_iter().filter(|tp| !delayed.contains(tp)).collect();
                        if let Err(e) = shared.consumer.resume(&resume) {
                            warn!(error = %e, "resume after backpressure failed");
                        }
                    }
                    backpressure.resumed();
                    paused_gauge.set(0.0);
                    debug!("backpressure released: partitions resumed");
                }
            }
            received = shared.consumer.recv(), if backpressure.reading() => {
                // Take this record and every one already fetched (up to PASS_MAX, while not
                // saturated), then hand each lane its share at once: one select round, one
                // channel send and one lane wake-up per pass instead of per record.
                let mut received = received;
                let mut taken = 0;
                let mut transient = None;
                loop {
                    match received {
                        Ok(event) => {
                            if take(&shared, &mut backpressure, &mut delayed, &delayed_gauge, event, &mut batches) {
                                taken += 1;
                            }
                        }
                        Err(ConsumeError::Fatal(message)) => {
                            // librdkafka's consumer is unusable after a fatal error (e.g. a static
                            // member fenced by its own rejoin after a broker stall): consuming on
                            // would stall its partitions forever. Stop; a restart rejoins.
                            consumer_fatal = Some(message);
                            break;
                        }
                        Err(ConsumeError::Transient(message)) => {
                            transient = Some(message);
                            break;
                        }
                    }
                    if taken >= PASS_MAX || !backpressure.reading() {
                        break;
                    }
                    match shared.consumer.try_recv() {
                        Some(next) => received = next,
                        None => break,
                    }
                }
                if taken > 0 {
                    shared.metrics.events_in.increment(taken as u64);
                    shared.metrics.in_flight.set(shared.in_flight() as f64);
                }
                for (lane, batch) in lanes.iter().zip(batches.iter_mut()) {
                    if !batch.is_empty() {
                        // Lanes live until the drain unless one panicked, which stops the loop.
                        let _ = lane.send(std::mem::take(batch));
                    }
                }
                if consumer_fatal.is_some() {
                    break;
                }
                if let Some(message) = transient {
                    // Broker unreachable, topic missing, ...: the client keeps retrying.
                    warn!(error = %message, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    // Drain: stop feeding lanes, let in-flight events finish within the grace period.
    shared.membership.health().set_draining();
    drop(lanes);
    let deadline = Instant::now() + limits.drain_grace;
    while shared.in_flight() > 0 && !shared.has_failed() {
        if tokio::time::timeout_at(deadline, shared.progress.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    if let Some(message) = consumer_fatal {
        error!(error = %message, "stopping: the Kafka consumer hit a fatal error");
        return Err(RuntimeError::ConsumerFatal { message });
    }
    if let Some(failure) = shared.take_failure() {
        // Offsets stored so far end before every unfinished event; nothing more is stored.
        return Err(failure);
    }
    let left = shared.in_flight();
    if left > 0 {
        warn!(
            in_flight = left,
            "drain grace period elapsed; unfinished events will be redelivered"
        );
    }
    if let Err(e) = shared.consumer.commit() {
        warn!(error = %e, "final commit failed; the last events may be redelivered");
    }
    shared.consumer.leave();
    info!(stage = stage_name, "worker stopped");
    Ok(())
}

/// Most records one pass of the loop takes before handing them to the lanes.
const PASS_MAX: usize = 256;

/// Sleeps until `at`; never resolves for `None` (the branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Takes one consumed record: skipped when its partition is delayed or it is not due yet,
/// otherwise tracked as in flight and queued for its lane. Returns whether it was taken.
fn take<S: Stage, C: Consumer, P: Producer>(
    shared: &Shared<S, C, P>,
    backpressure: &mut Backpressure,
    delayed: &mut DelayedPartitions,
    delayed_gauge: &metrics::Gauge,
    event: Event,
    batches: &mut [Vec<Hashed>],
) -> bool {
    if delayed.read(&event.topic, event.partition, event.offset) == Read::Discard {
        return false;
    }
    if let Some(wait) = not_due_for(&shared.stage, &event) {
        delay_partition(&shared.consumer, delayed, &event, wait);
        delayed_gauge.set(delayed.len() as f64);
        return false;
    }
    // Begun at once, not at the end of the pass: a revocation reported during the next poll
    // must find it (and forget it).
    shared
        .membership
        .tracker()
        .begin(&event.topic, event.partition, event.offset);
    let in_flight = shared.began();
    if backpressure.paused() {
        // A partition assigned while paused starts unpaused: pause it too.
        let _ = shared
            .consumer
            .pause(&[TopicPartition::new(event.topic.clone(), event.partition)]);
    }
    backpressure.took(in_flight);
    let hash = order_hash(&event);
    batches[lane_of(hash, batches.len())].push((hash, event));
    true
}

/// How long until `event` is due, when the stage says it is not due yet.
fn not_due_for<S: Stage>(stage: &S, event: &Event) -> Option<Duration> {
    let wait = stage.not_before_ms(event)? - now_ms();
    (wait > 0).then(|| Duration::from_millis(wait as u64))
}

/// Pauses the event's partition and seeks back to it, to read it again in `wait`.
fn delay_partition<C: Consumer>(
    consumer: &C,
    delayed: &mut DelayedPartitions,
    event: &Event,
    wait: Duration,
) {
    let partition = TopicPartition::new(event.topic.clone(), event.partition);
    if let Err(e) = consumer.pause(std::slice::from_ref(&partition)) {
        warn!(error = %e, "pausing a partition until its not-before time failed");
    }
    if let Err(e) = consumer.seek(&partition, event.offset) {
        warn!(topic = %event.topic, partition = event.partition, error = %e, "seek back to a delayed record failed");
    }
    debug!(topic = %event.topic, partition = event.partition, offset = event.offset, wait_ms = wait.as_millis() as u64, "partition paused until the record is due");
    delayed.delay(partition, event.offset, Instant::now() + wait);
}
