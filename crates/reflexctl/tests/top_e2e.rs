//! `reflexctl top --once` against real workers: a router and an actor on the local stack, each
//! behind a recording proxy, so the test knows exactly which `/metrics` text `top` read at each
//! of its two scrapes and checks every figure it prints against those texts: rates in and out
//! (events are published between the scrapes), dead letters, lag and its status, in flight,
//! actions by outcome, the open breaker and the closed count, the kill switch, a worker down.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use common::*;
use reflex_core::metrics as m;
use reflex_testkit::{ce_headers, create_topics, produce, producer, stack, unique, Stack};
use reflexctl::prom::Samples;

/// The interval `top` waits between its two scrapes; the second batch is published inside it.
const INTERVAL_S: f64 = 6.0;
/// Events published between the scrapes; each is routed to two topics.
const SECOND_BATCH: usize = 12;

/// Serves `/{name}/metrics` by fetching the named worker's `/metrics`, recording what it
/// returned and when.
#[derive(Default)]
struct Proxy {
    upstream: HashMap<String, String>,
    served: Mutex<HashMap<String, Vec<(Instant, String)>>>,
}

impl Proxy {
    fn served(&self, name: &str) -> Vec<(Instant, String)> {
        self.served
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

async fn proxied(State(proxy): State<Arc<Proxy>>, Path(name): Path<String>) -> String {
    let text = scrape(&proxy.upstream[&name]).await;
    proxy
        .served
        .lock()
        .unwrap()
        .entry(name)
        .or_default()
        .push((Instant::now(), text.clone()));
    text
}

async fn start_proxy(upstream: HashMap<String, String>) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        upstream,
        ..Proxy::default()
    });
    let app = axum::Router::new()
        .route("/{name}/metrics", axum::routing::get(proxied))
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (proxy, format!("http://{addr}"))
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn samples(addr: &str) -> Samples {
    Samples::parse(&scrape(addr).await)
}

async fn publish_pod_events(stack: &Stack, topic: &str, schema_id: u32, from: usize, n: usize) {
    let producer = producer(&stack.bootstrap);
    for i in from..from + n {
        produce(
            &producer,
            topic,
            Some("pod-1"),
            &pod_event(schema_id, "pod-1", i as i64, 5, "CrashLoopBackOff"),
            ce_headers(&format!("top-{i}"), "io.k8s.pod.crashloop", "test/top"),
        )
        .await;
    }
}

/// The words of the screen line whose first word is `first`, box-drawing characters left out
/// (a line of the actions box also carries the breakers box's words).
fn row(screen: &str, first: &str) -> Vec<String> {
    screen
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.chars().all(|c| "│┌┐└┘─".contains(c)))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|words| words.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no line starting with {first:?}:\n{screen}"))
}

fn assert_rate(printed: &str, expected: f64, what: &str, screen: &str) {
    let printed: f64 = printed
        .parse()
        .unwrap_or_else(|_| panic!("{what}: `{printed}` is not a rate:\n{screen}"));
    assert!(
        (printed - expected).abs() <= 0.11,
        "{what}: printed {printed}, the scrapes give {expected:.3}:\n{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_shows_what_the_workers_metrics_say() {
    let stack = stack();
    let events = unique("top-events");
    let (routed_a, routed_b) = (unique("top-routed-a"), unique("top-routed-b"));
    let requests = unique("top-requests");
    let (outcomes, held) = (unique("top-outcomes"), unique("top-held"));
    create_topics(
        &stack.bootstrap,
        &[
            (&events, 1),
            (&format!("{events}.dlq"), 1),
            (&routed_a, 1),
            (&routed_b, 1),
            (&requests, 1),
            (&format!("{requests}.dlq"), 1),
            (&outcomes, 1),
            (&held, 1),
        ],
    )
    .await;
    let lag_often = [("REFLEX_RUNTIME__LAG_INTERVAL", "300ms")];

    // A router: five events and one poison record now, more between top's scrapes.
    let schema_id = register_pod_schema(&stack, &events).await;
    let rules = write_rules(
        "top-rules",
        &format!(
            "[[rule]]\nname = \"crash\"\nwhen = 'payload.restart_count >= 3'\nto = [\"{routed_a}\", \"{routed_b}\"]\n"
        ),
    );
    publish_pod_events(&stack, &events, schema_id, 0, 5).await;
    produce(
        &producer(&stack.bootstrap),
        &events,
        Some("pod-1"),
        b"not avro",
        ce_headers("top-poison", "io.k8s.pod.crashloop", "test/top"),
    )
    .await;
    let router_log = std::env::temp_dir().join(unique("top-router-log"));
    let mut router_command = worker_command(
        "reflex-router",
        &stack,
        &unique("top-router"),
        "",
        &events,
        &router_log,
    );
    router_command
        .env("REFLEX_ROUTER__RULES_FILE", &rules)
        .envs(lag_often);
    let _router = reflex_testkit::ChildGuard::spawn("reflex-router", &mut router_command);

    // An actor: four requests to three healthy targets, two to one answering 503, whose
    // breaker opens after two failures and stays open (a ten-minute cool-down).
    let (target, addr) = Target::start().await;
    let config = restart_actor_config(
        &outcomes,
        &held,
        addr,
        "breaker_failures = 2\nbreaker_cooldown = \"10m\"\n",
    );
    let codec = action_request_codec(&stack, &requests).await;
    let batch: Vec<_> = ["gw-a", "gw-b", "gw-c", "gw-a", "gw-bad", "gw-bad"]
        .iter()
        .enumerate()
        .map(|(i, gateway)| {
            let mut r = action_request(&unique("top-req"), &format!("pod-{i}"));
            r.target = gateway.to_string();
            if *gateway == "gw-bad" {
                target.fail(&r.idempotency_key, 503, 1_000);
            }
            r
        })
        .collect();
    publish_requests(&stack, &requests, &codec, &batch).await;
    let actor_log = std::env::temp_dir().join(unique("top-actor-log"));
    let _actor = spawn_actor(
        &stack,
        &unique("top-actor"),
        "",
        &requests,
        &config,
        &actor_log,
        &lag_often,
    );

    let mut router_addr = None;
    let mut actor_addr = None;
    wait_until(
        "both workers serving /metrics",
        Duration::from_secs(60),
        async || {
            router_addr = http_address(&router_log);
            actor_addr = http_address(&actor_log);
            router_addr.is_some() && actor_addr.is_some()
        },
    )
    .await;
    let (router_addr, actor_addr) = (router_addr.unwrap(), actor_addr.unwrap());
    let in_router = [("stage", "router")];
    wait_until(
        "the router to read its six records and measure its lag",
        Duration::from_secs(60),
        async || {
            let s = samples(&router_addr).await;
            s.total(m::EVENTS_IN, &in_router) == 6.0 && s.has(reflex_lag::GROUP_SUM_LAG, &[])
        },
    )
    .await;
    wait_until(
        "the actor's four successes and gw-bad's breaker open",
        Duration::from_secs(60),
        async || {
            let s = samples(&actor_addr).await;
            s.total(m::ACTIONS, &[("result", "succeeded")]) == 4.0
                && s.total(m::BREAKER_STATE, &[("target", "gw-bad")]) == 2.0
                && s.has(reflex_lag::GROUP_SUM_LAG, &[])
        },
    )
    .await;

    // top reads both through the proxy, and a third address where nothing listens.
    let (proxy, proxy_url) = start_proxy(HashMap::from([
        ("router".to_string(), router_addr.clone()),
        ("actor".to_string(), actor_addr.clone()),
    ]))
    .await;
    let dead = "127.0.0.1:1";
    let top = tokio::process::Command::new(env!("CARGO_BIN_EXE_reflexctl"))
        .args(["top", "--once", "--interval", &format!("{INTERVAL_S}s")])
        .args(["--metrics", &format!("{proxy_url}/router/metrics")])
        .args(["--metrics", &format!("{proxy_url}/actor/metrics")])
        .args(["--metrics", dead])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run reflexctl top");
    wait_until("top's first scrape", Duration::from_secs(20), async || {
        !proxy.served("router").is_empty() && !proxy.served("actor").is_empty()
    })
    .await;
    publish_pod_events(&stack, &events, schema_id, 100, SECOND_BATCH).await;
    let published = Instant::now();
    wait_until(
        "the router to read the second batch",
        Duration::from_secs(20),
        async || samples(&router_addr).await.total(m::EVENTS_IN, &in_router) == 18.0,
    )
    .await;
    assert!(
        published.elapsed() < Duration::from_secs_f64(INTERVAL_S - 1.0),
        "the second batch took too long to route to fall between top's scrapes"
    );
    let output = top.wait_with_output().await.expect("top exits");
    let screen = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit 1: a worker did not answer; stderr: {}\n{screen}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{screen}");
    assert_eq!(screen.lines().count(), 24, "an 80x24 frame:\n{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");

    // What top read: the proxy's two answers per worker.
    let pair = |name: &str| {
        let served = proxy.served(name);
        assert_eq!(served.len(), 2, "top scrapes {name} twice");
        let secs = (served[1].0 - served[0].0).as_secs_f64();
        (
            Samples::parse(&served[0].1),
            Samples::parse(&served[1].1),
            secs,
        )
    };
    let (r0, r1, r_secs) = pair("router");
    let (a0, a1, a_secs) = pair("actor");
    let rate = |before: &Samples, after: &Samples, secs: f64, name: &str, stage: &str| {
        after.increase_since(before, name, &[("stage", stage)]) / secs
    };
    assert_eq!(
        r1.increase_since(&r0, m::EVENTS_IN, &in_router),
        SECOND_BATCH as f64,
        "the second batch fell between the scrapes"
    );
    assert_eq!(
        r1.total(m::DEAD_LETTERS, &in_router),
        1.0,
        "the poison record"
    );

    assert!(screen.contains("2/3 workers up"), "{screen}");
    let lag_status = |s: &Samples| {
        reflex_lag::Status::ALL
            .into_iter()
            .find(|st| s.total(reflex_lag::GROUP_STATUS, &[("status", st.as_str())]) == 1.0)
            .map(|st| st.as_str())
            .expect("a lag status")
    };
    for (stage, before, after, secs) in [("router", &r0, &r1, r_secs), ("actor", &a0, &a1, a_secs)]
    {
        let words = row(&screen, stage);
        let want = [("stage", stage)];
        assert_eq!(words[1], "1/1", "{stage} up:\n{screen}");
        assert_rate(
            &words[2],
            rate(before, after, secs, m::EVENTS_IN, stage),
            "in/s",
            &screen,
        );
        assert_rate(
            &words[3],
            rate(before, after, secs, m::EVENTS_OUT, stage),
            "out/s",
            &screen,
        );
        assert_rate(
            &words[4],
            rate(before, after, secs, m::DEAD_LETTERS, stage),
            "dlq/s",
            &screen,
        );
        assert_eq!(
            words[5],
            after.total(m::IN_FLIGHT, &want).to_string(),
            "{screen}"
        );
        assert_eq!(
            words[6],
            after.total(m::PAUSED_PARTITIONS, &want).to_string(),
            "{screen}"
        );
        assert_eq!(
            words[7],
            after.total(reflex_lag::GROUP_SUM_LAG, &[]).to_string(),
            "{stage} lag:\n{screen}"
        );
        assert_eq!(words[9], lag_status(after), "{stage} status:\n{screen}");
    }
    // Not all zeros: the second batch is in the router's rates (12 in, 24 out).
    assert_eq!(
        r1.increase_since(&r0, m::EVENTS_OUT, &in_router),
        2.0 * SECOND_BATCH as f64
    );
    assert_ne!(row(&screen, "router")[2], "0.0", "{screen}");
    let dashes = vec!["-"; 9];
    assert_eq!(row(&screen, "enricher")[1..], dashes, "{screen}");

    for (result, total) in a1.by_label(m::ACTIONS, "result") {
        let words = row(&screen, &result);
        assert_eq!(words[1], total.to_string(), "{result} total:\n{screen}");
        let r = a1.increase_since(&a0, m::ACTIONS, &[("result", &result)]) / a_secs;
        assert_rate(&words[2], r, &format!("{result}/s"), &screen);
    }
    assert_eq!(row(&screen, "succeeded")[1], "4");
    assert_ne!(row(&screen, "failed")[1], "0", "{screen}");
    assert!(
        screen.contains("3 closed · 1 open · 0 half-open") && screen.contains("OPEN gw-bad"),
        "{screen}"
    );
    assert!(screen.contains("kill switch OFF"), "{screen}");
    assert!(
        screen.contains(&format!("DOWN ? http://{dead}/metrics")),
        "the dead worker is listed:\n{screen}"
    );
}
