//! The whole fleet end to end: router → enricher → actor as separate processes on a real broker,
//! Redis and registry, with an HTTP API honouring `Idempotency-Key` and an OTLP receiver.
//! Duplicated and replayed events become one effect each; the first event is one trace across
//! the three workers; every worker's `/metrics` shows the fleet's metric names.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use reflex_core::actions::{ActionOutcome, ActionResult, AvroCodec};
use reflex_testkit::{
    ce_headers, create_topics, produce, producer, read_topic_until, stack, unique,
};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

fn event_headers(id: &str, traceparent: Option<&str>) -> OwnedHeaders {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut headers = ce_headers(id, "io.k8s.pod.crashloop", "k8s/prod").insert(Header {
        key: "ce_time",
        value: Some(time.as_str()),
    });
    if let Some(tp) = traceparent {
        headers = headers.insert(Header {
            key: "traceparent",
            value: Some(tp),
        });
    }
    headers
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn metrics_of(log: &std::path::Path) -> String {
    let addr = http_address(log).unwrap_or_else(|| panic!("no http_listen in {}", read_log(log)));
    scrape(&addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_one_effect_each_in_one_trace_with_every_metric_exported() {
    let stack = stack();
    let (otlp, spans) = otlp_receiver().await;
    let (target, addr) = Target::start().await;
    let events = unique("p-events");
    let routed = unique("p-routed");
    let requests = unique("p-requests");
    let outcomes = unique("p-outcomes");
    let held = unique("p-held");
    let dlqs: Vec<String> = [&events, &routed, &requests]
        .iter()
        .map(|t| format!("{t}.dlq"))
        .collect();
    let mut topics: Vec<(&str, i32)> = vec![
        (&events, 2),
        (&routed, 2),
        (&requests, 2),
        (&outcomes, 2),
        (&held, 1),
    ];
    topics.extend(dlqs.iter().map(|t| (t.as_str(), 1)));
    create_topics(&stack.bootstrap, &topics).await;
    let schema_id = register_pod_schema(&stack, &events).await;

    // Context the enricher looks up: the owning team of the namespace.
    let namespace = unique("shop");
    let client = redis::Client::open(stack.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("owners:{namespace}"))
        .arg("team")
        .arg("payments")
        .query_async(&mut conn)
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(unique("pipeline"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = write_rules(
        "rules",
        &format!("[[rule]]\nname = \"crashloop\"\nwhen = 'ce.type == \"io.k8s.pod.crashloop\" && payload.restart_count >= 3'\nto = [\"{routed}\"]\n"),
    );
    let bindings = dir.join("bindings.toml");
    std::fs::write(
        &bindings,
        r#"[[lookup]]
name = "owner"
kind = "redis"
key = "owners:{{ payload.namespace }}"
on_missing = "fail"

[[binding]]
action = "restart"
kind = "http"
when_rules = ["crashloop"]
target = "pods"
params = { pod = "{{ payload.pod }}", team = "{{ context.owner.team }}" }
"#,
    )
    .unwrap();
    let actor_config = dir.join("actor.toml");
    std::fs::write(
        &actor_config,
        format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
claim_lease = "2s"
claim_poll = "50ms"

[[actor.action]]
name = "restart"
kind = "http"
url = "http://{addr}/act/{{{{ params.pod }}}}"
headers = {{ x-owner = "{{{{ params.team }}}}" }}
body = '{{"pod": "{{{{ params.pod }}}}"}}'
timeout = "3s"
"#,
            prefix = unique("reflex"),
        ),
    )
    .unwrap();

    let otel = |service: &'static str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_SERVICE_NAME", service.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
            ("REFLEX_RUNTIME__LAG_INTERVAL", "500ms".to_string()),
        ]
    };
    let (router_env, enricher_env, actor_env) = (
        otel("reflex-router"),
        otel("reflex-enricher"),
        otel("reflex-actor"),
    );
    let logs: Vec<_> = ["router", "enricher", "actor"]
        .iter()
        .map(|w| dir.join(format!("{w}.log")))
        .collect();
    let mut router = spawn_router_with_env(
        &stack,
        &unique("router"),
        "",
        &events,
        &rules,
        &logs[0],
        &refs(&router_env),
    );
    let mut enricher = spawn_enricher_with_env(
        &stack,
        &unique("enricher"),
        &routed,
        &requests,
        &bindings,
        &logs[1],
        &refs(&enricher_env),
    );
    let mut actor = spawn_actor(
        &stack,
        &unique("actor"),
        "",
        &requests,
        &actor_config,
        &logs[2],
        &refs(&actor_env),
    );

    // 40 events; events 1..=8 published twice at once, events 9..=12 replayed after all applied.
    let producer = producer(&stack.bootstrap);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let value = |i: usize| pod_event_in(schema_id, &namespace, &format!("pod-{i}"), i as i64);
    for i in 0..40 {
        let id = format!("e-{i}");
        let tp = (i == 0).then_some(traceparent.as_str());
        let key = format!("pod-{i}");
        produce(
            &producer,
            &events,
            Some(&key),
            &value(i),
            event_headers(&id, tp),
        )
        .await;
        if (1..=8).contains(&i) {
            produce(
                &producer,
                &events,
                Some(&key),
                &value(i),
                event_headers(&id, None),
            )
            .await;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while target.effects() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} effects; logs:\n{}\n{}\n{}",
            target.effects(),
            read_log(&logs[0]),
            read_log(&logs[1]),
            read_log(&logs[2])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 9..=12 {
        let key = format!("pod-{i}");
        produce(
            &producer,
            &events,
            Some(&key),
            &value(i),
            event_headers(&format!("e-{i}"), None),
        )
        .await;
    }

    // One outcome per attempt: 40 applied, 12 duplicates suppressed.
    let codec_schema: serde_avro_fast::Schema =
        reflex_core::actions::ACTION_OUTCOME_SCHEMA.parse().unwrap();
    let records = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| got.len() >= 52,
    )
    .await;
    let decoded: Vec<ActionOutcome> = records
        .iter()
        .map(|m| {
            AvroCodec::<ActionOutcome>::decode_with(
                &codec_schema,
                rdkafka::Message::payload(m).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let mut by_result: HashMap<ActionResult, usize> = HashMap::new();
    for o in &decoded {
        *by_result.entry(o.result).or_default() += 1;
    }
    assert_eq!(
        by_result.get(&ActionResult::Succeeded),
        Some(&40),
        "{by_result:?}"
    );
    assert_eq!(
        by_result.get(&ActionResult::DuplicateSuppressed),
        Some(&12),
        "{by_result:?}"
    );
    assert_eq!(decoded.len(), 52, "{by_result:?}");

    // Exactly one effect (and one request) per idempotency key; context from Redis arrived.
    let keys = target.snapshot();
    assert_eq!(keys.len(), 40);
    assert!(
        keys.values()
            .all(|(requests, effects)| *requests == 1 && *effects == 1),
        "{keys:?}"
    );
    let first = target
        .first_headers
        .lock()
        .unwrap()
        .get("restart:e-0")
        .cloned()
        .expect("request for e-0");
    assert_eq!(first.get("x-owner").map(String::as_str), Some("payments"));

    // Every worker exports the fleet's metrics, its own lag included.
    let common_names = [
        "reflex_events_in_total",
        "reflex_events_out_total",
        "reflex_events_dropped_total",
        "reflex_dead_letters_total",
        "reflex_retries_total",
        "reflex_processing_duration_seconds_bucket",
        "reflex_in_flight_events",
        "reflex_paused_partitions",
        "reflex_assigned_partitions",
        "reflex_backpressure_pauses_total",
        "reflex_parked_keys{",
        "reflex_parked_events_total{",
        "reflex_delayed_partitions{",
        "kafka_consumergroup_group_lag{",
        "kafka_consumergroup_group_lag_seconds{",
        "kafka_consumergroup_group_max_lag_seconds{",
        "kafka_consumergroup_group_sum_lag{",
        "reflex_consumergroup_status{",
    ];
    let specific: [&[&str]; 3] = [
        &["reflex_rule_matches_total{rule=\"crashloop\"} 52"],
        &["reflex_lookups_total"],
        &[
            "reflex_actions_total{action=\"restart\",result=\"succeeded\"} 40",
            "reflex_dedup_hits_total{action=\"restart\"} 12",
            "reflex_breaker_state{",
            "reflex_rate_limited_total",
            "reflex_kill_switch_on 0",
            "reflex_blast_radius_held_total",
            "reflex_action_latency_seconds_bucket",
        ],
    ];
    for (log, own) in logs.iter().zip(specific) {
        let mut body = String::new();
        for _ in 0..40 {
            body = metrics_of(log).await;
            if common_names
                .iter()
                .chain(own.iter())
                .all(|n| body.contains(n))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for name in common_names.iter().chain(own.iter()) {
            assert!(
                body.contains(name),
                "`{name}` missing from {}'s /metrics:\n{body}",
                log.display()
            );
        }
    }

    // One trace: producer → router → enricher → actor, each span the child of the previous.
    for worker in [&mut router, &mut enricher, &mut actor] {
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(0));
    }
    let chain = |spans: &[serde_json::Value]| -> Option<[serde_json::Value; 3]> {
        let of = |service: &str| {
            spans.iter().find(|s| {
                s["traceId"].as_str().map(str::to_lowercase).as_deref() == Some(TRACE_ID)
                    && span_service(s) == Some(service)
            })
        };
        Some([
            of("reflex-router")?.clone(),
            of("reflex-enricher")?.clone(),
            of("reflex-actor")?.clone(),
        ])
    };
    let mut found = None;
    for _ in 0..50 {
        found = chain(&spans.lock().unwrap());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let [router_span, enricher_span, actor_span] =
        found.expect("a process span of each worker in the trace");
    let id = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
    assert_eq!(id(&router_span, "parentSpanId"), PARENT_SPAN);
    assert_eq!(
        id(&enricher_span, "parentSpanId"),
        id(&router_span, "spanId")
    );
    assert_eq!(
        id(&actor_span, "parentSpanId"),
        id(&enricher_span, "spanId")
    );
    assert_eq!(router_span["name"], format!("process {events}"));
    assert_eq!(enricher_span["name"], format!("process {routed}"));
    assert_eq!(actor_span["name"], format!("process {requests}"));
    for span in [&router_span, &enricher_span, &actor_span] {
        assert_eq!(
            span_attribute(span, "messaging.system").unwrap()["stringValue"],
            "kafka"
        );
    }
}
