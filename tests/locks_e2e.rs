//! Per-target locks end to end: two actor replicas and two actions (`restart` and `drain`,
//! as two rules would bind them) acting on the same ten targets at once, a real broker, Redis,
//! the reprocessor delivering deferred requests again. The target records when each call
//! started and ended: no two calls on one target may overlap, and every request must take
//! effect exactly once.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use common::*;
use rdkafka::Message;
use reflex_core::actions::{
    ActionKind, ActionOutcome, ActionRequest, ActionResult, AvroCodec, ACTION_OUTCOME_SCHEMA,
};
use reflex_testkit::{create_topics, header_str, read_topic_until, stack, unique};

/// One call the target served: which target, which key, when it started and ended.
#[derive(Debug, Clone)]
struct Call {
    target: String,
    key: String,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    /// Idempotency-Key → effects applied.
    effects: Mutex<HashMap<String, u32>>,
}

async fn serve(
    State(r): State<Arc<Recorder>>,
    UrlPath((target, _action)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> StatusCode {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return StatusCode::BAD_REQUEST;
    };
    let start = Instant::now();
    // Long enough that calls on one target would overlap if nothing kept them apart.
    tokio::time::sleep(Duration::from_millis(120)).await;
    *r.effects.lock().unwrap().entry(key.clone()).or_default() += 1;
    r.calls.lock().unwrap().push(Call {
        target,
        key,
        start,
        end: Instant::now(),
    });
    StatusCode::OK
}

async fn start_target() -> (Arc<Recorder>, SocketAddr) {
    let r = Arc::new(Recorder::default());
    let app = axum::Router::new()
        .route("/t/{target}/{action}", axum::routing::post(serve))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, addr)
}

fn config(prefix: &str, outcomes: &str, held: &str, addr: SocketAddr) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("locks-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("actor.toml");
    let action = |name: &str| {
        format!(
            r#"
[[actor.action]]
name = "{name}"
kind = "http"
url = "http://{addr}/t/{{{{ target }}}}/{name}"
timeout = "5s"
lock = "{{{{ target }}}}"
"#
        )
    };
    std::fs::write(
        &path,
        format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
claim_lease = "3s"
claim_poll = "20ms"
lock_lease = "3s"
{}{}"#,
            action("restart"),
            action("drain")
        ),
    )
    .unwrap();
    path
}

fn request(action: &str, target: &str, n: usize) -> ActionRequest {
    let event_id = format!("evt-{target}-{n}");
    ActionRequest {
        idempotency_key: reflex_core::actions::idempotency_key(&event_id, action),
        action: action.into(),
        kind: ActionKind::Http,
        target: target.into(),
        params: BTreeMap::new(),
        body: None,
        event_id,
        event_type: "io.k8s.pod.crashloop".into(),
        rule: Some(format!("{action}-rule")),
        correlation_id: format!("corr-{target}-{n}"),
        context: BTreeMap::new(),
        dry_run: false,
        requested_at: 1_700_000_000_000,
    }
}

fn decode_outcome(payload: &[u8]) -> ActionOutcome {
    let schema: serde_avro_fast::Schema = ACTION_OUTCOME_SCHEMA.parse().unwrap();
    AvroCodec::<ActionOutcome>::decode_with(&schema, payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_two_actions_never_overlap_on_a_target_and_act_once() {
    let stack = stack();
    let input = unique("lock-requests");
    let dlq = format!("{input}.dlq");
    let (outcomes, held) = (unique("lock-outcomes"), unique("lock-held"));
    create_topics(
        &stack.bootstrap,
        &[(&input, 4), (&dlq, 2), (&outcomes, 3), (&held, 1)],
    )
    .await;
    let codec = action_request_codec(&stack, &input).await;
    let (recorder, addr) = start_target().await;
    let path = config(&unique("reflex-locks"), &outcomes, &held, addr);
    let group = unique("lock-actor");
    let (log_a, log_b, log_r) = (
        std::env::temp_dir().join(unique("lock-actor-a")),
        std::env::temp_dir().join(unique("lock-actor-b")),
        std::env::temp_dir().join(unique("lock-reprocessor")),
    );
    // Deferred requests come back quickly (and often: contention is the point here).
    let env = [
        ("REFLEX_RUNTIME__REDELIVERY_BACKOFF", "100ms"),
        ("REFLEX_RUNTIME__REDELIVERY_MAX_BACKOFF", "400ms"),
    ];
    let _a = spawn_actor(&stack, &group, "", &input, &path, &log_a, &env);
    let _b = spawn_actor(&stack, &group, "", &input, &path, &log_b, &env);
    let _r = spawn_reprocessor(
        &stack,
        &unique("lock-reprocessor"),
        &dlq,
        &log_r,
        &[("REFLEX_REPROCESSOR__MAX_REDELIVERIES", "1000")],
    );

    // 10 targets; each gets 3 `restart` and 3 `drain` requests, all published at once, keyed
    // by idempotency key so they spread over partitions, lanes and both replicas.
    let targets: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
    let mut requests = Vec::new();
    for n in 0..3 {
        for t in &targets {
            requests.push(request("restart", t, n));
            requests.push(request("drain", t, n));
        }
    }
    let keys: HashSet<String> = requests.iter().map(|r| r.idempotency_key.clone()).collect();
    publish_requests(&stack, &input, &codec, &requests).await;

    let logs = || {
        format!(
            "A:\n{}\nB:\n{}\nreprocessor:\n{}",
            read_log(&log_a),
            read_log(&log_b),
            read_log(&log_r)
        )
    };
    let mut finals: HashMap<String, ActionOutcome> = HashMap::new();
    let mut seen = 0;
    let messages = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(90),
        Duration::from_secs(2),
        |got| {
            for m in &got[seen..] {
                if header_str(m, "reflex-final") == Some("true") {
                    let o = decode_outcome(m.payload().unwrap());
                    finals.insert(o.idempotency_key.clone(), o);
                }
            }
            seen = got.len();
            keys.iter().all(|k| finals.contains_key(k))
        },
    )
    .await;
    let outcomes: Vec<ActionOutcome> = messages
        .iter()
        .map(|m| decode_outcome(m.payload().unwrap()))
        .collect();
    for key in &keys {
        let succeeded = outcomes
            .iter()
            .filter(|o| &o.idempotency_key == key && o.result == ActionResult::Succeeded)
            .count();
        assert_eq!(
            succeeded,
            1,
            "{key}: {succeeded} SUCCEEDED outcomes; {}",
            logs()
        );
    }

    // Exactly once at the target.
    let effects = recorder.effects.lock().unwrap().clone();
    assert_eq!(effects.len(), keys.len(), "keys applied; {}", logs());
    assert!(effects.values().all(|&n| n == 1), "{effects:?}");

    // No overlap per target.
    let calls = recorder.calls.lock().unwrap().clone();
    let mut by_target: HashMap<&str, Vec<&Call>> = HashMap::new();
    for c in &calls {
        by_target.entry(&c.target).or_default().push(c);
    }
    for (target, mut cs) in by_target {
        cs.sort_by_key(|c| c.start);
        for w in cs.windows(2) {
            assert!(
                w[1].start >= w[0].end,
                "{target}: {} started before {} ended",
                w[1].key,
                w[0].key
            );
        }
    }

    // The locks did keep requests waiting (contention happened), and both replicas worked.
    let mut waits = 0.0;
    for log in [&log_a, &log_b] {
        let addr = http_address(log).expect("actor serves /metrics");
        let text = scrape(&addr).await;
        for action in ["restart", "drain"] {
            waits += metric_value(
                &text,
                &format!("reflex_action_lock_waits_total{{action=\"{action}\"}}"),
            )
            .unwrap_or(0.0);
        }
    }
    assert!(
        waits >= 1.0,
        "no request ever waited for a lock; {}",
        logs()
    );
    let workers: HashSet<&str> = outcomes.iter().map(|o| o.worker.as_str()).collect();
    eprintln!(
        "locks: {} requests on {} targets, {} calls, no overlap, {waits} lock waits, workers {workers:?}",
        keys.len(),
        targets.len(),
        calls.len()
    );
}
