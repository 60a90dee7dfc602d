//! A Java producer service against the fleet: `examples/java-producer` (kafka-clients from Maven
//! with its default partitioner, Avro framed by hand in Confluent wire format, CloudEvents
//! headers and a `traceparent`) publishes pod events; the router forwards them. Every key's
//! outputs must land on the partition Java's default partitioner picked for that key, which is
//! what "murmur2 compatible" (librdkafka's `murmur2_random`) promises.
//!
//! The Java project is built with Maven (`mvn -q -B package`) when its jar is missing or older
//! than its pom or sources, so a warm run starts the jar directly. Needs `mvn` and a JDK 17.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use reflex_core::headers::reflex as rh;
use reflex_testkit::{create_topics, header_str, read_topic, stack, unique};

const PARTITIONS: i32 = 6;
const EVENTS: usize = 300;

/// The newest modification time of `path` and everything under it.
fn newest_mtime(path: &Path) -> SystemTime {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| newest_mtime(&e.path()))
            .fold(own, SystemTime::max),
        Err(_) => own,
    }
}

/// `examples/java-producer/target/reflex-java-producer.jar`, built with Maven first when it is
/// missing or older than the project's pom or sources.
fn java_producer_jar() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/java-producer");
    let jar = project.join("target/reflex-java-producer.jar");
    let built = std::fs::metadata(&jar).and_then(|m| m.modified()).ok();
    let sources = newest_mtime(&project.join("pom.xml")).max(newest_mtime(&project.join("src")));
    if built.is_some_and(|built| built >= sources) {
        return jar;
    }
    let output = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(project.join("pom.xml"))
        .arg("package")
        .output()
        .unwrap_or_else(|e| {
            panic!("run mvn: {e} (the Java producer needs Maven and a JDK 17: apt-get install maven openjdk-17-jdk-headless)")
        });
    assert!(
        output.status.success(),
        "mvn package examples/java-producer failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    jar
}

/// 41 keys: pod names of every length modulo 4 (murmur2 hashes 4-byte blocks, then a 1–3 byte
/// tail), some with non-ASCII UTF-8 bytes (≥ 0x80, where a sign-extension slip would show), and
/// the empty key (a key, not a null one: Java hashes it rather than picking a sticky partition).
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..33).map(|i| format!("java-pod-{i}")).collect();
    keys.extend(
        [
            "",
            "a",
            "ab",
            "abc",
            "pöd-ü",
            "crème-brûlée-9",
            "節點-7",
            "checkout-7d9f-xk2lp",
        ]
        .map(String::from),
    );
    keys
}

/// Headers of a record as (key, value) pairs, in order.
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_default_partitioner_and_the_routers_murmur2_put_each_key_on_the_same_partition() {
    let stack = stack();
    let jar = java_producer_jar();
    let input = unique("java-in");
    let out = unique("java-out");
    create_topics(
        &stack.bootstrap,
        &[
            (&input, PARTITIONS),
            (&out, PARTITIONS),
            (&format!("{input}.dlq"), 1),
        ],
    )
    .await;

    // The Java service registers the schema under `<input>-value` and sends every event.
    let keys = keys();
    let id_prefix = unique("java");
    let schema_file = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/k8s_pod_event.avsc");
    let output = Command::new("java")
        .arg("-jar")
        .arg(&jar)
        .args(["--bootstrap", &stack.bootstrap])
        .args(["--registry", &stack.registry_url])
        .args(["--topic", &input])
        .args(["--schema", schema_file])
        .args(["--count", &EVENTS.to_string()])
        .args(["--keys", &keys.join(",")])
        .args(["--id-prefix", &id_prefix])
        .output()
        .expect("run java");
    assert!(
        output.status.success(),
        "the Java producer failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sent: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(sent.len(), EVENTS);

    // Java's default partitioner: the partition the broker acknowledged is
    // Utils.toPositive(Utils.murmur2(key)) % partitions, and one partition per key.
    let schema_id = registry(&stack)
        .register(&format!("{input}-value"), POD_SCHEMA)
        .await
        .expect("the schema Java registered");
    let mut java_partition: HashMap<String, i64> = HashMap::new();
    let mut seq_of = HashMap::new();
    for (i, record) in sent.iter().enumerate() {
        let key = record["key"].as_str().unwrap().to_string();
        let partition = record["partition"].as_i64().unwrap();
        assert_eq!(record["partitions"], PARTITIONS, "{record}");
        assert_eq!(record["murmur2_partition"], partition, "{record}");
        assert_eq!(record["schema_id"], schema_id, "{record}");
        assert!(
            record["value_hex"]
                .as_str()
                .unwrap()
                .starts_with(&format!("00{schema_id:08x}")),
            "not Confluent-framed: {record}"
        );
        let first = *java_partition.entry(key.clone()).or_insert(partition);
        assert_eq!(first, partition, "Java put key {key:?} on two partitions");
        seq_of.insert(record["ce_id"].as_str().unwrap().to_string(), i as i64);
    }
    assert_eq!(java_partition.len(), keys.len());
    let used: HashSet<i64> = java_partition.values().copied().collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "the keys should cover every partition: {java_partition:?}"
    );

    // What Java wrote, headers included, as the router reads it.
    let produced = read_topic(
        &stack.bootstrap,
        &input,
        EVENTS,
        Duration::from_secs(30),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(produced.len(), EVENTS);
    let produced_by_id = by_ce_id(&produced);

    let rules = write_rules(
        "rules",
        &format!(
            "[[rule]]\nname = \"java\"\nwhen = 'ce.source == \"java/service\" && payload.labels[\"lang\"] == \"java\" && payload.restart_count >= 3'\nto = [\"{out}\"]\n"
        ),
    );
    let log = std::env::temp_dir().join(unique("router-log"));
    let _router = spawn_router(&stack, &unique("router"), &input, &rules, &log);
    let routed = read_topic(
        &stack.bootstrap,
        &out,
        EVENTS,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        routed.len(),
        EVENTS,
        "routed records (log: {})",
        read_log(&log)
    );

    let routed_by_id = by_ce_id(&routed);
    let mut mismatched = Vec::new();
    for record in &sent {
        let id = record["ce_id"].as_str().unwrap();
        let key = record["key"].as_str().unwrap();
        let copies = routed_by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} was not routed"));
        assert_eq!(copies.len(), 1, "{id} routed {} times", copies.len());
        let routed = copies[0];
        let original = produced_by_id[id][0];
        assert_eq!(routed.key(), Some(key.as_bytes()), "{id}: key");
        assert_eq!(
            hex(routed.payload().unwrap()),
            record["value_hex"].as_str().unwrap(),
            "{id}: payload bytes changed"
        );
        // Every header Java set (ce_*, content-type, traceparent) passes through unchanged and
        // in order; the router adds only its three.
        let mut kept = headers_of(routed);
        kept.retain(|(k, _)| k != rh::RULE && k != rh::HOPS && k != rh::RULES_VISITED);
        assert_eq!(kept, headers_of(original), "{id}: headers");
        for name in [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "content-type",
            "traceparent",
        ] {
            assert!(header_str(routed, name).is_some(), "{id}: {name} missing");
        }
        assert_eq!(header_str(routed, rh::RULE), Some("java"));
        assert_eq!(header_str(routed, rh::HOPS), Some("1"));
        // The Rust producer's partition for the key is the one Java's default partitioner chose.
        if i64::from(routed.partition()) != java_partition[key] {
            mismatched.push((key.to_string(), java_partition[key], routed.partition()));
        }
    }
    mismatched.sort();
    mismatched.dedup();
    assert!(
        mismatched.is_empty(),
        "{} of {} keys routed to another partition than Java's default partitioner picked \
         (key, Java, router): {mismatched:?}",
        mismatched.len(),
        keys.len()
    );
    assert_per_key_order(&routed, &seq_of);
}
