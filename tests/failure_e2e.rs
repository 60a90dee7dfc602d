//! Failure handling end to end (issue #4): the error taxonomy's dispositions with every header,
//! non-blocking retries through the dead-letter reprocessor, and per-key parking that keeps a
//! key's order while other keys flow. Real broker, Redis and registry; the actor and the
//! reprocessor run as separate processes; the target is an HTTP server honouring
//! `Idempotency-Key` that the test scripts to fail.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::Message;
use reflex_core::headers::reflex as rh;
use reflex_testkit::{
    ce_headers, create_topics, header_str, producer, read_topic_until, stack, unique, Stack,
};

struct Topics {
    input: String,
    dlq: String,
    exhausted: String,
    outcomes: String,
    blast_held: String,
}

async fn topics(stack: &Stack, partitions: i32) -> Topics {
    let input = unique("fail-requests");
    let t = Topics {
        dlq: format!("{input}.dlq"),
        exhausted: format!("{input}.exhausted"),
        outcomes: unique("fail-outcomes"),
        blast_held: unique("fail-blast"),
        input,
    };
    create_topics(
        &stack.bootstrap,
        &[
            (&t.input, partitions),
            (&t.dlq, 2),
            (&t.exhausted, 1),
            (&t.outcomes, 1),
            (&t.blast_held, 1),
        ],
    )
    .await;
    t
}

/// Produces `(key, ce_id, value)` records in order, each acknowledged before the next.
async fn publish(stack: &Stack, topic: &str, records: &[(String, String, Vec<u8>)]) {
    let producer = producer(&stack.bootstrap);
    for (key, id, value) in records {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .headers(ce_headers(
                        id,
                        "dev.reflex.action.requested",
                        "test/failure",
                    )),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

fn by_id<'a>(messages: &'a [OwnedMessage], id: &str) -> Vec<&'a OwnedMessage> {
    messages
        .iter()
        .filter(|m| header_str(m, "ce_id") == Some(id))
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DEAD_LETTER_HEADERS: [&str; 10] = [
    rh::ERROR_CLASS,
    rh::ERROR_MESSAGE,
    rh::ERROR_STAGE,
    rh::ERROR_WORKER,
    rh::ERROR_ATTEMPTS,
    rh::ERROR_FIRST_FAILURE_MS,
    rh::ORIGINAL_TOPIC,
    rh::ORIGINAL_PARTITION,
    rh::ORIGINAL_OFFSET,
    rh::ORIGINAL_TIMESTAMP_MS,
];

/// A poison record, an unknown schema id, a permanent action failure (HTTP 400) and a transient
/// one (HTTP 503 every time) each end where the taxonomy says, with every header; the transient
/// one is delivered again by the reprocessor until its attempts run out, then moved to
/// `<topic>.exhausted`; the actor keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_class_ends_where_the_taxonomy_says() {
    let stack = stack();
    let t = topics(&stack, 1).await;
    let codec = action_request_codec(&stack, &t.input).await;
    let (target, addr) = Target::start().await;
    let log = std::env::temp_dir().join(unique("failure-actor.log"));
    let re_log = std::env::temp_dir().join(unique("failure-reprocessor.log"));
    let _actor = spawn_actor(
        &stack,
        &unique("failure-actor"),
        "",
        &t.input,
        &restart_actor_config(&t.outcomes, &t.blast_held, addr, "breaker_failures = 1000"),
        &log,
        &[("REFLEX_RUNTIME__REDELIVERY_BACKOFF", "200ms")],
    );
    let _reprocessor = spawn_reprocessor(
        &stack,
        &unique("failure-reprocessor"),
        &t.dlq,
        &re_log,
        &[("REFLEX_REPROCESSOR__MAX_REDELIVERIES", "2")],
    );

    let permanent = action_request("evt-permanent", "pod-permanent");
    let transient = action_request("evt-transient", "pod-transient");
    let good = action_request("evt-good", "pod-good");
    target.fail(&permanent.idempotency_key, 400, 1000);
    target.fail(&transient.idempotency_key, 503, 1000);
    let mut unknown_id = vec![0u8, 0, 0, 0x7f, 0x3f];
    unknown_id.extend_from_slice(b"\x02xx");
    publish(
        &stack,
        &t.input,
        &[
            (
                "k-poison".into(),
                "evt-poison".into(),
                b"not avro at all".to_vec(),
            ),
            ("k-schema".into(), "evt-schema".into(), unknown_id),
            (
                "k-permanent".into(),
                "evt-permanent".into(),
                codec.encode(&permanent).unwrap(),
            ),
            (
                "k-transient".into(),
                "evt-transient".into(),
                codec.encode(&transient).unwrap(),
            ),
            (
                "k-good".into(),
                "evt-good".into(),
                codec.encode(&good).unwrap(),
            ),
        ],
    )
    .await;

    // The transient one: first failure plus two redeliveries, then exhausted.
    let exhausted = read_topic_until(
        &stack.bootstrap,
        &t.exhausted,
        Duration::from_secs(60),
        Duration::from_millis(500),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(
        exhausted.len(),
        1,
        "actor log: {}\nreprocessor log: {}",
        read_log(&log),
        read_log(&re_log)
    );
    assert_eq!(header_str(&exhausted[0], "ce_id"), Some("evt-transient"));
    assert!(header_str(&exhausted[0], rh::ERROR_MESSAGE)
        .unwrap()
        .contains("gave up after 2 redeliveries"));

    let dlq = read_topic_until(
        &stack.bootstrap,
        &t.dlq,
        Duration::from_secs(30),
        Duration::from_millis(500),
        |got| got.len() >= 6,
    )
    .await;
    let expect = [
        ("evt-poison", "poison", 1),
        ("evt-schema", "schema", 1),
        ("evt-permanent", "permanent", 1),
        ("evt-transient", "transient", 3),
    ];
    for (id, class, count) in expect {
        let records = by_id(&dlq, id);
        assert_eq!(records.len(), count, "{id}: dead letters");
        for (n, record) in records.iter().enumerate() {
            for header in DEAD_LETTER_HEADERS {
                assert!(
                    header_str(record, header).is_some(),
                    "{id}: {header} missing"
                );
            }
            assert_eq!(header_str(record, rh::ERROR_CLASS), Some(class), "{id}");
            assert_eq!(header_str(record, rh::ERROR_STAGE), Some("actor"));
            assert_eq!(
                header_str(record, rh::ORIGINAL_TOPIC),
                Some(t.input.as_str())
            );
            let retryable = class == "transient";
            assert_eq!(
                header_str(record, rh::RETRY_NOT_BEFORE_MS).is_some(),
                retryable,
                "{id}: only retryable classes are scheduled for redelivery"
            );
            if retryable && n > 0 {
                assert_eq!(
                    header_str(record, rh::REDELIVERY_ATTEMPT),
                    Some(n.to_string().as_str()),
                    "redelivery {n} failed again and says so"
                );
                // It keeps the time its trouble began.
                assert_eq!(
                    header_str(record, rh::ERROR_FIRST_FAILURE_MS),
                    header_str(records[0], rh::ERROR_FIRST_FAILURE_MS)
                );
            }
        }
    }
    // The redelivered copies went back to the original topic and partition.
    let input = read_topic_until(
        &stack.bootstrap,
        &t.input,
        Duration::from_secs(10),
        Duration::from_millis(300),
        |got| got.len() >= 8,
    )
    .await;
    let redelivered = by_id(&input, "evt-transient");
    assert_eq!(redelivered.len(), 3, "original + two redeliveries");
    assert!(redelivered[1..]
        .iter()
        .all(|m| m.partition() == redelivered[0].partition()));
    // The release marker for the parked key follows them.
    assert!(input
        .iter()
        .any(|m| m.payload().is_none() && header_str(m, rh::RELEASE) == Some("evt-transient")));

    // Permanent: tried once, never again; the good one applied; the actor still runs.
    let snapshot = target.snapshot();
    assert_eq!(snapshot[&permanent.idempotency_key], (1, 0));
    assert_eq!(snapshot[&transient.idempotency_key].0, 3);
    assert_eq!(snapshot[&good.idempotency_key], (1, 1));
    let late = action_request("evt-late", "pod-late");
    publish(
        &stack,
        &t.input,
        &[(
            "k-late".into(),
            "evt-late".into(),
            codec.encode(&late).unwrap(),
        )],
    )
    .await;
    wait_until("the late request's effect", Duration::from_secs(30), || {
        target.snapshot().get(&late.idempotency_key).map(|e| e.1) == Some(1)
    })
    .await;
}

/// Keys A and B interleaved on one partition; A's third request fails transiently twice. A's
/// later requests park behind it and every A effect happens in order after the retries, while
/// all of B went through without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_keeps_its_order_and_other_keys_are_never_blocked() {
    let stack = stack();
    let t = topics(&stack, 1).await;
    let codec = action_request_codec(&stack, &t.input).await;
    let (target, addr) = Target::start().await;
    let log = std::env::temp_dir().join(unique("order-actor.log"));
    let re_log = std::env::temp_dir().join(unique("order-reprocessor.log"));
    let group = unique("order-actor");
    let _actor = spawn_actor(
        &stack,
        &group,
        "",
        &t.input,
        &restart_actor_config(&t.outcomes, &t.blast_held, addr, "breaker_failures = 1000"),
        &log,
        &[
            ("REFLEX_RUNTIME__REDELIVERY_BACKOFF", "400ms"),
            ("REFLEX_RUNTIME__STATE_URL", &stack.redis_url),
        ],
    );
    let _reprocessor =
        spawn_reprocessor(&stack, &unique("order-reprocessor"), &t.dlq, &re_log, &[]);

    let mut records = Vec::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    for i in 1..=6 {
        for key in ["A", "B"] {
            let id = format!("{key}{i}");
            let r = action_request(&id, &format!("pod-{id}"));
            keys.insert(r.idempotency_key.clone(), id.clone());
            records.push((key.to_string(), id, codec.encode(&r).unwrap()));
        }
    }
    let a3 = action_request("A3", "pod-A3").idempotency_key;
    target.fail(&a3, 503, 2);
    publish(&stack, &t.input, &records).await;

    wait_until("all 12 effects", Duration::from_secs(60), || {
        target.effects() == 12
    })
    .await;
    let applied: Vec<String> = target.applied().iter().map(|k| keys[k].clone()).collect();
    let a: Vec<&str> = applied
        .iter()
        .filter(|id| id.starts_with('A'))
        .map(String::as_str)
        .collect();
    assert_eq!(
        a,
        ["A1", "A2", "A3", "A4", "A5", "A6"],
        "A in order; applied: {applied:?}\nactor log: {}",
        read_log(&log)
    );
    let position = |id: &str| applied.iter().position(|x| x == id).unwrap();
    assert!(
        position("B6") < position("A3"),
        "B never waited for A's retries: {applied:?}"
    );
    assert_eq!(
        target.snapshot()[&a3],
        (3, 1),
        "A3: two failures, then one effect"
    );
    for (key, (requests, effects)) in target.snapshot() {
        assert_eq!(effects, 1, "{}: {requests} requests", keys[&key]);
    }

    // What parking looked like on the dead-letter topic: A3 twice, A4..A6 parked behind it.
    let dlq = read_topic_until(
        &stack.bootstrap,
        &t.dlq,
        Duration::from_secs(10),
        Duration::from_millis(500),
        |got| got.len() >= 5,
    )
    .await;
    assert_eq!(by_id(&dlq, "A3").len(), 2);
    for id in ["A4", "A5", "A6"] {
        let parked = by_id(&dlq, id);
        assert!(!parked.is_empty(), "{id} parked");
        assert!(parked
            .iter()
            .all(|m| header_str(m, rh::PARKED_BEHIND) == Some("A3")));
    }
    assert!(dlq
        .iter()
        .all(|m| !header_str(m, "ce_id").unwrap().starts_with('B')));
    // Parking is visible in metrics, and the key is free again.
    let metrics_addr = http_address(&log).expect("the actor logs its http_listen address");
    let metrics = scrape(&metrics_addr).await;
    assert!(
        metrics.contains("reflex_parked_keys{stage=\"actor\"} 0"),
        "{metrics}"
    );
    let parked_events =
        metric_value(&metrics, "reflex_parked_events_total{stage=\"actor\"}").unwrap();
    assert!(parked_events >= 3.0, "{parked_events}");
    let mut redis = redis::Client::open(stack.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: HashMap<Vec<u8>, String> =
        redis::AsyncCommands::hgetall(&mut redis, format!("reflex:park:{group}:{}:0", t.input))
            .await
            .unwrap();
    assert!(left.is_empty());
}
