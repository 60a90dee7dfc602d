//! Settings the harnesses give the workers over their own config files, as the workers'
//! environment overrides (`REFLEX_<SECTION>__<FIELD>`, read over the file by every worker).
//!
//! [`WorkerSettings::env`] is the only place in the harnesses that spells a worker config key
//! or formats a duration for one: renaming a key, or changing how durations are written, is one
//! edit there.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// What to override; `None` (or empty) leaves the worker's own value.
#[derive(Debug, Clone, Default)]
pub struct WorkerSettings {
    pub bootstrap: Option<String>,
    pub registry_url: Option<String>,
    pub group_id: Option<String>,
    pub input_topics: Option<Vec<String>>,
    pub session_timeout: Option<Duration>,
    pub max_poll_interval: Option<Duration>,
    pub commit_interval: Option<Duration>,
    pub drain_grace: Option<Duration>,
    pub lag_interval: Option<Duration>,
    /// Where parked keys live (Redis URL), shared by a stage's replicas.
    pub state_url: Option<String>,
    /// `json` (the harness reads `http_listen` from it) or `text`.
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub router_rules_file: Option<PathBuf>,
    /// Key prefix of the router's stateful windows (one per run, so runs do not share them).
    pub router_state_prefix: Option<String>,
    pub enricher_bindings_file: Option<PathBuf>,
    pub enricher_output_topic: Option<String>,
    pub enricher_redis_url: Option<String>,
    /// `auto`: Redis when it answers at `actor_redis_url`, else in process (and it says so).
    pub actor_state_backend: Option<String>,
    /// Empty is meaningful: no Redis.
    pub actor_redis_url: Option<String>,
    pub actor_redis_prefix: Option<String>,
}

impl WorkerSettings {
    /// The environment overrides, in a stable order.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                env.push((format!("REFLEX_{key}"), value));
            }
        };
        set("KAFKA__BOOTSTRAP_SERVERS", self.bootstrap.clone());
        set("KAFKA__GROUP_ID", self.group_id.clone());
        set(
            "KAFKA__INPUT_TOPICS",
            self.input_topics
                .as_ref()
                .map(|t| serde_json::to_string(t).unwrap_or_default()),
        );
        set("KAFKA__SESSION_TIMEOUT", self.session_timeout.map(ms));
        set("KAFKA__MAX_POLL_INTERVAL", self.max_poll_interval.map(ms));
        set("KAFKA__COMMIT_INTERVAL", self.commit_interval.map(ms));
        set("REGISTRY__URL", self.registry_url.clone());
        set("RUNTIME__DRAIN_GRACE", self.drain_grace.map(ms));
        set("RUNTIME__LAG_INTERVAL", self.lag_interval.map(ms));
        set("RUNTIME__STATE_URL", self.state_url.clone());
        set("TELEMETRY__LOG_FORMAT", self.log_format.clone());
        set("TELEMETRY__LOG_LEVEL", self.log_level.clone());
        set("ROUTER__RULES_FILE", path(&self.router_rules_file));
        set("ROUTER__STATE_PREFIX", self.router_state_prefix.clone());
        set(
            "ENRICHER__BINDINGS_FILE",
            path(&self.enricher_bindings_file),
        );
        set("ENRICHER__OUTPUT_TOPIC", self.enricher_output_topic.clone());
        set("ENRICHER__REDIS_URL", self.enricher_redis_url.clone());
        set("ACTOR__STATE_BACKEND", self.actor_state_backend.clone());
        set("ACTOR__REDIS_URL", self.actor_redis_url.clone());
        set("ACTOR__REDIS_PREFIX", self.actor_redis_prefix.clone());
        env
    }

    /// Applies [`Self::env`] to a command.
    pub fn apply(&self, command: &mut Command) {
        command.envs(self.env());
    }
}

/// A duration as the workers read it ("8s", "500ms").
fn ms(d: Duration) -> String {
    reflex_runtime::duration::format(d)
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_set_and_durations_as_the_workers_read_them() {
        let s = WorkerSettings {
            bootstrap: Some("127.0.0.1:1".into()),
            input_topics: Some(vec!["a.dlq".into(), "b.dlq".into()]),
            drain_grace: Some(Duration::from_secs(8)),
            actor_redis_url: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            s.env(),
            [
                ("REFLEX_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1"),
                ("REFLEX_KAFKA__INPUT_TOPICS", r#"["a.dlq","b.dlq"]"#),
                ("REFLEX_RUNTIME__DRAIN_GRACE", "8s"),
                ("REFLEX_ACTOR__REDIS_URL", ""),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
