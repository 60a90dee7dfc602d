//! Stateful rules end to end: the router binary on the real broker with its windows in the real
//! Redis. Each kind fires exactly the expected (rule, group, window); a SIGKILL mid-window with
//! a second replica joining gives the same firings as a straight run; an out-of-order input
//! within the lateness gives the in-order firings, and an event beyond it is dead-lettered.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedMessage};
use reflex_core::headers::reflex as rh;
use reflex_testkit::{
    ce_headers, committed_offsets, create_topics, header_str, producer, read_topic,
    read_topic_until, stack, unique, ChildGuard, Stack,
};

/// (rule, group, window start, window end) of one firing.
type Firing = (String, String, String, String);

fn firing_of(m: &OwnedMessage) -> Firing {
    let h = |name: &str| header_str(m, name).unwrap_or_default().to_string();
    (
        h(rh::RULE),
        h(rh::GROUP),
        h(rh::WINDOW_START),
        h(rh::WINDOW_END),
    )
}

/// Firings by identity, checking that every copy of one firing carries the same `ce_id` (a
/// copy is a re-emission after a crash, which the actor's idempotency claim folds into one).
fn firings(messages: &[OwnedMessage]) -> BTreeSet<Firing> {
    let mut ids: HashMap<Firing, String> = HashMap::new();
    for m in messages {
        let id = header_str(m, "ce_id").unwrap_or_default().to_string();
        let f = firing_of(m);
        if let Some(first) = ids.get(&f) {
            assert_eq!(
                first, &id,
                "two copies of firing {f:?} with different ce_ids"
            );
        }
        ids.insert(f, id);
    }
    ids.into_keys().collect()
}

fn at(base_ms: i64, offset_ms: i64) -> String {
    reflex_router::stateful::rfc3339(base_ms + offset_ms)
}

/// Publishes `(pod, event type, ms after base, id)` in order, with `ce_time` set.
async fn publish(
    stack: &Stack,
    topic: &str,
    schema_id: u32,
    base_ms: i64,
    events: &[(String, &str, i64, String)],
) {
    let producer = producer(&stack.bootstrap);
    let mut waits = Vec::new();
    for (seq, (pod, ty, offset, id)) in events.iter().enumerate() {
        let value = pod_event(schema_id, pod, seq as i64, 5, "CrashLoopBackOff");
        let time = at(base_ms, *offset);
        let headers = ce_headers(id, ty, "test/stateful").insert(Header {
            key: "ce_time",
            value: Some(&time),
        });
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(pod)
            .payload(&value)
            .headers(headers);
        let delivery = reflex_testkit::enqueue(&producer, record).await;
        waits.push(delivery);
    }
    for w in waits {
        w.await
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

fn spawn_stateful_router(
    stack: &Stack,
    group: &str,
    input: &str,
    rules: &Path,
    prefix: &str,
    log: &Path,
) -> ChildGuard {
    spawn_router_with_env(
        stack,
        group,
        "",
        input,
        rules,
        log,
        &[
            ("REFLEX_RUNTIME__STATE_URL", &stack.redis_url),
            ("REFLEX_ROUTER__STATE_PREFIX", prefix),
            ("REFLEX_ROUTER__TIMER_DELAY", "1s"),
            ("REFLEX_ROUTER__TIMER_INTERVAL", "200ms"),
        ],
    )
}

const KINDS: &str = r#"
[[rule]]
name = "throttled"
when = 'ce.type == "t.throttle"'
group_by = 'payload.pod'
throttle = { once_within = "10s" }
to = ["OUT"]

[[rule]]
name = "threshold"
when = 'ce.type == "t.threshold"'
group_by = 'payload.pod'
threshold = { events = 3, within = "10s" }
to = ["OUT"]

[[rule]]
name = "both"
when = 'ce.type in ["t.crash", "t.errors"]'
group_by = 'payload.pod'
all = { conditions = ['ce.type == "t.crash"', 'ce.type == "t.errors"'], within = "10s" }
to = ["OUT"]

[[rule]]
name = "no-recovery"
when = 'ce.type == "t.down"'
group_by = 'payload.pod'
absent = { recovery = 'ce.type == "t.up"', within = "5s" }
to = ["OUT"]

[[rule]]
name = "quiet"
when = 'ce.type == "t.burst"'
group_by = 'payload.pod'
throttle = { once_after = "3s" }
to = ["OUT"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_kind_fires_exactly_the_expected_windows() {
    let stack = stack();
    let input = unique("kinds-in");
    let out = unique("kinds-out");
    create_topics(
        &stack.bootstrap,
        &[(&input, 3), (&out, 3), (&format!("{input}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let rules = write_rules("stateful-kinds", &KINDS.replace("OUT", &out));
    let base = chrono::Utc::now().timestamp_millis();
    let s = 1000;
    let mut events: Vec<(String, &str, i64, String)> = Vec::new();
    let mut push = |pod: &str, ty: &'static str, offset: i64| {
        let id = format!("{pod}-{ty}-{offset}");
        events.push((pod.to_string(), ty, offset, id));
    };
    // throttle once_within 10 s: pod a every second for 13 s, pod b twice.
    for i in 0..13 {
        push("a", "t.throttle", i * s);
    }
    push("b", "t.throttle", 0);
    push("b", "t.throttle", 5 * s);
    // threshold 3 within 10 s: c reaches it (and once more after), d does not.
    for offset in [0, 2 * s, 4 * s, 6 * s, 20 * s] {
        push("c", "t.threshold", offset);
    }
    push("d", "t.threshold", 0);
    push("d", "t.threshold", 2 * s);
    // all (crash and errors within 10 s): e yes, f too far apart.
    push("e", "t.crash", 0);
    push("e", "t.errors", 5 * s);
    push("f", "t.crash", 0);
    push("f", "t.errors", 30 * s);
    // absent (no recovery within 5 s): g recovers, h does not (a timer fires it).
    push("g", "t.down", 0);
    push("g", "t.up", 2 * s);
    push("h", "t.down", 0);
    // once_after 3 s: a burst of 4 events for i; it fires once the pod is quiet.
    for i in 0..4 {
        push("i", "t.burst", i * 500);
    }
    publish(&stack, &input, schema_id, base, &events).await;

    let log = std::env::temp_dir().join(unique("router-log"));
    let prefix = unique("stateful-kinds");
    let _router = spawn_stateful_router(&stack, &unique("router"), &input, &rules, &prefix, &log);

    let w = |rule: &str, group: &str, start: i64, end: i64| {
        (
            rule.to_string(),
            group.to_string(),
            at(base, start),
            at(base, end),
        )
    };
    let expected: BTreeSet<Firing> = [
        w("throttled", "a", 0, 10 * s),
        w("throttled", "a", 10 * s, 20 * s),
        w("throttled", "b", 0, 10 * s),
        w("threshold", "c", 0, 10 * s),
        w("both", "e", 0, 10 * s),
        w("no-recovery", "h", 0, 5 * s),
        w("quiet", "i", 0, 1500 + 3 * s),
    ]
    .into();
    // Timers fire by the wall clock: h's deadline and i's quiet period end a few seconds after
    // the base; wait for them, then a little more for anything unexpected.
    let got = read_topic(
        &stack.bootstrap,
        &out,
        expected.len(),
        Duration::from_secs(60),
        Duration::from_secs(3),
    )
    .await;
    let fired = firings(&got);
    assert_eq!(fired, expected, "log: {}", read_log(&log));
    assert_eq!(got.len(), expected.len(), "no firing twice");
    // What fed the windows travels with the firing.
    let c = got.iter().find(|m| firing_of(m).1 == "c").expect("c fired");
    assert_eq!(header_str(c, rh::WINDOW_EVENTS), Some("3"));
    assert_eq!(
        header_str(c, rh::FED_BY),
        Some("c-t.threshold-0,c-t.threshold-2000,c-t.threshold-4000")
    );
    let h = got.iter().find(|m| firing_of(m).1 == "h").unwrap();
    assert_eq!(header_str(h, rh::FIRED_BY), Some("timer"));
    assert_eq!(
        header_str(h, "ce_id"),
        Some("h-t.down-0"),
        "the trigger is forwarded"
    );
    let i = got.iter().find(|m| firing_of(m).1 == "i").unwrap();
    assert_eq!(header_str(i, rh::WINDOW_EVENTS), Some("4"));
    assert_eq!(
        header_str(i, "ce_id"),
        Some("i-t.burst-1500"),
        "the last event of the burst"
    );

    // Suppressed events are counted per rule and reason.
    let addr = http_address(&log).expect("the router logs its /metrics address");
    {
        let metrics = scrape(&addr).await;
        let series = |rule: &str, reason: &str| {
            metric_value(
                &metrics,
                &format!("reflex_rule_suppressed_total{{rule=\"{rule}\",reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(series("throttled", "throttled"), Some(12.0), "{metrics}");
        assert_eq!(series("no-recovery", "recovered"), Some(1.0), "{metrics}");
    }
}

/// 100 pods × 100 events, 100 ms apart in event time, through a throttle and a threshold.
fn many_events() -> Vec<(String, &'static str, i64, String)> {
    let mut events = Vec::new();
    for seq in 0..100i64 {
        for pod in 0..100 {
            let pod = format!("pod-{pod}");
            let id = format!("{pod}-{seq}");
            events.push((pod, "t.crash", seq * 100, id));
        }
    }
    events
}

const KILL_RULES: &str = r#"
[[rule]]
name = "restart"
when = 'ce.type == "t.crash"'
group_by = 'payload.pod'
throttle = { once_within = "3s" }
to = ["OUT"]
continue = true

[[rule]]
name = "burst"
when = 'ce.type == "t.crash"'
group_by = 'payload.pod'
threshold = { events = 10, within = "2s" }
to = ["OUT"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_window_and_a_second_replica_give_the_straight_firings() {
    let stack = stack();
    let schema_events = many_events();
    let base = chrono::Utc::now().timestamp_millis();
    // 100 pods: throttle fires at 0, 3, 6, 9 s; threshold at the 10th event of 0-2, 2-4, ... s.
    let expected_count = 100 * 4 + 100 * 5;

    // Straight run.
    let (in_a, out_a) = (unique("straight-in"), unique("straight-out"));
    create_topics(
        &stack.bootstrap,
        &[(&in_a, 3), (&out_a, 3), (&format!("{in_a}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &in_a).await;
    publish(&stack, &in_a, schema_id, base, &schema_events).await;
    let rules_a = write_rules("kill-a", &KILL_RULES.replace("OUT", &out_a));
    let log_a = std::env::temp_dir().join(unique("router-straight"));
    let router_a = spawn_stateful_router(
        &stack,
        &unique("straight"),
        &in_a,
        &rules_a,
        &unique("straight"),
        &log_a,
    );
    let straight = read_topic(
        &stack.bootstrap,
        &out_a,
        expected_count,
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await;
    drop(router_a);
    let straight = firings(&straight);
    assert_eq!(straight.len(), expected_count, "log: {}", read_log(&log_a));

    // Same input; the router is SIGKILLed mid-stream, then two replicas share the group.
    let (in_b, out_b) = (unique("killed-in"), unique("killed-out"));
    create_topics(
        &stack.bootstrap,
        &[(&in_b, 3), (&out_b, 3), (&format!("{in_b}.dlq"), 1)],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &in_b).await;
    publish(&stack, &in_b, schema_id, base, &schema_events).await;
    let rules_b = write_rules("kill-b", &KILL_RULES.replace("OUT", &out_b));
    let group = unique("killed");
    let prefix = unique("killed");
    let log_b = std::env::temp_dir().join(unique("router-killed"));
    let mut first = spawn_stateful_router(&stack, &group, &in_b, &rules_b, &prefix, &log_b);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let so_far = read_topic(
            &stack.bootstrap,
            &out_b,
            usize::MAX,
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .await
        .len();
        let committed: i64 = committed_offsets(&stack.bootstrap, &group, &in_b, 3)
            .iter()
            .filter(|o| **o > 0)
            .sum();
        if so_far >= expected_count / 4 && committed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {}",
            read_log(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let at_kill = read_topic(
        &stack.bootstrap,
        &out_b,
        usize::MAX,
        Duration::from_secs(2),
        Duration::ZERO,
    )
    .await
    .len();
    assert!(at_kill < expected_count, "the kill must land mid-stream");
    let _second = spawn_stateful_router(&stack, &group, &in_b, &rules_b, &prefix, &log_b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _third = spawn_stateful_router(&stack, &group, &in_b, &rules_b, &prefix, &log_b);
    let mut seen = BTreeSet::new();
    let mut scanned = 0;
    let all = read_topic_until(
        &stack.bootstrap,
        &out_b,
        Duration::from_secs(120),
        Duration::from_secs(3),
        |got| {
            for m in &got[scanned..] {
                seen.insert(firing_of(m));
            }
            scanned = got.len();
            seen.len() >= expected_count
        },
    )
    .await;
    let killed = firings(&all);
    let missing: Vec<_> = straight.difference(&killed).take(5).collect();
    let extra: Vec<_> = killed.difference(&straight).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}; log: {}",
        read_log(&log_b)
    );
    println!(
        "killed after {at_kill} firings; {} records for {} firings (re-emissions carry the same ce_id)",
        all.len(),
        killed.len()
    );
}

const LATE_RULES: &str = r#"
[[rule]]
name = "restart"
when = 'ce.type == "t.crash"'
group_by = 'payload.pod'
throttle = { once_within = "4s" }
lateness = "3s"
to = ["OUT"]
continue = true

[[rule]]
name = "burst"
when = 'ce.type == "t.crash"'
group_by = 'payload.pod'
threshold = { events = 4, within = "2s" }
lateness = "3s"
to = ["OUT"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_within_the_lateness_matches_in_order_and_late_is_dead_lettered() {
    let stack = stack();
    let base = chrono::Utc::now().timestamp_millis();
    // 10 pods, an event every 300 ms for 9 s.
    let mut in_order = Vec::new();
    for seq in 0..30i64 {
        for pod in 0..10 {
            let pod = format!("pod-{pod}");
            in_order.push((pod.clone(), "t.crash", seq * 300, format!("{pod}-{seq}")));
        }
    }
    // The same events, each pod's moved up to 2.5 s out of order (a fixed shuffle).
    let mut shuffled = in_order.clone();
    let mut x: u64 = 7;
    let mut keyed: Vec<(i64, usize)> = shuffled
        .iter()
        .enumerate()
        .map(|(i, e)| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (e.2 + (x >> 33) as i64 % 2500, i)
        })
        .collect();
    keyed.sort();
    shuffled = keyed.iter().map(|(_, i)| in_order[*i].clone()).collect();
    assert_ne!(shuffled, in_order);

    let mut results = Vec::new();
    let mut dead_letters = Vec::new();
    for (name, events) in [("in-order", &in_order), ("shuffled", &shuffled)] {
        let (input, out) = (unique(name), unique(&format!("{name}-out")));
        let dlq = format!("{input}.dlq");
        create_topics(&stack.bootstrap, &[(&input, 3), (&out, 3), (&dlq, 1)]).await;
        let schema_id = register_pod_schema(&stack, &input).await;
        publish(&stack, &input, schema_id, base, events).await;
        let rules = write_rules(name, &LATE_RULES.replace("OUT", &out));
        let log = std::env::temp_dir().join(unique("router-late"));
        let router =
            spawn_stateful_router(&stack, &unique(name), &input, &rules, &unique(name), &log);
        // Per pod, throttle: windows from 0, 4.2 and 8.4 s; threshold (windows open at the
        // first event after the last one closed): 0, 2.1, 4.2 and 6.3 s reach 4 events, 8.4 s
        // does not. The last events wait for the wall clock (lateness + timer_delay).
        let got = read_topic(
            &stack.bootstrap,
            &out,
            10 * 3 + 10 * 4,
            Duration::from_secs(90),
            Duration::from_secs(3),
        )
        .await;
        if name == "shuffled" {
            // 20 s behind the group's latest event: beyond the 3 s lateness.
            publish(
                &stack,
                &input,
                schema_id,
                base,
                &[("pod-1".into(), "t.crash", -20_000, "pod-1-late".into())],
            )
            .await;
            dead_letters = read_topic(
                &stack.bootstrap,
                &dlq,
                1,
                Duration::from_secs(30),
                Duration::from_secs(1),
            )
            .await;
        }
        drop(router);
        results.push((firings(&got), read_log(&log)));
    }
    let (straight, log) = &results[0];
    assert_eq!(straight.len(), 70, "log: {log}");
    let per_rule: BTreeMap<&str, usize> = straight.iter().fold(BTreeMap::new(), |mut m, f| {
        *m.entry(f.0.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_rule, BTreeMap::from([("burst", 40), ("restart", 30)]));
    assert_eq!(&results[1].0, straight, "log: {}", results[1].1);
    assert_eq!(dead_letters.len(), 1, "the late event is dead-lettered");
    let message = header_str(&dead_letters[0], rh::ERROR_MESSAGE).unwrap_or_default();
    assert!(
        message.contains("late for rule `restart` (group `pod-1`)") && message.contains("3s"),
        "{message}"
    );
    assert_eq!(header_str(&dead_letters[0], "ce_id"), Some("pod-1-late"));
}
