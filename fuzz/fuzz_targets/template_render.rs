//! Action and binding templates: compiled and rendered by `reflex_core::template::Templates`
//! with the limits the actor and the enricher use (`Templates::default()`: fuel and output
//! cap), against the two contexts they render with: the enricher's event root (`ce`,
//! `payload`, `key`, `topic`, `headers`, `context`) and the actor's `ActionRequest`. Any input
//! must render or fail with an error, never panic, hang or grow without bound, in every
//! escaping context (URL, JSON, header, Redis key, log, none).
//!
//! The same input is also a hostile *value* in fixed templates of each context, checked
//! against what escaping promises: in a URL it is exactly one encoded path segment, query
//! value and fragment (refused only when the segment would be empty, `.` or `..`); in JSON it
//! is exactly the one string it fills; a header value never holds CR, LF or control
//! characters; a Redis key keeps its literal prefix and gains no `:`.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reflex_core::actions::{ActionKind, ActionRequest};
use reflex_core::template::{Escape, Templates};

/// The example packs' events (first line of each `events.jsonl`), merged into one payload so
/// every example template finds its fields.
const EVENTS: [&str; 4] = [
    include_str!("../../examples/crash-loop/events.jsonl"),
    include_str!("../../examples/host-quarantine/events.jsonl"),
    include_str!("../../examples/idle-suspend/events.jsonl"),
    include_str!("../../examples/incident-evidence/events.jsonl"),
];

fn contexts() -> &'static (serde_json::Value, ActionRequest) {
    static C: OnceLock<(serde_json::Value, ActionRequest)> = OnceLock::new();
    C.get_or_init(|| {
        let mut payload = serde_json::Map::new();
        for events in EVENTS {
            let first = events.lines().next().expect("an event");
            let serde_json::Value::Object(fields) = serde_json::from_str(first).expect("JSON")
            else {
                panic!("events are JSON objects")
            };
            payload.extend(fields);
        }
        // Shaped like the enricher's render root, with the example lookups' context.
        let enricher = serde_json::json!({
            "ce": {"specversion": "1.0", "id": "e1", "source": "fuzz", "type": "io.k8s.pod.crashloop"},
            "payload": payload,
            "key": "checkout-7d9f",
            "topic": "examples.crash-loop.events",
            "headers": {"ce_type": "io.k8s.pod.crashloop"},
            "context": {
                "owner": {"team": "shop", "pager": "shop-oncall", "approver": "lead", "channel": "#shop"},
                "site": {"segment": "quarantine-fra1", "soc": "soc-eu"},
                "svc": {"dashboard": "https://grafana/d/checkout", "log_index": "logs-shop"},
            },
        });
        let params = [
            ("namespace", "shop"),
            ("pod", "checkout-7d9f"),
            ("team", "shop"),
            ("pager", "shop-oncall"),
            ("soc", "soc-eu"),
            ("detection", "ransomware-behaviour"),
            ("approved_by", "lead"),
            ("approver", "lead"),
            ("kind", "evidence"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        // What the actor renders its action templates with.
        let actor = ActionRequest {
            idempotency_key: "k1".into(),
            action: "restart-pod".into(),
            kind: ActionKind::Http,
            target: "prod-eu/shop/checkout-7d9f".into(),
            params: BTreeMap::from(params),
            body: Some(r#"{"reason": "CrashLoopBackOff"}"#.into()),
            event_id: "e1".into(),
            event_type: "io.k8s.pod.crashloop".into(),
            rule: Some("crashloop-restart".into()),
            correlation_id: "e1".into(),
            context: BTreeMap::from([("owner.team".to_string(), "shop".to_string())]),
            dry_run: false,
            requested_at: 1_767_225_600_000,
        };
        (enricher, actor)
    })
}

const ESCAPES: [Escape; 6] = [
    Escape::None,
    Escape::Url,
    Escape::Json,
    Escape::Header,
    Escape::RedisKey,
    Escape::Log,
];

/// Fixed templates of each context, reading the hostile value `v`.
fn fixed() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Templates::default();
        for (name, source, escape) in [
            ("url", "http://h/api/{{ v }}/x?q={{ v }}#{{ v }}", Escape::Url),
            ("json", r#"{"a": "{{ v }}", "b": {{ v }}}"#, Escape::Json),
            ("header", "x {{ v }}", Escape::Header),
            ("key", "k:{{ v }}", Escape::RedisKey),
        ] {
            t.add_escaped(name, source, escape).expect("fixed templates compile");
        }
        t
    })
}

/// The reference encoding: every byte outside the unreserved set, percent-encoded.
fn encoded(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (enricher, actor) = contexts();
    for escape in ESCAPES {
        let mut templates = Templates::default();
        if templates.add_escaped("t", text, escape).is_ok() {
            let _ = templates.render("t", enricher);
            let _ = templates.render("t", actor);
        }
    }

    // The input as a value: escaping keeps it inside the one place it fills.
    let t = fixed();
    let ctx = serde_json::json!({ "v": text });
    let markers = text.contains(['\u{E000}', '\u{E001}']);
    match t.render("url", &ctx) {
        Ok(url) => {
            let e = encoded(text);
            assert_eq!(url, format!("http://h/api/{e}/x?q={e}#{e}"));
        }
        Err(err) => assert!(
            markers || matches!(text, "" | "." | ".."),
            "{text:?} refused: {err}"
        ),
    }
    match t.render("json", &ctx) {
        Ok(body) => {
            let parsed: serde_json::Value = serde_json::from_str(&body).expect("the body parses");
            assert_eq!(parsed, serde_json::json!({"a": text, "b": text}));
        }
        Err(err) => assert!(markers, "{text:?} refused: {err}"),
    }
    let control = text.chars().any(|c| c.is_control() && c != '\t');
    match t.render("header", &ctx) {
        Ok(value) => {
            assert!(!control);
            assert_eq!(value, format!("x {text}"));
        }
        Err(err) => assert!(control || markers, "{text:?} refused: {err}"),
    }
    if let Ok(key) = t.render("key", &ctx) {
        let segment = key.strip_prefix("k:").expect("the literal prefix stays");
        assert!(!segment.contains([':', '*', '{', '}', ' ', '\n']), "{key:?}");
    }
});
