//! The loop's metric handles and the series it registers at start.

use reflex_core::metrics as m;

/// The loop's metric handles, resolved once: `metrics::counter!(name, labels)` per event is a
/// registry lookup with label hashing.
pub(crate) struct LoopMetrics {
    pub events_in: metrics::Counter,
    pub events_out: metrics::Counter,
    pub events_dropped: metrics::Counter,
    pub retries: metrics::Counter,
    pub in_flight: metrics::Gauge,
    pub processing: metrics::Histogram,
}

impl LoopMetrics {
    pub fn new(stage: &'static str) -> Self {
        Self {
            events_in: metrics::counter!(m::EVENTS_IN, "stage" => stage),
            events_out: metrics::counter!(m::EVENTS_OUT, "stage" => stage),
            events_dropped: metrics::counter!(m::EVENTS_DROPPED, "stage" => stage),
            retries: metrics::counter!(m::RETRIES, "stage" => stage),
            in_flight: metrics::gauge!(m::IN_FLIGHT, "stage" => stage),
            processing: metrics::histogram!(m::PROCESSING_SECONDS, "stage" => stage),
        }
    }
}

/// Registers the loop's series at zero, so `/metrics` shows them (and `rate()` works) before
/// the first event of each kind.
pub(crate) fn register(stage: &'static str) {
    for name in [
        m::EVENTS_IN,
        m::EVENTS_OUT,
        m::EVENTS_DROPPED,
        m::RETRIES,
        m::BACKPRESSURE_PAUSES,
    ] {
        metrics::counter!(name, "stage" => stage).increment(0);
    }
    for class in reflex_core::ErrorClass::ALL {
        metrics::counter!(m::DEAD_LETTERS, "stage" => stage, "class" => class.as_str())
            .increment(0);
    }
    metrics::gauge!(m::IN_FLIGHT, "stage" => stage).set(0.0);
    metrics::gauge!(m::PAUSED_PARTITIONS, "stage" => stage).set(0.0);
    metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => stage).set(0.0);
    metrics::gauge!(m::DELAYED_PARTITIONS, "stage" => stage).set(0.0);
}
