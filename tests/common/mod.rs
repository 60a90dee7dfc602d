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

/// A pod event in `namespace`, in Confluent wire format.
pub fn pod_event_in(schema_id: u32, namespace: &str, pod: &str, seq: i64) -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({
        "cluster": "prod-eu", "namespace": namespace, "pod": pod, "reason": "CrashLoopBackOff",
        "restart_count": 5, "seq": seq, "rollout_in_progress": false, "labels": {}
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
    let mut command = worker_command("reflex-router", stack, group, instance, input, log);
    command
        .env("REFLEX_ROUTER__RULES_FILE", rules)
        .envs(env.iter().copied());
    ChildGuard::spawn("reflex-router", &mut command)
}

/// A worker binary with what every test worker shares: the stack's addresses, its group (and
/// static instance id when not empty), one input topic, short session and commit intervals,
/// and its stderr (JSON logs) appended to `log`.
pub fn worker_command(
    bin: &str,
    stack: &Stack,
    group: &str,
    instance: &str,
    input: &str,
    log: &Path,
) -> Command {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(workspace_bin(bin));
    command
        .env("REFLEX_KAFKA__GROUP_INSTANCE_ID", instance)
        .env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("REFLEX_KAFKA__GROUP_ID", group)
        .env("REFLEX_KAFKA__INPUT_TOPICS", format!("[\"{input}\"]"))
        .env("REFLEX_KAFKA__SESSION_TIMEOUT", "6s")
        .env("REFLEX_KAFKA__COMMIT_INTERVAL", "200ms")
        .env("REFLEX_RUNTIME__DRAIN_GRACE", "5s")
        .env("REFLEX_REGISTRY__URL", &stack.registry_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    command
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
    let mut command = worker_command("reflex-enricher", stack, group, "", input, log);
    command
        .env("REFLEX_ENRICHER__BINDINGS_FILE", bindings)
        .env("REFLEX_ENRICHER__OUTPUT_TOPIC", output)
        .env("REFLEX_ENRICHER__REDIS_URL", &stack.redis_url)
        .envs(extra_env.iter().copied());
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
    let mut command = actor_command(stack, group, instance, input, config, log);
    command.envs(extra_env.iter().copied());
    ChildGuard::spawn("reflex-actor", &mut command)
}

/// The command [`spawn_actor`] runs, for a test that changes more than the environment.
pub fn actor_command(
    stack: &Stack,
    group: &str,
    instance: &str,
    input: &str,
    config: &Path,
    log: &Path,
) -> Command {
    let mut command = worker_command("reflex-actor", stack, group, instance, input, log);
    command
        .arg("--config")
        .arg(config)
        .env("REFLEX_RUNTIME__WORKER_ID", instance)
        .env("REFLEX_ACTOR__REDIS_URL", &stack.redis_url);
    command
}

/// An OTLP/HTTP (JSON) receiver on a free port: returns its base URL and every span exported
/// to it, each with its `resource` copied in.
pub async fn otlp_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use serde_json::Value;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["resource"] = rs["resource"].clone();
                            sink.lock().unwrap().push(span);
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// A span attribute's value object (`{"stringValue": ...}`, `{"intValue": ...}`).
pub fn span_attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// The `service.name` of a span's resource.
pub fn span_service(span: &serde_json::Value) -> Option<&str> {
    span["resource"]["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == "service.name")?["value"]["stringValue"]
        .as_str()
}

/// The address a worker logged in its `serving /metrics ...` line (JSON logs).
pub fn http_address(log: &Path) -> Option<String> {
    http_addresses(log).into_iter().next()
}

/// Every such address in `log`, in order: one per worker process writing to it.
pub fn http_addresses(log: &Path) -> Vec<String> {
    read_log(log)
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            v.get("http_listen")?.as_str().map(str::to_string)
        })
        .collect()
}

/// The `/metrics` text of the worker serving at `addr` (empty when it does not answer).
pub async fn scrape(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the sample whose line starts with `series` (its name and labels, e.g.
/// `reflex_parked_keys{stage="actor"}`).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---------------------------------------------------------------- an HTTP target API

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// A test HTTP API that, like a real one honouring `Idempotency-Key`, counts requests per key
/// and applies the effect only once per key (`POST /act/{pod}`).
#[derive(Default)]
pub struct Target {
    /// Idempotency-Key → (requests seen, effects applied).
    pub keys: Mutex<HashMap<String, (u32, u32)>>,
    /// Idempotency-Key → headers of its first request.
    pub first_headers: Mutex<HashMap<String, HashMap<String, String>>>,
    /// When each effect was applied.
    pub effects: Mutex<Vec<Instant>>,
    pub requests: AtomicU64,
    pub unavailable: AtomicBool,
    pub latency_ms: AtomicU64,
    /// Idempotency-Key → (webhook-id, webhook-timestamp, webhook-signature, body) when signed.
    pub signed: Mutex<HashMap<String, (String, String, String, String)>>,
    /// Idempotency-Key → (status to answer, how many more times) before behaving normally.
    pub scripted: Mutex<HashMap<String, (u16, u32)>>,
    /// Idempotency-Keys in the order their effects were applied.
    pub applied: Mutex<Vec<String>>,
}

impl Target {
    pub async fn start() -> (Arc<Target>, SocketAddr) {
        let target = Arc::new(Target::default());
        let app = axum::Router::new()
            .route("/act/{pod}", axum::routing::post(handle))
            .with_state(target.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (target, addr)
    }

    pub fn effects(&self) -> usize {
        self.effects.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> HashMap<String, (u32, u32)> {
        self.keys.lock().unwrap().clone()
    }

    /// The next `times` requests with this Idempotency-Key get `status` and no effect.
    pub fn fail(&self, key: &str, status: u16, times: u32) {
        self.scripted
            .lock()
            .unwrap()
            .insert(key.to_string(), (status, times));
    }

    /// Idempotency-Keys in the order their effects were applied.
    pub fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap().clone()
    }
}

pub async fn handle(State(t): State<Arc<Target>>, headers: HeaderMap, body: String) -> StatusCode {
    t.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(key) = header("idempotency-key") else {
        return StatusCode::BAD_REQUEST;
    };
    if let (Some(id), Some(ts), Some(sig)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) {
        t.signed
            .lock()
            .unwrap()
            .insert(key.clone(), (id, ts, sig, body));
    }
    t.first_headers
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_insert_with(|| {
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect()
        });
    {
        let mut keys = t.keys.lock().unwrap();
        let entry = keys.entry(key.clone()).or_default();
        entry.0 += 1;
        if t.unavailable.load(Ordering::Relaxed) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if let Some((status, left)) = t.scripted.lock().unwrap().get_mut(&key) {
            if *left > 0 {
                *left -= 1;
                return StatusCode::from_u16(*status).unwrap();
            }
        }
        if entry.1 == 0 {
            // First time for this key: apply the effect. Later requests replay the response.
            entry.1 = 1;
            t.effects.lock().unwrap().push(Instant::now());
            t.applied.lock().unwrap().push(key.clone());
        }
    }
    // The effect is applied before the response: a caller that dies now never learns it (F6).
    let latency = t.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    StatusCode::OK
}

/// The dead-letter reprocessor as a separate process consuming `dlq`, with `extra_env`.
pub fn spawn_reprocessor(
    stack: &Stack,
    group: &str,
    dlq: &str,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ChildGuard {
    let mut command = worker_command("reflex-reprocessor", stack, group, "", dlq, log);
    command.envs(extra_env.iter().copied());
    ChildGuard::spawn("reflex-reprocessor", &mut command)
}

// ---------------------------------------------------------------- scenario packs

/// One request a [`PackTarget`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// False when the key had been applied before (a replayed request).
    pub applied: bool,
}

/// A test HTTP API for the scenario packs (it stands in for Kubernetes, a pager, a ticketing
/// system, an EDR, like scripts/fake-target.py): any method on any path, each
/// `Idempotency-Key` applied once, every request recorded.
#[derive(Default)]
pub struct PackTarget {
    pub seen: Mutex<Vec<Seen>>,
}

impl PackTarget {
    pub async fn start() -> (Arc<PackTarget>, SocketAddr) {
        let target = Arc::new(PackTarget::default());
        let app = axum::Router::new()
            .fallback(pack_target_handle)
            .with_state(target.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (target, addr)
    }

    /// The applied effects (first request per key), as `METHOD path`.
    pub fn effects(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.applied)
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        out.sort();
        out
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn pack_target_handle(
    State(t): State<Arc<PackTarget>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return StatusCode::BAD_REQUEST;
    };
    let mut seen = t.seen.lock().unwrap();
    let applied = !seen.iter().any(|s| s.key == key);
    seen.push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        key,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body,
        applied,
    });
    StatusCode::OK
}

/// A worker binary started with `--config <config>` (input topics and group from the file),
/// pointed at the test stack; `extra_env` overrides anything; stderr (JSON logs) to `log`.
pub fn spawn_with_config(
    bin: &str,
    stack: &Stack,
    config: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ChildGuard {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(workspace_bin(bin));
    command
        .arg("--config")
        .arg(config)
        .env("REFLEX_KAFKA__BOOTSTRAP_SERVERS", &stack.bootstrap)
        .env("REFLEX_KAFKA__SESSION_TIMEOUT", "6s")
        .env("REFLEX_KAFKA__COMMIT_INTERVAL", "200ms")
        .env("REFLEX_RUNTIME__DRAIN_GRACE", "5s")
        .env("REFLEX_REGISTRY__URL", &stack.registry_url)
        .env("RUST_LOG", "info");
    // Unknown sections are config errors, so each worker gets only its own Redis variable.
    match bin {
        "reflex-enricher" => {
            command.env("REFLEX_ENRICHER__REDIS_URL", &stack.redis_url);
        }
        "reflex-actor" => {
            command.env("REFLEX_ACTOR__REDIS_URL", &stack.redis_url);
        }
        _ => {}
    }
    command
        .envs(extra_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    ChildGuard::spawn(bin, &mut command)
}

// ---------------------------------------------------------------- action requests

use reflex_core::actions::{ActionKind, ActionRequest, AvroCodec, ACTION_REQUEST_SCHEMA};

/// A `restart` HTTP action request for `event_id`, acting on `pod`.
pub fn action_request(event_id: &str, pod: &str) -> ActionRequest {
    ActionRequest {
        idempotency_key: reflex_core::actions::idempotency_key(event_id, "restart"),
        action: "restart".into(),
        kind: ActionKind::Http,
        target: "k8s-gateway".into(),
        params: std::collections::BTreeMap::from([("pod".into(), pod.into())]),
        body: None,
        event_id: event_id.into(),
        event_type: "io.k8s.pod.crashloop".into(),
        rule: Some("crashloop".into()),
        correlation_id: format!("corr-{event_id}"),
        context: std::collections::BTreeMap::new(),
        dry_run: false,
        requested_at: 1_700_000_000_000,
    }
}

/// Registers the ActionRequest schema for `topic` and returns its codec.
pub async fn action_request_codec(stack: &Stack, topic: &str) -> AvroCodec<ActionRequest> {
    let id = registry(stack)
        .register(&format!("{topic}-value"), ACTION_REQUEST_SCHEMA)
        .await
        .expect("register the request schema");
    AvroCodec::new(id, ACTION_REQUEST_SCHEMA).unwrap()
}

/// Publishes action requests to `topic` (Avro with `codec`, keyed by their idempotency key,
/// CloudEvents headers with `ce_id` = the request's event id), every send acknowledged.
pub async fn publish_requests(
    stack: &Stack,
    topic: &str,
    codec: &AvroCodec<ActionRequest>,
    requests: &[ActionRequest],
) {
    use rdkafka::producer::FutureRecord;
    let producer = reflex_testkit::producer(&stack.bootstrap);
    let values: Vec<Vec<u8>> = requests.iter().map(|r| codec.encode(r).unwrap()).collect();
    let sends = requests.iter().zip(&values).map(|(r, v)| {
        producer.send(
            FutureRecord::to(topic)
                .key(&r.idempotency_key)
                .payload(v)
                .headers(reflex_testkit::ce_headers(
                    &r.event_id,
                    "dev.reflex.action.requested",
                    "test/actor",
                )),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

/// An actor config file with one `restart` HTTP action against `addr` (`/act/<pod>`), one
/// attempt per delivery, a unique Redis prefix, and `extra` TOML lines in the action table.
pub fn restart_actor_config(
    outcomes: &str,
    blast_held: &str,
    addr: SocketAddr,
    extra: &str,
) -> PathBuf {
    let dir = std::env::temp_dir().join(reflex_testkit::unique("actor-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("actor.toml");
    std::fs::write(
        &path,
        format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{blast_held}"
claim_lease = "2s"
claim_poll = "50ms"

[[actor.action]]
name = "restart"
kind = "http"
url = "http://{addr}/act/{{{{ params.pod }}}}"
timeout = "3s"
max_attempts = 1
{extra}
"#,
            prefix = reflex_testkit::unique("actor"),
        ),
    )
    .unwrap();
    path
}
