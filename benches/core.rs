//! Micro benchmarks of the shared hot pieces in `reflex-core`, without a broker: the wire format
//! (Confluent framing + Avro encode/decode of the realistic enricher → actor `ActionRequest`),
//! template rendering (what the enricher and actor do per event) and header handling (the
//! runtime's rdkafka ⇄ `Headers` conversion and the router's per-output header edits).
//! Run: `cargo bench --bench core`. Pod-event decoding and rules are in `benches/router.rs`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::message::{Header as KafkaHeader, Headers as _, OwnedHeaders};
use reflex_core::actions::{idempotency_key, ActionKind, ActionRequest, AvroCodec};
use reflex_core::headers::{reflex as rh, Header, HeaderName};
use reflex_core::template::Templates;
use reflex_core::Headers;
use std::hint::black_box;

const REQUEST_SCHEMA: &str = include_str!("../avro/action_request.avsc");

fn request() -> ActionRequest {
    ActionRequest {
        idempotency_key: idempotency_key("6f1c2d3e-1111-4a4a-9b9b-0123456789ab", "restart-pod"),
        action: "restart-pod".into(),
        kind: ActionKind::Http,
        target: "http://gateway/api/v1/namespaces/checkout/pods/checkout-api-7d9f8b6c4-x2k9p"
            .into(),
        params: BTreeMap::from([
            ("method".into(), "DELETE".into()),
            ("cluster".into(), "prod-eu-west-1".into()),
            ("team".into(), "payments".into()),
        ]),
        body: Some(
            r##"{"reason": "CrashLoopBackOff", "restarts": 7, "notify": "#payments-oncall"}"##
                .into(),
        ),
        event_id: "6f1c2d3e-1111-4a4a-9b9b-0123456789ab".into(),
        event_type: "io.k8s.pod.crashloop".into(),
        rule: Some("crashloop-remediation".into()),
        correlation_id: "6f1c2d3e-1111-4a4a-9b9b-0123456789ab".into(),
        context: BTreeMap::from([("owner".into(), "{\"team\":\"payments\"}".into())]),
        dry_run: false,
        requested_at: 1_795_000_000_000,
    }
}

/// The headers of a routed event as they arrive from Kafka.
fn kafka_headers() -> OwnedHeaders {
    [
        ("ce_specversion", "1.0"),
        ("ce_id", "6f1c2d3e-1111-4a4a-9b9b-0123456789ab"),
        ("ce_source", "k8s/prod-eu-west-1"),
        ("ce_type", "io.k8s.pod.crashloop"),
        ("ce_time", "2026-11-23T10:00:00.123456Z"),
        ("ce_correlationid", "6f1c2d3e-1111-4a4a-9b9b-0123456789ab"),
        ("content-type", "application/avro"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("reflex-rule", "crashloop-remediation"),
        ("reflex-hops", "1"),
        ("reflex-rules-visited", "crashloop-remediation"),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(KafkaHeader {
            key: k,
            value: Some(*v),
        })
    })
}

/// The runtime's conversion of a consumed record's headers (`to_event` in
/// crates/runtime/src/run.rs, which is private: keep in step).
fn from_kafka(headers: &OwnedHeaders) -> Headers {
    let size = headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum();
    let mut buf = bytes::BytesMut::with_capacity(size);
    Headers(
        headers
            .iter()
            .map(|h| {
                buf.extend_from_slice(h.key.as_bytes());
                let key = HeaderName::from_utf8(buf.split().freeze()).unwrap();
                let value = h.value.map(|v| {
                    buf.extend_from_slice(v);
                    buf.split().freeze()
                });
                Header { key, value }
            })
            .collect(),
    )
}

/// The runtime's conversion for an output record (`to_kafka_headers` in run.rs).
fn to_kafka(headers: &Headers) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(headers.len()), |acc, h| {
            acc.insert(KafkaHeader {
                key: &h.key,
                value: h.value.as_deref(),
            })
        })
}

fn wire(c: &mut Criterion) {
    let codec: AvroCodec<ActionRequest> = AvroCodec::new(7, REQUEST_SCHEMA).unwrap();
    let writer: serde_avro_fast::Schema = REQUEST_SCHEMA.parse().unwrap();
    let req = request();
    let framed = codec.encode(&req).unwrap();
    assert_eq!(
        AvroCodec::<ActionRequest>::decode_with(&writer, &framed)
            .unwrap()
            .idempotency_key,
        req.idempotency_key
    );
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(framed.len() as u64));
    g.bench_function("action_request_encode", |b| {
        b.iter(|| codec.encode(black_box(&req)).unwrap())
    });
    g.bench_function("action_request_decode", |b| {
        b.iter(|| AvroCodec::<ActionRequest>::decode_with(&writer, black_box(&framed)).unwrap())
    });
    g.bench_function("encode_frame", |b| {
        b.iter(|| reflex_core::wire::encode_frame(7, black_box(&framed[5..])))
    });
    g.finish();
}

fn templates(c: &mut Criterion) {
    let mut t = Templates::default();
    t.add(
        "target",
        "http://gateway/api/v1/namespaces/{{ payload.namespace }}/pods/{{ payload.pod }}",
    )
    .unwrap();
    t.add(
        "body",
        r#"{"reason": "{{ payload.reason }}", "restarts": {{ payload.restart_count }}, "notify": "{{ context.owner.channel | default('#sre') }}"}"#,
    )
    .unwrap();
    // What the enricher renders against: the decoded payload plus looked-up context.
    let ctx = serde_json::json!({
        "payload": {"cluster": "prod-eu-west-1", "namespace": "checkout", "pod": "checkout-api-7d9f8b6c4-x2k9p",
            "reason": "CrashLoopBackOff", "restart_count": 7, "seq": 123456, "rollout_in_progress": false,
            "labels": {"app": "checkout-api", "team": "payments", "tier": "1"}},
        "context": {"owner": {"team": "payments", "channel": "#payments-oncall"}},
        "ce": {"id": "6f1c2d3e", "type": "io.k8s.pod.crashloop"},
    });
    assert!(t.render("body", &ctx).unwrap().contains("\"restarts\": 7"));
    // What the actor renders against: the ActionRequest itself.
    let mut actor = Templates::default();
    actor
        .add("url", "{{ target }}?team={{ params.team }}")
        .unwrap();
    let req = request();
    let mut g = c.benchmark_group("template");
    g.bench_function("render_url", |b| {
        b.iter(|| t.render("target", black_box(&ctx)).unwrap())
    });
    g.bench_function("render_body", |b| {
        b.iter(|| t.render("body", black_box(&ctx)).unwrap())
    });
    g.bench_function("render_actor_url_from_request", |b| {
        b.iter(|| actor.render("url", black_box(&req)).unwrap())
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let kafka = kafka_headers();
    let ours = from_kafka(&kafka);
    let mut g = c.benchmark_group("headers");
    g.bench_function("from_rdkafka_11", |b| {
        b.iter(|| from_kafka(black_box(&kafka)))
    });
    g.bench_function("to_rdkafka_11", |b| b.iter(|| to_kafka(black_box(&ours))));
    g.bench_function("envelope_checks", |b| {
        b.iter(|| {
            let h = black_box(&ours);
            (
                h.missing_required_ce().len(),
                h.hops(),
                h.rules_visited().len(),
            )
        })
    });
    // Per routed output: clone, then the three reflex-* headers (as Router::route does).
    g.bench_function("router_output_edit", |b| {
        b.iter(|| {
            let src = black_box(&ours);
            let mut h = src.clone();
            h.set(rh::RULE, "crashloop-remediation");
            h.set(rh::HOPS, (src.hops() + 1).to_string());
            let mut visited = src.rules_visited();
            visited.push("crashloop-remediation");
            h.set(rh::RULES_VISITED, visited.join(","));
            h
        })
    });
    g.finish();
}

criterion_group!(core_benches, wire, templates, headers);
criterion_main!(core_benches);
