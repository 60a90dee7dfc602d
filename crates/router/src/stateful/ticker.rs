//! Timers that fire with no new event: a once_after group's quiet period ending, an absence
//! deadline passing, events waiting out their lateness in a group that has gone quiet.
//!
//! Every group with something due is filed in the store under the wall-clock time it becomes
//! due (its event-time due plus the rule's lateness plus `router.timer_delay`). Every replica
//! runs a ticker; each round it takes the due groups, moves each one's watermark to
//! `now - lateness - timer_delay`, **produces the firings and waits for Kafka's
//! acknowledgement, and only then saves the group** (compare-and-set). So:
//! - a ticker that dies between the two leaves the group due, and the next round (any
//!   replica's) fires the same firing again, with the same `ce_id`: the actor's idempotency
//!   claim makes one effect of it;
//! - two replicas on one group: one save wins, the other finds the group already advanced.
//!
//! A group is left for a later round while its partition's oldest unread record is older than
//! `timer_delay`: the router is catching up (after a restart, a rebalance, a burst), and the
//! records still to read would move the group's event time themselves. Only a router that is
//! current lets the wall clock stand in for event time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use reflex_runtime::config::KafkaSettings;
use reflex_runtime::Output;
use tracing::{debug, info, warn};

use super::{count, firing_outputs, millis, Effect, Engine, StoreError};
use crate::rules::{RuleAction, RuleSet};
use crate::WindowNote;

/// Due groups handled per round.
const ROUND: usize = 500;

/// The wall-clock side of stateful rules.
pub struct Ticker {
    pub rules: Arc<RuleSet>,
    pub engine: Arc<Engine>,
}

impl Ticker {
    /// One round at wall-clock time `now_ms`. `caught_up(topic, partition)` says whether the
    /// router is current on a partition; `emit` produces a group's firings and returns once
    /// Kafka acknowledged them. Returns what fired.
    pub async fn round(
        &self,
        now_ms: i64,
        caught_up: impl Fn(&str, i32) -> bool,
        emit: &impl Emit,
    ) -> Result<Vec<WindowNote>, StoreError> {
        let engine = &self.engine;
        let mut notes = Vec::new();
        for (rule_name, hash) in engine.store.due(now_ms, ROUND).await? {
            let Some((rule, spec)) = self
                .rules
                .rules
                .iter()
                .find(|r| r.name == rule_name)
                .and_then(|r| Some((r, r.stateful.as_ref()?)))
            else {
                // The rule left the file (or lost its window): nothing will ever fire it.
                info!(rule = %rule_name, "a window of a rule no longer in the rule file is dropped");
                engine.store.forget_due(&rule_name, &hash).await?;
                continue;
            };
            let topics: &[String] = match &rule.action {
                RuleAction::Route(t) => t,
                _ => &[],
            };
            let watermark = now_ms - millis(spec.lateness) - millis(engine.timer_delay);
            for _ in 0..super::MAX_SAVE_ATTEMPTS {
                let mut state = engine.store.load(&rule_name, &hash).await?;
                if let Some((topic, partition)) = &state.source {
                    if !caught_up(topic, *partition) {
                        debug!(rule = %rule_name, topic = %topic, partition, "timer waits: the partition is being caught up");
                        break;
                    }
                }
                let effects = state.advance(spec.kind, watermark);
                let outputs: Vec<Output> = effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Fired(f) => {
                            Some(firing_outputs(&rule_name, topics, &state.group, f))
                        }
                        Effect::Suppressed(_) => None,
                    })
                    .flatten()
                    .collect();
                if !outputs.is_empty() {
                    if let Err(e) = emit.emit(outputs).await {
                        warn!(rule = %rule_name, group = %state.group, error = %e, "a timer's firing was not acknowledged: it fires again next round");
                        break;
                    }
                }
                let due = engine.due_ms(spec, &state);
                if engine
                    .store
                    .save(&rule_name, &hash, &state, due, engine.ttl(spec))
                    .await?
                {
                    count(&rule_name, &effects);
                    if !effects.is_empty() {
                        notes.push(WindowNote {
                            rule: rule_name.clone(),
                            group: state.group.clone(),
                            effects,
                        });
                    }
                    break;
                }
            }
        }
        Ok(notes)
    }

    /// Runs rounds every `interval` until the task is dropped, producing with its own producer
    /// and reading the router group's lag to know which partitions are current.
    pub async fn run(self, kafka: KafkaSettings, interval: Duration) {
        let producer: FutureProducer = match reflex_runtime::client_config::producer_config(
            &kafka,
            "reflex-router-ticker",
        )
        .create()
        {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "the stateful rules' ticker cannot create its producer: timers fire only when events come");
                return;
            }
        };
        let emit = KafkaEmit(producer);
        let delay_s = self.engine.timer_delay.as_secs_f64();
        let mut own_lag = reflex_runtime::OwnLag::default();
        loop {
            tokio::time::sleep(interval).await;
            let now = chrono::Utc::now().timestamp_millis();
            match self.engine.store.due(now, 1).await {
                Ok(due) if due.is_empty() => continue,
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "ticker: due groups not readable");
                    continue;
                }
            }
            let lag = own_lag.read(&kafka).await;
            let behind: HashMap<(String, i32), bool> = match lag {
                Ok(sample) => sample
                    .partitions
                    .iter()
                    .map(|p| {
                        (
                            (p.topic.clone(), p.partition),
                            p.lag > 0 && p.lag_seconds > delay_s,
                        )
                    })
                    .collect(),
                Err(e) => {
                    debug!(error = %e, "ticker: the group's lag is unknown: timers wait");
                    continue;
                }
            };
            let caught_up = |topic: &str, partition: i32| {
                !behind
                    .get(&(topic.to_string(), partition))
                    .copied()
                    .unwrap_or(false)
            };
            match self.round(now, caught_up, &emit).await {
                Ok(notes) => {
                    for note in notes {
                        debug!(rule = %note.rule, group = %note.group, effects = ?note.effects.len(), "timer round");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "stateful rules' timer round failed: retried next round")
                }
            }
        }
    }
}

/// Where a round's firings go.
pub trait Emit {
    /// Produces `outputs`, returning once all are acknowledged.
    fn emit(
        &self,
        outputs: Vec<Output>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Firings to Kafka through the ticker's own producer.
struct KafkaEmit(FutureProducer);

impl Emit for KafkaEmit {
    async fn emit(&self, outputs: Vec<Output>) -> Result<(), String> {
        let mut waits = Vec::with_capacity(outputs.len());
        for output in &outputs {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&output.topic)
                .headers(reflex_runtime::to_kafka_headers(&output.headers));
            if let Some(k) = &output.key {
                record = record.key(k.as_ref());
            }
            if let Some(p) = &output.payload {
                record = record.payload(p.as_ref());
            }
            waits.push(self.0.send(record, Duration::from_secs(30)));
        }
        for wait in waits {
            wait.await.map_err(|(e, _)| e.to_string())?;
        }
        Ok(())
    }
}

/// Firings kept in memory (`reflexctl rules test`, tests).
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Output>>);

impl Emit for Collect {
    async fn emit(&self, outputs: Vec<Output>) -> Result<(), String> {
        self.0.lock().expect("collect lock").extend(outputs);
        Ok(())
    }
}
