//! Shared fixtures for the fuzz targets: the real schemas and example rule files, and a router
//! built the way `reflex-router` builds one, with every schema preloaded so no input can make
//! it call the (absent) registry.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reflex_core::registry::RegistryClient;
use reflex_core::Headers;
use reflex_router::rules::RuleSet;
use reflex_router::Router;
use reflex_runtime::Event;

/// Every schema the repository ships (`avro/` and the example packs), plus a recursive one
/// that lets a few bytes nest deeply. Index `i` is registered under schema id `i + 1`.
pub const SCHEMAS: [&str; 8] = [
    include_str!("../../avro/k8s_pod_event.avsc"),
    include_str!("../../avro/action_request.avsc"),
    include_str!("../../avro/action_outcome.avsc"),
    include_str!("../../examples/crash-loop/avro/pod_event.avsc"),
    include_str!("../../examples/host-quarantine/avro/host_detection.avsc"),
    include_str!("../../examples/idle-suspend/avro/environment_idle.avsc"),
    include_str!("../../examples/incident-evidence/avro/alert.avsc"),
    r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]},{"name":"tags","type":{"type":"array","items":"string"}},{"name":"m","type":{"type":"map","values":"null"}}]}"#,
];

/// The example packs' rule files, each with the index in [`SCHEMAS`] of its input schema and
/// the `ce_type` its producer sends.
pub const RULE_FILES: [(&str, usize, &str); 4] = [
    (
        include_str!("../../examples/crash-loop/rules.toml"),
        3,
        "io.k8s.pod.crashloop",
    ),
    (
        include_str!("../../examples/host-quarantine/rules.toml"),
        4,
        "io.security.host.compromised",
    ),
    (
        include_str!("../../examples/idle-suspend/rules.toml"),
        5,
        "io.cost.environment.idle",
    ),
    (
        include_str!("../../examples/incident-evidence/rules.toml"),
        6,
        "io.alerting.alert.firing",
    ),
];

/// A registry client with every schema of [`SCHEMAS`] in its cache. Nothing listens on port 9:
/// a lookup that missed the cache would fail instead of reaching anything.
pub fn registry() -> RegistryClient {
    let registry = RegistryClient::new(
        "http://127.0.0.1:9",
        Duration::from_millis(50),
        Duration::from_secs(3600),
    );
    for (i, text) in SCHEMAS.iter().enumerate() {
        registry
            .preload(i as u32 + 1, text)
            .unwrap_or_else(|e| panic!("schema {i} does not load: {e}"));
    }
    registry
}

/// The router for one rule file (`max_hops` 3, the default limits).
pub fn router(rules: &str) -> Result<Router, reflex_router::rules::RuleError> {
    Ok(Router::new(
        RuleSet::parse(Path::new("fuzz.toml"), rules)?,
        registry(),
        3,
    ))
}

/// A record as the router's consumer hands it over: the CloudEvents headers a producer sends
/// (type `ce_type`) and `value` as the record value.
pub fn event(ce_type: &str, value: &[u8]) -> Event {
    let mut headers = Headers::new();
    for (k, v) in [
        ("ce_specversion", "1.0"),
        ("ce_id", "fuzz-1"),
        ("ce_source", "fuzz"),
        ("ce_type", ce_type),
        ("ce_time", "2026-01-01T00:00:00Z"),
    ] {
        headers.push(k, v.to_owned());
    }
    Event {
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: Some(Bytes::from_static(b"k")),
        payload: Some(Bytes::copy_from_slice(value)),
        headers,
    }
}

/// One current-thread runtime for the router's async entry point (its lookups hit the cache).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
