//! Retries and dead letters: [`RetryPolicy`] (the one backoff-with-jitter implementation of the
//! fleet; the actor's per-action attempts use it too) and the loop's per-event processing with
//! in-process retries, ending in a dead letter when they run out.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflex_core::dead_letter::Dialect;
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::{metrics as m, ErrorClass, Headers};
use tracing::warn;

use crate::config::RuntimeSettings;
use crate::dead_letter::{dead_letter, FailureContext};
use crate::loop_metrics::LoopMetrics;
use crate::stage::{Event, Output, Stage, StageError};
use crate::trace;

/// Exponential backoff: `first`, doubled per failure, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 for the first): `first · 2^(failures-1)`,
    /// capped at `max`, times a jitter in [0.5, 1.5).
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max);
        // Saturates like the integer maths did (`mul_f64` would panic past `Duration::MAX`).
        Duration::try_from_secs_f64(doubled.as_secs_f64() * jitter()).unwrap_or(doubled)
    }
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

/// How a failure is retried: in place (attempts, backoff, deadline), then, for the runtime, by
/// redelivery from the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// In-place retries stop once this much time has passed since the first attempt, even with
    /// attempts left. `None`: only `max_attempts` bounds them.
    pub deadline: Option<Duration>,
    /// Delay before the reprocessor delivers a retryable dead letter again, doubled per earlier
    /// redelivery. `None` for retries inside a stage, which never redeliver.
    pub redelivery: Option<Backoff>,
}

impl RetryPolicy {
    /// The loop's policy, from `runtime.max_attempts`, `retry_*` and `redelivery_*`.
    pub fn from_runtime(runtime: &RuntimeSettings) -> Self {
        Self {
            max_attempts: runtime.max_attempts.max(1),
            backoff: Backoff {
                first: runtime.retry_backoff,
                max: runtime.retry_max_backoff,
            },
            deadline: Some(runtime.retry_deadline),
            redelivery: Some(Backoff {
                first: runtime.redelivery_backoff,
                max: runtime.redelivery_max_backoff,
            }),
        }
    }

    /// In-place retries only (a stage's own attempts).
    pub fn in_place(max_attempts: u32, backoff: Backoff) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            backoff,
            deadline: None,
            redelivery: None,
        }
    }

    /// After `attempts` attempts failing with `class`, `since_first` after the first began:
    /// how long to wait before the next attempt, or `None` when the failure is final.
    pub fn retry_after(
        &self,
        class: ErrorClass,
        attempts: u32,
        since_first: Duration,
    ) -> Option<Duration> {
        let within_deadline = self.deadline.is_none_or(|deadline| since_first < deadline);
        (class.is_retryable() && attempts < self.max_attempts && within_deadline)
            .then(|| self.backoff.delay(attempts))
    }

    /// How long the reprocessor waits before delivering a retryable dead letter of an event with
    /// `headers` again: the redelivery backoff, doubled per earlier redelivery.
    pub fn redelivery_delay(&self, headers: &Headers) -> Duration {
        let earlier: u32 = headers
            .get_str(rh::REDELIVERY_ATTEMPT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.redelivery
            .map_or(Duration::ZERO, |backoff| backoff.delay(earlier + 1))
    }
}

/// What a dead letter says about where it failed, besides the event and its error.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters {
    pub worker_id: String,
    pub group: String,
    pub suffix: String,
    /// Dead-letter header dialects written besides Reflex's own.
    pub compat: Vec<Dialect>,
}

/// An event's final failure: its class and when the reprocessor may deliver it again.
pub(crate) type FinalFailure = (ErrorClass, i64);

impl DeadLetters {
    /// Processes `event` with in-process retries for retryable classes ([`RetryPolicy`]); on
    /// final failure returns the dead letter (after the error's own outputs) and the failure.
    /// `first` is the first attempt's result when the event was already processed in a batch.
    pub async fn process<S: Stage>(
        &self,
        stage: &S,
        policy: &RetryPolicy,
        metrics: &LoopMetrics,
        event: &Event,
        mut first: Option<Result<Vec<Output>, StageError>>,
    ) -> (Vec<Output>, Option<FinalFailure>) {
        let mut attempt = 1;
        let mut first_failure_ms = None;
        // Tokio's clock, so tests with paused time see the deadline pass. Read only when
        // needed: most events succeed at their first attempt, done in a batch before this.
        let mut started_at = None;
        loop {
            let result = match first.take() {
                Some(result) => result,
                None => {
                    started_at.get_or_insert_with(tokio::time::Instant::now);
                    let started = Instant::now();
                    let result = stage.process(event).await;
                    metrics.processing.record(started.elapsed().as_secs_f64());
                    result
                }
            };
            let error: StageError = match result {
                Ok(outputs) => return (outputs, None),
                Err(error) => error,
            };
            first_failure_ms.get_or_insert_with(now_ms);
            let since_first = started_at
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed();
            if let Some(backoff) = policy.retry_after(error.class, attempt, since_first) {
                warn!(
                    topic = %event.topic, partition = event.partition, offset = event.offset,
                    ce_id = event.headers.get_str(ce::ID).unwrap_or(""),
                    correlation_id = event.headers.get_str(ce::CORRELATION_ID).unwrap_or(""),
                    error_class = %error.class, error = %error.message, attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    "retrying event"
                );
                metrics.retries.increment(1);
                tokio::time::sleep(backoff).await;
                attempt += 1;
                continue;
            }
            let not_before_ms =
                now_ms() + policy.redelivery_delay(&event.headers).as_millis() as i64;
            let ctx = FailureContext {
                stage: stage.name(),
                worker: &self.worker_id,
                group: &self.group,
                attempts: attempt,
                first_failure_ms: first_failure_ms.unwrap_or_else(now_ms),
                retry_not_before_ms: error.class.is_retryable().then_some(not_before_ms),
                dead_letter_suffix: &self.suffix,
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
            metrics::counter!(m::DEAD_LETTERS, "stage" => stage.name(), "class" => error.class.as_str())
                .increment(1);
            let class = error.class;
            let mut records = error.outputs;
            records.push(record);
            return (records, Some((class, not_before_ms)));
        }
    }

    /// The dead-letter record of an event parked behind `behind` (an earlier event of its key
    /// awaiting redelivery): not processed, due for redelivery with its head.
    pub fn park_record(
        &self,
        stage: &'static str,
        event: &Event,
        behind: &str,
        not_before_ms: i64,
    ) -> Output {
        let error = StageError::transient(format!(
            "parked behind {behind}: an earlier event with this key awaits redelivery, and keys \
             keep their order"
        ));
        let ctx = FailureContext {
            stage,
            worker: &self.worker_id,
            group: &self.group,
            attempts: 0,
            first_failure_ms: now_ms(),
            retry_not_before_ms: Some(not_before_ms.max(now_ms())),
            dead_letter_suffix: &self.suffix,
            compat: &self.compat,
        };
        let mut record = dead_letter(event, &error, &ctx);
        record.headers.set(rh::PARKED_BEHIND, behind.to_owned());
        record
    }
}

/// Wall-clock time in ms since the epoch (record headers and not-before times).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                first: 100 * MS,
                max: 300 * MS,
            },
            deadline: Some(1000 * MS),
            redelivery: Some(Backoff {
                first: 1000 * MS,
                max: 4000 * MS,
            }),
        }
    }

    fn within(d: Duration, nominal: Duration) -> bool {
        d >= nominal / 2 && d < nominal * 3 / 2
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_its_cap_with_jitter() {
        let backoff = policy().backoff;
        assert!(within(backoff.delay(1), 100 * MS));
        assert!(within(backoff.delay(2), 200 * MS));
        assert!(within(backoff.delay(3), 300 * MS), "capped");
        assert!(within(backoff.delay(40), 300 * MS), "no overflow");
    }

    #[test]
    fn only_retryable_failures_with_attempts_and_time_left_are_retried() {
        let p = policy();
        assert!(p.retry_after(ErrorClass::Transient, 1, MS).is_some());
        assert!(p.retry_after(ErrorClass::Transient, 2, MS).is_some());
        assert!(
            p.retry_after(ErrorClass::Transient, 3, MS).is_none(),
            "attempts used up"
        );
        assert!(
            p.retry_after(ErrorClass::Transient, 1, 1000 * MS).is_none(),
            "past the deadline"
        );
        assert!(
            p.retry_after(ErrorClass::Permanent, 1, MS).is_none(),
            "not retryable"
        );
        let no_deadline = RetryPolicy::in_place(3, p.backoff);
        assert!(no_deadline
            .retry_after(ErrorClass::Transient, 2, Duration::from_secs(3600))
            .is_some());
    }

    #[test]
    fn redelivery_doubles_per_earlier_redelivery() {
        let p = policy();
        let mut headers = Headers::default();
        assert!(within(p.redelivery_delay(&headers), 1000 * MS));
        headers.set(rh::REDELIVERY_ATTEMPT, "2");
        assert!(within(p.redelivery_delay(&headers), 4000 * MS));
        assert_eq!(
            RetryPolicy::in_place(3, p.backoff).redelivery_delay(&headers),
            Duration::ZERO
        );
    }
}
