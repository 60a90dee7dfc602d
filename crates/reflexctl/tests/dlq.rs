//! `reflexctl dlq inspect` against a real broker, on a dead-letter topic holding records written
//! the way Reflex, Spring Kafka and Kafka Connect write them (and one that is not a dead letter).

use std::process::Command;

use rdkafka::message::{Header, OwnedHeaders};
use reflex_testkit::{create_topics, produce, producer, stack, unique, workspace_bin};
use serde_json::Value;

fn headers(pairs: &[(&str, &[u8])]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_groups_dead_letters_of_every_writer() {
    let stack = stack();
    let dlq = unique("orders.dlq");
    create_topics(&stack.bootstrap, &[(&dlq, 1)]).await;
    let producer = producer(&stack.bootstrap);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let an_hour_ago = (now - 3_600_000).to_string();
    for offset in ["7", "8"] {
        let h = headers(&[
            ("reflex-original-topic", b"orders"),
            ("reflex-original-partition", b"0"),
            ("reflex-original-offset", offset.as_bytes()),
            ("reflex-original-timestamp-ms", an_hour_ago.as_bytes()),
            ("reflex-error-class", b"poison"),
            ("reflex-error-stage", b"router"),
            ("reflex-error-message", b"magic byte is 123, expected 0"),
        ]);
        produce(&producer, &dlq, Some("k"), b"{not avro}", h).await;
    }
    // Spring Kafka: partition, offset and timestamp as big-endian binary.
    let spring = headers(&[
        ("kafka_dlt-original-topic", b"payments"),
        ("kafka_dlt-original-partition", &2i32.to_be_bytes()),
        ("kafka_dlt-original-offset", &99i64.to_be_bytes()),
        (
            "kafka_dlt-original-timestamp",
            &(now - 60_000).to_be_bytes(),
        ),
        ("kafka_dlt-exception-fqcn", b"com.acme.PaymentDeclined"),
        ("kafka_dlt-exception-message", b"card expired"),
    ]);
    produce(&producer, &dlq, Some("k"), b"{}", spring).await;
    let connect = headers(&[
        ("__connect.errors.topic", b"inventory"),
        ("__connect.errors.partition", b"1"),
        ("__connect.errors.offset", b"5"),
        ("__connect.errors.connector.name", b"jdbc-sink"),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        ("__connect.errors.exception.message", b"Unknown magic byte!"),
    ]);
    produce(&producer, &dlq, Some("k"), b"{}", connect).await;
    produce(&producer, &dlq, Some("k"), b"plain", OwnedHeaders::new()).await;

    let ctl = |extra: &[&str]| {
        let mut args = vec![
            "--bootstrap",
            &stack.bootstrap,
            "--registry",
            &stack.registry_url,
            "dlq",
            "inspect",
            "--topic",
            &dlq,
            "--timeout-ms",
            "1500",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(workspace_bin("reflexctl"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let summary: Value = serde_json::from_str(ctl(&["--json"]).trim()).unwrap();
    assert_eq!(summary["records"], 5);
    assert_eq!(summary["unrecognised"], 1);
    assert_eq!(
        summary["by_writer"],
        serde_json::json!({"reflex": 2, "spring": 1, "connect": 1})
    );
    let groups = summary["groups"].as_array().unwrap();
    let find = |topic: &str| {
        groups
            .iter()
            .find(|g| g["original_topic"] == topic)
            .unwrap_or_else(|| panic!("{topic}: {summary}"))
    };
    let orders = find("orders");
    assert_eq!(
        (
            orders["error_class"].as_str(),
            orders["origin"].as_str(),
            orders["count"].as_u64()
        ),
        (Some("poison"), Some("router"), Some(2))
    );
    let age = orders["oldest_age_seconds"].as_f64().unwrap();
    assert!((3590.0..3700.0).contains(&age), "age {age}");
    let payments = find("payments");
    assert_eq!(payments["origin"], "com.acme.PaymentDeclined");
    assert!((55.0..120.0).contains(&payments["newest_age_seconds"].as_f64().unwrap()));
    assert_eq!(find("inventory")["origin"], "jdbc-sink/VALUE_CONVERTER");

    // --show prints records with what their dead-letter headers say.
    let text = ctl(&["--show", "3"]);
    let shown: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), 3);
    assert_eq!(shown[2]["dead_letter"]["writer"], "spring");
    assert_eq!(shown[2]["dead_letter"]["original_offset"], 99);
    assert!(
        text.contains("5 records (connect 1, reflex 2, spring 1), 1 without dead-letter headers"),
        "{text}"
    );
}
