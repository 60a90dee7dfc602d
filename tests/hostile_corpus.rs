//! Hostile input against the real router (a real broker, the real registry, the router binary
//! as a separate process, signatures required): every record of the corpus gets its expected
//! disposition, and the worker is still alive afterwards (a good event sent last is routed).
//!
//! | case | expected disposition |
//! | --- | --- |
//! | good, signed by key `k1` (env) | routed |
//! | good, signed by key `k2` (file; rotation) | routed |
//! | extra header with invalid UTF-8 | routed (the header is ignored by rules) |
//! | unsigned | dead letter `unauthorized` |
//! | bad signature (value changed after signing) | dead letter `unauthorized` |
//! | unknown key id | dead letter `unauthorized` |
//! | replayed old event (`ce_time` 2020, validly signed) | dead letter `unauthorized` |
//! | truncated wire format (3 bytes) | dead letter `poison` |
//! | wrong magic byte | dead letter `poison` |
//! | tombstone (no value) | dead letter `poison` |
//! | corrupt Avro datum (truncated after the header) | dead letter `poison` |
//! | deeply nested value (recursive schema, 50k levels) | dead letter `poison` (depth limit) |
//! | schema id of another topic (valid datum of another schema) | dead letter `permanent` (rule reads a field that record lacks) |
//! | unknown schema id | dead letter `schema` |
//! | huge message (over `router.max_value_bytes`) | dead letter `permanent` naming the setting |
//! | too many headers | dead letter `permanent` naming `router.max_headers` |
//! | `ce_type` not UTF-8 | dead letter `permanent` (missing CloudEvents header) |
//!
//! The injection family goes through the whole chain (router, enricher with a Redis lookup,
//! actor) to a real HTTP server recording what arrived: hostile values in ordinary event
//! fields are escaped into the one value they fill, or refused before anything is sent.
//!
//! | case (field = value) | expected |
//! | --- | --- |
//! | `pod = ../../kube-system/pods/coredns` (path traversal) | arrives as one segment `..%2F..%2Fkube-system%2Fpods%2Fcoredns` |
//! | `pod = p?force=true` (query injection) | arrives as one segment `p%3Fforce%3Dtrue`, no query |
//! | `pod = p#frag` (fragment injection) | arrives as one segment `p%23frag` |
//! | `pod = ..` (dot segment) | dead letter `permanent` at the enricher, nothing sent |
//! | `pod = ""` (empty segment) | dead letter `permanent` at the enricher, nothing sent |
//! | `reason = "}, "restart_count": 0, ...` (JSON injection) | the body's `reason` is exactly the value, no field added |
//! | `reason` with newline and control characters | the body parses, `reason` is exactly the value |
//! | `pod = p\r\nX-Admin: yes` (CR/LF into a header; escaped in the URL) | dead letter `permanent` at the actor, nothing sent |
//! | `namespace = shop:admin` (Redis key injection) | the key `owners:shop%3Aadmin` is read, never `owners:shop:admin` |

mod common;
mod injection;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use injection::{pod_event_with, set_teams};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::Message;
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::signing::SigningKey;
use reflex_core::Headers;
use reflex_testkit::{
    create_topics, header_str, produce, producer, read_topic_until, stack, unique,
};

const RULES: &str = r#"
unmatched = "drop"

[[rule]]
name = "crash"
when = 'payload.restart_count >= 3'
to = ["OUT"]
"#;

const NESTED_SCHEMA: &str =
    r#"{"type":"record","name":"Nest","fields":[{"name":"next","type":["null","Nest"]}]}"#;

fn to_owned(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |acc, h| {
        acc.insert(Header {
            key: &h.key,
            value: h.value.as_deref(),
        })
    })
}

fn base_headers(id: &str, time: &str) -> Headers {
    let mut h = Headers::new();
    h.push(ce::SPECVERSION, "1.0");
    h.push(ce::ID, id.to_owned());
    h.push(ce::SOURCE, "test/hostile");
    h.push(ce::TYPE, "io.k8s.pod.crashloop");
    h.push(ce::TIME, time.to_owned());
    h
}

struct Case {
    id: String,
    value: Option<Vec<u8>>,
    headers: Headers,
    /// `None`: routed; `Some((class, words the message must contain))`: dead-lettered.
    expect: Option<(&'static str, &'static str)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_input_gets_its_disposition_and_the_router_survives() {
    let stack = stack();
    let input = unique("hostile");
    let out = unique("hostile-out");
    let dlq = format!("{input}.dlq");
    create_topics(&stack.bootstrap, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let other_topic = unique("other");
    let nested_id = registry(&stack)
        .register(&format!("{other_topic}-value"), NESTED_SCHEMA)
        .await
        .expect("register the nested schema");

    // Two keys: k1 from an environment variable, k2 from a file (rotation: both accepted).
    let k1 = SigningKey::new("k1", b"k1-secret-0123456789abcdef").unwrap();
    let key_dir = std::env::temp_dir().join(unique("keys"));
    std::fs::create_dir_all(&key_dir).unwrap();
    let k2_file = key_dir.join("k2");
    std::fs::write(&k2_file, "base64:azItc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    let k2 =
        SigningKey::from_material("k2", b"base64:azItc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    let stranger = SigningKey::new("k9", b"k9-secret-0123456789abcdef").unwrap();

    let now = chrono::Utc::now().to_rfc3339();
    let good = || pod_event(schema_id, "pod-a", 1, 5, "CrashLoopBackOff");
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str,
                   value: Option<Vec<u8>>,
                   mutate: &dyn Fn(&mut Headers),
                   signer: Option<&SigningKey>,
                   expect: Option<(&'static str, &'static str)>| {
        let id = format!("{name}-{}", unique(""));
        let mut headers = base_headers(&id, &now);
        mutate(&mut headers);
        if let Some(k) = signer {
            k.sign(&mut headers, value.as_deref());
        }
        cases.push(Case {
            id,
            value,
            headers,
            expect,
        });
    };
    let none = |_: &mut Headers| {};
    add("good-k1", Some(good()), &none, Some(&k1), None);
    add("good-k2", Some(good()), &none, Some(&k2), None);
    add(
        "junk-header",
        Some(good()),
        &|h| {
            h.0.push(reflex_core::headers::Header {
                key: "x-junk".into(),
                value: Some(vec![0xff, 0xfe, 0x80].into()),
            })
        },
        Some(&k1),
        None,
    );
    add(
        "unsigned",
        Some(good()),
        &none,
        None,
        Some(("unauthorized", "not signed")),
    );
    add(
        "unknown-key",
        Some(good()),
        &none,
        Some(&stranger),
        Some(("unauthorized", "unknown key id `k9`")),
    );
    add(
        "replayed",
        Some(good()),
        &|h| h.set(ce::TIME, "2020-01-01T00:00:00Z"),
        Some(&k1),
        Some(("unauthorized", "router.max_event_age")),
    );
    add(
        "truncated",
        Some(vec![0, 0, 0]),
        &none,
        Some(&k1),
        Some(("poison", "shorter than the 5-byte")),
    );
    let mut magic = good();
    magic[0] = 7;
    add(
        "bad-magic",
        Some(magic),
        &none,
        Some(&k1),
        Some(("poison", "magic byte is 7")),
    );
    add(
        "tombstone",
        None,
        &none,
        Some(&k1),
        Some(("poison", "no value")),
    );
    let mut corrupt = good();
    corrupt.truncate(9);
    add(
        "corrupt-datum",
        Some(corrupt),
        &none,
        Some(&k1),
        Some(("poison", "does not decode")),
    );
    let mut deep = vec![2u8; 50_000];
    deep.push(0);
    add(
        "deep-nesting",
        Some(reflex_core::wire::encode_frame(nested_id, &deep)),
        &none,
        Some(&k1),
        Some(("poison", "recursivity limit")),
    );
    add(
        "other-topic-schema",
        Some(reflex_core::wire::encode_frame(nested_id, &[0])),
        &none,
        Some(&k1),
        Some(("permanent", "restart_count")),
    );
    add(
        "unknown-schema-id",
        Some(reflex_core::wire::encode_frame(999_999, &[0])),
        &none,
        Some(&k1),
        Some(("schema", "999999")),
    );
    add(
        "huge",
        Some(reflex_core::wire::encode_frame(
            schema_id,
            &vec![0u8; 100_000],
        )),
        &none,
        Some(&k1),
        Some(("permanent", "router.max_value_bytes")),
    );
    add(
        "many-headers",
        Some(good()),
        &|h| {
            for i in 0..40 {
                h.push(format!("x-{i}"), "v");
            }
        },
        Some(&k1),
        Some(("permanent", "router.max_headers")),
    );
    add(
        "ce-type-not-utf8",
        Some(good()),
        &|h| {
            h.0.iter_mut()
                .filter(|x| x.key == ce::TYPE)
                .for_each(|x| x.value = Some(vec![0xc3, 0x28].into()))
        },
        Some(&k1),
        Some(("permanent", "ce_type")),
    );
    // Bad signature: signed, then the value changed.
    let mut tampered = Case {
        id: format!("tampered-{}", unique("")),
        value: Some(good()),
        headers: Headers::new(),
        expect: Some(("unauthorized", "does not match")),
    };
    tampered.headers = base_headers(&tampered.id, &now);
    k1.sign(&mut tampered.headers, tampered.value.as_deref());
    tampered.value.as_mut().unwrap()[10] ^= 0x01;
    cases.push(tampered);

    let rules = write_rules("hostile-rules", &RULES.replace("OUT", &out));
    let log = std::env::temp_dir().join(unique("hostile-router.log"));
    let _router = spawn_router_with_env(
        &stack,
        &unique("hostile-group"),
        "",
        &input,
        &rules,
        &log,
        &[
            ("HOSTILE_K1", "k1-secret-0123456789abcdef"),
            (
                "REFLEX_ROUTER__SIGNING_KEYS",
                &format!("[\"k1=env:HOSTILE_K1\", \"k2=file:{}\"]", k2_file.display()),
            ),
            ("REFLEX_ROUTER__MAX_EVENT_AGE", "1h"),
            ("REFLEX_ROUTER__MAX_VALUE_BYTES", "65536"),
            ("REFLEX_ROUTER__MAX_HEADERS", "32"),
        ],
    );

    let producer = producer(&stack.bootstrap);
    for case in &cases {
        let record = rdkafka::producer::FutureRecord::to(&input)
            .key("pod-a")
            .headers(to_owned(&case.headers));
        let record = match &case.value {
            Some(v) => record.payload(v),
            None => record,
        };
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {}: {e}", case.id));
    }
    // Sent last, after every hostile record: routed only if the router survived them all.
    let alive_id = format!("alive-{}", unique(""));
    let mut alive = base_headers(&alive_id, &now);
    let alive_value = good();
    k1.sign(&mut alive, Some(&alive_value));
    produce(
        &producer,
        &input,
        Some("pod-a"),
        &alive_value,
        to_owned(&alive),
    )
    .await;

    let want_routed: Vec<&str> = cases
        .iter()
        .filter(|c| c.expect.is_none())
        .map(|c| c.id.as_str())
        .chain([alive_id.as_str()])
        .collect();
    let want_dead = cases.iter().filter(|c| c.expect.is_some()).count();
    let routed = read_topic_until(
        &stack.bootstrap,
        &out,
        Duration::from_secs(90),
        Duration::from_secs(1),
        |got| got.len() >= want_routed.len(),
    )
    .await;
    let dead = read_topic_until(
        &stack.bootstrap,
        &dlq,
        Duration::from_secs(60),
        Duration::from_secs(2),
        |got| got.len() >= want_dead,
    )
    .await;
    let log_text = read_log(&log);
    assert!(
        !log_text.contains("panicked"),
        "router panicked:\n{log_text}"
    );

    let routed_ids: Vec<&str> = routed
        .iter()
        .filter_map(|m| header_str(m, ce::ID))
        .collect();
    assert_eq!(
        {
            let mut r = routed_ids.clone();
            r.sort_unstable();
            r
        },
        {
            let mut w = want_routed.clone();
            w.sort_unstable();
            w
        },
        "routed events (router log:\n{log_text})"
    );
    let dead_by_id: HashMap<&str, (&str, &str)> = dead
        .iter()
        .filter_map(|m| {
            Some((
                header_str(m, ce::ID)?,
                (
                    header_str(m, rh::ERROR_CLASS).unwrap_or("?"),
                    header_str(m, rh::ERROR_MESSAGE).unwrap_or("?"),
                ),
            ))
        })
        .collect();
    let mut table = String::new();
    for case in cases.iter().filter(|c| c.expect.is_some()) {
        let (class, words) = case.expect.unwrap();
        let got = dead_by_id.get(case.id.as_str());
        table.push_str(&format!("{:<28} want {class:<13} got {got:?}\n", case.id));
        let Some((got_class, message)) = got else {
            panic!(
                "{} was not dead-lettered\n{table}\nrouter log:\n{log_text}",
                case.id
            );
        };
        assert_eq!(*got_class, class, "{}: {message}\n{table}", case.id);
        assert!(
            message.contains(words),
            "{}: `{message}` lacks `{words}`",
            case.id
        );
    }
    assert_eq!(
        dead.len(),
        want_dead,
        "one dead letter per hostile record\n{table}"
    );
    // The dead letter keeps the original value unchanged (for inspection and replay).
    let huge = dead
        .iter()
        .find(|m| header_str(m, ce::ID).is_some_and(|i| i.starts_with("huge-")))
        .unwrap();
    assert_eq!(huge.payload().map(<[u8]>::len), Some(100_005));
    println!("{table}");
}

/// What a case must end as.
enum Injection {
    /// The action arrived: this path, and the body's `reason` equal to the event's.
    Arrived { path: String, team: &'static str },
    /// Dead-lettered as permanent by `worker`, the message containing the words.
    Refused {
        worker: &'static str,
        words: &'static str,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_family_is_escaped_or_refused_through_the_whole_chain() {
    let stack = stack();
    let run = unique("run");
    let input = unique("inj-events");
    let routed = unique("inj-routed");
    let requests = unique("inj-requests");
    let outcomes = unique("inj-outcomes");
    let held = unique("inj-held");
    let topics = [
        input.clone(),
        format!("{input}.dlq"),
        routed.clone(),
        format!("{routed}.dlq"),
        requests.clone(),
        format!("{requests}.dlq"),
        outcomes.clone(),
        held.clone(),
    ];
    let with_partitions: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    create_topics(&stack.bootstrap, &with_partitions).await;
    let schema_id = register_pod_schema(&stack, &input).await;
    let (target, addr) = PackTarget::start().await;

    set_teams(
        &stack,
        &[
            (format!("owners-{run}:shop"), "shop-team"),
            (format!("owners-{run}:shop%3Aadmin"), "escaped-key"),
            (format!("owners-{run}:shop:admin"), "WRONG-KEY"),
        ],
    )
    .await;

    let rules = write_rules(
        "inj-rules",
        &format!("[[rule]]\nname = \"crash\"\nwhen = 'payload.restart_count >= 3'\nto = [\"{routed}\"]\n"),
    );
    let dir = std::env::temp_dir().join(unique("inj-config"));
    std::fs::create_dir_all(&dir).unwrap();
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

[[binding]]
action = "restart"
kind = "http"
target = "http://{addr}/api/namespaces/{{{{ payload.namespace }}}}/pods/{{{{ payload.pod }}}}"
params = {{ team = "{{{{ context.owner.team }}}}", pod = "{{{{ payload.pod }}}}" }}
body = '{{"reason": "{{{{ payload.reason }}}}", "restart_count": {{{{ payload.restart_count }}}}}}'
"#
        ),
    )
    .unwrap();
    let actor_config = dir.join("actor.toml");
    std::fs::write(
        &actor_config,
        format!(
            r#"[actor]
redis_prefix = "{run}"
outcomes_topic = "{outcomes}"
held_topic = "{held}"
allowed_hosts = ["127.0.0.1:{port}"]

[[actor.action]]
name = "restart"
kind = "http"
method = "DELETE"
url = "{{{{ target | raw }}}}"
headers = {{ content-type = "application/json", x-team = "{{{{ params.team }}}}", x-pod = "{{{{ params.pod }}}}" }}
max_attempts = 1
"#,
            port = addr.port()
        ),
    )
    .unwrap();

    let json_injection = r#""}, "restart_count": 0, "x": {"a":""#;
    let control = "line\nbreak\t\u{1}\\ \"quoted\"";
    let arrived = |path: &str, team: &'static str| Injection::Arrived {
        path: format!("/api/namespaces/{path}"),
        team,
    };
    let cases: Vec<(&str, &str, &str, &str, Injection)> = vec![
        (
            "traversal",
            "shop",
            "../../kube-system/pods/coredns",
            "r",
            arrived(
                "shop/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns",
                "shop-team",
            ),
        ),
        (
            "query",
            "shop",
            "p?force=true",
            "r",
            arrived("shop/pods/p%3Fforce%3Dtrue", "shop-team"),
        ),
        (
            "fragment",
            "shop",
            "p#frag",
            "r",
            arrived("shop/pods/p%23frag", "shop-team"),
        ),
        (
            "dot-segment",
            "shop",
            "..",
            "r",
            Injection::Refused {
                worker: "enricher",
                words: "path traversal",
            },
        ),
        (
            "empty-segment",
            "shop",
            "",
            "r",
            Injection::Refused {
                worker: "enricher",
                words: "path traversal",
            },
        ),
        (
            "json",
            "shop",
            "p-json",
            json_injection,
            arrived("shop/pods/p-json", "shop-team"),
        ),
        (
            "json-control",
            "shop",
            "p-ctl",
            "line\nbreak\t\u{1}\\ \"quoted\"",
            arrived("shop/pods/p-ctl", "shop-team"),
        ),
        (
            "header-crlf",
            "shop",
            "p\r\nX-Admin: yes",
            "r",
            Injection::Refused {
                worker: "actor",
                words: "control character",
            },
        ),
        (
            "redis-key",
            "shop:admin",
            "p-key",
            "r",
            arrived("shop%3Aadmin/pods/p-key", "escaped-key"),
        ),
    ];
    assert_eq!(cases[6].3, control);
    let producer = producer(&stack.bootstrap);
    let mut ids = HashMap::new();
    for (name, namespace, pod, reason, _) in &cases {
        let id = format!("{name}-{}", unique(""));
        let headers = base_headers(&id, &chrono::Utc::now().to_rfc3339());
        let value = pod_event_with(schema_id, "prod-eu", namespace, pod, reason);
        produce(&producer, &input, Some("k"), &value, to_owned(&headers)).await;
        ids.insert(*name, id);
    }

    let logs: Vec<std::path::PathBuf> = ["router", "enricher", "actor"]
        .iter()
        .map(|w| std::env::temp_dir().join(unique(&format!("inj-{w}.log"))))
        .collect();
    let _router = spawn_router(&stack, &unique("inj-router"), &input, &rules, &logs[0]);
    let _enricher = spawn_enricher(
        &stack,
        &unique("inj-enricher"),
        &routed,
        &requests,
        &bindings,
        &logs[1],
    );
    let _actor = spawn_actor(
        &stack,
        &unique("inj-actor"),
        "",
        &requests,
        &actor_config,
        &logs[2],
        &[],
    );

    let want_arrived = cases
        .iter()
        .filter(|c| matches!(c.4, Injection::Arrived { .. }))
        .count();
    let final_outcomes = read_topic_until(
        &stack.bootstrap,
        &outcomes,
        Duration::from_secs(90),
        Duration::from_secs(1),
        |got| {
            got.iter()
                .filter(|m| header_str(m, "reflex-final") == Some("true"))
                .count()
                >= want_arrived
        },
    )
    .await;
    let refused_by = |worker: &str| {
        cases
            .iter()
            .filter(|c| matches!(c.4, Injection::Refused { worker: w, .. } if w == worker))
            .count()
    };
    let mut dead = Vec::new();
    for (topic, want) in [
        (format!("{routed}.dlq"), refused_by("enricher")),
        (format!("{requests}.dlq"), refused_by("actor")),
    ] {
        dead.push(
            read_topic_until(
                &stack.bootstrap,
                &topic,
                Duration::from_secs(30),
                Duration::from_secs(2),
                |got| got.len() >= want,
            )
            .await,
        );
    }
    let (enricher_dead, actor_dead) = (&dead[0], &dead[1]);
    let logs_text: String = logs.iter().map(|l| read_log(l)).collect();
    assert_eq!(
        final_outcomes
            .iter()
            .filter(|m| header_str(m, "reflex-final") == Some("true"))
            .count(),
        want_arrived,
        "{logs_text}"
    );

    let seen = target.requests();
    let mut table = String::new();
    for (name, _, _, reason, expect) in &cases {
        let id = &ids[name];
        let key = format!("restart:{id}");
        let got: Vec<&Seen> = seen.iter().filter(|s| s.key == key).collect();
        table.push_str(&format!("{name:<14} {:?}\n", got.first().map(|s| &s.path)));
        match expect {
            Injection::Arrived { path, team } => {
                assert_eq!(got.len(), 1, "{name}: {table}\n{logs_text}");
                assert_eq!(&got[0].path, path, "{name}");
                assert_eq!(got[0].method, "DELETE", "{name}");
                assert_eq!(got[0].headers["x-team"], *team, "{name}");
                let body: serde_json::Value = serde_json::from_str(&got[0].body)
                    .unwrap_or_else(|e| panic!("{name}: body is not JSON ({e}): {}", got[0].body));
                assert_eq!(
                    body,
                    serde_json::json!({"reason": reason, "restart_count": 6}),
                    "{name}"
                );
            }
            Injection::Refused { worker, words } => {
                assert!(got.is_empty(), "{name}: sent {got:?}");
                let (dead, dead_id) = match *worker {
                    "enricher" => (enricher_dead, id.clone()),
                    _ => (actor_dead, key.clone()),
                };
                let letter = dead
                    .iter()
                    .find(|m| header_str(m, ce::ID) == Some(dead_id.as_str()))
                    .unwrap_or_else(|| panic!("{name}: no dead letter at the {worker}\n{table}"));
                assert_eq!(
                    header_str(letter, rh::ERROR_CLASS),
                    Some("permanent"),
                    "{name}"
                );
                let message = header_str(letter, rh::ERROR_MESSAGE).unwrap_or_default();
                assert!(
                    message.contains("refused") && message.contains(words),
                    "{name}: {message}"
                );
            }
        }
    }
    assert_eq!(seen.len(), want_arrived, "nothing else was sent\n{table}");
    println!("{table}");
}
