//! The start-up check of a worker's Kafka access: before it joins its group, the worker proves
//! it can connect, authenticate, read its input topics and use its consumer group, and stops
//! with one error naming the setting or the missing right when it cannot.
//!
//! Without it, librdkafka retries a refused password or an untrusted certificate forever, only
//! logging, and a missing ACL shows up as a stalled group; an operator then sees a worker that
//! is "up" and does nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::KafkaSettings;

/// Why the worker cannot use Kafka. Every variant is a configuration or permission problem a
/// restart does not fix, so the worker exits instead of retrying.
#[derive(Debug, Error, PartialEq)]
pub enum PreflightError {
    #[error("Kafka refused the credentials of {principal} ({mechanism}) at {bootstrap}: {reason}. Check the password (REFLEX_KAFKA_SECRET_SASL_PASSWORD or REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE) and kafka.properties sasl.username / sasl.mechanism")]
    Authentication {
        principal: String,
        mechanism: String,
        bootstrap: String,
        reason: String,
    },
    #[error("the TLS handshake with Kafka at {bootstrap} failed: {reason}. If the broker's certificate is not trusted, set kafka.properties ssl.ca.location to the CA that signed it; for mutual TLS check ssl.certificate.location and ssl.key.location")]
    Tls { bootstrap: String, reason: String },
    #[error("{principal} may not {operation} {resource}: grant it that ACL (ops/security/kafka-acls.toml lists every worker's rights; `reflexctl acls apply` applies them)")]
    NotAuthorized {
        principal: String,
        operation: &'static str,
        resource: String,
    },
    #[error("Kafka at {bootstrap} did not answer within {} s: {reason}. Check kafka.bootstrap_servers and kafka.properties security.protocol (the listener's protocol must match)", .waited.as_secs())]
    Unreachable {
        bootstrap: String,
        reason: String,
        waited: Duration,
    },
}

/// Errors librdkafka reports through its error callback while connecting (the only place a
/// refused password or certificate shows).
#[derive(Default)]
struct ConnectErrors {
    first_fatal: Mutex<Option<(RDKafkaErrorCode, String)>>,
    last: Mutex<Option<String>>,
    group_refused: std::sync::atomic::AtomicBool,
}

impl ConsumerContext for ConnectErrors {}

impl ClientContext for ConnectErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(
            code,
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        ) || reason.contains("certificate verify failed")
        {
            // librdkafka reports a failed certificate check under several codes (SSL, a
            // transport failure, or an authentication failure when SASL runs over TLS): the
            // reason says what it was.
            let tls = reason.contains("certificate verify failed")
                || reason.contains("SSL handshake failed");
            let code = if tls {
                RDKafkaErrorCode::SSL
            } else {
                code.unwrap_or(RDKafkaErrorCode::SSL)
            };
            let mut first = self.first_fatal.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert((code, reason.to_string()));
        }
        if code == Some(RDKafkaErrorCode::GroupAuthorizationFailed) {
            self.group_refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }
}

/// Connects with `config` (the worker's consumer settings) and checks what the worker needs:
/// metadata, Read on each input topic, and its consumer group. Returns within `timeout`.
pub fn check(
    config: &ClientConfig,
    kafka: &KafkaSettings,
    timeout: Duration,
) -> Result<(), PreflightError> {
    let bootstrap = kafka.bootstrap_servers.clone();
    let principal = principal(config);
    let consumer: BaseConsumer<ConnectErrors> =
        match config.create_with_context(ConnectErrors::default()) {
            Ok(c) => c,
            // Invalid settings are reported by the loop's own client creation, with its wording.
            Err(_) => return Ok(()),
        };
    let started = Instant::now();
    let metadata = loop {
        match consumer.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(metadata) => break metadata,
            Err(e) => {
                // Error callbacks are served by poll, not by the metadata request.
                let _ = consumer.poll(Duration::from_millis(100));
                if let Some((code, reason)) = consumer
                    .context()
                    .first_fatal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                {
                    return Err(if code == RDKafkaErrorCode::SSL {
                        PreflightError::Tls { bootstrap, reason }
                    } else {
                        PreflightError::Authentication {
                            principal,
                            mechanism: config
                                .get("sasl.mechanism")
                                .or(config.get("sasl.mechanisms"))
                                .unwrap_or("GSSAPI")
                                .to_string(),
                            bootstrap,
                            reason,
                        }
                    });
                }
                if started.elapsed() >= timeout {
                    let last = consumer
                        .context()
                        .last
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    return Err(PreflightError::Unreachable {
                        bootstrap,
                        reason: last.unwrap_or_else(|| e.to_string()),
                        waited: timeout,
                    });
                }
            }
        }
    };
    let mut partitions = TopicPartitionList::new();
    for topic in &kafka.input_topics {
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            // Not created yet, or not visible: a topic this principal may not Describe is left
            // out of the metadata, so ask for it by name to tell the two apart.
            if let Ok(one) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                if let Some(t) = one.topics().first() {
                    if t.error().map(RDKafkaErrorCode::from)
                        == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                    {
                        return Err(PreflightError::NotAuthorized {
                            principal,
                            operation: "Read",
                            resource: format!("topic {topic}"),
                        });
                    }
                }
            }
            continue;
        };
        if found.error().map(RDKafkaErrorCode::from)
            == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        {
            return Err(PreflightError::NotAuthorized {
                principal,
                operation: "Read",
                resource: format!("topic {topic}"),
            });
        }
        for p in found.partitions() {
            partitions
                .add_partition_offset(topic, p.id(), Offset::Invalid)
                .ok();
        }
    }
    if partitions.count() > 0 {
        // Reading the group's committed offsets needs Describe on the group (joining it needs
        // Read, which the same ACL line grants in ops/security/kafka-acls.toml).
        let result = consumer.committed_offsets(partitions, Duration::from_secs(10));
        let _ = consumer.poll(Duration::from_millis(100));
        let code = result.err().and_then(|e| e.rdkafka_error_code());
        if code == Some(RDKafkaErrorCode::GroupAuthorizationFailed)
            || consumer
                .context()
                .group_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(PreflightError::NotAuthorized {
                principal,
                operation: "Read",
                resource: format!("consumer group {}", kafka.group_id),
            });
        }
        if code == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
            return Err(PreflightError::NotAuthorized {
                principal,
                operation: "Read",
                resource: format!("topics {}", kafka.input_topics.join(", ")),
            });
        }
    }
    Ok(())
}

/// Who the broker sees: the SASL user, or the client certificate's subject.
fn principal(config: &ClientConfig) -> String {
    match (
        config.get("sasl.username"),
        config.get("ssl.certificate.location"),
    ) {
        (Some(user), _) => format!("User:{user}"),
        (None, Some(cert)) => format!("the principal of client certificate {cert}"),
        (None, None) => "this client".to_string(),
    }
}
