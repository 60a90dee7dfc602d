//! A third-party client against our registry and router: Python `confluent-kafka`
//! (SchemaRegistryClient, AvroSerializer, Producer) from PyPI, installed by `scripts/stack.sh`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::Message;
use reflex_testkit::{create_topics, header_str, read_topic, stack, unique};

fn python() -> String {
    std::env::var("REFLEX_TEST_PYTHON")
        .expect("REFLEX_TEST_PYTHON is not set: run the tests with `scripts/test`")
}

#[test]
fn confluent_python_client_registers_fetches_and_serializes_against_the_registry() {
    let stack = stack();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/registry_interop.py"
    );
    let output = Command::new(python())
        .arg(script)
        .arg(&stack.registry_url)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "registry_interop.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_routes_an_event_produced_by_the_python_client() {
    let stack = stack();
    let input = unique("py-in");
    let out = unique("py-out");
    create_topics(
        &stack.bootstrap,
        &[(&input, 2), (&out, 2), (&format!("{input}.dlq"), 1)],
    )
    .await;
    let schema_file = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/k8s_pod_event.avsc");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/produce_confluent.py"
    );
    let output = Command::new(python())
        .args([
            script,
            &stack.registry_url,
            &stack.bootstrap,
            &input,
            schema_file,
            "6",
        ])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "produce_confluent.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let produced: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(produced.len(), 6);

    // The Python serializer auto-registered `<topic>-value`; the router validates its rule against it.
    let rules = write_rules(
        "rules",
        &format!("[[rule]]\nname = \"python\"\nwhen = 'ce.source == \"python/service\" && payload.labels[\"lang\"] == \"python\" && payload.restart_count >= 3'\nto = [\"{out}\"]\n"),
    );
    let log = std::env::temp_dir().join(unique("router-log"));
    let _router = spawn_router(&stack, &unique("router"), &input, &rules, &log);
    let routed = read_topic(
        &stack.bootstrap,
        &out,
        produced.len(),
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(routed.len(), produced.len(), "log: {}", read_log(&log));
    let by_id = by_ce_id(&routed);
    for event in &produced {
        let id = event["ce_id"].as_str().unwrap();
        let record = by_id[id][0];
        let hex: String = record
            .payload()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            event["value_hex"].as_str().unwrap(),
            "{id}: bytes changed"
        );
        assert_eq!(
            record.key(),
            Some(event["key"].as_str().unwrap().as_bytes())
        );
        assert_eq!(header_str(record, "reflex-rule"), Some("python"));
    }
}
