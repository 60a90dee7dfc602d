//! Event data must not steer actions: hostile values in ordinary fields, through the real
//! workers (separate processes, real broker, Redis and registry), at a real HTTP server that
//! records every request exactly as it arrived (method, raw path and query, headers, body).
//!
//! For every action kind (http, emit, log) and lookup kind (redis, file, http): path
//! traversal, query and fragment injection, JSON injection, CR/LF in headers and destination
//! injection are either escaped into the one value they fill or refused before anything is
//! sent (the event dead-lettered as permanent, with the reason).

mod common;
mod injection;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use injection::*;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use reflex_core::actions::{ActionOutcome, ActionRequest, ActionResult, AvroCodec};
use reflex_core::headers::reflex as rh;
use reflex_core::wire::decode_frame;
use reflex_testkit::{
    ce_headers, create_topics, header_str, produce, producer, read_topic, read_topic_until, stack,
    unique, Stack,
};

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("injection"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Final outcomes by idempotency key, read until every key in `keys` has one.
async fn final_outcomes(
    stack: &Stack,
    topic: &str,
    keys: &HashSet<String>,
) -> HashMap<String, ActionOutcome> {
    let registry = registry(stack);
    let records = read_topic_until(
        &stack.bootstrap,
        topic,
        Duration::from_secs(60),
        Duration::from_secs(1),
        |got| {
            let finals: HashSet<&str> = got
                .iter()
                .filter(|m| header_str(m, "reflex-final") == Some("true"))
                .filter_map(|m| m.key())
                .filter_map(|k| std::str::from_utf8(k).ok())
                .collect();
            keys.iter().all(|k| finals.contains(k.as_str()))
        },
    )
    .await;
    let mut out = HashMap::new();
    for m in records
        .iter()
        .filter(|m| header_str(m, "reflex-final") == Some("true"))
    {
        let value = m.payload().unwrap();
        let schema = registry
            .schema_by_id(decode_frame(value).unwrap().schema_id)
            .await
            .unwrap();
        let o = AvroCodec::<ActionOutcome>::decode_with(&schema.fast, value).unwrap();
        out.insert(o.idempotency_key.clone(), o);
    }
    out
}

/// Dead letters by `ce_id`, read until `n` arrived.
async fn dead_letters(stack: &Stack, dlq: &str, n: usize) -> HashMap<String, OwnedMessage> {
    read_topic(
        &stack.bootstrap,
        dlq,
        n,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|m| (header_str(&m, "ce_id").unwrap_or_default().to_string(), m))
    .collect()
}

/// Asserts a dead letter is a permanent refusal whose message names `field` and `says`.
fn assert_refused(dead: &HashMap<String, OwnedMessage>, id: &str, field: &str, says: &str) {
    let m = dead
        .get(id)
        .unwrap_or_else(|| panic!("{id} was not dead-lettered: {:?}", dead.keys()));
    assert_eq!(header_str(m, rh::ERROR_CLASS), Some("permanent"), "{id}");
    let message = header_str(m, rh::ERROR_MESSAGE).unwrap_or_default();
    assert!(
        message.contains(field) && message.contains("refused") && message.contains(says),
        "{id}: {message}"
    );
}

const HOSTILE_JSON: &str = r#""}, "restart_count": 0, "x": {"a":""#;
const TRAVERSAL: &str = "../../kube-system/pods/coredns";

/// Every action kind, fed hostile request fields (what a binding would carry from an event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_escapes_or_refuses_hostile_values_in_every_action_kind() {
    let stack = stack();
    let input = unique("inj-requests");
    let outcomes = unique("inj-outcomes");
    let held = unique("inj-held");
    let emitted = unique("inj-emitted");
    let victim = unique("inj-victim");
    let dlq = format!("{input}.dlq");
    create_topics(
        &stack.bootstrap,
        &[
            (&input, 1),
            (&outcomes, 1),
            (&held, 1),
            (&dlq, 1),
            (&emitted, 1),
            (&victim, 1),
        ],
    )
    .await;
    let codec = action_request_codec(&stack, &input).await;
    let (recorder, addr) = Recorder::start().await;
    let config = temp_file(
        "actor.toml",
        &format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
allowed_hosts = ["127.0.0.1:{port}"]

[[actor.action]]
name = "call"
kind = "http"
method = "POST"
url = "http://{addr}/api/namespaces/{{{{ params.ns }}}}/pods/{{{{ params.pod }}}}?reason={{{{ params.why }}}}"
headers = {{ content-type = "application/json", x-owner = "{{{{ params.team }}}}" }}
body = '{{"pod": "{{{{ params.pod }}}}", "why": "{{{{ params.why }}}}", "count": {{{{ params.count }}}}}}'
max_attempts = 1

[[actor.action]]
name = "as-is"
kind = "http"
url = "http://{addr}/as-is/{{{{ params.pod }}}}"
headers = {{ content-type = "application/json" }}
max_attempts = 1

[[actor.action]]
name = "chain"
kind = "emit"
topic = "{emitted}"
body = '{{"pod": "{{{{ params.pod }}}}", "why": "{{{{ params.why }}}}"}}'

[[actor.action]]
name = "note"
kind = "log"
message = "noted {{{{ params.pod }}}}"
"#,
            prefix = unique("inj"),
            port = addr.port(),
        ),
    );
    let log = std::env::temp_dir().join(unique("inj-actor-log"));
    let _actor = spawn_actor(&stack, &unique("inj-actor"), "", &input, &config, &log, &[]);

    let req = |id: &str, action: &str, params: &[(&str, &str)], body: Option<&str>| {
        let mut r = action_request(id, "unused");
        r.action = action.into();
        r.idempotency_key = format!("{action}:{id}");
        r.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r.body = body.map(str::to_string);
        r
    };
    let why = format!("{HOSTILE_JSON}?admin=true#top&x=1");
    let count = "0, \"admin\": true";
    let call = |id: &str, ns: &str, pod: &str, team: &str| {
        req(
            id,
            "call",
            &[
                ("ns", ns),
                ("pod", pod),
                ("why", &why),
                ("team", team),
                ("count", count),
            ],
            None,
        )
    };
    let requests: Vec<ActionRequest> = vec![
        call("escaped", "shop", TRAVERSAL, "payments"),
        call("dots", "shop", "..", "payments"),
        call("empty", "", "p", "payments"),
        call("crlf", "shop", "p", "payments\r\nX-Admin: yes"),
        req("as-is-ok", "as-is", &[("pod", "p")], Some(r#"{"a": 1}"#)),
        req(
            "as-is-bad",
            "as-is",
            &[("pod", "p")],
            Some(r#"{"a": 1}, "admin": true}"#),
        ),
        req(
            "chain",
            "chain",
            &[("pod", &victim), ("why", HOSTILE_JSON)],
            None,
        ),
        req(
            "note",
            "note",
            &[("pod", "p\n{\"level\":\"ERROR\",\"forged\":true}")],
            None,
        ),
    ];
    publish_requests(&stack, &input, &codec, &requests).await;

    let ok: HashSet<String> = ["call:escaped", "as-is:as-is-ok", "chain:chain", "note:note"]
        .map(String::from)
        .into();
    let outcomes = final_outcomes(&stack, &outcomes, &ok).await;
    for key in &ok {
        assert_eq!(outcomes[key].result, ActionResult::Succeeded, "{key}");
    }
    let dead = dead_letters(&stack, &dlq, 4).await;
    assert_eq!(dead.len(), 4, "{:?}", dead.keys());
    assert_refused(&dead, "dots", "field `url`", "path traversal");
    assert_refused(&dead, "empty", "field `url`", "path traversal");
    assert_refused(&dead, "crlf", "field `header.x-owner`", "control character");
    assert_refused(&dead, "as-is-bad", "`as-is`", "not valid JSON");
    // Refused before the claim: no outcome for them either.
    for key in ["call:dots", "call:empty", "call:crlf", "as-is:as-is-bad"] {
        assert!(!outcomes.contains_key(key), "{key}");
    }

    // At the server: the two accepted HTTP calls, and nothing else.
    let seen = recorder.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let escaped = &recorder.with_key("call:escaped")[0];
    assert_eq!(escaped.method, "POST");
    assert_eq!(
        escaped.target,
        "/api/namespaces/shop/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns?reason=%22%7D%2C%20%22restart_count%22%3A%200%2C%20%22x%22%3A%20%7B%22a%22%3A%22%3Fadmin%3Dtrue%23top%26x%3D1"
    );
    assert_eq!(escaped.headers["x-owner"], "payments");
    assert!(!escaped.headers.contains_key("x-admin"));
    assert_eq!(
        json(&escaped.body),
        serde_json::json!({"pod": TRAVERSAL, "why": why, "count": count}),
        "each value stays in its one JSON string"
    );
    let as_is = &recorder.with_key("as-is:as-is-ok")[0];
    assert_eq!(
        (as_is.target.as_str(), as_is.body.as_str()),
        ("/as-is/p", r#"{"a": 1}"#)
    );

    // Emit: the literal topic, the body one JSON value per field; the topic named in the data
    // received nothing.
    let chained = read_topic(
        &stack.bootstrap,
        &emitted,
        1,
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(chained.len(), 1);
    assert_eq!(
        json(std::str::from_utf8(chained[0].payload().unwrap()).unwrap()),
        serde_json::json!({"pod": victim, "why": HOSTILE_JSON})
    );
    let stolen = read_topic(
        &stack.bootstrap,
        &victim,
        1,
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await;
    assert!(stolen.is_empty(), "event data chose a topic");

    // Log: the newline is escaped, so no forged log line.
    let text = read_log(&log);
    let forged = text
        .lines()
        .filter(|l| l.starts_with("{\"level\":\"ERROR\",\"forged\""))
        .count();
    assert_eq!(forged, 0, "{text}");
    assert!(text.contains(r#"noted p\\n{\"level\""#), "{text}");
}

/// Every lookup kind and a binding's URL and JSON body, through the enricher and the actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enricher_escapes_lookup_keys_urls_and_bodies_end_to_end() {
    let stack = stack();
    let run = unique("run");
    let routed = unique("inj-routed");
    let requests = unique("inj-req");
    let outcomes = unique("inj-out");
    let held = unique("inj-held");
    let routed_dlq = format!("{routed}.dlq");
    let requests_dlq = format!("{requests}.dlq");
    create_topics(
        &stack.bootstrap,
        &[
            (&routed, 1),
            (&requests, 1),
            (&outcomes, 1),
            (&held, 1),
            (&routed_dlq, 1),
            (&requests_dlq, 1),
        ],
    )
    .await;
    let schema_id = register_pod_schema(&stack, &routed).await;
    let (recorder, addr) = Recorder::start().await;

    // A value with `:` must not reach another key: `shop:admin` is one segment, encoded.
    set_teams(
        &stack,
        &[
            (format!("owners-{run}:shop%3Aadmin"), "escaped-key"),
            (format!("owners-{run}:shop:admin"), "WRONG-KEY"),
        ],
    )
    .await;
    let dir = std::env::temp_dir().join(unique("inj-enricher"));
    std::fs::create_dir_all(&dir).unwrap();
    // The file lookup's key picks a row of the table and nothing else: `prod-eu/../staging`
    // is no row, so the default applies (not the `staging` row).
    std::fs::write(
        dir.join("clusters.toml"),
        "[prod-eu]\ntier = \"1\"\n\n[staging]\ntier = \"WRONG-ROW\"\n",
    )
    .unwrap();
    let bindings = dir.join("bindings.toml");
    std::fs::write(
        &bindings,
        format!(
            r#"[[lookup]]
name = "owner"
kind = "redis"
key = "owners-{run}:{{{{ payload.namespace }}}}"
on_missing = "default"
default = {{ team = "none" }}

[[lookup]]
name = "cluster"
kind = "file"
path = "clusters.toml"
key = "{{{{ payload.cluster }}}}"
on_missing = "default"
default = {{ tier = "default" }}

[[lookup]]
name = "svc"
kind = "http"
url = "http://{addr}/cmdb/{{{{ payload.pod }}}}?ns={{{{ payload.namespace }}}}"
on_missing = "skip"

[[binding]]
action = "call"
kind = "http"
target = "http://{addr}/api/namespaces/{{{{ payload.namespace }}}}/pods/{{{{ payload.pod }}}}"
params = {{ team = "{{{{ context.owner.team }}}}", tier = "{{{{ context.cluster.tier }}}}", why = "{{{{ payload.reason }}}}" }}
body = '{{"reason": "{{{{ payload.reason }}}}", "restarts": {{{{ payload.restart_count }}}}, "svc": "{{{{ context.svc.service }}}}"}}'
"#
        ),
    )
    .unwrap();
    let config = temp_file(
        "actor.toml",
        &format!(
            r#"[actor]
redis_prefix = "{prefix}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
allowed_hosts = ["127.0.0.1:{port}"]

[[actor.action]]
name = "call"
kind = "http"
method = "DELETE"
# The enricher bound the whole URL, escaped there.
url = "{{{{ target | raw }}}}"
headers = {{ content-type = "application/json", x-team = "{{{{ params.team }}}}", x-tier = "{{{{ params.tier }}}}", x-why = "{{{{ params.why }}}}" }}
max_attempts = 1
"#,
            prefix = unique("inj"),
            port = addr.port(),
        ),
    );

    let producer = producer(&stack.bootstrap);
    let pod = format!("{TRAVERSAL}?x=1#frag");
    let events = [
        ("evt-escaped", "shop:admin", pod.as_str(), HOSTILE_JSON),
        ("evt-dots", "shop", "..", "r"),
        ("evt-crlf", "shop", "p", "r\r\nX-Admin: yes"),
    ];
    for (id, namespace, pod, reason) in events {
        let value = pod_event_with(schema_id, "prod-eu/../staging", namespace, pod, reason);
        let headers = ce_headers(id, "io.k8s.pod.crashloop", "/k8s/prod-eu");
        produce(&producer, &routed, Some("k"), &value, headers).await;
    }
    let enricher_log = std::env::temp_dir().join(unique("inj-enricher-log"));
    let _enricher = spawn_enricher(
        &stack,
        &unique("inj-enricher"),
        &routed,
        &requests,
        &bindings,
        &enricher_log,
    );
    let actor_log = std::env::temp_dir().join(unique("inj-actor-log"));
    let _actor = spawn_actor(
        &stack,
        &unique("inj-actor"),
        "",
        &requests,
        &config,
        &actor_log,
        &[],
    );

    let ok: HashSet<String> = ["call:evt-escaped".to_string()].into();
    let done = final_outcomes(&stack, &outcomes, &ok).await;
    assert_eq!(done["call:evt-escaped"].result, ActionResult::Succeeded);
    // `..` as a path segment: refused in the enricher (its http lookup URL first).
    let dead = dead_letters(&stack, &routed_dlq, 1).await;
    assert_refused(&dead, "evt-dots", "lookup `svc`", "path traversal");
    // CR/LF reaches a header: refused in the actor, nothing sent.
    let dead = dead_letters(&stack, &requests_dlq, 1).await;
    assert_refused(
        &dead,
        "call:evt-crlf",
        "field `header.x-why`",
        "control character",
    );
    assert!(
        read_log(&actor_log).contains("template uses `raw`"),
        "the actor warns about raw at start"
    );

    let seen = recorder.seen();
    let lookups: Vec<&Arrived> = seen
        .iter()
        .filter(|a| a.target.starts_with("/cmdb/"))
        .collect();
    let calls: Vec<&Arrived> = seen
        .iter()
        .filter(|a| a.target.starts_with("/api/"))
        .collect();
    assert_eq!(seen.len(), lookups.len() + calls.len(), "{seen:#?}");
    // The http lookup: one escaped path segment and query value; evt-dots never asked.
    let mut lookup_targets: Vec<&str> = lookups.iter().map(|a| a.target.as_str()).collect();
    lookup_targets.sort();
    assert_eq!(
        lookup_targets,
        [
            "/cmdb/..%2F..%2Fkube-system%2Fpods%2Fcoredns%3Fx%3D1%23frag?ns=shop%3Aadmin",
            "/cmdb/p?ns=shop"
        ]
    );
    assert!(lookups.iter().all(|a| a.method == "GET"));
    // The action: only evt-escaped's, its URL escaped by the enricher, its body one JSON value
    // per field, the Redis key and file row the values name and no other.
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = calls[0];
    assert_eq!(call.method, "DELETE");
    assert_eq!(
        call.target,
        "/api/namespaces/shop%3Aadmin/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns%3Fx%3D1%23frag"
    );
    assert_eq!(call.headers["x-team"], "escaped-key");
    assert_eq!(call.headers["x-tier"], "default");
    assert_eq!(call.headers["x-why"], HOSTILE_JSON);
    assert_eq!(
        json(&call.body),
        serde_json::json!({"reason": HOSTILE_JSON, "restarts": 6, "svc": "svc-from-http"})
    );
}
