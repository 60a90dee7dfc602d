//! Kafka records ↔ Reflex types: a consumed record as an [`Event`], and headers both ways.

use bytes::BytesMut;
use rdkafka::message::{Header as KafkaHeader, Headers as KafkaHeaders, OwnedHeaders};
use rdkafka::Message;
use reflex_core::headers::{Header, HeaderName};
use reflex_core::Headers;

use crate::stage::Event;

/// Copies the record out of librdkafka's buffer (the stage may keep it across awaits) into one
/// allocation: key, payload and every header value are slices of it. The former per-field
/// `String`/`Vec` copies were ~25 allocations per event (profile: a third of the router's
/// samples in malloc/free/memmove).
pub fn to_event<M: Message>(message: &M) -> Event {
    let key = message.key();
    let payload = message.payload();
    // Sized without reading the headers twice (each read is a librdkafka call, a `strlen` and
    // a UTF-8 check): a guess per header; a longer one grows the buffer (the slices already
    // taken keep the old one).
    let headers = message.headers();
    let size = key.map_or(0, <[u8]>::len)
        + payload.map_or(0, <[u8]>::len)
        + headers
            .as_ref()
            .map_or(0, |hs| hs.count() * HEADER_VALUE_GUESS);
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
        headers: headers.map_or_else(Headers::default, |hs| copy_headers(hs, &mut buf)),
    }
}

/// Bytes reserved per header value in [`to_event`] (CloudEvents ids, times and sources, a
/// `traceparent`, are shorter).
const HEADER_VALUE_GUESS: usize = 64;

/// Appends the header values to `buf` and returns the headers with their values as slices of
/// it; names Reflex knows are static (no copy, no reference count).
fn copy_headers<H: KafkaHeaders>(hs: &H, buf: &mut BytesMut) -> Headers {
    let mut headers = Headers::with_capacity(hs.count());
    for h in hs.iter() {
        let key = known_name(h.key).unwrap_or_else(|| {
            buf.extend_from_slice(h.key.as_bytes());
            HeaderName::from_utf8(buf.split().freeze()).expect("copied from a str, so UTF-8")
        });
        let value = h.value.map(|v| {
            buf.extend_from_slice(v);
            buf.split().freeze()
        });
        headers.0.push(Header { key, value });
    }
    headers
}

/// The header names every Reflex event carries, as static names.
fn known_name(name: &str) -> Option<HeaderName> {
    use reflex_core::headers::{ce, reflex as rh, trace};
    const KNOWN: [&str; 14] = [
        ce::SPECVERSION,
        ce::ID,
        ce::SOURCE,
        ce::TYPE,
        ce::TIME,
        ce::SUBJECT,
        ce::CORRELATION_ID,
        ce::CAUSATION_ID,
        ce::CONTENT_TYPE,
        trace::TRACEPARENT,
        trace::TRACESTATE,
        rh::RULE,
        rh::HOPS,
        rh::RULES_VISITED,
    ];
    KNOWN
        .iter()
        .find(|known| **known == name)
        .map(|known| HeaderName::from_static(known))
}

/// A Kafka record's headers as Reflex's ordered list (duplicates and nulls kept).
pub fn headers_of<M: Message>(message: &M) -> Headers {
    let Some(hs) = message.headers() else {
        return Headers::default();
    };
    let size = hs
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum();
    copy_headers(hs, &mut BytesMut::with_capacity(size))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    #[test]
    fn a_record_becomes_an_event_with_its_headers_in_order_duplicates_and_nulls_kept() {
        let headers = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: "a",
                value: Some("1"),
            })
            .insert(KafkaHeader {
                key: "b",
                value: None::<&str>,
            })
            .insert(KafkaHeader {
                key: "a",
                value: Some("2"),
            })
            // A known (static) name, and a value longer than the size guessed per header.
            .insert(KafkaHeader {
                key: "ce_id",
                value: Some(&"x".repeat(3 * HEADER_VALUE_GUESS)),
            });
        let message = OwnedMessage::new(
            Some(b"value".to_vec()),
            Some(b"key".to_vec()),
            "t".into(),
            Timestamp::CreateTime(1234),
            3,
            42,
            Some(headers),
        );
        let event = to_event(&message);
        assert_eq!(
            (event.topic.as_str(), event.partition, event.offset),
            ("t", 3, 42)
        );
        assert_eq!(event.timestamp_ms, Some(1234));
        assert_eq!(event.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(event.payload.as_deref(), Some(&b"value"[..]));
        let seen: Vec<(&str, Option<&[u8]>)> = event
            .headers
            .iter()
            .map(|h| (&*h.key, h.value.as_deref()))
            .collect();
        let long = "x".repeat(3 * HEADER_VALUE_GUESS);
        assert_eq!(
            seen,
            [
                ("a", Some(&b"1"[..])),
                ("b", None),
                ("a", Some(&b"2"[..])),
                ("ce_id", Some(long.as_bytes()))
            ]
        );
        assert_eq!(event.headers.get_str("ce_id"), Some(long.as_str()));
        let back = to_kafka_headers(&event.headers);
        assert_eq!(back.count(), 4);
        assert_eq!(headers_of(&message), event.headers);
    }
}
