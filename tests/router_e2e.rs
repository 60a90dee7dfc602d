//! The router end to end: a real broker, the real registry, the router binary as a separate
//! process. Events are published with CloudEvents headers in Confluent wire format.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::Message;
use reflex_core::headers::reflex as rh;
use reflex_testkit::{
    ce_headers, committed_offsets, create_topics, header_str, produce, producer, read_topic,
    read_topic_until, stack, unique,
};

const RULES: &str = r#"
unmatched = "drop"

[[rule]]
name = "crashloop"
when = 'ce.type == "io.k8s.pod.crashloop" && payload.restart_count >= 3'
to = ["OUT_A", "OUT_B"]

[[rule]]
name = "info"
when = 'ce.type == "io.k8s.pod.info"'
to = ["OUT_B"]

[[rule]]
name = "noise"
when = 'ce.type == "io.k8s.pod.noise"'
action = "drop"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_every_event_to_its_topics_unchanged_and_in_key_order() {
    let stack = stack();
    let input = unique("events");
    let (out_a, out_b) = (unique("out-a"), unique("out-b"));
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[(&input, 3), (&out_a, 3), (&out_b, 2), (&dlq, 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        &RULES.replace("OUT_A", &out_a).replace("OUT_B", &out_b),
    );

    // 400 events over 8 keys; types cycle so some go to both topics, some to one, some nowhere.
    let producer = producer(&stack.bootstrap);
    let mut expected_a = HashMap::new();
    let mut expected_b = HashMap::new();
    let mut seq_of = HashMap::new();
    for i in 0..400i64 {
        let pod = format!("pod-{}", i % 8);
        let (ty, restarts) = match i % 4 {
            0 => ("io.k8s.pod.crashloop", 5),
            1 => ("io.k8s.pod.crashloop", 1), // below the threshold: unmatched, dropped
            2 => ("io.k8s.pod.info", 0),
            _ => ("io.k8s.pod.noise", 0),
        };
        let id = format!("evt-{i}");
        let value = pod_event(schema_id, &pod, i, restarts, "CrashLoopBackOff");
        produce(
            &producer,
            &input,
            Some(&pod),
            &value,
            ce_headers(&id, ty, "test/e2e"),
        )
        .await;
        seq_of.insert(id.clone(), i);
        match i % 4 {
            0 => {
                expected_a.insert(id.clone(), value.clone());
                expected_b.insert(id, value);
            }
            2 => {
                expected_b.insert(id, value);
            }
            _ => {}
        }
    }

    let log = std::env::temp_dir().join(unique("router-log"));
    let group = unique("router");
    let mut router = spawn_router(&stack, &group, &input, &rules, &log);

    let got_a = read_topic(
        &stack.bootstrap,
        &out_a,
        expected_a.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let got_b = read_topic(
        &stack.bootstrap,
        &out_b,
        expected_b.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let got_dlq = read_topic(
        &stack.bootstrap,
        &dlq,
        0,
        Duration::from_secs(1),
        Duration::from_millis(500),
    )
    .await;

    for (topic, got, expected, rules_seen) in [
        (&out_a, &got_a, &expected_a, &["crashloop"][..]),
        (&out_b, &got_b, &expected_b, &["crashloop", "info"][..]),
    ] {
        let by_id = by_ce_id(got);
        assert_eq!(
            got.len(),
            expected.len(),
            "{topic}: {} records, expected {} (log: {})",
            got.len(),
            expected.len(),
            read_log(&log)
        );
        for (id, value) in expected {
            let records = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{id} missing from {topic}"));
            assert_eq!(records.len(), 1, "{id} duplicated on {topic}");
            let record = records[0];
            assert_eq!(
                record.payload(),
                Some(&value[..]),
                "{id}: payload bytes changed"
            );
            assert!(rules_seen.contains(&header_str(record, rh::RULE).unwrap()));
            assert_eq!(header_str(record, rh::HOPS), Some("1"));
            assert_eq!(header_str(record, "ce_specversion"), Some("1.0"));
            assert_eq!(header_str(record, "ce_correlationid"), Some(id.as_str()));
            assert_eq!(
                record.key(),
                Some(format!("pod-{}", seq_of[id] % 8).as_bytes())
            );
        }
        assert_per_key_order(got, &seq_of);
    }
    assert!(
        got_dlq.is_empty(),
        "nothing should be dead-lettered: {} records",
        got_dlq.len()
    );

    // SIGTERM drains and commits everything before exiting cleanly.
    router.signal("TERM");
    assert_eq!(
        router.wait_exit(Duration::from_secs(20)),
        Some(0),
        "log: {}",
        read_log(&log)
    );
    let committed = committed_offsets(&stack.bootstrap, &group, &input, 3);
    let consumer: rdkafka::consumer::BaseConsumer = reflex_testkit::client_config(&stack.bootstrap)
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer;
    for (p, committed) in committed.iter().enumerate() {
        let (_, high) = consumer
            .fetch_watermarks(&input, p as i32, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            *committed, high,
            "partition {p}: committed offset after drain"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_a_reason_and_the_router_keeps_running() {
    let stack = stack();
    let input = unique("bad-in");
    let out = unique("bad-out");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        &format!(
            "[[rule]]\nname = \"all\"\nwhen = 'payload.restart_count >= 0'\nto = [\"{out}\"]\n"
        ),
    );
    let producer = producer(&stack.bootstrap);

    let good = pod_event(schema_id, "api", 1, 4, "CrashLoopBackOff");
    let mut corrupt = good[..5].to_vec();
    corrupt.extend_from_slice(&[0xff; 12]); // right framing, datum that does not decode
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, OwnedHeaders, &str, &str)> = vec![
        (
            "undecodable",
            corrupt,
            ce_headers("bad-1", "t", "s"),
            "poison",
            "does not decode",
        ),
        (
            "unknown-id",
            unknown_id,
            ce_headers("bad-2", "t", "s"),
            "schema",
            "999999",
        ),
        (
            "no-ce",
            good.clone(),
            OwnedHeaders::new().insert(Header {
                key: "ce_id",
                value: Some("bad-3"),
            }),
            "permanent",
            "ce_specversion",
        ),
        (
            "json",
            br#"{"pod":"api"}"#.to_vec(),
            ce_headers("bad-4", "t", "s"),
            "poison",
            "magic byte",
        ),
    ];
    for (_, value, headers, _, _) in &cases {
        produce(&producer, &input, Some("k"), value, headers.clone()).await;
    }
    produce(
        &producer,
        &input,
        Some("k"),
        &good,
        ce_headers("good-1", "t", "s"),
    )
    .await;

    let log = std::env::temp_dir().join(unique("router-log"));
    let _router = spawn_router(&stack, &unique("router"), &input, &rules, &log);

    let routed = read_topic(
        &stack.bootstrap,
        &out,
        1,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(
        routed.len(),
        1,
        "the good event after the bad ones is routed (log: {})",
        read_log(&log)
    );
    assert_eq!(header_str(&routed[0], "ce_id"), Some("good-1"));

    let dead = read_topic(
        &stack.bootstrap,
        &dlq,
        cases.len(),
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(dead.len(), cases.len());
    let log_text = read_log(&log);
    for ((name, value, _, class, hint), record) in cases.iter().zip(&dead) {
        assert_eq!(header_str(record, rh::ERROR_CLASS), Some(*class), "{name}");
        let message = header_str(record, rh::ERROR_MESSAGE).unwrap();
        assert!(
            message.contains(hint),
            "{name}: `{message}` should mention `{hint}`"
        );
        assert_eq!(
            record.payload(),
            Some(&value[..]),
            "{name}: dead letter keeps the bytes"
        );
        assert_eq!(header_str(record, rh::ORIGINAL_TOPIC), Some(input.as_str()));
        assert_eq!(header_str(record, rh::ORIGINAL_PARTITION), Some("0"));
        assert!(header_str(record, rh::ORIGINAL_OFFSET).is_some());
        assert_eq!(header_str(record, rh::ERROR_STAGE), Some("router"));
        // One clear log line per dead letter, with its class and reason.
        assert!(
            log_text.lines().any(|l| l.contains("event dead-lettered")
                && l.contains(&format!("\"error_class\":\"{class}\""))
                && l.contains(hint)),
            "{name}: no log line for it in:\n{log_text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_missing_field_stops_start_up_with_file_line_and_rule() {
    let stack = stack();
    let input = unique("strict-in");
    create_topics(&stack.bootstrap, &[(&input, 1)]).await;
    register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        "[[rule]]\nname = \"ok\"\nwhen = 'payload.restart_count > 2'\nto = [\"x\"]\n\n[[rule]]\nname = \"typo\"\nwhen = 'payload.restarts > 2'\nto = [\"x\"]\n",
    );
    let log = std::env::temp_dir().join(unique("router-log"));
    let mut router = spawn_router(&stack, &unique("router"), &input, &rules, &log);
    let code = router.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1));
    let text = read_log(&log);
    let expected = format!(
        "{}:8: rule `typo`: payload.restarts does not exist",
        rules.display()
    );
    assert!(
        text.contains(&expected),
        "expected `{expected}` in:\n{text}"
    );

    // A rule file that does not parse names its line too.
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"a\"\nwhen = 'ce.type == '\nto = [\"x\"]\n",
    )
    .unwrap();
    let mut router = spawn_router(&stack, &unique("router"), &input, &rules, &log);
    assert_eq!(router.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(read_log(&log).contains(&format!(
        "{}:3: rule `a`: condition does not compile",
        rules.display()
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_never_commits_past_an_unacknowledged_output() {
    let stack = stack();
    let input = unique("kill-in");
    let out = unique("kill-out");
    create_topics(
        &stack.bootstrap,
        &[(&input, 3), (&out, 3), (&format!("{input}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        &format!("[[rule]]\nname = \"all\"\nwhen = 'payload.seq >= 0'\nto = [\"{out}\"]\n"),
    );

    // Produce without awaiting each ack (fast), then wait for all of them.
    const N: i64 = 20_000;
    let producer = producer(&stack.bootstrap);
    let mut pending = Vec::new();
    let mut input_offsets: HashMap<(i32, i64), String> = HashMap::new();
    for i in 0..N {
        let id = format!("evt-{i}");
        let pod = format!("pod-{}", i % 50);
        let value = pod_event(schema_id, &pod, i, 5, "CrashLoopBackOff");
        let record = rdkafka::producer::FutureRecord::to(&input)
            .key(&pod)
            .payload(&value)
            .headers(ce_headers(&id, "t", "s"));
        let delivery = reflex_testkit::enqueue(&producer, record).await;
        pending.push((id, delivery));
    }
    for (id, delivery) in pending {
        let d = delivery
            .await
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        input_offsets.insert((d.partition, d.offset), id);
    }

    // A static member (group.instance.id), as a StatefulSet pod restarts: the restarted process
    // takes its partitions back at once. Dynamic members: tests/actor_e2e.rs.
    let group = unique("router");
    let instance = unique("router-0");
    let log = std::env::temp_dir().join(unique("router-log"));
    let mut router = spawn_router_instance(&stack, &group, &instance, &input, &rules, &log);
    // Kill once half of the output exists and the group has committed something.
    let consumer: rdkafka::consumer::BaseConsumer = reflex_testkit::client_config(&stack.bootstrap)
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let produced: i64 = (0..3)
            .map(|p| {
                consumer
                    .fetch_watermarks(&out, p, Duration::from_secs(5))
                    .unwrap()
                    .1
            })
            .sum();
        let committed: i64 = committed_offsets(&stack.bootstrap, &group, &input, 3)
            .iter()
            .filter(|o| **o > 0)
            .sum();
        if produced >= N / 2 && committed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "router made no progress: {}",
            read_log(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.signal("KILL");
    router.wait_exit(Duration::from_secs(10));

    let committed = committed_offsets(&stack.bootstrap, &group, &input, 3);
    let before_restart = read_topic(
        &stack.bootstrap,
        &out,
        usize::MAX,
        Duration::from_secs(5),
        Duration::ZERO,
    )
    .await;
    assert!(
        (before_restart.len() as i64) < N,
        "the kill must land mid-stream ({} of {N} routed)",
        before_restart.len()
    );
    let present = by_ce_id(&before_restart);
    let mut checked = 0;
    for ((partition, offset), id) in &input_offsets {
        if *offset < committed[*partition as usize] {
            assert!(present.contains_key(id), "offset {offset} of partition {partition} was committed but its output {id} was never acknowledged");
            checked += 1;
        }
    }
    assert!(checked > 0, "the check covered no committed event");

    // Restart: everything arrives at least once.
    let _router = spawn_router_instance(&stack, &group, &instance, &input, &rules, &log);
    let expected_ids: std::collections::HashSet<&String> = input_offsets.values().collect();
    let mut seen = std::collections::HashSet::new();
    let mut scanned = 0;
    let all = read_topic_until(
        &stack.bootstrap,
        &out,
        Duration::from_secs(120),
        Duration::from_secs(1),
        |got| {
            for m in &got[scanned..] {
                if let Some(id) = header_str(m, "ce_id") {
                    seen.insert(id.to_string());
                }
            }
            scanned = got.len();
            expected_ids.iter().all(|id| seen.contains(id.as_str()))
        },
    )
    .await;
    let ids = by_ce_id(&all);
    let missing: Vec<_> = input_offsets
        .values()
        .filter(|id| !ids.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "lost after restart: {missing:?} (log: {})",
        read_log(&log)
    );
    let duplicates = all.len() - ids.len();
    println!("killed after {} outputs; {checked} committed events verified; {duplicates} duplicates redelivered after restart", before_restart.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_carry_spring_and_connect_headers_too() {
    use reflex_core::dead_letter::{DeadLetter, Dialect};
    let stack = stack();
    let input = unique("compat-in");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 1), (&dlq, 1)]).await;
    register_pod_schema(&stack, &input).await;
    let rules = write_rules(
        "rules",
        "[[rule]]\nname = \"all\"\nwhen = 'true'\nto = [\"nowhere\"]\n",
    );
    let producer = producer(&stack.bootstrap);
    let (_, offset) = produce(
        &producer,
        &input,
        Some("k"),
        b"not avro",
        ce_headers("c-1", "t", "s"),
    )
    .await;

    let log = std::env::temp_dir().join(unique("router-log"));
    let env = [(
        "REFLEX_RUNTIME__DEAD_LETTER_COMPAT",
        "[\"spring\", \"connect\"]",
    )];
    let _router = spawn_router_with_env(&stack, &unique("router"), "", &input, &rules, &log, &env);
    let dead = read_topic(
        &stack.bootstrap,
        &dlq,
        1,
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await;
    assert_eq!(dead.len(), 1, "log: {}", read_log(&log));
    let record = &dead[0];
    assert_eq!(
        header_str(record, "kafka_dlt-original-topic"),
        Some(input.as_str())
    );
    assert_eq!(
        header_str(record, "__connect.errors.topic"),
        Some(input.as_str())
    );
    assert_eq!(
        header_str(record, "__connect.errors.offset"),
        Some(offset.to_string().as_str())
    );
    // Spring's offset is a big-endian long, as Spring tooling expects.
    let mut headers = reflex_core::Headers::new();
    use rdkafka::message::Headers as _;
    for h in record.headers().unwrap().iter() {
        if let Some(v) = h.value {
            headers.push(h.key.to_owned(), v.to_vec());
        }
    }
    assert_eq!(
        headers.get("kafka_dlt-original-offset"),
        Some(&offset.to_be_bytes()[..])
    );
    // With Reflex's headers removed, the Spring set alone still describes the failure.
    headers
        .0
        .retain(|h| !h.key.starts_with("reflex-") && !h.key.starts_with("__connect"));
    let read = DeadLetter::from_headers(&headers).expect("spring headers");
    assert_eq!(read.dialect, Dialect::Spring);
    assert_eq!(
        (read.original_topic.as_str(), read.original_offset),
        (input.as_str(), Some(offset))
    );
    assert!(read.message.contains("magic byte"), "{}", read.message);

    // An unknown dialect stops the worker at start (a configuration error) with the setting
    // named and the accepted values listed.
    let mut bad = spawn_router_with_env(
        &stack,
        &unique("router"),
        "",
        &input,
        &rules,
        &log,
        &[("REFLEX_RUNTIME__DEAD_LETTER_COMPAT", "[\"kafka-ui\"]")],
    );
    assert_eq!(bad.wait_exit(Duration::from_secs(20)), Some(2));
    let text = read_log(&log);
    assert!(
        text.contains("unknown variant: found `kafka-ui`")
            && text.contains("`spring`, `connect`")
            && text.contains("runtime.dead_letter_compat"),
        "{text}"
    );
}
