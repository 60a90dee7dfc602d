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

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
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
        Some(("unauthorized", "router.max_event_age_ms")),
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
            ("REFLEX_ROUTER__MAX_EVENT_AGE_MS", "3600000"),
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
