//! Every worker serves `/metrics`, `/healthz` and `/readyz` (runtime.http_listen); checked on a
//! real router process after it routed events.

mod common;

use std::time::Duration;

use common::*;
use reflex_testkit::{ce_headers, create_topics, produce, producer, read_topic, stack, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_serves_metrics_health_and_readiness() {
    let stack = stack();
    let input = unique("obs-in");
    let out = unique("obs-out");
    create_topics(
        &stack.bootstrap,
        &[(&input, 1), (&out, 1), (&format!("{input}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        &format!(
            "[[rule]]\nname = \"crash\"\nwhen = 'payload.restart_count >= 3'\nto = [\"{out}\"]\n"
        ),
    );
    let producer = producer(&stack.bootstrap);
    for i in 0..5 {
        produce(
            &producer,
            &input,
            Some("pod"),
            &pod_event(schema_id, "pod", i, 5, "CrashLoopBackOff"),
            ce_headers(&format!("m-{i}"), "t", "s"),
        )
        .await;
    }
    produce(
        &producer,
        &input,
        Some("pod"),
        b"not avro",
        ce_headers("m-bad", "t", "s"),
    )
    .await;

    let log = std::env::temp_dir().join(unique("router-log"));
    let mut router = spawn_router(&stack, &unique("router"), &input, &rules, &log);
    assert_eq!(
        read_topic(
            &stack.bootstrap,
            &out,
            5,
            Duration::from_secs(60),
            Duration::ZERO
        )
        .await
        .len(),
        5
    );

    let addr =
        http_address(&log).unwrap_or_else(|| panic!("no http_listen in log: {}", read_log(&log)));
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move { http_get(&format!("http://{addr}{path}")).await }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    // Counters are recorded when the event settles, just after its output is acknowledged.
    let mut body = String::new();
    for _ in 0..50 {
        body = get("/metrics").await.1;
        if body.contains("reflex_dead_letters_total")
            && body.contains("reflex_events_out_total{stage=\"router\"} 5")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in [
        "reflex_events_in_total{stage=\"router\"} 6",
        "reflex_events_out_total{stage=\"router\"} 5",
        "reflex_dead_letters_total{stage=\"router\",class=\"poison\"} 1",
        "reflex_rule_matches_total{rule=\"crash\"} 5",
        "reflex_in_flight_events{stage=\"router\"}",
        "reflex_processing_duration_seconds_bucket{stage=\"router\"",
    ] {
        assert!(
            body.contains(name),
            "`{name}` missing from /metrics:\n{body}"
        );
    }
    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(20)), Some(0));
}

async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}
