//! Locked doors, end to end against the real stack:
//! - `reflexctl publish --sign-key-file` signs; the router (keys from env and file) routes the
//!   signed events and dead-letters an unsigned one as `unauthorized`;
//! - the actor refuses a templated URL whose host is not in `actor.allowed_hosts` (dead letter
//!   naming host and setting, nothing sent) and executes an approved one;
//! - Redis AUTH: the actor talks to a `redis-server --requirepass` this test starts, with the
//!   password from `actor.redis_password = "env:..."`;
//! - secrets (signing key, Redis password, registry basic-auth password) never appear in the
//!   workers' logs (at debug level) nor in their `/metrics`;
//! - SASL/TLS settings reach librdkafka. The test stack's broker has a plaintext listener only
//!   (a SASL_SSL one is future work), so this is a config-level test: librdkafka accepts
//!   SASL_SSL with SCRAM (it is built with SSL and SASL), rejects bad values naming them, and a
//!   client told to speak TLS cannot fetch metadata from the plaintext broker while the same
//!   client without it can.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use reflex_core::actions::{ActionKind, ActionRequest, AvroCodec, ACTION_REQUEST_SCHEMA};
use reflex_core::headers::{ce, reflex as rh};
use reflex_testkit::{
    ce_headers, create_topics, header_str, produce, producer, read_topic_until, stack, unique,
    workspace_bin, ChildGuard, Stack,
};

const SIGNING_SECRET: &str = "sign-S3CR3T-0123456789abcdef";
const REDIS_SECRET: &str = "redis-S3CR3T-pw-4711";
const REGISTRY_SECRET: &str = "registry-S3CR3T-pw-0815";
const KAFKA_SECRET: &str = "kafka-S3CR3T-pw-1234";

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(name))
}

async fn metrics_text(log: &std::path::Path) -> String {
    let mut addr = None;
    for _ in 0..100 {
        addr = http_address(log);
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = addr.expect("worker logged its /metrics address");
    scrape(&addr).await
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SIGNING_SECRET, REDIS_SECRET, REGISTRY_SECRET, KAFKA_SECRET] {
        assert!(!text.contains(secret), "{what} contains a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_pass_unsigned_are_unauthorized_and_no_secret_is_logged() {
    let stack = stack();
    let input = unique("signed");
    let out = unique("signed-out");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "signed-rules",
        &format!("[[rule]]\nname = \"all\"\nwhen = 'true'\nto = [\"{out}\"]\n"),
    );
    // The producer's key file; the router reads the same key from an env variable (k-env) and an
    // older one from a file (k-file).
    let key_file = temp("sign-key");
    std::fs::write(&key_file, SIGNING_SECRET).unwrap();
    let log = temp("signed-router.log");
    let _router = spawn_router_with_env(
        &stack,
        &unique("signed-group"),
        "",
        &input,
        &rules,
        &log,
        &[
            ("RUST_LOG", "debug"),
            ("SIGN_KEY", SIGNING_SECRET),
            (
                "REFLEX_ROUTER__SIGNING_KEYS",
                &format!(
                    "[\"k-env=env:SIGN_KEY\", \"k-file=file:{}\"]",
                    key_file.display()
                ),
            ),
            (
                "REFLEX_REGISTRY_BASIC_AUTH",
                &format!("svc:{REGISTRY_SECRET}"),
            ),
            // Reaches librdkafka as `sasl.password` (unused on this plaintext broker).
            ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", KAFKA_SECRET),
        ],
    );

    for key_id in ["k-env", "k-file"] {
        let publish = Command::new(workspace_bin("reflexctl"))
            .args([
                "--bootstrap",
                &stack.bootstrap,
                "--registry",
                &stack.registry_url,
            ])
            .args([
                "publish",
                "--topic",
                &input,
                "--type",
                "io.k8s.pod.crashloop",
            ])
            .args(["--id", &format!("signed-{key_id}"), "--key", "pod-a"])
            .arg("--sign-key-file")
            .arg(&key_file)
            .args(["--sign-key-id", key_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut child = publish;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"cluster":"c","namespace":"n","pod":"pod-a","reason":"CrashLoopBackOff","restart_count":5,"seq":1,"rollout_in_progress":false,"labels":{}}"#)
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "reflexctl publish: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Unsigned: the testkit's plain CloudEvents headers.
    let producer = producer(&stack.bootstrap);
    produce(
        &producer,
        &input,
        Some("pod-a"),
        &pod_event(schema_id, "pod-a", 2, 5, "CrashLoopBackOff"),
        ce_headers("unsigned-1", "io.k8s.pod.crashloop", "test/security"),
    )
    .await;

    let routed = read_topic_until(
        &stack.bootstrap,
        &out,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| got.len() >= 2,
    )
    .await;
    let dead = read_topic_until(
        &stack.bootstrap,
        &dlq,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| !got.is_empty(),
    )
    .await;
    let mut ids: Vec<_> = routed
        .iter()
        .filter_map(|m| header_str(m, ce::ID))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["signed-k-env", "signed-k-file"], "{}", read_log(&log));
    assert_eq!(dead.len(), 1);
    assert_eq!(header_str(&dead[0], ce::ID), Some("unsigned-1"));
    assert_eq!(header_str(&dead[0], rh::ERROR_CLASS), Some("unauthorized"));

    let metrics = metrics_text(&log).await;
    assert!(metrics.contains("reflex_"), "{metrics}");
    assert_no_secret("router /metrics", &metrics);
    let text = read_log(&log);
    assert!(text.contains("event signatures required"), "{text}");
    assert_no_secret("router log", &text);
}

/// A `redis-server` requiring a password, on a free port; stopped on drop.
fn redis_with_password() -> (ChildGuard, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--requirepass",
            REDIS_SECRET,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn("redis-server", &mut command);
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, url)
}

fn request(i: &str, target: String) -> ActionRequest {
    ActionRequest {
        idempotency_key: reflex_core::actions::idempotency_key(i, "call"),
        action: "call".into(),
        kind: ActionKind::Http,
        target,
        params: BTreeMap::new(),
        body: None,
        event_id: i.into(),
        event_type: "io.k8s.pod.crashloop".into(),
        rule: None,
        correlation_id: i.into(),
        context: BTreeMap::new(),
        dry_run: false,
        requested_at: 1_700_000_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_refuses_hosts_off_the_allowlist_and_uses_redis_auth_without_logging_it() {
    let stack = stack();
    let (target, addr) = Target::start().await;
    let (_redis, redis_url) = redis_with_password();
    let input = unique("allow-req");
    let outcomes = unique("allow-out");
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[(&input, 1), (&outcomes, 1), (&dlq, 1), (&unique("held"), 1)],
    )
    .await;
    let config = temp("allow-actor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[actor]
redis_prefix = "{prefix}"
redis_password = "env:ACTOR_REDIS_PASSWORD"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
allowed_hosts = ["127.0.0.1:{port}"]

[[actor.action]]
name = "call"
kind = "http"
url = "{{{{ target | raw }}}}"
timeout = "3s"
max_attempts = 1
"#,
            prefix = unique("allow"),
            held = unique("held"),
            port = addr.port()
        ),
    )
    .unwrap();
    let log = temp("allow-actor.log");
    let _actor = spawn_actor(
        &stack,
        &unique("allow-group"),
        "",
        &input,
        &config,
        &log,
        &[
            ("RUST_LOG", "debug"),
            ("REFLEX_ACTOR__REDIS_URL", &redis_url),
            ("ACTOR_REDIS_PASSWORD", REDIS_SECRET),
            (
                "REFLEX_REGISTRY_BASIC_AUTH",
                &format!("svc:{REGISTRY_SECRET}"),
            ),
        ],
    );

    let id = registry(&stack)
        .register(&format!("{input}-value"), ACTION_REQUEST_SCHEMA)
        .await
        .unwrap();
    let codec = AvroCodec::<ActionRequest>::new(id, ACTION_REQUEST_SCHEMA).unwrap();
    let refused = request("refused-1", "http://not-approved.example:80/act/p1".into());
    let allowed = request("allowed-1", format!("http://{addr}/act/p2"));
    publish_requests(&stack, &input, &codec, &[refused.clone(), allowed.clone()]).await;
    let dead = read_topic_until(
        &stack.bootstrap,
        &dlq,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| !got.is_empty(),
    )
    .await;
    let done = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| !got.is_empty(),
    )
    .await;
    let text = read_log(&log);
    assert_eq!(dead.len(), 1, "{text}");
    assert_eq!(header_str(&dead[0], ce::ID), Some("refused-1"));
    assert_eq!(header_str(&dead[0], rh::ERROR_CLASS), Some("permanent"));
    let message = header_str(&dead[0], rh::ERROR_MESSAGE).unwrap();
    assert!(
        message.contains("`not-approved.example`") && message.contains("actor.allowed_hosts"),
        "{message}"
    );
    assert_eq!(done.len(), 1, "the approved call has its outcome: {text}");
    assert_eq!(target.effects(), 1, "only the approved call was sent");
    assert_eq!(
        target.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let metrics = metrics_text(&log).await;
    assert_no_secret("actor /metrics", &metrics);
    assert_no_secret("actor log", &read_log(&log));
}

/// librdkafka client settings for SASL and TLS, as a worker assembles them: non-secret ones
/// from `kafka.properties`, the password from `REFLEX_KAFKA_SECRET_SASL_PASSWORD`.
fn client(bootstrap: &str, properties: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("sasl"));
    for (k, v) in properties {
        config.set(*k, *v);
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_and_tls_settings_reach_librdkafka() {
    let stack: Stack = stack();
    let secrets = reflex_core::secrets::kafka_secret_properties(vec![(
        "REFLEX_KAFKA_SECRET_SASL_PASSWORD".to_string(),
        "scram-pw".to_string(),
    )])
    .unwrap();
    assert_eq!(secrets[0].0, "sasl.password");
    let password = secrets[0].1.expose_str().unwrap().to_string();
    // Built with SSL and SASL: PLAIN and both SCRAM mechanisms are accepted.
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let config = client(
            &stack.bootstrap,
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "reflex-router"),
                ("sasl.password", &password),
            ],
        );
        config
            .create::<BaseConsumer>()
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
    }
    // Bad values are refused at client creation, naming the property.
    for (property, value) in [
        ("sasl.mechanism", "NOT-A-MECHANISM"),
        ("security.protocol", "SASL_TLS"),
        ("ssl.ca.location", "/nonexistent/ca.pem"),
    ] {
        let mut props = vec![
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", password.as_str()),
        ];
        props.retain(|(k, _)| *k != property);
        props.push((property, value));
        let err = client(&stack.bootstrap, &props)
            .create::<BaseConsumer>()
            .err()
            .unwrap_or_else(|| panic!("{property}={value} was accepted"));
        let text = err.to_string();
        assert!(
            text.contains(property) || text.contains(value) || text.contains("ssl.ca"),
            "{property}: {text}"
        );
    }
    // PLAIN without the password (the secret variable not set) is refused by librdkafka.
    let err = client(
        &stack.bootstrap,
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "u"),
        ],
    )
    .create::<BaseConsumer>()
    .err()
    .expect("PLAIN without a password was accepted");
    assert!(err.to_string().contains("sasl.password"), "{err}");
    // On the wire: plaintext reaches the (plaintext) broker; the same client told to use TLS
    // cannot, because it really tries a TLS handshake.
    let plain: BaseConsumer = client(&stack.bootstrap, &[]).create().unwrap();
    assert!(plain.fetch_metadata(None, Duration::from_secs(10)).is_ok());
    let tls: BaseConsumer = client(
        &stack.bootstrap,
        &[
            ("security.protocol", "SSL"),
            ("enable.ssl.certificate.verification", "false"),
        ],
    )
    .create()
    .unwrap();
    assert!(tls.fetch_metadata(None, Duration::from_secs(5)).is_err());
}

/// Runs `bin` with only `env` (and `PATH`) and `args`; returns (exit code, stderr).
fn run_with_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(workspace_bin(bin))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every worker and `reflexctl` take Kafka secrets the one way, checked at start before they
/// talk to anything (exit 2, configuration): a secret written inline in the Kafka properties
/// is refused naming the setting and the variable to use, a secret file that cannot be read
/// is refused naming the file, and the secret's value is never in the message.
#[test]
fn every_worker_and_reflexctl_refuse_inline_kafka_secrets_and_unreadable_secret_files() {
    let inline =
        format!("{{\"security.protocol\"=\"SASL_SSL\", \"sasl.password\"=\"{KAFKA_SECRET}\"}}");
    let missing = "/nonexistent/reflex/kafka-sasl-password";
    // (what, environment, what the message must say)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: [Case; 2] = [
        (
            "inline",
            vec![("REFLEX_KAFKA__PROPERTIES", inline.as_str())],
            &[
                "sets the secret `sasl.password` inline",
                "REFLEX_KAFKA_SECRET_SASL_PASSWORD",
                "_FILE",
            ],
        ),
        (
            "file",
            vec![("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", missing)],
            &[missing],
        ),
    ];
    for (what, env, expected) in &cases {
        for bin in [
            "reflex-router",
            "reflex-enricher",
            "reflex-actor",
            "reflex-reprocessor",
        ] {
            let mut env = env.clone();
            env.push(("REFLEX_KAFKA__INPUT_TOPICS", "[\"t\"]"));
            let (code, stderr) = run_with_env(bin, &[], &env);
            assert_eq!(code, Some(2), "{bin} {what}: {stderr}");
            for text in *expected {
                assert!(stderr.contains(text), "{bin} {what}: {stderr}");
            }
            assert!(
                !stderr.contains(KAFKA_SECRET),
                "{bin} {what} printed the secret"
            );
        }
        let (code, stderr) = run_with_env(
            "reflexctl",
            &["--bootstrap", "127.0.0.1:9", "topics", "apply", "--dry-run"],
            env,
        );
        assert_eq!(code, Some(2), "reflexctl {what}: {stderr}");
        for text in *expected {
            assert!(stderr.contains(text), "reflexctl {what}: {stderr}");
        }
        assert!(
            !stderr.contains(KAFKA_SECRET),
            "reflexctl {what} printed the secret"
        );
    }
    let (code, stderr) = run_with_env(
        "reflexctl",
        &[
            "--kafka-property",
            &format!("sasl.password={KAFKA_SECRET}"),
            "topics",
            "apply",
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "reflexctl --kafka-property: {stderr}");
    assert!(
        stderr.contains("`sasl.password` inline") && !stderr.contains(KAFKA_SECRET),
        "reflexctl --kafka-property: {stderr}"
    );
}

/// `reflexctl` builds its Kafka clients from the same properties and secrets as the workers: a
/// file secret is read, and the properties reach librdkafka (told to speak TLS, it cannot read
/// the plaintext broker's metadata, while the same command without them can).
#[test]
fn reflexctl_connects_with_the_workers_kafka_properties_and_secrets() {
    let stack: Stack = stack();
    let dir = tempfile_dir("reflexctl-secret");
    let secret_file = dir.join("kafka-sasl-password");
    std::fs::write(&secret_file, format!("{KAFKA_SECRET}\n")).unwrap();
    let secret_path = secret_file.display().to_string();
    // The repository's declarations: a dry run reads the broker's metadata, changes nothing.
    let args = [
        "--bootstrap",
        stack.bootstrap.as_str(),
        "topics",
        "apply",
        "--dry-run",
    ];
    let env = [(
        "REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE",
        secret_path.as_str(),
    )];
    let (code, stderr) = run_with_env("reflexctl", &args, &env);
    assert_eq!(code, Some(0), "plaintext, secret file read: {stderr}");
    let mut tls = env.to_vec();
    tls.push((
        "REFLEX_KAFKA__PROPERTIES",
        "{\"security.protocol\"=\"SSL\"}",
    ));
    let (code, stderr) = run_with_env("reflexctl", &args, &tls);
    assert_eq!(
        code,
        Some(2),
        "TLS against a plaintext broker must fail: {stderr}"
    );
    assert!(!stderr.contains(KAFKA_SECRET), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-{}", unique(name), std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
