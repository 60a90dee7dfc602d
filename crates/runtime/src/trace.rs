//! Trace context through Kafka headers: one `process {topic}` span per event, a child of the
//! producer's context from the `traceparent` header, with the OpenTelemetry messaging attribute
//! names (current semantic conventions, not the deprecated ones); every record the event produces carries this span's context.

use opentelemetry::propagation::{Extractor, Injector};
use reflex_core::headers::{ce, Headers};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::stage::{Event, Output};

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_str(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key.to_owned(), value);
    }
}

/// The processing span of `event`, parented by its `traceparent` header when it has one.
pub fn process_span(event: &Event, group: &str) -> Span {
    // Field values are evaluated only when the span is enabled: a disabled span (no exporter,
    // log level above info) costs no header lookups.
    let ce_id = || event.headers.get_str(ce::ID).unwrap_or("");
    let span = tracing::info_span!(
        "process",
        "otel.name" = %format!("process {}", event.topic),
        "otel.kind" = "consumer",
        "otel.status_code" = tracing::field::Empty,
        "messaging.system" = "kafka",
        "messaging.operation.type" = "process",
        "messaging.operation.name" = "process",
        "messaging.destination.name" = %event.topic,
        "messaging.destination.partition.id" = %event.partition,
        "messaging.consumer.group.name" = %group,
        "messaging.kafka.offset" = event.offset,
        "messaging.message.id" = %ce_id(),
        "messaging.kafka.message.tombstone" = event.payload.is_none(),
        "error.type" = tracing::field::Empty,
        ce_id = %ce_id(),
        correlation_id = %event.headers.get_str(ce::CORRELATION_ID).unwrap_or_else(ce_id),
    );
    // A disabled span (no exporter, log level above info) has no context to parent: skip
    // parsing `traceparent` for it.
    if !span.is_disabled()
        && event
            .headers
            .get(reflex_core::headers::trace::TRACEPARENT)
            .is_some()
    {
        let origin = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(&event.headers))
        });
        if is_redelivery(&event.headers) {
            // A redelivered or replayed event starts a trace of its own, linked to the
            // original one (OpenTelemetry messaging conventions for retries and replays).
            use opentelemetry::trace::TraceContextExt;
            span.add_link(origin.span().span_context().clone());
        } else {
            let _ = span.set_parent(origin);
        }
    }
    span
}

/// Whether the event came back from a dead-letter topic (reprocessor or `reflexctl dlq replay`).
pub fn is_redelivery(headers: &Headers) -> bool {
    use reflex_core::headers::reflex as rh;
    headers.get(rh::REDELIVERY_ATTEMPT).is_some() || headers.get(rh::REPLAY_ID).is_some()
}

/// Marks the span failed with the error class.
pub fn record_error(span: &Span, class: &str) {
    span.record("error.type", class);
    span.record("otel.status_code", "ERROR");
}

/// Writes `span`'s context into each output's `traceparent` / `tracestate`, when the span is
/// being recorded (an exporter is configured); otherwise outputs keep the headers they have.
pub fn inject(span: &Span, outputs: &mut [Output]) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if !opentelemetry::trace::TraceContextExt::has_active_span(&context) {
        return;
    }
    for output in outputs {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(&mut output.headers))
        });
    }
}
