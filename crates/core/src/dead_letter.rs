//! Reading dead letters whatever wrote them: Reflex, Spring Kafka, Kafka Connect or Kafka
//! Streams (KIP-1034). [`DeadLetter::from_headers`] normalises their headers into one record so
//! inspection and replay work the same for all of them.

use crate::headers::{connect, reflex as rh, spring, streams, Headers};
use crate::ErrorClass;

/// Who wrote the dead letter (which header set was found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Reflex,
    Spring,
    Connect,
    Streams,
}

/// A dead letter's origin and failure, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub dialect: Dialect,
    pub original_topic: String,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    pub original_timestamp_ms: Option<i64>,
    /// Reflex's class when Reflex wrote it; other writers' failures count as permanent (they
    /// were dead-lettered after their own retries).
    pub error_class: ErrorClass,
    /// The exception or error text.
    pub message: String,
    /// Stage, connector or exception class that failed, as the writer named it.
    pub origin: String,
    pub attempts: Option<u32>,
}

impl DeadLetter {
    /// Reads the first header set present, in the order Reflex, Spring, Connect, Streams.
    pub fn from_headers(h: &Headers) -> Option<DeadLetter> {
        if let Some(topic) = h.get_str(rh::ORIGINAL_TOPIC) {
            return Some(DeadLetter {
                dialect: Dialect::Reflex,
                original_topic: topic.to_string(),
                original_partition: number(h, rh::ORIGINAL_PARTITION),
                original_offset: number(h, rh::ORIGINAL_OFFSET),
                original_timestamp_ms: number(h, rh::ORIGINAL_TIMESTAMP_MS),
                error_class: h
                    .get_str(rh::ERROR_CLASS)
                    .and_then(ErrorClass::parse)
                    .unwrap_or(ErrorClass::Permanent),
                message: h.get_str(rh::ERROR_MESSAGE).unwrap_or_default().to_string(),
                origin: h.get_str(rh::ERROR_STAGE).unwrap_or_default().to_string(),
                attempts: number(h, rh::ERROR_ATTEMPTS),
            });
        }
        if let Some(topic) = h.get_str(spring::ORIGINAL_TOPIC) {
            return Some(DeadLetter {
                dialect: Dialect::Spring,
                original_topic: topic.to_string(),
                original_partition: binary_or_text(h, spring::ORIGINAL_PARTITION),
                original_offset: binary_or_text(h, spring::ORIGINAL_OFFSET),
                original_timestamp_ms: binary_or_text(h, spring::ORIGINAL_TIMESTAMP),
                error_class: ErrorClass::Permanent,
                message: h
                    .get_str(spring::EXCEPTION_MESSAGE)
                    .unwrap_or_default()
                    .to_string(),
                origin: h
                    .get_str(spring::EXCEPTION_FQCN)
                    .unwrap_or_default()
                    .to_string(),
                attempts: binary_or_text(h, spring::RETRY_ATTEMPTS),
            });
        }
        if let Some(topic) = h.get_str(connect::TOPIC) {
            return Some(DeadLetter {
                dialect: Dialect::Connect,
                original_topic: topic.to_string(),
                original_partition: number(h, connect::PARTITION),
                original_offset: number(h, connect::OFFSET),
                original_timestamp_ms: None,
                error_class: ErrorClass::Permanent,
                message: h
                    .get_str(connect::EXCEPTION_MESSAGE)
                    .unwrap_or_default()
                    .to_string(),
                origin: [connect::CONNECTOR_NAME, connect::STAGE]
                    .iter()
                    .filter_map(|k| h.get_str(k))
                    .collect::<Vec<_>>()
                    .join("/"),
                attempts: None,
            });
        }
        if let Some(topic) = h.get_str(streams::TOPIC) {
            return Some(DeadLetter {
                dialect: Dialect::Streams,
                original_topic: topic.to_string(),
                original_partition: number(h, streams::PARTITION),
                original_offset: number(h, streams::OFFSET),
                original_timestamp_ms: None,
                error_class: ErrorClass::Permanent,
                message: h.get_str(streams::MESSAGE).unwrap_or_default().to_string(),
                origin: h
                    .get_str(streams::EXCEPTION)
                    .unwrap_or_default()
                    .to_string(),
                attempts: None,
            });
        }
        None
    }
}

fn number<T: std::str::FromStr>(h: &Headers, key: &str) -> Option<T> {
    h.get_str(key)?.trim().parse().ok()
}

/// Spring writes numbers as big-endian binary; other producers of these names write text.
fn binary_or_text<T: TryFrom<i64> + std::str::FromStr>(h: &Headers, key: &str) -> Option<T> {
    let raw = h.get(key)?;
    let binary = match raw.len() {
        4 => Some(i32::from_be_bytes(raw.try_into().ok()?) as i64),
        8 => Some(i64::from_be_bytes(raw.try_into().ok()?)),
        _ => None,
    };
    match binary {
        // Eight ASCII digits are text, not a binary long.
        Some(v) if !raw.iter().all(u8::is_ascii_digit) => T::try_from(v).ok(),
        _ => std::str::from_utf8(raw).ok()?.trim().parse().ok(),
    }
}

/// Header names and values Spring Kafka and Kafka Connect would have written for the same
/// failure, so tools built for them read Reflex's dead letters (`runtime.dead_letter_compat`).
pub fn compat_headers(dl: &DeadLetter, dialects: &[Dialect]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let class = format!("dev.reflex.{}", dl.error_class.as_str());
    for dialect in dialects {
        match dialect {
            Dialect::Spring => {
                out.push((spring::EXCEPTION_FQCN, class.clone().into_bytes()));
                out.push((spring::EXCEPTION_MESSAGE, dl.message.clone().into_bytes()));
                out.push((
                    spring::ORIGINAL_TOPIC,
                    dl.original_topic.clone().into_bytes(),
                ));
                if let Some(p) = dl.original_partition {
                    out.push((spring::ORIGINAL_PARTITION, p.to_be_bytes().to_vec()));
                }
                if let Some(o) = dl.original_offset {
                    out.push((spring::ORIGINAL_OFFSET, o.to_be_bytes().to_vec()));
                }
                if let Some(t) = dl.original_timestamp_ms {
                    out.push((spring::ORIGINAL_TIMESTAMP, t.to_be_bytes().to_vec()));
                }
            }
            Dialect::Connect => {
                out.push((connect::TOPIC, dl.original_topic.clone().into_bytes()));
                if let Some(p) = dl.original_partition {
                    out.push((connect::PARTITION, p.to_string().into_bytes()));
                }
                if let Some(o) = dl.original_offset {
                    out.push((connect::OFFSET, o.to_string().into_bytes()));
                }
                out.push((connect::STAGE, dl.origin.clone().into_bytes()));
                out.push((connect::EXCEPTION_CLASS_NAME, class.clone().into_bytes()));
                out.push((connect::EXCEPTION_MESSAGE, dl.message.clone().into_bytes()));
            }
            Dialect::Streams => {
                out.push((streams::EXCEPTION, class.clone().into_bytes()));
                out.push((streams::MESSAGE, dl.message.clone().into_bytes()));
                out.push((streams::TOPIC, dl.original_topic.clone().into_bytes()));
                if let Some(p) = dl.original_partition {
                    out.push((streams::PARTITION, p.to_string().into_bytes()));
                }
                if let Some(o) = dl.original_offset {
                    out.push((streams::OFFSET, o.to_string().into_bytes()));
                }
            }
            Dialect::Reflex => {}
        }
    }
    out
}

/// Where a dead letter goes back to, and the headers it carries there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    pub topic: String,
    /// The original partition when known, so per-key order and parking state line up.
    pub partition: Option<i32>,
    pub headers: Headers,
}

/// How a dead letter is delivered again (by the reprocessor or `reflexctl dlq replay`): to its
/// original topic and partition, with the failure headers of every dialect removed and the
/// event's own headers (`ce_id`, hence the idempotency key, and `traceparent`) kept. `from` is
/// `<dead-letter topic>/<partition>/<offset>`; `mark` adds the caller's own headers
/// ([`rh::REDELIVERY_ATTEMPT`] or [`rh::REPLAY_ID`]). The first-failure time is kept so a
/// record failing again still says when its trouble began.
pub fn redelivery(
    dl: &DeadLetter,
    headers: &Headers,
    from: &str,
    mark: &[(&str, String)],
) -> Redelivery {
    let mut out = Headers(
        headers
            .iter()
            .filter(|h| !is_failure_header(&h.key))
            .cloned()
            .collect(),
    );
    out.set(rh::REDELIVERED_FROM, from.to_owned());
    for (key, value) in mark {
        out.set(key.to_string(), value.clone());
    }
    Redelivery {
        topic: dl.original_topic.clone(),
        partition: dl.original_partition,
        headers: out,
    }
}

/// Headers that describe a failure (any dialect) or a previous redelivery, not the event.
fn is_failure_header(key: &str) -> bool {
    (key.starts_with("reflex-error-") && key != rh::ERROR_FIRST_FAILURE_MS)
        || key.starts_with("reflex-original-")
        || key == rh::RETRY_NOT_BEFORE_MS
        || key == rh::PARKED_BEHIND
        || key == rh::REDELIVERED_FROM
        || key == rh::REPLAY_ID
        || key.starts_with("kafka_dlt-")
        || key.starts_with("retry_topic-")
        || key.starts_with("__connect.errors.")
        || key.starts_with("__streams.errors.")
}

impl Dialect {
    /// Parses a `runtime.dead_letter_compat` entry.
    pub fn parse(name: &str) -> Option<Dialect> {
        match name {
            "spring" => Some(Dialect::Spring),
            "connect" => Some(Dialect::Connect),
            "streams" => Some(Dialect::Streams),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_strips_failure_headers_of_every_dialect_and_keeps_the_event() {
        let mut h = Headers::new();
        h.push("ce_id", "e1");
        h.push(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.push(rh::ORIGINAL_TOPIC, "in");
        h.push(rh::ORIGINAL_PARTITION, "3");
        h.push(rh::ERROR_CLASS, "transient");
        h.push(rh::ERROR_FIRST_FAILURE_MS, "5");
        h.push(rh::RETRY_NOT_BEFORE_MS, "9");
        h.push(spring::ORIGINAL_TOPIC, "in");
        h.push(connect::TOPIC, "in");
        let dl = DeadLetter::from_headers(&h).unwrap();
        let r = redelivery(
            &dl,
            &h,
            "in.dlq/0/7",
            &[(rh::REDELIVERY_ATTEMPT, "2".into())],
        );
        assert_eq!((r.topic.as_str(), r.partition), ("in", Some(3)));
        let keys: Vec<&str> = r.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "ce_id",
                "traceparent",
                rh::ERROR_FIRST_FAILURE_MS,
                rh::REDELIVERED_FROM,
                rh::REDELIVERY_ATTEMPT
            ]
        );
        assert_eq!(r.headers.get_str(rh::REDELIVERED_FROM), Some("in.dlq/0/7"));
    }

    fn reflex_written() -> DeadLetter {
        DeadLetter {
            dialect: Dialect::Reflex,
            original_topic: "orders".into(),
            original_partition: Some(3),
            original_offset: Some(4_294_967_301),
            original_timestamp_ms: Some(1_700_000_000_123),
            error_class: ErrorClass::Schema,
            message: "schema id 9 unknown".into(),
            origin: "router".into(),
            attempts: Some(1),
        }
    }

    fn headers_of(pairs: Vec<(&str, Vec<u8>)>) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.push(k.to_owned(), v);
        }
        h
    }

    #[test]
    fn spring_headers_round_trip_with_binary_numbers() {
        let h = headers_of(compat_headers(&reflex_written(), &[Dialect::Spring]));
        assert_eq!(
            h.get(spring::ORIGINAL_PARTITION),
            Some(&3i32.to_be_bytes()[..])
        );
        let read = DeadLetter::from_headers(&h).unwrap();
        assert_eq!(read.dialect, Dialect::Spring);
        assert_eq!(read.original_topic, "orders");
        assert_eq!(read.original_partition, Some(3));
        assert_eq!(read.original_offset, Some(4_294_967_301));
        assert_eq!(read.original_timestamp_ms, Some(1_700_000_000_123));
        assert_eq!(read.origin, "dev.reflex.schema");
        assert_eq!(read.message, "schema id 9 unknown");
    }

    #[test]
    fn connect_and_streams_headers_round_trip() {
        for dialect in [Dialect::Connect, Dialect::Streams] {
            let h = headers_of(compat_headers(&reflex_written(), &[dialect]));
            let read = DeadLetter::from_headers(&h).unwrap();
            assert_eq!(read.dialect, dialect);
            assert_eq!(read.original_topic, "orders");
            assert_eq!(read.original_partition, Some(3));
            assert_eq!(read.original_offset, Some(4_294_967_301));
            assert_eq!(read.message, "schema id 9 unknown");
        }
    }

    #[test]
    fn reflex_headers_win_and_text_numbers_parse() {
        let mut h = headers_of(compat_headers(
            &reflex_written(),
            &[Dialect::Spring, Dialect::Connect],
        ));
        h.push(rh::ORIGINAL_TOPIC, "orders");
        h.push(rh::ORIGINAL_OFFSET, "42");
        h.push(rh::ERROR_CLASS, "poison");
        let read = DeadLetter::from_headers(&h).unwrap();
        assert_eq!(read.dialect, Dialect::Reflex);
        assert_eq!(read.original_offset, Some(42));
        assert_eq!(read.error_class, ErrorClass::Poison);

        // A Spring-named header written as text (some non-Java producers do).
        let h = headers_of(vec![
            (spring::ORIGINAL_TOPIC, b"t".to_vec()),
            (spring::ORIGINAL_OFFSET, b"12345678".to_vec()),
        ]);
        assert_eq!(
            DeadLetter::from_headers(&h).unwrap().original_offset,
            Some(12_345_678)
        );
        assert!(DeadLetter::from_headers(&Headers::new()).is_none());
        assert_eq!(Dialect::parse("spring"), Some(Dialect::Spring));
        assert_eq!(Dialect::parse("nope"), None);
    }
}
