//! Shared pieces of the end-to-end tests: the example schema, event encoding and running the
//! router binary as a separate process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use reflex_core::registry::RegistryClient;
use reflex_core::wire::encode_frame;
use reflex_testkit::{header_str, workspace_bin, ChildGuard, Stack};

pub const POD_SCHEMA: &str = include_str!("../../avro/k8s_pod_event.avsc");

pub fn registry(stack: &Stack) -> RegistryClient {
    RegistryClient::new(
        &stack.registry_url,
        Duration::from_secs(5),
        Duration::from_secs(1),
    )
}

/// Registers the pod schema under `<topic>-value`; returns its id.
pub async fn register_pod_schema(stack: &Stack, topic: &str) -> u32 {
    registry(stack)
        .register(&format!("{topic}-value"), POD_SCHEMA)
        .await
        .expect("register schema")
}

/// A pod event in Confluent wire format.
pub fn pod_event(schema_id: u32, pod: &str, seq: i64, restart_count: i32, reason: &str) -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({
        "cluster": "prod-eu", "namespace": "shop", "pod": pod, "reason": reason,
        "restart_count": restart_count, "seq": seq, "rollout_in_progress": false, "labels": {"app": pod}
    });
    encode_frame(
        schema_id,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )
}

/// Writes a rule file into a fresh temp dir.
pub fn write_rules(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(reflex_testkit::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The router binary as a separate process, configured through REFLEX_ env variables; its
/// stderr (JSON logs) goes to `log`.
pub fn spawn_router(
    stack: &Stack,
    group: &str,
    input: &str,
    rules: &Path,
    log: &Path,
) -> ChildGuard {
    spawn_router_instance(stack, group, "", input, rules, log)
}

/// Like [`spawn_router`], as a static group member with `instance` as `group.instance.id`.
pub fn spawn_router_instance(
    stack: &Stack,
    group: &str,
    instance: &str,
    input: &str,
    rules: &Path,
    log: &Path,
) -> ChildGuard {
    spawn_router_with_env(stack, group, instance, input, rules, log, &[])
}

/// Like [`spawn_router_instance`], with extra environment variables (e.g. `OTEL_*`).
pub fn spawn_router_with_env(
    stack: &Stack,
    group: &str,
    instance: &str,
    input: &str,
    rules: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> ChildGuard {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    ChildGuard::spawn(
        "reflex-router",
        Command::new(workspace_bin("reflex-router"))
            .envs(env.iter().copied())
            .env("REFLEX_KAFKA__GROUP_INSTANCE_ID", instance)
            .env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
            .env("REFLEX_KAFKA__GROUP_ID", group)
            .env("REFLEX_KAFKA__INPUT_TOPICS", format!("[\"{input}\"]"))
            .env("REFLEX_KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("REFLEX_KAFKA__COMMIT_INTERVAL_MS", "200")
            .env("REFLEX_RUNTIME__DRAIN_GRACE_MS", "5000")
            .env("REFLEX_REGISTRY__URL", &stack.registry_url)
            .env("REFLEX_ROUTER__RULES_FILE", rules)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file)),
    )
}

/// ce_id → records carrying it.
pub fn by_ce_id(messages: &[OwnedMessage]) -> HashMap<String, Vec<&OwnedMessage>> {
    let mut map: HashMap<String, Vec<&OwnedMessage>> = HashMap::new();
    for m in messages {
        let id = header_str(m, "ce_id")
            .expect("every routed record keeps ce_id")
            .to_string();
        map.entry(id).or_default().push(m);
    }
    map
}

/// Checks that, per key, records appear in producer sequence order (by partition offset).
pub fn assert_per_key_order(messages: &[OwnedMessage], seq_of: &HashMap<String, i64>) {
    let mut by_key: HashMap<Vec<u8>, Vec<&OwnedMessage>> = HashMap::new();
    for m in messages {
        by_key
            .entry(m.key().unwrap_or_default().to_vec())
            .or_default()
            .push(m);
    }
    for (key, mut records) in by_key {
        let partitions: std::collections::HashSet<i32> =
            records.iter().map(|m| m.partition()).collect();
        assert_eq!(
            partitions.len(),
            1,
            "key {:?} spread over partitions {partitions:?}",
            String::from_utf8_lossy(&key)
        );
        records.sort_by_key(|m| m.offset());
        let seqs: Vec<i64> = records
            .iter()
            .map(|m| seq_of[header_str(m, "ce_id").unwrap()])
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {:?} out of order: {seqs:?}",
            String::from_utf8_lossy(&key)
        );
    }
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The enricher binary as a separate process, configured through REFLEX_ env variables; its
/// stderr (JSON logs) goes to `log`.
pub fn spawn_enricher(
    stack: &Stack,
    group: &str,
    input: &str,
    output: &str,
    bindings: &Path,
    log: &Path,
) -> ChildGuard {
    spawn_enricher_with_env(stack, group, input, output, bindings, log, &[])
}

/// Like [`spawn_enricher`], with `extra_env` overriding anything.
pub fn spawn_enricher_with_env(
    stack: &Stack,
    group: &str,
    input: &str,
    output: &str,
    bindings: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ChildGuard {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(workspace_bin("reflex-enricher"));
    command
        .env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("REFLEX_KAFKA__GROUP_ID", group)
        .env("REFLEX_KAFKA__INPUT_TOPICS", format!("[\"{input}\"]"))
        .env("REFLEX_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("REFLEX_KAFKA__COMMIT_INTERVAL_MS", "200")
        .env("REFLEX_RUNTIME__DRAIN_GRACE_MS", "5000")
        .env("REFLEX_REGISTRY__URL", &stack.registry_url)
        .env("REFLEX_ENRICHER__BINDINGS_FILE", bindings)
        .env("REFLEX_ENRICHER__OUTPUT_TOPIC", output)
        .env("REFLEX_ENRICHER__REDIS_URL", &stack.redis_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    for (k, v) in extra_env {
        command.env(k, v);
    }
    ChildGuard::spawn("reflex-enricher", &mut command)
}

/// The actor binary as a separate process: `config` is its TOML file (actions, Redis, topics),
/// Kafka and the registry come from REFLEX_ env variables, `instance` is its static group
/// membership id and worker id (empty: dynamic), `extra_env` overrides anything. Its stderr
/// (JSON logs) goes to `log`.
pub fn spawn_actor(
    stack: &Stack,
    group: &str,
    instance: &str,
    input: &str,
    config: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ChildGuard {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(workspace_bin("reflex-actor"));
    command
        .arg("--config")
        .arg(config)
        .env("REFLEX_KAFKA__GROUP_INSTANCE_ID", instance)
        .env("REFLEX_RUNTIME__WORKER_ID", instance)
        .env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("REFLEX_KAFKA__GROUP_ID", group)
        .env("REFLEX_KAFKA__INPUT_TOPICS", format!("[\"{input}\"]"))
        .env("REFLEX_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("REFLEX_KAFKA__COMMIT_INTERVAL_MS", "200")
        .env("REFLEX_RUNTIME__DRAIN_GRACE_MS", "5000")
        .env("REFLEX_REGISTRY__URL", &stack.registry_url)
        .env("REFLEX_ACTOR__REDIS_URL", &stack.redis_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    for (k, v) in extra_env {
        command.env(k, v);
    }
    ChildGuard::spawn("reflex-actor", &mut command)
}
