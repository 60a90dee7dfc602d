//! The runtime every Reflex worker shares: one consume → process → produce → commit loop.
//!
//! A worker is a [`Stage`] (a small library tested without a broker) plus the shared `main`,
//! [`worker::Worker::main`]: it loads the worker's [`WorkerConfig`] (secrets resolved), calls
//! [`telemetry::init`] and then the worker's `run`, which ends in [`run`]. The loop gives every stage the
//! same guarantees:
//!
//! - **At least once, never past an unacknowledged output.** An event's offset is stored only
//!   after every record it produced (outputs or its dead letter) was acknowledged by the broker,
//!   and only as part of a contiguous prefix ([`offsets::OffsetTracker`]). librdkafka commits the
//!   stored offsets periodically, on rebalance and at shutdown.
//! - **Per-key order with concurrency.** Events are spread over key lanes by a hash of their key
//!   (or of their partition when they have none); events of one key are processed and enqueued
//!   strictly in offset order, while different keys and lanes work concurrently. A lane hands
//!   the stage what is already queued as a batch of distinct keys ([`Stage::process_batch`],
//!   at most `runtime.batch_max`), so stages can share round trips.
//! - **Bounded memory.** At most `runtime.max_in_flight` events are in flight; at the limit the
//!   loop stops taking records until one finishes (librdkafka's fetch queue is bounded by
//!   `kafka.fetch_queue_kbytes`); if that lasts 5 s it pauses its partitions (it keeps polling,
//!   so the group session stays alive) and resumes below half of the limit.
//! - **Failures by class.** Retryable errors ([`reflex_core::ErrorClass::is_retryable`]) retry
//!   in process with exponential backoff and jitter, up to `runtime.max_attempts` and within
//!   `runtime.retry_deadline`; the rest, and exhausted retries, go to the `<topic>.dlq`
//!   dead-letter topic with the original record and headers describing the failure. Nothing is
//!   dropped silently. A retryable failure's dead letter carries a not-before time: the
//!   dead-letter reprocessor delivers it back later (a non-blocking retry), and until then
//!   later events of its key are parked behind it ([`park`]) so per-key order survives.
//! - **Scheduled reading.** A stage may say an event is not due yet
//!   ([`Stage::not_before_ms`]): the loop pauses that partition and reads the event again when
//!   it is due, instead of sleeping with it in flight.
//! - **Traced.** Each event is processed in a `process {topic}` span parented by its
//!   `traceparent` header; every record it produces carries the span's context ([`trace`]).
//! - **Observable.** `/metrics`, `/healthz` and `/readyz` on `runtime.http_listen` ([`http`]).
//! - **Graceful drain.** On SIGTERM the loop stops taking events, finishes what is in flight
//!   within `runtime.drain_grace` (keep it below the session timeout), commits and leaves.
//!   A failed delivery or a panicking lane (a stage bug) stops it with an error instead
//!   ([`RuntimeError`]), without the final commit: nothing past an unfinished event is stored.
//!
//! # Where the loop lives
//!
//! - `run` — set-up ([`run`]) and the loop: poll, hand events to lanes, pause, resume, drain.
//! - `broker` — the `Consumer` and `Producer` traits the loop is generic over; `kafka` — their
//!   rdkafka implementations and the rebalance context.
//! - [`record`] — Kafka record → [`Event`], [`headers_of`], [`to_kafka_headers`].
//! - `pause` — backpressure and delayed partitions, as small state the loop consults.
//! - `lanes` — key lanes and batches, parking decisions and enqueueing per event.
//! - [`retry`] — [`RetryPolicy`] (the fleet's one backoff with jitter) and processing with
//!   retries ending in a dead letter ([`dead_letter`]).
//! - `settle` — acks → stored offsets ([`offsets`]); `Membership` forgets revoked partitions.
//! - [`client_config`], `lag` (own-group lag), `loop_metrics`, [`http`].
//!
//! The loop's tests (`loop_tests`) run it in process on in-memory doubles of the traits
//! (`memory`) with tokio's clock paused; `tests/` at the repository root runs the workers on a
//! real broker.

mod broker;
pub mod client_config;

/// jemalloc for the whole process, Rust and librdkafka's C allocations alike. On Apache Kafka,
/// glibc malloc (`_int_malloc`, `_int_free`, `malloc_consolidate`, `unlink_chunk`) took ~22% of
/// the router's CPU samples while it drained a backlog; with jemalloc the router spent 11.5–11.8
/// instead of 13.5–17.1 µs of CPU per event in the same runs (BENCHMARKS.md, session 6).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod config;
pub mod dead_letter;
pub mod duration;
pub mod http;
mod kafka;
mod lag;
pub use lag::OwnLag;
mod lanes;
mod loop_metrics;
#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod memory;
pub mod offsets;
pub mod park;
mod pause;
pub mod preflight;
pub mod record;
pub mod retry;
mod run;
mod settle;
pub mod shutdown;
pub mod stage;
pub mod telemetry;
pub mod trace;
pub mod worker;

pub use config::{
    AssignmentStrategy, AutoOffsetReset, CompatDialect, GroupProtocol, KafkaProperties,
    KafkaSettings, LogFormat, LogLevel, NoRegistry, RegistrySettings, RuntimeSettings,
    StageSettings, TelemetrySettings, WorkerConfig,
};
pub use record::{headers_of, to_kafka_headers};
pub use retry::{Backoff, RetryPolicy};
pub use run::{run, RuntimeError};
pub use stage::{Event, Output, Stage, StageError};
