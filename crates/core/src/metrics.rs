//! Every metric name the fleet emits, in one place (`reflex_<name>_<unit>_total` style).
//! Labels come from small fixed sets only: stage, topic, rule, error class, result.

/// Events taken from Kafka by a worker. Labels: `stage`.
pub const EVENTS_IN: &str = "reflex_events_in_total";
/// Records a worker produced (each fan-out destination counts). Labels: `stage`.
pub const EVENTS_OUT: &str = "reflex_events_out_total";
/// Events a rule dropped on purpose. Labels: `stage`.
pub const EVENTS_DROPPED: &str = "reflex_events_dropped_total";
/// Dead-letter records written. Labels: `stage`, `class`.
pub const DEAD_LETTERS: &str = "reflex_dead_letters_total";
/// In-process retries of transient errors. Labels: `stage`.
pub const RETRIES: &str = "reflex_retries_total";
/// Rule matches. Labels: `rule`.
pub const RULE_MATCHES: &str = "reflex_rule_matches_total";
/// Events in flight (taken, not yet acknowledged). Labels: `stage`.
pub const IN_FLIGHT: &str = "reflex_in_flight_events";
/// Times the runtime paused its partitions for backpressure. Labels: `stage`.
pub const BACKPRESSURE_PAUSES: &str = "reflex_backpressure_pauses_total";
/// Processing time of one event in the stage. Labels: `stage`.
pub const PROCESSING_SECONDS: &str = "reflex_processing_duration_seconds";
