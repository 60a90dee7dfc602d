//! Dead-letter records: the original key, value and headers, plus headers that say what failed,
//! where and how often, so `reflexctl` and the reprocessor can inspect and replay it.

use reflex_core::dead_letter::{compat_headers, DeadLetter, Dialect};
use reflex_core::headers::reflex as h;

use crate::stage::{Event, Output, StageError};

/// Where the failure happened.
pub struct FailureContext<'a> {
    pub stage: &'a str,
    pub worker: &'a str,
    pub group: &'a str,
    pub attempts: u32,
    pub first_failure_ms: i64,
    /// For a retryable failure: when the reprocessor may deliver the event again.
    pub retry_not_before_ms: Option<i64>,
    pub dead_letter_suffix: &'a str,
    /// Other tools' header dialects to write too (`runtime.dead_letter_compat`).
    pub compat: &'a [Dialect],
}

/// Builds the dead-letter record for `event` on `<topic><suffix>`.
pub fn dead_letter(event: &Event, error: &StageError, ctx: &FailureContext<'_>) -> Output {
    let mut headers = event.headers.clone();
    headers.set(h::ERROR_CLASS, error.class.as_str());
    headers.set(h::ERROR_MESSAGE, truncate(&error.message, 4096).to_owned());
    headers.set(h::ERROR_STAGE, ctx.stage.to_owned());
    headers.set(h::ERROR_WORKER, ctx.worker.to_owned());
    headers.set(h::ERROR_ATTEMPTS, ctx.attempts.to_string());
    // A redelivered event that fails again keeps the time its trouble began.
    if event.headers.get(h::ERROR_FIRST_FAILURE_MS).is_none() {
        headers.set(h::ERROR_FIRST_FAILURE_MS, ctx.first_failure_ms.to_string());
    }
    if let Some(not_before) = ctx.retry_not_before_ms {
        headers.set(h::RETRY_NOT_BEFORE_MS, not_before.to_string());
    }
    headers.set(h::ORIGINAL_TOPIC, event.topic.clone());
    headers.set(h::ORIGINAL_PARTITION, event.partition.to_string());
    headers.set(h::ORIGINAL_OFFSET, event.offset.to_string());
    if let Some(ts) = event.timestamp_ms {
        headers.set(h::ORIGINAL_TIMESTAMP_MS, ts.to_string());
    }
    headers.set(h::ORIGINAL_GROUP, ctx.group.to_owned());
    if !ctx.compat.is_empty() {
        let normalised = DeadLetter {
            dialect: Dialect::Reflex,
            original_topic: event.topic.clone(),
            original_partition: Some(event.partition),
            original_offset: Some(event.offset),
            original_timestamp_ms: event.timestamp_ms,
            error_class: error.class,
            message: truncate(&error.message, 4096).to_string(),
            origin: ctx.stage.to_string(),
            attempts: Some(ctx.attempts),
        };
        for (key, value) in compat_headers(&normalised, ctx.compat) {
            headers.set(key, value);
        }
    }
    Output {
        topic: dead_letter_topic(&event.topic, ctx.dead_letter_suffix),
        partition: None,
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers,
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str, suffix: &str) -> String {
    format!("{topic}{suffix}")
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reflex_core::Headers;

    #[test]
    fn keeps_the_record_and_describes_the_failure() {
        let mut headers = Headers::new();
        headers.push("ce_id", "e1");
        let event = Event {
            topic: "in".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1000),
            key: Some(Bytes::from_static(b"k")),
            payload: Some(Bytes::from_static(b"\x00junk")),
            headers,
        };
        let ctx = FailureContext {
            stage: "router",
            worker: "router-1",
            group: "g",
            attempts: 1,
            first_failure_ms: 5,
            retry_not_before_ms: None,
            dead_letter_suffix: ".dlq",
            compat: &[Dialect::Spring, Dialect::Connect],
        };
        let out = dead_letter(&event, &StageError::poison("bad bytes"), &ctx);
        // Spring and Connect tooling find what they expect; reading it back gives the same origin.
        assert_eq!(
            out.headers.get("kafka_dlt-original-offset"),
            Some(&41i64.to_be_bytes()[..])
        );
        assert_eq!(out.headers.get_str("__connect.errors.offset"), Some("41"));
        let read = DeadLetter::from_headers(&out.headers).unwrap();
        assert_eq!(
            (read.original_partition, read.original_offset),
            (Some(2), Some(41))
        );
        assert_eq!(out.topic, "in.dlq");
        assert_eq!(out.payload, event.payload);
        assert_eq!(out.key, event.key);
        assert_eq!(out.headers.get_str("ce_id"), Some("e1"));
        assert_eq!(out.headers.get_str(h::ERROR_CLASS), Some("poison"));
        assert_eq!(out.headers.get_str(h::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(out.headers.get_str(h::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(truncate("héllo", 2), "h");
    }
}
