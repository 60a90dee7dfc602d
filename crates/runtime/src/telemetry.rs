//! Logs and traces.
//!
//! - Structured logs via `tracing` (JSON by default) on stderr. Log lines written while an event
//!   is processed carry that event's span fields, among them `correlation_id` and `ce_id`.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//!   set, spans are exported over OTLP/HTTP (JSON encoding) with a batch processor; otherwise
//!   nothing is exported. W3C trace context is the propagation format (`traceparent` headers).
//!   The service name is `OTEL_SERVICE_NAME`, else the binary's name.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (and the OTLP trace exporter when configured by env).
/// `RUST_LOG` overrides `log_level`.
pub fn init(settings: &TelemetrySettings) {
    // The metrics recorder first: a stage's start-up may already record (e.g. zeroed series).
    let _ = crate::http::prometheus();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},rdkafka=warn", settings.log_level.as_str()))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = if settings.log_format == LogFormat::Text {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let otel = otlp_provider().map(|provider| {
        let tracer = provider.tracer("reflex");
        let _ = PROVIDER.set(provider);
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    let exporting = otel.is_some();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if exporting {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !configured {
        return None;
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()
        .map_err(|e| eprintln!("OTLP trace exporter not started: {e}"))
        .ok()?;
    let service = std::env::var("OTEL_SERVICE_NAME").ok().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "reflex".into())
    });
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    )
}

/// Flushes and stops the trace exporter (called by [`crate::run`] when the loop ends).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}
