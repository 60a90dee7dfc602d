//! Kafka records ↔ Reflex types: a consumed record as an [`Event`], and headers both ways.

use bytes::BytesMut;
use rdkafka::message::{Header as KafkaHeader, Headers as _, OwnedHeaders};
use rdkafka::Message;
use reflex_core::headers::{Header, HeaderName};
use reflex_core::Headers;

use crate::stage::Event;

/// Copies the record out of librdkafka's buffer (the stage may keep it across awaits) into one
/// allocation: key, payload and every header name and value are slices of it. The former
/// per-field `String`/`Vec` copies were ~25 allocations per event (profile: a third of the
/// router's samples in malloc/free/memmove).
pub fn to_event<M: Message>(message: &M) -> Event {
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
        assert_eq!(
            seen,
            [("a", Some(&b"1"[..])), ("b", None), ("a", Some(&b"2"[..]))]
        );
        let back = to_kafka_headers(&event.headers);
        assert_eq!(back.count(), 3);
        assert_eq!(headers_of(&message).len(), 3);
    }
}
