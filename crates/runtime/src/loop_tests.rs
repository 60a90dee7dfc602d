//! The loop in process, on the in-memory broker ([`crate::memory`]), with tokio's clock paused:
//! retries, backpressure, delayed partitions, rebalances, failures and when offsets are stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reflex_core::headers::reflex as rh;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::broker::TopicPartition;
use crate::http::Health;
use crate::memory::{MemoryBroker, MemoryConsumer, MemoryProducer};
use crate::retry::{now_ms, Backoff, DeadLetters, RetryPolicy};
use crate::run::{run_loop, Limits, Parts, RuntimeError};
use crate::settle::Membership;
use crate::stage::{Event, Output, Stage, StageError};

const MS: Duration = Duration::from_millis(1);

type Process = dyn Fn(&Event, u32) -> Result<Vec<Output>, StageError> + Send + Sync;
type NotBefore = dyn Fn(&Event) -> Option<i64> + Send + Sync;

/// A stage run by a script: `process(event, attempt)`, and optionally `not_before_ms`.
struct Script {
    process: Box<Process>,
    not_before: Option<Box<NotBefore>>,
    /// Attempts per (partition, offset).
    attempts: Mutex<HashMap<(i32, i64), u32>>,
}

impl Script {
    fn attempts(&self, partition: i32, offset: i64) -> u32 {
        let attempts = self.attempts.lock().unwrap();
        attempts.get(&(partition, offset)).copied().unwrap_or(0)
    }
}

struct ScriptedStage(Arc<Script>);

impl Stage for ScriptedStage {
    fn name(&self) -> &'static str {
        // Not `test`: the HTTP test reads that label from the process-wide recorder.
        "loop-test"
    }

    async fn process(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        let attempt = {
            let mut attempts = self.0.attempts.lock().unwrap();
            let attempt = attempts.entry((event.partition, event.offset)).or_default();
            *attempt += 1;
            *attempt
        };
        (self.0.process)(event, attempt)
    }

    fn not_before_ms(&self, event: &Event) -> Option<i64> {
        self.0.not_before.as_ref().and_then(|f| f(event))
    }
}

/// One output on `out` naming the event (`partition:offset`), with its key.
fn echo(event: &Event) -> Vec<Output> {
    vec![Output {
        topic: "out".into(),
        partition: None,
        key: event.key.clone(),
        payload: Some(format!("{}:{}", event.partition, event.offset).into()),
        headers: Default::default(),
    }]
}

fn names(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| String::from_utf8_lossy(o.payload.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new("in", partition)
}

fn limits() -> Limits {
    Limits {
        max_in_flight: 100,
        key_lanes: 4,
        batch_max: 8,
        drain_grace: Duration::from_secs(5),
        backpressure_pause_after: Duration::from_secs(5),
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        backoff: Backoff {
            first: 10 * MS,
            max: 100 * MS,
        },
        deadline: Some(Duration::from_secs(10)),
        redelivery: Some(Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }),
    }
}

struct Harness {
    membership: Arc<Membership>,
    script: Arc<Script>,
    shutdown: Option<oneshot::Sender<()>>,
    run: JoinHandle<Result<(), RuntimeError>>,
}

impl Harness {
    /// Runs the loop on `broker` (partitions 0 and 1 of `in` assigned) with `process`.
    fn start(
        broker: Arc<MemoryBroker>,
        limits: Limits,
        process: impl Fn(&Event, u32) -> Result<Vec<Output>, StageError> + Send + Sync + 'static,
        not_before: Option<Box<NotBefore>>,
    ) -> Self {
        let membership = Arc::new(Membership::new("loop-test", Arc::new(Health::default())));
        broker.assign(&membership, &[tp(0), tp(1)]);
        let script = Arc::new(Script {
            process: Box::new(process),
            not_before,
            attempts: Mutex::default(),
        });
        let parts = Parts {
            stage: ScriptedStage(script.clone()),
            consumer: MemoryConsumer(broker.clone()),
            producer: MemoryProducer(broker.clone()),
            membership: membership.clone(),
            retry: policy(),
            dead_letters: DeadLetters {
                worker_id: "w".into(),
                group: "g".into(),
                suffix: ".dlq".into(),
                compat: Vec::new(),
            },
            parking: None,
        };
        let (shutdown, signal) = oneshot::channel::<()>();
        let run = tokio::spawn(run_loop(parts, limits, async move {
            let _ = signal.await;
        }));
        Harness {
            membership,
            script,
            shutdown: Some(shutdown),
            run,
        }
    }

    /// Drains and returns what the loop returned.
    async fn stop(mut self) -> Result<(), RuntimeError> {
        let _ = self.shutdown.take().expect("stopped once").send(());
        self.run.await.expect("the loop itself does not panic")
    }
}

/// Waits (in paused time, so instantly) until `cond` holds; panics after a virtual minute.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(10 * MS).await;
    }
}

/// Lets the loop run for `d` of virtual time.
async fn idle(d: Duration) {
    tokio::time::sleep(d).await;
}

fn broker_with(partition0: usize, partition1: usize) -> Arc<MemoryBroker> {
    let broker = Arc::new(MemoryBroker::default());
    for i in 0..partition0 {
        broker.append("in", 0, &format!("k0-{i}"), "v");
    }
    for i in 0..partition1 {
        broker.append("in", 1, &format!("k1-{i}"), "v");
    }
    broker
}

// ---- retries -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_transient_error_is_retried_and_its_success_is_the_only_output() {
    let broker = broker_with(1, 0);
    let h = Harness::start(
        broker.clone(),
        limits(),
        |event, attempt| {
            if attempt < 3 {
                Err(StageError::transient("flaky"))
            } else {
                Ok(echo(event))
            }
        },
        None,
    );
    until("the event is stored", || broker.stored(&tp(0)) == Some(1)).await;
    assert_eq!(h.script.attempts(0, 0), 3);
    assert_eq!(names(&broker.sent_to("out")), ["0:0"]);
    assert!(broker.sent_to("in.dlq").is_empty(), "no dead letter");
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_dead_letter_the_event_with_its_failure() {
    let broker = broker_with(1, 0);
    let h = Harness::start(
        broker.clone(),
        limits(),
        |_, _| Err(StageError::transient("still down")),
        None,
    );
    until("the event is stored", || broker.stored(&tp(0)) == Some(1)).await;
    assert_eq!(h.script.attempts(0, 0), 3, "max_attempts");
    assert!(broker.sent_to("out").is_empty());
    let dlq = broker.sent_to("in.dlq");
    assert_eq!(dlq.len(), 1);
    let headers = &dlq[0].headers;
    assert_eq!(headers.get_str(rh::ERROR_CLASS), Some("transient"));
    assert_eq!(headers.get_str(rh::ERROR_MESSAGE), Some("still down"));
    assert_eq!(headers.get_str(rh::ERROR_ATTEMPTS), Some("3"));
    assert_eq!(headers.get_str(rh::ORIGINAL_TOPIC), Some("in"));
    assert_eq!(headers.get_str(rh::ORIGINAL_OFFSET), Some("0"));
    let not_before: i64 = headers
        .get_str(rh::RETRY_NOT_BEFORE_MS)
        .expect("retryable: redelivered later")
        .parse()
        .unwrap();
    assert!(not_before > now_ms(), "due after the redelivery backoff");
    assert_eq!(
        dlq[0].key.as_deref(),
        Some(&b"k0-0"[..]),
        "the original record"
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_dead_lettered_without_a_retry() {
    let broker = broker_with(1, 0);
    let h = Harness::start(
        broker.clone(),
        limits(),
        |_, _| Err(StageError::permanent("bad request")),
        None,
    );
    until("the event is stored", || broker.stored(&tp(0)) == Some(1)).await;
    assert_eq!(h.script.attempts(0, 0), 1);
    let dlq = broker.sent_to("in.dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers.get_str(rh::ERROR_CLASS), Some("permanent"));
    assert_eq!(dlq[0].headers.get_str(rh::ERROR_ATTEMPTS), Some("1"));
    assert_eq!(
        dlq[0].headers.get(rh::RETRY_NOT_BEFORE_MS),
        None,
        "never redelivered"
    );
    h.stop().await.unwrap();
}

// ---- offsets after acks ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn offsets_are_stored_only_after_the_outputs_are_acknowledged() {
    let broker = broker_with(3, 0);
    broker.hold_acks(|_| true);
    let h = Harness::start(broker.clone(), limits(), |e, _| Ok(echo(e)), None);
    until("all three outputs are sent", || broker.held() == 3).await;
    idle(Duration::from_secs(1)).await;
    assert_eq!(
        broker.stored(&tp(0)),
        None,
        "nothing acknowledged, nothing stored"
    );
    broker.release_acks();
    until("the offsets are stored", || {
        broker.stored(&tp(0)) == Some(3)
    })
    .await;
    h.stop().await.unwrap();
    assert_eq!(
        broker.committed(&tp(0)),
        Some(3),
        "committed at the end of the drain"
    );
}

#[tokio::test(start_paused = true)]
async fn an_acknowledged_event_is_finished_while_a_later_one_of_its_batch_awaits_its_ack() {
    // One lane: the three records are taken in one pass and processed as one batch, whose
    // acks are awaited by one settle future.
    let broker = broker_with(3, 0);
    broker.hold_acks(|o| o.payload.as_deref() == Some(&b"0:1"[..]));
    let limits = Limits {
        key_lanes: 1,
        ..limits()
    };
    let h = Harness::start(broker.clone(), limits, |e, _| Ok(echo(e)), None);
    until("all three outputs are sent", || {
        broker.sent_to("out").len() == 3
    })
    .await;
    until("0:0 is stored", || broker.stored(&tp(0)) == Some(1)).await;
    idle(Duration::from_secs(1)).await;
    assert_eq!(broker.stored(&tp(0)), Some(1), "nothing past the held 0:1");
    broker.release_acks();
    until("all three are stored", || broker.stored(&tp(0)) == Some(3)).await;
    h.stop().await.unwrap();
}

// ---- backpressure --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn at_max_in_flight_the_loop_stops_reading_pauses_after_the_threshold_and_resumes_below_half()
{
    let broker = broker_with(10, 0);
    broker.hold_acks(|_| true);
    let limits = Limits {
        max_in_flight: 4,
        backpressure_pause_after: Duration::from_secs(5),
        ..limits()
    };
    let h = Harness::start(broker.clone(), limits, |e, _| Ok(echo(e)), None);
    until("four events are in flight", || broker.held() == 4).await;
    idle(Duration::from_secs(4)).await;
    assert_eq!(
        broker.position(&tp(0)),
        Some(4),
        "no record taken past the limit"
    );
    assert!(!broker.is_paused(&tp(0)), "not paused before the threshold");
    idle(Duration::from_secs(2)).await;
    assert!(
        broker.is_paused(&tp(0)) && broker.is_paused(&tp(1)),
        "paused after 5 s"
    );
    assert_eq!(broker.position(&tp(0)), Some(4));
    broker.release_acks();
    until("all ten are stored", || broker.stored(&tp(0)) == Some(10)).await;
    assert!(!broker.is_paused(&tp(0)), "resumed");
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backpressure_resumes_only_at_half_the_limit() {
    let broker = broker_with(6, 0);
    broker.hold_acks(|_| true);
    let limits = Limits {
        max_in_flight: 4,
        backpressure_pause_after: Duration::from_secs(5),
        ..limits()
    };
    let h = Harness::start(broker.clone(), limits, |e, _| Ok(echo(e)), None);
    until("paused", || broker.is_paused(&tp(0))).await;
    broker.ack_first_held(1);
    idle(Duration::from_secs(1)).await;
    assert!(
        broker.is_paused(&tp(0)),
        "3 in flight: above half, still paused"
    );
    assert_eq!(broker.position(&tp(0)), Some(4));
    broker.ack_first_held(1);
    until("resumed at 2 in flight", || !broker.is_paused(&tp(0))).await;
    broker.release_acks();
    until("all stored", || broker.stored(&tp(0)) == Some(6)).await;
    h.stop().await.unwrap();
}

// ---- delayed partitions ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_record_not_due_pauses_its_partition_until_due_while_others_flow() {
    let broker = broker_with(3, 3);
    let started = Instant::now();
    // Offset 1 of partition 0 is due 10 s after the start.
    let not_before = move |event: &Event| {
        let wait = Duration::from_secs(10).saturating_sub(started.elapsed());
        (event.partition == 0 && event.offset == 1 && !wait.is_zero())
            .then(|| now_ms() + wait.as_millis() as i64)
    };
    let h = Harness::start(
        broker.clone(),
        limits(),
        |e, _| Ok(echo(e)),
        Some(Box::new(not_before)),
    );
    until("partition 1 is done", || broker.stored(&tp(1)) == Some(3)).await;
    until("partition 0 is paused", || broker.is_paused(&tp(0))).await;
    idle(Duration::from_secs(5)).await;
    assert_eq!(
        broker.stored(&tp(0)),
        Some(1),
        "only offset 0 before the due time"
    );
    assert_eq!(
        broker.position(&tp(0)),
        Some(1),
        "sought back to the delayed record"
    );
    assert_eq!(h.script.attempts(0, 1), 0, "not processed early");
    assert_eq!(h.script.attempts(0, 2), 0, "nor anything after it");
    until("partition 0 is done", || broker.stored(&tp(0)) == Some(3)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "read when due"
    );
    let mut p0: Vec<String> = names(&broker.sent_to("out"))
        .into_iter()
        .filter(|n| n.starts_with("0:"))
        .collect();
    assert_eq!(p0[0], "0:0", "the record before the delayed one first");
    // 0:1 and 0:2 have different keys, so different lanes: read again in one pass, they may
    // come out in either order (only a key's events keep their order).
    p0.sort();
    assert_eq!(p0, ["0:0", "0:1", "0:2"], "once each");
    h.stop().await.unwrap();
}

// ---- rebalances ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_late_ack_of_a_revoked_partition_stores_nothing() {
    let broker = broker_with(1, 1);
    broker.hold_acks(|o| o.payload.as_deref() == Some(&b"0:0"[..]));
    let h = Harness::start(broker.clone(), limits(), |e, _| Ok(echo(e)), None);
    until("0:0 is in flight", || broker.held() == 1).await;
    broker.revoke(&h.membership, &[tp(0)]);
    broker.release_acks();
    until("partition 1 is stored", || broker.stored(&tp(1)) == Some(1)).await;
    idle(Duration::from_secs(1)).await;
    assert!(
        broker.store_calls().iter().all(|(p, _)| *p != tp(0)),
        "no offset store for the revoked partition: {:?}",
        broker.store_calls()
    );
    h.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reassigned_partition_starts_fresh_and_ignores_late_acks_of_its_old_assignment() {
    let broker = broker_with(12, 0);
    broker.hold_acks(|o| o.payload.as_deref() == Some(&b"0:3"[..]));
    let h = Harness::start(broker.clone(), limits(), |e, _| Ok(echo(e)), None);
    until("0:3 is in flight", || broker.held() == 1).await;
    broker.revoke(&h.membership, &[tp(0)]);
    // Meanwhile another member processed up to 10 and committed.
    broker.commit_elsewhere(&tp(0), 10);
    broker.assign(&h.membership, &[tp(0)]);
    until("10 and 11 are stored", || broker.stored(&tp(0)) == Some(12)).await;
    broker.release_acks();
    idle(Duration::from_secs(1)).await;
    assert_eq!(
        broker.stored(&tp(0)),
        Some(12),
        "the late ack of 3 stored nothing"
    );
    assert!(
        broker
            .store_calls()
            .iter()
            .filter(|(p, _)| *p == tp(0))
            .all(|&(_, next)| next <= 3 || next > 10),
        "nothing between the old and the new generation: {:?}",
        broker.store_calls()
    );
    h.stop().await.unwrap();
    assert_eq!(broker.committed(&tp(0)), Some(12));
}

// ---- failures stop the worker ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panicking_stage_stops_the_worker_with_an_error_and_nothing_stored_past_it() {
    let broker = broker_with(5, 0);
    let h = Harness::start(
        broker.clone(),
        limits(),
        |event, _| {
            if event.offset == 2 {
                panic!("stage bug at offset 2");
            }
            Ok(echo(event))
        },
        None,
    );
    // Shutdown is never signalled: the worker must stop by itself.
    let (run, _shutdown) = (h.run, h.shutdown);
    let ended = tokio::time::timeout(Duration::from_secs(30), run).await;
    let result = match ended {
        Ok(joined) => joined.expect("the loop itself does not panic"),
        Err(_) => panic!("the worker kept running after a lane panicked"),
    };
    match result {
        Err(RuntimeError::LaneFailed { message }) => {
            assert!(message.contains("stage bug at offset 2"), "{message}")
        }
        other => panic!("expected LaneFailed, got {other:?}"),
    }
    assert!(
        broker.stored(&tp(0)).unwrap_or(0) <= 2,
        "stored past the unfinished event: {:?}",
        broker.stored(&tp(0))
    );
    assert_eq!(
        broker.committed(&tp(0)),
        None,
        "no final commit after a failure"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delivery_failure_stops_the_worker_without_storing_past_it() {
    let broker = broker_with(4, 0);
    broker.hold_acks(|o| o.payload.as_deref() == Some(&b"0:1"[..]));
    let h = Harness::start(broker.clone(), limits(), |e, _| Ok(echo(e)), None);
    until("0:1 is in flight", || broker.held() == 1).await;
    until("the others are sent", || broker.sent_to("out").len() == 4).await;
    broker.fail_held_acks("broker said no");
    let (run, _shutdown) = (h.run, h.shutdown);
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stops on its own")
        .expect("the loop itself does not panic");
    match result {
        Err(RuntimeError::DeliveryFailed { topic, message }) => {
            assert_eq!(topic, "out");
            assert!(message.contains("broker said no"), "{message}");
        }
        other => panic!("expected DeliveryFailed, got {other:?}"),
    }
    assert!(
        broker.stored(&tp(0)).unwrap_or(0) <= 1,
        "stored past the failed event: {:?}",
        broker.stored(&tp(0))
    );
    assert_eq!(broker.committed(&tp(0)), None);
}
