//! The Kafka Streams peer of the benchmark (`benches/kafka-streams-peer`, run by
//! `reflex-bench --peer kafka-streams`) does the router's benchmark job and nothing else: of a
//! mixed input it forwards exactly the events the benchmark rule
//! (`ce.type == "io.k8s.pod.crashloop" && payload.restart_count >= 3 && !payload.rollout_in_progress`)
//! matches, each once, with its original key, value bytes and headers, on the partition the key
//! hashes to; it drops the others and sends values that are not Confluent frames to the
//! dead-letter topic. Otherwise the benchmark would compare Reflex with a peer doing less.
//!
//! The Java project is built with Maven when its jar is missing or stale (a warm run starts the
//! jar directly). Needs `mvn` and a JDK 17.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use reflex_testkit::{
    ce_headers, create_topics, maven_jar, produce, producer, read_topic, stack, unique, ChildGuard,
};

const PARTITIONS: i32 = 3;

/// A pod event with the two fields the rule reads, Confluent-framed.
fn event(schema_id: u32, pod: &str, restart_count: i32, rollout: bool) -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({
        "cluster": "prod-eu", "namespace": "shop", "pod": pod, "reason": "CrashLoopBackOff",
        "restart_count": restart_count, "seq": 1, "rollout_in_progress": rollout,
        "labels": {"app": pod}
    });
    reflex_core::wire::encode_frame(
        schema_id,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

fn ce_id(message: &OwnedMessage) -> String {
    reflex_testkit::header_str(message, "ce_id")
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_streams_peer_forwards_exactly_the_rules_matches_unchanged() {
    let stack = stack();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kafka-streams-peer");
    let jar =
        maven_jar(&project, "reflex-kafka-streams-peer.jar").unwrap_or_else(|e| panic!("{e}"));
    let input = unique("kstreams-in");
    let out = unique("kstreams-out");
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[(&input, PARTITIONS), (&out, PARTITIONS), (&dlq, 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;

    // (ce_id prefix, ce_type, restart_count, rollout_in_progress, forwarded?)
    let cases = [
        ("match", "io.k8s.pod.crashloop", 3, false, true),
        ("other-type", "io.k8s.pod.started", 7, false, false),
        ("few-restarts", "io.k8s.pod.crashloop", 2, false, false),
        ("rollout", "io.k8s.pod.crashloop", 9, true, false),
    ];
    let producer = producer(&stack.bootstrap);
    let mut expected = Vec::new();
    let mut dropped = 0;
    for (prefix, ce_type, restarts, rollout, forwarded) in cases {
        for i in 0..10 {
            let id = format!("{prefix}-{i}");
            let key = format!("pod-{i}");
            let value = event(schema_id, &key, restarts, rollout);
            let headers = ce_headers(&id, ce_type, "k8s/prod-eu");
            produce(&producer, &input, Some(&key), &value, headers).await;
            if forwarded {
                expected.push(id);
            } else {
                dropped += 1;
            }
        }
    }
    for (id, value) in [("not-a-frame", b"\x07oops".to_vec()), ("short", vec![0, 0])] {
        let headers = ce_headers(id, "io.k8s.pod.crashloop", "k8s/prod-eu");
        produce(&producer, &input, Some("pod-x"), &value, headers).await;
    }
    assert_eq!(dropped, 30);
    let produced = read_topic(
        &stack.bootstrap,
        &input,
        42,
        Duration::from_secs(30),
        Duration::from_millis(200),
    )
    .await;
    let original: HashMap<String, &OwnedMessage> = produced.iter().map(|m| (ce_id(m), m)).collect();
    assert_eq!(original.len(), 42);

    let state = std::env::temp_dir().join(unique("kstreams-state"));
    let log = std::env::temp_dir().join(unique("kstreams-peer.log"));
    let log_file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new("java");
    command
        .arg("-Xmx256m")
        .arg("-jar")
        .arg(&jar)
        .args(["--bootstrap", &stack.bootstrap])
        .args(["--registry", &stack.registry_url])
        .args(["--input", &input, "--output", &out])
        .args(["--application-id", &unique("kstreams-peer")])
        .arg("--state-dir")
        .arg(&state)
        // Flush right away: the test waits for records, not for throughput.
        .args(["--config", "producer.linger.ms=0"])
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file));
    let _peer = ChildGuard::spawn("kafka-streams-peer", &mut command);

    let routed = read_topic(
        &stack.bootstrap,
        &out,
        expected.len(),
        Duration::from_secs(90),
        Duration::from_secs(2),
    )
    .await;
    let peer_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut routed_ids: Vec<String> = routed.iter().map(ce_id).collect();
    routed_ids.sort();
    expected.sort();
    assert_eq!(
        routed_ids,
        expected,
        "forwarded ids; peer log:\n{}",
        peer_log()
    );
    for r in &routed {
        let o = original[&ce_id(r)];
        assert_eq!(r.key(), o.key(), "{}: key", ce_id(r));
        assert_eq!(r.payload(), o.payload(), "{}: value bytes", ce_id(r));
        assert_eq!(headers_of(r), headers_of(o), "{}: headers", ce_id(r));
        // Both producers hash the key with murmur2 over the same partition count.
        assert_eq!(r.partition(), o.partition(), "{}: partition", ce_id(r));
    }

    let dead = read_topic(
        &stack.bootstrap,
        &dlq,
        2,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    let mut dead_ids: Vec<String> = dead.iter().map(ce_id).collect();
    dead_ids.sort();
    assert_eq!(
        dead_ids,
        ["not-a-frame", "short"],
        "peer log:\n{}",
        peer_log()
    );
    for d in &dead {
        assert_eq!(d.payload(), original[&ce_id(d)].payload());
    }
    let _ = std::fs::remove_dir_all(&state);
}
