//! One trace per event: the router continues the producer's W3C trace context, exports its
//! `process` span over OTLP (to a receiver this test runs) with the OpenTelemetry messaging
//! attribute names, and hands its own context downstream in `traceparent`.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use reflex_testkit::{
    ce_headers, create_topics, header_str, produce, producer, read_topic, stack, unique,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_continues_the_trace_and_exports_a_process_span() {
    let stack = stack();
    let (endpoint, spans) = otlp_receiver().await;
    let input = unique("trace-in");
    let out = unique("trace-out");
    create_topics(
        &stack.bootstrap,
        &[(&input, 1), (&out, 1), (&format!("{input}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        &format!(
            "[[rule]]\nname = \"all\"\nwhen = 'payload.restart_count >= 0'\nto = [\"{out}\"]\n"
        ),
    );
    let producer = producer(&stack.bootstrap);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let with_trace = |h: OwnedHeaders| {
        h.insert(Header {
            key: "traceparent",
            value: Some(traceparent.as_str()),
        })
    };
    produce(
        &producer,
        &input,
        Some("pod"),
        &pod_event(schema_id, "pod", 1, 5, "CrashLoopBackOff"),
        with_trace(ce_headers("traced-1", "t", "s")),
    )
    .await;
    // The same trace replayed from a dead-letter topic: a new trace linked to the original.
    produce(
        &producer,
        &input,
        Some("pod"),
        &pod_event(schema_id, "pod", 2, 5, "CrashLoopBackOff"),
        with_trace(ce_headers("traced-replayed", "t", "s")).insert(Header {
            key: "reflex-replay-id",
            value: Some("replay-trace-test"),
        }),
    )
    .await;
    // A bad event whose dead-letter log line must carry its correlation id.
    let bad_headers = ce_headers("traced-bad", "t", "s").insert(Header {
        key: "ce_correlationid",
        value: Some("corr-incident-77"),
    });
    produce(&producer, &input, Some("pod"), b"not avro", bad_headers).await;

    let group = unique("router");
    let log = std::env::temp_dir().join(unique("router-log"));
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "reflex-router"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut router = spawn_router_with_env(&stack, &group, "", &input, &rules, &log, &env);
    let routed = read_topic(
        &stack.bootstrap,
        &out,
        2,
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await;
    assert_eq!(routed.len(), 2, "log: {}", read_log(&log));
    let downstream = header_str(&routed[0], "traceparent")
        .expect("output carries traceparent")
        .to_string();
    let parts: Vec<&str> = downstream.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "same trace downstream: {downstream}");
    assert_ne!(
        parts[2], PARENT_SPAN,
        "downstream parent is the router's span: {downstream}"
    );
    let router_span_id = parts[2].to_string();

    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(20)), Some(0));
    let span = {
        let mut found = None;
        for _ in 0..50 {
            found = spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| {
                    s["spanId"].as_str().map(str::to_lowercase) == Some(router_span_id.clone())
                })
                .cloned();
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.unwrap_or_else(|| {
            panic!(
                "span {router_span_id} not exported; got {:?}",
                spans.lock().unwrap()
            )
        })
    };
    assert_eq!(span["traceId"].as_str().unwrap().to_lowercase(), TRACE_ID);
    assert_eq!(
        span["parentSpanId"].as_str().unwrap().to_lowercase(),
        PARENT_SPAN
    );
    // The replayed event: its own trace, with a link back to the original span.
    let replayed = spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| {
            span_attribute(s, "messaging.message.id").map(|v| v["stringValue"].clone())
                == Some(serde_json::json!("traced-replayed"))
        })
        .cloned()
        .expect("the replayed event's span was exported");
    assert_ne!(
        replayed["traceId"].as_str().unwrap().to_lowercase(),
        TRACE_ID,
        "a replay starts its own trace"
    );
    let link = &replayed["links"][0];
    assert_eq!(
        link["traceId"].as_str().unwrap().to_lowercase(),
        TRACE_ID,
        "{replayed}"
    );
    assert_eq!(link["spanId"].as_str().unwrap().to_lowercase(), PARENT_SPAN);
    assert_eq!(span["name"], format!("process {input}"));
    assert_eq!(span["kind"], 5, "SPAN_KIND_CONSUMER");
    assert_eq!(
        span_attribute(&span, "messaging.system").unwrap()["stringValue"],
        "kafka"
    );
    assert_eq!(
        span_attribute(&span, "messaging.operation.type").unwrap()["stringValue"],
        "process"
    );
    assert_eq!(
        span_attribute(&span, "messaging.destination.name").unwrap()["stringValue"],
        input.as_str()
    );
    assert_eq!(
        span_attribute(&span, "messaging.consumer.group.name").unwrap()["stringValue"],
        group.as_str()
    );
    assert_eq!(
        span_attribute(&span, "messaging.message.id").unwrap()["stringValue"],
        "traced-1"
    );
    assert!(span_attribute(&span, "messaging.kafka.offset").is_some());
    for deprecated in [
        "messaging.kafka.consumer.group",
        "messaging.kafka.message.offset",
    ] {
        assert!(
            span_attribute(&span, deprecated).is_none(),
            "{deprecated} must not be emitted"
        );
    }
    assert_eq!(span_service(&span), Some("reflex-router"));

    // The failed event's span is marked with its error class, and its log line carries the correlation id.
    let failed = spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| {
            span_attribute(s, "messaging.message.id")
                .map(|v| v["stringValue"] == "traced-bad")
                .unwrap_or(false)
        })
        .cloned();
    let failed = failed.expect("the bad event's span was exported");
    assert_eq!(
        span_attribute(&failed, "error.type").unwrap()["stringValue"],
        "poison"
    );
    let log_text = read_log(&log);
    assert!(
        log_text
            .lines()
            .any(|l| l.contains("event dead-lettered") && l.contains("corr-incident-77")),
        "dead-letter log line lacks the correlation id:\n{log_text}"
    );
}
