//! Header names (CloudEvents Kafka binding in binary mode, W3C trace context, Reflex's own) and
//! a small ordered header list that keeps duplicates and null values as Kafka does.

use bytes::Bytes;

/// CloudEvents attributes carried as `ce_*` headers (binary content mode).
pub mod ce {
    pub const SPECVERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    /// Extension: ties every event of one automation chain together.
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// Extension: the `ce_id` of the event that caused this one.
    pub const CAUSATION_ID: &str = "ce_causationid";
    pub const CONTENT_TYPE: &str = "content-type";
    /// Attributes without which an event is rejected (dead-lettered as permanent).
    pub const REQUIRED: [&str; 4] = [SPECVERSION, ID, SOURCE, TYPE];
    pub const SPEC_VERSION_1_0: &str = "1.0";
    /// Content type for Avro values in Confluent wire format.
    pub const AVRO_CONTENT_TYPE: &str = "application/avro";
}

/// W3C trace context.
pub mod trace {
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// Headers Reflex writes.
pub mod reflex {
    /// Name of the router rule that sent the event here.
    pub const RULE: &str = "reflex-rule";
    /// How many Reflex hops the event has taken (loop prevention).
    pub const HOPS: &str = "reflex-hops";
    /// Router rules that handled this automation chain so far, comma-separated in order: a
    /// chain that comes back to a rule it already went through is a loop (dead-lettered).
    pub const RULES_VISITED: &str = "reflex-rules-visited";
    /// On a stateful rule's firing: the group it fired for (the rule's `group_by` value).
    pub const GROUP: &str = "reflex-group";
    /// On a firing: the window's bounds in event time, RFC 3339 (`[start, end)`).
    pub const WINDOW_START: &str = "reflex-window-start";
    pub const WINDOW_END: &str = "reflex-window-end";
    /// On a firing: how many events the window counted when it fired.
    pub const WINDOW_EVENTS: &str = "reflex-window-events";
    /// On a firing: `ce_id`s of the events that fed it, comma-separated (the first 20).
    pub const FED_BY: &str = "reflex-fed-by";
    /// On a firing: `event` (an event completed the window) or `timer` (a deadline passed).
    pub const FIRED_BY: &str = "reflex-fired-by";
    /// Error class of a dead letter (see [`crate::ErrorClass`]).
    pub const ERROR_CLASS: &str = "reflex-error-class";
    pub const ERROR_MESSAGE: &str = "reflex-error-message";
    pub const ERROR_STAGE: &str = "reflex-error-stage";
    pub const ERROR_WORKER: &str = "reflex-error-worker";
    pub const ERROR_ATTEMPTS: &str = "reflex-error-attempts";
    pub const ERROR_FIRST_FAILURE_MS: &str = "reflex-error-first-failure-ms";
    pub const ORIGINAL_TOPIC: &str = "reflex-original-topic";
    pub const ORIGINAL_PARTITION: &str = "reflex-original-partition";
    pub const ORIGINAL_OFFSET: &str = "reflex-original-offset";
    pub const ORIGINAL_TIMESTAMP_MS: &str = "reflex-original-timestamp-ms";
    pub const ORIGINAL_GROUP: &str = "reflex-original-group";
    /// On a dead letter of a retryable class: the earliest time (ms since the epoch) the
    /// reprocessor may deliver it again (non-blocking retry).
    pub const RETRY_NOT_BEFORE_MS: &str = "reflex-retry-not-before-ms";
    /// On a record the reprocessor delivered back to its original topic: how many times it has
    /// been delivered again so far (1 on the first redelivery).
    pub const REDELIVERY_ATTEMPT: &str = "reflex-redelivery-attempt";
    /// On a record `reflexctl dlq replay` delivered: the replay's id (also in the audit record).
    pub const REPLAY_ID: &str = "reflex-replay-id";
    /// On a redelivered or replayed record: `<dead-letter topic>/<partition>/<offset>` it came from.
    pub const REDELIVERED_FROM: &str = "reflex-redelivered-from";
    /// On a dead letter parked behind an earlier failure of the same key: that event's `ce_id`.
    pub const PARKED_BEHIND: &str = "reflex-parked-behind";
    /// A control record (no value) on an original topic: releases the key's parking when the
    /// event with this `ce_id` went to the exhausted topic (`<topic>.exhausted`) instead of being delivered again.
    pub const RELEASE: &str = "reflex-release";
    /// Event signature: `keyid=<id>,sig=<base64 HMAC-SHA256>` over `ce_id`, `ce_source`,
    /// `ce_type`, `ce_time` and the value (see `crate::signing`). Verified by the router when
    /// `router.signing_keys` is set.
    pub const SIGNATURE: &str = "reflex-signature";
}

/// Spring Kafka's dead-letter headers (`DeadLetterPublishingRecoverer`). Partition, offset and
/// timestamp are big-endian binary (4, 8 and 8 bytes), the rest UTF-8.
pub mod spring {
    pub const EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
    pub const EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";
    pub const EXCEPTION_STACKTRACE: &str = "kafka_dlt-exception-stacktrace";
    pub const ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
    pub const ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
    pub const ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
    pub const ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
    pub const ORIGINAL_CONSUMER_GROUP: &str = "kafka_dlt-original-consumer-group";
    pub const RETRY_ATTEMPTS: &str = "retry_topic-attempts";
}

/// Kafka Connect's dead-letter headers (`errors.deadletterqueue.context.headers.enable`), UTF-8.
pub mod connect {
    pub const TOPIC: &str = "__connect.errors.topic";
    pub const PARTITION: &str = "__connect.errors.partition";
    pub const OFFSET: &str = "__connect.errors.offset";
    pub const CONNECTOR_NAME: &str = "__connect.errors.connector.name";
    pub const TASK_ID: &str = "__connect.errors.task.id";
    pub const STAGE: &str = "__connect.errors.stage";
    pub const CLASS_NAME: &str = "__connect.errors.class.name";
    pub const EXCEPTION_CLASS_NAME: &str = "__connect.errors.exception.class.name";
    pub const EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    pub const EXCEPTION_STACKTRACE: &str = "__connect.errors.exception.stacktrace";
}

/// Kafka Streams' dead-letter headers (KIP-1034), UTF-8.
pub mod streams {
    pub const EXCEPTION: &str = "__streams.errors.exception";
    pub const MESSAGE: &str = "__streams.errors.message";
    pub const STACKTRACE: &str = "__streams.errors.stacktrace";
    pub const TOPIC: &str = "__streams.errors.topic";
    pub const PARTITION: &str = "__streams.errors.partition";
    pub const OFFSET: &str = "__streams.errors.offset";
}

/// A header name: UTF-8 in a cheaply cloned buffer. Names from constants cost no allocation,
/// and the runtime slices consumed names out of one per-record buffer (measured: per-header
/// `String`/`Vec` copies were a large share of the router's malloc/free time).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderName(Bytes);

impl HeaderName {
    pub const fn from_static(name: &'static str) -> Self {
        Self(Bytes::from_static(name.as_bytes()))
    }

    /// A name from bytes, if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor takes a `str`/`String` or checks the bytes are UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::ops::Deref for HeaderName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for HeaderName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for HeaderName {
    fn from(name: &'static str) -> Self {
        Self::from_static(name)
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> Self {
        Self(Bytes::from(name))
    }
}

impl From<&String> for HeaderName {
    fn from(name: &String) -> Self {
        Self(Bytes::copy_from_slice(name.as_bytes()))
    }
}

impl From<HeaderName> for String {
    fn from(name: HeaderName) -> Self {
        name.as_str().to_owned()
    }
}

impl PartialEq<str> for HeaderName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for HeaderName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<String> for HeaderName {
    fn eq(&self, other: &String) -> bool {
        self.0 == other.as_bytes()
    }
}

/// One Kafka header; the value may be null. Values are `Bytes` so that cloning a header list
/// (one output per destination) copies no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: HeaderName,
    pub value: Option<Bytes>,
}

/// Ordered Kafka headers. Lookups return the last value for a key, as Kafka clients do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// The last value for `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }

    /// The last value for `key` as UTF-8, if present, not null and valid UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Appends a header, keeping any earlier one. `&'static str` names and values, `String`,
    /// `Vec<u8>` and `Bytes` are taken without copying; copy borrowed data with `.to_owned()`.
    pub fn push(&mut self, key: impl Into<HeaderName>, value: impl Into<Bytes>) {
        self.0.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
    }

    /// Replaces every header named `key` with one value.
    pub fn set(&mut self, key: impl Into<HeaderName>, value: impl Into<Bytes>) {
        let key = key.into();
        self.0.retain(|h| h.key != key);
        self.0.push(Header {
            key,
            value: Some(value.into()),
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CloudEvents `ce_*` attributes, as `(name without prefix, value)`.
    pub fn ce_attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|h| {
            let name = h.key.strip_prefix("ce_")?;
            let value = std::str::from_utf8(h.value.as_deref()?).ok()?;
            Some((name, value))
        })
    }

    /// Names of required CloudEvents headers that are missing or not UTF-8.
    pub fn missing_required_ce(&self) -> Vec<&'static str> {
        ce::REQUIRED
            .into_iter()
            .filter(|name| self.get_str(name).is_none_or(str::is_empty))
            .collect()
    }

    /// Rules this chain already went through (see [`reflex::RULES_VISITED`]).
    pub fn rules_visited(&self) -> Vec<&str> {
        self.get_str(reflex::RULES_VISITED)
            .map(|v| v.split(',').filter(|r| !r.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The hop count (0 when absent or unreadable).
    pub fn hops(&self) -> u32 {
        self.get_str(reflex::HOPS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_value_wins_and_set_replaces() {
        let mut h = Headers::new();
        h.push("a", "1");
        h.push("a", "2");
        assert_eq!(h.get_str("a"), Some("2"));
        h.set("a", "3");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get_str("a"), Some("3"));
    }

    #[test]
    fn required_ce_headers_are_reported_by_name() {
        let mut h = Headers::new();
        h.push(ce::SPECVERSION, "1.0");
        h.push(ce::ID, "");
        assert_eq!(h.missing_required_ce(), vec![ce::ID, ce::SOURCE, ce::TYPE]);
        h.set(ce::ID, "x");
        h.push(ce::SOURCE, "s");
        h.push(ce::TYPE, "t");
        assert!(h.missing_required_ce().is_empty());
        let attrs: Vec<_> = h.ce_attributes().collect();
        assert!(attrs.contains(&("type", "t")));
    }

    #[test]
    fn hops_default_to_zero() {
        let mut h = Headers::new();
        assert_eq!(h.hops(), 0);
        h.push(reflex::HOPS, "3");
        assert_eq!(h.hops(), 3);
        h.set(reflex::HOPS, "junk");
        assert_eq!(h.hops(), 0);
    }
}
