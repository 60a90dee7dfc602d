//! The enricher end to end: a real broker, the real registry, a real Redis, an HTTP lookup
//! server started by the test, and the enricher binary as a separate process.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::Message;
use reflex_core::actions::{ActionKind, ActionRequest, AvroCodec};
use reflex_core::headers::reflex as rh;
use reflex_core::wire::decode_frame;
use reflex_testkit::{
    ce_headers, create_topics, header_str, produce, producer, read_topic, read_topic_until, stack,
    unique, Stack,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A pod event in Confluent wire format with the given namespace.
fn pod_event_in(schema_id: u32, namespace: &str, pod: &str) -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({
        "cluster": "prod-eu", "namespace": namespace, "pod": pod, "reason": "CrashLoopBackOff",
        "restart_count": 6, "seq": 1, "rollout_in_progress": false, "labels": {"app": pod}
    });
    reflex_core::wire::encode_frame(
        schema_id,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )
}

/// CloudEvents headers as the router forwards them: rule, hops, trace and a correlation id.
fn routed_headers(id: &str) -> OwnedHeaders {
    let mut headers = ce_headers(id, "io.k8s.pod.crashloop", "/k8s/prod-eu");
    for (key, value) in [
        ("ce_correlationid", format!("corr-{id}")),
        ("traceparent", TRACEPARENT.to_string()),
        (rh::RULE, "crashloop-remediation".to_string()),
        (rh::HOPS, "1".to_string()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(&value),
        });
    }
    headers
}

/// Writes the bindings file (and a file-lookup table next to it) into a fresh temp dir.
fn write_bindings(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("enricher"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("clusters.toml"),
        "[prod-eu]\ntier = \"1\"\nregion = \"eu-west-1\"\n",
    )
    .unwrap();
    let path = dir.join("enricher.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An HTTP lookup server: `GET /services/{pod}` answers a JSON object; counts requests.
async fn service_catalog() -> (String, Arc<AtomicUsize>) {
    use axum::extract::Path;
    use axum::routing::get;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/services/{pod}",
        get(move |Path(pod): Path<String>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({"service": format!("svc-{pod}"), "slo": {"availability": "99.9"}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), calls)
}

async fn decode_requests(stack: &Stack, records: &[OwnedMessage]) -> Vec<ActionRequest> {
    let registry = registry(stack);
    let mut out = Vec::new();
    for record in records {
        let value = record.payload().expect("action request value");
        let id = decode_frame(value).expect("Confluent frame").schema_id;
        let schema = registry.schema_by_id(id).await.expect("output schema id");
        out.push(AvroCodec::<ActionRequest>::decode_with(&schema.fast, value).expect("decode"));
    }
    out
}

const BINDINGS: &str = r#"
[[lookup]]
name = "owner"
kind = "redis"
key = "owners-RUN:{{ payload.namespace }}"
on_missing = "fail"

[[lookup]]
name = "cluster"
kind = "file"
path = "clusters.toml"
key = "{{ payload.cluster }}"
on_missing = "fail"

[[lookup]]
name = "service"
kind = "http"
url = "CATALOG/services/{{ payload.pod }}"
ttl = "1m"
on_missing = "skip"

[[binding]]
action = "restart-pod"
kind = "http"
when_types = ["io.k8s.pod.crashloop"]
when_rules = ["crashloop-remediation"]
target = "http://k8s.test/api/v1/namespaces/{{ payload.namespace }}/pods/{{ payload.pod }}"
params = { method = "DELETE", team = "{{ context.owner.team }}", tier = "{{ context.cluster.tier }}", service = "{{ context.service.service }}" }
body = '{"reason": "{{ payload.reason }}", "slo": "{{ context.service["slo.availability"] }}"}'

[[binding]]
action = "notify-owner"
kind = "log"
when_types = ["io.k8s.pod.crashloop"]
target = "{{ context.owner.channel }}"
dry_run = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enricher_binds_events_to_action_requests_with_redis_file_and_http_context() {
    let stack = stack();
    let run = unique("run");
    let input = unique("enr-in");
    let output = unique("enr-out");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 2), (&output, 2), (&dlq, 1)]).await;
    let schema_id = register_pod_schema(&stack, &input).await;

    let redis = redis::Client::open(stack.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("owners-{run}:shop"))
        .arg("team")
        .arg("team-shop")
        .arg("channel")
        .arg("#shop-oncall")
        .query_async(&mut conn)
        .await
        .unwrap();

    let (catalog, calls) = service_catalog().await;
    let bindings = write_bindings(&BINDINGS.replace("RUN", &run).replace("CATALOG", &catalog));

    // evt-1 twice (a redelivery or replay), evt-2 from a namespace Redis has no owner for
    // (on_missing = "fail": dead letter), then evt-3, which must still be enriched.
    let producer = producer(&stack.bootstrap);
    let events = [
        ("evt-1", "shop"),
        ("evt-1", "shop"),
        ("evt-2", "nobody"),
        ("evt-3", "shop"),
    ];
    for (id, namespace) in events {
        let value = pod_event_in(schema_id, namespace, "checkout-7d9f");
        produce(
            &producer,
            &input,
            Some("checkout-7d9f"),
            &value,
            routed_headers(id),
        )
        .await;
    }

    let log = std::env::temp_dir().join(unique("enricher-log"));
    let mut enricher = spawn_enricher(
        &stack,
        &unique("enricher"),
        &input,
        &output,
        &bindings,
        &log,
    );

    // Two bindings per enriched event: 3 enriched events → 6 action requests.
    let got = read_topic(
        &stack.bootstrap,
        &output,
        6,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(got.len(), 6, "log: {}", read_log(&log));
    let requests = decode_requests(&stack, &got).await;
    for (record, request) in got.iter().zip(&requests) {
        assert_eq!(record.key(), Some(&b"checkout-7d9f"[..]), "input key kept");
        assert_eq!(
            request.idempotency_key,
            format!("{}:{}", request.action, request.event_id)
        );
        assert_eq!(
            header_str(record, "ce_id"),
            Some(request.idempotency_key.as_str())
        );
        assert_eq!(
            header_str(record, "ce_causationid"),
            Some(request.event_id.as_str())
        );
        let correlation = format!("corr-{}", request.event_id);
        assert_eq!(
            header_str(record, "ce_correlationid"),
            Some(correlation.as_str())
        );
        assert_eq!(request.correlation_id, correlation);
        assert_eq!(header_str(record, "traceparent"), Some(TRACEPARENT));
        assert_eq!(
            header_str(record, "ce_type"),
            Some("dev.reflex.action.requested")
        );
        assert_eq!(header_str(record, "ce_source"), Some("reflex/enricher"));
        assert_eq!(
            header_str(record, rh::HOPS),
            Some("1"),
            "hops kept for the loop guard"
        );
        assert_eq!(request.rule.as_deref(), Some("crashloop-remediation"));
        assert_eq!(request.event_type, "io.k8s.pod.crashloop");
        assert_ne!(request.event_id, "evt-2");
        // Context from all three lookups.
        assert_eq!(request.context["owner.team"], "team-shop");
        assert_eq!(request.context["cluster.region"], "eu-west-1");
        assert_eq!(request.context["service.service"], "svc-checkout-7d9f");
        match request.action.as_str() {
            "restart-pod" => {
                assert_eq!(request.kind, ActionKind::Http);
                assert_eq!(
                    request.target,
                    "http://k8s.test/api/v1/namespaces/shop/pods/checkout-7d9f"
                );
                assert_eq!(request.params["team"], "team-shop");
                assert_eq!(request.params["tier"], "1");
                assert_eq!(request.params["service"], "svc-checkout-7d9f");
                assert_eq!(request.params["method"], "DELETE");
                assert_eq!(
                    request.body.as_deref(),
                    Some(r#"{"reason": "CrashLoopBackOff", "slo": "99.9"}"#)
                );
                assert!(!request.dry_run);
            }
            "notify-owner" => {
                assert_eq!(request.kind, ActionKind::Log);
                assert_eq!(request.target, "#shop-oncall");
                assert!(request.dry_run);
            }
            other => panic!("unexpected action {other}"),
        }
    }
    // The duplicate of evt-1 got the same idempotency keys.
    let keys_of = |id: &str| {
        let mut keys: Vec<&str> = requests
            .iter()
            .filter(|r| r.event_id == id)
            .map(|r| r.idempotency_key.as_str())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys_of("evt-1"),
        [
            "notify-owner:evt-1",
            "notify-owner:evt-1",
            "restart-pod:evt-1",
            "restart-pod:evt-1"
        ]
    );
    assert_eq!(
        keys_of("evt-3"),
        ["notify-owner:evt-3", "restart-pod:evt-3"]
    );
    // Same key, same lane, in order: every event after the first was served by the HTTP cache.
    assert_eq!(calls.load(Ordering::SeqCst), 1, "HTTP lookups are cached");

    let dead = read_topic(
        &stack.bootstrap,
        &dlq,
        1,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(dead.len(), 1, "log: {}", read_log(&log));
    assert_eq!(header_str(&dead[0], "ce_id"), Some("evt-2"));
    assert_eq!(header_str(&dead[0], rh::ERROR_CLASS), Some("permanent"));
    assert_eq!(header_str(&dead[0], rh::ERROR_STAGE), Some("enricher"));
    let message = header_str(&dead[0], rh::ERROR_MESSAGE).unwrap();
    assert!(
        message.contains("lookup `owner`") && message.contains(&format!("owners-{run}:nobody")),
        "{message}"
    );

    enricher.signal("TERM");
    assert_eq!(
        enricher.wait_exit(Duration::from_secs(20)),
        Some(0),
        "log: {}",
        read_log(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enricher_bad_config_stops_start_up_with_file_line_and_field() {
    let stack = stack();
    let input = unique("enr-strict-in");
    let output = unique("enr-strict-out");
    create_topics(&stack.bootstrap, &[(&input, 1)]).await;
    register_pod_schema(&stack, &input).await;

    // A template naming a payload field the input topic's schema does not have (line 10).
    let bindings = write_bindings(
        "[[lookup]]\nname = \"owner\"\nkind = \"redis\"\nkey = \"owners:{{ payload.namespace }}\"\non_missing = \"skip\"\n\n[[binding]]\naction = \"restart-pod\"\nkind = \"http\"\nparams = { pod = \"{{ payload.podname }}\" }\ntarget = \"http://k8s.test/pods\"\n",
    );
    let log = std::env::temp_dir().join(unique("enricher-log"));
    let mut enricher = spawn_enricher(
        &stack,
        &unique("enricher"),
        &input,
        &output,
        &bindings,
        &log,
    );
    assert_eq!(enricher.wait_exit(Duration::from_secs(20)), Some(1));
    let expected = format!(
        "{}:10: binding `restart-pod`: params.pod: payload.podname does not exist in the schema of topic `{input}`",
        bindings.display()
    );
    let text = read_log(&log);
    assert!(
        text.contains(&expected),
        "expected `{expected}` in:\n{text}"
    );

    // A context variable naming no configured lookup (line 10 again).
    std::fs::write(
        &bindings,
        "[[lookup]]\nname = \"owner\"\nkind = \"redis\"\nkey = \"owners:{{ payload.namespace }}\"\non_missing = \"skip\"\n\n[[binding]]\naction = \"restart-pod\"\nkind = \"http\"\nparams = { team = \"{{ context.ownr.team }}\" }\ntarget = \"http://k8s.test/pods\"\n",
    )
    .unwrap();
    let mut enricher = spawn_enricher(
        &stack,
        &unique("enricher"),
        &input,
        &output,
        &bindings,
        &log,
    );
    assert_eq!(enricher.wait_exit(Duration::from_secs(20)), Some(1));
    let expected = format!(
        "{}:10: binding `restart-pod`: params.team: context.ownr: no lookup named `ownr`",
        bindings.display()
    );
    let text = read_log(&log);
    assert!(
        text.contains(&expected),
        "expected `{expected}` in:\n{text}"
    );
}

/// A `redis-server` of the test's own on `port` (memory only), killed when dropped.
fn own_redis(port: u16) -> reflex_testkit::ChildGuard {
    let guard = reflex_testkit::ChildGuard::spawn(
        "redis-server",
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null()),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

async fn hset_owner(url: &str, key: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("team")
        .arg("team-shop")
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enricher_retries_when_redis_is_down_then_dead_letters_as_transient_and_recovers_in_key_order(
) {
    let stack = stack();
    let input = unique("enr-redis-in");
    let output = unique("enr-redis-out");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 1), (&output, 1), (&dlq, 1)]).await;
    let schema_id = register_pod_schema(&stack, &input).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let mut redis = own_redis(port);
    hset_owner(&redis_url, "owners:shop").await;
    let bindings = write_bindings(
        "[[lookup]]\nname = \"owner\"\nkind = \"redis\"\nkey = \"owners:{{ payload.namespace }}\"\non_missing = \"fail\"\n\n[[binding]]\naction = \"restart-pod\"\nkind = \"http\"\ntarget = \"http://k8s.test/{{ payload.pod }}\"\nparams = { team = \"{{ context.owner.team }}\" }\n",
    );
    let own_stack = Stack {
        redis_url: redis_url.clone(),
        ..stack.clone()
    };
    let log = std::env::temp_dir().join(unique("enricher-log"));
    let _enricher = spawn_enricher_with_env(
        &own_stack,
        &unique("enricher"),
        &input,
        &output,
        &bindings,
        &log,
        &[
            ("REFLEX_RUNTIME__MAX_ATTEMPTS", "3"),
            ("REFLEX_RUNTIME__RETRY_BACKOFF", "100ms"),
            ("REFLEX_ENRICHER__REDIS_TIMEOUT", "500ms"),
        ],
    );
    let producer = producer(&stack.bootstrap);
    let value = pod_event_in(schema_id, "shop", "api-1");
    produce(
        &producer,
        &input,
        Some("api-1"),
        &value,
        routed_headers("up-1"),
    )
    .await;
    let got = read_topic(
        &stack.bootstrap,
        &output,
        1,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(got.len(), 1, "log: {}", read_log(&log));

    // Redis goes away: the lookup is a transient error, retried, then dead-lettered as such.
    redis.signal("KILL");
    redis.wait_exit(Duration::from_secs(10));
    produce(
        &producer,
        &input,
        Some("api-1"),
        &value,
        routed_headers("down-1"),
    )
    .await;
    let dead = read_topic(
        &stack.bootstrap,
        &dlq,
        1,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(dead.len(), 1, "log: {}", read_log(&log));
    assert_eq!(header_str(&dead[0], "ce_id"), Some("down-1"));
    assert_eq!(header_str(&dead[0], rh::ERROR_CLASS), Some("transient"));
    assert_eq!(header_str(&dead[0], rh::ERROR_ATTEMPTS), Some("3"));
    assert!(header_str(&dead[0], rh::ERROR_MESSAGE)
        .unwrap()
        .contains("lookup `owner`: Redis HGETALL owners:shop"));

    // Redis is back (empty, as after a restart): the next lookup reconnects.
    let _redis = own_redis(port);
    hset_owner(&redis_url, "owners:shop").await;
    produce(
        &producer,
        &input,
        Some("api-1"),
        &value,
        routed_headers("up-2"),
    )
    .await;
    // Same key as the failed event: parked behind it until the reprocessor delivers both back,
    // in order.
    let re_log = std::env::temp_dir().join(unique("enricher-reprocessor-log"));
    let _reprocessor = spawn_reprocessor(&stack, &unique("enr-reprocessor"), &dlq, &re_log, &[]);
    let got = read_topic_until(
        &stack.bootstrap,
        &output,
        Duration::from_secs(60),
        Duration::from_millis(200),
        |got| {
            got.iter()
                .any(|m| header_str(m, "ce_causationid") == Some("up-2"))
        },
    )
    .await;
    let order: Vec<&str> = got
        .iter()
        .filter_map(|m| header_str(m, "ce_causationid"))
        .collect();
    assert_eq!(
        order,
        ["up-1", "down-1", "up-2"],
        "the failed event, then the one parked behind it; log: {}\nreprocessor: {}",
        read_log(&log),
        read_log(&re_log)
    );
    let parked = read_topic(
        &stack.bootstrap,
        &dlq,
        2,
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    assert_eq!(header_str(&parked[1], "ce_id"), Some("up-2"));
    assert_eq!(header_str(&parked[1], rh::PARKED_BEHIND), Some("down-1"));
}
