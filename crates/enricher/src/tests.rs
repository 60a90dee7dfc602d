use super::*;
use crate::lookup::HttpSource;
use crate::spec::SourceSpec;
use reflex_core::actions::ActionKind;
use reflex_core::Headers;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const POD_SCHEMA: &str = include_str!("../../../avro/k8s_pod_event.avsc");

fn parse(text: &str) -> Result<Spec, SpecError> {
    Spec::parse(Path::new("enricher.toml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn offline_registry() -> RegistryClient {
    // Nothing listens on port 9: any registry call would fail, so the cache must serve.
    let registry = RegistryClient::new(
        "http://127.0.0.1:9",
        Duration::from_millis(200),
        Duration::from_secs(1),
    );
    registry.preload(7, POD_SCHEMA).unwrap();
    registry
}

fn enricher(spec: Spec) -> Enricher {
    let sources = spec
        .lookups
        .iter()
        .map(|l| Source::new(&l.source, None).unwrap())
        .collect();
    Enricher::new(
        spec,
        sources,
        offline_registry(),
        AvroCodec::new(42, ACTION_REQUEST_SCHEMA).unwrap(),
        OutputSettings {
            topic: "actions".into(),
            event_type: "dev.reflex.action.requested".into(),
            source: "reflex/enricher".into(),
        },
    )
}

fn event(namespace: &str, id: &str) -> Event {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({"cluster": "prod-eu", "namespace": namespace, "pod": "api-1",
        "reason": "CrashLoopBackOff", "restart_count": 5, "seq": 1, "rollout_in_progress": false,
        "labels": {"app": "api"}});
    let value = reflex_core::wire::encode_frame(
        7,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    );
    let mut headers = Headers::new();
    for (k, v) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_source", "/k8s/prod-eu"),
        ("ce_type", "io.k8s.pod.crashloop"),
        ("ce_correlationid", "corr-1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("reflex-rule", "crashloop"),
        ("reflex-hops", "1"),
    ] {
        headers.push(k, v.to_owned());
    }
    Event {
        topic: "routed".into(),
        partition: 0,
        offset: 3,
        timestamp_ms: None,
        key: Some(Bytes::from_static(b"api-1")),
        payload: Some(Bytes::from(value)),
        headers,
    }
}

fn decode(output: &Output) -> ActionRequest {
    let schema: serde_avro_fast::Schema = ACTION_REQUEST_SCHEMA.parse().unwrap();
    AvroCodec::<ActionRequest>::decode_with(&schema, output.payload.as_ref().unwrap()).unwrap()
}

/// A bindings file with a file lookup whose table sits next to it in a temp dir.
fn with_table(bindings: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "enricher-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tiers.toml"),
        "[prod-eu]\ntier = \"1\"\nregion = \"eu\"\n\n[staging]\ntier = 3\n",
    )
    .unwrap();
    let path = dir.join("enricher.toml");
    std::fs::write(&path, bindings).unwrap();
    path
}
static COUNTER: AtomicUsize = AtomicUsize::new(0);

const FILE_BINDINGS: &str = r#"
[[lookup]]
name = "tier"
kind = "file"
path = "tiers.toml"
key = "{{ payload.cluster }}"
on_missing = "fail"

[[lookup]]
name = "team"
kind = "file"
path = "tiers.toml"
key = "{{ payload.namespace }}"
on_missing = "default"
default = { tier = "9" }

[[binding]]
action = "restart-pod"
kind = "http"
target = "https://k8s/api/namespaces/{{ payload.namespace }}/pods/{{ payload.pod }}"
params = { tier = "{{ context.tier.tier }}", fallback = "{{ context.team.tier }}", app = "{{ payload.labels.app }}" }
body = '{"trace": "{{ headers.traceparent }}", "type": "{{ ce.type }}", "key": "{{ key }}"}'
when_types = ["io.k8s.pod.crashloop"]

[[binding]]
action = "page"
kind = "log"
target = "{{ context.tier.region }}"
when_rules = ["other-rule"]
"#;

#[tokio::test]
async fn binds_an_event_to_an_action_request_with_context_and_carried_headers() {
    let spec = Spec::load(&with_table(FILE_BINDINGS)).unwrap();
    let e = enricher(spec);
    let input = event("shop", "evt-1");
    let outputs = e.process(&input).await.unwrap();
    assert_eq!(outputs.len(), 1, "the `page` binding wants another rule");
    let out = &outputs[0];
    assert_eq!(out.topic, "actions");
    assert_eq!(out.key, input.key);
    assert_eq!(&out.payload.as_ref().unwrap()[..5], &[0, 0, 0, 0, 42]);
    let request = decode(out);
    assert_eq!(request.idempotency_key, "restart-pod:evt-1");
    assert_eq!(request.kind, ActionKind::Http);
    assert_eq!(request.target, "https://k8s/api/namespaces/shop/pods/api-1");
    assert_eq!(request.params["tier"], "1");
    assert_eq!(request.params["fallback"], "9", "on_missing = default");
    assert_eq!(request.params["app"], "api");
    assert_eq!(
        request.body.as_deref(),
        Some(
            r#"{"trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "type": "io.k8s.pod.crashloop", "key": "api-1"}"#
        )
    );
    assert_eq!(request.event_id, "evt-1");
    assert_eq!(request.event_type, "io.k8s.pod.crashloop");
    assert_eq!(request.rule.as_deref(), Some("crashloop"));
    assert_eq!(request.correlation_id, "corr-1");
    assert_eq!(request.context["tier.region"], "eu");
    assert_eq!(request.context["team.tier"], "9");
    assert!(!request.dry_run);
    let h = &out.headers;
    assert_eq!(h.get_str("ce_id"), Some("restart-pod:evt-1"));
    assert_eq!(h.get_str("ce_causationid"), Some("evt-1"));
    assert_eq!(h.get_str("ce_correlationid"), Some("corr-1"));
    assert_eq!(h.get_str("ce_type"), Some("dev.reflex.action.requested"));
    assert_eq!(h.get_str("ce_source"), Some("reflex/enricher"));
    assert_eq!(h.get_str("reflex-hops"), Some("1"));
    assert_eq!(
        h.get_str("traceparent"),
        input.headers.get_str("traceparent")
    );

    // Same event again (retry, replay): same idempotency key. No correlation id: the ce_id.
    let mut again = event("shop", "evt-1");
    again.headers.0.retain(|h| h.key != "ce_correlationid");
    let request2 = decode(&e.process(&again).await.unwrap()[0]);
    assert_eq!(request2.idempotency_key, request.idempotency_key);
    assert_eq!(request2.correlation_id, "evt-1");

    // Both bindings when the rule matches too.
    let mut both = event("shop", "evt-2");
    both.headers.set("reflex-rule", "other-rule");
    let outputs = e.process(&both).await.unwrap();
    let actions: Vec<_> = outputs.iter().map(|o| decode(o).action).collect();
    assert_eq!(actions, ["restart-pod", "page"]);
    assert_eq!(decode(&outputs[1]).target, "eu");
}

#[tokio::test]
async fn on_missing_fail_dead_letters_and_skip_leaves_context_out() {
    let spec = Spec::load(&with_table(FILE_BINDINGS)).unwrap();
    let e = enricher(spec);
    let mut input = event("shop", "evt-1");
    // Re-encode with a cluster the table does not have.
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let json = serde_json::json!({"cluster": "nowhere", "namespace": "shop", "pod": "api-1",
        "reason": "x", "restart_count": 5});
    input.payload = Some(Bytes::from(reflex_core::wire::encode_frame(
        7,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )));
    let err = e.process(&input).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("lookup `tier`") && err.message.contains("`nowhere`"),
        "{}",
        err.message
    );

    // skip: the context is absent; a template reading it without `| default` fails (permanent),
    // one with a default renders.
    let path = with_table(
        r#"
[[lookup]]
name = "tier"
kind = "file"
path = "tiers.toml"
key = "{{ payload.namespace }}"
on_missing = "skip"

[[binding]]
action = "a"
kind = "emit"
target = "{{ context.tier.tier if context.tier is defined else 'none' }}/{{ (context.tier | default({})).tier | default('none') }}"

[[binding]]
action = "b"
kind = "log"
target = "{{ context.tier.tier }}"
"#,
    );
    let e = enricher(Spec::load(&path).unwrap());
    let err = e.process(&event("shop", "evt-1")).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("binding `b`"), "{}", err.message);
    // Binding `a` alone renders its fallbacks.
    let mut only_a = enricher(Spec::load(&path).unwrap());
    only_a.spec.bindings.retain(|b| b.action == "a");
    let out = only_a.process(&event("shop", "evt-1")).await.unwrap();
    assert_eq!(decode(&out[0]).target, "none/none");
    let ok = e.process(&event("staging", "evt-1")).await.unwrap();
    assert_eq!(decode(&ok[0]).target, "3/3");
    assert_eq!(decode(&ok[1]).target, "3");
}

#[tokio::test]
async fn a_batch_answers_each_event_as_processing_it_alone_does() {
    let e = enricher(Spec::load(&with_table(FILE_BINDINGS)).unwrap());
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let mut unknown_cluster = event("shop", "evt-2");
    let json = serde_json::json!({"cluster": "nowhere", "namespace": "shop", "pod": "api-1",
        "reason": "x", "restart_count": 5});
    unknown_cluster.payload = Some(Bytes::from(reflex_core::wire::encode_frame(
        7,
        &reflex_core::avro::json_to_datum(&schema, &json).unwrap(),
    )));
    let mut tombstone = event("shop", "evt-3");
    tombstone.payload = None;
    let events = [
        event("shop", "evt-1"),
        unknown_cluster,
        tombstone,
        event("staging", "evt-4"),
        event("shop", "evt-5"),
    ];
    let refs: Vec<&Event> = events.iter().collect();
    let batch = e.process_batch(&refs).await;
    assert_eq!(batch.len(), events.len());
    for (event, batched) in events.iter().zip(batch) {
        match (e.process(event).await, batched) {
            (Ok(alone), Ok(batched)) => {
                assert!(!alone.is_empty());
                let requests = |o: &[Output]| {
                    o.iter()
                        .map(|o| {
                            let mut r = decode(o);
                            r.requested_at = 0;
                            r
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(requests(&alone), requests(&batched));
                let headers =
                    |o: &[Output]| o.iter().map(|o| o.headers.clone()).collect::<Vec<_>>();
                assert_eq!(headers(&alone), headers(&batched));
            }
            (Err(alone), Err(batched)) => {
                assert_eq!(
                    (alone.class, alone.message),
                    (batched.class, batched.message)
                );
            }
            (alone, batched) => panic!("alone {alone:?}, in a batch {batched:?}"),
        }
    }
}

#[tokio::test]
async fn bad_envelopes_and_payloads_fail_with_their_class() {
    let e =
        enricher(parse("[[binding]]\naction = \"a\"\nkind = \"log\"\ntarget = \"x\"\n").unwrap());
    let mut no_ce = event("shop", "e");
    no_ce.headers.0.retain(|h| h.key != "ce_type");
    let err = e.process(&no_ce).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("ce_type"), "{}", err.message);
    let mut json = event("shop", "e");
    json.payload = Some(Bytes::from_static(b"{\"a\":1}"));
    assert_eq!(
        e.process(&json).await.unwrap_err().class,
        ErrorClass::Poison
    );
    let mut unknown = event("shop", "e");
    let mut bytes = unknown.payload.as_ref().unwrap().to_vec();
    bytes[4] = 8;
    unknown.payload = Some(Bytes::from(bytes));
    assert_eq!(
        e.process(&unknown).await.unwrap_err().class,
        ErrorClass::Transient,
        "registry unreachable for an unknown id"
    );
}

#[test]
fn config_errors_name_file_line_and_field() {
    let binding = |target: &str| {
        format!("[[lookup]]\nname = \"owner\"\nkind = \"redis\"\nkey = \"owners:{{{{ payload.namespace }}}}\"\n\n[[binding]]\naction = \"restart-pod\"\nkind = \"http\"\ntarget = \"https://k8s/x\"\nparams = {{ pod = \"{target}\" }}\n")
    };
    assert_eq!(
        err(&binding("{{ context.ownr.team }}")),
        "enricher.toml:10: binding `restart-pod`: params.pod: context.ownr: no lookup named `ownr` (configured: owner)"
    );
    assert!(err(&binding("{{ paylod.pod }}")).starts_with(
        "enricher.toml:10: binding `restart-pod`: params.pod: unknown variable `paylod`"
    ));
    assert!(err(&binding("{{ payload.pod ")).starts_with(
        "enricher.toml:10: binding `restart-pod`: params.pod: template does not compile"
    ));

    // payload fields are checked against the input topic's schema.
    let spec = parse(&binding("{{ payload.podname }}")).unwrap();
    let e = spec
        .check_schema("routed", "routed-value", POD_SCHEMA)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("enricher.toml:10: binding `restart-pod`: params.pod: payload.podname does not exist in the schema of topic `routed`"),
        "{e}"
    );
    parse(&binding("{{ payload.pod }}/{{ payload.labels.app }}"))
        .unwrap()
        .check_schema("routed", "routed-value", POD_SCHEMA)
        .unwrap();

    assert_eq!(
        err("[[binding]]\naction = \"a\"\nkind = \"ftp\"\ntarget = \"x\"\n"),
        "enricher.toml:3: binding `a`: kind: unknown action kind `ftp`: use \"http\", \"emit\" or \"log\""
    );
    assert!(
        err("[[lookup]]\nname = \"svc\"\nkind = \"http\"\nurl = \"{{ payload.host }}/x\"\n")
            .starts_with("enricher.toml:4: lookup `svc`: url: invalid URL")
    );
    assert!(err("[[lookup]]\nname = \"svc\"\nkind = \"http\"\nurl = \"http://exa mple/{{ payload.pod }}\"\n")
        .starts_with("enricher.toml:4: lookup `svc`: url: invalid URL"));
    assert!(err(
        "[[lookup]]\nname = \"svc\"\nkind = \"http\"\nurl = \"ftp://host/{{ payload.pod }}\"\n"
    )
    .contains("not http or https"));
    assert!(
        err("[[lookup]]\nname = \"a\"\nkind = \"redis\"\nkey = \"{{ context.b }}\"\n")
            .contains("lookups cannot read context")
    );
    assert!(err(
        "[[lookup]]\nname = \"a\"\nkind = \"redis\"\nkey = \"k\"\non_missing = \"default\"\n"
    )
    .starts_with("enricher.toml:1: lookup `a`: default: on_missing = \"default\" needs"));
    assert!(
        err("[[lookup]]\nname = \"a\"\nkind = \"file\"\npath = \"nope.toml\"\nkey = \"k\"\n")
            .starts_with("enricher.toml:4: lookup `a`: path: cannot read the table file")
    );
    assert!(
        err("\n[[binding]]\naction = \"a\"\nkind = \"log\"\ntarget = \"x\"\ntypo = 1\n")
            .starts_with("enricher.toml:6: unknown field `typo`")
    );
    assert!(err("[[binding]]\naction = \"a\"\nkind = \"log\"\ntarget = \"x\"\n[[binding]]\naction = \"a\"\nkind = \"log\"\ntarget = \"y\"\n")
        .starts_with("enricher.toml:5: binding `a`: action: duplicate action name"));
}

#[test]
fn the_example_bindings_compile_and_match_the_pod_schema() {
    let spec = Spec::load(Path::new("enricher.example.toml")).unwrap();
    assert_eq!(spec.lookups.len(), 1);
    assert!(spec.uses_redis());
    assert_eq!(spec.bindings[0].action, "restart-pod");
    spec.check_schema("reflex.routed.remediation", "x-value", POD_SCHEMA)
        .unwrap();
    assert!(matches!(spec.lookups[0].source, SourceSpec::Redis));
}

#[test]
fn defaults_load_and_point_at_the_example() {
    let config = EnricherConfig::load_with(None, Vec::new()).unwrap();
    assert_eq!(config.kafka.input_topics, ["reflex.routed.remediation"]);
    assert_eq!(config.stage.output_topic, "reflex.actions.requests");
    assert_eq!(
        config.stage.redis_timeout,
        std::time::Duration::from_secs(2)
    );
    assert!(Path::new("../..")
        .join(&config.stage.bindings_file)
        .exists());
}

#[test]
fn avro_unions_enums_maps_and_bytes_decode_to_json() {
    let schema: serde_avro_fast::Schema = R_SCHEMA.parse().unwrap();
    let apache = reflex_core::avro::parse_schema(R_SCHEMA).unwrap();
    let json = serde_json::json!({"opt": "yes", "none": null, "multi": 7, "color": "GREEN",
        "tags": {"a": "b"}, "list": [1, 2], "raw": "\u{1}\u{2}", "nested": {"x": 1.5}});
    let datum = reflex_core::avro::json_to_datum(&apache, &json).unwrap();
    let decoded = decode_payload(&datum, &schema).unwrap();
    assert_eq!(decoded["opt"], "yes");
    assert_eq!(decoded["none"], Json::Null);
    assert_eq!(decoded["multi"], 7);
    assert_eq!(decoded["color"], "GREEN");
    assert_eq!(decoded["tags"]["a"], "b");
    assert_eq!(decoded["list"], serde_json::json!([1, 2]));
    assert_eq!(decoded["raw"], serde_json::json!([1, 2]));
    assert_eq!(decoded["nested"]["x"], 1.5);
    // The template values the enricher decodes into have the same shape.
    let value = decode_payload_value(&datum, &schema).unwrap();
    assert_eq!(serde_json::to_value(&value).unwrap(), decoded);
}

/// The template root reads headers lazily, as the maps of every header it replaced did: the
/// last UTF-8 value of a name wins, null and non-UTF-8 values are left out, names iterate in
/// order, a missing name is an error (strict templates).
#[test]
fn ce_and_headers_read_like_maps_of_the_headers() {
    let mut input = event("shop", "evt-1");
    input.headers.push("dup", "first".to_owned());
    input.headers.push("dup", "second".to_owned());
    input.headers.push("bin", "ok".to_owned());
    input.headers.push("bin", vec![0xff, 0xfe]);
    input.headers.0.push(reflex_core::headers::Header {
        key: "nothing".into(),
        value: None,
    });
    let payload = Value::from_pairs([("pod", "api-1")]);
    let root = Value::from_object(EventContext::of(&input, payload).with_context(
        Value::from_pairs([("owner", Value::from_pairs([("team", "a")]))]),
    ));
    // The maps the views replaced, built as before (every header copied per event).
    let maps = {
        let ce: BTreeMap<String, Value> = input
            .headers
            .ce_attributes()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        let headers: BTreeMap<String, Value> = input
            .headers
            .iter()
            .filter_map(|h| {
                let v = std::str::from_utf8(h.value.as_deref()?).ok()?;
                Some((h.key.to_string(), Value::from(v)))
            })
            .collect();
        Value::from_object(BTreeMap::from([
            ("ce", Value::from_object(ce)),
            ("headers", Value::from_object(headers)),
            ("key", Value::from("api-1")),
            ("topic", Value::from("routed")),
            ("payload", Value::from_pairs([("pod", "api-1")])),
            (
                "context",
                Value::from_pairs([("owner", Value::from_pairs([("team", "a")]))]),
            ),
        ]))
    };
    let mut t = reflex_core::template::Templates::default();
    let render = |t: &mut reflex_core::template::Templates, source: &str| {
        t.add("t", source).unwrap();
        let got = t.render("t", &root);
        assert_eq!(got, t.render("t", &maps), "{source}");
        got
    };
    assert_eq!(
        render(&mut t, "{{ ce.type }}|{{ ce.id }}|{{ headers['reflex-rule'] }}|{{ key }}|{{ topic }}|{{ payload.pod }}|{{ context.owner.team }}").unwrap(),
        "io.k8s.pod.crashloop|evt-1|crashloop|api-1|routed|api-1|a"
    );
    assert_eq!(
        render(&mut t, "{{ headers.dup }}|{{ headers.bin }}").unwrap(),
        "second|ok"
    );
    assert_eq!(
        render(&mut t, "{% for k in ce %}{{ k }},{% endfor %}").unwrap(),
        "correlationid,id,source,specversion,type,"
    );
    assert_eq!(
        render(
            &mut t,
            "{{ ce | length }} {{ 'nothing' in headers }} {{ 'dup' in headers }}"
        )
        .unwrap(),
        "5 False True"
    );
    assert_eq!(
        render(
            &mut t,
            "{% for k, v in headers | items %}{{ k }}={{ v }};{% endfor %}"
        )
        .unwrap(),
        render(
            &mut t,
            "{% for k in headers %}{{ k }}={{ headers[k] }};{% endfor %}"
        )
        .unwrap()
    );
    assert!(render(&mut t, "{{ ce.nope }}").is_err(), "strict");
    assert!(
        render(&mut t, "{{ headers.nothing }}").is_err(),
        "null values are left out"
    );
}

const R_SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
    {"name":"opt","type":["null","string"]},
    {"name":"none","type":["null","long"]},
    {"name":"multi","type":["null","int","string"]},
    {"name":"color","type":{"type":"enum","name":"C","symbols":["RED","GREEN"]}},
    {"name":"tags","type":{"type":"map","values":"string"}},
    {"name":"list","type":{"type":"array","items":"int"}},
    {"name":"raw","type":"bytes"},
    {"name":"nested","type":{"type":"record","name":"N","fields":[{"name":"x","type":"double"}]}}]}"#;

#[tokio::test]
async fn http_lookups_are_cached_with_hits_and_misses_counted() {
    use axum::extract::Path as AxPath;
    use axum::http::StatusCode;
    use axum::routing::get;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/owners/{ns}",
        get(move |AxPath(ns): AxPath<String>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match ns.as_str() {
                    "shop" => (
                        StatusCode::OK,
                        r#"{"team": "team-shop", "oncall": {"primary": "ann"}, "size": 3, "gone": null}"#,
                    ),
                    "down" => (StatusCode::SERVICE_UNAVAILABLE, "{}"),
                    "bad" => (StatusCode::FORBIDDEN, "{}"),
                    _ => (StatusCode::NOT_FOUND, "{}"),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let http = HttpSource::new(Duration::from_secs(60), 2, Duration::from_secs(2));
    let url = |ns: &str| format!("http://{addr}/owners/{ns}");
    let row = http.fetch("owner", &url("shop")).await.unwrap().unwrap();
    assert_eq!(row["team"], "team-shop");
    assert_eq!(row["oncall.primary"], "ann");
    assert_eq!(row["size"], "3");
    assert!(!row.contains_key("gone"));
    for _ in 0..5 {
        http.fetch("owner", &url("shop")).await.unwrap();
    }
    assert_eq!(http.stats(), (5, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "served from the cache");
    // A 404 is a (cached) miss, not an error.
    assert_eq!(http.fetch("owner", &url("nobody")).await.unwrap(), None);
    assert_eq!(http.fetch("owner", &url("nobody")).await.unwrap(), None);
    assert_eq!(http.stats(), (6, 2));
    // 5xx is transient (retried), other 4xx permanent; errors are not cached.
    let e = http.fetch("owner", &url("down")).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{}", e.message);
    assert_eq!(
        http.fetch("owner", &url("bad")).await.unwrap_err().class,
        ErrorClass::Permanent
    );
    assert_eq!(http.stats(), (6, 2));
    // Nothing listening: transient.
    let e = http
        .fetch("owner", "http://127.0.0.1:9/owners/x")
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient);
    // The cache is bounded (2 entries here): a third URL evicts one of the first two.
    let before = calls.load(Ordering::SeqCst);
    http.fetch("owner", &url("third")).await.unwrap();
    http.fetch("owner", &url("shop")).await.unwrap();
    http.fetch("owner", &url("nobody")).await.unwrap();
    assert!(calls.load(Ordering::SeqCst) >= before + 2);

    // Short TTL: expired entries are fetched again.
    let short = HttpSource::new(Duration::from_millis(50), 10, Duration::from_secs(2));
    short.fetch("owner", &url("shop")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    short.fetch("owner", &url("shop")).await.unwrap();
    assert_eq!(short.stats(), (0, 2));
}

#[tokio::test]
async fn event_values_are_escaped_where_they_land_or_refused() {
    let spec = Spec::load(&with_table(FILE_BINDINGS)).unwrap();
    let e = enricher(spec);
    // The namespace row is missing (default used), so the hostile value reaches every template.
    let hostile = "x/../../kube-system?a=1#f\"}, \"admin\": true, \"y\": {\"";
    let mut input = event("shop", "evt-h");
    input.headers.set("traceparent", hostile);
    input.key = Some(Bytes::from(hostile));
    let request = decode(&e.process(&input).await.unwrap()[0]);
    let body: serde_json::Value = serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["trace"], hostile, "one JSON string, nothing added");
    assert_eq!(body["key"], hostile);
    assert_eq!(body.as_object().unwrap().len(), 3);

    let refused = event("..", "evt-dots");
    let err = e.process(&refused).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("binding `restart-pod`")
            && err.message.contains("field")
            && err.message.contains("refused")
            && err.message.contains("path traversal"),
        "{}",
        err.message
    );

    let slash = event("a/../../b?c#d", "evt-slash");
    let request = decode(&e.process(&slash).await.unwrap()[0]);
    assert_eq!(
        request.target,
        "https://k8s/api/namespaces/a%2F..%2F..%2Fb%3Fc%23d/pods/api-1"
    );
}

#[test]
fn lookup_keys_and_urls_are_escaped_and_raw_is_listed() {
    let spec = parse(
        r#"
[[lookup]]
name = "owner"
kind = "redis"
key = "owners:{{ payload.namespace }}"

[[lookup]]
name = "svc"
kind = "http"
url = "http://cmdb/services/{{ payload.pod }}?ns={{ payload.namespace }}"

[[binding]]
action = "a"
kind = "http"
target = "{{ payload.pod | raw }}"
body = "reason={{ payload.reason }}"
"#,
    )
    .unwrap();
    let root = serde_json::json!({"payload": {"namespace": "x:*{admin}", "pod": "../p?q#"}});
    assert_eq!(
        spec.templates.render("lookup:owner:key", &root).unwrap(),
        "owners:x%3A%2A%7Badmin%7D"
    );
    assert_eq!(
        spec.templates.render("lookup:svc:url", &root).unwrap(),
        "http://cmdb/services/..%2Fp%3Fq%23?ns=x%3A%2A%7Badmin%7D"
    );
    assert_eq!(spec.raw_fields(), ["binding `a` field `target`"]);
    // A text body keeps values as they are (nothing to inject into); JSON can be declared.
    assert_eq!(
        spec.templates
            .escape_of(spec.bindings[0].body.as_deref().unwrap()),
        reflex_core::template::Escape::None
    );
    let e = err("[[binding]]\naction = \"a\"\nkind = \"log\"\ntarget = \"t\"\nbody = \"x\"\nbody_format = \"xml\"\n");
    assert!(e.contains("body_format") && e.contains("`xml`"), "{e}");
}

#[test]
fn lookup_durations_have_units_and_old_names_say_what_to_write() {
    let lookup = |extra: &str| {
        format!("[[lookup]]\nname = \"svc\"\nkind = \"http\"\nurl = \"http://cmdb/{{{{ payload.pod }}}}\"\n{extra}")
    };
    let spec = parse(&lookup("ttl = \"30s\"\ntimeout = \"250ms\"\n")).unwrap();
    match &spec.lookups[0].source {
        SourceSpec::Http { ttl, timeout, .. } => {
            assert_eq!(*ttl, std::time::Duration::from_secs(30));
            assert_eq!(*timeout, std::time::Duration::from_millis(250));
        }
        other => panic!("not http: {other:?}"),
    }
    let e = err(&lookup("ttl_ms = 60000\n"));
    assert!(
        e.contains("lookup[].ttl_ms was renamed: write ttl = \"1m\""),
        "{e}"
    );
    let e = err(&lookup("timeout = 2000\n"));
    assert!(e.contains("has no unit") && e.contains("\"2s\""), "{e}");
}
