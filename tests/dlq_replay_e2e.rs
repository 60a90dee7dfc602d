//! `reflexctl dlq replay` end to end (issue #4): filters and an exact dry run, the rate limit,
//! exactly-once effects at the target when replaying, other tools' dead letters (Spring Kafka,
//! Kafka Connect), and a replay killed with SIGKILL resuming from its Redis checkpoint.
//! Real broker, Redis, registry, the actor and reflexctl as processes, an HTTP target.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::Message;
use reflex_core::actions::{ActionRequest, AvroCodec};
use reflex_core::headers::{connect, reflex as rh, spring, Headers};
use reflex_core::ErrorClass;
use reflex_runtime::dead_letter::{dead_letter, FailureContext};
use reflex_runtime::{Event, StageError};
use reflex_testkit::{
    create_topics, header_str, producer, read_topic, stack, unique, workspace_bin, Stack,
};

fn request(event_id: &str) -> ActionRequest {
    action_request(event_id, &format!("pod-{event_id}"))
}

fn ce(id: &str) -> Headers {
    let mut h = Headers::new();
    h.push("ce_specversion", "1.0");
    h.push("ce_id", id.to_owned());
    h.push("ce_source", "test/replay");
    h.push("ce_type", "dev.reflex.action.requested");
    h.push(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    h
}

fn kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |acc, h| {
        acc.insert(KafkaHeader {
            key: &h.key,
            value: h.value.as_deref(),
        })
    })
}

/// Writes Reflex dead letters exactly as the runtime does (same function), for requests that
/// were on `original` partition `i % partitions`, to `dlq`.
async fn write_dead_letters(
    stack: &Stack,
    dlq: &str,
    original: &str,
    partitions: i32,
    codec: &AvroCodec<ActionRequest>,
    letters: &[(String, ErrorClass)],
) {
    let producer = producer(&stack.bootstrap);
    let mut sends = Vec::new();
    for (i, (id, class)) in letters.iter().enumerate() {
        let r = request(id);
        let event = Event {
            topic: original.into(),
            partition: i as i32 % partitions,
            offset: i as i64,
            timestamp_ms: Some(1_700_000_000_000 + i as i64),
            key: Some(Bytes::from(r.idempotency_key.clone())),
            payload: Some(Bytes::from(codec.encode(&r).unwrap())),
            headers: ce(id),
        };
        let ctx = FailureContext {
            stage: "actor",
            worker: "actor-1",
            group: "reflex-actor",
            attempts: 1,
            first_failure_ms: 1_700_000_000_000,
            retry_not_before_ms: None,
            dead_letter_suffix: ".dlq",
            compat: &[],
        };
        let out = dead_letter(&event, &StageError::new(*class, "HTTP 400"), &ctx);
        let key = out.key.unwrap();
        let value = out.payload.unwrap();
        sends.push(
            producer
                .send(
                    FutureRecord::to(dlq)
                        .key(key.as_ref())
                        .payload(value.as_ref())
                        .headers(kafka_headers(&out.headers)),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e),
        );
    }
    assert!(sends.iter().all(Result::is_ok), "dead letters written");
}

fn reflexctl(stack: &Stack, args: &[&str]) -> Output {
    let out = Command::new(workspace_bin("reflexctl"))
        .args([
            "--bootstrap",
            &stack.bootstrap,
            "--registry",
            &stack.registry_url,
        ])
        .args(args)
        .env("REFLEX_REDIS_URL", &stack.redis_url)
        .env("USER", "replay-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reflexctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

struct Setup {
    input: String,
    dlq: String,
    audit: String,
    codec: AvroCodec<ActionRequest>,
    target: std::sync::Arc<Target>,
    addr: std::net::SocketAddr,
    _actor: reflex_testkit::ChildGuard,
    log: std::path::PathBuf,
}

/// Topics, the request schema, a target and an actor consuming the original topic.
async fn setup(stack: &Stack, name: &str) -> Setup {
    let input = unique(name);
    let dlq = format!("{input}.dlq");
    let audit = unique("audit");
    let outcomes = unique("outcomes");
    let blast = unique("blast");
    create_topics(
        &stack.bootstrap,
        &[
            (&input, 3),
            (&dlq, 3),
            (&audit, 1),
            (&outcomes, 1),
            (&blast, 1),
        ],
    )
    .await;
    let codec = action_request_codec(stack, &input).await;
    let (target, addr) = Target::start().await;
    let log = std::env::temp_dir().join(unique("replay-actor.log"));
    let actor = spawn_actor(
        stack,
        &unique("replay-actor"),
        "",
        &input,
        &restart_actor_config(&outcomes, &blast, addr, ""),
        &log,
        &[],
    );
    Setup {
        input,
        dlq,
        audit,
        codec,
        target,
        addr,
        _actor: actor,
        log,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 500 dead letters of three classes. A dry run for one class counts exactly and sends
/// nothing; the real replay sends only that class, no faster than the rate, with an audit
/// trail; effects at the target stay exactly once per idempotency key, including for keys
/// applied before the replay and for a second replay of the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_class_dry_run_rate_and_exactly_once_effects() {
    let stack = stack();
    let s = setup(&stack, "replay-requests").await;
    let mut letters = Vec::new();
    for i in 0..500 {
        let class = match i % 5 {
            0 | 1 => ErrorClass::Permanent,
            2 | 3 => ErrorClass::Schema,
            _ => ErrorClass::RateLimited,
        };
        letters.push((format!("r{i}"), class));
    }
    write_dead_letters(&stack, &s.dlq, &s.input, 3, &s.codec, &letters).await;
    let chosen: HashSet<String> = letters
        .iter()
        .filter(|(_, c)| *c == ErrorClass::Permanent)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(chosen.len(), 200);
    // 50 of them were applied already (say, the target fixed itself and a client retried).
    let client = reqwest::Client::new();
    for id in chosen.iter().take(50) {
        let r = request(id);
        let url = format!("http://{}/act/pod-{id}", s.addr);
        let status = client
            .post(url)
            .header("idempotency-key", &r.idempotency_key)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
    }

    let dry = json(&reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &s.dlq,
            "--error-class",
            "permanent",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["matched"], 200, "{dry}");
    assert_eq!(dry["scanned"], 500);
    assert_eq!(dry["delivered"], 0);
    let input = read_topic(
        &stack.bootstrap,
        &s.input,
        1,
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .await;
    assert!(input.is_empty(), "a dry run sends nothing");

    let started = Instant::now();
    let real = json(&reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &s.dlq,
            "--error-class",
            "permanent",
            "--rate",
            "100",
            "--batch",
            "20",
            "--canary",
            "10",
            "--canary-threshold",
            "0.9",
            "--canary-wait-ms",
            "1000",
            "--audit-topic",
            &s.audit,
            "--json",
        ],
    ));
    let elapsed = started.elapsed();
    assert_eq!(
        (real["matched"].as_u64(), real["delivered"].as_u64()),
        (Some(200), Some(200)),
        "{real}"
    );
    assert_eq!(real["canary_failures"], 0);
    // 200 records at 100/s: the first goes at once, so at least 1.99 s.
    assert!(
        elapsed >= Duration::from_millis(1990),
        "rate limit not applied: {elapsed:?}"
    );

    let input = read_topic(
        &stack.bootstrap,
        &s.input,
        200,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let replay_id = real["replay_id"].as_str().unwrap();
    let sent: Vec<&str> = input
        .iter()
        .map(|m| header_str(m, "ce_id").unwrap())
        .collect();
    assert_eq!(sent.len(), 200);
    assert_eq!(sent.iter().copied().collect::<HashSet<_>>().len(), 200);
    assert!(
        sent.iter().all(|id| chosen.contains(*id)),
        "only the chosen class"
    );
    for m in &input {
        assert_eq!(header_str(m, rh::REPLAY_ID), Some(replay_id));
        assert!(header_str(m, rh::ERROR_CLASS).is_none());
        assert!(header_str(m, "traceparent").is_some(), "trace context kept");
        let i: i32 = header_str(m, "ce_id").unwrap()[1..].parse().unwrap();
        assert_eq!(m.partition(), i % 3, "back to the original partition");
    }

    let keys: HashSet<String> = chosen
        .iter()
        .map(|id| request(id).idempotency_key)
        .collect();
    wait_until(
        "an effect for every replayed key",
        Duration::from_secs(60),
        || {
            let snap = s.target.snapshot();
            keys.iter().all(|k| snap.get(k).map(|e| e.1) == Some(1))
        },
    )
    .await;
    let before_second = s.target.snapshot();
    assert_eq!(
        before_second.len(),
        200,
        "only the chosen keys reached the target; log: {}",
        read_log(&s.log)
    );

    // The same records once more: the actor's idempotency suppresses all of them.
    let again = json(&reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &s.dlq,
            "--error-class",
            "permanent",
            "--audit-topic",
            &s.audit,
            "--json",
        ],
    ));
    assert_eq!(again["delivered"], 200);
    read_topic(
        &stack.bootstrap,
        &s.input,
        400,
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await;
    let metrics_addr = http_address(&s.log).unwrap();
    wait_until_async_dedup(&metrics_addr, 200.0).await;
    for (key, (requests, effects)) in s.target.snapshot() {
        assert_eq!(effects, 1, "{key}");
        assert_eq!(
            requests, before_second[&key].0,
            "{key}: no new request after the second replay"
        );
    }

    // The audit trail: started and completed records for both replays, with who and counts.
    let audit = read_topic(
        &stack.bootstrap,
        &s.audit,
        4,
        Duration::from_secs(10),
        Duration::from_millis(300),
    )
    .await;
    let records: Vec<serde_json::Value> = audit
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    let done = records
        .iter()
        .find(|r| r["replay_id"] == replay_id && r["event"] == "completed")
        .expect("completed audit record");
    assert_eq!(done["who"], "replay-test");
    assert_eq!(done["filter"]["error_classes"][0], "permanent");
    assert_eq!(done["report"]["delivered"], 200);
}

/// Waits until the actor's `/metrics` counts at least `n` suppressed duplicates.
async fn wait_until_async_dedup(addr: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(addr).await;
        let hits: f64 = text
            .lines()
            .filter(|l| l.starts_with("reflex_dedup_hits_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if hits >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {hits} duplicates suppressed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dead letters written by Spring Kafka (binary partition/offset/timestamp headers) and Kafka
/// Connect are inspected by writer and replayed to their original topic and partition, with
/// the other tool's failure headers removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_and_connect_dead_letters_are_inspected_and_replayed() {
    let stack = stack();
    let orders = unique("orders");
    let dlt = format!("{orders}.DLT");
    create_topics(&stack.bootstrap, &[(&orders, 4), (&dlt, 1)]).await;
    let producer = producer(&stack.bootstrap);
    for i in 0..20i32 {
        let mut h = ce(&format!("o{i}"));
        if i < 10 {
            h.push(spring::ORIGINAL_TOPIC, orders.clone());
            h.push(spring::ORIGINAL_PARTITION, (i % 4).to_be_bytes().to_vec());
            h.push(spring::ORIGINAL_OFFSET, (i as i64).to_be_bytes().to_vec());
            h.push(
                spring::ORIGINAL_TIMESTAMP,
                1_700_000_000_000i64.to_be_bytes().to_vec(),
            );
            h.push(spring::EXCEPTION_FQCN, "org.example.OrderRejected");
            h.push(spring::EXCEPTION_MESSAGE, "price missing");
        } else {
            h.push(connect::TOPIC, orders.clone());
            h.push(connect::PARTITION, (i % 4).to_string());
            h.push(connect::OFFSET, i.to_string());
            h.push(connect::CONNECTOR_NAME, "orders-sink");
            h.push(connect::STAGE, "VALUE_CONVERTER");
            h.push(connect::EXCEPTION_MESSAGE, "bad json");
        }
        let value = format!("order-{i}");
        producer
            .send(
                FutureRecord::to(&dlt)
                    .key(&format!("k{i}"))
                    .payload(&value)
                    .headers(kafka_headers(&h)),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let inspect = json(&reflexctl(
        &stack,
        &["dlq", "inspect", "--topic", &dlt, "--json"],
    ));
    assert_eq!(inspect["records"], 20, "{inspect}");
    assert_eq!(inspect["by_writer"]["spring"], 10);
    assert_eq!(inspect["by_writer"]["connect"], 10);
    assert!(inspect["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["original_topic"] == orders.as_str()));

    let audit = unique("audit");
    create_topics(&stack.bootstrap, &[(&audit, 1)]).await;
    let report = json(&reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &dlt,
            "--original-topic",
            &orders,
            "--audit-topic",
            &audit,
            "--json",
        ],
    ));
    assert_eq!(report["delivered"], 20, "{report}");
    let back = read_topic(
        &stack.bootstrap,
        &orders,
        20,
        Duration::from_secs(20),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(back.len(), 20);
    for m in &back {
        let id = header_str(m, "ce_id").unwrap();
        let i: i32 = id[1..].parse().unwrap();
        assert_eq!(m.partition(), i % 4, "{id}: original partition");
        assert_eq!(m.payload(), Some(format!("order-{i}").as_bytes()));
        assert_eq!(m.key(), Some(format!("k{i}").as_bytes()));
        let names: Vec<String> = rdkafka::message::Headers::iter(m.headers().unwrap())
            .map(|h| h.key.to_string())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("kafka_dlt-") && !n.starts_with("__connect.errors.")),
            "{names:?}"
        );
        assert!(header_str(m, rh::REPLAY_ID).is_some());
    }
}

/// A replay killed with SIGKILL mid-way resumes from its Redis checkpoint: nothing is lost,
/// at most the one unacknowledged batch is sent twice, and the target still sees one effect
/// per idempotency key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_resumes_from_its_checkpoint() {
    let stack = stack();
    let s = setup(&stack, "resume-requests").await;
    let letters: Vec<(String, ErrorClass)> = (0..300)
        .map(|i| (format!("k{i}"), ErrorClass::Permanent))
        .collect();
    write_dead_letters(&stack, &s.dlq, &s.input, 3, &s.codec, &letters).await;
    let replay_id = unique("replay-resume");
    let log = std::env::temp_dir().join(unique("replay-killed.log"));
    let child = reflex_testkit::ChildGuard::spawn(
        "reflexctl dlq replay",
        Command::new(workspace_bin("reflexctl"))
            .args(["--bootstrap", &stack.bootstrap])
            .args([
                "dlq", "replay", "--topic", &s.dlq, "--rate", "100", "--batch", "10",
            ])
            .args(["--audit-topic", &s.audit, "--replay-id", &replay_id])
            .env("REFLEX_REDIS_URL", &stack.redis_url)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    // Let it deliver part of the 300 (3 s at 100/s), then kill it without warning.
    let partial = read_topic(
        &stack.bootstrap,
        &s.input,
        100,
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await;
    assert!(partial.len() >= 100);
    child.signal("KILL");
    drop(child);
    let before = read_topic(
        &stack.bootstrap,
        &s.input,
        usize::MAX,
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .await;
    assert!(
        before.len() < 300,
        "killed before the end ({} sent)",
        before.len()
    );

    // A resume needs a checkpoint written by the same id: the killed run left one.
    let resumed = json(&reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &s.dlq,
            "--audit-topic",
            &s.audit,
            "--replay-id",
            &replay_id,
            "--json",
        ],
    ));
    assert_eq!(resumed["resumed"], true);
    let all = read_topic(
        &stack.bootstrap,
        &s.input,
        300,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &all {
        *counts.entry(header_str(m, "ce_id").unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 300, "every dead letter delivered");
    let twice = counts.values().filter(|c| **c > 1).count();
    assert!(
        twice <= 10,
        "{twice} records sent twice: more than the one batch in flight"
    );
    assert_eq!(
        resumed["matched"].as_u64().unwrap() as usize,
        300 - (before.len() - twice),
        "the resume scanned only what the checkpoint had not covered: {resumed}"
    );
    let keys: HashSet<String> = letters
        .iter()
        .map(|(id, _)| request(id).idempotency_key)
        .collect();
    wait_until("one effect per key", Duration::from_secs(60), || {
        let snap = s.target.snapshot();
        keys.iter().all(|k| snap.get(k).map(|e| e.1) == Some(1))
    })
    .await;
    assert!(s
        .target
        .snapshot()
        .values()
        .all(|(_, effects)| *effects == 1));
    // Resuming a completed replay does nothing.
    let out = reflexctl(
        &stack,
        &[
            "dlq",
            "replay",
            "--topic",
            &s.dlq,
            "--replay-id",
            &replay_id,
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already completed"));
}
