//! Consumer lag in offsets and seconds, and its Burrow-style status, against a real broker:
//! a group whose commits stop at a known backlog of records with known ages.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use reflex_lag::{Evaluator, LagReader, Status, Thresholds};
use reflex_testkit::{client_config, create_topics, producer, stack, unique, workspace_bin};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[i64]) {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
            .unwrap();
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit offsets");
}

async fn produce_aged(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    count: usize,
    timestamp_ms: i64,
) {
    for i in 0..count {
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload("x")
                    .timestamp(timestamp_ms),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_exact_in_offsets_and_seconds_and_status_follows_commits() {
    let stack = stack();
    let topic = unique("lag");
    let group = unique("lag-group");
    create_topics(&stack.bootstrap, &[(&topic, 2)]).await;
    let producer = producer(&stack.bootstrap);
    // Partition 0: 10 records written 30 s ago; partition 1: 6 records written 90 s ago.
    let (written0, written1) = (now_ms() - 30_000, now_ms() - 90_000);
    produce_aged(&producer, &topic, 0, 10, written0).await;
    produce_aged(&producer, &topic, 1, 6, written1).await;
    // The true age of a record is measured at the sample's own instant.
    let true_age = |at_ms: i64, written: i64| (at_ms - written) as f64 / 1000.0;
    commit(&stack.bootstrap, &group, &topic, &[4, 2]);

    let topics = vec![topic.clone()];
    let props = BTreeMap::new();
    let mut reader = LagReader::new(&stack.bootstrap, &props, Duration::from_secs(10)).unwrap();
    let sample = reader.read(&group, &topics, &props).unwrap();
    assert_eq!(sample.partitions.len(), 2);
    let (p0, p1) = (&sample.partitions[0], &sample.partitions[1]);
    assert_eq!((p0.committed, p0.high_watermark, p0.lag), (Some(4), 10, 6));
    assert_eq!((p1.committed, p1.high_watermark, p1.lag), (Some(2), 6, 4));
    assert!(
        (p0.lag_seconds - true_age(sample.at_ms, written0)).abs() < 1.0,
        "p0 lag seconds {}",
        p0.lag_seconds
    );
    assert!(
        (p1.lag_seconds - true_age(sample.at_ms, written1)).abs() < 1.0,
        "p1 lag seconds {}",
        p1.lag_seconds
    );
    assert_eq!(sample.total_lag, 10);

    // reflexctl prints the same numbers.
    let out = Command::new(workspace_bin("reflexctl"))
        .args([
            "--bootstrap",
            &stack.bootstrap,
            "lag",
            "--group",
            &group,
            "--topic",
            &topic,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total_lag"], 10);
    assert_eq!(json["partitions"][0]["lag"], 6);
    assert_eq!(json["partitions"][1]["lag"], 4);
    let json_at = json["at_ms"].as_i64().unwrap();
    assert!(
        (json["partitions"][1]["lag_seconds"].as_f64().unwrap() - true_age(json_at, written1))
            .abs()
            < 1.0
    );
    assert_eq!(json["status"], "OK");

    // Status: OK while fresh, STALL once no commit moved for stall_after, OK again on a commit.
    let mut evaluator = Evaluator::new(Thresholds {
        window: 3,
        stall_after: Duration::from_secs(2),
        stop_after: Duration::from_secs(60),
    });
    assert_eq!(evaluator.observe(sample), Status::Ok);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        evaluator.observe(reader.read(&group, &topics, &props).unwrap()),
        Status::Stall
    );
    commit(&stack.bootstrap, &group, &topic, &[8, 5]);
    let resumed = reader.read(&group, &topics, &props).unwrap();
    assert_eq!(resumed.total_lag, 3);
    assert_eq!(evaluator.observe(resumed), Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflexctl_lag_serves_kafka_lag_exporter_metrics() {
    let stack = stack();
    let topic = unique("lagx");
    let group = unique("lagx-group");
    create_topics(&stack.bootstrap, &[(&topic, 1)]).await;
    produce_aged(&producer(&stack.bootstrap), &topic, 0, 5, now_ms() - 10_000).await;
    commit(&stack.bootstrap, &group, &topic, &[1]);

    let mut child = reflex_testkit::ChildGuard::spawn(
        "reflexctl lag --serve",
        Command::new(workspace_bin("reflexctl"))
            .args([
                "--bootstrap",
                &stack.bootstrap,
                "lag",
                "--group",
                &group,
                "--serve",
                "127.0.0.1:0",
                "--interval",
                "1",
            ])
            .stdout(std::process::Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("serving /metrics on ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .to_string();
    let mut body = String::new();
    for _ in 0..50 {
        body = reqwest::get(format!("{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("kafka_consumergroup_group_lag{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lag_line = format!(
        "kafka_consumergroup_group_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"0\"}} 4"
    );
    assert!(body.contains(&lag_line), "`{lag_line}` missing:\n{body}");
    for name in [
        "kafka_consumergroup_group_lag_seconds{",
        "kafka_consumergroup_group_max_lag_seconds{",
        "kafka_consumergroup_group_sum_lag{",
        "reflex_consumergroup_status{",
    ] {
        assert!(body.contains(name), "`{name}` missing:\n{body}");
    }
}
