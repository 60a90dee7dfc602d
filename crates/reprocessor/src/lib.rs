//! The dead-letter reprocessor: the non-blocking half of Reflex's retries.
//!
//! It consumes dead-letter topics (`<topic>.dlq`, or other tools' dead-letter topics) and, for
//! records worth retrying, delivers them back to their original topic and partition once they
//! are due:
//!
//! - **What is redelivered:** dead letters of a retryable class (`reprocessor.redeliver_classes`,
//!   by default transient, rate-limited and circuit-open) and records parked behind one of them
//!   (`reflex-parked-behind`, see `reflex_runtime::park`). Poison, schema, permanent and
//!   unauthorized dead letters stay where they are for a human (`reflexctl dlq replay`).
//!   Spring, Connect and Streams dead letters are read too (`redeliver_foreign`).
//! - **When:** not before the record's `reflex-retry-not-before-ms` (the failing worker set it
//!   from its redelivery backoff) or, for foreign records, `foreign_delay` after they were
//!   written. Until then the runtime pauses the partition and reads the record again when it is
//!   due ([`Stage::not_before_ms`]); nothing sleeps with work in flight.
//! - **How often:** `reflex-redelivery-attempt` counts redeliveries; after `max_redeliveries`
//!   the record goes to `<original topic>.exhausted` instead, and a release marker (no value,
//!   `reflex-release: <ce_id>`) goes to the original partition so events parked behind it
//!   move on.
//! - **What it carries:** the original key, value and event headers (`ce_id`, hence the
//!   actor's idempotency key, and `traceparent`: the worker links its span to the original);
//!   failure headers are removed ([`reflex_core::dead_letter::redelivery`]).
//!
//! Progress is the group's committed offsets: a record is committed only once its redelivery
//! (or parking) was acknowledged, so a crash redelivers at most the records in flight, and the
//! actor's idempotency keeps their effects single.

use std::future::Future;

use reflex_core::dead_letter::{redelivery, DeadLetter, Dialect};
use reflex_core::headers::{ce, reflex as rh, Headers};
use reflex_core::{metrics as m, ErrorClass};
use reflex_runtime::{Event, NoRegistry, Output, Stage, StageError, StageSettings};
use serde::Deserialize;
use tracing::{debug, info, warn};

/// The reprocessor's embedded defaults (over the runtime's).
pub const REPROCESSOR_DEFAULTS: &str = include_str!("defaults.toml");

/// The reprocessor's whole configuration: the shared sections (its input topics are the
/// dead-letter topics) and `[reprocessor]`. It has no `[registry]`: redelivered bytes go back
/// unchanged, so it never asks the registry anything (fleet-wide `REFLEX_REGISTRY__*`
/// variables are ignored, a `[registry]` section in its file is refused).
pub type ReprocessorConfig = reflex_runtime::WorkerConfig<ReprocessorSettings>;

impl StageSettings for ReprocessorSettings {
    const SECTION: &'static str = "reprocessor";
    const DEFAULTS: &'static str = REPROCESSOR_DEFAULTS;
    type Registry = NoRegistry;
}

/// Reprocessor-specific settings (`[reprocessor]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprocessorSettings {
    /// Redeliveries of one event before it goes to `<original topic><exhausted_suffix>`.
    pub max_redeliveries: u32,
    /// Error classes delivered again automatically; others wait for `reflexctl dlq replay`.
    pub redeliver_classes: Vec<String>,
    /// Also redeliver dead letters written by Spring Kafka, Kafka Connect or Kafka Streams
    /// (they have no Reflex class; their writers already gave up retrying them).
    pub redeliver_foreign: bool,
    /// Delay after a foreign dead letter was written before it is redelivered.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub foreign_delay: std::time::Duration,
    /// Suffix of the topic records go to after their last redelivery.
    pub exhausted_suffix: String,
}

/// Invalid reprocessor settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reprocessor.redeliver_classes: `{0}` is not an error class (use transient, permanent, poison, schema, rate_limited, circuit_open or unauthorized)")]
    UnknownClass(String),
}

/// What happens to one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered back as redelivery number `attempt`.
    Redeliver { attempt: u32 },
    /// Out of attempts: to the exhausted topic, with a release marker for its key.
    GiveUp { attempts: u32 },
    /// Left in the dead-letter topic (not retryable, or not a dead letter at all).
    Leave { reason: &'static str },
}

/// The reprocessor stage.
pub struct Reprocessor {
    settings: ReprocessorSettings,
    classes: Vec<ErrorClass>,
}

impl Reprocessor {
    pub fn new(settings: ReprocessorSettings) -> Result<Self, SettingsError> {
        let classes = settings
            .redeliver_classes
            .iter()
            .map(|name| {
                ErrorClass::parse(name).ok_or_else(|| SettingsError::UnknownClass(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for class in ErrorClass::ALL {
            for metric in [m::REDELIVERIES, m::REDELIVERY_GIVEUPS, m::REDELIVERY_SKIPS] {
                metrics::counter!(metric, "class" => class.as_str()).increment(0);
            }
        }
        Ok(Self { settings, classes })
    }

    /// Decides what to do with a dead letter (pure: tested without a broker).
    pub fn disposition(&self, headers: &Headers, dl: &DeadLetter) -> Disposition {
        let parked_behind = headers.get(rh::PARKED_BEHIND).is_some();
        if dl.dialect != Dialect::Reflex && !self.settings.redeliver_foreign {
            return Disposition::Leave {
                reason: "written by another tool (set reprocessor.redeliver_foreign)",
            };
        }
        let retryable = dl.dialect != Dialect::Reflex || self.classes.contains(&dl.error_class);
        if !parked_behind && !retryable {
            return Disposition::Leave {
                reason: "class not in reprocessor.redeliver_classes",
            };
        }
        let earlier = redeliveries(headers);
        // A parked event never failed itself: waiting behind its head costs it no attempt.
        let attempt = if parked_behind { earlier } else { earlier + 1 };
        if attempt > self.settings.max_redeliveries {
            Disposition::GiveUp { attempts: earlier }
        } else {
            Disposition::Redeliver { attempt }
        }
    }
}

fn redeliveries(headers: &Headers) -> u32 {
    headers
        .get_str(rh::REDELIVERY_ATTEMPT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Stage for Reprocessor {
    fn name(&self) -> &'static str {
        "reprocessor"
    }

    fn not_before_ms(&self, event: &Event) -> Option<i64> {
        if let Some(at) = event
            .headers
            .get_str(rh::RETRY_NOT_BEFORE_MS)
            .and_then(|v| v.parse().ok())
        {
            return Some(at);
        }
        let foreign = event.headers.get(rh::ORIGINAL_TOPIC).is_none();
        if foreign && self.settings.redeliver_foreign {
            return event
                .timestamp_ms
                .map(|ts| ts + self.settings.foreign_delay.as_millis() as i64);
        }
        None
    }

    fn process(
        &self,
        event: &Event,
    ) -> impl Future<Output = Result<Vec<Output>, StageError>> + Send {
        let result = self.reprocess(event);
        async move { result }
    }
}

impl Reprocessor {
    fn reprocess(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        let from = format!("{}/{}/{}", event.topic, event.partition, event.offset);
        let ce_id = event.headers.get_str(ce::ID).unwrap_or("");
        let Some(dl) = DeadLetter::from_headers(&event.headers) else {
            debug!(ce_id, from = %from, "left in place: no dead-letter headers of any known dialect");
            metrics::counter!(m::REDELIVERY_SKIPS, "class" => ErrorClass::Permanent.as_str())
                .increment(1);
            return Ok(Vec::new());
        };
        let class = dl.error_class;
        let disposition = self.disposition(&event.headers, &dl);
        match disposition {
            Disposition::Redeliver { attempt } => {
                let back = redelivery(
                    &dl,
                    &event.headers,
                    &from,
                    &[(rh::REDELIVERY_ATTEMPT, attempt.to_string())],
                );
                debug!(ce_id, from = %from, to = %back.topic, attempt, "redelivering");
                metrics::counter!(m::REDELIVERIES, "class" => class.as_str()).increment(1);
                Ok(vec![Output {
                    topic: back.topic,
                    partition: back.partition,
                    key: event.key.clone(),
                    payload: event.payload.clone(),
                    headers: back.headers,
                }])
            }
            Disposition::GiveUp { attempts } => {
                warn!(
                    ce_id, from = %from, original_topic = %dl.original_topic, attempts,
                    "giving up after the last redelivery: to the exhausted topic for a human (reflexctl dlq replay)"
                );
                metrics::counter!(m::REDELIVERY_GIVEUPS, "class" => class.as_str()).increment(1);
                let mut headers = event.headers.clone();
                headers.set(
                    rh::ERROR_MESSAGE,
                    format!(
                        "gave up after {attempts} redeliveries (reprocessor.max_redeliveries); last error: {}",
                        dl.message
                    ),
                );
                headers.set(rh::REDELIVERED_FROM, from.clone());
                let mut outputs = vec![Output {
                    topic: format!("{}{}", dl.original_topic, self.settings.exhausted_suffix),
                    partition: None,
                    key: event.key.clone(),
                    payload: event.payload.clone(),
                    headers,
                }];
                if !ce_id.is_empty() && event.key.is_some() {
                    let mut release = Headers::new();
                    release.push(rh::RELEASE, ce_id.to_owned());
                    outputs.push(Output {
                        topic: dl.original_topic.clone(),
                        partition: dl.original_partition,
                        key: event.key.clone(),
                        payload: None,
                        headers: release,
                    });
                }
                Ok(outputs)
            }
            Disposition::Leave { reason } => {
                debug!(ce_id, from = %from, reason, "left in the dead-letter topic");
                metrics::counter!(m::REDELIVERY_SKIPS, "class" => class.as_str()).increment(1);
                Ok(Vec::new())
            }
        }
    }
}

/// Runs the reprocessor until `shutdown`.
pub async fn run(
    config: ReprocessorConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stage = Reprocessor::new(config.stage.clone())?;
    info!(
        topics = ?config.kafka.input_topics,
        max_redeliveries = config.stage.max_redeliveries,
        classes = ?config.stage.redeliver_classes,
        "reprocessor configured"
    );
    reflex_runtime::run(stage, &config.kafka, &config.runtime, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn settings() -> ReprocessorSettings {
        let text = REPROCESSOR_DEFAULTS.split("[reprocessor]").nth(1).unwrap();
        toml::from_str(text).unwrap()
    }

    fn dead_letter(class: &str, redeliveries: Option<u32>, parked_behind: bool) -> Event {
        let mut headers = Headers::new();
        headers.push(ce::ID, "e1");
        headers.push(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        headers.push(rh::ERROR_CLASS, class.to_owned());
        headers.push(rh::ERROR_MESSAGE, "boom");
        headers.push(rh::ORIGINAL_TOPIC, "in");
        headers.push(rh::ORIGINAL_PARTITION, "4");
        headers.push(rh::RETRY_NOT_BEFORE_MS, "1234");
        if let Some(n) = redeliveries {
            headers.push(rh::REDELIVERY_ATTEMPT, n.to_string());
        }
        if parked_behind {
            headers.push(rh::PARKED_BEHIND, "e0");
        }
        Event {
            topic: "in.dlq".into(),
            partition: 1,
            offset: 9,
            timestamp_ms: Some(1000),
            key: Some(Bytes::from_static(b"k")),
            payload: Some(Bytes::from_static(b"v")),
            headers,
        }
    }

    #[test]
    fn retryable_dead_letters_go_back_to_their_partition_with_event_headers_only() {
        let r = Reprocessor::new(settings()).unwrap();
        let event = dead_letter("transient", None, false);
        assert_eq!(r.not_before_ms(&event), Some(1234));
        let out = r.reprocess(&event).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].topic.as_str(), out[0].partition), ("in", Some(4)));
        assert_eq!(out[0].payload, event.payload);
        let h = &out[0].headers;
        assert_eq!(h.get_str(ce::ID), Some("e1"));
        assert_eq!(h.get_str(rh::REDELIVERY_ATTEMPT), Some("1"));
        assert_eq!(h.get_str(rh::REDELIVERED_FROM), Some("in.dlq/1/9"));
        assert!(h.get("traceparent").is_some());
        assert!(h.get(rh::ERROR_CLASS).is_none() && h.get(rh::RETRY_NOT_BEFORE_MS).is_none());
    }

    #[test]
    fn permanent_ones_stay_and_exhausted_ones_leave_with_a_release() {
        let r = Reprocessor::new(settings()).unwrap();
        for class in ["permanent", "poison", "schema", "unauthorized"] {
            assert!(
                r.reprocess(&dead_letter(class, None, false))
                    .unwrap()
                    .is_empty(),
                "{class}"
            );
        }
        // Parked behind a head: redelivered whatever the class it was given, at no attempt cost.
        let out = r
            .reprocess(&dead_letter("transient", Some(5), true))
            .unwrap();
        assert_eq!(out[0].headers.get_str(rh::REDELIVERY_ATTEMPT), Some("5"));
        let out = r
            .reprocess(&dead_letter("transient", Some(5), false))
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "in.exhausted");
        assert!(out[0]
            .headers
            .get_str(rh::ERROR_MESSAGE)
            .unwrap()
            .contains("gave up after 5"));
        assert_eq!((out[1].topic.as_str(), out[1].partition), ("in", Some(4)));
        assert_eq!(out[1].payload, None);
        assert_eq!(out[1].headers.get_str(rh::RELEASE), Some("e1"));
    }

    #[test]
    fn unknown_class_names_are_refused_by_name() {
        let mut s = settings();
        s.redeliver_classes.push("flaky".into());
        let err = Reprocessor::new(s).err().unwrap().to_string();
        assert!(err.contains("`flaky`"), "{err}");
    }
}
