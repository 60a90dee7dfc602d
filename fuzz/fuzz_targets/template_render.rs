//! Action and binding templates: compiled and rendered by `reflex_core::template::Templates`
//! with the limits the actor and the enricher use (`Templates::default()`: fuel and output
//! cap), against the two contexts they render with: the enricher's event root (`ce`,
//! `payload`, `key`, `topic`, `headers`, `context`) and the actor's `ActionRequest`. Any input
//! must render or fail with an error, never panic, hang or grow without bound.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reflex_core::actions::{ActionKind, ActionRequest};
use reflex_core::template::Templates;

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

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut templates = Templates::default();
    if templates.add("t", text).is_ok() {
        let (enricher, actor) = contexts();
        let _ = templates.render("t", enricher);
        let _ = templates.render("t", actor);
    }
});
