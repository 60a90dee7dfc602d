//! librdkafka client settings built from [`KafkaSettings`]: the consumer's group membership
//! (classic or KIP-848 consumer protocol) and the producer's delivery guarantees.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::config::{AssignmentStrategy, GroupProtocol, KafkaSettings};

/// Session timeout of the classic protocol when `kafka.session_timeout` is unset.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// librdkafka properties that the KIP-848 consumer protocol rejects: the broker owns them.
const BROKER_OWNED_WITH_CONSUMER_PROTOCOL: [&str; 3] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// A Kafka setting that contradicts another; names the setting and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ClientConfigError {
    /// The setting to change.
    pub setting: String,
    /// Why, and what to do instead.
    pub message: String,
}

/// The consumer's settings. Offsets are stored by the runtime only once an event's outputs are
/// acknowledged; librdkafka commits what is stored.
pub fn consumer_config(
    kafka: &KafkaSettings,
    client_id: &str,
) -> Result<ClientConfig, ClientConfigError> {
    let extra = || kafka.properties.iter().chain(&kafka.consumer_properties);
    if let Some((key, _)) = extra().find(|(k, _)| k.as_str() == "group.protocol") {
        return Err(ClientConfigError {
            setting: format!("kafka properties `{key}`"),
            message: "set kafka.group_protocol (classic or consumer) instead".into(),
        });
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", millis(kafka.commit_interval))
        .set("auto.offset.reset", kafka.auto_offset_reset.as_str())
        .set("max.poll.interval.ms", millis(kafka.max_poll_interval))
        .set(
            "queued.max.messages.kbytes",
            kafka.fetch_queue_kbytes.to_string(),
        );
    match kafka.group_protocol {
        GroupProtocol::Classic => {
            let strategy = kafka
                .assignment_strategy
                .unwrap_or(AssignmentStrategy::CooperativeSticky);
            config
                .set("group.protocol", "classic")
                .set("partition.assignment.strategy", strategy.as_str())
                .set(
                    "session.timeout.ms",
                    millis(kafka.session_timeout.unwrap_or(DEFAULT_SESSION_TIMEOUT)),
                );
        }
        GroupProtocol::Consumer => {
            let owned = |setting: &str, what: &str| ClientConfigError {
                setting: setting.to_string(),
                message: format!(
                    "not allowed with kafka.group_protocol = \"consumer\": the broker owns {what}; \
                     remove it, or use group_protocol = \"classic\""
                ),
            };
            if kafka.session_timeout.is_some() {
                return Err(owned(
                    "kafka.session_timeout",
                    "the session timeout (broker setting group.consumer.session.timeout.ms)",
                ));
            }
            if kafka.assignment_strategy.is_some() {
                return Err(owned(
                    "kafka.assignment_strategy",
                    "the assignment (pick a broker assignor with consumer_properties \
                     group.remote.assignor = \"uniform\" or \"range\")",
                ));
            }
            if let Some((key, _)) =
                extra().find(|(k, _)| BROKER_OWNED_WITH_CONSUMER_PROTOCOL.contains(&k.as_str()))
            {
                return Err(owned(&format!("kafka properties `{key}`"), "this setting"));
            }
            config.set("group.protocol", "consumer");
        }
    }
    if !kafka.group_instance_id.is_empty() {
        config.set("group.instance.id", &kafka.group_instance_id);
    }
    for (k, v) in extra() {
        config.set(k, v);
    }
    Ok(config)
}

/// A duration as librdkafka's `*.ms` properties take it.
fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// The producer's settings.
pub fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // Idempotence keeps per-partition order and no duplicates across librdkafka's retries.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // The Java client's partitioner, so keys land where Java/Kafka Streams producers put them.
        .set("partitioner", "murmur2_random");
    for (k, v) in kafka.properties.iter().chain(&kafka.producer_properties) {
        config.set(k, v);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RENAMED, RUNTIME_DEFAULTS};
    use figment::providers::{Format, Toml};
    use figment::Figment;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        kafka: KafkaSettings,
    }

    /// The shared defaults with `file` (TOML) on top, as a worker loads them.
    fn kafka(file: &str) -> Result<KafkaSettings, String> {
        Figment::new()
            .merge(Toml::string(RUNTIME_DEFAULTS))
            .merge(Toml::string(file))
            .extract::<Sample>()
            .map(|s| s.kafka)
            .map_err(|e| e.to_string())
    }

    fn get(config: &ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_string)
    }

    #[test]
    fn classic_defaults_to_cooperative_sticky_and_45_s() {
        let c = consumer_config(&kafka("").unwrap(), "w").expect("valid");
        assert_eq!(get(&c, "group.protocol").as_deref(), Some("classic"));
        assert_eq!(
            get(&c, "partition.assignment.strategy").as_deref(),
            Some("cooperative-sticky")
        );
        assert_eq!(get(&c, "session.timeout.ms").as_deref(), Some("45000"));
    }

    #[test]
    fn consumer_protocol_leaves_session_and_assignment_to_the_broker() {
        let settings = kafka("[kafka]\ngroup_protocol = \"consumer\"").unwrap();
        let c = consumer_config(&settings, "w").expect("valid");
        assert_eq!(get(&c, "group.protocol").as_deref(), Some("consumer"));
        for key in BROKER_OWNED_WITH_CONSUMER_PROTOCOL {
            assert_eq!(get(&c, key), None, "{key} must not be sent");
        }
    }

    #[test]
    fn consumer_protocol_refuses_the_settings_the_broker_owns() {
        for (extra, named) in [
            ("session_timeout = \"6s\"", "kafka.session_timeout"),
            (
                "assignment_strategy = \"range\"",
                "kafka.assignment_strategy",
            ),
            (
                "[kafka.consumer_properties]\n\"heartbeat.interval.ms\" = \"100\"",
                "heartbeat.interval.ms",
            ),
        ] {
            let settings =
                kafka(&format!("[kafka]\ngroup_protocol = \"consumer\"\n{extra}")).unwrap();
            let err = consumer_config(&settings, "w").expect_err(extra);
            assert!(err.to_string().contains(named), "{err}");
            assert!(err.to_string().contains("group_protocol"), "{err}");
        }
    }

    #[test]
    fn group_protocol_is_a_setting_not_a_property() {
        let settings = kafka("[kafka.properties]\n\"group.protocol\" = \"consumer\"").unwrap();
        let err = consumer_config(&settings, "w").expect_err("group.protocol as a property");
        assert!(err.to_string().contains("kafka.group_protocol"), "{err}");
    }

    #[test]
    fn a_typo_in_the_protocol_or_strategy_is_a_config_error() {
        let err = kafka("[kafka]\ngroup_protocol = \"consumers\"").unwrap_err();
        assert!(err.contains("consumers"), "{err}");
        let err = kafka("[kafka]\nassignment_strategy = \"sticky\"").unwrap_err();
        assert!(err.contains("sticky"), "{err}");
        let err = kafka("[kafka]\nauto_offset_reset = \"earliset\"").unwrap_err();
        assert!(
            err.contains("`earliest`, `latest`") || err.contains("`earliest` or `latest`"),
            "{err}"
        );
    }

    #[test]
    fn durations_reach_librdkafka_in_milliseconds() {
        let settings =
            kafka("[kafka]\ncommit_interval = \"250ms\"\nsession_timeout = \"6s\"").unwrap();
        let c = consumer_config(&settings, "w").expect("valid");
        assert_eq!(get(&c, "auto.commit.interval.ms").as_deref(), Some("250"));
        assert_eq!(get(&c, "session.timeout.ms").as_deref(), Some("6000"));
        assert_eq!(get(&c, "max.poll.interval.ms").as_deref(), Some("300000"));
        assert!(RENAMED.contains(&("kafka.commit_interval_ms", "kafka.commit_interval")));
    }
}
