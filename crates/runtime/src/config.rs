//! Layered configuration: embedded defaults, then a TOML file, then `REFLEX_`-prefixed
//! environment variables (`REFLEX_<SECTION>__<FIELD>`, e.g. `REFLEX_KAFKA__GROUP_ID`; variables
//! without a `__` section separator, such as `REFLEX_TEST_BOOTSTRAP`, are not configuration).
//! Unknown fields are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use thiserror::Error;

/// Defaults for the sections every worker shares (`kafka`, `runtime`, `registry`, `telemetry`).
pub const RUNTIME_DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Debug, Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loads `T` from the embedded `defaults` (applied in order), the optional `file`, then the
/// environment. The error names the offending key and where its value came from.
pub fn load<T: DeserializeOwned>(defaults: &[&str], file: Option<&Path>) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    for text in defaults {
        figment = figment.merge(Toml::string(text));
    }
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed("REFLEX_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    figment.extract().map_err(|e| {
        ConfigError(
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// Kafka connection and consumer-group settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Consumer group. Replicas with the same group share the input partitions.
    pub group_id: String,
    /// Static group membership (KIP-345): a stable id per replica (e.g. the StatefulSet pod name)
    /// lets a restarted replica take its partitions back at once, without a rebalance. Empty
    /// means dynamic membership. A static member does not leave the group on shutdown, so its
    /// partitions wait for `session_timeout_ms` unless it comes back.
    pub group_instance_id: String,
    /// Topics this worker consumes.
    pub input_topics: Vec<String>,
    /// Consumer-group protocol: `classic` (the default; the client runs the assignment and
    /// chooses the session timeout) or `consumer` (KIP-848, Kafka 4.0+: the broker assigns
    /// partitions incrementally and owns the session timeout, `group.consumer.session.timeout.ms`
    /// on the broker). With `consumer`, `session_timeout_ms` and `assignment_strategy` must stay
    /// unset: the worker refuses to start otherwise.
    pub group_protocol: GroupProtocol,
    /// Classic protocol only: librdkafka's `partition.assignment.strategy`. Unset means
    /// `cooperative-sticky` (a rebalance moves only the partitions that change owner); `range`
    /// and `roundrobin` are eager (every member gives up everything on each rebalance).
    pub assignment_strategy: Option<AssignmentStrategy>,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Classic protocol only: the group session timeout; a member silent this long is removed
    /// and its partitions reassigned. Unset means 45000.
    pub session_timeout_ms: Option<u32>,
    /// Longest gap between polls before the member is considered stuck.
    pub max_poll_interval_ms: u32,
    /// How often stored (safe) offsets are committed.
    pub commit_interval_ms: u32,
    /// Upper bound of librdkafka's prefetch queue (`queued.max.messages.kbytes`): part of the
    /// memory bound together with `runtime.max_in_flight`.
    pub fetch_queue_kbytes: u32,
    /// Extra librdkafka properties for consumer and producer (e.g. `security.protocol`, `sasl.*`).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only.
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only.
    pub producer_properties: BTreeMap<String, String>,
}

/// Consumer-group protocol (`kafka.group_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic group protocol: client-side assignment, client-chosen session timeout.
    Classic,
    /// KIP-848: the broker runs the assignment and owns the session timeout.
    Consumer,
}

/// Partition assignment of the classic protocol (`kafka.assignment_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    /// Incremental: only partitions that change owner move.
    CooperativeSticky,
    /// Eager, contiguous ranges per topic.
    Range,
    /// Eager, round robin over all partitions.
    Roundrobin,
}

impl AssignmentStrategy {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::Roundrobin => "roundrobin",
        }
    }
}

/// Settings of the shared loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Most events in flight before the consumer pauses its partitions (backpressure).
    pub max_in_flight: usize,
    /// Concurrent key lanes; events with the same key always share a lane, so stay in order.
    pub key_lanes: usize,
    /// Most events a lane hands the stage at once ([`crate::Stage::process_batch`]): those
    /// already queued in the lane, at most one per key, so a stage can share one Redis round
    /// trip among them. Never waits to fill a batch; 1 turns batching off.
    pub batch_max: usize,
    /// On SIGTERM, how long in-flight events may take to finish. Keep below the session timeout.
    pub drain_grace_ms: u64,
    /// Attempts for retryable errors before the event is dead-lettered (1 = no retry).
    pub max_attempts: u32,
    /// First retry backoff; doubles each attempt, with jitter.
    pub retry_backoff_ms: u64,
    /// Longest retry backoff.
    pub retry_max_backoff_ms: u64,
    /// In-process retries of one event stop once this much time has passed since its first
    /// failure, even with attempts left, so one slow event does not stall its key lane.
    pub retry_deadline_ms: u64,
    /// After in-process retries, a retryable failure is not retried in place: the event goes to
    /// the dead-letter topic with a not-before time and the reprocessor delivers it again (a
    /// non-blocking retry). The delay is this, doubled per redelivery attempt.
    pub redelivery_backoff_ms: u64,
    /// Longest delay before a redelivery.
    pub redelivery_max_backoff_ms: u64,
    /// Per-key parking: while an event waits for redelivery, later events with its key are
    /// parked behind it (to the dead-letter topic, then redelivered in order) so per-key order
    /// survives non-blocking retries. Needs the reprocessor running on the dead-letter topics.
    pub park_keys: bool,
    /// Redis URL (`redis://`, `rediss://`, with credentials from the environment) for the
    /// runtime's state (parked keys). Empty: in-process state, lost on restart; fine for one
    /// replica, not for several.
    pub state_url: String,
    /// Dead-letter topic of an input topic is `<topic><suffix>`.
    pub dead_letter_suffix: String,
    /// Also write the dead-letter header names other tools read: any of `spring` (Spring
    /// Kafka `kafka_dlt-*`), `connect` (Kafka Connect `__connect.errors.*`), `streams`
    /// (Kafka Streams `__streams.errors.*`). Reflex's own `reflex-*` headers are always written.
    pub dead_letter_compat: Vec<String>,
    /// Name of this replica in dead-letter headers and logs; empty means `<stage>-<pid>`.
    pub worker_id: String,
    /// Address of `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9090` in a pod; port 0
    /// picks a free port, logged at start). Empty disables the endpoint.
    pub http_listen: String,
    /// How often the worker measures its own group's lag (offsets and seconds) for `/metrics`;
    /// 0 turns it off.
    pub lag_interval_ms: u64,
    /// Lag samples in the Burrow-style status window.
    pub lag_window: usize,
    /// Lag > 0 and no commit moved this long: status STALL.
    pub lag_stall_after_ms: u64,
    /// Lag > 0 and no commit moved this long: status STOP.
    pub lag_stop_after_ms: u64,
}

/// Schema Registry access.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible registry.
    pub url: String,
    /// Timeout of one registry request.
    pub timeout_ms: u64,
    /// How long an unknown schema id is remembered as unknown before asking again.
    pub negative_cache_ms: u64,
}

impl RegistrySettings {
    /// A client with these settings.
    pub fn client(&self) -> reflex_core::registry::RegistryClient {
        reflex_core::registry::RegistryClient::new(
            &self.url,
            std::time::Duration::from_millis(self.timeout_ms),
            std::time::Duration::from_millis(self.negative_cache_ms),
        )
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (one object per line) or `text`.
    pub log_format: String,
    /// Default level filter; `RUST_LOG` overrides it.
    pub log_level: String,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        kafka: KafkaSettings,
        runtime: RuntimeSettings,
        registry: RegistrySettings,
        telemetry: TelemetrySettings,
    }

    #[test]
    fn defaults_then_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "[kafka]\ngroup_id = \"from-file\"\ninput_topics = [\"a\"]\n",
            )?;
            jail.set_env("REFLEX_RUNTIME__MAX_IN_FLIGHT", "7");
            jail.set_env("REFLEX_TEST_BOOTSTRAP", "ignored: no section separator");
            let s: Sample = load(&[RUNTIME_DEFAULTS], Some(Path::new("w.toml"))).unwrap();
            assert_eq!(s.kafka.group_id, "from-file");
            assert_eq!(s.kafka.input_topics, vec!["a"]);
            assert_eq!(s.runtime.max_in_flight, 7);
            assert_eq!(s.registry.url, "http://127.0.0.1:8081");
            assert_eq!(s.telemetry.log_format, "json");
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "[kafka]\ngroup = \"typo\"\n")?;
            let err = load::<Sample>(&[RUNTIME_DEFAULTS], Some(Path::new("w.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("group") && err.contains("w.toml"), "{err}");
            let err = load::<Sample>(&[RUNTIME_DEFAULTS], Some(Path::new("nope.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
