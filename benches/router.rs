//! Micro benchmarks of the router's hot path, without a broker: Confluent framing, Avro decode
//! (serde_avro_fast → CEL values vs apache-avro → JSON), and a whole `Router::process` call
//! (envelope check, decode, CEL rules, output headers). Run: `cargo bench --bench router`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use reflex_core::registry::RegistryClient;
use reflex_core::Headers;
use reflex_router::rules::RuleSet;
use reflex_router::Router;
use reflex_runtime::{Event, Stage};

const SCHEMA: &str = include_str!("../avro/k8s_pod_event.avsc");

fn value() -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(SCHEMA).unwrap();
    let json = serde_json::json!({"cluster": "prod-eu-west-1", "namespace": "checkout", "pod": "checkout-api-7d9f8b6c4-x2k9p",
        "reason": "CrashLoopBackOff", "restart_count": 7, "seq": 123456, "rollout_in_progress": false,
        "labels": {"app": "checkout-api", "team": "payments", "tier": "1"}});
    reflex_core::wire::encode_frame(
        1,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )
}

fn event() -> Event {
    let mut headers = Headers::new();
    for (k, v) in [
        ("ce_specversion", "1.0"),
        ("ce_id", "6f1c2d3e-1111-4a4a-9b9b-0123456789ab"),
        ("ce_source", "k8s/prod-eu-west-1"),
        ("ce_type", "io.k8s.pod.crashloop"),
        ("ce_time", "2026-11-23T10:00:00Z"),
        ("ce_correlationid", "6f1c2d3e-1111-4a4a-9b9b-0123456789ab"),
        ("content-type", "application/avro"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        headers.push(k, v);
    }
    Event {
        topic: "reflex.events.k8s".into(),
        partition: 0,
        offset: 42,
        timestamp_ms: Some(0),
        key: Some(Bytes::from_static(b"checkout-api-7d9f8b6c4-x2k9p")),
        payload: Some(Bytes::from(value())),
        headers,
    }
}

fn router(rules: &str) -> Router {
    let registry = RegistryClient::new(
        "http://127.0.0.1:9",
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    registry.preload(1, SCHEMA).unwrap();
    Router::new(
        RuleSet::parse(Path::new("bench.toml"), rules).unwrap(),
        registry,
        8,
    )
}

fn benches(c: &mut Criterion) {
    let value = value();
    let fast: serde_avro_fast::Schema = SCHEMA.parse().unwrap();
    let slow = reflex_core::avro::parse_schema(SCHEMA).unwrap();
    c.bench_function("wire/decode_frame", |b| {
        b.iter(|| reflex_core::wire::decode_frame(std::hint::black_box(&value)).unwrap())
    });
    c.bench_function("avro/serde_avro_fast_to_cel", |b| {
        b.iter(|| reflex_router::decode::to_cel(std::hint::black_box(&value[5..]), &fast).unwrap())
    });
    c.bench_function("avro/serde_avro_fast_validate", |b| {
        b.iter(|| {
            reflex_router::decode::validate(std::hint::black_box(&value[5..]), &fast).unwrap()
        })
    });
    c.bench_function("avro/apache_avro_to_json", |b| {
        b.iter(|| {
            reflex_core::avro::datum_to_json(&slow, std::hint::black_box(&value[5..])).unwrap()
        })
    });

    let event = event();
    let payload_rules = router(
        "[[rule]]\nname = \"crash\"\nwhen = 'ce.type == \"io.k8s.pod.crashloop\" && payload.restart_count >= 3 && !payload.rollout_in_progress'\nto = [\"reflex.routed.remediation\"]\n",
    );
    let header_rules = router("[[rule]]\nname = \"crash\"\nwhen = 'ce.type == \"io.k8s.pod.crashloop\"'\nto = [\"reflex.routed.remediation\"]\n");
    assert_eq!(
        futures::executor::block_on(payload_rules.process(&event))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        futures::executor::block_on(header_rules.process(&event))
            .unwrap()
            .len(),
        1
    );
    c.bench_function("router/process_payload_rule", |b| {
        b.iter(|| {
            futures::executor::block_on(payload_rules.process(std::hint::black_box(&event)))
                .unwrap()
        })
    });
    c.bench_function("router/process_header_rule", |b| {
        b.iter(|| {
            futures::executor::block_on(header_rules.process(std::hint::black_box(&event))).unwrap()
        })
    });
}

criterion_group!(router_benches, benches);
criterion_main!(router_benches);
